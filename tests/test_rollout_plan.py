"""Planning rollouts: Ansible serial semantics, failure domains, host patterns, exclusions, bad specs."""

import pytest
from ansible.utils.helpers import pct_to_int as ansible_pct_to_int

from klpfleet.controller.policy import parse_duration, pct_to_int, serial_batches
from klpfleet.errors import UsageError

from .controllerhelpers import fleet_db, register


@pytest.mark.parametrize("total", [1, 3, 7, 24, 200])
@pytest.mark.parametrize("sizes", [[1, "10%", "50%", "100%"], ["30%"], [2, 5], ["1%", "99%"]])
def test_batches_follow_ansible_serial(total, sizes):
    hosts = [f"h{i:03d}" for i in range(total)]
    batches = serial_batches(hosts, sizes)
    assert [h for b in batches for h in b] == hosts
    expected, i, step = [], 0, 0
    while i < total:  # Ansible's own arithmetic for each size, the last size repeating
        size = sizes[min(step, len(sizes) - 1)]
        n = ansible_pct_to_int(size, total) if isinstance(size, str) else size
        assert n == pct_to_int(size, total)
        expected.append(min(n, total - i))
        i += n
        step += 1
    assert [len(b) for b in batches] == expected


def test_domains_are_never_mixed_and_walked_in_order():
    hosts = ["a1", "a2", "a3", "b1", "b2", "c1"]
    domains = {h: h[0] for h in hosts}
    batches = serial_batches(hosts, [1, "50%"], domains)
    assert batches == [["a1"], ["a2", "a3"], ["b1", "b2"], ["c1"]]
    assert all(len({domains[h] for h in b}) == 1 for b in batches)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1.5h", 5400), ("250ms", 0.25), ("7", 7), ("1h30m", 5400), ("2 hours", 7200)],
)
def test_durations(text, seconds):
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5s", "8d", "1h30"])
def test_bad_durations_are_one_clear_line(text):
    with pytest.raises(UsageError, match="x: "):
        parse_duration(text, "x")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    url = f"sqlite:///{tmp / 'k.db'}"
    db = fleet_db(tmp, url, hosts=9, faults={"sim-09": {"kernel_release": "6.1.0-99-amd64"}})
    register(db, tmp)
    return url


def create(cli, url, *args):
    return cli("--db", url, "rollout", "create", "livepatch_cve_2026_1234", *args, "-o", "json")


def test_plan_by_zone_with_exclusions(cli, fleet, monkeypatch):
    result = create(cli, fleet, "--waves", "1,50%", "--by", "zone")
    assert result.code == 0, result.err
    plan = result.json()["data"]
    assert [(w["domain"], w["hosts"]) for w in plan["waves"]] == [
        ("a", ["sim-01"]),
        ("a", ["sim-04", "sim-07"]),
        ("b", ["sim-02", "sim-05", "sim-08"]),
        ("c", ["sim-03", "sim-06"]),
    ]
    assert plan["excluded"] == [
        {"host": "sim-09", "reason": "runs 6.1.0-99-amd64, the patch is built for 6.1.0-56-amd64"}
    ]
    # Those hosts are now held: a second plan over any of them is refused.
    again = create(cli, fleet, "--hosts", "~sim-0[1-3]")
    assert again.code == 2 and "held by another active rollout" in again.err
    # Planning touched no host.
    from .controllerhelpers import enabled_on

    assert all(enabled_on(fleet_dir(fleet), f"sim-0{i}") == [] for i in range(1, 10))


def fleet_dir(url):
    from pathlib import Path

    return Path(url.removeprefix("sqlite:///")).parent


@pytest.mark.parametrize(
    ("pattern", "hosts"),
    [
        ("~sim-0[1-3]", ["sim-01", "sim-02", "sim-03"]),
        ("sim-01:sim-05", ["sim-01", "sim-05"]),
        ("zone_a:!sim-04", ["sim-01", "sim-07"]),
        ("zone_a:&~sim-0[4-9]", ["sim-04", "sim-07"]),
        ("sim-0*:!zone_b:!zone_c", ["sim-01", "sim-04", "sim-07"]),
    ],
)
def test_host_patterns_are_ansibles(cli, tmp_path, pattern, hosts):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=9)
    register(db, tmp_path)
    plan = create(cli, url, "--hosts", pattern, "--waves", "100%").json()["data"]
    assert [h for w in plan["waves"] for h in w["hosts"]] == hosts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--waves", "0"], "0 hosts"),
        (["--waves", "ten"], "neither a number nor a percentage"),
        (["--waves", "150%"], "between 0 and 100"),
        (["--bake", "soon"], "not a duration"),
        (["--max-failed", "-1"], "neither a number"),
        (["--on-stall", "force"], "--allow-force"),
        (["--hosts", "nomatch*"], "matches no host"),
        (["--group", "nogroup"], "no group"),
        (["--health-check", "'unclosed"], "--health-check"),
        (["--by", "zone;rm"], "not a label name"),
    ],
)
def test_bad_rollout_specs(cli, fleet, args, message):
    result = cli("--db", fleet, "rollout", "create", "livepatch_cve_2026_1234", *args)
    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_unknown_hosts_kernel_is_excluded_until_gathered(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=2, gather=False)
    register(db, tmp_path)
    result = cli("--db", url, "rollout", "create", "livepatch_cve_2026_1234")
    assert result.code == 2 and "no eligible host" in result.err and "gather" in result.err


@pytest.mark.ansible
def test_hosts_no_execution_node_serves_are_excluded_with_the_reason(cli, tmp_path, monkeypatch):
    from klpfleet.db.models import ExecutionNode

    monkeypatch.setenv("KLPFLEET_RUN_DIR", str(tmp_path / "runs"))
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = fleet_db(tmp_path, url, hosts=6)  # zones a, b, c
    register(db, tmp_path)
    with db.session.begin() as s:
        for zone in ("a", "b"):
            s.add(ExecutionNode(name=f"n{zone}", ssh_user="r", ssh_host="h", serves_label="zone", serves_value=zone,
                                added_by="t"))  # fmt: skip
    created = cli("--db", url, "rollout", "create", "livepatch_cve_2026_1234", "-o", "json")
    assert created.code == 0, created.err
    plan = created.json()["data"]
    assert sorted(h for w in plan["waves"] for h in w["hosts"]) == ["sim-01", "sim-02", "sim-04", "sim-05"]
    reasons = {e["host"]: e["reason"] for e in plan["excluded"]}
    assert set(reasons) == {"sim-03", "sim-06"} and all("no execution node serves it" in r for r in reasons.values())
    from sqlalchemy import select

    from klpfleet.controller.plan import unserved_hosts
    from klpfleet.db.models import Host

    with db.session.begin() as s:  # an unlabelled node serves whatever no labelled node does
        hosts = list(s.scalars(select(Host)))
        assert sorted(h.name for h in unserved_hosts(s, hosts)) == ["sim-03", "sim-06"]
        s.add(ExecutionNode(name="any", ssh_user="r", ssh_host="h", added_by="t"))
        s.flush()
        assert unserved_hosts(s, hosts) == {}
