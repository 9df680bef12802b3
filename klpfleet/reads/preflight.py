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

from sqlalchemy import case, select
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


@dataclass(frozen=True)
class Known:
    """A patch as the pre-flight reads it, once per patch whatever the fleet's size: its row's fields and its
    contents, validated (a forged row reads as not known)."""

    id: int
    name: str
    contents: dict[str, Any] | None
    functions: dict[str, list[str]]  # as sysfs names them

    @classmethod
    def of(cls, patch: Patch) -> Known:
        return cls(patch.id, patch.name, stored_contents(patch.contents), patch_functions(patch))


@dataclass(frozen=True)
class Loaded:
    """One of a host's patches that matters to a load: registered in its kernel, or owing a reboot."""

    patch: Known
    state: str
    functions: dict[str, list[str]]  # what the host's sysfs listed, when the patch's own contents are not known


def check_patch(
    session: Session, patch: Patch, host_names: list[str], *, require_replace: bool = False
) -> dict[str, Verdict]:
    """A verdict per named host (in name order). Columns, not ORM rows, and each other patch judged once: a
    100,000-host rollout is planned with it."""
    hosts = session.execute(
        select(
            Host.id, Host.name, Host.kernel_release, Host.livepatch_supported, Host.module_signatures, Host.reachable
        )
        .where(Host.name.in_(sorted(host_names)))
        .order_by(Host.name)
    ).all()
    wanted = {h.id for h in hosts}
    patches = {p.id: Known.of(p) for p in session.scalars(select(Patch))}
    unknown = [pid for pid, k in patches.items() if k.contents is None]
    rows = session.execute(
        select(
            HostPatch.host_id,
            HostPatch.patch_id,
            HostPatch.state,
            HostPatch.enabled,
            HostPatch.transition,
            # A patch's functions are the same in sysfs as in its .ko: the host's list is read only when the .ko's
            # is not known (a million JSON values not parsed for nothing).
            case((HostPatch.patch_id.in_(unknown), HostPatch.functions), else_=None),
        ).where(HostPatch.state.in_((*REGISTERED, *REBOOT_DEBT, PatchState.DRIFT.value)))
    ).all()
    registered: dict[int, list[Loaded]] = {}
    debts: dict[int, list[Loaded]] = {}
    for host_id, patch_id, state, enabled, transition, functions in rows:
        if host_id not in wanted or patch_id not in patches:
            continue
        loaded = Loaded(patches[patch_id], state, sysfs_functions(functions) if functions else {})
        in_kernel = bool(enabled or transition) if state == PatchState.DRIFT.value else state in REGISTERED
        if in_kernel:
            registered.setdefault(host_id, []).append(loaded)
        if state in REBOOT_DEBT:
            debts.setdefault(host_id, []).append(loaded)
    judge = Judge(patch, patches.get(patch.id) or Known.of(patch), require_replace)
    return {h.name: judge.verdict(h, registered.get(h.id, []), debts.get(h.id, [])) for h in hosts}


