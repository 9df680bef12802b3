"""Probing hosts: one constant read-only program per host over SSH (or locally), recorded with drift."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select

from klpfleet.db import events
from klpfleet.db.engine import Database
from klpfleet.db.models import Host
from klpfleet.inventory.export import fleet_inventory
from klpfleet.probe.findings import HostProbe, write_findings
from klpfleet.probe.payload import REMOTE_COMMAND, payload
from klpfleet.probe.ssh import BROKEN_REMOTE, OK, RunResult, Target, run_all


def default_known_hosts() -> Path:
    return Path(os.environ.get("KLPFLEET_KNOWN_HOSTS") or Path.home() / ".ssh" / "known_hosts")


def probe(
    db: Database,
    names: list[str],
    *,
    forks: int = 20,
    connect_timeout: float = 10.0,
    command_timeout: float = 30.0,
    accept_new_host_keys: bool = False,
    known_hosts: Path | None = None,
) -> list[HostProbe]:
    targets = [Target.from_record(r) for r in fleet_inventory(db, names)]

    def stdin_for(t: Target) -> str:
        return payload(str(t.vars.get("klp_backend") or "sysfs"), t.vars.get("klp_sim_root"))

    runs = run_all(
        targets,
        REMOTE_COMMAND,
        stdin_for,
        forks=forks,
        known_hosts=known_hosts or default_known_hosts(),
        accept_new=accept_new_host_keys,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
    )
    actor = f"probe:{events.default_actor()}"
    out = []
    with db.session.begin() as s:
        hosts = {h.name: h for h in s.scalars(select(Host).where(Host.name.in_(names)))}
        for run in runs:
            facts = _facts(run)
            out.append(write_findings(s, hosts[run.host], run, facts, actor))
    return out


def _facts(run: RunResult) -> dict[str, Any] | None:
    if run.status != OK:
        return None
    if run.truncated:  # an answer cut to its tail is not an answer
        run.status, run.error = BROKEN_REMOTE, "the host's answer was larger than any probe answer (not read)"
        return None
    try:
        doc = json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        doc = None
    if not isinstance(doc, dict) or not doc.get("ok"):
        run.status = BROKEN_REMOTE
        detail = doc.get("error") if isinstance(doc, dict) else (run.stderr.strip().splitlines() or ["no output"])[-1]
        run.error = f"exit {run.exit_code}: {detail}"
        return None
    facts: dict[str, Any] = doc["facts"]
    return facts
