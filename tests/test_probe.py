"""klpfleet probe over real SSH (sshd on loopback ports, started by the tests), each host a simulated
kernel: drift of each kind, unreachable and refused-auth hosts, host keys, timeouts, hostile names."""

import fcntl
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import apply_patch, remove_patch
from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost
from klpfleet.db.models import Event, Host, HostPatch, Patch
from klpfleet.hoststate.observations import PatchObservation, observe
from klpfleet.registry.patches import add_patch
from klpfleet.sim.fleet import create_host, reboot_host
from klpfleet.sim.spec import normalize, write_ko
from klpfleet.states import PatchState

from .sshhelpers import free_port, keygen, ssh_user

pytestmark = pytest.mark.ssh


@pytest.fixture
def fleet(tmp_path, sqlite_db, sshd, ssh_client_key):
    """Four SSH hosts (one sshd, distinct simulated kernels) plus one whose sshd is down."""
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    ko = write_ko(normalize({"name": "lp_fix", "objects": [{"name": "vmlinux", "funcs": ["f"]}]}), tmp_path / "lp.ko")
    with sqlite_db.session.begin() as s:
        add_patch(s, ko)
        for name in ("web1", "web2", "web3", "web4", "down1"):
            root = tmp_path / "hosts" / name
            create_host(root, speed=0.0)
            s.add(
                Host(
                    name=name,
                    address="127.0.0.1",
                    port=free_port() if name == "down1" else sshd.port,
                    user=ssh_user(),
                    key_file=str(ssh_client_key),
                    vars={"klp_backend": "sim", "klp_sim_root": str(root)},
                )
            )
    return {"known": known, "ko": str(ko), "db": sqlite_db, "hosts": tmp_path / "hosts"}


def prims(fleet, name):
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import primitives_for

    return primitives_for("sim", str(fleet["hosts"] / name))


def run_probe(cli, sqlite_url, fleet, *args):
    result = cli("--db", sqlite_url, "probe", "--known-hosts", fleet["known"], "--timeout", "20", *args, "-o", "json")
    assert result.out, result.err
    return result


def host_states(db):
    with db.session() as s:
        return dict(s.execute(select(Host.name, HostPatch.state).join(HostPatch, HostPatch.host_id == Host.id)).all())


def test_probe_reads_state_and_finds_every_kind_of_drift(cli, sqlite_url, fleet):
    db = fleet["db"]
    for name in ("web1", "web2"):
        apply_patch(prims(fleet, name), fleet["ko"])
    with db.session.begin() as s:  # the database believes: web1 and web2 applied, web3 absent
        from klpfleet.db.models import Patch

        patch = s.scalar(select(Patch))
        for name, state in (("web1", PatchState.APPLIED), ("web2", PatchState.APPLIED), ("web3", PatchState.ABSENT)):
            host = s.scalar(select(Host).where(Host.name == name))
            host.kernel_release = "6.1.0-56-amd64"
            observe(s, host, patch, PatchObservation(state=state), observed_by="test")
    remove_patch(prims(fleet, "web2"), "lp_fix")  # removed by hand behind klpfleet's back
    apply_patch(prims(fleet, "web3"), fleet["ko"])  # loaded although the database says absent
    other = write_ko(
        normalize({"name": "lp_unknown", "objects": [{"name": "vmlinux", "funcs": ["g"]}]}),
        fleet["hosts"] / "unknown.ko",
    )
    apply_patch(prims(fleet, "web4"), str(other))  # a patch nobody registered
    reboot_host(fleet["hosts"] / "web1", "6.1.0-57-amd64")  # web1 rebooted into another kernel

    before = {n: (fleet["hosts"] / n / "kernel.json").read_text().count("enabling patch") for n in ("web1", "web3")}
    result = run_probe(cli, sqlite_url, fleet)
    assert result.code == 1, result.err
    data = result.json()["data"]
    assert data["summary"]["reachable"] == 4 and data["summary"]["by_status"] == {"ok": 4, "unreachable": 1}
    hosts = {h["host"]: h for h in data["hosts"]}
    # Not drift: its patch was built for the release it left (superseded), and the new kernel is reported.
    assert hosts["web1"]["drift"] == []
    assert hosts["web1"]["kernel_changed"] == {"previous": "6.1.0-56-amd64", "current": "6.1.0-57-amd64"}
    assert hosts["web2"]["drift"][0]["found"] == "expected applied, found absent"
    assert hosts["web3"]["drift"][0]["found"] == "expected absent, found loaded"
    assert hosts["web4"]["drift"] == [{"kind": "unknown_patch", "patch": "lp_unknown"}]
    assert hosts["web4"]["patches"] == ["lp_unknown"]
    assert hosts["down1"]["status"] == "unreachable"
    assert host_states(db) == {"web1": "superseded", "web2": "drift", "web3": "drift"}
    with db.session() as s:
        kinds = sorted(k for (k,) in s.execute(select(Event.kind).where(Event.kind.startswith("drift."))))
        assert kinds == ["drift.patch_state", "drift.patch_state", "drift.unknown_patch"]
        assert s.scalar(select(Event.details).where(Event.kind == "host.kernel_changed")) == {
            "previous": "6.1.0-56-amd64",
            "current": "6.1.0-57-amd64",
        }
        assert s.scalar(select(Host.kernel_release).where(Host.name == "web1")) == "6.1.0-57-amd64"
        assert s.scalar(select(Host.reachable).where(Host.name == "down1")) is False
    # Read-only: the probe never changed a kernel.
    after = {n: (fleet["hosts"] / n / "kernel.json").read_text().count("enabling patch") for n in ("web1", "web3")}
    assert after == before
    assert [p["name"] for p in json.loads((fleet["hosts"] / "web3" / "kernel.json").read_text())["patches"]] == [
        "lp_fix"
    ]


