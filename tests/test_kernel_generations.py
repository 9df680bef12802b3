"""The host code on every kernel generation the simulator models (docs/kernel.md, "Kernel generations"):
what a forced transition pins, the pre-5.1 lifecycle, stack order without the kernel log, a rebuilt patch
under the same name, and an unreadable kernel log. Each behaviour was seen on a real kernel in the lab
(tests/test_lab.py runs the same scenarios on Debian 11, 12 and 13's kernels) or, for pre-5.1, follows the
kernel sources: no such kernel is reachable from Debian's archive any more."""

from __future__ import annotations

import pytest

from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import Livepatch, LivepatchError
from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import apply_patch, remove_patch
from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost

from .simhelpers import build, kernel_state, sim_host

FAST = {"transition_timeout": 5, "busy_retries": 1, "busy_delay": 1}
BULLSEYE, BOOKWORM, TRIXIE, BUSTER = "5.10.0-32-amd64", "6.1.0-56-amd64", "6.12.117+deb13-amd64", "4.19.0-27-amd64"


def failure(fn, *args, **kwargs) -> LivepatchError:
    with pytest.raises(LivepatchError) as info:
        fn(*args, **kwargs)
    return info.value


def stalled_host(tmp_path, release, function="stuck_func"):
    # A task sleeps in `function` for 20 s of kernel time: the 5 s timeout forces the transition, and the
    # unpatching transitions later complete.
    return sim_host(tmp_path / "h", release, stall={"function": function, "seconds": 20})


def load(tmp_path, host, name, release, **kwargs):
    ko = build(tmp_path, name, release, **kwargs.pop("spec", {}))
    return apply_patch(host, ko, **{**FAST, **kwargs})


def force_in(tmp_path, host, name, release, **spec):
    """Load a patch of the function the stalled task sleeps in, forcing its transition after the timeout."""
    spec.setdefault("objects", [{"name": "vmlinux", "funcs": ["stuck_func"]}])
    return load(tmp_path, host, name, release, spec=spec, on_stall="force", allow_force=True)


def enabled_dirs(host):
    return [p["name"] for p in Livepatch(host).patches()]


# -- forced transitions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("release", [BOOKWORM, TRIXIE])
def test_since_6_0_forcing_a_patch_in_pins_nothing_and_both_patches_come_out(tmp_path, release):
    """Seen on 6.1.0-56 and 6.12.117: P1 applied, P2's stalled patching transition forced; both removable."""
    host = stalled_host(tmp_path, release)
    load(tmp_path, host, "p1", release)
    forced = force_in(tmp_path, host, "p2", release)
    assert (forced["forced"], forced["pinned"], forced["force_semantics"]) == (True, [], "unsafe-only")
    facts = Livepatch(host).facts()
    assert [p["forced"] for p in facts["patches"]] == [False, False]
    for name in ("p2", "p1"):
        removed = remove_patch(host, name, transition_timeout=30)
        assert (removed["outcome"], removed["host_clean"]) == ("removed", True)
        assert "module_pinned" not in removed
    assert kernel_state(host)["modules"] == {}


def test_on_5_10_a_force_pins_every_patch_present_and_removal_says_so(tmp_path):
    """Seen on 5.10.0-32: after P2's forced transition, P1 and P2 disable but neither module unloads."""
    host = stalled_host(tmp_path, BULLSEYE)
    load(tmp_path, host, "p1", BULLSEYE)
    forced = force_in(tmp_path, host, "p2", BULLSEYE)
    assert (forced["pinned"], forced["force_semantics"]) == (["p1", "p2"], "all-present")
    assert any("pinned p1, p2" in w for w in forced["warnings"])
    facts = Livepatch(host).facts()
    assert {p["name"]: p["forced"] for p in facts["patches"]} == {"p1": True, "p2": True}
    for name in ("p2", "p1"):
        removed = remove_patch(host, name, transition_timeout=30)
        # Disabled (its code is out), the module stays: a success that says the host needs a reboot to unload it.
        assert (removed["outcome"], removed["module_pinned"], removed["host_clean"]) == ("removed", True, False)
        assert removed["patch"] is None and removed["loaded"] is True
    assert enabled_dirs(host) == []
    assert sorted(m["name"] for m in Livepatch(host).facts()["forced_modules"]) == ["p1", "p2"]
    again = remove_patch(host, "p1", **FAST)
    assert (again["outcome"], again["changed"], again["module_pinned"]) == ("already_absent", False, True)
    err = failure(apply_patch, host, build(tmp_path, "p1", BULLSEYE), **FAST)
    assert err.klp_error == "forced_unremovable"


