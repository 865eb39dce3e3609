"""The core reactor: upstream requests and poll results in, job machines and Slurm calls out.

Everything here runs on the trio thread. The book of jobs is only touched in
code without an ``await`` in between reads and writes, so requests and the
poller never see a half-updated job; submits of one name are serialised by a
per-name lock (kopf's per-object serialisation), so a retried ``/submit`` can
never create a second Slurm job.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

import trio

from adapters import jobscript
from adapters.errors import ClusterUnavailable, CommandFailed, DownstreamError, InvalidRequest
from adapters.jobscript import ScriptEnvironment
from adapters.journal import Journal
from adapters.proxy.base import ProxyBackend, ProxyState, ProxyStatus, ProxyTarget
from adapters.proxy.local import TunnelOpener
from adapters.proxy.local import probe as probe_service
from adapters.slurm.backend import SlurmBackend
from adapters.slurm.client import ClusterInfo, Poll
from adapters.slurm.parsers import parse_comment
from daemon.logs import job_extra
from daemon.metrics import Metrics
from statemachines.book import DuplicateJob, JobBook
from statemachines.job import Effect, Finished, Job, JobState, Outcome, Resolve
from statemachines.slurm_states import UNKNOWN_EXIT, Phase, code_from_rc_file, exit_code_of, long_name, phase_of

log = logging.getLogger(__name__)
T = TypeVar("T")

TAIL_DEFAULT = 100
ANSWER_RETENTION = 3600.0  # how long a collected /exitstatus answer is repeated
PROXY_RETRIES = 3  # proxy starts that may fail for one job before its info says why and it stops trying
GC_BATCH = 200  # jobs whose files one removal command takes


class Conflict(DownstreamError):
    """The request is valid but the job is not in a state that allows it (409)."""


class NotFound(DownstreamError):
    """Nothing to show (404)."""


def hms(seconds: int) -> str:
    """Upstream's elapsed format: ``HH:MM:SS``, hours may exceed 24."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def termination_line(state: str) -> str:
    return f"<< termination state: {state} -- see STDOUT for job errors >>"


@dataclass
class PollStatus:
    ok_at: float = -math.inf  # trio time of the last successful poll
    polls: int = 0
    failures: int = 0
    last_error: str = ""
    last_duration: float = 0.0


