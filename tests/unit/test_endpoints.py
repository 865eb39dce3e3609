"""Every job endpoint answers alike: the same name check, the same 503 before the first poll, and no
internal detail to callers who did not authenticate. Driven through the real Quart app on the twin."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from daemon.api import create_app
from tests.support.daemon_world import World

KEY = "upstream:s3cret"
AUTH = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}


@pytest.fixture
async def world(nursery: trio.Nursery) -> AsyncIterator[World]:
    w = World()
    await nursery.start(w.downstream.run)
    yield w


async def test_tail_shows_a_jobs_output_only_to_a_caller_naming_it_right(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    jobid = await world.running_job("mine", 1, interactive=False)
    world.twin.finish(jobid, 0)
    await world.poll()
    client = create_app(world.downstream, KEY).test_client()
    ok = await client.post(f"/request/mine/1/{jobid}/tail", json={"qs": {}}, headers=AUTH)
    assert ok.status_code == 200 and jobid in await ok.get_data(as_text=True)
    other = await client.post(f"/request/someone-else/1/{jobid}/tail", json={"qs": {}}, headers=AUTH)
    assert other.status_code == 404 and "ran on" not in await other.get_data(as_text=True)


async def test_runstatus_before_the_first_poll_is_503_like_the_other_answers(
        autojump_clock: trio.testing.MockClock) -> None:
    world = World()
    world.twin.link_up = False  # restarted while the cluster cannot be reached
    client = create_app(world.downstream, KEY).test_client()
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        await trio.sleep(1)
        status = await client.post("/runstatus", json={"name": "job", "number": 1, "jobid": "1000"}, headers=AUTH)
        assert status.status_code == 503
        assert (await client.get("/running", headers=AUTH)).status_code == 503
        nursery.cancel_scope.cancel()


async def test_ready_tells_unauthenticated_callers_nothing_of_the_error(autojump_clock: trio.testing.MockClock) -> None:
    world = World()
    world.twin.link_up = False
    client = create_app(world.downstream, KEY).test_client()
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        await trio.sleep(1)
        assert "simulated login node" in world.downstream.status.last_error
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert "login node" not in await ready.get_data(as_text=True)
        nursery.cancel_scope.cancel()


async def test_ready_says_what_a_deployment_without_ssh_cannot_do(world: World,
                                                                 autojump_clock: trio.testing.MockClock) -> None:
    client = create_app(world.downstream, KEY).test_client()
    await world.poll()
    assert "limited" not in await (await client.get("/ready")).get_json()
    world.twin.available = False  # slurmrestd without SSH: no files, no tunnels
    ready = await client.get("/ready")
    assert ready.status_code == 200 and "interactive jobs are refused" in (await ready.get_json())["limited"]


async def test_args_arrive_as_upstream_encodes_them_in_every_form_encoding(
        world: World, autojump_clock: trio.testing.MockClock) -> None:
    """``requests.post(url, data={"args": json})`` URL-encodes (``+`` for spaces, UTF-8 percent escapes); a multipart
    form carries the same field; too many fields is a 400 naming the problem, never a traceback."""
    from urllib.parse import urlencode

    jobid = await world.running_job("desk-top", 5, interactive=False)
    client = create_app(world.downstream, KEY).test_client()
    args = json.dumps({"name": "desk-top", "number": 5, "jobid": jobid, "note": "café au lait"}, ensure_ascii=False)
    form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    encoded = urlencode({"args": args}).encode()
    assert b"+" in encoded and b"%C3%A9" in encoded  # what requests sends
    answer = await client.post("/runstatus", data=encoded, headers=form)
    assert answer.status_code == 200, await answer.get_data(as_text=True)
    assert (await answer.get_json())[0] == ["node1"]  # runstatus: nodes, elapsed ...
    multipart = await client.post("/runstatus", form={"args": args}, headers=AUTH)
    assert multipart.status_code == 200 and (await multipart.get_json())[0] == ["node1"]
    crowded = await client.post("/runstatus", data=b"&".join([b"x=1"] * 1001 + [encoded]), headers=form)
    assert crowded.status_code == 400 and "more than 1000 fields" in (await crowded.get_json())["error"]
    empty = await client.post("/runstatus", data=b"args=", headers=form)
    assert empty.status_code == 400 and "not valid JSON" in (await empty.get_json())["error"]
