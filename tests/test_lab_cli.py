"""`klpfleet lab` without booting anything: bad input, an absent lab, the step lines sent to a VM."""

import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources

import pytest

from klpfleet.lab.artifacts import LabError, cache_locked, release_numbers, suite_of
from klpfleet.lab.conformance import run_on_vm
from klpfleet.lab.selftest import step_line
from klpfleet.sim.kselftest import judge_script
from klpfleet.sim.scenario import parse_scenario

from .conftest import run_klpfleet


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--vms", "0"), "--vms must be between 1 and 8"),
        (("--vms", "9"), "--vms must be between 1 and 8"),
        (("--kernel", "5.10.0-1-amd64; reboot"), "expected a suite (bullseye, bookworm, trixie, trixie-backports)"),
        (("--kernel", "buster"), "expected a suite (bullseye, bookworm, trixie, trixie-backports)"),
    ],
)
def test_lab_up_refuses_bad_input_in_one_line(tmp_path, args, message):
    proc = run_klpfleet("lab", "up", "--dir", str(tmp_path / "lab"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_lab_up_will_not_take_over_a_directory_that_is_not_a_lab(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = run_klpfleet("lab", "up", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "is not a klpfleet lab directory" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_second_build_of_the_lab_cache_waits_for_the_first_and_gives_up_in_time(tmp_path):
    said: list[str] = []
    with cache_locked(tmp_path, said.append):
        started = time.monotonic()
        with (
            pytest.raises(LabError, match="still being built by another klpfleet after"),
            cache_locked(tmp_path, said.append, wait=1.5),
        ):
            pass
        assert 1.5 <= time.monotonic() - started < 10
    assert said == ["waiting for another klpfleet's build of the lab cache"]
    with cache_locked(tmp_path, said.append, wait=0):  # released: taken at once, nothing said
        assert len(said) == 1


def test_lab_prepare_waits_for_a_build_in_another_process_and_ctrl_c_ends_it_in_one_line(tmp_path):
    """`lab prepare` (as CI runs it, beside the tests' `lab up`) waits for the lock another process holds; Ctrl-C
    while it waits is one line and exit 130, and the other build's lock is untouched."""
    cache = tmp_path / "cache"
    with cache_locked(cache, lambda _line: None):
        proc = subprocess.Popen(
            [sys.executable, "-m", "klpfleet.cli.main", "lab", "prepare", "--kernel", "bookworm"],
            env={**os.environ, "KLPFLEET_LAB_CACHE": str(cache)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        assert proc.stderr.readline().strip() == "waiting for another klpfleet's build of the lab cache"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not any(p.name != ".lock" for p in cache.iterdir())  # it built nothing while it waited


def test_status_of_no_lab_exits_1_and_down_is_a_no_op(tmp_path):
    proc = run_klpfleet("lab", "status", "--dir", str(tmp_path), "-o", "json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)["data"]
    assert (data["up"], data["vms"]) == (False, [])
    assert run_klpfleet("lab", "down", "--dir", str(tmp_path)).returncode == 0


def test_a_corrupt_state_file_is_one_line(tmp_path):
    (tmp_path / "lab.json").write_text("{not json")
    proc = run_klpfleet("lab", "status", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "not a klpfleet lab state file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_steps_travel_as_lines_of_data():
    steps = parse_scenario(
        {
            "steps": [
                {"load_mod": "test_klp_callbacks_busy", "params": "block_transition=Y"},
                {"load_lp": "test_klp_callbacks_demo"},
                {"set_pre_patch_ret": {"module": "test_klp_callbacks_demo", "value": -19}},
                {"sleep": 1.5},
            ]
        }
    )
    assert [step_line(s) for s in steps] == [
        "load_mod test_klp_callbacks_busy block_transition=Y\n",
        "load_lp test_klp_callbacks_demo\n",
        "set_pre_patch_ret test_klp_callbacks_demo -19\n",
        "sleep 1.5\n",
    ]


def test_lab_selftests_without_a_lab_or_with_a_bad_script_name_says_so_in_one_line(tmp_path):
    proc = run_klpfleet("lab", "selftests", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "no lab at" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(LabError, match="is not a livepatch selftest name"):
        run_on_vm(tmp_path, "lab1", "../../bin/reboot")  # refused before anything is reached


@pytest.mark.parametrize("name", ["../../../bin/sh", "functions.sh", "test-x.sh; reboot", ""])
def test_the_guest_runner_takes_only_a_selftest_of_its_own_directory(tmp_path, name):
    script = resources.files("klpfleet.lab").joinpath("guest", "run-upstream.sh")
    proc = subprocess.run(["sh", str(script), name], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "run-upstream.sh:" in proc.stderr


def test_kselftest_verdicts_are_read_as_kselftest_reads_them():
    out = "TEST: basic function patching ... ok\nTEST: multiple livepatches ... not ok\n\n--- expected\n"
    failed = judge_script("test-livepatch.sh", 1, out, "ERROR: livepatch kselftest(s) failed\n")
    assert failed.verdict == "fail" and failed.tests == [
        ("basic function patching", True),
        ("multiple livepatches", False),
    ]
    assert "ERROR: livepatch kselftest(s) failed" in failed.detail
    assert judge_script("test-kprobe.sh", 4, "", "SKIP: no kprobes\n").verdict == "skip"
    passed = judge_script("test-sysfs.sh", 0, "TEST: sysfs test ... ok\n", "")
    assert (passed.verdict, passed.detail) == ("pass", "")
    assert judge_script("test-sysfs.sh", None, "", "").verdict == "fail"  # killed by the time-out: no exit code


@pytest.mark.parametrize(
    ("release", "suite"),
    [
        ("5.10.0-32-amd64", "bullseye"),
        ("6.1.0-50-amd64", "bookworm"),
        ("6.12.117+deb13-amd64", "trixie"),
        ("6.18.15+deb13-amd64", "trixie-backports"),
        ("7.3.4+deb13-amd64", "trixie-backports"),
        ("6.12.117+deb13-cloud-amd64", None),
        ("6.2.1+deb13-amd64", None),
    ],
)
def test_each_kernel_release_belongs_to_one_suite(release, suite):
    assert suite_of(release) == suite


def test_the_newest_release_of_a_suite_is_chosen_by_its_numbers_not_its_text():
    releases = ["7.2.12+deb13-amd64", "7.3.4+deb13-amd64", "6.19.14+deb13-amd64", "7.10.1+deb13-amd64"]
    assert max(releases, key=release_numbers) == "7.10.1+deb13-amd64"
    assert sorted(["6.1.0-9-amd64", "6.1.0-50-amd64"], key=release_numbers)[-1] == "6.1.0-50-amd64"
