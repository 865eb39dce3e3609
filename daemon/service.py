"""The reactor's core and its poll loop: upstream requests and poll results in, job machines and effects out.

Everything here runs on the trio thread. The book of jobs is only touched in code without an
``await`` in between reads and writes, so requests and the poller never see a half-updated job.
The concerns live in their own modules and reach each other only through this core and through
effects, as data, that ``execute`` hands to the concern that carries them out, under the one
supervisor (daemon/supervisor.py): submission (daemon/submission.py), collection
(daemon/collection.py), interactive jobs (daemon/interactive.py). The API layer (daemon/api.py)
calls the ``Downstream``; the concerns never call the API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

import trio

from adapters.errors import ClusterUnavailable, CommandFailed, DownstreamError
from adapters.jobscript import ScriptEnvironment
from adapters.journal import Journal
from adapters.proxy.base import ProxyBackend, ProxyStatus
from adapters.proxy.local import TunnelOpener
from adapters.slurm.backend import SlurmBackend
from adapters.slurm.client import ClusterInfo, JobFacts
from daemon.collection import Collection
from daemon.core import (
    ANSWER_RETENTION,
    GC_BATCH,
    TAIL_DEFAULT,
    Answer,
    Conflict,
    NotFound,
    PollStatus,
    StopProxy,
    hms,
    job_identity,
    termination_line,
)
from daemon.interactive import Interactive
from daemon.logs import job_extra
from daemon.metrics import Metrics
from daemon.submission import Submissions
from daemon.supervisor import Supervisor
from statemachines.book import JobBook
from statemachines.job import Effect, Finished, Job, Outcome, Resolve

__all__ = ["ANSWER_RETENTION", "GC_BATCH", "TAIL_DEFAULT", "Conflict", "Downstream", "NotFound", "PollStatus",
           "hms", "job_identity", "termination_line"]

log = logging.getLogger(__name__)
T = TypeVar("T")

RESOLVE_BATCH = 100  # vanished jobs one inspect command asks about


@dataclass
class Downstream:
    slurm: SlurmBackend
    script_env: ScriptEnvironment
    executor: str = "singularity"
    poll_interval: float = 2.0
    command_timeout: float = 30.0  # how long an sbatch whose answer was lost may still take effect
    journal: Journal = field(default_factory=Journal)
    wall: Callable[[], float] = time.time  # for the journal and the state history
    clock: Callable[[], float] = trio.current_time  # for staleness and ordering; the property tests drive it
    staleness: float = 0.0  # answers need a poll younger than this; 0: max(3 x poll interval, 10 s)
    min_poll_gap: float = 0.5  # wake-ups (after submits) closer than this share one poll
    proxies: ProxyBackend | None = None  # interactive jobs' proxies; None: interactive URLs stay empty
    tunnels: TunnelOpener | None = None  # to probe a job's web service through the login node
    port_count: int = 100  # interactive jobs use service/SSH ports base .. base + port_count - 1
    upstream_sessions: int = 7  # SSH channels upstream's calls may hold at once: the rest is the poller's
    gc_age: float = 7 * 86400.0  # /gc removes files and outcomes nobody collected once they are this old
    # slurmrestd: the claim of upstream's bearer token naming the user a job runs as; None (SSH): every job
    # runs as the service user and the bearer is not read
    user_claim: str | None = None
    book: JobBook = field(default_factory=JobBook)
    status: PollStatus = field(default_factory=PollStatus)
    cluster: ClusterInfo | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.book.machine.clock = self.wall
        self.answers: dict[str, Answer] = {}  # collected /exitstatus answers, by "name/jobid"
        self.in_slurm: frozenset[str] = frozenset()  # every job id the last complete poll listed
        self._name_locks: dict[str, trio.Lock] = {}
        self._wake = trio.Event()
        self._restored = False
        self._upstream_slots = trio.Semaphore(max(1, self.upstream_sessions))
        self._to_resolve: dict[str, None] = {}  # vanished jobs waiting for the resolver, in order
        self._running_since: float | None = None  # when run() began (this replica's term, with leader election)
        self.supervisor = Supervisor(self.metrics)  # every background effect goes through it
        self.submissions = Submissions(self)
        self.collection = Collection(self)
        self.interactive = Interactive(self)

    # ------------------------------------------------------------ freshness
    @property
    def ready(self) -> bool:
        return self.status.polls > 0

    def stale_after(self) -> float:
        """How old the last successful poll may be: three intervals, at least 10 s, and at least three times
        what the last poll took (slurmrestd lists 9,500 jobs in 5-10 s: a poll that slow is not an outage)."""
        return self.staleness or max(3 * self.poll_interval, 10.0, 3 * self.status.last_duration)

    def healthy(self) -> bool:
        """Polling goes well: a successful poll within the staleness limit (or the poller began only lately).
        A leader that is not gives its Lease up (adapters/kube/lease.py), so a replica that can poll leads."""
        if self._running_since is None:
            return True
        return self.clock() - max(self.status.ok_at, self._running_since) <= self.stale_after()

    def require_fresh(self) -> None:
        """Answers from a snapshot the cluster has not confirmed lately would be made up."""
        age = self.clock() - self.status.ok_at
        if age > self.stale_after():
            why = self.status.last_error or "no successful poll yet"
            raise ClusterUnavailable(f"cluster state unknown for {age:.0f}s: {why}" if self.ready else why)

    # ------------------------------------------------------------ per-name locks, upstream's channels
    def lock(self, key: str) -> trio.Lock:
        return self._name_locks.setdefault(key, trio.Lock())

    def unlock(self, key: str, lock: trio.Lock) -> None:
        """Drop a per-key lock nobody holds or waits for, so the table does not grow."""
        if not lock.locked() and lock.statistics().tasks_waiting == 0:
            self._name_locks.pop(key, None)

    def locked(self, key: str) -> bool:
        lock = self._name_locks.get(key)
        return lock is not None and lock.locked()

    async def upstream(self, command: Callable[..., Awaitable[T]], *args: object) -> T:
        """A Slurm command on upstream's behalf: many slow ``tail``s must never keep the poller
        from a channel, or every answer would go stale (503) because of them."""
        async with self._upstream_slots:
            return await command(*args)

    # ------------------------------------------------------------ the poller
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll forever; effects run as supervised tasks of the same nursery."""
        self.restore()
        self._running_since = self.clock()
        async with trio.open_nursery() as nursery:
            self.supervisor.nursery = nursery
            task_status.started()
            while True:
                started = trio.current_time()
                try:
                    await self.poll_once()
                except Exception as exc:  # noqa: BLE001 - a bug in one poll must not end the daemon
                    self._poll_failed(f"internal error: {exc!r}")
                    log.error("poll failed on an internal error, jobs keep their last known state", exc_info=exc)
                with trio.move_on_after(self.poll_interval):
                    await self._wake.wait()
                    # a burst of submits is seen by one poll, not one poll each (submit throughput)
                    await trio.sleep_until(started + min(self.min_poll_gap, self.poll_interval))
                self._wake = trio.Event()

    def stand_by(self) -> None:
        """Leadership lost: this replica's snapshot stops being an answer (503, not ready)."""
        self.status = PollStatus(last_error="standing by: another replica leads")
        self._running_since = None  # judged again from its next term's start
        log.warning("this replica no longer leads: it stops polling and answers 503 until it leads again")

    def wake(self) -> None:
        """Poll now instead of at the end of the interval (after submit, cancel, release)."""
        self._wake.set()

    async def preflight(self) -> ClusterInfo:
        """Learn the cluster (home, Slurm version, MinJobAge, accounting); done once."""
        info = await self.slurm.preflight()
        self.script_env = replace(self.script_env, scratch_dir=self.slurm.scratch_dir)
        self.cluster = info
        log.info("cluster: %s, MinJobAge %s, finished jobs looked up with %s, scratch %s", info.version,
                 "unknown" if info.min_job_age is None else f"{info.min_job_age}s", self.slurm.accounting,
                 self.slurm.scratch_dir)
        return info

    def restore(self) -> None:
        """What only the journal knows: submits in doubt, outcomes and answers not yet collected.

        Jobs still in Slurm are not read here: the first poll adopts them.
        """
        if self._restored:
            return
        self._restored = True
        now, wall = self.clock(), self.wall()
        self.submissions.restore(now)
        self.collection.restore(now, wall)
        if len(self.book) or self.answers:
            log.info("journal %s: %d submit(s) in doubt, %d finished job(s) and %d answer(s) restored",
                     self.journal.path, len(self.book.limbo()), len(self.book) - len(self.book.limbo()), len(self.answers))

    async def poll_once(self) -> None:
        started = self.clock()
        try:
            if self.cluster is None:
                await self.preflight()
            poll = await self.slurm.poll()
        except DownstreamError as exc:
            self._poll_failed(str(exc))
            log.warning("poll failed, jobs keep their last known state: %s", exc)
            return
        now = self.clock()
        effects = self.submissions.adopt_or_settle(poll, now)
        # a parsed squeue line is what the book observes (statemachines.job.Observed): no copies
        effects += self.book.apply_poll(poll.jobs, poll.started_at, now, poll.complete)
        self.submissions.expire_limbo(poll)
        self.execute(effects)
        self.status.last_duration = now - started
        if not poll.complete:
            # A job on an unreadable line may be any state: what upstream would be
            # told of it is unknown, so the snapshot does not count as fresh.
            self._poll_failed("squeue printed lines that could not be read (see the log)")
            return
        self.in_slurm = frozenset(poll.jobs)
        self.status.polls += 1
        self.status.ok_at = now
        self.status.last_error = ""
        self.metrics.observe_poll(now - started)
        self.collection.expire_answers(now)
        if self.proxies is not None:
            self.interactive.after_poll()

    def _poll_failed(self, why: str) -> None:
        """A poll that leaves the snapshot as it was: the admin page and /metrics both count it."""
        self.status.failures += 1
        self.status.last_error = why
        self.metrics.observe_poll(None)

    # ------------------------------------------------------------ effects: the one executor
    def execute(self, effects: list[Effect]) -> None:
        """Carry out effects, as data, each by the concern it belongs to; background ones supervised."""
        for effect in effects:
            if isinstance(effect, Resolve):  # every poll that misses the job asks again: that is its retry
                self._to_resolve[effect.jobid] = None
                self.supervisor.spawn("resolve", "", "", self._resolve_vanished, key="resolve", attempts=1)
            elif isinstance(effect, Finished):
                job = self.book.get(effect.jobid)
                if job is not None:
                    log.info("job %s (%s) finished: %s, exit code %s", job.jobid, job.name, job.termination,
                             job.exit_code, extra=job_extra(job.name, job.jobid))
                    self.collection.record_outcome(job)
                    if job.interactive:
                        self.interactive.close(job)
                        self.execute([StopProxy(job.jobid, job.number, job.name)])
            elif isinstance(effect, StopProxy):
                self.interactive.stop_later(effect.number, effect.jobid, effect.name)

    async def _resolve_vanished(self) -> None:
        """Jobs squeue no longer lists: what became of them, ``RESOLVE_BATCH`` at a time, one command each.

        After an outage longer than MinJobAge every job that ended meanwhile vanishes at once; asking
        per job would start a storm of commands just as the link returns. The batches run on upstream's
        channel budget, so the poller keeps its own. A batch that fails is the supervisor's to log and
        count; its jobs are asked for again by the next poll that misses them.
        """
        while self._to_resolve:
            batch = list(self._to_resolve)[:RESOLVE_BATCH]
            for jobid in batch:
                del self._to_resolve[jobid]
            found = await self.upstream(self.slurm.inspect_many, batch)
            for jobid, facts in found.items():
                self._resolved(jobid, facts)

    def _resolved(self, jobid: str, facts: JobFacts) -> None:
        """What the cluster still knows of a vanished job, applied to the book."""
        job = self.book.get(jobid)
        if job is None:
            return
        if facts.squeue is not None:  # it is back (or was never gone): the next poll handles it
            return
        acct = facts.accounting
        service_user = self.slurm.service_user  # the poll's identity: jobs of other users may hide from it
        if acct is None and facts.rc_file is None and job.user and job.user != service_user:
            # Another user's job (slurmrestd) the service identity no longer sees, and nothing says it ended:
            # with PrivateData=jobs that is what losing the coordinator role looks like, not an end. It keeps
            # its state (its exit-code file will tell once it ends) and every poll that misses it asks again.
            job.last_error = (f"not visible to the service user {service_user}: is it still a coordinator of "
                              f"{job.user}'s account (PrivateData=jobs)? kept as {job.state}")
            log.warning("job %s (%s, user %s): %s", jobid, job.name, job.user, job.last_error,
                        extra=job_extra(job.name, jobid))
            return
        outcome = Outcome(
            code=acct.code if acct else "",
            elapsed=acct.elapsed if acct else 0,
            nodes=acct.nodes if acct else (),
            rc_file=facts.rc_file,
        )
        effects = self.book.resolved(job, outcome)
        source = "accounting" if acct else "its exit-code file" if facts.rc_file is not None else "nothing"
        log.info("job %s left squeue unseen; resolved from %s: %s", jobid, source, job.termination or "still active",
                 extra=job_extra(job.name, jobid))
        self.execute(effects)

    # ------------------------------------------------------------ upstream: snapshot answers
    def queued(self) -> list[list[str]]:
        self.require_fresh()
        return self.book.queued()

    def running(self) -> list[list[str]]:
        self.require_fresh()
        return self.book.running()

    def runstatus(self, args: Mapping[str, object]) -> list:
        name, number, jobid = job_identity(args)
        self.require_fresh()  # before the first poll after a restart, "unknown job" would be made up: 503
        job = self.book.get(jobid)
        if job is None or job.name != name:
            return [None, None, None, None]
        return [list(job.nodes), hms(job.elapsed_at(self.clock())), f"{name}/{number}/{jobid}", None]

    def proxy_status(self, job: Job) -> ProxyStatus | None:
        return self.interactive.status(job)

    def url_of(self, name: str, jobid: str) -> str:
        return self.interactive.url_of(name, jobid)

    # ------------------------------------------------------------ upstream: actions
    async def submit(self, args: Mapping[str, object]) -> list:
        return await self.submissions.submit(args)

    async def exitstatus(self, args: Mapping[str, object]) -> list:
        answer = await self.collection.exitstatus(args)
        # A tracked job's proxy went when it finished (Finished). One still running is left from
        # before a restart: stopped off upstream's request path; /gc removes any it cannot see.
        name, number, jobid = job_identity(args)
        if self.proxies is not None and self.proxies.status(str(number)) is not None:
            self.execute([StopProxy(jobid, number, name)])
        return answer

    async def terminate(self, args: Mapping[str, object]) -> bool:
        name, _, jobid = job_identity(args)
        job = self.book.get(jobid)
        if job is not None and job.final:
            return True
        try:
            await self.upstream(self.slurm.cancel, jobid, name)
        except CommandFailed as exc:  # already gone, or not ours: best effort, as the contract says
            log.info("scancel of job %s: %s", jobid, exc.stderr, extra=job_extra(name, jobid))
        log.info("job %s (%s): termination requested", jobid, name, extra=job_extra(name, jobid))
        if job is not None and job.interactive:
            self.interactive.close(job)  # no proxy again, though Slurm may show it running a while
            await self.interactive.stop_now(job)  # users lose it before the answer, not a poll later
        self.wake()
        return True

    def _tracked(self, name: str, jobid: str) -> Job:
        """The job upstream names, as this daemon tracks it; anything else (a foreign job id) is not found."""
        job = self.book.get(jobid)
        if job is None:
            self.require_fresh()  # after a restart, a job is known only once a poll has adopted it
        if job is None or job.name != name:
            raise NotFound(f"no job {jobid} named {name} is tracked here")
        return job

    async def release(self, args: Mapping[str, object]) -> bool:
        name, _, jobid = job_identity(args)
        self._tracked(name, jobid)  # never release a job that is not this one (scontrol takes any id)
        try:
            await self.upstream(self.slurm.release, jobid)
        except CommandFailed as exc:
            raise Conflict(f"job {jobid} could not be released: {exc.stderr}") from None
        self.wake()
        return True

    async def events(self, args: Mapping[str, object]) -> str:
        name, _, jobid = job_identity(args)
        self._tracked(name, jobid)  # scontrol shows any job of the cluster: only ours are shown
        return await self.upstream(self.slurm.show_job, jobid)

    async def tail(self, name: str, jobid: str, lines: int) -> str:
        """A job's output, only to the caller naming it right (as ``events`` and ``release``): any job id
        may have an output file, and another job's output is not this caller's to read."""
        self._tracked(name, jobid)
        text = await self.upstream(self.slurm.tail, jobid, lines)
        if not text:
            raise NotFound(f"job {jobid} has no output")
        return text

    async def pvcls(self, path: str, details: bool) -> str:
        return await self.upstream(self.slurm.list_dir, path, details)

    async def gc(self) -> bool:
        """Upstream's periodic call: is the cluster reachable; then collect what nobody else will.

        Proxies whose job is gone (interactive), then the jobs' files and outcomes (collection). The
        answer is about the cluster: a collection that fails is logged, counted and retried.
        """
        try:
            await self.upstream(self.slurm.ping)  # upstream's call: never on the poller's channel
        except DownstreamError:
            return False
        if self.proxies is not None:  # the proxy backend's failures are not the cluster's: still OK
            await self.supervisor.guard("gc proxies", "", "", self.interactive.collect)
        await self.supervisor.guard("gc files", "", "", self.collection.sweep)
        return True
