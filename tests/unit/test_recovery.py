"""After an outage longer than MinJobAge, the jobs that ended meanwhile are resolved in batches.

Every one of them has vanished from squeue at once when the link returns; one inspect command
(squeue, rc file, sacct) per job was a storm of commands and SSH channels just then. Driven on the
simulated Slurm, which counts commands; trio time autojumps.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from adapters.errors import ClusterUnavailable
from daemon.service import RESOLVE_BATCH
from statemachines.job import JobState
from tests.support.daemon_world import World


async def test_jobs_that_ended_during_an_outage_are_resolved_in_a_few_batched_commands(
        autojump_clock: trio.testing.MockClock) -> None:
    world = World()
    count = RESOLVE_BATCH + 50
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        jobids = [await world.submitted(f"batch-{n}", n, interactive=False) for n in range(1, count + 1)]
        for jobid in jobids:
            world.twin.start(jobid)
        await world.poll()
        world.twin.link_up = False
        for n, jobid in enumerate(jobids):
            world.twin.finish(jobid, n % 3)
        world.twin.advance(3600)  # longer than MinJobAge: purged from squeue before any poll saw them end
        world.twin.link_up = True
        before = world.twin.commands["inspect"]
        await world.poll()
        await trio.sleep(1)
        assert world.twin.commands["inspect"] - before == 2  # ceil(150 / 100), not one per job
        states = {world.downstream.book.get(j).state for j in jobids}
        assert states == {JobState.COMPLETED, JobState.FAILED}
        answer = await world.downstream.exitstatus({"name": "batch-2", "number": 2, "jobid": jobids[1]})
        assert answer[0] == 1
        nursery.cancel_scope.cancel()


async def test_the_poller_is_unhealthy_once_no_poll_succeeded_for_the_staleness_limit(
        autojump_clock: trio.testing.MockClock) -> None:
    """What the Lease holder asks before renewing (a leader that cannot poll hands over)."""
    world = World(staleness=10, poll_interval=1)
    async with trio.open_nursery() as nursery:
        assert world.downstream.healthy()  # not polling yet: nothing to judge
        await nursery.start(world.downstream.run)
        world.twin.link_up = False  # from the start: a new leader that cannot reach Slurm
        await trio.sleep(5)
        assert world.downstream.healthy()  # within the limit: it may just be slow
        await trio.sleep(10)
        assert not world.downstream.healthy()
        world.twin.link_up = True
        await trio.sleep(2)
        assert world.downstream.healthy()
        world.downstream.stand_by()
        assert world.downstream.healthy()  # standing by: judged again from its next term
        nursery.cancel_scope.cancel()


async def test_a_slow_poll_is_not_an_outage(autojump_clock: trio.testing.MockClock) -> None:
    """slurmrestd lists 9,500 jobs in 5-10 s (bench rest): the answers stay fresh while polls take that long,
    instead of a 503 after each 10 s; a poller that stops for good is still found stale."""
    from adapters.slurm.twin import SimulatedSlurm

    world = World(twin=SimulatedSlurm(min_job_age=10, latency=8), poll_interval=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        while not world.downstream.ready:
            await trio.sleep(0.5)
        for _ in range(40):  # 20 s: polls of 8 s each, one after the other
            world.downstream.require_fresh()
            await trio.sleep(0.5)
        assert world.downstream.stale_after() >= 24
        world.twin.link_up = False
        await trio.sleep(30)
        with pytest.raises(ClusterUnavailable):
            world.downstream.require_fresh()
        nursery.cancel_scope.cancel()
