"""Exposure in the formats vulnerability scanners read (VEX): per host and CVE, fixed, affected or under
investigation, from the same reading as `klpfleet cve CVE-ID` at the same moment.

Scanners judge a host by its kernel package's version, so a livepatched host reads as vulnerable until it
reboots. A VEX document says otherwise, host by host: klpfleet's covered is VEX's `fixed` (with the patch and
since when it runs, or the kernel release an operator marked as fixing it), exposed is `affected` (with why:
pending, refused, lost at reboot, blocked, ... and what to do), unknown (no patch for the host's kernel
release) is `under_investigation`. Each statement's product is the host, `urn:klpfleet:host:NAME`, and its
subcomponent the kernel package as a purl (reads.kernel_purl), which is what a scanner matches.

OpenVEX (https://openvex.dev/ns/v0.2.0) is written here as plain JSON, checked in the tests against its published
JSON schema; CycloneDX VEX is built and serialised by cyclonedx-python-lib.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, text

from klpfleet.db.types import UTCDateTime, json_object
from klpfleet.errors import KlpfleetError
from klpfleet.reads.envelope import iso
from klpfleet.reads.exposure import COVERED, COVERING_STATES, EXPOSED, UNKNOWN, exposure
from klpfleet.reads.kernel_purl import kernel_purl

OPENVEX_CONTEXT = "https://openvex.dev/ns/v0.2.0"
STATUS = {COVERED: "fixed", EXPOSED: "affected", UNKNOWN: "under_investigation"}
FORMATS = ("openvex", "cyclonedx")
ACTIONS = {
    "pending": "roll the livepatch out to this host (klpfleet rollout create, or klpfleet reconcile)",
    "refused": "a pre-patch callback refused the livepatch: see klpfleet host HOST, then klpfleet reconcile",
    "lost_at_reboot": "the host rebooted and did not load the livepatch again: klpfleet reconcile",
    "unreachable": "the host could not be reached when the livepatch was tried: klpfleet reconcile",
    "blocked": "the livepatch for this kernel is blocked (klpfleet patch block): a fixed build, or a reboot into a "
    "kernel release that fixes the CVE",
}
DEFAULT_ACTION = "the livepatch is not running on this host: see klpfleet host HOST, then klpfleet reconcile"


@dataclass(frozen=True)
class HostVerdict:
    """One host's word on one CVE."""

    cve: str
    host: str
    kernel_release: str | None
    status: str  # fixed | affected | under_investigation
    reason: str  # klpfleet's reason: applied, kernel release fixes it, pending, refused, ..., no patch for R
    patch: str | None = None
    sha256: str | None = None
    since: datetime | None = None  # fixed by a patch: since when klpfleet has seen it running there

    def notes(self, with_since: bool = True) -> str:
        if self.status == "fixed" and self.patch:
            since = f" since {iso(self.since)}" if self.since and with_since else ""
            return f"livepatch {self.patch} (sha256 {self.sha256}) runs on this host's kernel{since}"
        if self.status == "fixed":
            return f"kernel release {self.kernel_release} fixes it"
        if self.status == "affected":
            return f"livepatch {self.patch} (sha256 {self.sha256}) is not running here: {self.reason}"
        return f"klpfleet cannot judge this host: {self.reason}"

    def action(self, named: bool = True) -> str:
        """What to do; `named` False keeps HOST as a placeholder (a CycloneDX entry holds for many hosts)."""
        return ACTIONS.get(self.reason, DEFAULT_ACTION).replace("HOST", self.host if named else "HOST")


def host_verdicts(conn: Connection, hosts: set[str] | None = None) -> list[HostVerdict]:
    """Every (CVE, host) verdict, CVEs then hosts in order; only these hosts when given."""
    found = exposure(conn)
    since = applied_since(conn)
    verdicts = []
    for exp in found:
        for kind in (COVERED, EXPOSED, UNKNOWN):
            for entry in exp.hosts[kind]:
                if hosts is not None and entry["host"] not in hosts:
                    continue
                sha = entry.get("sha256")
                verdicts.append(
                    HostVerdict(
                        cve=exp.cve,
                        host=entry["host"],
                        kernel_release=entry.get("kernel_release"),
                        status=STATUS[kind],
                        reason=entry["reason"],
                        patch=entry.get("patch"),
                        sha256=sha,
                        since=since.get((entry["host"], sha)) if kind == COVERED and sha else None,
                    )
                )
    verdicts.sort(key=lambda v: (v.cve, v.host))
    return verdicts


def applied_since(conn: Connection) -> dict[tuple[str, str], datetime]:
    """(host, sha256) -> when klpfleet recorded the patch running there, for every patch running now: the moment
    its state last went from anything else to applied or forced (read from the audit trail, streamed)."""
    since: dict[tuple[str, str], datetime] = {}
    rows = conn.execution_options(stream_results=True, yield_per=5000).execute(
        text(
            "SELECT h.name, p.sha256, e.at, e.details FROM events e "
            "JOIN hosts h ON h.id = e.host_id JOIN patches p ON p.id = e.patch_id "
            "WHERE e.kind = 'patch.state' ORDER BY e.id"
        ).columns(at=UTCDateTime)
    )
    for host, sha, at, details in rows:
        change = json_object(details)
        before, after = change.get("from"), change.get("to")
        if after in COVERING_STATES and before not in COVERING_STATES:
            since[(host, sha)] = at
        elif after not in COVERING_STATES:
            since.pop((host, sha), None)
    return since


