"""Pre-flight: what each host would do with a patch, predicted from what klpfleet knows, before any host is touched.

A verdict is `refuse` only when the kernel certainly refuses the load, with the `klp_error` the patch module would
then report (the same words): the patch is built for another kernel release (vermagic), the kernel has no
livepatch, it enforces signatures (`module.sig_enforce`, or lockdown) and the .ko is unsigned, or a system state
is incompatible with an installed patch's (the kernel's `klp_is_patch_compatible`). `warn` is what an operator
should know but does not stop the kernel: stacking on a patch that already replaces the same function, a signed
module whose key the host's trust was not checked against, a host waiting for a reboot to shed a pinned module,
a transition in progress. `unknown`: klpfleet never read the host. Nothing here is a guess presented as a fact:
what cannot be told from the database is a warning that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.db.models import Host, HostPatch, Patch
from klpfleet.names import sysfs_functions
from klpfleet.reads.function_map import patch_functions
from klpfleet.registry.klp_contents import stored_contents
from klpfleet.registry.module_signature import stored_signature
from klpfleet.states import PatchState

REFUSE, WARN, OK, UNKNOWN = "refuse", "warn", "ok", "unknown"
# Patches the kernel still has registered (klp_patches): a new patch's states are checked against all of them.
REGISTERED = (
    PatchState.APPLIED.value,
    PatchState.FORCED.value,
    PatchState.TRANSITIONING.value,
    PatchState.UNLOADING.value,
)
REBOOT_DEBT = (PatchState.FORCED.value, PatchState.PINNED.value)


def registered_in_kernel(row: HostPatch) -> bool:
    """Whether the kernel has the patch registered, as klpfleet last saw it: a state that says so, or a drift
    found loaded (its sysfs showed it enabled or in transition)."""
    if row.state == PatchState.DRIFT.value:
        return bool(row.enabled or row.transition)
    return row.state in REGISTERED


@dataclass
class Verdict:
    host: str
    verdict: str = OK
    reasons: list[dict[str, Any]] = field(default_factory=list)

    def add(self, level: str, code: str, message: str, **details: Any) -> None:
        self.reasons.append({"level": level, "code": code, "message": message, **details})
        rank = {OK: 0, WARN: 1, UNKNOWN: 2, REFUSE: 3}
        if rank[level] > rank[self.verdict]:
            self.verdict = level

    @property
    def klp_error(self) -> str | None:
        """The patch module's klp_error for the first certain refusal."""
        return next((r["code"] for r in self.reasons if r["level"] == REFUSE), None)

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "verdict": self.verdict, "klp_error": self.klp_error, "reasons": self.reasons}


def check_patch(
    session: Session, patch: Patch, host_names: list[str], *, require_replace: bool = False
) -> dict[str, Verdict]:
    """A verdict per named host (in name order)."""
    hosts = list(session.scalars(select(Host).where(Host.name.in_(sorted(host_names))).order_by(Host.name)))
    registered: dict[int, list[tuple[HostPatch, Patch]]] = {}
    debts: dict[int, list[tuple[HostPatch, Patch]]] = {}
    query = (
        select(HostPatch, Patch)
        .join(Patch, Patch.id == HostPatch.patch_id)
        .where(HostPatch.host_id.in_([h.id for h in hosts]))
        .where(HostPatch.state.in_((*REGISTERED, *REBOOT_DEBT, PatchState.DRIFT.value)))
    )
    for row, other in session.execute(query).all():
        if registered_in_kernel(row):
            registered.setdefault(row.host_id, []).append((row, other))
        if row.state in REBOOT_DEBT:
            debts.setdefault(row.host_id, []).append((row, other))
    return {h.name: _verdict(h, patch, registered.get(h.id, []), debts.get(h.id, []), require_replace) for h in hosts}


def _verdict(
    host: Host,
    patch: Patch,
    registered: list[tuple[HostPatch, Patch]],
    debts: list[tuple[HostPatch, Patch]],
    require_replace: bool,
) -> Verdict:
    v = Verdict(host.name)
    if host.kernel_release is None:
        v.add(UNKNOWN, "never_read", "klpfleet never read this host: gather or probe it first")
        return v
    # In the order the patch module and then the kernel check (the first refusal is the one reported): livepatch
    # support and the release before insmod, then the kernel's module_sig_check, then the system states.
    if host.livepatch_supported is False:
        v.add(REFUSE, "livepatch_unsupported", "the kernel has no livepatch support (no /sys/kernel/livepatch)")
    if host.kernel_release != patch.kernel_release:
        v.add(
            REFUSE,
            "vermagic_mismatch",
            f"runs {host.kernel_release}, the patch is built for {patch.kernel_release}",
            predicted_errno="ENOEXEC",
        )
    if any(other.id == patch.id and row.enabled for row, other in registered):
        v.add(OK, "already_loaded", "this patch is already loaded here: nothing to load")
        return v
    _signatures(v, host, patch)
    others = [(row, other) for row, other in registered if other.id != patch.id]
    _states(v, patch, others)
    _stacking(v, patch, others, require_replace)
    for row, other in debts:
        v.add(
            WARN,
            "reboot_debt",
            f"{other.name} is {row.state}: its module stays loaded until a reboot",
            patch=other.name,
        )
    if any(row.state == PatchState.TRANSITIONING.value for row, _ in others):
        v.add(WARN, "transition_running", "another patch's transition is running (the load waits, then retries)")
    if host.reachable is False:
        v.add(WARN, "unreachable", "unreachable when last tried")
    return v


