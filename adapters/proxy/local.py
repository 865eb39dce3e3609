"""Interactive jobs' proxies as tasks of one process: a TCP listener per job, carried over one SSH connection.

This is what runs inside each ``slurm-downstream proxy`` process (daemon/proxy_cmd.py),
with exactly one proxy in it: the daemon's local mode starts one such process per job
(adapters/proxy/children.py), a Kubernetes proxy pod is one too. The daemon no longer
runs it in its own process: the bytes would share the daemon's GIL with upstream's API.

A job's web service (noVNC, gotty) listens on its compute node, which users cannot
reach. Each user connection accepted here gets its own SSH ``direct-tcpip`` channel
over this process's one connection to the login node, and bytes are carried unchanged
in both directions, so plain HTTP and upgraded WebSocket connections work alike
without the proxy knowing either protocol. The login node's sshd makes the last hop
to the compute node, so nothing (no socat, no agent) has to run there.

Flow control is end to end: each direction moves one chunk at a time and reads the
next only once the previous one was accepted by the other side, so a slow browser
stops the job's service through TCP and SSH windows instead of filling memory here.

A connection ends when either side closes: EOF is passed on (half-close), and once
the job's side has finished, the user's side gets ``half_close_grace`` seconds to
finish too, so a job that ends (``scancel``) closes its users' connections even when
their clients ignore EOF. A broken SSH path closes the user connections it carried,
with one log line each; the next user connection makes the SSH client reconnect.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import trio

from adapters.errors import DownstreamError
from adapters.proxy.base import ProxyState, ProxyStatus, ProxyTarget
from adapters.ssh import ForwardingProhibited

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024  # per read from either side; larger reads mean fewer hops between the threads
# what a stream raises when its peer is gone; anything else from a pump is a bug and is logged with its traceback
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_TAKEN = {errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL}


class TunnelOpener(Protocol):
    """What the proxies need of the SSH client (adapters.ssh.SSHClient is one)."""

    @property
    def address(self) -> str:
        """The login node's ``ADDR:PORT``, for the log lines."""
        ...

    async def open_tunnel(self, host: str, port: int) -> trio.abc.HalfCloseableStream:
        """A stream to ``host:port`` as the login node sees it; raises DownstreamError when there is none."""
        ...


async def probe(opener: TunnelOpener, host: str, port: int) -> bool:
    """Whether the job's service accepts a connection through the login node right now.

    sshd confirms a ``direct-tcpip`` channel only after its own connect to the target
    succeeded, so opening (and closing) one is an exact test of what a user would get.
    A refusal to forward at all (``ForwardingProhibited``) is raised, not answered False: no
    waiting makes that service reachable.
    """
    try:
        tunnel = await opener.open_tunnel(host, port)
    except ForwardingProhibited:
        raise
    except DownstreamError as exc:
        log.debug("probe of %s:%d: %s", host, port, exc)
        return False
    await tunnel.aclose()
    return True


def check_port_range(ports: tuple[int, int]) -> tuple[int, int]:
    """A listener port range, ``(0, 0)`` letting the OS choose; raises ValueError on anything else invalid."""
    lo, hi = ports
    if (lo, hi) != (0, 0) and not 1 <= lo <= hi <= 65535:
        raise ValueError(f"bad port range {lo}-{hi}")
    return lo, hi


async def listen_in_range(bind: str, ports: tuple[int, int], first: int,
                          in_use: set[int]) -> tuple[trio.SocketListener, int]:
    """A listener on the first free port of ``ports`` from ``first`` on (round-robin), and the port to try next.

    Round-robin, so that a port a finished job freed is not at once given to the next job (a stale
    browser tab would otherwise reach someone else's session). ``(0, 0)``: the OS chooses.
    """
    lo, hi = ports
    if (lo, hi) == (0, 0):
        return await _bind_port(bind, 0), first
    count = hi - lo + 1
    for i in range(count):
        port = lo + (first - lo + i) % count
        if port in in_use:
            continue
        try:
            listener = await _bind_port(bind, port)
        except OSError as exc:
            if exc.errno in _TAKEN:
                continue
            raise
        return listener, lo + (port - lo + 1) % count
    raise OSError(errno.EADDRINUSE, f"no free port in {lo}-{hi}")


async def _bind_port(bind: str, port: int) -> trio.SocketListener:
    listeners = await trio.open_tcp_listeners(port, host=bind)
    for extra in listeners[1:]:  # one address gives one listener; never serve on a port nobody was told
        await extra.aclose()
    return listeners[0]


