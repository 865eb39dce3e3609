"""The book of tracked jobs: lookups, the poll's effect on every job, upstream's lists.

It alone moves a job into and out of limbo (``limbo_since``): a submit in doubt.

Upstream's ``/queued`` and ``/running`` are answered from here, never by asking
Slurm, so their cost does not depend on the cluster. The lists are cached and
rebuilt only after something changed (``version``), which keeps a 10,000-job
book's answer at a dictionary lookup between polls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from statemachines.job import Effect, Job, JobMachine, JobState, Observed, Outcome, target_for

_QUEUED = frozenset({JobState.SUBMITTED, JobState.HELD})
_RUNNING = frozenset({JobState.RUNNING, JobState.PROXYING})


class DuplicateJob(Exception):
    """A job of this name is already tracked."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.name)
        self.job = job


class JobBook:
    def __init__(self, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.machine = JobMachine(clock)
        self._by_id: dict[str, Job] = {}
        self._by_name: dict[str, Job] = {}
        self.version = 0
        self._lists: tuple[int, list[list[str]], list[list[str]]] = (-1, [], [])

    # ------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._by_name.values()))

    def get(self, jobid: str) -> Job | None:
        return self._by_id.get(jobid)

    def unknown(self, jobids: Iterable[str]) -> list[str]:
        """The ids the book does not track, in the order given (one pass, for a 10,000-job poll)."""
        by_id = self._by_id
        return [jobid for jobid in jobids if jobid not in by_id]

    def named(self, name: str) -> Job | None:
        return self._by_name.get(name)

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in JobState}
        for job in self._by_name.values():
            counts[JobState(job.state).value] += 1
        return counts

    # ------------------------------------------------------------ changes
    def _changed(self, effects: list[Effect]) -> list[Effect]:
        self.version += 1
        return effects

    def new(self, name: str, number: int, *, interactive: bool = False, fscript: str = "") -> Job:
        existing = self._by_name.get(name)
        if existing is not None:
            raise DuplicateJob(existing)
        job = Job(name=name, number=number, interactive=interactive, fscript=fscript)
        self.machine.add(job)
        self._by_name[name] = job
        self.version += 1
        return job

    def submitted(self, job: Job, jobid: str, *, held: bool, now: float) -> list[Effect]:
        self._by_id[jobid] = job
        return self._changed(self.machine.submitted(job, jobid, held, now))

    def submit_failed(self, job: Job, why: str) -> None:
        """Nothing reached Slurm: the job is forgotten, so a retry may submit it anew."""
        self.machine.submit_failed(job, why)
        self.forget(job)

    def in_limbo(self, job: Job, since: float, why: str) -> None:
        """sbatch's answer was lost and Slurm could not be asked: keep the name until a poll settles it."""
        job.limbo_since = since
        job.last_error = why
        self.version += 1

    def proven_absent(self, job: Job) -> None:
        """A job in limbo that a look-up begun ``command_timeout`` after its sbatch did not find: that
        sbatch never took effect, and the job is submitted anew under its name (still reserved)."""
        job.limbo_since = None
        self.version += 1

    def limbo(self) -> list[Job]:
        return [job for job in self._by_name.values() if job.limbo_since is not None]

    def adopt(self, name: str, number: int, jobid: str, obs: Observed, *, now: float, since: float,
              interactive: bool = False) -> Job | None:
        """A job Slurm runs under our name that this book does not track (a restart, another replica).

        Its state is taken as Slurm reports it, without transitions: nothing
        happened, the book just learnt of it. ``since`` must not be later than
        the poll that showed it, so that the next poll can find it gone.
        """
        target = target_for(obs)
        if target is None:
            return None  # an unknown code: wait for a clearer poll
        job = Job(name=name, number=number, jobid=jobid, interactive=interactive, adopted=True, state=target,
                  submitted_at=since, user=obs.user)
        self.machine.record(job, obs, now)  # a final one ended while nobody watched: upstream still collects it
        self.add(job)
        return job

    def add(self, job: Job) -> None:
        """Track a job as it is (adopted from Slurm, or restored from the journal)."""
        self.machine.add(job)
        self._by_name[job.name] = job
        if job.jobid:
            self._by_id[job.jobid] = job
        self.version += 1

    def settle(self, job: Job, jobid: str, obs: Observed | None, *, now: float, since: float) -> list[Effect]:
        """A job in limbo turned up in Slurm: it was submitted after all."""
        job.limbo_since = None
        self._by_id[jobid] = job
        effects = self.machine.submitted(job, jobid, held=bool(obs and obs.reason == "JobHeldUser"), now=since)
        if obs is not None:
            effects += self.machine.observe(job, obs, now)
        return self._changed(effects)

    def forget(self, job: Job) -> None:
        self._by_name.pop(job.name, None)
        if job.jobid:
            self._by_id.pop(job.jobid, None)
        self.version += 1

    def apply_poll(self, seen: Mapping[str, Observed], started_at: float, now: float,
                   complete: bool = True) -> list[Effect]:
        """One successful squeue: update every active job; flag the ones Slurm forgot.

        A job submitted after the squeue began may be missing from its answer
        without being gone, so only older jobs can be declared absent; and a
        partial answer (``complete`` False: a line could not be read) proves
        nobody absent.
        """
        effects: list[Effect] = []
        for job in self._by_id.values():
            if job.final:
                continue
            obs = seen.get(job.jobid)
            if obs is not None and obs.code == job.code and obs.reason == job.reason and obs.nodes == job.nodes:
                # the common case at 10,000 jobs: nothing but the clock moved
                job.elapsed, job.observed_at = max(job.elapsed, obs.elapsed), now
                continue
            if obs is not None:
                old = job.state
                effects += self.machine.observe(job, obs, now)
                if job.state != old:
                    self.version += 1
            elif complete and job.submitted_at < started_at:
                effects += self.machine.absent(job)
        return effects

    def resolved(self, job: Job, outcome: Outcome) -> list[Effect]:
        return self._changed(self.machine.resolved(job, outcome))

    # ------------------------------------------------------------ upstream's lists
    def _rebuild(self) -> tuple[int, list[list[str]], list[list[str]]]:
        if self._lists[0] != self.version:
            queued, running = [], []
            for job in self._by_id.values():
                state = JobState(job.state)
                if state in _QUEUED:
                    queued.append([job.name, job.jobid])
                elif state in _RUNNING:
                    running.append([job.name, job.jobid])
            self._lists = (self.version, queued, running)
        return self._lists

    def queued(self) -> list[list[str]]:
        return self._rebuild()[1]

    def running(self) -> list[list[str]]:
        return self._rebuild()[2]
