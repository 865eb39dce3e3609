"""A simulated Slurm with the real client's interface, driven by a clock the test controls.

The twin is what the property-based tests and the large benchmarks run the
daemon against: jobs pend, start, finish, fail, get cancelled and get purged
``min_job_age`` seconds after they end; commands can fail, time out, hang,
return garbage, or lose the SSH link before or after they took effect. Its
observable behaviour (what each method returns or raises) follows the real
``SlurmClient`` on the real test cluster; ``tests/contract`` checks both with
the same tests, so a difference is a failing test, not a silent lie.

Nothing here does I/O; the only waiting is ``trio.sleep`` for modelled latency
and hangs, so a trio ``MockClock`` makes it instantaneous.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from time import time as wall_clock

import trio

from adapters.errors import AnswerLost, ClusterUnavailable, CommandFailed, SlurmUnreachable
from adapters.identity import UserIdentity
from adapters.jobscript import Submission
from adapters.slurm.client import ClusterInfo, JobFacts, Poll
from adapters.slurm.parsers import JOB_PREFIX, AccountingRecord, SlurmJob
from statemachines.slurm_states import FINISHED_CODES

COMMANDS = ("sbatch", "squeue", "inspect", "scancel", "scontrol", "tail", "rm", "ls", "ping")


class Fault(StrEnum):
    FAIL = "fail"  # the command runs but cannot reach slurmctld (it is restarting, say)
    REFUSED = "refused"  # the command runs and Slurm says no (a bad partition, a finished job)
    UNAVAILABLE = "unavailable"  # the SSH link is down before the command is sent
    DROP_AFTER = "drop_after"  # the command took effect, then the link dropped: the answer is lost
    GARBAGE = "garbage"  # the command exits 0 but prints something unreadable
    HANG = "hang"  # no answer until the command timeout, then the link is declared dead


@dataclass
class SimJob:
    jobid: str
    slurm_name: str
    comment: str
    nodes_wanted: int
    held: bool
    submitted: float
    user: str = ""  # the user it runs as (slurmrestd's per-user submits); "" the service user
    code: str = "PD"
    reason: str = "None"
    nodes: tuple[str, ...] = ()
    started: float | None = None
    ended: float | None = None
    rc: int | None = None  # the job's exit-code file, once task 0 wrote it
    cancelled: float = 0.0  # when scancel began ending it (CG until kill_wait has passed)
    output: str = ""
    shown: SlurmJob | None = field(default=None, repr=False)  # the last poll's view, reused while unchanged

    @property
    def finished(self) -> bool:
        return self.code in FINISHED_CODES


@dataclass
class SimulatedSlurm:
    user: str = "jarvice"
    scratch_dir: str = "/home/jarvice"
    accounting: str = "jobcomp"  # "sacct", "jobcomp" or "none": whether inspect finds finished jobs
    min_job_age: float = 300.0
    nodes: tuple[str, ...] = ("node1", "node2")
    command_timeout: float = 30.0
    latency: float = 0.0  # seconds each command takes (trio time)
    kill_wait: float = 0.0  # Slurm's KillWait: a cancelled running job stays CG (completing) this long
    time: float = 0.0  # Slurm's own clock, advanced by the test
    jobs: dict[str, SimJob] = field(default_factory=dict)
    accounted: dict[str, SimJob] = field(default_factory=dict)  # sacct remembers after the purge
    commands: Counter = field(default_factory=Counter)
    in_flight: Counter = field(default_factory=Counter)  # commands running now, by name
    most_in_flight: Counter = field(default_factory=Counter)  # the most at once, by name
    files: dict[str, float] = field(default_factory=dict)  # job id -> newest mtime of its files in the jobs dir
    wall: Callable[[], float] = wall_clock  # stamps those files, as the nodes' clocks would
    link_up: bool = True
    node_addresses: dict[str, str] = field(default_factory=dict)  # NodeAddr by node (default: its own 10.213.0.x); may change
    view_in_thread: bool = False  # build poll answers in a worker thread, as the real client parses them
    clock: Callable[[], float] = trio.current_time  # stamps Poll.started_at, as the real client does
    _faults: dict[str, list[Fault]] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1000))

    # ------------------------------------------------------------ test controls
    def inject(self, command: str, fault: Fault, times: int = 1) -> None:
        """The next ``times`` runs of ``command`` (one of COMMANDS) meet ``fault``."""
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        self._faults.setdefault(command, []).extend([fault] * times)

    def advance(self, seconds: float) -> None:
        """Time passes on the cluster: finished jobs older than MinJobAge are purged."""
        self.time += seconds
        for job in [j for j in self.jobs.values() if j.code == "CG" and self.time - j.cancelled >= self.kill_wait]:
            self._end(job, "CA")
        for jobid in [j.jobid for j in self.jobs.values() if j.ended is not None and self.time - j.ended >= self.min_job_age]:
            del self.jobs[jobid]

    def start(self, jobid: str, nodes: tuple[str, ...] = ()) -> None:
        """The job runs, on ``nodes`` if given (else the first nodes of the cluster)."""
        job = self.jobs[jobid]
        if job.code != "PD" or job.held:
            raise ValueError(f"job {jobid} cannot start from {job.code}{' (held)' if job.held else ''}")
        job.code, job.reason, job.started = "R", "None", self.time
        job.nodes = nodes or self.nodes[: max(1, min(job.nodes_wanted, len(self.nodes)))]
        self.files[jobid] = self.wall()  # its script writes its output, its tree, then its rc file

    def requeue(self, jobid: str) -> None:
        """Slurm put a running job back in the queue (node failure, preemption, ``scontrol requeue``)."""
        job = self.jobs[jobid]
        if job.code != "R":
            raise ValueError(f"job {jobid} is not running ({job.code})")
        job.code, job.reason, job.nodes, job.started = "PD", "BeginTime", (), None

    def finish(self, jobid: str, rc: int = 0) -> None:
        """Task 0 ends with ``rc``: the job writes its exit-code file and completes (or fails)."""
        job = self.jobs[jobid]
        if job.code != "R":
            raise ValueError(f"job {jobid} is not running ({job.code})")
        job.rc = rc
        job.output += f"job {jobid} ran on {','.join(job.nodes)}\n"
        self._end(job, "CD" if rc == 0 else "F")

    def node_fail(self, jobid: str) -> None:
        """The node died under a running job: no exit-code file, Slurm says NODE_FAIL."""
        self._end(self.jobs[jobid], "NF")

    def active(self) -> dict[str, SimJob]:
        """Jobs that are pending or running now (not finished, not purged)."""
        return {j.jobid: j for j in self.jobs.values() if not j.finished}

    def _end(self, job: SimJob, code: str) -> None:
        job.code, job.ended, job.reason = code, self.time, "None"
        self.accounted[job.jobid] = job

    # ------------------------------------------------------------ command plumbing
    async def _command(self, name: str) -> Fault | None:
        """Count the command, wait its latency, and apply the fault planned for it, if any."""
        self.commands[name] += 1
        self.in_flight[name] += 1
        self.most_in_flight[name] = max(self.most_in_flight[name], self.in_flight[name])
        try:
            return await self._run_command(name)
        finally:
            self.in_flight[name] -= 1

    async def _run_command(self, name: str) -> Fault | None:
        if not self.link_up:
            raise ClusterUnavailable("SSH to simulated login node failed: link down")
        planned = self._faults.get(name)
        fault = planned.pop(0) if planned else None
        if fault is Fault.UNAVAILABLE:
            raise ClusterUnavailable("SSH to simulated login node failed: connection lost")
        if fault is Fault.HANG:
            await trio.sleep(self.command_timeout)
            raise ClusterUnavailable(f"command timed out after {self.command_timeout:g}s on the simulated login node")
        if fault is Fault.FAIL:
            await trio.sleep(self.latency)
            raise SlurmUnreachable(f"{name}: slurmctld did not answer: Unable to contact slurm controller (connect failure)")
        if fault is Fault.REFUSED:
            await trio.sleep(self.latency)
            raise CommandFailed(name, 1, f"{name}: error: Invalid partition name specified")
        await trio.sleep(self.latency)
        return fault

    @staticmethod
    def _lost(fault: Fault | None) -> None:
        if fault is Fault.DROP_AFTER:
            raise ClusterUnavailable("SSH to simulated login node failed: connection lost")

    def _view(self, job: SimJob) -> SlurmJob:
        """The job's squeue line; the same object as last time when the line would read the same,
        as the real client's parser hands out for an unchanged line."""
        end = job.ended if job.ended is not None else self.time
        elapsed = int(end - job.started) if job.started is not None else 0
        reason = "JobHeldUser" if job.held else job.reason
        shown = job.shown
        if (shown is not None and shown.code == job.code and shown.elapsed == elapsed and shown.nodes == job.nodes
                and shown.reason == reason):
            return shown
        job.shown = SlurmJob(jobid=job.jobid, name=job.slurm_name[len(JOB_PREFIX):], code=job.code, elapsed=elapsed,
                             nodes=job.nodes, reason=reason, comment=job.comment, user=job.user)
        return job.shown

    def _visible(self) -> dict[str, SlurmJob]:
        return {jobid: self._view(j) for jobid, j in self.jobs.items() if j.slurm_name.startswith(JOB_PREFIX)}

    # ------------------------------------------------------------ the SlurmBackend interface
    @property
    def service_user(self) -> str:
        return self.user

    async def preflight(self) -> ClusterInfo:
        await self._command("ping")
        job_comp = "jobcomp/filetxt" if self.accounting == "jobcomp" else "jobcomp/none"
        storage = "accounting_storage/slurmdbd" if self.accounting == "sacct" else "accounting_storage/none"
        return ClusterInfo(version="slurm 22.05.8 (simulated)", home=self.scratch_dir,
                           config={"MinJobAge": f"{int(self.min_job_age)} sec", "SelectType": "select/cons_tres",
                                   "JobCompType": job_comp, "AccountingStorageType": storage})

    async def ping(self) -> None:
        await self._command("ping")

    available = True  # the cluster's files too (ClusterFiles)

    async def prepare(self, home: str = "") -> None:
        return None

    async def rc_files(self, jobids: Sequence[str]) -> dict[str, int | None]:
        return {j: self._facts(j).rc_file for j in jobids}

    async def submit(self, submission: Submission, as_user: UserIdentity | None = None) -> str:
        fault = await self._command("sbatch")
        args = dict(a[2:].split("=", 1) for a in submission.sbatch_args if a.startswith("--") and "=" in a)
        jobid = str(next(self._ids))
        req = submission.request
        self.jobs[jobid] = SimJob(jobid=jobid, slurm_name=args.get("job-name", ""), comment=args.get("comment", ""),
                                  nodes_wanted=req.nodes, held=req.held, submitted=self.time,
                                  user=as_user.user if as_user else "")
        self._lost(fault)
        if fault is Fault.GARBAGE:
            raise AnswerLost("sbatch printed no job id: 'sbatch: error: Batch job submission failed'")
        return jobid

    async def poll(self) -> Poll:
        started = self.clock()
        fault = await self._command("squeue")
        # where the real client parses: off the trio thread (benchmarks); in line for deterministic tests
        jobs = await trio.to_thread.run_sync(self._visible) if self.view_in_thread else self._visible()
        self._lost(fault)
        if fault is Fault.GARBAGE and jobs:  # one line the parser skips: the answer is partial
            jobs.pop(min(jobs))
            return Poll(started_at=started, jobs=jobs, complete=False)
        return Poll(started_at=started, jobs=jobs)

    async def find_by_name(self, name: str) -> list[SlurmJob]:
        fault = await self._command("squeue")
        self._lost(fault)
        found = [v for v in self._visible().values() if v.name == name]
        return sorted(found, key=lambda j: int(j.jobid))

    async def inspect(self, jobid: str) -> JobFacts:
        fault = await self._command("inspect")
        self._lost(fault)
        if fault is Fault.GARBAGE:
            raise CommandFailed("inspect", 0, f"unreadable squeue line for job {jobid}")
        return self._facts(jobid)

    async def inspect_many(self, jobids: Sequence[str]) -> dict[str, JobFacts]:
        """One command for many jobs, as the real client's (counted as one ``inspect``)."""
        if not jobids:
            return {}
        fault = await self._command("inspect")
        self._lost(fault)
        if fault is Fault.GARBAGE:
            raise CommandFailed("inspect", 0, f"unreadable squeue line among jobs {','.join(jobids)}")
        return {jobid: self._facts(jobid) for jobid in jobids}

    def _facts(self, jobid: str) -> JobFacts:
        job = self.jobs.get(jobid)
        record = self.accounted.get(jobid) if self.accounting != "none" else None
        rc_job = job or self.accounted.get(jobid)
        return JobFacts(
            jobid=jobid,
            squeue=self._visible().get(jobid),
            rc_file=rc_job.rc if rc_job else None,
            accounting=AccountingRecord(
                jobid=jobid, name=record.slurm_name[len(JOB_PREFIX):], code=record.code,
                exit_code=record.rc if record.rc is not None else (0 if record.code == "CD" else 1),
                elapsed=int((record.ended or 0) - (record.started or record.ended or 0)), nodes=record.nodes,
            ) if record else None,
        )

    async def cancel(self, jobid: str, name: str) -> None:
        fault = await self._command("scancel")
        job = self.jobs.get(jobid)
        if job is None or job.finished:
            raise CommandFailed("scancel", 1, f"scancel: error: Kill job error on job id {jobid}: Invalid job id specified")
        if job.slurm_name == JOB_PREFIX + name and job.code != "CG":  # scancel -n: a wrong name cancels nothing
            if job.code == "R" and self.kill_wait > 0:  # its processes are signalled; it ends after KillWait
                job.code, job.cancelled = "CG", self.time
            else:
                self._end(job, "CA")
        self._lost(fault)

    async def release(self, jobid: str) -> None:
        fault = await self._command("scontrol")
        job = self.jobs.get(jobid)
        if job is None:
            raise CommandFailed("scontrol", 1, "slurm_suspend error: Invalid job id specified")
        if job.finished:
            raise CommandFailed("scontrol", 1, "slurm_suspend error: Job has already finished")
        job.held = False
        self._lost(fault)

    async def node_address(self, node: str) -> str:
        fault = await self._command("scontrol")
        self._lost(fault)
        if node not in self.nodes:
            raise CommandFailed("scontrol show node", 1, f"Node {node} not found")
        # every simulated node is a host of its own on a private network, as in the test clusters
        # (tests/cluster/up: compute nodes behind the login node); nothing ever connects to it.
        # A test may change a node's address (cloud and power-saved nodes do): node_addresses.
        return self.node_addresses.get(node, f"10.213.0.{11 + self.nodes.index(node)}")

    async def show_job(self, jobid: str) -> str:
        fault = await self._command("scontrol")
        self._lost(fault)
        job = self.jobs.get(jobid)
        if job is None:
            return "slurm_load_jobs error: Invalid job id specified\n"
        return (f"JobId={jobid} JobName={job.slurm_name}\n   JobState={job.code} Reason={job.reason}\n"
                f"   NodeList={','.join(job.nodes) or '(null)'} Comment={job.comment}\n")

    async def tail(self, jobid: str, lines: int = 10_000) -> str | None:
        fault = await self._command("tail")
        self._lost(fault)
        job = self.jobs.get(jobid) or self.accounted.get(jobid)
        if job is None or job.started is None or not job.output:
            return None
        return "".join(job.output.splitlines(keepends=True)[-lines:])

    async def cleanup(self, jobids: Sequence[str]) -> None:
        fault = await self._command("rm")
        for jobid in jobids:
            self.files.pop(jobid, None)
            for job in (self.jobs.get(jobid), self.accounted.get(jobid)):
                if job is not None:
                    job.output, job.rc = "", None
        self._lost(fault)

    async def job_files(self) -> dict[str, float]:
        fault = await self._command("ls")
        self._lost(fault)
        return dict(self.files)

    async def list_dir(self, path: str, details: bool) -> str:
        await self._command("ls")
        return ""

    # ------------------------------------------------------------ for benchmarks
    def populate(self, count: int, *, prefix: str = "bench", running_share: float = 0.5) -> list[SimJob]:
        """``count`` jobs already in Slurm, as if submitted earlier (adoption rebuilds them)."""
        made = []
        for i in range(count):
            jobid = str(next(self._ids))
            job = SimJob(jobid=jobid, slurm_name=f"{JOB_PREFIX}{prefix}-{i}", comment=f"jarvice:{i}",
                         nodes_wanted=1, held=False, submitted=self.time)
            self.jobs[jobid] = job
            if i < math.floor(count * running_share):
                self.start(jobid)
            made.append(job)
        return made