def vex_text(conn: Connection, fmt: str, hosts: set[str] | None, author: str, now: datetime) -> str:
    """The fleet's (or these hosts') VEX document in FORMATS, as the CLI writes it and the dashboard serves it."""
    from klpfleet import __version__

    verdicts = host_verdicts(conn, hosts)
    if fmt == "cyclonedx":
        return cyclonedx_document(verdicts, __version__, now)
    return json.dumps(openvex_document(verdicts, author, f"klpfleet {__version__}", now), indent=2)


def host_iri(host: str) -> str:
    return "urn:klpfleet:host:" + quote(host, safe="")


def openvex_document(verdicts: Iterable[HostVerdict], author: str, tooling: str, now: datetime) -> dict[str, Any]:
    """An OpenVEX 0.2.0 document: one statement per (host, CVE). Its @id is derived from its statements, so the
    same fleet state gives the same id."""
    statements = [_openvex_statement(v, now) for v in verdicts]
    if not statements:
        raise KlpfleetError("nothing to state: no registered patch names a CVE (patch add --cve CVE-ID)")
    digest = hashlib.sha256(json.dumps(statements, sort_keys=True).encode()).hexdigest()
    return {
        "@context": OPENVEX_CONTEXT,
        "@id": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'klpfleet:vex:' + digest)}",
        "author": author,
        "role": "Fleet operator (klpfleet)",
        "timestamp": iso(now),
        "version": 1,
        "tooling": tooling,
        "statements": statements,
    }


def _openvex_statement(v: HostVerdict, now: datetime) -> dict[str, Any]:
    product: dict[str, Any] = {"@id": host_iri(v.host)}
    if v.kernel_release:
        product["subcomponents"] = [{"@id": kernel_purl(v.kernel_release)}]
    statement: dict[str, Any] = {
        "vulnerability": {"@id": f"https://nvd.nist.gov/vuln/detail/{v.cve}", "name": v.cve},
        "timestamp": iso(v.since or now),
        "products": [product],
        "status": v.status,
        "status_notes": v.notes(),
    }
    if v.status == "affected":
        statement["action_statement"] = v.action()
    return statement


def cyclonedx_document(verdicts: Iterable[HostVerdict], tooling_version: str, now: datetime) -> str:
    """A CycloneDX 1.6 VEX document (JSON), built and serialised by cyclonedx-python-lib: the fleet a platform
    component holding each host as a device component, each holding its kernel as an operating-system component;
    one vulnerability entry per CVE and verdict (status, reason, patch) whose analysis is the verdict (resolved,
    exploitable, in_triage) and whose targets are the kernels of the hosts it holds for. Grouped because the
    library serialises entries at a few hundred a second; the per-host times since a patch runs are in the OpenVEX
    document."""
    from cyclonedx.model import Property, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.vulnerability import (
        BomTarget,
        ImpactAnalysisResponse,
        ImpactAnalysisState,
        Vulnerability,
        VulnerabilityAnalysis,
        VulnerabilitySource,
    )
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    state = {
        "fixed": ImpactAnalysisState.RESOLVED,
        "affected": ImpactAnalysisState.EXPLOITABLE,
        "under_investigation": ImpactAnalysisState.IN_TRIAGE,
    }
    verdicts = list(verdicts)
    if not verdicts:
        raise KlpfleetError("nothing to state: no registered patch names a CVE (patch add --cve CVE-ID)")
    bom = Bom()
    bom.metadata.timestamp = now
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="klpfleet", version=tooling_version)
    )
    # The hosts hang under one component for the fleet: the library registers a dependency per top-level component
    # with a linear search, quadratic over a fleet's hosts (52 s at 10,000 of them, 2 s this way).
    hosts: list[Component] = []
    seen: set[str] = set()
    groups: dict[tuple[str, str, str, str | None, str | None], list[HostVerdict]] = {}
    for v in verdicts:
        groups.setdefault((v.cve, v.status, v.reason, v.patch, v.sha256), []).append(v)
        if v.host in seen:
            continue
        seen.add(v.host)
        kernel = Component(
            name="linux",
            type=ComponentType.OPERATING_SYSTEM,
            version=v.kernel_release or "unknown",
            purl=PackageURL.from_string(kernel_purl(v.kernel_release)) if v.kernel_release else None,
            bom_ref=f"{host_iri(v.host)}/kernel",
        )
        hosts.append(Component(name=v.host, type=ComponentType.DEVICE, bom_ref=host_iri(v.host), components=[kernel]))
    bom.components.add(
        Component(name="fleet", type=ComponentType.PLATFORM, bom_ref="urn:klpfleet:fleet", components=hosts)
    )
    for (cve, status, reason, patch, sha), members in groups.items():
        first = members[0]
        detail = first.notes(with_since=False) + (f"; {first.action(named=False)}" if status == "affected" else "")
        bom.vulnerabilities.add(
            Vulnerability(
                bom_ref=f"{cve}/{status}/{reason}/{sha or '-'}",
                id=cve,
                source=VulnerabilitySource(name="NVD", url=XsUri(f"https://nvd.nist.gov/vuln/detail/{cve}")),
                analysis=VulnerabilityAnalysis(
                    state=state[status],
                    detail=detail,
                    responses=[ImpactAnalysisResponse.UPDATE] if status == "affected" else None,
                ),
                affects=[BomTarget(ref=f"{host_iri(v.host)}/kernel") for v in members],
                properties=[Property(name="klpfleet:reason", value=reason)]
                + ([Property(name="klpfleet:patch", value=patch)] if patch else []),
            )
        )
    return JsonV1Dot6(bom).output_as_string(indent=2)
