"""What every concern of the reactor shares, and nothing that belongs to one of them.

The reactor (daemon/service.py) is split by concern: the poll loop and its effects (service),
submission (daemon/submission.py), collection (daemon/collection.py), interactive jobs
(daemon/interactive.py). They reach each other only through the ``Downstream`` core (the book,
freshness, locks, the journal, the answer cache) and through effects, as data, that the one
supervised executor (``Downstream.execute``) hands to the concern that carries them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from adapters import jobscript
from adapters.errors import DownstreamError
from statemachines.job import Effect

TAIL_DEFAULT = 100
ANSWER_RETENTION = 3600.0  # how long a collected /exitstatus answer is repeated
GC_BATCH = 200  # jobs whose files one removal command takes


class Conflict(DownstreamError):
    """The request is valid but the job is not in a state that allows it (409)."""


class NotFound(DownstreamError):
    """Nothing to show (404)."""


@dataclass(frozen=True)
class StopProxy(Effect):
    """Stop a job's proxy (it finished, or was collected with a proxy left from before a restart)."""

    number: int
    name: str


@dataclass
class PollStatus:
    ok_at: float = -math.inf  # trio time of the last successful poll
    polls: int = 0
    failures: int = 0
    last_error: str = ""
    last_duration: float = 0.0


@dataclass
class Answer:
    """A collected /exitstatus answer, repeated as it was until ``expires`` (daemon clock)."""

    value: list
    expires: float


def hms(seconds: int) -> str:
    """Upstream's elapsed format: ``HH:MM:SS``, hours may exceed 24."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def termination_line(state: str) -> str:
    return f"<< termination state: {state} -- see STDOUT for job errors >>"


def job_identity(args: Mapping[str, object]) -> tuple[str, int, str]:
    """``name``, ``number``, ``jobid`` of a job-scoped request, validated."""
    name = jobscript.check_name(args.get("name"))
    number = jobscript.check_int(args, "number", 0, 10**15)
    jobid = jobscript.check_jobid(args.get("jobid"))
    return name, number, jobid