@pytest.mark.parametrize("release", [BOOKWORM, TRIXIE])
def test_since_6_0_forcing_a_replace_patch_in_pins_the_patches_it_replaced(tmp_path, release):
    host = stalled_host(tmp_path, release)
    load(tmp_path, host, "p1", release)
    forced = force_in(tmp_path, host, "cumulative", release, replace=True)
    assert forced["pinned"] == ["p1"]
    facts = Livepatch(host).facts()
    assert [p["name"] for p in facts["patches"]] == ["cumulative"]
    assert [m["name"] for m in facts["forced_modules"]] == ["p1"]
    assert remove_patch(host, "cumulative", transition_timeout=30)["host_clean"] is True
    left = remove_patch(host, "p1", **FAST)
    assert (left["outcome"], left["module_pinned"]) == ("already_absent", True)


# -- the pre-5.1 lifecycle --------------------------------------------------------------------------------


def test_pre_5_1_remove_disables_then_unloads_and_never_enables_again(tmp_path):
    host = sim_host(tmp_path / "h", BUSTER)
    load(tmp_path, host, "p1", BUSTER)
    assert Livepatch(host).facts()["lifecycle"] == "pre-5.1"
    removed = remove_patch(host, "p1", **FAST)
    assert (removed["outcome"], removed["host_clean"]) == ("removed", True)
    log = [text for _seq, _ts, text in kernel_state(host)["log"]]
    assert log.count("livepatch: enabling patch 'p1'") == 1  # the old code wrote 1 after waiting for the directory
    assert kernel_state(host)["modules"] == {}


def test_pre_5_1_a_disabled_patch_keeps_its_directory_until_rmmod_and_apply_reloads_it(tmp_path):
    host = sim_host(tmp_path / "h", BUSTER)
    load(tmp_path, host, "p1", BUSTER)
    host.write("/sys/kernel/livepatch/p1/enabled", "0")  # by hand: the kernel keeps it registered
    assert Livepatch(host).patch_state("p1")["enabled"] is False
    again = load(tmp_path, host, "p1", BUSTER)
    assert (again["outcome"], again["patch"]["enabled"]) == ("applied", True)
    log = [text for _seq, _ts, text in kernel_state(host)["log"]]
    assert log.count("livepatch: enabling patch 'p1'") == 2  # unloaded and loaded again, not re-enabled in place


def test_pre_5_1_only_the_newest_patch_can_be_disabled(tmp_path):
    host = sim_host(tmp_path / "h", BUSTER)
    load(tmp_path, host, "p1", BUSTER)
    load(tmp_path, host, "p2", BUSTER)
    err = failure(remove_patch, host, "p1", **FAST)
    assert (err.klp_error, err.details["newer_patches"]) == ("not_on_top", ["p2"])
    assert Livepatch(host).patch_state("p1")["enabled"] is True
    assert remove_patch(host, "p2", **FAST)["host_clean"] is True
    assert remove_patch(host, "p1", **FAST)["host_clean"] is True


def test_pre_5_1_stalled_tasks_are_signalled_by_writing_signal(tmp_path):
    # A task that a signal wakes: 5.1+ kernels signal it themselves after 15 s, older ones never do.
    host = sim_host(tmp_path / "h", BUSTER, stall={"function": "stuck_func", "ignores_signal": False})
    result = load(
        tmp_path,
        host,
        "p1",
        BUSTER,
        spec={"objects": [{"name": "vmlinux", "funcs": ["stuck_func"]}]},
        transition_timeout=30,
    )
    assert result["outcome"] == "applied" and result["signaled"] is True


def test_pre_5_1_a_force_pins_every_patch_until_reboot(tmp_path):
    host = stalled_host(tmp_path, BUSTER)
    forced = force_in(tmp_path, host, "p1", BUSTER)
    assert forced["force_semantics"] == "all-until-reboot"
    load(tmp_path, host, "p2", BUSTER)  # loaded after the force: pinned too
    removed = remove_patch(host, "p2", transition_timeout=30)
    assert removed["module_pinned"] is True


# -- stack order, identity, the kernel log ------------------------------------------------------------------


def test_stack_order_survives_a_wrapped_kernel_log(tmp_path):
    host = sim_host(tmp_path / "h", BOOKWORM)
    load(tmp_path, host, "zz_first", BOOKWORM)
    load(tmp_path, host, "aa_second", BOOKWORM)
    with_log = Livepatch(host).facts()
    assert [p["name"] for p in with_log["patches"]] == ["zz_first", "aa_second"]
    assert with_log["stack_order_source"] == "module_load_order" and not with_log["stack_order_conflict"]
    with SimHost(host.root) as kernel:
        for i in range(20001):  # fill the ring buffer past every "enabling patch" line
            kernel.log(f"filler {i}")
    wrapped = Livepatch(host).facts()
    assert [p["name"] for p in wrapped["patches"]] == ["zz_first", "aa_second"]
    assert wrapped["kernel_log"]["wrapped"] is True


