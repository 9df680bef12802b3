"""The kernel selftest modules (tools/testing/selftests/livepatch/test_modules), as simulator specs.

Names, params and log lines follow the kernel selftests' modules (docs/kernel.md), so scenarios
written like the selftests produce the selftests' kernel log.
"""

from __future__ import annotations

from typing import Any

from klpfleet.sim.spec import normalize

DEMO_CALLBACK = "{mod}: %s_callback: {obj}"


def _callbacks(
    extra: dict[str, list[str]] | None = None, prev: dict[str, list[str]] | None = None, ret: Any = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cb in ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch"):
        entry: dict[str, Any] = {"log": [DEMO_CALLBACK % cb, *(extra or {}).get(cb, [])]}
        if prev is not None:
            entry["log_prev"] = [DEMO_CALLBACK % cb, *prev[cb]]
            entry["prev_state"] = 1
        if cb == "pre_patch" and ret is not None:
            entry["ret"] = ret
        out[cb] = entry
    return out


_STATE_FRESH = {
    "pre_patch": ["{mod}: allocate_loglevel_state: allocating space to store console_loglevel"],
    "post_patch": ["{mod}: fix_console_loglevel: fixing console_loglevel"],
    "pre_unpatch": ["{mod}: restore_console_loglevel: restoring console_loglevel"],
    "post_unpatch": ["{mod}: free_loglevel_state: freeing space for the stored console_loglevel"],
}
_STATE_PREV = {
    "pre_patch": ["{mod}: allocate_loglevel_state: space to store console_loglevel already allocated"],
    "post_patch": ["{mod}: fix_console_loglevel: taking over the console_loglevel change"],
    "pre_unpatch": ["{mod}: restore_console_loglevel: passing the console_loglevel change back to the old livepatch"],
    "post_unpatch": ["{mod}: free_loglevel_state: keeping space to store console_loglevel"],
}


def _state_module(name: str, version: int) -> dict[str, Any]:
    return {
        "name": name,
        "replace": True,
        "intree": True,
        "states": [{"id": 1, "version": version}],
        "objects": [{"name": "vmlinux", "callbacks": _callbacks(_STATE_FRESH, _STATE_PREV if version > 1 else None)}],
    }


def _shadow_vars_program(objects: int = 3) -> list[dict[str, Any]]:
    """What upstream's test_klp_shadow_vars does at init, call for call: a char and an int shadow variable for
    each of three objects, found again, not allocated twice by get_or_alloc, the chars freed one by one (with the
    destructor), the ints all at once (without)."""
    char_id, int_id = 0x1234, 0x1235
    calls: list[dict[str, Any]] = [{"ptr": "NULL"}, {"get": ["obj0", char_id], "expect": "null"}]
    for i in range(objects):
        calls.append({"ptr": f"char{i}"})
        calls.append({"alloc" if i % 2 else "get_or_alloc": [f"obj{i}", char_id, f"char{i}"], "save": f"sv_char{i}"})
        calls.append({"ptr": f"int{i}"})
        calls.append({"alloc": [f"obj{i}", int_id, f"int{i}"], "save": f"sv_int{i}"})
    for i in range(objects):
        calls.append({"get": [f"obj{i}", char_id], "expect": [f"sv_char{i}", f"char{i}"]})
        calls.append({"get": [f"obj{i}", int_id], "expect": [f"sv_int{i}", f"int{i}"]})
    for i in range(objects):
        calls.append({"ptr": f"char{i}"})  # the module's pndup[i] is &nfields1[i]: the same address
        calls.append({"get_or_alloc": [f"obj{i}", char_id, f"char{i}"], "expect": [f"sv_char{i}", f"char{i}"]})
    for i in range(objects):
        calls.append({"free": [f"obj{i}", char_id], "dtor": True})
        calls.append({"get": [f"obj{i}", char_id], "expect": "null"})
    for i in range(objects):
        calls.append({"get": [f"obj{i}", int_id], "expect": [f"sv_int{i}", f"int{i}"]})
    calls.append({"free_all": int_id, "dtor": False})
    for i in range(objects):
        calls.append({"get": [f"obj{i}", int_id], "expect": "null"})
    return calls


RAW: dict[str, dict[str, Any]] = {
    "test_klp_callbacks_demo": {
        "name": "test_klp_callbacks_demo",
        "intree": True,
        "replace": "param:replace",
        "params": {"pre_patch_ret": {"type": "int", "default": 0}, "replace": {"type": "int", "default": 0}},
        "objects": [
            {"name": "vmlinux", "callbacks": _callbacks(ret="param:pre_patch_ret")},
            {"name": "test_klp_callbacks_mod", "callbacks": _callbacks(ret="param:pre_patch_ret")},
            {
                "name": "test_klp_callbacks_busy",
                "funcs": ["busymod_work_func"],
                "callbacks": _callbacks(ret="param:pre_patch_ret"),
            },
        ],
    },
    "test_klp_callbacks_demo2": {
        "name": "test_klp_callbacks_demo2",
        "intree": True,
        "replace": "param:replace",
        "params": {"replace": {"type": "int", "default": 0}},
        "objects": [{"name": "vmlinux", "callbacks": _callbacks()}],
    },
    "test_klp_callbacks_mod": {
        "name": "test_klp_callbacks_mod",
        "intree": True,
        "livepatch": False,
        "init_log": ["{mod}: test_klp_callbacks_mod_init"],
        "exit_log": ["{mod}: test_klp_callbacks_mod_exit"],
    },
    "test_klp_callbacks_busy": {
        "name": "test_klp_callbacks_busy",
        "intree": True,
        "livepatch": False,
        "params": {"block_transition": {"type": "bool", "default": False}},
        "init_log": ["{mod}: test_klp_callbacks_busy_init"],
        "tasks": [
            {
                "function": "busymod_work_func",
                "comm": "kworker/0:2",
                "while_param": "block_transition",
                "log_enter": ["{mod}: busymod_work_func enter"],
                "log_exit": ["{mod}: busymod_work_func exit"],
            }
        ],
        "exit_log": ["{mod}: test_klp_callbacks_busy_exit"],
    },
    "test_klp_livepatch": {
        "name": "test_klp_livepatch",
        "intree": True,
        "objects": [{"name": "vmlinux", "funcs": ["cmdline_proc_show"]}],
        "effects": {"/proc/cmdline": "{mod}: this has been live patched\n"},
    },
    "test_klp_atomic_replace": {
        "name": "test_klp_atomic_replace",
        "intree": True,
        "replace": "param:replace",
        "params": {"replace": {"type": "int", "default": 0}},
        "objects": [{"name": "vmlinux", "funcs": ["meminfo_proc_show"]}],
        "effects": {"/proc/meminfo": "{mod}: this has been live patched\n"},
    },
    # Patches getpid (x86-64's __x64_sys_getpid); the selftests also load it as one more livepatch among others.
    # Its /sys/kernel/test_klp_syscall/npids and the pids it counts are not modelled (test-syscall.sh).
    "test_klp_syscall": {
        "name": "test_klp_syscall",
        "intree": True,
        "objects": [{"name": "vmlinux", "funcs": ["__x64_sys_getpid"]}],
    },
    # Not a livepatch: it exercises the shadow variable API at init (what a patch uses to add fields to live data).
    "test_klp_shadow_vars": {
        "name": "test_klp_shadow_vars",
        "intree": True,
        "livepatch": False,
        "shadow": _shadow_vars_program(),
    },
    "test_klp_state": _state_module("test_klp_state", 1),
    "test_klp_state2": _state_module("test_klp_state2", 2),
    "test_klp_state3": _state_module("test_klp_state3", 2),
}


def catalog_spec(name: str, kernel_release: str | None = None) -> dict[str, Any]:
    raw = dict(RAW[name])
    if kernel_release:
        raw["kernel_release"] = kernel_release
    return normalize(raw)


def names() -> list[str]:
    return sorted(RAW)
