"""What a host says about itself, made safe to believe: the one place a module result is validated and capped
before anything records it or decides on it.

A result comes from the host (a compromised or broken one can say anything), through Ansible or an execution
node. Everything klpfleet reads from it is bounded here: strings, lists, nesting and the whole size; `klp_error`
and `outcome` must be words of the collection's own table (`module_utils/_codes.py`, read by path so the
controller never imports the collection as a package); patch names must be kernel module names. What does not
fit is dropped or replaced by a value that cannot be mistaken for success, and the result says what was done
(`klp_sanitized`), so the audit trail shows a host that lied.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

from klpfleet.collection import standalone_module_util

MAX_STRING = 4096  # characters of any one string (a kernel log line, a message, a stack frame)
MAX_LIST = 256  # items of any one list (patches, objects, kernel log lines)
MAX_STALLED_TASKS = 64  # a stall is diagnosed by a few tasks; 20,000 of them is an attack on the database
MAX_REFUSALS = 100
MAX_DEPTH = 6
MAX_KEYS = 256
MAX_NODES = 20_000  # values in one result, all levels together: bounds the work and the row whatever the shape
# The fields whose lists are capped tighter than MAX_LIST.
LIST_CAPS = {"stalled_tasks": MAX_STALLED_TASKS, "refused_module_loads": MAX_REFUSALS, "warnings": 10}
# A result's `klp_error` when the host sent one klpfleet does not know: a failure, never a success.
UNKNOWN_ERROR = "insmod_failed"


def codes() -> ModuleType:
    """The collection's `_codes.py` (it imports only `re`)."""
    return standalone_module_util("_codes")


def is_module_name(value: Any) -> bool:
    """A kernel module's name: what may name a patch on a host, in a run, or under /sys."""
    pattern: re.Pattern[str] = codes().MODULE_NAME_RE
    return isinstance(value, str) and bool(pattern.match(value))


def _bounded(value: Any, depth: int, budget: list[int], cap: int = MAX_LIST) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        return None
    if isinstance(value, str):
        return value[:MAX_STRING]
    if value is None or isinstance(value, (bool, int, float)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
            return None
        return value
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, dict):
        out = {}
        for key in list(value)[:MAX_KEYS]:
            if isinstance(key, str):
                out[key[:200]] = _bounded(value[key], depth + 1, budget, LIST_CAPS.get(key, MAX_LIST))
        return out
    if isinstance(value, (list, tuple)):
        return [_bounded(item, depth + 1, budget) for item in list(value)[:cap]]
    return str(value)[:MAX_STRING]


def sanitize(result: Any) -> dict[str, Any]:
    """A copy of one module result that is safe to record: bounded, with known codes and valid names."""
    if not isinstance(result, dict):
        return {"msg": "the host's result was not a mapping", "klp_error": UNKNOWN_ERROR, "klp_sanitized": ["result"]}
    clean: dict[str, Any] = _bounded(result, 0, [MAX_NODES])
    fixed: list[str] = []
    table = codes()
    code = clean.get("klp_error")
    if code is not None and code not in table.KLP_ERRORS:
        clean["klp_error"] = UNKNOWN_ERROR
        clean["klp_error_reported"] = str(code)[:60]
        fixed.append("klp_error")
    outcome = clean.get("outcome")
    if outcome is not None and outcome not in table.OUTCOMES:
        clean["outcome"] = "failed"
        clean.setdefault("klp_error", UNKNOWN_ERROR)
        fixed.append("outcome")
    for key in ("name",):
        if key in clean and clean[key] is not None and not is_module_name(clean[key]):
            clean.pop(key)
            fixed.append(key)
    for key in ("patches", "forced_modules"):
        items = clean.get(key)
        if isinstance(items, list):
            kept = [p for p in items if isinstance(p, dict) and is_module_name(p.get("name"))]
            if len(kept) != len(items):
                clean[key] = kept
                fixed.append(key)
    for key in ("replaced", "pinned"):
        items = clean.get(key)
        if isinstance(items, list):
            kept = [p for p in items if is_module_name(p)]
            if len(kept) != len(items):
                clean[key] = kept
                fixed.append(key)
    if fixed:
        clean["klp_sanitized"] = fixed
    return clean