def test_stack_order_is_the_kernels_own_from_6_13(tmp_path):
    host = sim_host(tmp_path / "h", "6.13.0-1-amd64")
    load(tmp_path, host, "zz_first", "6.13.0-1-amd64")
    load(tmp_path, host, "aa_second", "6.13.0-1-amd64")
    facts = Livepatch(host).facts()
    assert [(p["name"], p["stack_order"]) for p in facts["patches"]] == [("zz_first", 1), ("aa_second", 2)]
    assert facts["stack_order_source"] == "sysfs"


@pytest.mark.parametrize("release", [BULLSEYE, BOOKWORM, TRIXIE])
def test_a_rebuilt_patch_with_the_same_name_is_not_already_applied(tmp_path, release):
    """Seen on all three kernels before: `already_applied` while the old code kept running."""
    host = sim_host(tmp_path / "h", release)
    first = build(tmp_path / "v1", "cve_fix", release, objects=[{"name": "vmlinux", "funcs": ["f_v1"]}])
    apply_patch(host, first, **FAST)
    assert apply_patch(host, first, **FAST)["outcome"] == "already_applied"
    rebuilt = build(tmp_path / "v2", "cve_fix", release, objects=[{"name": "vmlinux", "funcs": ["f_v2"]}])
    err = failure(apply_patch, host, rebuilt, **FAST)
    assert err.klp_error == "different_build"
    assert err.details["loaded_build_id"] != err.details["artifact_build_id"]
    assert Livepatch(host).patch_state("cve_fix")["objects"] == {"vmlinux": release != BULLSEYE or None}


def test_an_unreadable_kernel_log_is_reported_not_hidden(tmp_path):
    host = sim_host(tmp_path / "h", BOOKWORM, log_unreadable=True, refuse=[{"patch": "p1", "errno": "ENODEV"}])
    err = failure(apply_patch, host, build(tmp_path, "p1", BOOKWORM), **FAST)
    # Without the log a refusal cannot be told from another ENODEV: not guessed, said.
    assert err.klp_error == "insmod_failed" and err.details["errno_name"] == "ENODEV"
    assert err.details["kernel_log_unreadable"].startswith("/dev/kmsg")
    assert any("refusal looks like any other failure" in w for w in err.details["warnings"])
    facts = Livepatch(host).facts()
    assert facts["kernel_log"]["readable"] is False


# -- the database as the third witness of the stack order ---------------------------------------------------


def test_the_recorder_says_when_the_host_and_its_own_record_order_the_stack_differently(tmp_path, sqlite_db):
    from sqlalchemy import select

    from klpfleet.db.models import Event, Host
    from klpfleet.hoststate.recorder import Recorder
    from klpfleet.registry.patches import add_patch

    host = sim_host(tmp_path / "h", BOOKWORM)
    kos = {name: build(tmp_path, name, BOOKWORM) for name in ("lp_first", "lp_second")}
    with sqlite_db.session.begin() as s:
        s.add(Host(name="h1", kernel_release=BOOKWORM))
        for ko in kos.values():
            add_patch(s, ko)
    recorder = Recorder(sqlite_db, actor="test")

    def record(action, result, args=None):
        recorder.record_task_result(None, "h1", f"klpfleet.livepatch.{action}", "ok", result, args or {})

    def conflicts():
        with sqlite_db.session() as s:
            return list(s.scalars(select(Event.details).where(Event.kind == "host.stack_order_conflict")))

    for name in ("lp_first", "lp_second"):
        record("patch", apply_patch(host, kos[name], **FAST), {"src": kos[name]})
    record("patch_info", Livepatch(host).facts())
    assert conflicts() == []  # the host's load order and klpfleet's record agree

    # Behind klpfleet's back: lp_first unloaded and loaded again, now on top; the record says otherwise.
    remove_patch(host, "lp_first", **FAST)
    apply_patch(host, kos["lp_first"], **FAST)
    record("patch_info", Livepatch(host).facts())
    record("patch_info", Livepatch(host).facts())  # said once, not at every gather
    [finding] = conflicts()
    assert finding["host_order"] == ["lp_second", "lp_first"]
    assert finding["recorded_order"] == ["lp_first", "lp_second"]
    assert finding["source"] == "module_load_order"
