"""Interactive jobs on the simulated Slurm: their own ports, and no proxy again once terminated.

After ``scancel`` a running job stays ``CG`` (completing) until its processes are
gone, up to Slurm's KillWait (30 s by default), and a web desktop that ignores
SIGTERM keeps listening all that while. The user's proxy goes at ``/terminate``
and must not come back then. Run on the simulated Slurm (which models KillWait)
with an in-memory proxy backend at the ``ProxyBackend`` boundary, which records
what the daemon asks of it.
"""

from __future__ import annotations

import trio
import trio.testing

from adapters.jobscript import ScriptEnvironment
from adapters.slurm.twin import SimulatedSlurm
from daemon.service import Downstream
from statemachines.job import JobState
from statemachines.proxy import ProxyPhase
from tests.support.fake_proxies import RecordingProxies
from tests.support.upstream import submit_args


async def test_a_terminated_job_gets_no_proxy_while_slurm_is_still_ending_it(
        autojump_clock: trio.testing.MockClock) -> None:
    twin = SimulatedSlurm(kill_wait=30)
    proxies = RecordingProxies()
    downstream = Downstream(slurm=twin, script_env=ScriptEnvironment(scratch_dir="/tmp/twin"), poll_interval=10**6,
                            min_poll_gap=0)
    downstream.proxies = proxies

    async def poll() -> None:
        polls = downstream.status.polls
        downstream.wake()
        while downstream.status.polls == polls:
            await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()  # and the proxy tending that a poll starts

    async with trio.open_nursery() as nursery:
        await nursery.start(downstream.run)
        await poll()
        jobid, _ = await downstream.submit(submit_args("desktop", 7, "sleep 600", interactive=True))
        twin.start(jobid)
        await poll()
        job = downstream.book.get(jobid)
        assert job.state is JobState.PROXYING and proxies.calls == [("start", "7")]
        assert downstream.url_of("desktop", jobid) == "http://proxy/7/"

        assert await downstream.terminate({"name": "desktop", "number": 7, "jobid": jobid})
        assert proxies.calls[-1] == ("stop", "7") and not proxies.serving
        assert job.proxy.state == ProxyPhase.CLOSED
        assert await downstream.terminate({"name": "desktop", "number": 7, "jobid": jobid})  # twice: closed once
        assert downstream.interactive.machine.rejected == 0
        for _ in range(3):  # Slurm still shows it, completing: the service may still answer
            twin.advance(5)
            await poll()
            assert twin.jobs[jobid].code == "CG"
            assert proxies.calls[-1] == ("stop", "7"), f"the proxy came back after /terminate: {proxies.calls}"
            assert downstream.url_of("desktop", jobid) == ""
        twin.advance(30)
        await poll()
        assert job.state is JobState.CANCELLED and job.proxy.state == ProxyPhase.CLOSED
        assert ("start", "7") not in proxies.calls[1:]
        nursery.cancel_scope.cancel()


async def test_a_repeated_interactive_submit_answers_the_script_slurm_runs(
        autojump_clock: trio.testing.MockClock) -> None:
    """The job script carries the job's own service port; upstream asking again gets that very script."""
    twin = SimulatedSlurm()
    env = ScriptEnvironment(scratch_dir="/tmp/twin", service_port=5000)
    downstream = Downstream(slurm=twin, script_env=env, poll_interval=10**6, min_poll_gap=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(downstream.run)
        while not downstream.ready:
            await trio.sleep(0.01)
        args = submit_args("desktop", 8, "sleep 600", interactive=True)
        jobid, fscript = await downstream.submit(args)
        port = 5000 + downstream.book.get(jobid).port_index
        assert f"JARVICE_SERVICE_PORT={port}" in fscript
        assert await downstream.submit(args) == [jobid, fscript]
        nursery.cancel_scope.cancel()
