"""Patches kept for boot: the patch module keeps what it applied (per kernel release, in stack order), and the boot
loader loads it again when a simulated host reboots, through the same apply code as a rollout."""

import json
import os
import platform
import subprocess
import sys

import pytest

from ansible_collections.klpfleet.livepatch.plugins.module_utils import _persist as persist
from ansible_collections.klpfleet.livepatch.plugins.module_utils._boot import bundle
from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import (
    Livepatch,
    LivepatchError,
    file_sha256,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost
from ansible_collections.klpfleet.livepatch.plugins.modules import patch as patch_module
from klpfleet.sim.fleet import reboot_host

from .simhelpers import RELEASE, build, sim_host
from .test_collection_modules import run_module

OTHER_RELEASE = "6.1.0-57-amd64"


def klpfleet(*args):
    return subprocess.run(
        [sys.executable, "-m", "klpfleet.cli.main", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def host(tmp_path):
    sim_host(tmp_path / "host")
    return str(tmp_path / "host")


def apply(capsys, host, ko, **extra):
    return run_module(patch_module, capsys, backend="sim", sim_root=host, src=ko, **extra)


def loaded(host):
    with SimHost(host) as k:
        return [p["name"] for p in k.s["patches"] if p["enabled"]]


def kept(host, release=RELEASE):
    return [e["name"] for e in persist.manifest(os.path.join(host, "boot"), release)]


def test_stacked_patches_come_back_in_stack_order_after_a_reboot(capsys, host, tmp_path):
    first, second = build(tmp_path, "lp_first"), build(tmp_path, "lp_second")
    results = [apply(capsys, host, first), apply(capsys, host, second)]
    assert [r["persisted"] for r in results] == [True, True]
    assert kept(host) == ["lp_first", "lp_second"]
    boot_dir = os.path.join(host, "boot", RELEASE)
    assert oct(os.stat(boot_dir).st_mode & 0o777) == "0o700"
    assert sorted(f for f in os.listdir(boot_dir) if f.endswith(".ko")) == sorted(
        file_sha256(ko) + ".ko" for ko in (first, second)
    )
    with SimHost(host) as k:
        boot_id = k.s["boot_id"]

    status = reboot_host(tmp_path / "host")
    assert status["boot_id"] != boot_id
    assert [(r["name"], r["outcome"]) for r in status["results"]] == [
        ("lp_first", "applied"),
        ("lp_second", "applied"),
    ]
    assert loaded(host) == ["lp_first", "lp_second"]  # enable order is stack order
    with SimHost(host) as k:
        log = [text for _, _, text in k.s["log"]]
    assert "klpfleet-boot: lp_first: applied" in log and "klpfleet-boot: lp_second: applied" in log
    assert persist.boot_status(os.path.join(host, "boot"), RELEASE)["boot_id"] == status["boot_id"]

    again = apply(capsys, host, second)  # applying it again after the boot changes nothing
    assert (again["outcome"], again["changed"]) == ("already_applied", False)


def test_a_replace_patch_takes_the_place_of_what_it_replaced(capsys, host, tmp_path):
    apply(capsys, host, build(tmp_path, "lp_a"))
    apply(capsys, host, build(tmp_path, "lp_b"))
    result = apply(capsys, host, build(tmp_path, "lp_cumulative", replace=True))
    assert sorted(result["replaced"]) == ["lp_a", "lp_b"]
    assert kept(host) == ["lp_cumulative"]
    assert len([f for f in os.listdir(os.path.join(host, "boot", RELEASE)) if f.endswith(".ko")]) == 1
    reboot_host(tmp_path / "host")
    assert loaded(host) == ["lp_cumulative"]


def test_remove_takes_a_patch_out_and_persist_false_keeps_nothing(capsys, host, tmp_path):
    apply(capsys, host, build(tmp_path, "lp_a"))
    apply(capsys, host, build(tmp_path, "lp_b"))
    removed = run_module(patch_module, capsys, backend="sim", sim_root=host, name="lp_a", state="absent")
    assert (removed["outcome"], removed["persisted"]) == ("removed", False)
    assert kept(host) == ["lp_b"]
    transient = apply(capsys, host, build(tmp_path, "lp_transient"), persist=False)
    assert "persisted" not in transient
    assert kept(host) == ["lp_b"]
    reboot_host(tmp_path / "host")
    assert loaded(host) == ["lp_b"]


def test_check_mode_keeps_nothing(capsys, host, tmp_path):
    result = apply(capsys, host, build(tmp_path, "lp_a"), _ansible_check_mode=True)
    assert result["changed"] is True
    assert not os.path.exists(os.path.join(host, "boot", RELEASE, "manifest.json"))


def test_another_kernel_release_loads_nothing_and_the_old_manifest_stays(capsys, host, tmp_path):
    apply(capsys, host, build(tmp_path, "lp_a"))
    status = reboot_host(tmp_path / "host", OTHER_RELEASE)
    assert (status["kernel_release"], status["results"]) == (OTHER_RELEASE, [])
    assert loaded(host) == []
    assert kept(host) == ["lp_a"]  # booting the old release again brings it back
    reboot_host(tmp_path / "host", RELEASE)
    assert loaded(host) == ["lp_a"]


def test_a_refusal_at_boot_is_reported_and_the_next_patch_still_loads(capsys, host, tmp_path):
    apply(capsys, host, build(tmp_path, "lp_a"))
    apply(capsys, host, build(tmp_path, "lp_b"))
    with SimHost(host) as k:  # since the patch was applied, something on the host makes lp_a's callback refuse
        k.s["faults"]["refuse"] = [{"patch": "lp_a", "object": "vmlinux", "errno": 19}]
    result = klpfleet("sim", "host", "reboot", host, "-o", "json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)["data"]
    outcomes = {r["name"]: (r["outcome"], r.get("klp_error"), r.get("host_clean")) for r in doc["results"]}
    assert outcomes == {"lp_a": ("refused", "refused", True), "lp_b": ("applied", None, None)}
    assert loaded(host) == ["lp_b"]
    with SimHost(host) as k:
        assert any("klpfleet-boot: lp_a: failed klp_error=refused" in text for _, _, text in k.s["log"])


def test_a_stall_at_boot_is_reversed_like_any_load(capsys, host, tmp_path):
    apply(capsys, host, build(tmp_path, "lp_a"))
    with SimHost(host) as k:
        k.s["boot"]["stalls"] = [{"function": "lp_a_func", "seconds": "forever"}]
    status = reboot_host(tmp_path / "host", transition_timeout=2)
    assert [(r["outcome"], r["klp_error"], r["host_clean"]) for r in status["results"]] == [
        ("failed", "transition_stalled", True)
    ]
    assert loaded(host) == []


def test_a_manifest_nobody_can_trust_loads_nothing_and_says_why(capsys, host, tmp_path):
    apply(capsys, host, build(tmp_path, "lp_a"))
    path = os.path.join(host, "boot", RELEASE, "manifest.json")
    with open(path, "w") as f:
        f.write('{"format": 1, "patches": [{"name": "../../etc/x", "sha256": "00"}]}')
    status = reboot_host(tmp_path / "host")
    assert status["results"] == [] and "not a kernel module name" in status["error"]
    assert loaded(host) == []
    with pytest.raises(LivepatchError):
        persist.keep(os.path.join(host, "boot"), RELEASE, "lp_b", "0" * 64, b"x")  # never written over blindly


def test_reboot_of_a_missing_host_is_one_line(tmp_path):
    result = klpfleet("sim", "host", "reboot", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no simulated host here" in result.stderr


def test_the_loader_bundle_runs_as_a_zip_application(tmp_path):
    """The archive the action plugin sends runs on its own with the host's python3 (standard library only)."""
    release = platform.release()
    boot = tmp_path / "boot"
    (boot / release).mkdir(parents=True)
    (boot / release / "manifest.json").write_text(
        json.dumps({"format": 1, "kernel_release": release, "patches": [{"name": "lp_a", "sha256": "a" * 64}]})
    )
    bundle_file = tmp_path / "klpfleet-boot.pyz"
    bundle_file.write_bytes(bundle())
    env = {"PATH": os.environ["PATH"], "PYTHONNOUSERSITE": "1"}
    run = subprocess.run(
        [sys.executable, "-I", str(bundle_file), "list", "--persist-dir", str(boot)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (run.returncode, run.stdout) == (0, f"lp_a {'a' * 64}\n"), run.stderr
    assert bundle() == bundle()


def test_on_a_systemd_host_the_unit_is_installed_and_enabled(tmp_path):
    boot, units = str(tmp_path / "boot"), tmp_path / "units"
    units.mkdir()
    assert persist.install_loader(boot, bundle(), "/usr/bin/python3", systemd=True, unit_dir=str(units)) is True
    unit = (units / persist.UNIT_NAME).read_text()
    assert f"ExecStart=/usr/bin/python3 {boot}/klpfleet-boot.pyz load --persist-dir {boot}" in unit
    assert "Before=network-pre.target" in unit and "ConditionKernelCommandLine=!klpfleet.boot=0" in unit
    link = units / "multi-user.target.wants" / persist.UNIT_NAME
    assert os.readlink(link) == str(units / persist.UNIT_NAME)
    assert oct(os.stat(os.path.join(boot, persist.LOADER)).st_mode & 0o777) == "0o500"
    assert persist.install_loader(boot, bundle(), "/usr/bin/python3", systemd=True, unit_dir=str(units)) is False


def test_boot_id_and_time_are_facts(tmp_path):
    prims = sim_host(tmp_path / "host")
    lp = Livepatch(prims)
    first = (lp.boot_id(), lp.booted_at())
    assert first[0] and first[1] > 1_700_000_000
    reboot_host(tmp_path / "host")
    assert lp.boot_id() != first[0]
    assert set(lp.facts(with_tasks=False)) >= {"boot_id", "booted_at"}
