"""Which hosts are still exposed to a CVE: the question asked at 3 a.m.

For each CVE a registered patch names (or an operator marked a kernel release as fixing), every host is:

- covered: a patch naming the CVE is applied there (applied or forced), or it runs a kernel release marked as
  fixing the CVE (`klpfleet cve fixed`);
- exposed: a patch naming the CVE exists for the kernel release it runs and is not applied; the reason is the
  patch's state there (pending when it was never tried, refused, stalled, failed, lost_at_reboot, ...),
  unreachable when the host could not be reached when last tried, or blocked when every such patch is blocked
  (`klpfleet patch block`: nothing will load it until it is unblocked);
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

CVE_RE = re.compile(r"^CVE-[0-9]{4}-[0-9]{4,}$")  # ASCII digits only (a regex \d matches any script's)
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
    counted: tuple[dict[str, int], dict[str, int]] | None = None  # (counts, exposed by reason) from the database

    def counts(self) -> dict[str, int]:
        if self.counted is not None:
            return dict(self.counted[0])
        return {k: len(v) for k, v in self.hosts.items()}

    def exposed_by_reason(self) -> dict[str, int]:
        if self.counted is not None:
            return dict(self.counted[1])
        reasons: dict[str, int] = defaultdict(int)
        for h in self.hosts[EXPOSED]:
            reasons[h["reason"]] += 1
        return dict(sorted(reasons.items()))

    def verdict(self) -> str:
        counts = self.counts()
        if counts[EXPOSED]:
            return "exposed"
        return "unknown_hosts" if counts[UNKNOWN] else "ok"

    def summary(self) -> dict[str, Any]:
        return {
            "cve": self.cve,
            "patches": self.patches,
            "fixed_releases": self.fixed_releases,
            "counts": self.counts(),
            "exposed_by_reason": self.exposed_by_reason(),
            "verdict": self.verdict(),
        }


def cves_of(raw: Any) -> list[str]:
    if isinstance(raw, str):  # JSON as text (SQLite through plain SQL)
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    return [str(c).upper() for c in raw or [] if isinstance(c, str)]


@dataclass
class Catalogue:
    """What the registry says about CVEs: each CVE's Exposure shell (patches, fixed releases), and per CVE the
    patch ids naming it and the kernel releases those patches are built for."""

    by_cve: dict[str, Exposure] = field(default_factory=dict)
    patch_ids: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    patched: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    fixed: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    names: dict[int, str] = field(default_factory=dict)
    release_of: dict[int, str] = field(default_factory=dict)
    sha_of: dict[int, str] = field(default_factory=dict)
    blocked_ids: set[int] = field(default_factory=set)

    def blocked_releases(self, cve: str) -> set[str]:
        """The releases whose every patch naming the CVE is blocked: exposed there because of the block."""
        releases: dict[str, bool] = {}
        for pid in self.patch_ids[cve]:
            release = self.release_of[pid]
            releases[release] = releases.get(release, True) and pid in self.blocked_ids
        return {r for r, all_blocked in releases.items() if all_blocked}


def catalogue(conn: Connection, only: str | None = None) -> Catalogue:
    cat = Catalogue()
    for pid, name, sha, release, cves, blocked_at in conn.execute(
        text("SELECT id, name, sha256, kernel_release, cves, blocked_at FROM patches ORDER BY name, added_at")
    ):
        for cve in (c for c in cves_of(cves) if only is None or c == only):
            cat.by_cve.setdefault(cve, Exposure(cve)).patches.append(
                {"name": name, "sha256": sha, "kernel_release": release, "blocked": blocked_at is not None}
            )
            cat.patch_ids[cve].append(pid)
            cat.patched[cve].add(release)
            cat.names[pid], cat.release_of[pid], cat.sha_of[pid] = name, release, sha
            if blocked_at is not None:
                cat.blocked_ids.add(pid)
    for cve, release in conn.execute(text("SELECT cve, kernel_release FROM cve_fixes ORDER BY cve, kernel_release")):
        if only is None or cve == only:
            cat.fixed[cve].add(release)
            cat.by_cve.setdefault(cve, Exposure(cve)).fixed_releases.append(release)
    if only is not None and only not in cat.by_cve:
        raise UsageError(f"no registered patch names {only} and no kernel release is marked as fixing it")
    return cat


def exposure(conn: Connection, only: str | None = None) -> list[Exposure]:
    """Every CVE's exposure host by host (or only one CVE's), CVEs in order."""
    cat = catalogue(conn, only)
    if not cat.by_cve:
        return []
    wanted = sorted({pid for ids in cat.patch_ids.values() for pid in ids})
    states: dict[int, dict[int, str]] = defaultdict(dict)  # host id -> patch id -> state
    if wanted:
        ids = ",".join(str(int(p)) for p in wanted)  # integers from the database itself
        for host_id, patch_id, state in conn.execute(
            text(f"SELECT host_id, patch_id, state FROM host_patches WHERE patch_id IN ({ids})")  # noqa: S608
        ):
            states[host_id][patch_id] = state
    hosts = conn.execute(text("SELECT id, name, kernel_release, reachable FROM hosts ORDER BY name")).all()
    for cve, exp in sorted(cat.by_cve.items()):
        fixed, patched, cve_patch_ids = cat.fixed[cve], cat.patched[cve], cat.patch_ids[cve]
        blocked = cat.blocked_releases(cve)
        for host_id, host, release, reachable in hosts:
            on_host = states.get(host_id, {})
            applied = [p for p in cve_patch_ids if on_host.get(p) in COVERING_STATES]
            here = [p for p in cve_patch_ids if cat.release_of[p] == release]
            st = max((on_host[p] for p in here if p in on_host), default=None)
            kind, reason = _classify(release, reachable, bool(applied), st, fixed, patched, blocked)
            entry: dict[str, Any] = {"host": host, "kernel_release": release}
            if kind == COVERED and applied:
                entry.update(reason="applied", patch=cat.names[applied[0]], sha256=cat.sha_of[applied[0]])
            elif kind == COVERED:
                entry["reason"] = "kernel release fixes it"
            elif kind == EXPOSED:
                entry.update(reason=reason, patch=cat.names[here[-1]], sha256=cat.sha_of[here[-1]])
            else:
                entry["reason"] = "kernel release not known yet" if release is None else f"no patch for {release}"
            exp.hosts[kind].append(entry)
    return [cat.by_cve[c] for c in sorted(cat.by_cve)]


def _classify(
    rel: Any, reach: Any, cov: Any, st: Any, fixed: set[str], patched: set[str], blocked: set[str]
) -> tuple[str, str]:
    """(kind, reason) of one host, by the rules exposure() applies host by host."""
    if (rel is not None and rel in fixed) or cov:
        return COVERED, ""
    if rel is not None and rel in patched:
        if rel in blocked:
            return EXPOSED, "blocked"
        return EXPOSED, "unreachable" if reach is not None and not reach else (st or "pending")
    return UNKNOWN, ""


def exposure_counts(conn: Connection) -> list[Exposure]:
    """Every CVE's exposure as counts only (Exposure.hosts left empty; counts() and exposed_by_reason() hold), for
    `status` and `cves` over 100,000 hosts: one pass over the CVE patches' rows grouped by host (the unique
    (host, patch) index orders them), with per CVE a covered flag and one state column per kernel release it has a
    patch for, then those hosts counted by release, reachability and those columns. Hosts with no row at all come
    from the hosts' own counts."""
    cat = catalogue(conn)
    if not cat.by_cve:
        return []
    cves = sorted(cat.by_cve)
    releases = {cve: sorted(cat.patched[cve]) for cve in cves}

    def ids(pids: list[int]) -> str:
        return ",".join(str(int(p)) for p in pids)  # integers from the database itself

    columns, outer = [], []
    for j, cve in enumerate(cves):
        pids = cat.patch_ids[cve]
        if not pids:
            continue
        columns.append(
            f"max(CASE WHEN patch_id IN ({ids(pids)}) AND state IN ('applied', 'forced') THEN 1 ELSE 0 END) AS c{j}"
        )
        outer.append(f"ph.c{j}")
        for i, release in enumerate(releases[cve]):
            here = [p for p in pids if cat.release_of[p] == release]
            columns.append(f"max(CASE WHEN patch_id IN ({ids(here)}) THEN state END) AS s{j}_{i}")
            outer.append(f"ph.s{j}_{i}")
    rows: list[tuple[Any, Any, dict[str, tuple[Any, Any]], int]] = []
    seen: dict[tuple[Any, Any], int] = defaultdict(int)
    if columns:
        every = ids(sorted({p for cve in cves for p in cat.patch_ids[cve]}))
        query = (
            f"SELECT h.kernel_release, h.reachable, {', '.join(outer)}, count(*) "  # noqa: S608
            f"FROM (SELECT host_id, {', '.join(columns)} FROM host_patches WHERE patch_id IN ({every}) "
            f"GROUP BY host_id) ph JOIN hosts h ON h.id = ph.host_id "
            f"GROUP BY {', '.join(str(i) for i in range(1, 3 + len(outer)))}"
        )
        for rel, reach, *values, n in conn.execute(text(query)):
            per_cve, k = {}, 0
            for cve in cves:
                if not cat.patch_ids[cve]:
                    continue
                cov, states = values[k], values[k + 1 : k + 1 + len(releases[cve])]
                k += 1 + len(releases[cve])
                per_cve[cve] = (cov, states[releases[cve].index(rel)] if rel in releases[cve] else None)
            rows.append((rel, reach, per_cve, n))
            seen[(rel, reach)] += n
    for rel, reach, n in conn.execute(text("SELECT kernel_release, reachable, count(*) FROM hosts GROUP BY 1, 2")):
        rows.append((rel, reach, {}, n - seen[(rel, reach)]))  # hosts with no row for any of these patches
    for cve in cves:
        blocked = cat.blocked_releases(cve)
        counts: dict[str, int] = defaultdict(int)
        reasons: dict[str, int] = defaultdict(int)
        for rel, reach, per_cve, n in rows:
            if n:
                cov, st = per_cve.get(cve, (0, None))
                kind, reason = _classify(rel, reach, cov, st, cat.fixed[cve], cat.patched[cve], blocked)
                counts[kind] += n
                if kind == EXPOSED:
                    reasons[reason] += n
        cat.by_cve[cve].counted = ({k: counts[k] for k in (COVERED, EXPOSED, UNKNOWN)}, dict(sorted(reasons.items())))
    return [cat.by_cve[c] for c in cves]
