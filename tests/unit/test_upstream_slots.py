"""Upstream's calls never take the poller's SSH channel.

The SSH client allows ``JARVICE_SLURM_SSH_MAX_SESSIONS`` channels; the daemon lets
upstream's commands (tail, events, pvcls, submits...) hold one less, so a burst of slow
``tail`` calls cannot keep the poll waiting until every answer goes stale. Run on the
simulated Slurm with a trio clock that jumps (each command takes 1 s of its time).
"""

from __future__ import annotations

import trio
import trio.testing

from adapters.jobscript import ScriptEnvironment
from adapters.slurm.twin import SimulatedSlurm
from daemon.service import Downstream, NotFound
from tests.support.upstream import submit_args


async def test_slow_upstream_commands_leave_the_poller_a_channel(autojump_clock: trio.testing.MockClock) -> None:
    twin = SimulatedSlurm(latency=1.0)
    downstream = Downstream(slurm=twin, script_env=ScriptEnvironment(scratch_dir="/tmp/twin"), poll_interval=1000,
                            upstream_sessions=3)

    async def tail(jobid: str) -> None:
        try:
            await downstream.tail("slow", jobid, 10)
        except NotFound:
            pass  # no output yet: the command ran all the same

    async with trio.open_nursery() as nursery:
        await nursery.start(downstream.run)
        with trio.fail_after(10):
            while not downstream.ready:
                await trio.sleep(0.1)
        jobid, _ = await downstream.submit(submit_args("slow", 1, "true"))  # only a tracked job's output is shown
        await trio.sleep(5)  # and the poll its submit asked for is over
        for _ in range(12):
            nursery.start_soon(tail, jobid)
        await trio.sleep(0.1)
        polls = downstream.status.polls
        downstream.wake()
        await trio.sleep(2)  # one poll's worth of latency (and the wake-up gap)
        assert downstream.status.polls == polls + 1, "the poll waited behind upstream's commands"
        assert twin.in_flight["tail"] == 3, "upstream's commands were not held to their share of channels"
        await trio.sleep(10)
        assert twin.commands["tail"] == 12 and twin.most_in_flight["tail"] == 3
        nursery.cancel_scope.cancel()
