"""Planning a rollout: which hosts are eligible, why the others are not, and the waves. Touches no host."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from klpfleet.controller.policy import Policy, serial_batches
from klpfleet.db import events, locks
from klpfleet.db.models import ExecutionNode, Host, HostLabel, HostPatch, Patch, Rollout, Wave, WaveHost
from klpfleet.errors import UsageError
from klpfleet.registry.blocks import refuse_if_blocked
from klpfleet.states import ACTIVE_ROLLOUT_STATUSES, PatchState
from klpfleet.wording import counted

NO_DOMAIN = "(none)"


class NoEligibleHost(UsageError):
    """Every selected host was left out; `excluded` says why for each."""

    def __init__(self, message: str, excluded: dict[str, str]) -> None:
        super().__init__(message)
        self.excluded = excluded


@dataclass
class Plan:
    waves: list[list[str]]
    domains: list[str | None]
    excluded: dict[str, str] = field(default_factory=dict)  # host -> reason
    # The pre-flight's verdicts that are not a plain `ok`: host -> verdict (reads.preflight), planned or not.
    preflight: dict[str, dict[str, Any]] = field(default_factory=dict)


def eligible_hosts(session: Session, patch: Patch, names: list[str]) -> tuple[list[Host], dict[str, str]]:
    locks.serialize(session, locks.PLAN)  # two concurrent `rollout create` never both claim a host
    hosts = list(session.scalars(select(Host).where(Host.name.in_(names)).order_by(Host.name)))
    held = dict(
        session.execute(
            select(Host.name, Rollout.id)
            .join(WaveHost, WaveHost.host_id == Host.id)
            .join(Rollout, Rollout.id == WaveHost.rollout_id)
            .where(Host.name.in_(names), Rollout.status.in_([s.value for s in ACTIVE_ROLLOUT_STATUSES]))
        ).all()
    )
    if held:
        listing = ", ".join(f"{h} (rollout {r})" for h, r in sorted(held.items())[:10])
        more = f" and {len(held) - 10} more" if len(held) > 10 else ""
        raise UsageError(f"{counted(len(held), 'host')} held by another active rollout: {listing}{more}")
    applied = set(
        session.scalars(
            select(HostPatch.host_id).where(
                HostPatch.patch_id == patch.id,
                HostPatch.state.in_([PatchState.APPLIED.value, PatchState.FORCED.value]),
            )
        )
    )
    keep, excluded = [], {}
    for h in hosts:
        if h.kernel_release is None and h.reachable is False:
            excluded[h.name] = "unreachable, its kernel never read: reach it, then gather (or klpfleet probe)"
        elif h.kernel_release is None:
            excluded[h.name] = "kernel release unknown: run playbooks/gather.yml (or klpfleet probe) first"
        elif h.kernel_release != patch.kernel_release:
            excluded[h.name] = f"runs {h.kernel_release}, the patch is built for {patch.kernel_release}"
        elif h.livepatch_supported is False:
            excluded[h.name] = "kernel has no livepatch support"
        elif h.id in applied:
            excluded[h.name] = "already applied"
        else:
            keep.append(h)
    unserved = unserved_hosts(session, keep)
    for h in unserved:
        excluded[h.name] = unserved[h]
    return [h for h in keep if h not in unserved], excluded


def unserved_hosts(session: Session, hosts: list[Host]) -> dict[Host, str]:
    """With execution nodes, the hosts none of them serves (they could run nowhere), and why."""
    from klpfleet.nodes.assign import candidates
    from klpfleet.nodes.registry import Node

    nodes = [Node.from_row(r) for r in session.scalars(select(ExecutionNode))]
    if not nodes or all(n.serves_label is None for n in nodes):
        return {}  # no nodes: runs are local; an unlabelled node serves every host
    keys = {n.serves_label for n in nodes if n.serves_label}
    labels: dict[int, dict[str, str]] = {}
    # Every host's label of those keys, unfiltered by id: a 100,000-host plan stays within bound-parameter limits.
    for host_id, key, value in session.execute(
        select(HostLabel.host_id, HostLabel.key, HostLabel.value).where(HostLabel.key.in_(keys))
    ):
        labels.setdefault(host_id, {})[key] = value
    served = ", ".join(sorted(str(n.serves) for n in nodes if n.serves))
    return {
        h: f"no execution node serves it (nodes serve {served}; `klpfleet node add ... --serves` one)"
        for h in hosts
        if not candidates(labels.get(h.id, {}), nodes)
    }


def preflight_hosts(
    session: Session, patch: Patch, hosts: list[Host], *, enforce: bool, require_replace: bool
) -> tuple[list[Host], dict[str, str], dict[str, dict[str, Any]]]:
    """The hosts the pre-flight does not rule out, the ruled out with their reason, and every verdict worth
    showing. `enforce=False` (--no-preflight) keeps every host and still reports what the pre-flight saw."""
    from klpfleet.reads.preflight import OK, REFUSE, check_patch

    verdicts = check_patch(session, patch, [h.name for h in hosts], require_replace=require_replace)
    keep, excluded, shown = [], {}, {}
    for h in hosts:
        v = verdicts[h.name]
        if v.verdict != OK:
            shown[h.name] = v.as_dict()
        if enforce and v.verdict == REFUSE:
            first = next(r for r in v.reasons if r["level"] == REFUSE)
            excluded[h.name] = f"pre-flight: {first['message']} (the kernel would refuse: {first['code']})"
        else:
            keep.append(h)
    return keep, excluded, shown


def make_plan(
    session: Session,
    patch: Patch,
    names: list[str],
    policy: Policy,
    *,
    preflight: bool = True,
    require_replace: bool = False,
) -> Plan:
    refuse_if_blocked(patch)
    hosts, excluded = eligible_hosts(session, patch, names)
    hosts, refused, verdicts = preflight_hosts(
        session, patch, hosts, enforce=preflight, require_replace=require_replace
    )
    excluded.update(refused)
    if not hosts:
        raise NoEligibleHost(
            f"no eligible host among {len(names)} selected ({len(excluded)} excluded)"
            + (f": e.g. {next(iter(excluded.items()))[0]}: {next(iter(excluded.values()))}" if excluded else ""),
            excluded,
        )
    domains: dict[str, str] | None = None
    if policy.by:
        labels = dict(
            session.execute(
                select(HostLabel.host_id, HostLabel.value).where(
                    HostLabel.key == policy.by, HostLabel.host_id.in_([h.id for h in hosts])
                )
            ).all()
        )
        domains = {h.name: labels.get(h.id, NO_DOMAIN) for h in hosts}
        ordered = sorted(hosts, key=lambda h: (domains[h.name] == NO_DOMAIN, domains[h.name], h.name))
        names_in_order = [h.name for h in ordered]
    else:
        names_in_order = [h.name for h in hosts]
    waves = serial_batches(names_in_order, policy.waves, domains)
    return Plan(
        waves=waves,
        domains=[domains[w[0]] if domains else None for w in waves],
        excluded=excluded,
        preflight=verdicts,
    )


def create_rollout(
    session: Session, patch: Patch, plan: Plan, policy: Policy, selector: str | None, actor: str | None = None
) -> Rollout:
    rollout = Rollout(
        patch_id=patch.id,
        status="planned",
        selector=selector,
        policy=policy.to_json(),
        current_wave=0,
        created_by=actor or events.default_actor(),
    )
    session.add(rollout)
    session.flush()
    ids = dict(
        session.execute(select(Host.name, Host.id).where(Host.name.in_([h for w in plan.waves for h in w]))).all()
    )
    for index, (hosts, domain) in enumerate(zip(plan.waves, plan.domains, strict=True)):
        wave = Wave(rollout_id=rollout.id, index=index, domain=domain, status="pending")
        session.add(wave)
        session.flush()
        session.add_all(
            WaveHost(wave_id=wave.id, rollout_id=rollout.id, host_id=ids[h], status="pending") for h in hosts
        )
    events.add(
        session,
        "rollout.planned",
        actor=actor,
        patch=patch,
        rollout=rollout,
        waves=[len(w) for w in plan.waves],
        excluded=len(plan.excluded),
        selector=selector,
        policy=policy.to_json(),
    )
    record_verdicts(session, rollout, patch, plan, actor)
    return rollout


MAX_VERDICT_EVENTS = 1000  # per rollout; the counts of all of them are in `preflight.summary`


def record_verdicts(session: Session, rollout: Rollout, patch: Patch, plan: Plan, actor: str | None) -> None:
    """Each host's pre-flight verdict that is not `ok`, as an event of the rollout: `preflight.excluded` for a
    host left out of the waves, `preflight.verdict` for one planned anyway (a warning, or --no-preflight); the
    left out first, at most MAX_VERDICT_EVENTS, and one `preflight.summary` with the counts per verdict and code."""
    if not plan.preflight:
        return
    counts: dict[str, dict[str, int]] = {}
    for verdict in plan.preflight.values():
        for r in verdict["reasons"]:
            if r["level"] != "ok":
                by_code = counts.setdefault(r["level"], {})
                by_code[r["code"]] = by_code.get(r["code"], 0) + 1
    events.add(
        session,
        "preflight.summary",
        actor=actor,
        patch=patch,
        rollout=rollout,
        excluded=sum(1 for h in plan.preflight if h in plan.excluded),
        planned_with_warnings=sum(1 for h in plan.preflight if h not in plan.excluded),
        reasons=counts,
    )
    shown = verdicts_shown(plan)
    hosts = {h.name: h for h in session.scalars(select(Host).where(Host.name.in_(shown)))}
    for name in shown:
        verdict = plan.preflight[name]
        events.add(
            session,
            "preflight.excluded" if name in plan.excluded else "preflight.verdict",
            actor=actor,
            patch=patch,
            rollout=rollout,
            host=hosts.get(name),
            verdict=verdict["verdict"],
            klp_error=verdict["klp_error"],
            reasons=verdict["reasons"][:20],
        )


def verdicts_shown(plan: Plan) -> list[str]:
    """The hosts whose verdict is shown one by one (events, the plan's record): the left out first, at most
    MAX_VERDICT_EVENTS."""
    return sorted(plan.preflight, key=lambda h: (h not in plan.excluded, h))[:MAX_VERDICT_EVENTS]


def plan_record(plan: Plan) -> dict[str, Any]:
    return {
        "waves": [
            {"index": i, "domain": d, "hosts": w} for i, (w, d) in enumerate(zip(plan.waves, plan.domains, strict=True))
        ],
        "excluded": [{"host": h, "reason": r} for h, r in sorted(plan.excluded.items())],
        # Every verdict that is not `ok`, the left out first (at most 1,000: the counts are in the events).
        "preflight": [plan.preflight[h] for h in verdicts_shown(plan)],
    }
