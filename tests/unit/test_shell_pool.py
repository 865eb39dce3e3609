"""SlurmClient's kept-shell pool, with fake shells at the Shell boundary (the real ones: tests/integration).

A shell found gone before a program reached it (ShellEnded) is never fatal:
every kept shell can be gone at once (a reconnect ends them all), and the
submit must still go through a fresh one rather than fail.
"""

from __future__ import annotations

import pytest
import trio

from adapters.errors import AnswerLost
from adapters.jobscript import ScriptEnvironment, build
from adapters.slurm.client import _MARK, SlurmClient
from adapters.ssh import ShellEnded
from tests.support.upstream import submit_args

ENV = ScriptEnvironment(scratch_dir="/scratch/jarvice")


class FakeShell:
    """Answers a batch program as sh would: for each sbatch in it, a job id, then the exit-status mark."""

    def __init__(self, first_jobid: int) -> None:
        self.jobids = iter(range(first_jobid, first_jobid + 100))
        self.gone = False  # ended on the login node: found so before the program is sent
        self.dies_mid_program = False
        self.programs: list[str] = []
        self.timeouts: list[tuple[int, float | None]] = []  # (sbatch calls in the program, its deadline)

    async def exchange(self, program: str, *, end: str, timeout: float | None = None) -> str:
        self.timeouts.append((program.count("sbatch "), timeout))
        await trio.sleep(0.01)
        if self.gone:
            raise ShellEnded("the shell on the login node has ended")
        self.programs.append(program)
        if self.dies_mid_program:
            raise AnswerLost("the shell on the login node ended before answering")
        return "".join(f"{next(self.jobids)}\n{_MARK}0\n" for _ in range(program.count("\nsbatch ") + 1))

    async def aclose(self) -> None:
        pass


class Opener:
    def __init__(self) -> None:
        self.opened: list[FakeShell] = []

    async def open_shell(self) -> FakeShell:
        shell = FakeShell(100 * (1 + len(self.opened)))
        self.opened.append(shell)
        return shell


def submission(number: int):  # noqa: ANN201 - adapters.jobscript.Submission
    return build(submit_args(f"20261123-pool-alice_{number}", number, "true", held=True), "singularity", ENV)


async def two_kept_shells() -> tuple[SlurmClient, Opener]:
    opener = Opener()
    client = SlurmClient(None, user="jarvice", scratch_dir="/scratch/jarvice", shells=opener, max_shells=2)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:  # the second while the first is on the wire: a second shell
        nursery.start_soon(client.submit, submission(1))
        await trio.sleep(0.001)
        nursery.start_soon(client.submit, submission(2))
    assert len(opener.opened) == 2
    return client, opener


async def test_every_kept_shell_gone_still_submits_on_a_fresh_one() -> None:
    client, opener = await two_kept_shells()
    for shell in opener.opened:
        shell.gone = True  # e.g. the SSH connection was re-established meanwhile
    assert await client.submit(submission(3)) == "300"
    assert len(opener.opened) == 3 and len(opener.opened[2].programs) == 1
    assert not any(shell.programs[1:] for shell in opener.opened[:2])  # nothing ran on a gone shell


async def test_a_shell_lost_after_the_program_was_sent_is_not_retried_elsewhere() -> None:
    client, opener = await two_kept_shells()
    for shell in opener.opened:
        shell.dies_mid_program = True
    with pytest.raises(AnswerLost):  # the job may exist: the caller looks it up by name
        await client.submit(submission(3))
    assert sum(len(s.programs) for s in opener.opened) == 3  # sent once, to one shell only
    assert len(opener.opened) == 2


async def test_each_sbatch_of_a_batch_gets_its_own_deadline() -> None:
    """A batch of n sbatch calls, run one after the other, may take n command timeouts: with one for the
    whole batch, a slow slurmctld put every job of a large batch in doubt (a lost answer each)."""
    opener = Opener()
    client = SlurmClient(None, user="jarvice", scratch_dir="/scratch/jarvice", shells=opener, max_shells=2,  # type: ignore[arg-type]
                         command_timeout=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.submit, submission(1))
        await trio.sleep(0.001)  # the first on the wire: the next four go as one batch
        for number in range(2, 6):
            nursery.start_soon(client.submit, submission(number))
    timeouts = [t for shell in opener.opened for t in shell.timeouts]
    assert (4, 40) in timeouts
    assert all(deadline == 10 * calls for calls, deadline in timeouts)
