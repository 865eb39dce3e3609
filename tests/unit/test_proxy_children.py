"""ChildProxies' supervision of its processes, with real processes that fail on purpose (no SSH involved).

The proxy itself (traffic, re-aim, restarts after SIGKILL, a SIGKILLed daemon) is tested with the real
``slurm-downstream proxy`` on the test cluster: tests/integration/test_proxy.py and test_interactive.py.
"""

from __future__ import annotations

import sys

import trio

from adapters.proxy.base import ProxyState, ProxyTarget
from adapters.proxy.children import ChildProxies, ProxyExited

TARGET = ProxyTarget(key="7", host="10.0.0.7", port=8000)


def exiting(code: int) -> list[str]:
    """A command that exits with ``code`` at once (the per-job arguments land in its sys.argv, unused)."""
    return [sys.executable, "-c", f"import sys; sys.exit({code})"]


async def test_a_process_that_keeps_dying_is_restarted_with_backoff_and_each_exit_reported() -> None:
    exits: list[tuple[str, ProxyExited, int]] = []
    backend = ChildProxies(exiting(1), {}, bind="127.0.0.1", backoff=0.05, backoff_cap=0.2, ready_timeout=5,
                           on_exit=lambda key, exc, n: exits.append((key, exc, n)))
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        status = await backend.start(TARGET)
        assert status.state is ProxyState.STARTING and "exited with code 1" in status.error, status
        with trio.fail_after(10):
            while len(exits) < 4:
                await trio.sleep(0.01)
        status = backend.status("7")
        assert status is not None and status.restarts >= 3 and status.url == "", "no URL while it is down"
        assert [n for _, _, n in exits[:4]] == [1, 2, 3, 4], "exits in a row are counted (the backoff grows)"
        assert all(key == "7" and not exc.permanent for key, exc, _ in exits)
        await backend.stop("7")
        assert backend.status("7") is None and await backend.keys() == set()
        nursery.cancel_scope.cancel()


async def test_a_configuration_error_is_not_restarted() -> None:
    exits: list[ProxyExited] = []
    backend = ChildProxies(exiting(2), {}, bind="127.0.0.1", backoff=0.01, ready_timeout=5,
                           on_exit=lambda key, exc, n: exits.append(exc))
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        status = await backend.start(TARGET)
        await trio.sleep(0.3)
        assert status.state is ProxyState.FAILED and "configuration error" in status.error, status
        assert len(exits) == 1 and exits[0].permanent and backend.status("7").restarts == 0
        nursery.cancel_scope.cancel()


async def test_a_command_that_cannot_start_is_retried_and_never_ends_the_nursery() -> None:
    exits: list[ProxyExited] = []
    backend = ChildProxies(["/nonexistent/slurm-downstream"], {}, bind="127.0.0.1", backoff=0.01, backoff_cap=0.05,
                           ready_timeout=5, on_exit=lambda key, exc, n: exits.append(exc))
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        status = await backend.start(TARGET)
        assert status.state is ProxyState.STARTING and "not started" in status.error, status
        with trio.fail_after(10):
            while len(exits) < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
