"""Hosts a killed controller (or a failed execution node) left `running`: read again before anything is decided."""

from __future__ import annotations

from klpfleet.controller.driving import Driving
from klpfleet.controller.playbook import run_playbook
from klpfleet.controller.policy import Policy
from klpfleet.db.models import utcnow
from klpfleet.states import Outcome, PatchState, WaveHostStatus
from klpfleet.wording import counted


def recover_in_flight(driver: Driving, wave_id: int, policy: Policy) -> None:
    """Each host in flight is `done` (applied) when gather finds the patch applied, else `pending` (run again:
    apply is idempotent)."""
    hosts = driver.store.hosts_with(wave_id, WaveHostStatus.RUNNING)
    if not hosts:
        return
    driver.progress.note(f"re-reading {counted(len(hosts), 'host')} in flight when the controller stopped")
    run = driver.ran(run_playbook(driver.request("gather.yml", hosts, {}, f"w{wave_id}-recover", policy.forks)))
    with driver.tx() as s:
        r = driver.lease.check(s)
        for name in hosts:
            wh = driver.store.wave_host(s, wave_id, name)
            state = driver.store.patch_state(s, wh.host_id, r.patch_id)
            wh.error_code = None  # what the host is now replaces what a failed node said about it
            if run.results[name].status == "ok" and state in (PatchState.APPLIED, PatchState.FORCED):
                wh.status, wh.outcome, wh.finished_at = WaveHostStatus.DONE, Outcome.APPLIED, utcnow()
                verdict = "applied"
            else:
                wh.status, wh.outcome = WaveHostStatus.PENDING, None
                verdict = "pending"
            driver.event(s, "host.recovered", r, host=wh.host, state=state, verdict=verdict)
