"""The shared host code (collection module_utils) over the simulated kernel: every outcome and every
failure class, each checked against what the kernel state then is."""

import errno

import pytest

from ansible_collections.klpfleet.livepatch.plugins.module_utils._kernel_log import (
    classify_insmod_failure,
    errno_from_tool,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._livepatch import (
    Livepatch,
    LivepatchError,
    file_sha256,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._operations import (
    Operation,
    apply_patch,
    remove_patch,
)
from ansible_collections.klpfleet.livepatch.plugins.module_utils._sim_kernel import SimHost
from klpfleet.sim.catalog import catalog_spec
from klpfleet.sim.spec import write_ko

from .simhelpers import build, kernel_state, sim_host

FAST = {"transition_timeout": 5, "busy_retries": 2, "busy_delay": 1}


@pytest.fixture
def host(tmp_path):
    return sim_host(tmp_path / "host")


def failure(fn, *args, **kwargs) -> LivepatchError:
    with pytest.raises(LivepatchError) as info:
        fn(*args, **kwargs)
    return info.value


def test_apply_then_idempotent_then_remove(host, tmp_path):
    ko = build(tmp_path, "lp_fix", objects=[{"name": "vmlinux", "funcs": ["tcp_send_challenge_ack"]}])
    result = apply_patch(host, ko, **FAST)
    assert (result["outcome"], result["changed"]) == ("applied", True)
    assert result["patch"]["enabled"] is True and result["patch"]["transition"] is False
    assert result["patch"]["objects"] == {"vmlinux": True}
    assert "livepatch: 'lp_fix': patching complete" in result["kernel_log"]
    again = apply_patch(host, ko, **FAST)
    assert (again["outcome"], again["changed"]) == ("already_applied", False)
    removed = remove_patch(host, "lp_fix", **FAST)
    assert (removed["outcome"], removed["host_clean"]) == ("removed", True)
    assert "lp_fix" not in kernel_state(host)["modules"]
    assert remove_patch(host, "lp_fix", **FAST)["outcome"] == "already_absent"


def test_check_mode_changes_nothing(host, tmp_path):
    ko = build(tmp_path, "lp_fix")
    assert apply_patch(host, ko, check_mode=True, **FAST)["changed"] is True
    assert kernel_state(host)["modules"] == {}


def test_refusal_is_classified_and_verified_clean(host, tmp_path):
    ko = write_ko(catalog_spec("test_klp_callbacks_demo"), tmp_path / "demo.ko")
    err = failure(apply_patch, host, str(ko), params={"pre_patch_ret": -19}, **FAST)
    assert err.klp_error == "refused"
    assert (err.details["refused_object"], err.details["errno"], err.details["errno_name"]) == ("vmlinux", 19, "ENODEV")
    assert err.details["host_clean"] is True
    assert "livepatch: pre-patch callback failed for object 'vmlinux'" in err.details["kernel_log"]
    assert kernel_state(host)["patches"] == []


def test_host_fault_refusal_with_ebusy_is_a_refusal_not_busy(tmp_path):
    host = sim_host(tmp_path / "h", refuse={"patch": "*", "object": "vmlinux", "errno": "EBUSY"})
    err = failure(apply_patch, host, build(tmp_path, "lp_fix"), **FAST)
    assert (err.klp_error, err.details["errno_name"], err.details["attempts"]) == ("refused", "EBUSY", 1)


def test_stall_reversed_reports_tasks_and_leaves_host_clean(tmp_path):
    host = sim_host(tmp_path / "h", stall={"function": "*", "seconds": "forever", "comm": "db_writer"})
    err = failure(apply_patch, host, build(tmp_path, "lp_fix"), **FAST)
    assert err.klp_error == "transition_stalled"
    assert err.details["reversed"] is True and err.details["host_clean"] is True
    [task] = err.details["stalled_tasks"]
    assert task["comm"] == "db_writer" and task["patch_state"] == 0
    assert any("reversing transition" in line for line in err.details["kernel_log"])
    assert err.details["transition_seconds"] >= 5


def test_stall_released_by_fake_signal_completes(tmp_path):
    host = sim_host(tmp_path / "h", stall={"function": "*", "seconds": "forever", "ignores_signal": False})
    result = apply_patch(host, build(tmp_path, "lp_fix"), transition_timeout=30)
    assert result["outcome"] == "applied"
    assert "livepatch: signaling remaining tasks" in result["kernel_log"]
    assert 14 <= result["transition_seconds"] <= 17


def test_stall_wait_leaves_transition_running(tmp_path):
    host = sim_host(tmp_path / "h", stall={"function": "*", "seconds": "forever"})
    err = failure(apply_patch, host, build(tmp_path, "lp_fix"), on_stall="wait", **FAST)
    assert err.klp_error == "transition_stalled"
    assert err.details["host_clean"] is False
    assert err.details["patch"]["transition"] is True


def test_force_needs_allow_force(tmp_path):
    host = sim_host(tmp_path / "h", stall={"function": "*", "seconds": 20})
    ko = build(tmp_path, "lp_fix")
    assert "allow_force" in str(failure(apply_patch, host, ko, on_stall="force", **FAST))
    assert kernel_state(host)["modules"] == {}
    result = apply_patch(host, ko, on_stall="force", allow_force=True, **FAST)
    assert result["outcome"] == "applied" and result["forced"] is True
    assert "livepatch: forcing remaining tasks to the patched state" in result["kernel_log"]
    # What the force pinned depends on the kernel generation: tests/test_kernel_generations.py.


def test_busy_while_another_transition_runs_then_retries_succeed(tmp_path):
    host = sim_host(tmp_path / "h", stall={"function": "slow_func", "seconds": 3})
    failure(
        apply_patch,
        host,
        build(tmp_path, "lp_slow", objects=[{"name": "vmlinux", "funcs": ["slow_func"]}]),
        on_stall="wait",
        transition_timeout=0.5,
        busy_retries=0,
    )
    # lp_slow is still in transition: loading another patch gets EBUSY with no livepatch line, is retried,
    # and succeeds once the task leaves slow_func (3 s) and lp_slow's transition completes.
    result = apply_patch(host, build(tmp_path, "lp_next"), transition_timeout=5, busy_retries=5, busy_delay=1)
    assert result["outcome"] == "applied" and result["attempts"] > 1


def test_busy_exhausted(tmp_path):
    host = sim_host(tmp_path / "h", stall={"function": "*", "seconds": "forever"})
    failure(apply_patch, host, build(tmp_path, "lp_a"), on_stall="wait", transition_timeout=0.5)
    err = failure(apply_patch, host, build(tmp_path, "lp_b"), **FAST)
    assert (err.klp_error, err.details["errno_name"], err.details["attempts"]) == ("busy", "EBUSY", 3)
    assert err.details["host_clean"] is True


def test_incompatible_state(host, tmp_path):
    apply_patch(host, str(write_ko(catalog_spec("test_klp_state2"), tmp_path / "s2.ko")), **FAST)
    err = failure(apply_patch, host, str(write_ko(catalog_spec("test_klp_state"), tmp_path / "s1.ko")), **FAST)
    assert (err.klp_error, err.details["errno_name"]) == ("incompatible_state", "EINVAL")


def test_not_livepatch_and_vermagic_and_checksum_refused_before_insmod(host, tmp_path):
    plain = build(tmp_path, "virtio_net", livepatch=False, objects=[])
    assert failure(apply_patch, host, plain, **FAST).klp_error == "not_livepatch"
    other = build(tmp_path, "lp_other", release="6.1.0-99-amd64")
    err = failure(apply_patch, host, other, **FAST)
    assert err.klp_error == "vermagic_mismatch" and "6.1.0-99-amd64" in err.msg
    ko = build(tmp_path, "lp_fix")
    assert failure(apply_patch, host, ko, sha256="0" * 64, **FAST).klp_error == "checksum_mismatch"
    assert apply_patch(host, ko, sha256=file_sha256(ko).upper(), **FAST)["outcome"] == "applied"
    assert list(kernel_state(host)["modules"]) == ["lp_fix"]


def test_kernel_side_classification_of_insmod_failures(host, tmp_path):
    lp = Livepatch(host)
    from klpfleet.sim.elfbuild import build_module

    unmarked = tmp_path / "unmarked.ko"  # declares a patch but lacks livepatch=Y: the kernel refuses it
    unmarked.write_bytes(
        build_module(
            [("name", "unmarked"), ("vermagic", "6.1.0-56-amd64 SMP preempt mod_unload modversions ")],
            {".klpfleet.spec": b'{"livepatch": true, "objects": []}'},
        )
    )
    cursor = host.log_cursor()
    rc, _, stderr = host.run(["insmod", str(unmarked)])
    assert rc == 1
    assert classify_insmod_failure("unmarked", rc, stderr, lp.log_since(cursor)).klp_error == "not_livepatch"
    other = build(tmp_path, "lp_other", release="6.1.0-99-amd64")
    cursor = host.log_cursor()
    rc, _, stderr = host.run(["insmod", other])
    assert "Invalid module format" in stderr
    assert classify_insmod_failure("lp_other", rc, stderr, lp.log_since(cursor)).klp_error == "vermagic_mismatch"


@pytest.mark.parametrize(
    ("faults", "code", "name"),
    [
        ({"sig_enforce": True}, "signature_rejected", "EKEYREJECTED"),
        ({"lockdown": "integrity"}, "lockdown", "EPERM"),
    ],
)
def test_signature_and_lockdown(tmp_path, faults, code, name):
    host = sim_host(tmp_path / "h", **faults)
    err = failure(apply_patch, host, build(tmp_path, "lp_fix"), **FAST)
    assert (err.klp_error, err.details["errno_name"], err.details["host_clean"]) == (code, name, True)


def test_livepatch_unsupported(tmp_path):
    host = sim_host(tmp_path / "h", livepatch=False)
    assert failure(apply_patch, host, build(tmp_path, "lp_fix"), **FAST).klp_error == "livepatch_unsupported"


def test_other_insmod_errno(host, tmp_path):
    ko = build(tmp_path, "lp_fix", params={"fail": {"type": "int", "default": -12}}, init_ret="param:fail")
    err = failure(apply_patch, host, ko, **FAST)
    assert (err.klp_error, err.details["errno"], err.details["errno_name"]) == ("insmod_failed", 12, "ENOMEM")


def test_in_use(host, tmp_path):
    apply_patch(host, build(tmp_path, "lp_fix"), **FAST)
    op = Operation(host, "lp_fix", transition_timeout=1)
    with pytest.raises(LivepatchError) as info:
        op.rmmod()  # still enabled: the patch holds its module
    assert (info.value.klp_error, info.value.details["errno_name"]) == ("in_use", "EBUSY")


def test_atomic_replace_then_reapply_old(host, tmp_path):
    old = build(tmp_path, "lp_v1", replace=True)
    new = build(tmp_path, "lp_v2", replace=True)
    apply_patch(host, old, **FAST)
    apply_patch(host, new, **FAST)
    lp = Livepatch(host)
    assert lp.patch_names() == ["lp_v2"]
    assert lp.module_loaded("lp_v1") and lp.module_refcnt("lp_v1") == 0
    # Going back: load the older cumulative patch again; its stale module is removed first.
    result = apply_patch(host, old, **FAST)
    assert result["outcome"] == "applied"
    assert lp.patch_names() == ["lp_v1"]


def test_refused_target_module_load_is_found_later(tmp_path):
    host = sim_host(tmp_path / "h", refuse={"patch": "lp_net", "object": "virtio_net", "errno": "ENODEV"})
    ko = build(
        tmp_path, "lp_net", objects=[{"name": "vmlinux", "funcs": ["a"]}, {"name": "virtio_net", "funcs": ["b"]}]
    )
    assert apply_patch(host, ko, **FAST)["outcome"] == "applied"
    write_ko(
        {**catalog_spec("test_klp_callbacks_mod"), "name": "virtio_net", "init_log": []},
        tmp_path / "h" / "modules" / "virtio_net.ko",
    )
    rc, _, stderr = host.run(["modprobe", "virtio_net"])
    assert rc == 1 and stderr == "modprobe: ERROR: could not insert 'virtio_net': No such device\n"
    [refusal] = Livepatch(host).facts()["refused_module_loads"]
    assert (refusal["patch"], refusal["module"], refusal["callback_refused"]) == ("lp_net", "virtio_net", True)


def test_facts(tmp_path):
    host = sim_host(tmp_path / "h")
    apply_patch(host, build(tmp_path, "lp_a"), **FAST)
    apply_patch(host, build(tmp_path, "lp_b"), **FAST)
    facts = Livepatch(host).facts()
    assert facts["kernel_release"] == "6.1.0-56-amd64" and facts["livepatch_supported"] is True
    assert [p["name"] for p in facts["patches"]] == ["lp_a", "lp_b"]
    # 6.1 exports no stack_order: the module load order (/proc/modules) gives it.
    assert [p["stack_order"] for p in facts["patches"]] == [1, 2]
    assert all(p["stack_order_source"] == "module_load_order" and p["stack_order_estimated"] for p in facts["patches"])
    assert facts["taint"]["flags"] == "OEK" and facts["taint"]["value"] == 45056
    assert facts["signatures"] == {"enforced": False, "lockdown": "none"}
    assert facts["transition"] is None


def test_newer_kernel_exports_replace_and_stack_order_older_lacks_patched(tmp_path):
    new = sim_host(tmp_path / "new", release="6.13.0-1-amd64")
    apply_patch(new, build(tmp_path, "lp_a", release="6.13.0-1-amd64"), **FAST)
    apply_patch(new, build(tmp_path, "lp_b", release="6.13.0-1-amd64", replace=False), **FAST)
    patches = Livepatch(new).facts()["patches"]
    assert [(p["name"], p["stack_order"], p["replace"]) for p in patches] == [("lp_a", 1, False), ("lp_b", 2, False)]
    old = sim_host(tmp_path / "old", release="5.10.0-30-amd64")
    apply_patch(old, build(tmp_path, "lp_c", release="5.10.0-30-amd64"), **FAST)
    [patch] = Livepatch(old).facts()["patches"]
    assert patch["objects"] == {"vmlinux": None} and patch["replace"] is None


def test_kernel_errnos_of_sysfs_writes(host, tmp_path):
    apply_patch(host, build(tmp_path, "lp_fix"), **FAST)
    base = "/sys/kernel/livepatch/lp_fix"
    for path, value, code in [
        (f"{base}/enabled", "1", errno.EINVAL),
        (f"{base}/enabled", "maybe", errno.EINVAL),
        (f"{base}/force", "1", errno.EINVAL),
        (f"{base}/transition", "0", errno.EACCES),
    ]:
        with pytest.raises(OSError) as info:
            host.write(path, value)
        assert info.value.errno == code, path
    with pytest.raises(OSError) as info:
        host.read(f"{base}/force")
    assert info.value.errno == errno.EACCES
    host.write(f"{base}/force", "0")  # writing 0 does nothing


def test_errno_from_each_tools_wording():
    assert errno_from_tool("insmod: ERROR: could not insert module /x.ko: No such device\n") == errno.ENODEV
    assert errno_from_tool("insmod: ERROR: could not insert module /x.ko: Invalid parameters\n") == errno.EINVAL
    assert errno_from_tool("insmod: can't insert '/x.ko': No such device\n") == errno.ENODEV
    assert errno_from_tool("modprobe: ERROR: could not insert 'x': Invalid argument\n") == errno.EINVAL
    assert (
        errno_from_tool("insmod: ERROR: could not insert module /x.ko: Key was rejected by service")
        == errno.EKEYREJECTED
    )


def test_state_survives_in_the_host_directory(tmp_path):
    host = sim_host(tmp_path / "h")
    apply_patch(host, build(tmp_path, "lp_fix"), **FAST)
    with SimHost(str(tmp_path / "h")) as kernel:
        assert kernel.patch("lp_fix")["enabled"] is True


def test_ftrace_switched_off_refuses_every_patch_and_cannot_be_switched_off_under_one(host, tmp_path):
    """test-ftrace.sh's subject: with kernel.ftrace_enabled = 0 no patch can hook its functions (the kernel
    cancels it, EBUSY); while a patch is applied the sysctl cannot be switched off."""
    host.write("/proc/sys/kernel/ftrace_enabled", "0\n")
    ko = str(write_ko(catalog_spec("test_klp_livepatch"), tmp_path / "lp.ko"))
    err = failure(apply_patch, host, ko, **FAST)
    assert (err.klp_error, err.details["errno_name"], err.details["failed_object"]) == (
        "insmod_failed",
        "EBUSY",
        "vmlinux",
    )
    assert host.listdir("/sys/kernel/livepatch") == []  # cancelled: nothing left half-patched
    host.write("/proc/sys/kernel/ftrace_enabled", "1\n")
    apply_patch(host, ko, **FAST)
    with pytest.raises(OSError) as refused:
        host.write("/proc/sys/kernel/ftrace_enabled", "0\n")
    assert refused.value.errno == errno.EBUSY
    assert host.read("/proc/sys/kernel/ftrace_enabled") == "1\n"