def test_refused_module_load_found_by_probe(cli, sqlite_url, fleet, tmp_path):
    root = fleet["hosts"] / "web1"
    with SimHost(str(root)) as k:
        k.s["faults"] = {"refuse": [{"patch": "*", "object": "virtio_net", "errno": 19}]}
    ko = write_ko(
        normalize(
            {"name": "lp_net", "objects": [{"name": "vmlinux", "funcs": ["a"]}, {"name": "virtio_net", "funcs": ["b"]}]}
        ),
        tmp_path / "n.ko",
    )
    apply_patch(prims(fleet, "web1"), str(ko))
    write_ko(normalize({"name": "virtio_net", "livepatch": False}), root / "modules" / "virtio_net.ko")
    assert prims(fleet, "web1").run(["modprobe", "virtio_net"])[0] == 1
    data = run_probe(cli, sqlite_url, fleet, "--hosts", "web1").json()["data"]
    assert data["summary"]["refused_module_loads"] == 1
    with fleet["db"].session() as s:
        [event] = s.scalars(select(Event).where(Event.kind == "module.load_refused")).all()
    assert (event.host_name, event.patch_name, event.details["module"]) == ("web1", "lp_net", "virtio_net")
    # Found once: probing again adds no second event for the same kernel log record.
    run_probe(cli, sqlite_url, fleet, "--hosts", "web1")
    with fleet["db"].session() as s:
        assert len(s.scalars(select(Event).where(Event.kind == "module.load_refused")).all()) == 1


def test_probe_sees_reboots_like_gather_does(cli, sqlite_url, fleet):
    """The probe's path for reboots: reloaded at boot (kept), lost (not kept), superseded (another kernel)."""
    from ansible_collections.klpfleet.livepatch.plugins.module_utils import _persist
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import file_sha256

    with open(fleet["ko"], "rb") as f:
        data = f.read()
    for name in ("web1", "web2", "web3"):
        result = apply_patch(prims(fleet, name), fleet["ko"])
        if name != "web2":  # web2 applied it without keeping it for boot
            root = str(fleet["hosts"] / name)
            _persist.keep(
                _persist.default_dir("sim", root), result["kernel_release"], "lp_fix", file_sha256(fleet["ko"]), data
            )
    run_probe(cli, sqlite_url, fleet, "--hosts", "web*")  # the boot each host is in
    with fleet["db"].session.begin() as s:
        patch = s.scalar(select(Patch))
        for name in ("web1", "web2", "web3"):
            observe(
                s,
                s.scalar(select(Host).where(Host.name == name)),
                patch,
                PatchObservation(PatchState.APPLIED),
                observed_by="test",
            )
    reboot_host(fleet["hosts"] / "web1")
    reboot_host(fleet["hosts"] / "web2")
    reboot_host(fleet["hosts"] / "web3", "6.1.0-57-amd64")
    data = run_probe(cli, sqlite_url, fleet, "--hosts", "web*").json()["data"]
    hosts = {h["host"]: h for h in data["hosts"]}
    assert [hosts[n]["rebooted"] for n in ("web1", "web2", "web3", "web4")] == [True, True, True, False]
    assert all(hosts[n]["drift"] == [] for n in ("web1", "web2", "web3"))
    assert host_states(fleet["db"]) == {"web1": "applied", "web2": "lost_at_reboot", "web3": "superseded"}
    with fleet["db"].session() as s:
        reloaded = s.scalars(select(Event.host_name).where(Event.kind == "patch.reloaded_at_boot")).all()
        rebooted = s.scalars(select(Event.host_name).where(Event.kind == "host.rebooted")).all()
    assert (reloaded, sorted(rebooted)) == (["web1"], ["web1", "web2", "web3"])


