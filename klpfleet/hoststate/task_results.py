"""Reading one klpfleet.livepatch task result: which module it came from, its loop items, the delegate it ran on,
the arguments it ran with, the stalled tasks and notes worth keeping. Pure functions over the (already bounded)
result; the recorder writes what they find."""

from __future__ import annotations

import re
from typing import Any

from klpfleet.names import HOST_NAME_RE

PATCH_ACTIONS = {"klpfleet.livepatch.patch", "patch"}
INFO_ACTIONS = {"klpfleet.livepatch.patch_info", "patch_info"}
BOOT_ACTIONS = {"klpfleet.livepatch.boot_manifest", "boot_manifest"}
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


STACK_FRAMES_KEPT = 12


def stalled_task(task: dict[str, Any]) -> dict[str, Any]:
    """What an operator needs about a task that held a transition back: who, and where it sleeps (the top of
    its kernel stack names the patched function)."""
    kept = {k: task.get(k) for k in ("pid", "tid", "comm", "patch_state")}
    stack = task.get("stack")
    kept["stack"] = [str(frame)[:200] for frame in stack[:STACK_FRAMES_KEPT]] if isinstance(stack, list) else []
    return kept


def is_livepatch_action(action: str) -> bool:
    return action in PATCH_ACTIONS or action in INFO_ACTIONS or action in BOOT_ACTIONS


# Every result of the collection's modules names its module in `klp_module`, so a result that reaches a
# callback under another action (async_status collecting an async task, a wrapper module) is still known.
RESULT_MODULES = {
    "patch": "klpfleet.livepatch.patch",
    "patch_info": "klpfleet.livepatch.patch_info",
    "boot_manifest": "klpfleet.livepatch.boot_manifest",
}


def livepatch_action_of(action: str, result: dict[str, Any]) -> str | None:
    if is_livepatch_action(action):
        return action
    return RESULT_MODULES.get(str(result.get("klp_module")))


def delegation_of(result: dict[str, Any], delegate_to: Any) -> dict[str, str] | None:
    """With delegate_to, the module ran on (and changed) the delegated host, not the task's host. Ansible
    2.19 hands callbacks only the delegate's connection vars, so what is known of it: its name (when the
    task named it literally) and its ansible_host."""
    delegated = result.get("_ansible_delegated_vars")
    if not isinstance(delegated, dict):
        return None
    names = [delegated.get("ansible_delegated_host"), delegate_to]
    found = {"name": next((n for n in names if isinstance(n, str) and HOST_NAME_RE.match(n)), "")}
    if isinstance(delegated.get("ansible_host"), str):
        found["address"] = delegated["ansible_host"]
    return found


RECORDED_ARGS = ("name", "sha256", "state")


def clean_result(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_ansible")}


def args_of(task_args: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The task's literal arguments, overridden by what the module actually ran with (its `invocation`):
    that is where a loop's or a template's final values are."""
    args = {k: v for k, v in task_args.items() if k in RECORDED_ARGS and isinstance(v, str) and "{{" not in v}
    invoked = (result.get("invocation") or {}).get("module_args")
    if isinstance(invoked, dict):
        args.update({k: v for k, v in invoked.items() if k in RECORDED_ARGS and isinstance(v, str)})
    return args


def task_results(status: str, result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One task's result as (status, result) pairs: a loop's items each count on their own."""
    items = result.get("results")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        return [(status, result)]
    pairs = []
    for item in items:
        if item.get("unreachable"):
            pairs.append(("unreachable", item))
        elif item.get("skipped"):
            continue
        else:
            pairs.append(("failed" if item.get("failed") else "ok", item))
    return pairs


# Result fields worth keeping in the audit trail beside the state (docs/kernel.md, "Kernel generations").
NOTE_KEYS = ("forced", "force_semantics", "module_pinned", "identity", "signaled", "kernel_log_unreadable")


def result_notes(result: dict[str, Any]) -> dict[str, Any]:
    notes = {k: result[k] for k in NOTE_KEYS if result.get(k)}
    if isinstance(result.get("pinned"), list):  # even empty: the force pinned nothing
        notes["pinned"] = [str(name)[:200] for name in result["pinned"][:50]]
    warnings = [str(w)[:500] for w in result.get("warnings") or [] if isinstance(w, str)][:10]
    if warnings:
        notes["warnings"] = warnings
    # The kernel's own lines about this patch during the operation (bounded): what a host view shows.
    lines = [str(line)[:300] for line in result.get("kernel_log") or [] if isinstance(line, str)][-30:]
    if lines:
        notes["kernel_log"] = lines
    return notes
