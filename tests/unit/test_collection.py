"""Collection on the simulated Slurm: what /exitstatus and /gc remove from the shared scratch dir.

JARVICE's script makes a per-job tree under ``.jarvice/jobs/<jobid>`` besides the output,
rc file and script; the reference removes it at /exitstatus. Shared scratch fills up job
after job when nothing removes them, so: /exitstatus removes a job's files (and a removal
that fails is retried at the next /gc, across restarts too), and /gc sweeps files of jobs
nobody will collect, never those of a job Slurm still lists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from adapters.jobscript import ScriptEnvironment
from adapters.journal import Journal
from adapters.slurm.twin import Fault, SimulatedSlurm
from daemon.service import Downstream
from tests.support.upstream import submit_args

DAY = 86400.0


class World:
    """A daemon on the twin, with a wall clock the test moves (file ages, outcome ages); trio time autojumps
    (each test asks for ``autojump_clock`` itself: pytest-trio takes the clock from the test's own arguments)."""

    def __init__(self, journal: Journal, twin: SimulatedSlurm | None = None) -> None:
        self.now = 1_800_000_000.0
        self.twin = twin or SimulatedSlurm(min_job_age=10, wall=lambda: self.now)
        self.downstream = Downstream(slurm=self.twin, script_env=ScriptEnvironment(scratch_dir="/tmp/twin"),
                                     journal=journal, wall=lambda: self.now, poll_interval=10**6, min_poll_gap=0,
                                     gc_age=7 * DAY)

    async def poll(self) -> None:
        polls = self.downstream.status.polls
        self.downstream.wake()
        while self.downstream.status.polls == polls:
            await trio.sleep(0.01)

    async def finished_job(self, name: str, number: int, rc: int = 0) -> str:
        while not self.downstream.ready:
            await trio.sleep(0.01)
        jobid, _ = await self.downstream.submit(submit_args(name, number, "true"))
        self.twin.start(jobid)
        self.twin.finish(jobid, rc)
        await self.poll()
        return jobid

    async def exitstatus(self, name: str, number: int, jobid: str) -> list:
        return await self.downstream.exitstatus({"name": name, "number": number, "jobid": jobid})


@pytest.fixture
async def world(nursery: trio.Nursery) -> AsyncIterator[World]:
    w = World(Journal())
    await nursery.start(w.downstream.run)
    yield w


async def test_exitstatus_removes_the_jobs_files(world: World, autojump_clock: trio.testing.MockClock) -> None:
    jobid = await world.finished_job("done", 1)
    assert jobid in world.twin.files
    assert (await world.exitstatus("done", 1, jobid))[0] == 0
    assert jobid not in world.twin.files
    assert (await world.exitstatus("done", 1, jobid))[0] == 0  # idempotent: same answer, nothing to remove


async def test_a_failed_removal_is_retried_at_the_next_gc(world: World, autojump_clock: trio.testing.MockClock) -> None:
    jobid = await world.finished_job("stuck", 2)
    world.twin.inject("rm", Fault.FAIL)
    assert (await world.exitstatus("stuck", 2, jobid))[0] == 0  # the answer does not wait for the files
    assert jobid in world.twin.files and world.downstream.journal.cleanups() == [jobid]
    assert await world.downstream.gc()
    assert jobid not in world.twin.files and world.downstream.journal.cleanups() == []


async def test_a_failed_removal_survives_a_restart(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sqlite3")
    first = World(Journal(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(first.downstream.run)
        jobid = await first.finished_job("restart", 3)
        first.twin.inject("rm", Fault.UNAVAILABLE)
        await first.exitstatus("restart", 3, jobid)
        nursery.cancel_scope.cancel()
    first.downstream.journal.close()
    second = World(Journal(path), twin=first.twin)  # the daemon restarted; the cluster did not
    async with trio.open_nursery() as nursery:
        await nursery.start(second.downstream.run)
        await second.poll()
        assert jobid in second.twin.files
        assert await second.downstream.gc()
        assert jobid not in second.twin.files
        nursery.cancel_scope.cancel()


async def test_gc_sweeps_old_orphans_not_young_or_listed_ones(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    await world.poll()
    running, _ = await world.downstream.submit(submit_args("still-running", 4, "sleep 10000000"))
    world.twin.start(running)
    foreign = "777"  # a job under our prefix that this daemon does not track (another deployment's), listed by Slurm
    world.twin.jobs[foreign] = type(world.twin.jobs[running])(jobid=foreign, slurm_name="jarvice_staging-x", comment="",
                                                              nodes_wanted=1, held=False, submitted=0)
    world.twin.files.update({"500": world.now, foreign: world.now})  # "500": gone from Slurm long ago
    await world.poll()
    world.now += 8 * DAY
    world.twin.files["501"] = world.now - DAY  # an orphan, but a young one
    await world.poll()
    assert await world.downstream.gc()
    assert "500" not in world.twin.files
    assert {"501", running, foreign} <= set(world.twin.files)


async def test_gc_forgets_finished_jobs_upstream_never_collected(world: World, autojump_clock: trio.testing.MockClock) -> None:
    old = await world.finished_job("never-asked", 5, rc=1)
    world.now += 8 * DAY
    young = await world.finished_job("asked-later", 6)
    world.twin.advance(60)  # both purged from Slurm: only the daemon's outcome holds them
    await world.poll()
    assert await world.downstream.gc()
    assert world.downstream.book.get(old) is None and old not in world.twin.files
    assert [o.jobid for o in world.downstream.journal.outcomes()] == [young]
    assert (await world.exitstatus("asked-later", 6, young))[0] == 0


async def test_gc_sweeps_nothing_from_a_stale_snapshot(world: World, autojump_clock: trio.testing.MockClock) -> None:
    world.downstream.staleness = 10
    world.twin.files["600"] = world.now - 30 * DAY
    world.twin.link_up = False
    world.downstream.wake()
    await trio.sleep(60)  # polls fail: what Slurm lists is unknown
    world.twin.link_up = True
    assert await world.downstream.gc()  # the cluster answers again, but no poll has confirmed the list yet
    assert "600" in world.twin.files
    await world.poll()
    assert await world.downstream.gc()
    assert "600" not in world.twin.files
