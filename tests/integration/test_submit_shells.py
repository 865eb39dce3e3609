"""sbatch through kept shells, on the real cluster: fewer sessions for the login node, same jobs.

Each kept shell is one ``sh`` of the SSH user on the login node, fed one batch
program at a time; the tests watch those shells from the login node's side
(``pgrep -u jarvice -x sh``) and the jobs from Slurm's.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator

import pytest
import trio

from adapters import jobscript
from adapters.slurm.client import SlurmClient
from adapters.ssh import SSHClient
from daemon.server import open_ssh, script_environment
from tests.integration.conftest import settings, unique_name
from tests.support.upstream import submit_args


def login_shells() -> set[str]:
    """The SSH user's ``sh`` processes on the login node (this suite runs alone on the test cluster)."""
    found = subprocess.run(["pgrep", "-u", settings().ssh_user, "-x", "sh"], capture_output=True, text=True)
    return set(found.stdout.split())


class Submitter:
    def __init__(self, ssh: SSHClient, client: SlurmClient, tag: str) -> None:
        self.ssh, self.client, self.tag = ssh, client, tag
        self.jobs: dict[str, str] = {}  # name -> job id

    async def submit(self, number: int) -> str:
        conf = settings()
        name = unique_name(f"shells{self.tag}-{number}")  # cancelled jobs of an earlier run stay listed a while
        submission = jobscript.build(submit_args(name, number, "true", held=True), conf.executor,
                                     script_environment(conf))
        self.jobs[name] = jobid = await self.client.submit(submission)
        return jobid

    async def in_slurm(self) -> dict[str, list[str]]:
        """Every job id Slurm holds under each submitted name."""
        return {name: [j.jobid for j in await self.client.find_by_name(name)] for name in self.jobs}


async def submitter(tag: str, max_shells: int) -> AsyncIterator[Submitter]:
    conf = settings()
    async with open_ssh(conf) as ssh:
        client = SlurmClient(ssh, user=conf.ssh_user, scratch_dir=conf.scratch_dir, shells=ssh, max_shells=max_shells)
        await client.preflight()
        s = Submitter(ssh, client, tag)
        try:
            yield s
        finally:
            with trio.CancelScope(shield=True):
                for name, jobid in s.jobs.items():
                    await client.cancel(jobid, name)


@pytest.fixture
async def two_shells() -> AsyncIterator[Submitter]:
    async for s in submitter("k", 2):
        yield s


@pytest.fixture
async def no_shells() -> AsyncIterator[Submitter]:
    async for s in submitter("n", 0):
        yield s


async def test_sequential_submits_share_one_shell_and_open_no_session_each(two_shells: Submitter) -> None:
    before = login_shells()
    await two_shells.submit(1)
    kept = login_shells() - before
    commands = two_shells.ssh.commands
    ids = [await two_shells.submit(n) for n in range(2, 8)]
    assert len(kept) == 1, f"one kept shell expected on the login node, found {kept}"
    assert login_shells() - before == kept  # the same sh took every later job
    assert two_shells.ssh.commands == commands  # no SSH command (session) per job
    held = await two_shells.in_slurm()
    assert sorted(len(v) for v in held.values()) == [1] * 7  # each name exactly once
    assert ids == sorted(ids, key=int) and len(set(ids)) == 6


async def test_a_burst_uses_at_most_the_kept_shells_and_one_off_commands_beyond(two_shells: Submitter) -> None:
    before = login_shells()
    async with trio.open_nursery() as nursery:
        for n in range(20, 44):
            nursery.start_soon(two_shells.submit, n)
    assert 1 <= len(login_shells() - before) <= 2
    held = await two_shells.in_slurm()
    assert len(held) == 24 and all(len(v) == 1 for v in held.values()), held


async def test_a_kept_shell_killed_on_the_login_node_is_replaced_without_an_error(two_shells: Submitter) -> None:
    before = login_shells()
    await two_shells.submit(50)
    (victim,) = login_shells() - before
    subprocess.run(["kill", "-KILL", victim], check=True)
    await trio.sleep(0.3)
    jobid = await two_shells.submit(51)  # found dead before the program was sent: run on a fresh shell
    assert jobid.isdigit()
    replacement = login_shells() - before
    assert len(replacement) == 1 and victim not in replacement
    held = await two_shells.in_slurm()
    assert all(len(v) == 1 for v in held.values()), held


async def test_without_kept_shells_each_sbatch_is_its_own_command(no_shells: Submitter) -> None:
    before = login_shells()
    commands = no_shells.ssh.commands
    for n in range(60, 63):
        await no_shells.submit(n)
    assert no_shells.ssh.commands == commands + 3
    assert login_shells() - before == set()
    held = await no_shells.in_slurm()
    assert all(len(v) == 1 for v in held.values()), held
