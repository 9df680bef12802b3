"""Simulated hosts and fleets: the fleet spec, faults on boot, the inventory Ansible reads, and
simulated artifacts registered like real ones."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import Livepatch
from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import apply_patch
from ansible_collections.klpfleet.livepatch.plugins.module_utils._primitives import RealPrimitives, primitives_for

from .conftest import run_klpfleet

FLEET = textwrap.dedent("""
    kernel_release: 6.1.0-56-amd64
    hosts: 24
    labels:
      zone: [a, b, c]
    faults:
      sim-05: {refuse: {patch: "*", object: vmlinux, errno: EBUSY}}
      sim-11: {stall: {function: "*", seconds: forever, ignores_signal: true}}
      sim-17: {unreachable: true}
      sim-20: {kernel_release: 6.1.0-99-amd64, modules: [virtio_net]}
""")
PATCH = textwrap.dedent("""
    name: livepatch_cve_2026_1234
    kernel_release: 6.1.0-56-amd64   # vermagic is derived from it
    replace: true
    objects:
      - name: vmlinux
        funcs: [tcp_send_challenge_ack]
""")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    (tmp / "fleet.yml").write_text(FLEET)
    (tmp / "lp.yml").write_text(PATCH)
    proc = run_klpfleet("sim", "fleet", "create", str(tmp / "f"), "--spec", str(tmp / "fleet.yml"), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    built = run_klpfleet("sim", "build-patch", str(tmp / "lp.yml"), "-o", str(tmp / "lp.ko"))
    assert built.returncode == 0, built.stderr
    return tmp


def ansible_inventory(path):
    binary = Path(sys.executable).with_name("ansible-inventory")
    proc = subprocess.run([str(binary), "-i", str(path), "--list"], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_inventory_as_ansible_reads_it(fleet):
    inv = ansible_inventory(fleet / "f" / "inventory.yml")
    hostvars = inv["_meta"]["hostvars"]
    assert len(hostvars) == 24 and "sim-01" in hostvars and "sim-24" in hostvars
    assert sorted(inv["zone_a"]["hosts"])[:2] == ["sim-01", "sim-04"]
    h1 = hostvars["sim-01"]
    assert (h1["klp_backend"], h1["ansible_connection"], h1["zone"]) == ("sim", "local", "a")
    assert Path(h1["klp_sim_root"]).is_absolute()
    h17 = hostvars["sim-17"]
    assert (h17["ansible_connection"], h17["ansible_host"]) == ("ssh", "127.0.0.1")


def test_faults_take_effect(fleet, tmp_path):
    hosts = fleet / "f" / "hosts"
    ko = str(fleet / "lp.ko")

    def prims(name):
        copy = tmp_path / name
        shutil.copytree(hosts / name, copy)  # leave the shared fleet untouched
        return primitives_for("sim", str(copy))

    assert apply_patch(prims("sim-01"), ko, transition_timeout=2)["outcome"] == "applied"
    from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import LivepatchError

    with pytest.raises(LivepatchError) as refused:
        apply_patch(prims("sim-05"), ko, transition_timeout=2)
    assert (refused.value.klp_error, refused.value.details["errno_name"]) == ("refused", "EBUSY")
    with pytest.raises(LivepatchError) as stalled:
        apply_patch(prims("sim-11"), ko, transition_timeout=2)
    assert stalled.value.klp_error == "transition_stalled" and stalled.value.details["host_clean"]
    sim20 = prims("sim-20")
    assert Livepatch(sim20).kernel_release() == "6.1.0-99-amd64"
    assert Livepatch(sim20).module_loaded("virtio_net")
    with pytest.raises(LivepatchError) as mismatch:
        apply_patch(sim20, ko)
    assert mismatch.value.klp_error == "vermagic_mismatch"


def test_fleet_registers_nothing_and_patch_registers_like_a_real_one(fleet, tmp_path):
    db = tmp_path / "k.db"
    assert run_klpfleet("--db", str(db), "db", "upgrade").returncode == 0
    added = run_klpfleet(
        "--db",
        str(db),
        "patch",
        "add",
        str(fleet / "lp.ko"),
        "-o",
        "json",
        env={"KLPFLEET_ARTIFACTS": str(tmp_path / "a")},
    )
    assert added.returncode == 0, added.stderr
    data = json.loads(added.stdout)["data"]
    assert (data["name"], data["kernel_release"]) == ("livepatch_cve_2026_1234", "6.1.0-56-amd64")
    hosts = json.loads(run_klpfleet("--db", str(db), "hosts", "-o", "json").stdout)["data"]
    assert hosts == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hosts: 0\n", "between 1 and 100000"),
        ("hosts: [a, a]\n", "repeat"),
        ("hosts: ['bad;name']\n", "not a host name"),
        ("hosts: 3\nfaults: {sim-09: {unreachable: true}}\n", "not in the fleet"),
        ("hosts: 3\nfaults: {sim-01: {explode: true}}\n", "keys are"),
        ("hosts: 3\nlabels: {zone: []}\n", "non-empty list"),
        ("hosts: 3\nfaults: {sim-01: {refuse: {errno: ENOTANERRNO}}}\n", "unknown errno"),
        ("hosts: 3\nbogus: 1\n", "unknown keys"),
        ("hosts: [\n", "not valid YAML"),
    ],
)
def test_bad_fleet_specs(tmp_path, spec, message):
    (tmp_path / "fleet.yml").write_text(spec)
    proc = run_klpfleet("sim", "fleet", "create", str(tmp_path / "f"), "--spec", str(tmp_path / "fleet.yml"))
    assert proc.returncode != 0
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("name: 'bad name'\n", "not a module name"),
        ("name: lp\nobjects: [{name: vmlinux, funcs: ['rm -rf']}]\n", "not a function name"),
        ("name: lp\nlivepatch: true\n", "at least one object"),
        ("name: lp\nobjects: [{name: vmlinux, callbacks: {pre_patch: {ret: 'param:nope'}}}]\n", "declared param"),
        ("name: lp\nkernel_release: 'six'\nobjects: [{name: vmlinux}]\n", "not a kernel release"),
    ],
)
def test_bad_patch_specs(tmp_path, spec, message):
    (tmp_path / "s.yml").write_text(spec)
    proc = run_klpfleet("sim", "build-patch", str(tmp_path / "s.yml"), "-o", str(tmp_path / "x.ko"))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "x.ko").exists()


def test_real_primitives_on_this_machine(tmp_path):
    """The real layer runs here for what this machine has: files, the tool allow-list, the clock."""
    prims = RealPrimitives()
    path = tmp_path / "attr"
    prims.write(str(path), "1")
    assert prims.read(str(path)) == "1"
    assert prims.listdir(str(tmp_path)) == ["attr"]
    with pytest.raises(ValueError):
        prims.run(["sh", "-c", "true"])
    with pytest.raises(OSError) as info:
        prims.read(str(tmp_path / "missing"))
    assert info.value.errno == 2
    records, cursor = prims.read_log(-1)
    assert isinstance(records, list) and isinstance(cursor, int)
    start = prims.now()
    prims.sleep(0.01)
    assert prims.now() > start
    assert Livepatch(prims).supported() is os.path.isdir("/sys/kernel/livepatch")
