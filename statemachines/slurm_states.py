"""What Slurm's job state codes mean to JARVICE.

Slurm has two dozen job states; upstream knows three phases (queued, running,
finished) and four exit codes. This table is the single place where one is
translated into the other, so the poller, the exit-status answer and the
simulated Slurm can never disagree about, say, whether ``CG`` is still running.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    PENDING = "pending"
    HELD = "held"
    RUNNING = "running"
    FINISHED = "finished"
    UNKNOWN = "unknown"  # a code this table does not know: no conclusion is drawn from it


# Compact code (squeue %t) -> long name (squeue %T / sacct State).
LONG_NAMES: dict[str, str] = {
    "BF": "BOOT_FAIL",
    "CA": "CANCELLED",
    "CD": "COMPLETED",
    "CF": "CONFIGURING",
    "CG": "COMPLETING",
    "DL": "DEADLINE",
    "F": "FAILED",
    "NF": "NODE_FAIL",
    "OOM": "OUT_OF_MEMORY",
    "PD": "PENDING",
    "PR": "PREEMPTED",
    "R": "RUNNING",
    "RD": "RESV_DEL_HOLD",
    "RF": "REQUEUE_FED",
    "RH": "REQUEUE_HOLD",
    "RQ": "REQUEUED",
    "RS": "RESIZING",
    "RV": "REVOKED",
    "S": "SUSPENDED",
    "SE": "SPECIAL_EXIT",
    "SI": "SIGNALING",
    "SO": "STAGE_OUT",
    "ST": "STOPPED",
    "TO": "TIMEOUT",
}
CODES: dict[str, str] = {long: code for code, long in LONG_NAMES.items()}

# The contract's lists (upstream-api.md, /running and /queued). RQ is a job on
# its way back to the queue, so it is queued too.
RUNNING_CODES = frozenset({"R", "RH", "RS", "SI", "ST", "S", "CG", "SO"})
PENDING_CODES = frozenset({"CF", "PD", "RD", "RF", "RQ"})

FINISHED_CODES = frozenset({"BF", "CA", "CD", "DL", "F", "NF", "OOM", "PR", "RV", "TO"})
# SPECIAL_EXIT: requeued and held by the site's epilog; it can be released.
HELD_CODES = frozenset({"SE"})

# Pending reasons that mean "waits for a human", not "waits for resources".
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})

_EXIT_CODES: dict[str, int] = {
    "CD": 0,
    "F": 1,
    "NF": 1,
    "OOM": 1,
    "CA": -15,
    "DL": -15,
    "PR": -15,
}
UNKNOWN_EXIT = -9


def to_code(state: str) -> str:
    """Accept a compact code or a long name (``CANCELLED by 1000`` included)."""
    word = state.strip().split(" ", 1)[0].upper().rstrip("+")
    return CODES.get(word, word)


def long_name(code: str) -> str:
    return LONG_NAMES.get(code, code or "UNKNOWN")


def phase_of(code: str, reason: str = "") -> Phase:
    if code in RUNNING_CODES:
        return Phase.RUNNING
    if code in PENDING_CODES:
        return Phase.HELD if reason in HELD_REASONS else Phase.PENDING
    if code in HELD_CODES:
        return Phase.HELD
    if code in FINISHED_CODES:
        return Phase.FINISHED
    return Phase.UNKNOWN


def exit_code_of(code: str) -> int:
    """JARVICE's exit code for a finished job's Slurm state."""
    return _EXIT_CODES.get(code, UNKNOWN_EXIT)


def code_from_rc_file(rc: int) -> str:
    """The state a job's own exit-code file implies, when Slurm has forgotten the job."""
    return "CD" if rc == 0 else "F"
