"""What the benchmarks of one run share: daemons, their counting sshds, the jobs they created.

Every daemon gets a counting sshd of its own, so the login-node commands of
one daemon (or of the reference baseline) are never mixed with another's.
Since the daemon adopts every ``jarvice_`` job it sees in Slurm, the number of
jobs a daemon tracks is read back from it (``/queued`` + ``/running``), never
assumed. Every Slurm job the run creates is cancelled at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from bench.cluster import ControllerWatch, CountingSSHD, OutageWatch, cancel_run
from bench.daemon_proc import DaemonProcess, daemon, job_name, submit
from bench.stats import Stopwatch

CONCURRENCY = 8
ATTEMPTS = 3

T = TypeVar("T")


@dataclass(frozen=True)
class JobRef:
    """What upstream knows of a job: enough for /runstatus and /exitstatus."""

    name: str
    number: int
    jobid: str

    @property
    def args(self) -> dict[str, object]:
        return {"name": self.name, "number": self.number, "jobid": self.jobid}


@dataclass
class Live:
    key: str
    sshd: CountingSSHD
    proc: DaemonProcess
    poll_interval: float
    numbers: dict[str, int] = field(default_factory=dict)  # name -> number, for jobs this run submitted


class Context:
    def __init__(self, *, keep: bool = False) -> None:
        self.run = uuid.uuid4().hex[:6]
        self.tag = f"_{self.run}"  # in every job name of this run (upstream names and raw sbatch names)
        self.work = Path(tempfile.mkdtemp(prefix="slurm-downstream-bench-run."))
        self.keep = keep
        self.results: dict[str, dict] = {}
        self._numbers = itertools.count(1)
        self._daemons: dict[str, Live] = {}
        self._stacks: dict[str, contextlib.AsyncExitStack] = {}
        self._sshds: list[CountingSSHD] = []
        self.watch = ControllerWatch()  # run by the runner; never reports an outage when not running
        self.watches: list[OutageWatch] = [self.watch]  # a stage adds its own (rest: slurmrestd's)
        self.disturbed: list[str] = []  # measurements that met a slurmctld outage on every attempt

    def _disturbed(self, start: float) -> bool:
        return any(w.disturbed(start, time.perf_counter()) for w in self.watches)

    async def undisturbed(self, what: str, measure: Callable[[], Awaitable[T]]) -> T:
        """``measure()``, again (up to ATTEMPTS times) while a watched service (slurmctld, and any a stage added)
        was down during it.

        A failure during an outage counts as disturbed too; a failure with every service
        up is a real failure and is raised.
        """
        for attempt in range(1, ATTEMPTS + 1):
            t0 = time.perf_counter()
            try:
                result = await measure()
            except Exception:
                if not self._disturbed(t0) or attempt == ATTEMPTS:
                    raise
            else:
                if not self._disturbed(t0):
                    return result
                if attempt == ATTEMPTS:
                    self.disturbed.append(what)
                    return result
            print(f"   {what}: a service it uses stopped answering meanwhile (another suite's fault test?); "
                  "measuring again", flush=True)
            for watch in self.watches:
                await watch.wait_up(0)
            await trio.sleep(5.0)  # the daemons' next polls
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ sshds and daemons
    def sshd(self) -> CountingSSHD:
        sshd = CountingSSHD().__enter__()
        self._sshds.append(sshd)
        return sshd

    async def daemon(self, key: str = "main", *, poll_interval: float = 2.0, argv: list[str] | None = None,
                     env: dict[str, str] | None = None) -> Live:
        """The daemon called ``key`` (started on first use, behind its own counting sshd)."""
        live = self._daemons.get(key)
        if live is not None:
            return live
        sshd = self.sshd()
        stack = contextlib.AsyncExitStack()
        daemon_env = sshd.env(JARVICE_SLURM_POLL_INTERVAL=str(poll_interval), **(env or {}))
        proc = await stack.enter_async_context(daemon(key, daemon_env, self.work, argv=argv))
        live = Live(key, sshd, proc, poll_interval)
        self._daemons[key], self._stacks[key] = live, stack
        return live

    async def stop(self, key: str) -> None:
        stack = self._stacks.pop(key, None)
        live = self._daemons.pop(key, None)
        if stack is not None:
            await stack.aclose()
        if live is not None:
            live.sshd.__exit__()

    async def release_cluster(self) -> None:
        """Stop every daemon and cancel every job this run created (before the simulated stages).

        Every job's name carries the run's tag, so none is missed, even one whose id never came back."""
        for key in list(self._daemons):
            await self.stop(key)
        await trio.to_thread.run_sync(cancel_run, self.tag)

    async def aclose(self, failed: bool) -> None:
        with trio.CancelScope(shield=True):
            await self.release_cluster()
            for sshd in self._sshds:
                sshd.__exit__()
        if self.keep or failed:
            print(f"\nlogs kept in {self.work} and {', '.join(str(s.dir) for s in self._sshds)}")
            return
        shutil.rmtree(self.work, ignore_errors=True)
        for sshd in self._sshds:
            if sshd.dir is not None:
                shutil.rmtree(sshd.dir, ignore_errors=True)

    # ------------------------------------------------------------ jobs
    def next_number(self) -> int:
        return next(self._numbers)

    async def submit_many(self, live: Live, count: int, *, tag: str, held: bool = True, body: str = "true",
                          concurrency: int = CONCURRENCY) -> tuple[list[JobRef], list[float]]:
        """``count`` /submit calls from ``concurrency`` clients; the jobs and each call's seconds."""
        jobs: list[JobRef] = []
        seconds: list[float] = []
        todo = iter(range(count))

        async def client() -> None:
            for _ in todo:
                number = self.next_number()
                name = job_name(self.run, tag, number)
                with Stopwatch() as sw:
                    jobid = await submit(live.proc.upstream, name, number, held=held, body=body)
                seconds.append(sw.seconds)
                live.numbers[name] = number
                jobs.append(JobRef(name, number, jobid))

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(client)
        return jobs, seconds

    async def active(self, live: Live) -> list[JobRef]:
        """The jobs the daemon lists as queued or running (its own and adopted ones)."""
        queued = await live.proc.upstream.call("/queued")
        running = await live.proc.upstream.call("/running")
        assert isinstance(queued, list) and isinstance(running, list)
        return [JobRef(name, live.numbers.get(name, 1), jobid) for name, jobid in [*queued, *running]]

    async def ensure_active(self, live: Live, count: int) -> list[JobRef]:
        """At least ``count`` active jobs in the daemon's lists: held jobs are submitted to make up."""
        active = await self.active(live)
        missing = count - len(active)
        if missing > 0:
            await self.submit_many(live, missing, tag="h", held=True)
            active = await self.active(live)
        return active

    async def finished(self, live: Live, count: int, timeout: float = 90) -> list[JobRef]:
        """``count`` jobs that ran ``true`` and that the daemon has seen finish (for /exitstatus)."""
        jobs, _ = await self.submit_many(live, count, tag="x", held=False)
        names = {j.name for j in jobs}
        with trio.fail_after(timeout):
            while names & {j.name for j in await self.active(live)}:
                await trio.sleep(0.2)
        return jobs
