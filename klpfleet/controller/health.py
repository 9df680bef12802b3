"""Rollout health checks over the probe's SSH layer: the operator's command (argv, quoted, no host data
in it) on each host; a non-zero exit, a timeout or an unreachable host fails the check for that host."""

from __future__ import annotations

from klpfleet.controller.driving import Driving
from klpfleet.controller.policy import Policy
from klpfleet.db.engine import Database
from klpfleet.inventory.export import fleet_inventory
from klpfleet.probe.ssh import OK, Target, run_all
from klpfleet.runs.types import HostResult
from klpfleet.states import Outcome

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


def check_wave_health(driver: Driving, wave_id: int, policy: Policy) -> None:
    """The policy's check on each host the wave applied to: an event for every result, passed or not; a host that
    fails it counts as a hard failure (health_failed) at the gate."""
    hosts = driver.store.hosts_where_outcome(wave_id, Outcome.APPLIED)
    if not hosts:
        return
    assert policy.health_check is not None
    results = health_checks(driver.db, hosts, policy.health_check, forks=policy.forks)
    with driver.tx() as s:
        r = driver.lease.check(s)
        for name in hosts:
            wh, passed = driver.store.wave_host(s, wave_id, name), results[name].status == "ok"
            if not passed:
                wh.outcome, wh.error_code = Outcome.HEALTH_FAILED, "health_check"
            kind = "host.health_passed" if passed else "host.health_failed"
            driver.event(s, kind, r, host=wh.host, **health_details(results[name]))
    failed = sum(1 for res in results.values() if res.status != "ok")
    driver.progress.note(f"health check: {len(hosts) - failed} passed, {failed} failed")
