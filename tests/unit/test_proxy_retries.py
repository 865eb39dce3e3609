"""Interactive jobs' proxies heal: blips are waited out, hopeless proxies stop costing, requeued jobs move.

Before: a transient failure (the Kubernetes API or SSH unreachable for a moment) counted towards
a three-strike limit, so a job's URL died for ever after three blips; a proxy the backend gave up
on (crash loop, image pull back-off) was never counted and was started again on every poll; a job
Slurm requeued kept its URL while pending and a proxy aimed at its old node; a node's address was
cached for ever; probes ran one job after the other; and a service that never answered left no
trace for admins. Driven on the simulated Slurm with an in-memory proxy backend; time autojumps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from adapters.errors import ClusterUnavailable
from adapters.proxy.base import ProxyState, ProxyStatus
from daemon.interactive import PROBE_LIMIT
from statemachines.job import JobState
from statemachines.proxy import PROXY_RETRIES, SILENT_PROBES, ProxyPhase
from tests.support.daemon_world import FakeTunnels, World

CRASH_LOOP = ProxyStatus(ProxyState.FAILED, error="CrashLoopBackOff: back-off 5m0s restarting failed container")


@pytest.fixture
async def world(nursery: trio.Nursery) -> AsyncIterator[World]:
    w = World()
    await nursery.start(w.downstream.run)
    yield w


def starts(world: World, key: str) -> int:
    return world.proxies.calls.count(("start", key))


async def test_transient_proxy_failures_are_waited_out_however_many(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    world.proxies.start_error["1"] = ClusterUnavailable("Kubernetes API: connection refused")
    jobid = await world.running_job("desktop", 1)
    for _ in range(5):  # a burst of polls right after the blip: no API call for each
        await world.poll()
    assert starts(world, "1") == 1
    life = world.downstream.book.get(jobid).proxy
    assert life.state == ProxyPhase.BACKING_OFF and life.failures == 0  # never held against the job
    for _ in range(2 * PROXY_RETRIES):  # blip after blip, each retried after its backoff
        await trio.sleep(120)
        await world.poll()
    assert starts(world, "1") == 1 + 2 * PROXY_RETRIES
    del world.proxies.start_error["1"]
    await trio.sleep(120)
    await world.poll()
    assert world.downstream.book.get(jobid).state is JobState.PROXYING
    assert world.downstream.url_of("desktop", jobid) == "http://proxy/1/"
    assert (life.state, life.attempts, life.failures, life.retry_at) == (ProxyPhase.SERVING, 0, 0, 0.0)


async def test_a_proxy_the_backend_gave_up_on_is_retried_a_few_times_then_left_alone(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    world.proxies.gave_up["2"] = CRASH_LOOP
    jobid = await world.running_job("desktop", 2)
    for _ in range(20):
        await trio.sleep(120)
        await world.poll()
    job = world.downstream.book.get(jobid)
    assert starts(world, "2") == PROXY_RETRIES
    assert job.proxy.state == ProxyPhase.GIVEN_UP and job.proxy.failures == PROXY_RETRIES
    assert "CrashLoopBackOff" in job.last_error and f"{PROXY_RETRIES}/{PROXY_RETRIES}" in job.last_error
    assert world.downstream.url_of("desktop", jobid) == ""


async def test_serving_forgives_earlier_failures(world: World, autojump_clock: trio.testing.MockClock) -> None:
    world.proxies.gave_up["3"] = CRASH_LOOP
    jobid = await world.running_job("desktop", 3)
    for _ in range(PROXY_RETRIES - 1):
        await trio.sleep(120)
        await world.poll()
    del world.proxies.gave_up["3"]
    await trio.sleep(120)
    await world.poll()
    assert world.downstream.url_of("desktop", jobid) == "http://proxy/3/"
    assert world.downstream.book.get(jobid).proxy.failures == 0
    world.proxies.gave_up["3"] = CRASH_LOOP  # it crashes again later: a fresh set of retries
    before = starts(world, "3")
    for _ in range(20):
        await trio.sleep(120)
        await world.poll()
    # the crash is the first strike of a fresh count: two more starts, then it gives up
    assert starts(world, "3") - before == PROXY_RETRIES - 1
    assert f"{PROXY_RETRIES}/{PROXY_RETRIES}" in world.downstream.book.get(jobid).last_error


async def test_a_requeued_job_loses_its_url_and_gets_a_proxy_aimed_at_its_new_node(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    world.twin.node_addresses.update({"node1": "10.0.0.1", "node2": "10.0.0.2"})
    jobid = await world.running_job("desktop", 4, nodes=("node1",))
    assert world.proxies.serving["4"].host == "10.0.0.1"
    world.twin.requeue(jobid)
    await world.poll()
    assert world.downstream.url_of("desktop", jobid) == ""  # while it pends again, no URL to a dead service
    assert world.downstream.book.get(jobid).proxy.state == ProxyPhase.IDLE
    world.twin.start(jobid, ("node2",))
    await world.poll()
    assert world.proxies.serving["4"].host == "10.0.0.2"
    assert world.downstream.url_of("desktop", jobid) == "http://proxy/4/"


async def test_a_nodes_new_address_is_read_when_a_job_starts_there(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    world.twin.node_addresses["node1"] = "10.0.0.1"
    first = await world.running_job("desktop", 5, nodes=("node1",))
    world.twin.finish(first)
    await world.poll()
    world.twin.node_addresses["node1"] = "10.0.0.9"  # a cloud node came back with a new address
    await world.running_job("desktop-again", 6, nodes=("node1",))
    assert world.proxies.serving["6"].host == "10.0.0.9"


async def test_interactive_jobs_are_probed_concurrently_under_a_limit(autojump_clock: trio.testing.MockClock) -> None:
    world = World(tunnels=FakeTunnels(delay=1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        jobids = [await world.submitted(f"desktop-{n}", n) for n in range(1, 3 * PROBE_LIMIT)]
        for jobid in jobids:
            world.twin.start(jobid)
        await world.poll()
        await trio.sleep(10)
        tunnels = world.downstream.tunnels
        assert 1 < tunnels.most_in_flight <= PROBE_LIMIT
        assert all(world.downstream.book.get(j).state is JobState.PROXYING for j in jobids)
        nursery.cancel_scope.cancel()


async def test_a_service_that_never_answers_is_reported_after_some_probes(
        autojump_clock: trio.testing.MockClock) -> None:
    tunnels = FakeTunnels()
    tunnels.listening = set()
    world = World(tunnels=tunnels)
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        jobid = await world.running_job("silent", 7)
        job = world.downstream.book.get(jobid)
        for _ in range(SILENT_PROBES - 2):
            await world.poll()
        assert job.last_error == ""  # starting up takes a while: not an error yet
        for _ in range(2):
            await world.poll()
        assert "has not answered" in job.last_error and world.downstream.url_of("silent", jobid) == ""
        assert job.proxy.state == ProxyPhase.WAITING and job.proxy.probes > SILENT_PROBES  # said once, still counted
        tunnels.listening = None
        await world.poll()
        assert world.downstream.url_of("silent", jobid) == "http://proxy/7/" and job.last_error == ""
        assert job.proxy.probes == 0
        nursery.cancel_scope.cancel()


async def test_many_jobs_starting_at_once_leave_the_poller_its_channel(autojump_clock: trio.testing.MockClock) -> None:
    """Reading the nodes' addresses for many starting jobs (one scontrol each) stays within upstream's
    share of SSH channels, as every other command on upstream's behalf does."""
    world = World(upstream_sessions=3)
    world.twin.latency = 1.0
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        jobids = [await world.submitted(f"desktop-{n}", n) for n in range(1, 2 * PROBE_LIMIT)]
        for jobid in jobids:
            world.twin.start(jobid)
        await world.poll()
        await trio.sleep(30)
        assert 1 < world.twin.most_in_flight["scontrol"] <= 3
        assert all(world.downstream.book.get(j).state is JobState.PROXYING for j in jobids)
        nursery.cancel_scope.cancel()



async def test_a_node_the_login_node_will_not_forward_to_is_given_up_on_with_the_reason(
        autojump_clock: trio.testing.MockClock) -> None:
    """sshd answering *administratively prohibited* (AllowTcpForwarding no, a permitopen without the node) is not a
    service still starting: the job gives up after PROXY_RETRIES tries and says why, instead of probing for ever."""
    tunnels = FakeTunnels()
    world = World(tunnels=tunnels)
    world.twin.node_addresses["node2"] = "10.213.0.99"
    tunnels.prohibited = {"10.213.0.99"}
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        jobid = await world.running_job("walled", 8, nodes=("node2",))
        for _ in range(20):
            await trio.sleep(120)
            await world.poll()
        job = world.downstream.book.get(jobid)
        assert job.proxy.state == ProxyPhase.GIVEN_UP and job.proxy.failures == PROXY_RETRIES
        assert "refuses to forward to node node2" in job.last_error and "permitopen" in job.last_error
        assert tunnels.opened.count(("10.213.0.99", world.downstream.script_env.service_port + job.port_index)) \
            == PROXY_RETRIES, "probed again after giving up"
        assert starts(world, "8") == 0 and world.downstream.url_of("walled", jobid) == ""
        nursery.cancel_scope.cancel()