def _signatures(v: Verdict, host: Host, patch: Patch) -> None:
    policy = host.module_signatures if isinstance(host.module_signatures, dict) else {}  # a row, read as hostile
    enforced = policy.get("enforced") is True
    locked = policy.get("lockdown") in ("integrity", "confidentiality")
    if patch.signed is None:
        if enforced or locked:
            v.add(WARN, "signature_unknown", "the host checks module signatures; this patch's were never read")
        return
    if not patch.signed:
        # The kernel's module_sig_check: sig_enforce rejects first (EKEYREJECTED), else lockdown refuses (EPERM).
        if enforced:
            v.add(
                REFUSE,
                "signature_rejected",
                "the host enforces module signatures (module.sig_enforce) and the .ko is unsigned",
                predicted_errno="EKEYREJECTED",
            )
        elif locked:
            v.add(
                REFUSE,
                "lockdown",
                f"the kernel is locked down ({policy.get('lockdown')}) and the .ko is unsigned",
                predicted_errno="EPERM",
            )
        return
    if enforced or locked:
        sig = stored_signature(patch.signature) or {}
        v.add(
            WARN,
            "signature_trust_unchecked",
            f"the host checks signatures; the .ko is signed by {sig.get('signer') or '?'} (key {sig.get('key_id')}),"
            " whose trust on this host klpfleet does not check",
        )


def _states(v: Verdict, patch: Patch, others: list[tuple[HostPatch, Patch]]) -> None:
    contents = stored_contents(patch.contents)
    if contents is None:
        if others:
            v.add(WARN, "contents_unknown", "what this patch declares was never read from its .ko")
        return
    mine = {s["id"]: s["version"] for s in contents.get("states") or []}
    replace = contents.get("replace")
    for _row, other in others:
        installed = stored_contents(other.contents)
        theirs = (installed or {}).get("states")
        if installed is None:
            v.add(WARN, "contents_unknown", f"the system states of installed {other.name} were never read")
            continue
        for state in theirs or []:
            sid, version = state["id"], state["version"]
            # The kernel's klp_is_state_compatible, for each state of each registered patch.
            conflict = None
            if sid in mine and mine[sid] < version:
                conflict = f"state {sid} version {mine[sid]} is older than installed {other.name}'s version {version}"
            elif sid not in mine and replace is True:
                conflict = f"a replace patch without state {sid}, which installed {other.name} holds"
            if conflict:
                v.add(REFUSE, "incompatible_state", conflict, predicted_errno="EINVAL")
            elif sid not in mine and replace is None:
                v.add(
                    WARN,
                    "incompatible_state_possible",
                    f"installed {other.name} holds state {sid}; if this patch replaces ("
                    f"{contents.get('replace_source')}) the kernel refuses it",
                )


def _stacking(v: Verdict, patch: Patch, others: list[tuple[HostPatch, Patch]], require_replace: bool) -> None:
    contents = stored_contents(patch.contents) or {}
    if contents.get("replace") is True:
        replaced = sorted(other.name for _row, other in others)
        if replaced:
            v.add(OK, "replaces", f"replaces {', '.join(replaced)}", replaces=replaced)
        return
    mine = {(obj, f) for obj, funcs in patch_functions(patch).items() for f in funcs}
    for row, other in others:
        on_host = sysfs_functions(row.functions) or patch_functions(other)
        shared = sorted(f"{obj}:{f}" for obj, funcs in on_host.items() for f in funcs if (obj, f) in mine)
        if not shared:
            continue
        how = "would stack on" if contents.get("replace") is False else "may stack on (replace decided at load)"
        level = REFUSE if require_replace and contents.get("replace") is False else WARN
        v.add(
            level,
            "stacks" if level == WARN else "not_replace",
            f"{how} {other.name} for {', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''}",
            patch=other.name,
            functions=shared[:50],
        )


def summary(verdicts: dict[str, Verdict]) -> dict[str, int]:
    counts = {REFUSE: 0, WARN: 0, UNKNOWN: 0, OK: 0}
    for v in verdicts.values():
        counts[v.verdict] += 1
    return counts
