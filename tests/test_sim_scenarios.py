"""The simulator against the kernel selftests' expected logs (test-callbacks.sh, test-state.sh,
test-livepatch.sh), byte for byte. The .out files hold the selftests' expected text."""

from pathlib import Path

import pytest

from klpfleet.sim.scenario import load_scenario, run_scenario

from .conftest import run_klpfleet

SCENARIOS = sorted(Path(__file__).parent.joinpath("scenarios").glob("*.yml"))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.stem for s in SCENARIOS])
def test_selftest_vector(scenario):
    expected = scenario.with_suffix(".out").read_text()
    assert "\n".join(run_scenario(load_scenario(scenario))) + "\n" == expected


def test_sim_run_cli_prints_the_filtered_log():
    scenario = Path(__file__).parent / "scenarios" / "callbacks-pre-patch-enodev.yml"
    proc = run_klpfleet("sim", "run", str(scenario))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == scenario.with_suffix(".out").read_text()


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("steps:\n  - load_failing_mod: test_klp_callbacks_mod\n", "the module loaded"),
        ("steps:\n  - load_mod: test_klp_callbacks_mod\n  - load_mod: test_klp_callbacks_mod\n", "File exists"),
        ("steps:\n  - unload_mod: test_klp_callbacks_mod\n", "refcnt never reached 0"),
        (
            "steps:\n  - load_mod: test_klp_callbacks_busy\n    params: block_transition=Y\n"
            "  - load_lp: test_klp_callbacks_demo\n",
            "failed to complete transition",
        ),
        ("steps:\n  - load_mod: nosuch_module\n", "unknown test module"),
        ("steps: []\n", "non-empty list"),
        ("steps: [\n", "not valid YAML"),
    ],
)
def test_a_step_that_misbehaves_stops_the_run(tmp_path, steps, message):
    path = tmp_path / "s.yml"
    path.write_text(steps)
    proc = run_klpfleet("sim", "run", str(path))
    assert proc.returncode != 0
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