def test_unknown_host_key_is_refused_unless_accepted(cli, sqlite_url, fleet, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    refused = cli("--db", sqlite_url, "probe", "--hosts", "web1", "--known-hosts", empty, "-o", "json")
    assert refused.code == 1
    assert refused.json()["data"]["hosts"][0]["status"] == "host_key_unknown"
    assert not empty.exists()
    accepted = cli(
        "--db", sqlite_url, "probe", "--hosts", "web1", "--known-hosts", empty, "--accept-new-host-keys", "-o", "json"
    )
    host = accepted.json()["data"]["hosts"][0]
    assert host["status"] == "ok" and host["accepted_key"].startswith("ssh-ed25519 SHA256:")
    assert "ssh-ed25519" in empty.read_text()
    with fleet["db"].session() as s:
        assert (
            s.scalar(select(Event.details).where(Event.kind == "probe.host_key_accepted"))["key"]
            == host["accepted_key"]
        )
    again = cli("--db", sqlite_url, "probe", "--hosts", "web1", "--known-hosts", empty, "-o", "json")
    assert again.json()["data"]["hosts"][0]["status"] == "ok"


def test_changed_host_key_and_refused_auth_are_their_own_results(cli, sqlite_url, fleet, tmp_path, sshd):
    changed = tmp_path / "changed"
    other = keygen(tmp_path / "other_host_key")
    kind, key = Path(f"{other}.pub").read_text().split()[:2]
    changed.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    result = cli("--db", sqlite_url, "probe", "--hosts", "web1", "--known-hosts", changed, "-o", "json")
    assert result.json()["data"]["hosts"][0]["status"] == "host_key_changed"
    wrong = keygen(tmp_path / "wrong_client_key")
    with fleet["db"].session.begin() as s:
        s.scalar(select(Host).where(Host.name == "web2")).key_file = str(wrong)
    result = run_probe(cli, sqlite_url, fleet, "--hosts", "web1:web2")
    statuses = {h["host"]: h["status"] for h in result.json()["data"]["hosts"]}
    assert statuses == {"web1": "ok", "web2": "auth_failed"}


def test_timeout_and_broken_remote(cli, sqlite_url, fleet):
    os.rename(fleet["hosts"] / "web2" / "kernel.json", fleet["hosts"] / "web2" / "gone.json")
    with open(fleet["hosts"] / "web1" / ".lock", "w") as lock:  # the host hangs: its kernel state stays locked
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = cli(
            "--db",
            sqlite_url,
            "probe",
            "--known-hosts",
            fleet["known"],
            "--hosts",
            "web1:web2:web3",
            "--timeout",
            "3",
            "-o",
            "json",
        )
    hosts = {h["host"]: h for h in result.json()["data"]["hosts"]}
    assert hosts["web1"]["status"] == "timeout"
    assert hosts["web2"]["status"] == "broken_remote" and "no simulated host here" in hosts["web2"]["error"]
    assert hosts["web3"]["status"] == "ok"


def test_hostile_host_name_is_only_a_label(cli, sqlite_url, fleet, tmp_path, sshd, ssh_client_key):
    marker = tmp_path / "pwned"
    name = f"x;touch {marker};$(touch {marker})"
    root = tmp_path / "hostile"
    create_host(root, speed=0.0)
    with fleet["db"].session.begin() as s:  # written straight to the database, past the import's checks
        s.add(
            Host(
                name=name,
                address="127.0.0.1",
                port=sshd.port,
                user=ssh_user(),
                key_file=str(ssh_client_key),
                vars={"klp_backend": "sim", "klp_sim_root": f"{root}"},
            )
        )
    result = run_probe(cli, sqlite_url, fleet, "--hosts", "x*")
    assert result.json()["data"]["hosts"][0]["status"] == "ok"
    assert not marker.exists()


def test_local_simulated_hosts_take_the_same_path(cli, sqlite_url, fleet):
    with fleet["db"].session.begin() as s:
        s.scalar(select(Host).where(Host.name == "web3")).vars = {
            "klp_backend": "sim",
            "klp_sim_root": str(fleet["hosts"] / "web3"),
            "ansible_connection": "local",
        }
    data = run_probe(cli, sqlite_url, fleet, "--hosts", "web3").json()["data"]
    assert data["hosts"][0]["status"] == "ok" and data["hosts"][0]["kernel_release"] == "6.1.0-56-amd64"