@dataclass
class _Answer:
    value: list
    expires: float


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
    book: JobBook = field(default_factory=JobBook)
    status: PollStatus = field(default_factory=PollStatus)
    cluster: ClusterInfo | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.book.machine.clock = self.wall
        self._answers: dict[str, _Answer] = {}
        self._name_locks: dict[str, trio.Lock] = {}
        self._resolving: set[str] = set()
        self._duplicates: set[str] = set()  # Slurm job ids already reported as duplicates
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._restored = False
        self._tending = False
        self._node_addresses: dict[str, str] = {}
        self._proxy_bytes_seen: dict[int, tuple[int, int]] = {}
        self._upstream_slots = trio.Semaphore(max(1, self.upstream_sessions))
        self._in_slurm: frozenset[str] = frozenset()  # every job id the last complete poll listed

    # ------------------------------------------------------------ freshness
    @property
    def ready(self) -> bool:
        return self.status.polls > 0

    def stale_after(self) -> float:
        return self.staleness or max(3 * self.poll_interval, 10.0)

    def require_fresh(self) -> None:
        """Answers from a snapshot the cluster has not confirmed lately would be made up."""
        age = self.clock() - self.status.ok_at
        if age > self.stale_after():
            why = self.status.last_error or "no successful poll yet"
            raise ClusterUnavailable(f"cluster state unknown for {age:.0f}s: {why}" if self.ready else why)

    # ------------------------------------------------------------ the poller
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll forever; effects run as tasks of the same nursery."""
        self.restore()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                started = trio.current_time()
                await self.poll_once()
                with trio.move_on_after(self.poll_interval):
                    await self._wake.wait()
                    # a burst of submits is seen by one poll, not one poll each (submit throughput)
                    await trio.sleep_until(started + min(self.min_poll_gap, self.poll_interval))
                self._wake = trio.Event()

    def stand_by(self) -> None:
        """Leadership lost: this replica's snapshot stops being an answer (503, not ready)."""
        self.status = PollStatus(last_error="standing by: another replica leads")
        log.warning("this replica no longer leads: it stops polling and answers 503 until it leads again")

    def wake(self) -> None:
        """Poll now instead of at the end of the interval (after submit, cancel, release)."""
        self._wake.set()

    async def preflight(self) -> ClusterInfo:
        """Learn the cluster (home, Slurm version, MinJobAge, accounting); done once."""
        info = await self.slurm.preflight()
        self.script_env = replace(self.script_env, scratch_dir=self.slurm.scratch_dir)
        self.cluster = info
        log.info("cluster: %s, MinJobAge %ss, finished jobs looked up with %s, scratch %s",
                 info.version, info.min_job_age, self.slurm.accounting, self.slurm.scratch_dir)
        return info

    # ------------------------------------------------------------ restart recovery
    def restore(self) -> None:
        """What only the journal knows: submits in doubt, outcomes and answers not yet collected.

        Jobs still in Slurm are not read here: the first poll adopts them.
        """
        if self._restored:
            return
        self._restored = True
        now, wall = self.clock(), self.wall()
        for intent in self.journal.intents():
            if self.book.named(intent.name) is None:
                job = Job(name=intent.name, number=intent.number, interactive=intent.interactive)
                self.book.add(job)
                self.book.in_limbo(job, now, "the daemon stopped while its sbatch was in flight")
        for outcome in self.journal.outcomes():
            if self.book.named(outcome.name) is None and self.book.get(outcome.jobid) is None:
                rec = outcome.record
                self.book.add(Job(name=outcome.name, number=outcome.number, jobid=outcome.jobid,
                                  state=JobState(rec["state"]), exit_code=rec["exit_code"], elapsed=rec["elapsed"],
                                  termination=rec["termination"], nodes=tuple(rec["nodes"]), adopted=True))
        for key, (answer, expires) in self.journal.answers(wall).items():
            self._answers[key] = _Answer(answer, now + (expires - wall))
        if len(self.book) or self._answers:
            log.info("journal %s: %d submit(s) in doubt, %d finished job(s) and %d answer(s) restored",
                     self.journal.path, len(self.book.limbo()), len(self.book) - len(self.book.limbo()), len(self._answers))

    def _adopt_or_settle(self, poll: Poll, now: float) -> list[Effect]:
        """Jobs Slurm runs under our names that the book does not know by id."""
        effects: list[Effect] = []
        for jobid in self.book.unknown(poll.jobs):
            sj = poll.jobs[jobid]
            known = self.book.named(sj.name)
            if known is not None and known.limbo_since is not None:
                log.warning("job %s (%s): the submit whose answer was lost did reach Slurm", jobid, sj.name,
                    extra=job_extra(sj.name, jobid))
                effects += self.book.settle(known, jobid, sj, now=now, since=poll.started_at)
                self.journal.settle(sj.name)
                continue
            if known is not None and not known.jobid:
                continue  # its sbatch is in flight and will register it when it answers
            if known is not None:
                if jobid not in self._duplicates and phase_of(sj.code, sj.reason) is not Phase.FINISHED:
                    self._duplicates.add(jobid)
                    log.error("job %s: Slurm runs a second job named jarvice_%s (tracked: %s); not adopted",
                              jobid, sj.name, known.jobid or "none")
                continue
            tag = parse_comment(sj.comment)
            if tag is None or f"{sj.name}/{jobid}" in self._answers:
                continue  # not submitted by a downstream, or finished and already collected
            job = self.book.adopt(sj.name, tag.number, jobid, sj, now=now, since=poll.started_at,
                                  interactive=tag.interactive)
            if job is not None:
                job.port_index = tag.port_index
                log.info("job %s (%s, number %s): adopted from Slurm as %s", jobid, sj.name, tag.number, job.state,
                    extra=job_extra(sj.name, jobid))
                if job.final:
                    self._record_outcome(job)
        return effects

    def _expire_limbo(self, poll: Poll) -> None:
        """A complete poll begun well after a lost sbatch that does not show it: it never took effect."""
        if not poll.complete:
            return
        for job in self.book.limbo():
            lock = self._name_locks.get(job.name)
            if lock is not None and lock.locked():
                continue  # a retried submit is settling it right now
            if job.limbo_since is not None and poll.started_at > job.limbo_since + self.command_timeout:
                log.warning("job %s: the submit whose answer was lost never reached Slurm; upstream may submit again",
                            job.name)
                self.book.forget(job)
                self.journal.settle(job.name)

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
        effects = self._adopt_or_settle(poll, now)
        # a parsed squeue line is what the book observes (statemachines.job.Observed): no copies
        effects += self.book.apply_poll(poll.jobs, poll.started_at, now, poll.complete)
        self._expire_limbo(poll)
        self.execute(effects)
        self.status.last_duration = now - started
        if not poll.complete:
            # A job on an unreadable line may be any state: what upstream would be
            # told of it is unknown, so the snapshot does not count as fresh.
            self._poll_failed("squeue printed lines that could not be read (see the log)")
            return
        self._in_slurm = frozenset(poll.jobs)
        self.status.polls += 1
        self.status.ok_at = now
        self.status.last_error = ""
        self.metrics.observe_poll(now - started)
        self._expire_answers(now)
        if self.proxies is not None and self._nursery is not None and not self._tending:
            self._tending = True
            self._nursery.start_soon(self._tend_proxies)

    def _poll_failed(self, why: str) -> None:
        """A poll that leaves the snapshot as it was: the admin page and /metrics both count it."""
        self.status.failures += 1
        self.status.last_error = why
        self.metrics.observe_poll(None)

    def execute(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Resolve) and effect.jobid not in self._resolving and self._nursery:
                self._resolving.add(effect.jobid)
                self._nursery.start_soon(self._resolve, effect.jobid)
            elif isinstance(effect, Finished):
                job = self.book.get(effect.jobid)
                if job is not None:
                    log.info("job %s (%s) finished: %s, exit code %s", job.jobid, job.name, job.termination, job.exit_code,
                        extra=job_extra(job.name, job.jobid))
                    self._record_outcome(job)
                    if job.interactive and self.proxies is not None and self._nursery is not None:
                        self._nursery.start_soon(self._stop_proxy, job)

    def _record_outcome(self, job: Job) -> None:
        """Until upstream collects it: the cluster may purge the job and have no accounting."""
        self.journal.finished(job.jobid, job.name, job.number, {
            "state": JobState(job.state).value, "exit_code": job.exit_code, "elapsed": job.elapsed,
            "termination": job.termination, "nodes": list(job.nodes), "at": self.wall()})

    async def _resolve(self, jobid: str) -> None:
        try:
            facts = await self.slurm.inspect(jobid)
        except DownstreamError as exc:
            log.warning("job %s vanished from squeue and could not be inspected (will retry): %s", jobid, exc,
                extra=job_extra("", jobid))
            return
        finally:
            self._resolving.discard(jobid)
        job = self.book.get(jobid)
        if job is None:
            return
        if facts.squeue is not None:  # it is back (or was never gone): the next poll handles it
            return
        acct = facts.accounting
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

    def _expire_answers(self, now: float) -> None:
        expired = [j for j, a in self._answers.items() if a.expires < now]
        for key in expired:
            del self._answers[key]
        if expired:
            self.journal.expire(self.wall())

    # ------------------------------------------------------------ interactive jobs' proxies
    async def _tend_proxies(self) -> None:
        """After each poll: a proxy for every running interactive job whose service answers."""
        try:
            interactive = [job for job in self.book if job.interactive and not job.final]
            for job in interactive:
                if job.port_index is not None:
                    await self._tend_proxy(job)
            self._count_proxy_traffic(interactive)
        finally:
            self._tending = False

    def proxy_status(self, job: Job) -> ProxyStatus | None:
        if self.proxies is None or not job.interactive:
            return None
        return self.proxies.status(str(job.number))

    def _count_proxy_traffic(self, jobs: list[Job]) -> None:
        """Proxies count their own bytes; the metrics get what moved since the last look."""
        open_now, seen = 0, {}
        for job in jobs:
            status = self.proxy_status(job)
            if status is None:
                continue
            open_now += status.connections
            seen_up, seen_down = self._proxy_bytes_seen.get(job.number, (0, 0))
            self.metrics.proxy_bytes_up(max(0, status.bytes_up - seen_up))
            self.metrics.proxy_bytes_down(max(0, status.bytes_down - seen_down))
            seen[job.number] = (status.bytes_up, status.bytes_down)
        self._proxy_bytes_seen = seen  # ended jobs drop out
        self.metrics.proxy_connections.set(open_now)

    async def _tend_proxy(self, job: Job) -> None:
        assert self.proxies is not None
        key = str(job.number)
        state = JobState(job.state)
        status = self.proxies.status(key)
        if state is JobState.PROXYING and (status is None or status.state is not ProxyState.SERVING):
            job.last_error = status.error if status else "its proxy stopped"
            self.book.machine.fire(job, "proxy_down")
            state = JobState.RUNNING
        if state is not JobState.RUNNING or not job.nodes or job.terminating:
            return  # a terminated job's service may answer until Slurm's KillWait ends it: not to users
        if status is None or status.state is not ProxyState.SERVING:
            if job.proxy_failures >= PROXY_RETRIES:
                return  # its info says why (last_error); a new poll will not change that
            try:
                host = await self._node_address(job.nodes[0])
                port = self.script_env.service_port + job.port_index
                if self.tunnels is not None and not await probe_service(self.tunnels, host, port):
                    return  # the job's web server is not listening yet: the URL stays empty
                status = await self.proxies.start(ProxyTarget(key=key, host=host, port=port))
            except DownstreamError as exc:
                status = ProxyStatus(ProxyState.FAILED, error=str(exc))
            if status.state is ProxyState.FAILED:
                job.proxy_failures += 1
                job.last_error = f"proxy failed ({job.proxy_failures}/{PROXY_RETRIES}): {status.error}"
                log.warning("job %s (%s): %s", job.jobid, job.name, job.last_error, extra=job_extra(job.name, job.jobid))
                return
        if status.state is ProxyState.SERVING and JobState(job.state) is JobState.RUNNING:
            self.book.machine.fire(job, "proxy_up")
            log.info("job %s (%s): interactive service at %s", job.jobid, job.name, status.url,
                     extra=job_extra(job.name, job.jobid))

    async def _node_address(self, node: str) -> str:
        if node not in self._node_addresses:
            self._node_addresses[node] = await self.slurm.node_address(node)
        return self._node_addresses[node]

    async def _stop_proxy(self, job: Job) -> None:
        await self._stop_proxy_of(job.number, job.jobid, job.name)

    async def _stop_proxy_of(self, number: int, jobid: str, name: str) -> None:
        if self.proxies is None:
            return
        try:
            await self.proxies.stop(str(number))
        except DownstreamError as exc:  # /gc collects it later
            log.warning("job %s (%s): could not stop its proxy: %s", jobid, name, exc, extra=job_extra(name, jobid))

    def url_of(self, name: str, jobid: str) -> str:
        """``info``'s URL: empty until the job's service is reachable through its proxy."""
        job = self.book.get(jobid)
        if job is None or job.name != name or JobState(job.state) is not JobState.PROXYING:
            return ""
        status = self.proxy_status(job)  # the proxy's own word, not a copy of it
        return status.url if status is not None and status.state is ProxyState.SERVING else ""

    def _free_port_index(self) -> int:
        used = {j.port_index for j in self.book if j.port_index is not None and not j.final}
        for index in range(self.port_count):
            if index not in used:
                return index
        raise ClusterUnavailable(f"all {self.port_count} interactive ports are in use (JARVICE_SLURM_PORT_COUNT)")

    async def _upstream(self, command: Callable[..., Awaitable[T]], *args: object) -> T:
        """A Slurm command on upstream's behalf: many slow ``tail``s must never keep the poller
        from a channel, or every answer would go stale (503) because of them."""
        async with self._upstream_slots:
            return await command(*args)

    # ------------------------------------------------------------ upstream: snapshot answers
    def queued(self) -> list[list[str]]:
        self.require_fresh()
        return self.book.queued()

    def running(self) -> list[list[str]]:
        self.require_fresh()
        return self.book.running()

    def runstatus(self, args: Mapping[str, object]) -> list:
        name, number, jobid = job_identity(args)
        job = self.book.get(jobid)
        if job is None or job.name != name:
            return [None, None, None, None]
        self.require_fresh()
        return [list(job.nodes), hms(job.elapsed_at(self.clock())), f"{name}/{number}/{jobid}", None]

    # ------------------------------------------------------------ upstream: actions
    def _lock(self, key: str) -> trio.Lock:
        return self._name_locks.setdefault(key, trio.Lock())

    def _unlock(self, key: str, lock: trio.Lock) -> None:
        """Drop a per-key lock nobody holds or waits for, so the table does not grow."""
        if not lock.locked() and lock.statistics().tasks_waiting == 0:
            self._name_locks.pop(key, None)

    async def submit(self, args: Mapping[str, object]) -> list:
        submission = jobscript.build(args, self.executor, self.script_env)
        if self.cluster is None:
            raise ClusterUnavailable(self.status.last_error or "the cluster has not answered yet")
        # Whether this name is already in Slurm is known only from a fresh poll (which
        # adopts every job under our names): without one, submitting could duplicate it.
        self.require_fresh()
        req = submission.request
        lock = self._lock(req.name)
        try:
            async with lock:
                try:
                    job = self.book.new(req.name, req.number, interactive=req.interactive, fscript=submission.fscript)
                except DuplicateJob as dup:
                    job = dup.job
                    if job.limbo_since is None:
                        log.info("submit of %s repeated: answering with job %s", req.name, job.jobid,
                            extra=job_extra(req.name, job.jobid))
                        return [job.jobid, job.fscript or submission.fscript]
                    if await self._settle_by_name(job):
                        return [job.jobid, submission.fscript]
                    job.limbo_since, job.fscript = None, submission.fscript  # proven absent: submit it now
                if req.interactive and job.port_index is None:
                    job.port_index = self._free_port_index()
                if job.port_index is not None:  # known only now: rendered again with the job's ports
                    submission = jobscript.build(args, self.executor, self.script_env, port_index=job.port_index)
                    job.fscript = submission.fscript  # what a repeated submit answers: the script Slurm runs
                self.journal.intend(req.name, req.number, req.interactive)
                try:
                    jobid = await self._sbatch(job, submission)
                except DownstreamError:
                    self.metrics.submit_failures.inc()
                    raise
                self.metrics.submits.inc()
                self.execute(self.book.submitted(job, jobid, held=req.held, now=self.clock()))
                self.journal.settle(req.name)
        finally:
            self._unlock(req.name, lock)
        log.info("job %s submitted for %s (number %s, %d node(s)%s)", jobid, req.name, req.number, req.nodes,
                 ", held" if req.held else "", extra=job_extra(req.name, jobid))
        self.wake()
        return [jobid, submission.fscript]

    async def _sbatch(self, job: Job, submission: jobscript.Submission) -> str:
        try:
            # Shielded: a client that hangs up mid-sbatch must not leave a job in
            # Slurm that the book forgot. The SSH command timeout still bounds it.
            with trio.CancelScope(shield=True):
                return await self._upstream(self.slurm.submit, submission)
        except CommandFailed as exc:
            self.book.submit_failed(job, exc.stderr)
            raise InvalidRequest(f"Slurm refused the job: {exc.stderr or 'sbatch failed'}") from None
        except ClusterUnavailable as exc:
            # The link may have dropped after sbatch took effect: never submit twice.
            try:
                with trio.CancelScope(shield=True):
                    found = await self._upstream(self.slurm.find_by_name, job.name)
            except DownstreamError as lookup:
                # Unknown: keep the name reserved until a poll finds the job or proves it absent.
                self.book.in_limbo(job, self.clock(), f"sbatch answer lost: {exc}")
                raise ClusterUnavailable(f"{exc}; and looking the job up failed: {lookup}") from None
            if found:
                log.warning("sbatch for %s lost its answer; found it in Slurm as job %s", job.name, found[-1].jobid,
                    extra=job_extra(job.name, found[-1].jobid))
                return found[-1].jobid
            self.book.submit_failed(job, "cluster unavailable")
            self.journal.settle(job.name)
            raise
        except BaseException:
            self.book.submit_failed(job, "interrupted")
            self.journal.settle(job.name)
            raise

    async def _settle_by_name(self, job: Job) -> bool:
        """A retried submit of a job in limbo: is it in Slurm after all? (ClusterUnavailable if unknown.)"""
        try:
            found = await self._upstream(self.slurm.find_by_name, job.name)
        except CommandFailed as exc:  # whether it is in Slurm stays unknown: try again later
            raise ClusterUnavailable(f"looking up {job.name} in Slurm failed: {exc}") from None
        if not found:
            return False
        sj = found[-1]
        now = self.clock()
        self.execute(self.book.settle(job, sj.jobid, sj, now=now, since=now))
        self.journal.settle(job.name)
        log.warning("submit of %s repeated after a lost answer: it is job %s", job.name, sj.jobid,
            extra=job_extra(job.name, sj.jobid))
        return True

    async def exitstatus(self, args: Mapping[str, object]) -> list:
        name, number, jobid = job_identity(args)
        key = f"{name}/{jobid}"
        cached = self._answers.get(key)
        if cached is not None:
            return cached.value
        lock = self._lock(f"exit:{jobid}")
        try:
            async with lock:
                cached = self._answers.get(key)
                if cached is not None:
                    return cached.value
                job = self.book.get(jobid)
                if job is not None and job.name != name:
                    raise NotFound(f"job {jobid} is not named {name}")
                if job is not None:
                    if not job.final:
                        self.require_fresh()  # "still running" from an old snapshot would be made up
                        raise Conflict(f"job {jobid} is still {job.state.value} in Slurm; it has no exit status yet")
                    rc, elapsed, state = job.exit_code, job.elapsed, job.termination
                else:
                    rc, elapsed, state = await self._outcome_from_cluster(name, jobid)
                tail = await self._upstream(self.slurm.tail, jobid) or ""
                answer = [rc if rc is not None else UNKNOWN_EXIT, hms(elapsed), [tail, termination_line(state or "UNKNOWN")]]
                self._answers[key] = _Answer(answer, self.clock() + ANSWER_RETENTION)
                self.journal.answered(key, answer, self.wall() + ANSWER_RETENTION)
                self.journal.collected(jobid)
                if job is not None:
                    self.book.forget(job)
        finally:
            self._unlock(f"exit:{jobid}", lock)
        await self._clean([jobid])
        # A tracked job's proxy went when it finished (execute: Finished). One still running is left
        # from before a restart: stopped off upstream's request path; /gc removes any it cannot see.
        if self.proxies is not None and self.proxies.status(str(number)) is not None and self._nursery is not None:
            self._nursery.start_soon(self._stop_proxy_of, number, jobid, name)
        return answer

    async def _outcome_from_cluster(self, name: str, jobid: str) -> tuple[int, int, str]:
        """A job this daemon does not track (purged, or from before a restart)."""
        facts = await self._upstream(self.slurm.inspect, jobid)
        for record in (facts.squeue, facts.accounting):
            if record is None:
                continue
            if record.name != name:
                raise NotFound(f"job {jobid} is not named {name}")
            if phase_of(record.code, getattr(record, "reason", "")) is not Phase.FINISHED:
                raise Conflict(f"job {jobid} is still {long_name(record.code)} in Slurm; it has no exit status yet")
            return exit_code_of(record.code), record.elapsed, long_name(record.code)
        if facts.rc_file is not None:
            code = code_from_rc_file(facts.rc_file)
            return exit_code_of(code), 0, long_name(code)
        return UNKNOWN_EXIT, 0, "UNKNOWN"

    async def _clean(self, jobids: list[str]) -> bool:
        """Remove the jobs' files; until that succeeds the journal keeps asking (/gc retries, restarts too)."""
        self.journal.to_clean(jobids, self.wall())
        try:
            await self._upstream(self.slurm.cleanup, jobids)
        except DownstreamError as exc:  # the answer stands; the files wait for the next /gc
            log.warning("could not remove the files of job(s) %s (retried at the next /gc): %s", ", ".join(jobids),
                        exc, extra=job_extra("", jobids[0]) if len(jobids) == 1 else None)
            return False
        self.journal.cleaned(jobids)
        return True

    async def terminate(self, args: Mapping[str, object]) -> bool:
        name, _, jobid = job_identity(args)
        job = self.book.get(jobid)
        if job is not None and job.final:
            return True
        try:
            await self._upstream(self.slurm.cancel, jobid, name)
        except CommandFailed as exc:  # already gone, or not ours: best effort, as the contract says
            log.info("scancel of job %s: %s", jobid, exc.stderr, extra=job_extra(name, jobid))
        log.info("job %s (%s): termination requested", jobid, name, extra=job_extra(name, jobid))
        if job is not None and job.interactive:
            job.terminating = True
            await self._stop_proxy(job)
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
            await self._upstream(self.slurm.release, jobid)
        except CommandFailed as exc:
            raise Conflict(f"job {jobid} could not be released: {exc.stderr}") from None
        self.wake()
        return True

    async def events(self, args: Mapping[str, object]) -> str:
        name, _, jobid = job_identity(args)
        self._tracked(name, jobid)  # scontrol shows any job of the cluster: only ours are shown
        return await self._upstream(self.slurm.show_job, jobid)

    async def tail(self, jobid: str, lines: int) -> str:
        text = await self._upstream(self.slurm.tail, jobid, lines)
        if not text:
            raise NotFound(f"job {jobid} has no output")
        return text

    async def pvcls(self, path: str, details: bool) -> str:
        return await self._upstream(self.slurm.list_dir, path, details)

    async def gc(self) -> bool:
        """Upstream's periodic call: is the cluster reachable; then collect what nobody else will.

        Proxies whose job is gone, jobs' files whose removal failed before, finished jobs upstream
        never collected, and files of jobs that are neither tracked nor known to Slurm, once older
        than ``gc_age``. The answer is about the cluster: a collection that fails is logged and retried.
        """
        try:
            await self._upstream(self.slurm.ping)  # upstream's call: never on the poller's channel
        except DownstreamError:
            return False
        if self.proxies is not None:
            wanted = {str(j.number) for j in self.book if j.interactive and not j.final}
            for key in sorted(await self.proxies.keys() - wanted):
                log.info("gc: removing the proxy of job number %s, which no tracked job needs", key)
                await self.proxies.stop(key)
        forgotten = self._forget_uncollected()
        pending = self.journal.cleanups()
        try:
            orphans = await self._orphans()
        except DownstreamError as exc:
            log.warning("gc: could not list the jobs' files: %s", exc)
            orphans = []
        if orphans:
            log.info("gc: %d job(s) left files that nobody will collect (neither tracked nor known to Slurm, "
                     "older than %s): %s", len(orphans), hms(int(self.gc_age)), ", ".join(orphans))
        todo = list(dict.fromkeys(pending + forgotten + orphans))
        for start in range(0, len(todo), GC_BATCH):
            batch = todo[start:start + GC_BATCH]
            if await self._clean(batch):
                log.info("gc: removed the files of job(s) %s", ", ".join(batch))
        return True

    def _forget_uncollected(self) -> list[str]:
        """Finished jobs whose /exitstatus upstream never asked for within ``gc_age``: upstream has moved on."""
        wall, forgotten = self.wall(), []
        for outcome in self.journal.outcomes():
            if wall - outcome.record.get("at", wall) <= self.gc_age:
                continue
            job = self.book.get(outcome.jobid)
            if job is not None and job.final:
                self.book.forget(job)
            self.journal.collected(outcome.jobid)
            forgotten.append(outcome.jobid)
            log.info("gc: job %s (%s) finished %s ago and upstream never collected it: forgotten", outcome.jobid,
                     outcome.name, hms(int(wall - outcome.record["at"])), extra=job_extra(outcome.name, outcome.jobid))
        return forgotten

    async def _orphans(self) -> list[str]:
        """Job ids with files in the jobs dir that no tracked job and no job Slurm lists owns, old enough.

        Only from a fresh, complete snapshot and with no submit in doubt: a job that exists but is not
        yet seen must never lose its files (the age limit protects it too)."""
        try:
            self.require_fresh()
        except ClusterUnavailable:
            return []
        if self.book.limbo():
            return []
        files = await self._upstream(self.slurm.job_files)
        known = self._in_slurm | {job.jobid for job in self.book if job.jobid}
        wall = self.wall()
        return sorted((j for j, mtime in files.items() if j not in known and wall - mtime > self.gc_age), key=int)


def job_identity(args: Mapping[str, object]) -> tuple[str, int, str]:
    """``name``, ``number``, ``jobid`` of a job-scoped request, validated."""
    name = jobscript.check_name(args.get("name"))
    number = jobscript.check_int(args, "number", 0, 10**15)
    jobid = jobscript.check_jobid(args.get("jobid"))
    return name, number, jobid
