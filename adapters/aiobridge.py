"""Run asyncio coroutines (asyncssh) from trio, with trio's cancellation semantics.

asyncssh only speaks asyncio. Measured on these machines (design.md), a dedicated
asyncio thread with a structured bridge is as fast as trio-asyncio and patches
nothing globally. The rules it enforces:

* asyncssh objects live on the asyncio thread only; trio passes coroutine
  *functions* and gets plain results back;
* the asyncio task's completion wakes trio through the trio token, never through
  a blocked worker thread (``to_thread.run_sync(future.result)`` ignores deadlines);
* when trio cancels, the asyncio task is cancelled too, and trio waits (shielded,
  bounded) until it has really finished, so no remote command outlives its caller;
  a task that had already succeeded still hands over its result (trio's rule: an
  operation that completed is not undone by a late cancel).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")
log = logging.getLogger(__name__)

# How long a cancelled trio caller waits for the asyncio side to unwind.
_CANCEL_GRACE = 5.0


class AsyncioThread:
    """One asyncio event loop in a daemon thread, owned by a trio program."""

    def __init__(self, name: str = "asyncio-bridge") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.SelectorEventLoop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` on the asyncio loop; cancellable from trio."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("AsyncioThread is not started")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: dict[str, asyncio.Task[T]] = {}

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # trio already gone; nothing to wake
                pass

        async def call() -> T:
            return await fn(*args)

        def schedule() -> None:
            task = loop.create_task(call())
            task.add_done_callback(wake)
            box["task"] = task

        loop.call_soon_threadsafe(schedule)
        try:
            await done.wait()
        except trio.Cancelled:
            # call_soon_threadsafe is FIFO: schedule() has run before cancel().
            loop.call_soon_threadsafe(lambda: box["task"].cancel())
            with trio.move_on_after(_CANCEL_GRACE) as scope:
                scope.shield = True
                await done.wait()
            if scope.cancelled_caught:
                log.warning("asyncio task %s ignored cancellation for %ss", fn, _CANCEL_GRACE)
            task = box["task"]
            if task.done() and not task.cancelled() and task.exception() is None:
                # It finished before the cancel reached it (an sbatch that printed its job id):
                # the result is kept, and the caller's next checkpoint raises Cancelled.
                return task.result()
            raise
        task = box["task"]
        if task.cancelled():
            raise RuntimeError(f"{fn!r} was cancelled on the asyncio side")
        return task.result()
