"""The vocabulary of host patch states, shared by the database, the CLI and the controller.

Each state is what klpfleet knows about one patch on one host. The README documents them; keep the
two in step.
"""

from enum import StrEnum


class PatchState(StrEnum):
    PENDING = "pending"  # planned for this host, nothing done yet
    LOADING = "loading"  # insmod issued, result not yet known
    TRANSITIONING = "transitioning"  # loaded and enabled, the kernel's transition has not completed
    APPLIED = "applied"  # enabled, transition complete
    REFUSED = "refused"  # a pre-patch callback refused; the kernel cleaned up
    STALLED = "stalled"  # transition did not complete in time (tasks sleeping in patched code)
    FAILED = "failed"  # any other failure (see error_code/errno)
    UNLOADING = "unloading"  # disable issued, unpatching transition or rmmod pending
    ABSENT = "absent"  # not loaded on the host
    UNREACHABLE = "unreachable"  # the host could not be reached when last tried
    FORCED = "forced"  # applied with force: the module can never be removed before reboot
    DRIFT = "drift"  # the database's belief and the host's report disagree


# How `klpfleet status` rates each state: the worst one found sets the exit code.
CRITICAL_STATES = frozenset({PatchState.STALLED, PatchState.FAILED})
DEGRADED_STATES = frozenset({PatchState.REFUSED, PatchState.UNREACHABLE, PatchState.FORCED, PatchState.DRIFT})
ATTENTION_STATES = CRITICAL_STATES | DEGRADED_STATES

ATTENTION_REASONS = {
    PatchState.STALLED: "transition stalled: tasks sleep in patched code",
    PatchState.FAILED: "last operation failed",
    PatchState.REFUSED: "a pre-patch callback refused the patch",
    PatchState.UNREACHABLE: "host unreachable",
    PatchState.FORCED: "forced transition: reboot needed to remove the patch",
    PatchState.DRIFT: "host state differs from the database",
}


class RolloutStatus(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


ACTIVE_ROLLOUT_STATUSES = frozenset({RolloutStatus.PLANNED, RolloutStatus.RUNNING, RolloutStatus.PAUSED})
