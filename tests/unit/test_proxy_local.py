"""LocalProxies' listeners: ports, idempotence, restarts, stop; no SSH involved.

The tunnel opener here is a login node through which nothing is reachable (every
tunnel refused), which is all these tests need: they are about the listeners users
connect to, not the data path (tests/integration/test_proxy.py carries real traffic).
"""

from __future__ import annotations

import logging
import random
import socket

import pytest
import trio

from adapters.proxy.base import ProxyState, ProxyTarget
from adapters.proxy.local import LocalProxies
from adapters.ssh import TargetUnreachable


class NothingReachable:
    address = "login.example:22"

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def open_tunnel(self, host: str, port: int) -> trio.abc.HalfCloseableStream:
        self.asked.append((host, port))
        raise TargetUnreachable(f"{host}:{port} is not reachable from {self.address}: Connection refused")


def free_block(n: int) -> int:
    """The first port of ``n`` consecutive ports free on 127.0.0.1 right now."""
    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def target(key: str, port: int = 8000, host: str = "10.0.0.7") -> ProxyTarget:
    return ProxyTarget(key=key, host=host, port=port)


async def refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_ports_come_from_the_range_and_run_out_with_a_clear_status(nursery: trio.Nursery) -> None:
    base = free_block(3)
    proxies = LocalProxies(NothingReachable(), bind="127.0.0.1", public_host="jobs.example", ports=(base, base + 2))
    await nursery.start(proxies.run)
    urls = [(await proxies.start(target(k))).url for k in "abc"]
    assert urls == [f"http://jobs.example:{p}/" for p in (base, base + 1, base + 2)]

    full = await proxies.start(target("d"))
    assert full.state is ProxyState.FAILED and f"no free port in {base}-{base + 2}" in full.error
    assert proxies.status("d") == full and await proxies.keys() == {"a", "b", "c", "d"}

    await proxies.stop("b")
    assert await refused(base + 1)
    again = await proxies.start(target("d"))  # a failed proxy is retried on the next start
    assert again.state is ProxyState.SERVING and again.url == f"http://jobs.example:{base + 1}/"


async def test_ports_taken_by_others_are_skipped_and_freed_ports_not_reused_at_once(nursery: trio.Nursery) -> None:
    base = free_block(4)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", base + 1))
    squatter.listen()
    try:
        proxies = LocalProxies(NothingReachable(), bind="127.0.0.1", ports=(base, base + 3))
        await nursery.start(proxies.run)
        assert (await proxies.start(target("a"))).url.endswith(f":{base}/")
        assert (await proxies.start(target("b"))).url.endswith(f":{base + 2}/")
        await proxies.stop("a")
        squatter.close()
        # round-robin: on past the last port handed out, not back to the one "a" just freed
        assert (await proxies.start(target("c"))).url.endswith(f":{base + 3}/")
        assert (await proxies.start(target("d"))).url.endswith(f":{base}/")
        assert (await proxies.start(target("e"))).url.endswith(f":{base + 1}/")
    finally:
        squatter.close()


async def test_start_is_idempotent_and_a_moved_job_gets_a_fresh_listener(nursery: trio.Nursery) -> None:
    opener = NothingReachable()
    proxies = LocalProxies(opener, bind="127.0.0.1", public_host="::1")
    await nursery.start(proxies.run)
    first = await proxies.start(target("7"))
    assert first.state is ProxyState.SERVING and first.url.startswith("http://[::1]:") and first.restarts == 0
    assert await proxies.start(target("7")) == first

    moved = await proxies.start(target("7", host="10.0.0.8"))  # requeued onto another node
    assert moved.restarts == 1 and moved.url != first.url
    assert await refused(int(first.url.rsplit(":", 1)[1].rstrip("/")))
    port = int(moved.url.rsplit(":", 1)[1].rstrip("/"))
    user = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(5):
        assert await user.receive_some(10) == b""  # the job is unreachable: the user's connection is closed
    await user.aclose()
    assert opener.asked == [("10.0.0.8", 8000)]


async def test_an_unreachable_job_closes_users_with_a_log_line(nursery: trio.Nursery,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    proxies = LocalProxies(NothingReachable(), bind="127.0.0.1")
    await nursery.start(proxies.run)
    with caplog.at_level(logging.INFO, logger="adapters.proxy.local"):
        status = await proxies.start(target("42"))
        port = int(status.url.rsplit(":", 1)[1].rstrip("/"))
        for _ in range(3):
            user = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(5):
                assert await user.receive_some(10) == b""
            await user.aclose()
    assert "Started proxy to 10.0.0.7:8000 via SSH login.example:22" in caplog.messages
    closed = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    assert len(closed) == 3 and all(r.levelno == logging.WARNING and not r.exc_info for r in closed)
    assert "Connection refused" in closed[0].getMessage() and "Proxy 42" in closed[0].getMessage()
    now = proxies.status("42")
    assert now.connections == 0 and now.connections_total == 3 and now.bytes_up == now.bytes_down == 0


async def test_nothing_listens_before_run_or_after_it_ends() -> None:
    proxies = LocalProxies(NothingReachable(), bind="127.0.0.1")
    with pytest.raises(RuntimeError, match="not running"):
        await proxies.start(target("1"))
    async with trio.open_nursery() as nursery:
        await nursery.start(proxies.run)
        url = (await proxies.start(target("1"))).url
        assert not await refused(int(url.rsplit(":", 1)[1].rstrip("/")))
        nursery.cancel_scope.cancel()
    assert await refused(int(url.rsplit(":", 1)[1].rstrip("/")))
    assert await proxies.keys() == set()
    await proxies.stop("1")  # unknown now: not an error


def test_a_bad_port_range_is_refused() -> None:
    with pytest.raises(ValueError, match="port range"):
        LocalProxies(NothingReachable(), ports=(2000, 1000))