class Judge:
    """One patch's verdicts. What depends only on the pair (this patch, an installed one) is worked out once per
    installed patch, not once per host."""

    def __init__(self, patch: Patch, known: Known, require_replace: bool) -> None:
        self.patch, self.known, self.require_replace = patch, known, require_replace
        self.pairs: dict[int, list[dict[str, Any]]] = {}

    def verdict(self, host: Any, registered: list[Loaded], debts: list[Loaded]) -> Verdict:
        v = Verdict(host.name)
        if host.kernel_release is None:
            v.add(UNKNOWN, "never_read", "klpfleet never read this host: gather or probe it first")
            return v
        # In the order the patch module and then the kernel check (the first refusal is the one reported):
        # livepatch support and the release before insmod, then the kernel's module_sig_check, then the states.
        if host.livepatch_supported is False:
            v.add(REFUSE, "livepatch_unsupported", "the kernel has no livepatch support (no /sys/kernel/livepatch)")
        if host.kernel_release != self.patch.kernel_release:
            v.add(
                REFUSE,
                "vermagic_mismatch",
                f"runs {host.kernel_release}, the patch is built for {self.patch.kernel_release}",
                predicted_errno="ENOEXEC",
            )
        others = [x for x in registered if x.patch.id != self.known.id]
        if any(x.patch.id == self.known.id and x.state != PatchState.UNLOADING.value for x in registered):
            v.add(OK, "already_loaded", "this patch is already loaded here: nothing to load")
            return v
        _signatures(v, host, self.patch)
        if self.known.contents is None and others:
            v.add(WARN, "contents_unknown", "what this patch declares was never read from its .ko")
        for other in others:
            for reason in self.pair(other):
                v.add(**reason)
        if (self.known.contents or {}).get("replace") is True and others:
            replaced = sorted(x.patch.name for x in others)
            v.add(OK, "replaces", f"replaces {', '.join(replaced)}", replaces=replaced)
        for x in debts:
            v.add(
                WARN,
                "reboot_debt",
                f"{x.patch.name} is {x.state}: its module stays loaded until a reboot",
                patch=x.patch.name,
            )
        if any(x.state == PatchState.TRANSITIONING.value for x in others):
            v.add(WARN, "transition_running", "another patch's transition is running (the load waits, then retries)")
        if host.reachable is False:
            v.add(WARN, "unreachable", "unreachable when last tried")
        return v

    def pair(self, other: Loaded) -> list[dict[str, Any]]:
        if other.functions:  # judged on the host's own list: not shared with other hosts
            return _states(self.known, other.patch) + _stacking(self.known, other, self.require_replace)
        if other.patch.id not in self.pairs:
            self.pairs[other.patch.id] = _states(self.known, other.patch) + _stacking(
                self.known, other, self.require_replace
            )
        return self.pairs[other.patch.id]


def _signatures(v: Verdict, host: Any, patch: Patch) -> None:
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


def _states(mine_known: Known, other: Known) -> list[dict[str, Any]]:
    """The kernel's klp_is_state_compatible for this patch against one installed patch's states."""
    contents = mine_known.contents
    if contents is None:
        return []
    if other.contents is None:
        return [reason(WARN, "contents_unknown", f"the system states of installed {other.name} were never read")]
    mine = {s["id"]: s["version"] for s in contents.get("states") or []}
    replace = contents.get("replace")
    out = []
    for state in other.contents.get("states") or []:
        sid, version = state["id"], state["version"]
        if sid in mine and mine[sid] < version:
            conflict = f"state {sid} version {mine[sid]} is older than installed {other.name}'s version {version}"
            out.append(reason(REFUSE, "incompatible_state", conflict, predicted_errno="EINVAL"))
        elif sid not in mine and replace is True:
            conflict = f"a replace patch without state {sid}, which installed {other.name} holds"
            out.append(reason(REFUSE, "incompatible_state", conflict, predicted_errno="EINVAL"))
        elif sid not in mine and replace is None:
            out.append(
                reason(
                    WARN,
                    "incompatible_state_possible",
                    f"installed {other.name} holds state {sid}; if this patch replaces ("
                    f"{contents.get('replace_source')}) the kernel refuses it",
                )
            )
    return out


def _stacking(mine_known: Known, other: Loaded, require_replace: bool) -> list[dict[str, Any]]:
    """A non-replace patch on functions an installed patch already replaces."""
    contents = mine_known.contents or {}
    if contents.get("replace") is True:
        return []
    mine = {(obj, f) for obj, funcs in mine_known.functions.items() for f in funcs}
    on_host = other.functions or other.patch.functions
    shared = sorted(f"{obj}:{f}" for obj, funcs in on_host.items() for f in funcs if (obj, f) in mine)
    if not shared:
        return []
    how = "would stack on" if contents.get("replace") is False else "may stack on (replace decided at load)"
    strict = require_replace and contents.get("replace") is False
    return [
        reason(
            REFUSE if strict else WARN,
            "not_replace" if strict else "stacks",
            f"{how} {other.patch.name} for {', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''}",
            patch=other.patch.name,
            functions=shared[:50],
        )
    ]


def reason(level: str, code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"level": level, "code": code, "message": message, **details}


def summary(verdicts: dict[str, Verdict]) -> dict[str, int]:
    counts = {REFUSE: 0, WARN: 0, UNKNOWN: 0, OK: 0}
    for v in verdicts.values():
        counts[v.verdict] += 1
    return counts
