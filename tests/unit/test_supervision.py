"""Supervised background work: one failure stays one job's problem, and the daemon keeps running.

Background effects (tending and stopping proxies, resolving vanished jobs, removing files) ran
in the poller's nursery catching only ``DownstreamError``: anything else (an untranslated
Kubernetes error, a bug) cancelled the nursery, so the daemon and every proxy session ended.
Now each effect is logged with its job, counted in /metrics, retried, and never fatal; and /gc
answers about the cluster even when the proxy backend fails. Driven on the simulated Slurm with
an in-memory proxy backend that fails on request; trio time autojumps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from statemachines.job import JobState
from tests.support.daemon_world import World


class KubeApiError(Exception):
    """Stands for an error the Kubernetes client raises that no adapter translated."""


@pytest.fixture
async def world(nursery: trio.Nursery) -> AsyncIterator[World]:
    w = World()
    await nursery.start(w.downstream.run)
    yield w


async def test_a_proxy_backend_bug_for_one_job_leaves_the_daemon_and_the_other_jobs_running(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    world.proxies.start_error["1"] = KubeApiError("(500) Internal Server Error")
    broken = await world.running_job("broken", 1)
    fine = await world.running_job("fine", 2)
    assert world.downstream.book.get(fine).state is JobState.PROXYING
    assert world.downstream.url_of("fine", fine) == "http://proxy/2/"
    assert world.failures("tend proxy", "bug") >= 1
    await world.poll()  # the daemon still polls
    del world.proxies.start_error["1"]
    await world.poll()  # and the next poll's tending retries the job that failed
    assert world.downstream.book.get(broken).state is JobState.PROXYING


async def test_a_bug_while_resolving_a_vanished_job_is_retried_by_the_next_poll(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    jobid = await world.running_job("batch", 3, interactive=False)
    world.twin.finish(jobid, 0)
    world.twin.advance(60)  # purged from squeue before any poll saw it end
    inspect, calls = world.twin.inspect_many, []

    async def buggy_inspect(jobids: list[str]):  # noqa: ANN202 - the twin's own signature
        calls.append(list(jobids))
        if len(calls) == 1:
            raise ValueError("could not parse sacct's line")
        return await inspect(jobids)

    world.twin.inspect_many = buggy_inspect  # type: ignore[method-assign]
    await world.poll()
    assert calls == [[jobid]] and world.failures("resolve", "bug") == 1
    assert not world.downstream.book.get(jobid).final
    await world.poll()
    assert world.downstream.book.get(jobid).state is JobState.COMPLETED


async def test_terminate_answers_when_the_proxy_will_not_stop_and_the_stop_is_retried(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    jobid = await world.running_job("desktop", 7)
    world.proxies.stop_error["7"] = KubeApiError("(409) Conflict")
    assert await world.downstream.terminate({"name": "desktop", "number": 7, "jobid": jobid})
    assert world.failures("stop proxy", "bug") == 1 and "7" in world.proxies.serving
    del world.proxies.stop_error["7"]
    await trio.sleep(30)  # the supervisor's backoff
    assert "7" not in world.proxies.serving
    assert world.downstream.url_of("desktop", jobid) == ""


async def test_gc_answers_about_the_cluster_whatever_the_proxy_backend_does(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    await world.running_job("desktop", 8)
    world.proxies.serving["99"] = world.proxies.serving["8"]  # a proxy no tracked job needs
    world.proxies.keys_error = KubeApiError("(503) Service Unavailable")
    assert await world.downstream.gc()
    world.proxies.keys_error = None
    world.proxies.stop_error["99"] = KubeApiError("(500) Internal Server Error")
    assert await world.downstream.gc()
    assert world.failures("gc proxies", "bug") == 1 and world.failures("stop proxy", "bug") == 1
    del world.proxies.stop_error["99"]
    assert await world.downstream.gc()
    assert set(world.proxies.serving) == {"8"}
    world.twin.link_up = False
    assert not await world.downstream.gc()  # the cluster cannot be reached: BAD, as the contract says
