"""Simulated module specs: validated on the controller, carried inside the .ko as JSON.

A spec describes what a module does to the simulated kernel: livepatch or plain, replace, system
states, params, objects with their functions and callbacks, tasks that sleep inside a function, and
its init/exit log lines. The YAML an operator writes is normalized here; the host side reads only the
JSON this produces (it has no YAML parser).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from klpfleet.collection import module_util, sim_contract
from klpfleet.errors import UsageError
from klpfleet.sim.elfbuild import build_module, modinfo_bytes

SPEC_SECTION, DEFAULT_KERNEL_RELEASE = sim_contract()
CALLBACKS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
PARAM_TYPES = ("int", "bool", "charp")
NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,55}$")
FUNC_RE = re.compile(r"^[A-Za-z0-9_.*?]{1,128}$")


def _fail(where: str, message: str) -> UsageError:
    return UsageError(f"spec {where}: {message}")


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, "must be a string or a list of strings")
    return list(value)


def _int_or_param(value: Any, where: str, params: dict[str, Any]) -> int | str:
    if isinstance(value, bool):
        raise _fail(where, "must be an integer or 'param:NAME'")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.startswith("param:") and value[6:] in params:
        return value
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        return int(value)
    raise _fail(where, f"{value!r} is neither an integer nor 'param:NAME' of a declared param")


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise UsageError(f"spec: {key} must be a list")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(where, "must be a mapping")
    return value


def normalize(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise UsageError("spec: must be a mapping")
    unknown = set(doc) - {
        "name",
        "kernel_release",
        "livepatch",
        "replace",
        "states",
        "params",
        "objects",
        "tasks",
        "init_log",
        "exit_log",
        "init_ret",
        "shadow",
        "effects",
        "metrics",
        "signed",
        "intree",
        "description",
    }
    if unknown:
        raise UsageError(f"spec: unknown keys {', '.join(sorted(unknown))}")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"spec: name {name!r} is not a module name (letters, digits, _; at most 55)")
    release = str(doc.get("kernel_release") or DEFAULT_KERNEL_RELEASE)
    if not re.match(r"^\d+\.\d+[\w.+~-]*$", release, re.ASCII):
        raise UsageError(f"spec: kernel_release {release!r} is not a kernel release")

    params: dict[str, Any] = {}
    for pname, pspec in _mapping(doc.get("params"), "params").items():
        if not isinstance(pname, str) or not NAME_RE.match(pname):
            raise UsageError(f"spec: param name {pname!r} is not valid")
        if not isinstance(pspec, dict):
            pspec = {"default": pspec}
        ptype = pspec.get("type") or ("bool" if isinstance(pspec.get("default"), bool) else "int")
        if ptype not in PARAM_TYPES:
            raise UsageError(f"spec: param {pname}: type must be one of {', '.join(PARAM_TYPES)}")
        params[pname] = {
            "type": ptype,
            "default": pspec.get("default", False if ptype == "bool" else 0),
            "perm": str(pspec.get("perm", "rw")),
        }

    objects = []
    for i, obj in enumerate(_list(doc, "objects")):
        where = f"objects[{i}]"
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not NAME_RE.match(obj["name"]):
            raise _fail(where, "needs a name: vmlinux or a module name")
        funcs = _str_list(obj.get("funcs"), f"{where}.funcs")
        for func in funcs:
            if not FUNC_RE.match(func):
                raise _fail(f"{where}.funcs", f"{func!r} is not a function name")
        callbacks = {}
        for cb_name, cb in _mapping(obj.get("callbacks"), f"{where}.callbacks").items():
            if cb_name not in CALLBACKS:
                raise _fail(f"{where}.callbacks", f"unknown callback {cb_name!r}; one of {', '.join(CALLBACKS)}")
            cb = cb or {}
            if not isinstance(cb, dict):
                raise _fail(f"{where}.callbacks.{cb_name}", "must be a mapping")
            entry: dict[str, Any] = {"log": _str_list(cb.get("log"), f"{where}.callbacks.{cb_name}.log")}
            if "ret" in cb:
                if cb_name != "pre_patch":
                    raise _fail(f"{where}.callbacks.{cb_name}", "only pre_patch returns a value")
                entry["ret"] = _int_or_param(cb["ret"], f"{where}.callbacks.pre_patch.ret", params)
            if "log_prev" in cb:
                entry["log_prev"] = _str_list(cb["log_prev"], f"{where}.callbacks.{cb_name}.log_prev")
                prev_state = cb.get("prev_state", 1)
                if not isinstance(prev_state, int) or isinstance(prev_state, bool):
                    raise _fail(f"{where}.callbacks.{cb_name}.prev_state", "must be an integer")
                entry["prev_state"] = prev_state
            callbacks[cb_name] = entry
        objects.append({"name": obj["name"], "funcs": funcs, "callbacks": callbacks})
    livepatch = bool(doc.get("livepatch", bool(objects)))
    if livepatch and not objects:
        raise UsageError("spec: a livepatch needs at least one object (vmlinux or a module)")

    states = []
    for st in _list(doc, "states"):
        if not isinstance(st, dict) or not isinstance(st.get("id"), int) or not isinstance(st.get("version"), int):
            raise UsageError("spec: states are {id: INT, version: INT}")
        states.append({"id": st["id"], "version": st["version"]})

    tasks = []
    for i, task in enumerate(_list(doc, "tasks")):
        if not isinstance(task, dict) or not isinstance(task.get("function"), str):
            raise _fail(f"tasks[{i}]", "needs the function it sleeps in")
        seconds = task.get("seconds", "forever")
        if seconds != "forever" and not isinstance(seconds, int | float):
            raise _fail(f"tasks[{i}].seconds", "a number or 'forever'")
        entry = {
            "function": task["function"],
            "comm": str(task.get("comm", "kworker/0:1")),
            "seconds": None if seconds == "forever" else seconds,
            "ignores_signal": bool(task.get("ignores_signal", True)),
            "log_enter": _str_list(task.get("log_enter"), f"tasks[{i}].log_enter"),
            "log_exit": _str_list(task.get("log_exit"), f"tasks[{i}].log_exit"),
        }
        if task.get("while_param") is not None:
            if task["while_param"] not in params:
                raise _fail(f"tasks[{i}].while_param", f"{task['while_param']!r} is not a declared param")
            entry["while_param"] = task["while_param"]
        tasks.append(entry)

    replace = doc.get("replace", False)
    if not isinstance(replace, bool):
        replace = _int_or_param(replace, "replace", params)
    effects = doc.get("effects") or {}
    if not isinstance(effects, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in effects.items()):
        raise UsageError("spec: effects maps a /proc path to the text it reads while patched")
    metrics = doc.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str)
        and re.match(r"^[a-z][a-z0-9_]{0,63}$", k)
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        for k, v in metrics.items()
    ):
        raise UsageError("spec: metrics maps a metric name (a-z, 0-9, _) to what the patch adds to it while patched")
    shadow = _shadow_program(doc.get("shadow"))
    return {
        "name": name,
        "kernel_release": release,
        "livepatch": livepatch,
        "replace": replace,
        "states": states,
        "params": params,
        "objects": objects,
        "tasks": tasks,
        "init_log": _str_list(doc.get("init_log"), "init_log"),
        "exit_log": _str_list(doc.get("exit_log"), "exit_log"),
        "init_ret": _int_or_param(doc.get("init_ret", 0), "init_ret", params),
        "shadow": shadow,
        "effects": effects,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "signed": bool(doc.get("signed", False)),
        "intree": bool(doc.get("intree", False)),
        "description": str(doc.get("description", "")),
    }


MAX_SHADOW_CALLS = 1000
SHADOW_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_#]{0,63}$")


def _shadow_program(program: Any) -> list[dict[str, Any]]:
    """`shadow`: the module's calls to the shadow variable API at init (see the collection's _sim_shadow)."""
    if program is None:
        return []
    if not isinstance(program, list) or len(program) > MAX_SHADOW_CALLS:
        raise UsageError(f"spec: shadow is a list of at most {MAX_SHADOW_CALLS} calls")

    def name(value: Any, where: str) -> str:
        if not isinstance(value, str) or not SHADOW_NAME.match(value):
            raise _fail(where, f"{value!r} is not a pointer name")
        return value

    def sv_id(value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
            raise _fail(where, f"{value!r} is not a shadow variable id")
        return value

    calls = []
    for i, call in enumerate(program):
        where = f"shadow[{i}]"
        ops = [
            op
            for op in ("ptr", "get", "alloc", "get_or_alloc", "free", "free_all")
            if isinstance(call, dict) and op in call
        ]
        if len(ops) != 1 or set(call) - {ops[0], "save", "expect", "dtor"}:
            raise _fail(where, "one of ptr, get, alloc, get_or_alloc, free, free_all (with save, expect, dtor)")
        op, arg = ops[0], call[ops[0]]
        entry: dict[str, Any] = {}
        if op == "ptr":
            entry["ptr"] = name(arg, where)
        elif op == "free_all":
            entry["free_all"] = sv_id(arg, where)
        else:
            size = 3 if op in ("alloc", "get_or_alloc") else 2
            if not isinstance(arg, list) or len(arg) != size:
                raise _fail(where, f"{op} takes [obj, id{', field' if size == 3 else ''}]")
            entry[op] = [name(arg[0], where), sv_id(arg[1], where), *([name(arg[2], where)] if size == 3 else [])]
        if "save" in call:
            entry["save"] = name(call["save"], where)
        if "expect" in call:
            expect = call["expect"]
            if expect != "null" and not (isinstance(expect, list) and len(expect) == 2):
                raise _fail(where, "expect is null or [saved, field]")
            entry["expect"] = expect if expect == "null" else [name(expect[0], where), name(expect[1], where)]
        if "dtor" in call:
            entry["dtor"] = bool(call["dtor"])
        calls.append(entry)
    return calls


def load_spec_file(path: str | Path) -> dict[str, Any]:
    from klpfleet.yamlfile import load_yaml

    return normalize(load_yaml(path))


def build_ko(spec: dict[str, Any]) -> bytes:
    """The .ko bytes for a normalized spec: real ELF, .modinfo, and the spec in its own section."""
    payload = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    fields = [
        ("name", spec["name"]),
        ("vermagic", module_util("_sim_kernel").vermagic_for(spec["kernel_release"])),
        ("srcversion", hashlib.sha256(payload).hexdigest()[:23].upper()),
        ("depends", ""),
        ("license", "GPL"),
    ]
    if spec["livepatch"]:
        fields.append(("livepatch", "Y"))
    if spec["intree"]:
        fields.append(("intree", "Y"))
    if spec["description"]:
        fields.append(("description", spec["description"]))
    # As ld --build-id=sha1 does for Kbuild's modules: the ID follows the content, so a rebuilt patch of the
    # same name has another (the host layer compares it with the loaded module's).
    build_id = hashlib.sha1(modinfo_bytes(fields) + payload, usedforsecurity=False).hexdigest()
    modinfo = module_util("_modinfo")  # the ELF note format lives with the host code that reads it
    return build_module(fields, {SPEC_SECTION: payload, modinfo.BUILD_ID_SECTION: modinfo.build_id_note(build_id)})


def write_ko(spec: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(build_ko(spec))
    return out
