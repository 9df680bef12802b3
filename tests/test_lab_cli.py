"""`klpfleet lab` without booting anything: bad input, an absent lab, the step lines sent to a VM."""

import json

import pytest

from klpfleet.lab.selftest import step_line
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
