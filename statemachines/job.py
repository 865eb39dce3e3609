"""The job state machine: one ``transitions`` model per JARVICE job.

States are ordered (PSI/J's lesson): a job never goes back to an earlier rank,
and the final states (completed, failed, cancelled) are final. Inputs are events
(a poll observation, a submit result, an upstream request); outputs are the new
state plus effects, as data, for the daemon to carry out. An event that would
need an illegal transition is rejected and reported, never applied.

All jobs share one ``Machine``, and jobs are not registered with it as models:
events fire through its Event objects, so a job carries no bound trigger methods
(1.4 KiB per job at 10,000 jobs, bench/footprint.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from transitions import Machine, MachineError

from statemachines.proxy import ProxyLife
from statemachines.slurm_states import Phase, code_from_rc_file, exit_code_of, long_name, phase_of

log = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"  # accepted from upstream, sbatch not answered yet
    SUBMITTED = "submitted"  # in Slurm, pending
    HELD = "held"  # in Slurm, pending on a hold
    RUNNING = "running"
    PROXYING = "proxying"  # running, and its interactive proxy is serving
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


_RANK = {
    JobState.QUEUED: 0,
    JobState.SUBMITTED: 1,
    JobState.HELD: 1,
    JobState.RUNNING: 2,
    JobState.PROXYING: 2,  # running, with its proxy serving: the proxy may drop and come back
    JobState.COMPLETED: 4,
    JobState.FAILED: 4,
    JobState.CANCELLED: 4,
}
FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = [s for s in JobState if s not in FINAL_STATES]
_PENDING = [JobState.SUBMITTED, JobState.HELD]
_RUNNING = [JobState.RUNNING, JobState.PROXYING]

# trigger, sources, destination. Nothing leaves a final state; nothing goes back
# in rank except held <-> submitted, which are the same rank (hold and release).
TRANSITIONS: list[tuple[str, list[JobState], JobState]] = [
    ("accept", [JobState.QUEUED], JobState.SUBMITTED),
    ("accept_held", [JobState.QUEUED], JobState.HELD),
    ("reject", [JobState.QUEUED], JobState.FAILED),
    ("hold", [JobState.SUBMITTED], JobState.HELD),
    ("release", [JobState.HELD], JobState.SUBMITTED),
    ("start", [JobState.QUEUED, *_PENDING], JobState.RUNNING),
    ("proxy_up", [JobState.RUNNING], JobState.PROXYING),
    ("proxy_down", [JobState.PROXYING], JobState.RUNNING),
    ("complete", ACTIVE_STATES, JobState.COMPLETED),
    ("fail", ACTIVE_STATES, JobState.FAILED),
    ("cancel", ACTIVE_STATES, JobState.CANCELLED),
]

# The trigger that moves a job to a state, whatever its source.
_TRIGGER_TO = {
    JobState.SUBMITTED: "release",
    JobState.HELD: "hold",
    JobState.RUNNING: "start",
    JobState.COMPLETED: "complete",
    JobState.FAILED: "fail",
    JobState.CANCELLED: "cancel",
}


# ------------------------------------------------------------------ effects
@dataclass(frozen=True)
class Effect:
    jobid: str


@dataclass(frozen=True)
class Resolve(Effect):
    """Slurm no longer lists the job: ask its exit-code file and accounting."""


@dataclass(frozen=True)
class Finished(Effect):
    """The job reached a final state (log it, stop its proxy)."""

    state: JobState


# ------------------------------------------------------------------ the model
@dataclass(eq=False)
class Job:
    """What the daemon knows of one job; ``state`` is moved by JobMachine only."""

    name: str
    number: int
    jobid: str = ""
    interactive: bool = False
    fscript: str = field(default="", repr=False)
    code: str = ""  # last Slurm state code seen
    reason: str = ""
    nodes: tuple[str, ...] = ()
    elapsed: int = 0  # seconds, as of observed_at
    observed_at: float = 0.0
    submitted_at: float = 0.0
    exit_code: int | None = None
    termination: str = ""  # Slurm's long state name at the end
    rejected: str = ""  # why a submit failed
    last_error: str = ""  # the latest thing that went wrong for this job (admins read it)
    limbo_since: float | None = None  # sbatch's outcome unknown since then (the link dropped); JobBook's to change
    adopted: bool = False  # rebuilt from Slurm (after a restart), not submitted by this process
    user: str = ""  # the Slurm user it runs as when not the service user (slurmrestd, per-user identity)
    port_index: int | None = None  # interactive: its service port is base + this (also in the Slurm comment)
    proxy: ProxyLife | None = None  # interactive: its proxy's life, moved by ProxyMachine only
    state: JobState = JobState.QUEUED
    history: list[tuple[float, str]] = field(default_factory=list, repr=False)  # (wall time, state)
    outbox: list[Effect] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.interactive and self.proxy is None:  # however the job was made: submitted, adopted, restored
            self.proxy = ProxyLife()

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES  # a StrEnum: the state's name hashes as the member does

    def elapsed_at(self, now: float) -> int:
        """Running jobs age between polls; answer without asking Slurm again."""
        if self.state in _RUNNING and self.observed_at:
            return self.elapsed + max(0, int(now - self.observed_at))
        return self.elapsed

    # machine callbacks (send_event=True: each gets the EventData)
    def on_enter_final(self, event: object) -> None:
        self.outbox.append(Finished(self.jobid, JobState(self.state)))


class Observed(Protocol):
    """What the machine reads of one poll's view of a job: an Observation, or a parsed squeue line as it is."""

    @property
    def code(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def nodes(self) -> tuple[str, ...]: ...
    @property
    def elapsed(self) -> int: ...
    @property
    def user(self) -> str: ...


@dataclass(frozen=True)
class Observation:
    """One poll's view of one job."""

    code: str
    reason: str = ""
    nodes: tuple[str, ...] = ()
    elapsed: int = 0
    user: str = ""


@dataclass(frozen=True)
class Outcome:
    """The end of a job Slurm no longer lists (from its rc file or accounting)."""

    code: str  # Slurm state code, or "" when nothing is known
    elapsed: int = 0
    nodes: tuple[str, ...] = ()
    rc_file: int | None = None


def build_machine() -> Machine:
    machine = Machine(
        model=None,
        states=[s for s in JobState],
        transitions=[{"trigger": t, "source": src, "dest": dst} for t, src, dst in TRANSITIONS],
        initial=JobState.QUEUED,
        send_event=True,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        model_override=False,
    )
    for state in FINAL_STATES:
        machine.get_state(state).add_callback("enter", "on_enter_final")
    return machine


def target_for(observation: Observed) -> JobState | None:
    """The state an observation points to; None when the code says nothing certain."""
    phase = phase_of(observation.code, observation.reason)
    if phase is Phase.UNKNOWN:
        return None
    if phase is Phase.PENDING:
        return JobState.SUBMITTED
    if phase is Phase.HELD:
        return JobState.HELD
    if phase is Phase.RUNNING:
        return JobState.RUNNING
    return final_state_for(observation.code)


def final_state_for(code: str) -> JobState:
    rc = exit_code_of(code)
    if rc == 0:
        return JobState.COMPLETED
    if rc == -15:
        return JobState.CANCELLED
    return JobState.FAILED


class JobMachine:
    """Applies events to jobs through one shared transitions Machine.

    ``clock`` stamps the state history (wall time, for admins); it is passed in
    so this module stays free of I/O and tests can fix it.
    """

    def __init__(self, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.machine = build_machine()
        self.clock = clock
        self.rejected = 0  # illegal transitions refused (tests assert it stays 0)

    def add(self, job: Job) -> None:
        # Jobs are not registered with the machine (``add_model``): that binds some twenty
        # methods to every job, about 9 KiB each (bench/footprint.py at 10,000 jobs). Events
        # are fired through the machine's own Event objects instead, with the same checks.
        job.history.append((self.clock(), JobState(job.state).value))

    def fire(self, job: Job, trigger: str) -> list[Effect]:
        event = self.machine.events.get(trigger)
        try:
            if event is None:
                raise AttributeError(f"no trigger {trigger!r}")
            event.trigger(job)
        except (MachineError, AttributeError) as exc:
            self.rejected += 1
            # Refused and reported, never applied; the caller (the poller) carries on.
            log.error("job %s (%s): illegal transition %r from %s refused: %s",
                      job.jobid or "-", job.name, trigger, JobState(job.state).value, exc)
            return []
        job.history.append((self.clock(), JobState(job.state).value))
        return self.drain(job)

    @staticmethod
    def drain(job: Job) -> list[Effect]:
        effects, job.outbox = job.outbox, []
        return effects

    # ------------------------------------------------------------ events
    def submitted(self, job: Job, jobid: str, held: bool, now: float) -> list[Effect]:
        job.jobid = jobid
        job.submitted_at = now
        job.code = "PD"
        job.reason = "JobHeldUser" if held else ""
        return self.fire(job, "accept_held" if held else "accept")

    def submit_failed(self, job: Job, why: str) -> list[Effect]:
        job.rejected = why
        job.exit_code = exit_code_of("")
        job.termination = "NOT_SUBMITTED"
        return self.fire(job, "reject")

    @staticmethod
    def record(job: Job, obs: Observed, now: float) -> JobState | None:
        """Take what a poll saw into the job's data; the state it points to (None: unknown code)."""
        target = target_for(obs)
        job.code, job.reason, job.observed_at = obs.code, obs.reason, now
        if obs.nodes:
            job.nodes = obs.nodes
        if obs.user:
            job.user = obs.user
        job.elapsed = max(job.elapsed, obs.elapsed)
        if target is not None and target.final:
            job.exit_code = exit_code_of(obs.code)
            job.termination = long_name(obs.code)
        return target

    def observe(self, job: Job, obs: Observed, now: float) -> list[Effect]:
        """A poll saw the job. Stale or backwards observations update nothing but data."""
        current = JobState(job.state)
        if current.final:
            return []
        target = self.record(job, obs, now)
        if target is None:
            log.warning("job %s: unknown Slurm state %r; kept %s", job.jobid, obs.code, current.value)
            return []
        if target == current or (target is JobState.RUNNING and current is JobState.PROXYING):
            return []
        if target.rank < current.rank:
            # e.g. Slurm requeued a running job: upstream already saw it run;
            # keep reporting it running rather than move backwards.
            log.info("job %s: Slurm reports %s while %s; kept %s", job.jobid, obs.code, current.value, current.value)
            return []
        return self.fire(job, _TRIGGER_TO[target])

    def absent(self, job: Job) -> list[Effect]:
        """A successful poll no longer lists the job (purged): ask what became of it."""
        if JobState(job.state).final or not job.jobid:
            return []
        return [Resolve(job.jobid)]

    def resolved(self, job: Job, outcome: Outcome) -> list[Effect]:
        """What the rc file or accounting say of a job Slurm has forgotten."""
        if JobState(job.state).final:
            return []
        code = outcome.code
        if not code and outcome.rc_file is not None:
            code = code_from_rc_file(outcome.rc_file)
        if outcome.elapsed:
            job.elapsed = max(job.elapsed, outcome.elapsed)
        if outcome.nodes:
            job.nodes = outcome.nodes
        if code and phase_of(code) is not Phase.FINISHED:
            return []  # accounting says it is not over (or says nothing known); the next poll decides
        job.code = code
        job.exit_code = exit_code_of(code)
        job.termination = long_name(code) if code else "UNKNOWN"
        return self.fire(job, _TRIGGER_TO[final_state_for(code)])
