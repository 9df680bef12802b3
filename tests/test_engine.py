"""The execution engine: Mitogen's strategy where installed, Ansible's own otherwise or when Mitogen fails to
start, chosen per rollout (`--engine`), with the same results either way."""

import pytest
from sqlalchemy import select

from klpfleet.db.models import Event, Host, HostPatch
from klpfleet.errors import UsageError
from klpfleet.runs import engine as engines

from .controllerhelpers import enable_count, enabled_on, fleet_db, register

PATCH = "livepatch_cve_2026_1234"
REFUSE = {"refuse": {"patch": "*", "object": "vmlinux", "errno": "ENODEV"}}


def test_resolution(monkeypatch):
    assert engines.resolve("ansible") == engines.Engine("ansible", "ansible")
    mitogen = engines.resolve("mitogen")
    assert mitogen.name == "mitogen" and mitogen.envvars["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert engines.resolve("auto").name == "mitogen"  # installed here (klpfleet[fast])
    with pytest.raises(UsageError, match="not one of"):
        engines.resolve("turbo")
    monkeypatch.setattr(engines, "mitogen_strategy_dir", lambda: None)
    auto = engines.resolve("auto")
    assert auto.name == "ansible" and "not installed" in (auto.reason or "")
    with pytest.raises(UsageError, match="--engine mitogen: Mitogen is not installed"):
        engines.resolve("mitogen")


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    return tmp_path


def rollout(cli, tmp, name, *args):
    """A fresh fleet (one host refusing), a rollout over it; (database, status, events)."""
    url = f"sqlite:///{tmp / name}.db"
    db = fleet_db(tmp / name, url, hosts=6, faults={"sim-03": REFUSE})
    register(db, tmp / name)
    created = cli(
        "--db", url, "rollout", "create", PATCH, "--waves", "1,50%", "--max-refused", "1", *args, "-o", "json"
    )
    assert created.code == 0, created.err
    rid = created.json()["data"]["id"]
    started = cli("--db", url, "rollout", "start", str(rid), "--wait")
    assert started.code == 0, started.err
    status = cli("--db", url, "rollout", "status", str(rid), "-o", "json").json()["data"]
    with db.session() as s:
        states = dict(s.execute(select(Host.name, HostPatch.state).join(HostPatch, HostPatch.host_id == Host.id)).all())
        trail = [
            (e.kind, e.details) for e in s.scalars(select(Event).where(Event.rollout_id == rid).order_by(Event.id))
        ]
    return db, status, states, trail


@pytest.mark.ansible
def test_mitogen_and_ansible_give_the_same_rollout(cli, env):
    results = {}
    for engine in ("mitogen", "ansible"):
        _, status, states, trail = rollout(cli, env, engine, "--engine", engine)
        started = next(d for k, d in trail if k == "rollout.started")
        assert (started["engine"], started["requested"]) == (engine, engine)
        gates = [(d["verdict"], d.get("reason")) for k, d in trail if k == "gate.evaluated"]
        waves = [w["outcomes"] for w in status["waves"]]
        results[engine] = (status["status"], waves, states, gates)
        for i in (1, 2, 4, 5, 6):
            assert enabled_on(env / engine, f"sim-0{i}") == [PATCH]
            assert enable_count(env / engine, f"sim-0{i}", PATCH) == 1
        assert enabled_on(env / engine, "sim-03") == []
    assert results["mitogen"] == results["ansible"]
    assert results["mitogen"][2]["sim-03"] == "refused"


@pytest.mark.ansible
def test_mitogen_that_fails_to_start_falls_back_with_the_reason(cli, env, monkeypatch):
    """A Mitogen that cannot start (here: its strategy is missing) costs one failed run before any host is
    touched; the wave runs again under Ansible's own strategy and the rollout's events say why."""
    broken = engines.Engine(
        "mitogen",
        "auto",
        {"ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_STRATEGY_PLUGINS": str(env / "no-such-dir")},
    )
    monkeypatch.setattr("klpfleet.controller.playbook.resolve", lambda requested: broken)  # engine_for uses it
    _, status, states, trail = rollout(cli, env, "broken")
    assert status["status"] == "completed"
    assert states["sim-03"] == "refused" and sum(s == "applied" for s in states.values()) == 5
    switched = [d for k, d in trail if k == "rollout.engine"]
    assert len(switched) == 1 and switched[0]["engine"] == "ansible"
    assert "Mitogen failed before any host answered" in switched[0]["reason"]
    assert "mitogen_linear" in switched[0]["reason"]  # Ansible's own words about the missing strategy
    for i in (1, 2, 4, 5, 6):
        assert enable_count(env / "broken", f"sim-0{i}", PATCH) == 1  # the failed start ran nothing


@pytest.mark.ansible
def test_async_under_mitogen_is_refused_at_once(tmp_path):
    """Mitogen's isolated async child hangs importing a collection's module_utils: the action plugin says so
    at once rather than letting the job run into its time limit."""
    from .ansiblehelpers import playbook

    url = f"sqlite:///{tmp_path / 'k.db'}"
    fleet_db(tmp_path, url, hosts=1)
    book = tmp_path / "async.yml"
    book.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - klpfleet.livepatch.patch_info:\n      async: 30\n      poll: 1\n"
    )
    mitogen = engines.resolve("mitogen")
    proc = playbook(tmp_path / "fleet" / "inventory.yml", book, db_url=url, env=mitogen.envvars, timeout=60)
    assert proc.returncode != 0 and "async is not supported" in proc.stdout, proc.stdout[-2000:]
    plain = playbook(tmp_path / "fleet" / "inventory.yml", book, db_url=url, timeout=60)
    assert plain.returncode == 0, plain.stdout[-2000:]  # Ansible's own strategy runs it
