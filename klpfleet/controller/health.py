"""Rollout health checks over the probe's SSH layer: the operator's command (argv, quoted, no host data
in it) on each host; a non-zero exit, a timeout or an unreachable host fails the check for that host."""

from __future__ import annotations

from klpfleet.db.engine import Database
from klpfleet.inventory.export import fleet_inventory
from klpfleet.probe.ssh import OK, Target, run_all
from klpfleet.runs.types import HostResult

# A health check's verdict is its exit status; of its output only the tail is kept for the operator.
HEALTH_OUTPUT_KEPT = 64 * 1024


def health_checks(
    db: Database, names: list[str], argv: list[str], *, forks: int, timeout: float = 60.0, connect_timeout: float = 10.0
) -> dict[str, HostResult]:
    from klpfleet.probe.run import default_known_hosts

    targets = [Target.from_record(r) for r in fleet_inventory(db, names)]
    runs = run_all(
        targets,
        argv,
        lambda t: "",
        forks=forks,
        known_hosts=default_known_hosts(),
        accept_new=False,
        connect_timeout=connect_timeout,
        command_timeout=timeout,
        max_output=HEALTH_OUTPUT_KEPT,
    )
    out = {}
    for run in runs:
        detail = {"rc": run.exit_code, "stdout": run.stdout[-2000:], "stderr": run.stderr[-2000:], "msg": run.error}
        if run.status != OK:
            out[run.host] = HostResult(run.host, run.status, detail)
        else:
            out[run.host] = HostResult(run.host, "ok" if run.exit_code == 0 else "failed", detail)
    return out


def health_details(result: HostResult) -> dict[str, object]:
    """What an event keeps of one host's check: its exit status and the tails of its output."""
    res = result.result
    return {
        "status": result.status,
        "rc": res.get("rc"),
        "stdout_tail": str(res.get("stdout") or "")[-500:],
        "stderr_tail": str(res.get("stderr") or res.get("msg") or "")[-500:],
    }