@dataclass
class _Proxy:
    target: ProxyTarget
    port: int
    url: str
    restarts: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    error: str = ""
    connections: int = 0
    connections_total: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def status(self) -> ProxyStatus:
        if self.done.is_set():
            return ProxyStatus(ProxyState.FAILED, error=self.error or "stopped", restarts=self.restarts)
        return ProxyStatus(ProxyState.SERVING, url=self.url, connections=self.connections,
                           connections_total=self.connections_total, bytes_up=self.bytes_up,
                           bytes_down=self.bytes_down, restarts=self.restarts)


class _Broken(Exception):
    """One side of a carried connection failed; ``side`` says which, for the log line."""

    def __init__(self, side: str, exc: BaseException) -> None:
        self.side = side
        self.reason = str(exc) or type(exc).__name__
        if exc.__cause__ is not None:  # trio's socket errors say "socket connection broken" and keep the OSError as cause
            self.reason += f" ({exc.__cause__})"
        super().__init__(f"{side}: {self.reason}")


class LocalProxies:
    """The ProxyBackend that runs every job's proxy as tasks of this process.

    ``run`` owns the nursery the listeners live in; the daemon starts it in its own
    nursery before calling ``start``. ``ports`` is the listener port range, ``(0, 0)``
    letting the OS choose; within a range ports are handed out round-robin, so a port
    a finished job freed is not at once given to the next job (a stale browser tab
    would otherwise reach someone else's session).
    """

    def __init__(self, opener: TunnelOpener, *, bind: str = "0.0.0.0", public_host: str = "localhost",
                 ports: tuple[int, int] = (0, 0), half_close_grace: float = 5.0,
                 adopt: trio.SocketListener | None = None) -> None:
        lo, hi = check_port_range(ports)
        self._opener = opener
        self._bind = bind
        self._public_host = f"[{public_host}]" if ":" in public_host else public_host
        self._ports = (lo, hi)
        self._next_port = lo
        self._grace = half_close_grace
        self._proxies: dict[str, _Proxy] = {}
        self._failed: dict[str, ProxyStatus] = {}
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        # a listener bound by someone else (the daemon, for a proxy process it supervises): the first start serves it
        self._adopted = adopt

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the proxies' nursery until cancelled; cancelling closes every listener and connection."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._proxies.clear()

    # ---------------------------------------------------------------- ProxyBackend
    async def start(self, target: ProxyTarget) -> ProxyStatus:
        """Listen for ``target.key``'s users (or keep listening); a moved target gets a fresh listener."""
        async with self._lock:
            nursery = self._nursery
            if nursery is None:
                raise RuntimeError("LocalProxies.run() is not running")
            restarts = 0
            current = self._proxies.get(target.key)
            if current is not None:
                if not current.done.is_set() and current.target == target:
                    return current.status()
                log.info("Restarting proxy %s: %s", target.key,
                         current.error or f"job moved from {current.target.host}:{current.target.port}")
                await self._close(current)
                restarts = current.restarts + 1
            try:
                listener = await self._listen()
            except OSError as exc:
                status = ProxyStatus(ProxyState.FAILED, error=f"cannot listen on {self._bind}: {exc.strerror or exc}",
                                     restarts=restarts)
                self._failed[target.key] = status
                self._proxies.pop(target.key, None)
                log.error("Proxy %s to %s:%d not started: %s", target.key, target.host, target.port, status.error)
                return status
            port = listener.socket.getsockname()[1]
            proxy = _Proxy(target, port, f"http://{self._public_host}:{port}/", restarts)
            await nursery.start(self._serve, proxy, listener)
            self._proxies[target.key] = proxy
            self._failed.pop(target.key, None)
            log.info("Started proxy to %s:%d via SSH %s", target.host, target.port, self._opener.address)
            log.info("Proxy %s listens on %s:%d, users open %s", target.key, self._bind, port, proxy.url)
            return proxy.status()

    async def stop(self, key: str) -> None:
        """Close the listener and every user connection of ``key``; unknown keys are fine."""
        async with self._lock:
            self._failed.pop(key, None)
            proxy = self._proxies.pop(key, None)
            if proxy is None:
                return
            open_now = proxy.connections
            await self._close(proxy)
        log.info("Stopped proxy %s to %s:%d (%d connection(s) closed, %d served)", key, proxy.target.host,
                 proxy.target.port, open_now, proxy.connections_total)

    def status(self, key: str) -> ProxyStatus | None:
        proxy = self._proxies.get(key)
        return proxy.status() if proxy is not None else self._failed.get(key)

    async def keys(self) -> set[str]:
        return set(self._proxies) | set(self._failed)

    async def probe(self, host: str, port: int) -> bool:
        """See the module function ``probe``: is the job's service reachable through SSH now?"""
        return await probe(self._opener, host, port)

    # ---------------------------------------------------------------- listeners
    async def _listen(self) -> trio.SocketListener:
        if self._adopted is not None:
            listener, self._adopted = self._adopted, None
            return listener
        listener, self._next_port = await listen_in_range(self._bind, self._ports, self._next_port,
                                                          {p.port for p in self._proxies.values()})
        return listener

    async def _serve(self, proxy: _Proxy, listener: trio.SocketListener, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with proxy.scope:
                await trio.serve_listeners(partial(self._carry, proxy), [listener], task_status=task_status)
        except Exception as exc:  # a bug here must not take the daemon's nursery down with it
            proxy.error = f"proxy task failed: {exc!r}"
            log.exception("Proxy %s failed", proxy.target.key)
        finally:
            proxy.done.set()

    async def _close(self, proxy: _Proxy) -> None:
        proxy.scope.cancel()
        await proxy.done.wait()

    # ---------------------------------------------------------------- one user connection
    async def _carry(self, proxy: _Proxy, user: trio.SocketStream) -> None:
        key, target = proxy.target.key, proxy.target
        peer = _peer(user)
        proxy.connections += 1
        proxy.connections_total += 1
        try:
            async with user:
                try:
                    tunnel = await self._opener.open_tunnel(target.host, target.port)
                except DownstreamError as exc:
                    log.warning("Proxy %s: closed the connection from %s: %s", key, peer, exc)
                    return
                async with tunnel:
                    await self._splice(proxy, user, tunnel, peer)
        except Exception:
            log.exception("Proxy %s: connection from %s failed", key, peer)
        finally:
            proxy.connections -= 1

    async def _splice(self, proxy: _Proxy, user: trio.abc.HalfCloseableStream,
                      tunnel: trio.abc.HalfCloseableStream, peer: str) -> None:
        def up(n: int) -> None:
            proxy.bytes_up += n

        def down(n: int) -> None:
            proxy.bytes_down += n

        async with trio.open_nursery() as nursery:

            async def carry(src: trio.abc.HalfCloseableStream, dst: trio.abc.HalfCloseableStream,
                            count: Callable[[int], None], src_side: str, dst_side: str) -> bool:
                """One direction; a broken side closes both. True when it ended cleanly."""
                try:
                    await _pump(src, dst, count, src_side, dst_side)
                except _Broken as exc:
                    _log_broken(proxy.target.key, peer, exc)
                    nursery.cancel_scope.cancel()
                    return False
                return True

            async def job_to_user() -> None:
                if await carry(tunnel, user, down, "job", "user"):
                    # the job's side is done: give the user's side a moment to finish, then close
                    nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline, trio.current_time() + self._grace)

            nursery.start_soon(carry, user, tunnel, up, "user", "job")
            nursery.start_soon(job_to_user)


async def _pump(src: trio.abc.HalfCloseableStream, dst: trio.abc.HalfCloseableStream, count: Callable[[int], None],
                src_side: str, dst_side: str) -> None:
    """Copy ``src`` to ``dst`` until EOF, then pass the EOF on."""
    while True:
        try:
            data = await src.receive_some(_CHUNK)
        except _STREAM_ERRORS as exc:
            raise _Broken(src_side, exc) from None
        if not data:
            break
        try:
            await dst.send_all(data)
        except _STREAM_ERRORS as exc:
            raise _Broken(dst_side, exc) from None
        count(len(data))
    try:
        await dst.send_eof()
    except _STREAM_ERRORS as exc:
        raise _Broken(dst_side, exc) from None


def _log_broken(key: str, peer: str, exc: _Broken) -> None:
    if exc.side == "job":  # the SSH path or the job's service failed (the tunnel's message names the path)
        log.warning("Proxy %s: closed the connection from %s: %s", key, peer, exc.reason)
    else:  # browsers reset connections all the time
        log.debug("Proxy %s: connection from %s ended by the user's side: %s", key, peer, exc.reason)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
