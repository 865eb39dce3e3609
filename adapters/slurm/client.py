"""The Slurm commands the daemon runs on the login node, over any CommandRunner.

One method per thing the daemon needs; each builds one command line from
validated or quoted values, runs it once, and parses the answer. The poll is a
single ``squeue`` for all of this user's jobs, whatever the number of jobs.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from adapters.errors import AnswerLost, ClusterUnavailable, CommandFailed, DownstreamError, SlurmUnreachable
from adapters.identity import UserIdentity
from adapters.jobscript import NAME_RE, Submission
from adapters.slurm import parsers
from adapters.slurm.files import SshClusterFiles, check_jobid
from adapters.slurm.parsers import SEP, AccountingRecord, SlurmJob
from adapters.slurm.probe import ProbeFacts, probe
from adapters.ssh import CommandResult, CommandRunner, Shell, ShellEnded, ShellOpener

log = logging.getLogger(__name__)

_ENV = "SLURM_TIME_FORMAT=standard "
# How Slurm's commands say they could not reach slurmctld (22.05 wording, seen on the test
# cluster with slurmctld stopped): no conclusion may be drawn from such an answer.
CONTROLLER_DOWN = re.compile(
    r"Unable to contact slurm controller|Socket timed out|temporarily unavailable|Unexpected message received"
    r"|Zero Bytes were transmitted|Communication connection failure"
)
_MARK = "@@slurm-downstream@@"


@dataclass(frozen=True)
class Poll:
    """One squeue answer. ``started_at`` lets the caller ignore jobs submitted after it began.

    ``complete`` is False when some line could not be read: such a poll still
    updates the jobs it shows, but cannot prove that any other job is gone.
    """

    started_at: float
    jobs: dict[str, SlurmJob]
    complete: bool = True


@dataclass(frozen=True)
class JobFacts:
    """Everything the cluster still knows of one job, from three sources."""

    jobid: str
    squeue: SlurmJob | None = None
    rc_file: int | None = None
    accounting: AccountingRecord | None = None


@dataclass(frozen=True)
class ClusterInfo:
    version: str
    home: str
    config: dict[str, str] = field(default_factory=dict)
    probe: ProbeFacts | None = field(default=None, repr=False)  # everything the start-up probe saw (preflight checks)

    @property
    def min_job_age(self) -> int | None:
        """MinJobAge (Slurm's default when slurm.conf omits it); None when unknown (slurmrestd does not serve it)."""
        if not self.config:
            return None
        age = parsers.min_job_age(self.config)
        return 300 if age is None else age  # Slurm's default


MAX_BATCH = 32  # sbatch calls sent together at most
SUBMIT_STREAMS = 4  # batches on the wire at once: slurmctld takes concurrent sbatch RPCs faster than serial ones
SUBMIT_SHELLS = 2  # kept shells for sbatch at most; batches beyond them run as one-off `sh -s` commands


def command_error(command: str, result: CommandResult) -> DownstreamError:
    """What a failed Slurm command means: slurmctld not answering (nothing known) or a refusal."""
    if CONTROLLER_DOWN.search(result.stderr):
        return SlurmUnreachable(f"{command.split(' ', 1)[0]}: slurmctld did not answer: {result.stderr.strip()[:300]}")
    return CommandFailed(command, result.exit_status, result.stderr)


class _PendingSubmit:
    """One submit waiting for its batch: its job id, or why there is none."""

    def __init__(self, submission: Submission) -> None:
        self.submission = submission
        self.taken = False  # a batch on the wire carries it
        self.settled = trio.Event()
        self.jobid = ""
        self.error: DownstreamError | None = None

    def shell(self, index: int) -> str:
        """Its sbatch as a line of the batch program, the script in a here-document."""
        script = self.submission.batch_script
        delimiter = f"SLURM_DOWNSTREAM_EOF_{index}_{secrets.token_hex(8)}"
        body = script if script.endswith("\n") else script + "\n"
        return f"{self.command} 2>&1 <<'{delimiter}'; echo \"{_MARK}$?\"\n{body}{delimiter}\n"

    @property
    def command(self) -> str:
        return "sbatch " + shlex.join(self.submission.sbatch_args)

    def settle(self, command: str, result: CommandResult) -> None:
        if not result.ok:
            self.fail(command_error(command, result))
            return
        try:
            self.jobid = parsers.parse_sbatch(result.stdout)
        except parsers.ParseError as exc:  # exit 0 without an id: the job may exist; the caller looks it up
            self.error = AnswerLost(str(exc))
        self.settled.set()

    def fail(self, error: DownstreamError) -> None:
        self.error = error
        self.settled.set()


class SlurmClient(SshClusterFiles):
    """Slurm control over SSH; the same login-node shell also serves the cluster's files (its base)."""

    def __init__(self, runner: CommandRunner, *, user: str, scratch_dir: str, accounting: str = "auto",
                 shells: ShellOpener | None = None, max_shells: int = SUBMIT_SHELLS, job_group: str = "",
                 command_timeout: float = 30.0) -> None:
        super().__init__(runner, scratch_dir=scratch_dir, job_group=job_group)
        self.command_timeout = command_timeout  # what one sbatch may take: a batch of n gets n times it
        self.shells = shells if max_shells > 0 else None  # where sbatch runs without a session per job
        self._idle_shells: list[Shell] = []
        self._shells_open = 0
        self._max_shells = max_shells
        self._lines: dict[str, SlurmJob] = {}  # the last poll's squeue lines, parsed (parse_squeue_counting's memo)
        self.user = user
        self.accounting = accounting  # "sacct", "jobcomp" (sacct -c) or "none"; "auto" until preflight
        self._submits: list[_PendingSubmit] = []
        self._submit_slots = trio.Semaphore(SUBMIT_STREAMS)

    def command_error(self, command: str, result: CommandResult) -> DownstreamError:
        return command_error(command, result)

    # ---------------------------------------------------------------- startup
    @property
    def service_user(self) -> str:
        return self.user

    async def preflight(self) -> ClusterInfo:
        """Who am I, which Slurm, how long it keeps finished jobs, how to look them up, and a usable
        scratch dir: one probe (which ``serve`` also judges, so the cluster is asked once), then the jobs' dir."""
        facts = await probe(self.runner, self.scratch_dir)
        for step, command in (("version", "sbatch --version"), ("config", "scontrol show config")):
            answer = facts.step(step)
            if not answer.ok:
                raise command_error(command, CommandResult(answer.rc, "", answer.output))
        await self.prepare(facts.home)
        if self.accounting == "auto":  # what works, not what slurm.conf promises (slurmdbd may be down)
            self.accounting = facts.accounting
        return ClusterInfo(version=facts.step("version").first_line, home=facts.home, config=dict(facts.config),
                           probe=facts)

    # ---------------------------------------------------------------- jobs
    async def submit(self, submission: Submission, as_user: UserIdentity | None = None) -> str:
        """sbatch one job. Submits that arrive while the batches on the wire run go together, as
        one command running each sbatch in turn: one SSH channel and one shell for several jobs.
        Up to SUBMIT_STREAMS batches run at once, since slurmctld serves parallel sbatch faster.
        Every job runs as the SSH user: ``as_user`` is slurmrestd's alone (the daemon never passes it here)."""
        if as_user is not None:
            raise ValueError("the SSH client runs every job as the SSH user")
        pending = _PendingSubmit(submission)
        self._submits.append(pending)
        async with self._submit_slots:
            if not pending.taken:  # else another batch carries it: wait for that one below
                batch, self._submits = self._submits[:MAX_BATCH], self._submits[MAX_BATCH:]
                for one in batch:
                    one.taken = True
                await self._sbatch_batch(batch)
        await pending.settled.wait()
        if pending.error is not None:
            raise pending.error
        return pending.jobid

    async def _sbatch_batch(self, batch: list[_PendingSubmit]) -> None:
        try:
            if len(batch) == 1 and self.shells is None:  # alone: the script on stdin, as a person would run it
                one = batch[0]
                one.settle(one.command, await self._run(one.command, stdin=one.submission.batch_script, check=False))
                return
            output = await self._program("".join(p.shell(i) for i, p in enumerate(batch)), len(batch))
        except BaseException as exc:  # the link, or the cancellation: every job of the batch is in doubt
            for pending in batch:
                pending.fail(exc if isinstance(exc, DownstreamError) else AnswerLost(f"sbatch interrupted: {exc!r}"))
            raise
        parts = output.split(_MARK)
        for i, pending in enumerate(batch):
            if i + 1 >= len(parts):
                pending.fail(AnswerLost("the batched sbatch printed no answer for this job"))
                continue
            status = parts[i + 1].partition("\n")[0].strip()
            answer = parts[i].partition("\n")[2] if i else parts[i]
            rc = int(status) if status.isdigit() else None
            pending.settle("sbatch", CommandResult(rc, answer if rc == 0 else "", answer if rc != 0 else ""))

    async def _program(self, program: str, jobs: int) -> str:
        """Run a batch program in a kept shell when one is free (or may be opened), else as `sh -s`.

        Its sbatch calls run one after the other, so the batch gets each its own deadline: a busy slurmctld
        answering 32 jobs in 2 s each must not put the whole batch in doubt after one command timeout."""
        timeout = self.command_timeout * jobs
        # A shell found gone before the program reached it: the next one, up to a fresh one (every
        # kept shell may be gone after a reconnect).
        for _ in range(self._max_shells + 1):
            shell = await self._take_shell()
            if shell is None:
                return (await self._run("sh -s", stdin=program, timeout=timeout)).stdout
            end = f"{_MARK}end-{secrets.token_hex(8)}"
            try:
                output = await shell.exchange(f"{program}echo '{end}'\n", end=end, timeout=timeout)
            except ShellEnded:
                self._shells_open -= 1  # a failed exchange closes its shell
                continue
            except BaseException:
                self._shells_open -= 1
                raise
            self._idle_shells.append(shell)
            return output
        raise ClusterUnavailable("no shell on the login node lasted long enough to take the program")

    async def _take_shell(self) -> Shell | None:
        if self.shells is None:
            return None
        if self._idle_shells:
            return self._idle_shells.pop()
        if self._shells_open >= self._max_shells:
            return None
        self._shells_open += 1  # counted before the await: concurrent batches respect the limit
        try:
            return await self.shells.open_shell()
        except BaseException:
            self._shells_open -= 1
            raise

    def _squeue(self, extra: str = "") -> str:
        return f"{_ENV}squeue -h -t all -u {shlex.quote(self.user)}{extra} -o {shlex.quote(parsers.SQUEUE_FORMAT)}"

    async def poll(self) -> Poll:
        started = trio.current_time()
        result = await self._run(self._squeue())
        # Off the trio thread: 10,000 lines take ~40 ms of CPU, which would hold every request that long.
        jobs, skipped = await trio.to_thread.run_sync(parsers.parse_squeue_counting, result.stdout, self._lines)
        return Poll(started_at=started, jobs=jobs, complete=not skipped)

    async def ping(self) -> None:
        """Is the login node answering? (``/gc``, the admin page.)"""
        await self._run("true")

    async def find_by_name(self, name: str) -> list[SlurmJob]:
        """Jobs in Slurm carrying this upstream name (for an idempotent submit)."""
        if not NAME_RE.match(name):
            raise ValueError(f"not a job name: {name!r}")
        result = await self._run(self._squeue(f" -n {shlex.quote('jarvice_' + name)}"))
        return sorted(parsers.parse_squeue(result.stdout).values(), key=lambda j: int(j.jobid))

    def _sacct(self, jobid: str) -> str:
        if self.accounting == "none":
            return "true"
        fields = ",".join(parsers.SACCT_FIELDS)
        flag = " -c" if self.accounting == "jobcomp" else ""
        return f"{_ENV}sacct{flag} -n -P -X --delimiter={shlex.quote(SEP)} -j {jobid} -o {fields}"

    async def inspect(self, jobid: str) -> JobFacts:
        """squeue, the job's exit-code file and accounting, in one round trip."""
        return (await self.inspect_many([check_jobid(jobid)]))[jobid]

    async def inspect_many(self, jobids: Sequence[str]) -> dict[str, JobFacts]:
        """``inspect`` for many jobs in one round trip: one squeue, one read of their rc files, one sacct.

        After an outage every job that finished meanwhile has vanished at once: one command per job
        would be a storm of them (and of SSH channels) just when the link comes back."""
        ids = [check_jobid(j) for j in jobids]
        if not ids:
            return {}
        joined = ",".join(ids)
        command = (
            f"{self._squeue(f' -j {joined}')} 2>&1; echo {_MARK} $?; "
            f"{self.rc_command(ids)}; echo {_MARK}; "
            f"{self._sacct(joined)} 2>/dev/null; true"
        )
        result = await self._run(command)
        parts = result.stdout.split(_MARK)
        if len(parts) != 3:
            raise CommandFailed("inspect", result.exit_status, f"unexpected output: {result.stdout[:200]!r}")
        queue, rc_part, acct = parts
        squeue_rc, _, rc_lines = rc_part.strip(" ").partition("\n")
        if squeue_rc.strip() != "0":
            if "Invalid job id" not in queue:  # squeue could not ask slurmctld: nothing is known
                raise ClusterUnavailable(f"squeue failed: {queue.strip()[:300]}")
            queue = ""
        listed, skipped = parsers.parse_squeue_counting(queue)
        if skipped:  # a job printed unreadably is not gone: the batch says nothing certain
            raise CommandFailed("inspect", result.exit_status, f"unreadable squeue line among jobs {joined}")
        rcs = parsers.parse_rc_lines(rc_lines, ids)
        accounting = parsers.parse_sacct(acct.lstrip("\n"))
        return {j: JobFacts(jobid=j, squeue=listed.get(j), rc_file=rcs.get(j), accounting=accounting.get(j)) for j in ids}

    async def cancel(self, jobid: str, name: str) -> None:
        """``scancel`` filtered by our job name, so a wrong id cannot cancel a foreign job."""
        await self._run(f"scancel -n {shlex.quote('jarvice_' + name)} {check_jobid(jobid)}")

    async def release(self, jobid: str) -> None:
        await self._run(f"scontrol release {check_jobid(jobid)}")

    async def node_address(self, node: str) -> str:
        """The address Slurm knows a node by (NodeAddr), for reaching a job's web service."""
        if not parsers.NODE_NAME_RE.fullmatch(node):
            raise ValueError(f"not a node name: {node!r}")
        result = await self._run(f"scontrol show node {shlex.quote(node)}")
        address = parsers.parse_node_address(result.stdout)
        if address is None:
            raise CommandFailed("scontrol show node", result.exit_status, f"no NodeAddr for {node}")
        return address

    async def show_job(self, jobid: str) -> str:
        result = await self._run(f"scontrol show job {check_jobid(jobid)}", check=False)
        return result.stdout if result.ok else result.stderr
