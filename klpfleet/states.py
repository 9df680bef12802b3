"""The vocabulary of host patch states, shared by the database, the CLI and the controller.

Each state is what klpfleet knows about one patch on one host. The README documents them; keep the
two in step.
"""

from enum import StrEnum


class PatchState(StrEnum):
    TRANSITIONING = "transitioning"  # loaded and enabled, the kernel's transition has not completed
    APPLIED = "applied"  # enabled, transition complete
    REFUSED = "refused"  # a pre-patch callback refused; the kernel cleaned up
    STALLED = "stalled"  # transition did not complete in time (tasks sleeping in patched code)
    FAILED = "failed"  # any other failure (see error_code/errno)
    UNLOADING = "unloading"  # disable issued, unpatching transition or rmmod pending
    ABSENT = "absent"  # not loaded on the host
    UNREACHABLE = "unreachable"  # the host could not be reached when last tried
    FORCED = "forced"  # enabled, and a forced transition pinned its module until reboot
    PINNED = "pinned"  # disabled (its code no longer runs), but a forced transition pinned its module until reboot
    DRIFT = "drift"  # the database's belief and the host's report disagree
    LOST_AT_REBOOT = "lost_at_reboot"  # applied before the host rebooted, not loaded after it
    SUPERSEDED = "superseded"  # built for a kernel release the host no longer runs (it booted another one)


def stored_state(value: str) -> PatchState:
    """A state read back from the database. A value klpfleet never writes (a hand-edited or forged row) is read as
    drift: what the database says is not believed, and the next reading of the host records the truth."""
    try:
        return PatchState(value)
    except ValueError:
        return PatchState.DRIFT


# How `klpfleet status` rates each state: the worst one found sets the exit code.
CRITICAL_STATES = frozenset({PatchState.STALLED, PatchState.FAILED})
DEGRADED_STATES = frozenset(
    {
        PatchState.REFUSED,
        PatchState.UNREACHABLE,
        PatchState.FORCED,
        PatchState.PINNED,
        PatchState.DRIFT,
        PatchState.LOST_AT_REBOOT,
    }
)
ATTENTION_STATES = CRITICAL_STATES | DEGRADED_STATES

ATTENTION_REASONS = {
    PatchState.STALLED: "transition stalled: tasks sleep in patched code",
    PatchState.FAILED: "last operation failed",
    PatchState.REFUSED: "a pre-patch callback refused the patch",
    PatchState.UNREACHABLE: "host unreachable",
    PatchState.FORCED: "forced transition pinned the patch: it can be disabled, its module unloads only at reboot",
    PatchState.PINNED: "disabled, but a forced transition keeps its module loaded until reboot",
    PatchState.DRIFT: "host state differs from the database",
    PatchState.LOST_AT_REBOOT: "the host rebooted and the patch was not loaded again (klpfleet reconcile)",
}


class RolloutStatus(StrEnum):
    PLANNED = "planned"  # created, no driver has started it
    RUNNING = "running"  # a driver works through its waves
    PAUSED = "paused"  # stopped by an operator or a gate; `resume` or `promote` continues it
    ABORTING = "aborting"  # an operator asked to abort: the driver rolls back what it applied
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"  # a gate's --on-failure rollback
    FAILED = "failed"


# A rollout in these statuses holds its hosts: no other rollout may plan them.
ACTIVE_ROLLOUT_STATUSES = frozenset(
    {RolloutStatus.PLANNED, RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.ABORTING}
)
TERMINAL_ROLLOUT_STATUSES = frozenset(
    {RolloutStatus.COMPLETED, RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK, RolloutStatus.FAILED}
)


class WaveStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    BLOCKED = "blocked"  # its gate paused the rollout; an override (promote) lets it complete
    COMPLETED = "completed"


class WaveHostStatus(StrEnum):
    PENDING = "pending"  # not touched yet (or to be run again)
    RUNNING = "running"  # in flight: marked before the playbook that touches it starts
    DONE = "done"  # finished with an outcome
    ROLLED_BACK = "rolled_back"  # the patch was removed again by this rollout's rollback


class Outcome(StrEnum):
    """What applying the patch did on one host of a wave."""

    APPLIED = "applied"
    REFUSED = "refused"
    STALLED = "stalled"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    HEALTH_FAILED = "health_failed"


# The patch module names a failure's outcome itself (refused, stalled or failed, from its klp_error); these
# are the host patch states those outcomes leave. Everything else that failed is FAILED.
FAILURE_OUTCOME_STATES: dict[str, PatchState] = {
    Outcome.REFUSED: PatchState.REFUSED,
    Outcome.STALLED: PatchState.STALLED,
}


def counted_as(status: str, outcome: str | None) -> str:
    """How a wave host counts, for the gate, `rollout status` and the metrics alike: its outcome once done; a host
    still in flight counts by its outcome when it has one (left in flight by an execution node that failed:
    unreachable until it is read again); otherwise its status (pending, running, rolled_back)."""
    if status in (WaveHostStatus.DONE, WaveHostStatus.RUNNING) and outcome:
        return outcome
    return status


# Outcomes that count against --max-failed; refusals have a budget of their own.
HARD_FAILURES = frozenset({Outcome.FAILED, Outcome.STALLED, Outcome.UNREACHABLE, Outcome.HEALTH_FAILED})


class Request(StrEnum):
    """What an operator can ask of a rollout."""

    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"


# The one table of operator requests: (request, status now) -> status after. Every CLI command, the demo and
# the dashboard go through it (klpfleet.controller.control.request); anything not here is refused.
ROLLOUT_TRANSITIONS: dict[tuple[Request, RolloutStatus], RolloutStatus] = {
    (Request.PAUSE, RolloutStatus.PLANNED): RolloutStatus.PAUSED,
    (Request.PAUSE, RolloutStatus.RUNNING): RolloutStatus.PAUSED,
    (Request.RESUME, RolloutStatus.PAUSED): RolloutStatus.RUNNING,
    (Request.PROMOTE, RolloutStatus.PLANNED): RolloutStatus.RUNNING,
    (Request.PROMOTE, RolloutStatus.RUNNING): RolloutStatus.RUNNING,
    (Request.PROMOTE, RolloutStatus.PAUSED): RolloutStatus.RUNNING,
    (Request.ABORT, RolloutStatus.PLANNED): RolloutStatus.ABORTED,  # nothing ran: nothing to roll back
    (Request.ABORT, RolloutStatus.RUNNING): RolloutStatus.ABORTING,
    (Request.ABORT, RolloutStatus.PAUSED): RolloutStatus.ABORTING,
}


def allowed_from(request: Request) -> list[RolloutStatus]:
    return [status for (req, status) in ROLLOUT_TRANSITIONS if req == request]


def wave_number(status: str, current_wave: int | None) -> int | None:
    """The wave a rollout is at as people number waves (1 is the first, as in events); None before it started."""
    if status == RolloutStatus.PLANNED or current_wave is None:
        return None
    return current_wave + 1
