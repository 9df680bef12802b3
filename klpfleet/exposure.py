"""Which hosts are still exposed to a CVE: the question asked at 3 a.m.

For each CVE a registered patch names (or an operator marked a kernel release as fixing), every host is:

- covered: a patch naming the CVE is applied there (applied or forced), or it runs a kernel release marked as
  fixing the CVE (`klpfleet cve fixed`);
- exposed: a patch naming the CVE exists for the kernel release it runs and is not applied; the reason is the
  patch's state there (pending when it was never tried, refused, stalled, failed, lost_at_reboot, ...), or
  unreachable when the host could not be reached when last tried;
- unknown: no patch naming the CVE is registered for its kernel release (or its release is not known yet).

Plain SQL over four small queries (no ORM), like `klpfleet status`: monitoring runs it per CVE.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from klpfleet.errors import UsageError
from klpfleet.states import PatchState

CVE_RE = re.compile(r"^CVE-\d{4}-\d{4,}$")
COVERING_STATES = frozenset({PatchState.APPLIED.value, PatchState.FORCED.value})
COVERED, EXPOSED, UNKNOWN = "covered", "exposed", "unknown"
# Nagios-style, like `klpfleet status`: exposed hosts are critical, hosts nobody can judge a warning.
EXIT = {"ok": 0, "unknown_hosts": 1, "exposed": 2}


def cve_id(value: str) -> str:
    cve = value.strip().upper()
    if not CVE_RE.match(cve):
        raise UsageError(f"{value!r} is not a CVE id (CVE-YYYY-NNNN)")
    return cve


@dataclass
class Exposure:
    cve: str
    patches: list[dict[str, Any]] = field(default_factory=list)  # name, sha256, kernel_release
    fixed_releases: list[str] = field(default_factory=list)
    hosts: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {COVERED: [], EXPOSED: [], UNKNOWN: []})

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.hosts.items()}

    def exposed_by_reason(self) -> dict[str, int]:
        reasons: dict[str, int] = defaultdict(int)
        for h in self.hosts[EXPOSED]:
            reasons[h["reason"]] += 1
        return dict(sorted(reasons.items()))

    def verdict(self) -> str:
        if self.hosts[EXPOSED]:
            return "exposed"
        return "unknown_hosts" if self.hosts[UNKNOWN] else "ok"

    def summary(self) -> dict[str, Any]:
        return {
            "cve": self.cve,
            "patches": self.patches,
            "fixed_releases": self.fixed_releases,
            "counts": self.counts(),
            "exposed_by_reason": self.exposed_by_reason(),
            "verdict": self.verdict(),
        }


def _cves_of(raw: Any) -> list[str]:
    if isinstance(raw, str):  # JSON as text (SQLite through plain SQL)
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    return [str(c).upper() for c in raw or [] if isinstance(c, str)]


def exposure(conn: Connection, only: str | None = None) -> list[Exposure]:
    """Every CVE's exposure (or only one CVE's), CVEs in order."""
    by_cve: dict[str, Exposure] = {}
    patch_cves: dict[int, list[str]] = {}
    patches_for: dict[tuple[str, str], list[int]] = defaultdict(list)  # (cve, release) -> patch ids
    names: dict[int, str] = {}
    for pid, name, sha, release, cves in conn.execute(
        text("SELECT id, name, sha256, kernel_release, cves FROM patches ORDER BY name, added_at")
    ):
        wanted = [c for c in _cves_of(cves) if only is None or c == only]
        if not wanted:
            continue
        patch_cves[pid], names[pid] = wanted, name
        for cve in wanted:
            by_cve.setdefault(cve, Exposure(cve)).patches.append(
                {"name": name, "sha256": sha, "kernel_release": release}
            )
            patches_for[(cve, release)].append(pid)
    fixed: dict[str, set[str]] = defaultdict(set)
    for cve, release in conn.execute(text("SELECT cve, kernel_release FROM cve_fixes ORDER BY cve, kernel_release")):
        if only is None or cve == only:
            fixed[cve].add(release)
            by_cve.setdefault(cve, Exposure(cve)).fixed_releases.append(release)
    if only is not None and only not in by_cve:
        raise UsageError(f"no registered patch names {only} and no kernel release is marked as fixing it")
    if not by_cve:
        return []  # no CVE named anywhere: `status` on a fleet without CVEs reads no host for this

    states: dict[int, dict[int, str]] = defaultdict(dict)  # host id -> patch id -> state
    if patch_cves:
        ids = ",".join(str(int(p)) for p in patch_cves)  # integers from the database itself
        for host_id, patch_id, state in conn.execute(
            text(f"SELECT host_id, patch_id, state FROM host_patches WHERE patch_id IN ({ids})")  # noqa: S608
        ):
            states[host_id][patch_id] = state
    hosts = conn.execute(text("SELECT id, name, kernel_release, reachable FROM hosts ORDER BY name")).all()
    for cve, exp in sorted(by_cve.items()):
        cve_patch_ids = [p for p, cs in patch_cves.items() if cve in cs]
        for host_id, host, release, reachable in hosts:
            on_host = states.get(host_id, {})
            applied = [names[p] for p in cve_patch_ids if on_host.get(p) in COVERING_STATES]
            if release is not None and release in fixed[cve]:
                exp.hosts[COVERED].append(
                    {"host": host, "kernel_release": release, "reason": "kernel release fixes it"}
                )
            elif applied:
                exp.hosts[COVERED].append(
                    {"host": host, "kernel_release": release, "reason": "applied", "patch": applied[0]}
                )
            elif release is not None and patches_for.get((cve, release)):
                candidates = patches_for[(cve, release)]
                seen = [on_host[p] for p in candidates if p in on_host]
                reason = "unreachable" if reachable is False else (seen[0] if seen else "pending")
                exp.hosts[EXPOSED].append(
                    {"host": host, "kernel_release": release, "reason": reason, "patch": names[candidates[-1]]}
                )
            else:
                why = "kernel release not known yet" if release is None else f"no patch for {release}"
                exp.hosts[UNKNOWN].append({"host": host, "kernel_release": release, "reason": why})
    return [by_cve[c] for c in sorted(by_cve)]
