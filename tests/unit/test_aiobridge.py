"""The trio <-> asyncio bridge under cancellation: nothing outlives its caller, nothing done is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import trio

from adapters.aiobridge import AsyncioThread


@pytest.fixture
def bridge() -> Iterator[AsyncioThread]:
    thread = AsyncioThread("test-bridge")
    thread.start()
    yield thread
    thread.stop()


async def test_results_and_errors_come_back(bridge: AsyncioThread) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async def fail() -> None:
        raise ValueError("from asyncio")

    assert await bridge.run(add, 2, 3) == 5
    with pytest.raises(ValueError, match="from asyncio"):
        await bridge.run(fail)


async def test_a_cancelled_caller_cancels_the_asyncio_task_and_waits_for_it(bridge: AsyncioThread) -> None:
    unwound = threading.Event()

    async def remote_command() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)  # cleanup that takes a while (closing a channel)
            unwound.set()

    with trio.move_on_after(0.1):
        await bridge.run(remote_command)
    assert unwound.is_set(), "the caller went on while its asyncio task was still running"


async def test_a_result_ready_when_the_cancel_lands_is_not_lost(bridge: AsyncioThread) -> None:
    """An sbatch that printed its job id just as its caller was cancelled: the id is handed over."""
    go = threading.Event()

    async def sbatch() -> str:
        while not go.is_set():
            await asyncio.sleep(0.001)
        return "4242"

    answer: list[str] = []
    with trio.CancelScope() as scope:

        async def caller() -> None:
            answer.append(await bridge.run(sbatch))
            await trio.lowlevel.checkpoint()  # where the cancel is delivered after all

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.sleep(0.05)  # caller waits on the bridge
            go.set()
            time.sleep(0.2)  # trio's thread blocked: asyncio finishes and queues the wake-up meanwhile
            scope.cancel()  # ... and the cancel reaches the caller first
    assert scope.cancelled_caught
    assert answer == ["4242"]
