"""One persistent, multiplexed, host-key-checked SSH connection to the login node.

Sites ban clients that open a connection per command (the reference downstream
does, 0.25 s each); we hold one connection, open at most ``max_sessions`` channels
on it at a time (below OpenSSH's MaxSessions, default 10), keep it alive, and
after a failure reconnect with exponential backoff and full jitter. While backing
off, callers fail fast with ClusterUnavailable instead of queueing behind a dead
link, so upstream gets a quick 503 and the login node is not hammered.

The same connection carries interactive jobs' web traffic: ``open_tunnel`` opens a
``direct-tcpip`` channel (what ``ssh -W`` uses) to a compute node's port. Those
channels are not sessions, so OpenSSH's MaxSessions does not count them and they
take no ``max_sessions`` slot (measured in tests/integration/test_proxy.py); they
have their own budget, ``max_tunnels``, so a flood of browser connections cannot
exhaust the login node's file descriptors.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncssh
import trio

from adapters.aiobridge import AsyncioThread
from adapters.errors import AnswerLost, ClusterUnavailable, DownstreamError, HostKeyRejected
from config.settings import SSHTarget  # where and as whom to log in, read from the environment there

log = logging.getLogger(__name__)
T = TypeVar("T")

_KEY_ALGORITHMS = {b"ssh-ed25519", b"ssh-rsa"}
# Tunnel buffering, per tunnel and direction: what may sit between the two threads.
_CHUNK = 256 * 1024  # the most one read from the channel takes
_READ_AHEAD = 4  # chunks read from the channel and not yet taken by trio
_SEND_WINDOW = 1024 * 1024  # bytes handed to asyncssh and not yet drained below its high-water mark


class TargetUnreachable(DownstreamError):
    """The login node is reachable but could not connect to the requested host:port (nothing listens yet, or gone)."""


class ForwardingProhibited(TargetUnreachable):
    """sshd refused to forward there at all (``administratively prohibited``: ``restrict`` without
    ``port-forwarding``, a ``permitopen`` that does not name the host, ``AllowTcpForwarding no``): waiting
    will not fix it, unlike a port nothing listens on yet."""


@dataclass(frozen=True)
class CommandResult:
    exit_status: int | None  # None when the remote command died by a signal
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class CommandRunner(Protocol):
    """What the Slurm adapter needs from a transport: run one shell command line."""

    async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None) -> CommandResult: ...


class ShellEnded(ClusterUnavailable):
    """A long-lived shell was gone before a program reached it: nothing ran, the program may go elsewhere.

    (Gone after the program was sent, the shell raises AnswerLost: it may have run.)
    """


class Shell(Protocol):
    """A long-lived shell on the login node that runs programs one after another."""

    async def exchange(self, program: str, *, end: str, timeout: float | None = None) -> str: ...

    async def aclose(self) -> None: ...


class ShellOpener(Protocol):
    async def open_shell(self) -> Shell: ...


def load_private_key(pem: str) -> asyncssh.SSHKey:
    """Parse and check the key up front, so a bad key stops the start, not the first job."""
    try:
        key = asyncssh.import_private_key(pem)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"not a usable private key ({exc})") from None
    if key.algorithm not in _KEY_ALGORITHMS:
        raise ValueError(f"key type {key.algorithm.decode()} is not supported; use ed25519 or RSA")
    return key


class SSHClient:
    """A CommandRunner over one asyncssh connection, usable from trio.

    Use as ``async with SSHClient(target) as ssh:``; the asyncio thread lives for
    the block. All asyncssh objects stay on that thread.
    """

    def __init__(
        self,
        target: SSHTarget,
        *,
        max_sessions: int = 8,
        max_tunnels: int = 512,
        command_timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        jitter: Callable[[], float] = random.random,
        session_on_connect: bool = False,
    ) -> None:
        self.target = target
        # a connection used for tunnels only (a proxy process's): see _prime_nodelay
        self._session_on_connect = session_on_connect
        self._key = load_private_key(target.private_key)
        self._bridge = AsyncioThread("asyncssh")
        self._sessions = trio.Semaphore(max_sessions)
        self._max_tunnels = max_tunnels
        self._connect_lock = trio.Lock()
        self._conn: asyncssh.SSHClientConnection | None = None  # touched on the asyncio thread only
        self._command_timeout = command_timeout
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._jitter = jitter
        self._failures = 0
        self._retry_at = 0.0
        self.last_error: str | None = None
        self.connected = False
        self.connects = 0
        self.commands = 0
        self.tunnels_open = 0
        self.tunnels_total = 0

    @property
    def address(self) -> str:
        """The login node's ``ADDR:PORT``, as logs name it."""
        return self.target.address

    async def __aenter__(self) -> SSHClient:
        self._bridge.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await self._bridge.run(self._aio_close)
        self._bridge.stop()
        self.connected = False

    # ------------------------------------------------------------ trio side
    async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
        """Run ``command`` through the login shell; raise ClusterUnavailable if it cannot."""
        deadline = self._command_timeout if timeout is None else timeout
        async with self._sessions:
            exit_status, out, err = await self._call(self._aio_run, command, stdin, deadline=deadline,
                                                     what="command", refused=self._session_refused)
        self.commands += 1
        return CommandResult(exit_status, out, err)

    async def open_tunnel(self, host: str, port: int, *, timeout: float | None = None) -> Tunnel:
        """A byte stream to ``host:port`` as the login node sees it, over the shared connection.

        Raises TargetUnreachable when the login node cannot connect there (sshd answers only once
        its own connect succeeded, so this doubles as a reachability probe), ClusterUnavailable
        when the SSH path itself is down or the ``max_tunnels`` budget is spent.
        """
        deadline = self.target.connect_timeout if timeout is None else timeout
        if self.tunnels_open >= self._max_tunnels:
            raise ClusterUnavailable(f"{self.tunnels_open} tunnels already open through {self.target.address} (the limit)")

        def refused(exc: asyncssh.ChannelOpenError) -> DownstreamError:
            kind = ForwardingProhibited if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED else TargetUnreachable
            return kind(f"{host}:{port} is not reachable from {self.target.address}: {exc.reason}")

        tunnel = Tunnel(f"{host}:{port} via SSH {self.target.address}", self._tunnel_closed)
        self.tunnels_open += 1  # counted before the await so concurrent opens respect the budget
        try:
            tunnel._attach(await self._call(self._aio_open_tunnel, host, port, tunnel, deadline=deadline,
                                            what=f"opening a tunnel to {host}:{port}", refused=refused))
        except BaseException:
            self.tunnels_open -= 1
            raise
        self.tunnels_total += 1
        return tunnel

    def _tunnel_closed(self) -> None:
        self.tunnels_open -= 1

    def _session_refused(self, exc: asyncssh.ChannelOpenError) -> DownstreamError:
        return ClusterUnavailable(f"SSH server {self.target.address} refused a session: {exc.reason}")

    async def open_shell(self, *, timeout: float | None = None) -> RemoteShell:
        """A ``sh`` on the login node that stays open on one session channel (see RemoteShell).

        It holds one of the ``max_sessions`` slots until closed, like a command that never ends.
        """
        deadline = self.target.connect_timeout if timeout is None else timeout
        await self._sessions.acquire()
        try:
            proc = await self._call(self._aio_open_shell, deadline=deadline, what="opening a shell",
                                    refused=self._session_refused)
        except BaseException:
            self._sessions.release()
            raise
        return RemoteShell(self, proc, self.connects)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, deadline: float, what: str,
                    refused: Callable[[asyncssh.ChannelOpenError], DownstreamError]) -> T:
        """Await ``fn(*args)`` on the live connection (connecting if needed) and map failures.

        A channel the server refuses leaves the connection up (other channels, tunnels
        included, live on); only a transport failure marks it broken, to be replaced.
        """
        try:
            with trio.fail_after(deadline):
                for attempt in (1, 2):
                    await self._ensure_connected()
                    try:
                        return await self._bridge.run(fn, *args)
                    except _Stale as exc:  # dropped while idle; nothing was sent, so retry once
                        self._mark_broken(exc)
                        if attempt == 2:
                            raise ClusterUnavailable(f"SSH to {self.target.address} keeps dropping") from None
        except trio.TooSlowError:
            raise ClusterUnavailable(f"{what} timed out after {deadline:g}s on {self.target.address}") from None
        except asyncssh.ChannelOpenError as exc:
            raise refused(exc) from None
        except (OSError, asyncssh.Error) as exc:
            self._mark_broken(exc)
            raise ClusterUnavailable(f"SSH to {self.target.address} failed: {_describe(exc)}") from None
        raise AssertionError("unreachable")

    async def _ensure_connected(self) -> None:
        if self.connected:
            return
        async with self._connect_lock:
            if self.connected:
                return
            now = trio.current_time()
            if now < self._retry_at:
                raise ClusterUnavailable(
                    f"SSH to {self.target.address} is down ({self.last_error}); next attempt in {self._retry_at - now:.1f}s"
                )
            try:
                with trio.fail_after(self.target.connect_timeout + 5):
                    await self._bridge.run(self._aio_connect)
            except asyncssh.HostKeyNotVerifiable as exc:
                self._failed(exc)
                log.error(
                    "SSH host key of %s refused: %s. The key is unknown or has changed. Add the login node's key to "
                    "JARVICE_SLURM_SSH_KNOWN_HOSTS (ssh-keyscan -p %d %s), or set "
                    "JARVICE_SLURM_SSH_INSECURE_HOST_KEY=true to skip the check (not recommended).",
                    self.target.address, exc.reason, self.target.port, self.target.host,
                )
                raise HostKeyRejected(f"SSH host key of {self.target.address} refused: {exc.reason}") from None
            except (OSError, asyncssh.Error, trio.TooSlowError, ValueError) as exc:
                # ValueError: asyncssh could not set up the client (e.g. no local user name)
                self._failed(exc)
                log.warning("SSH connection to %s failed: %s (retry in %.1fs)",
                            self.target.address, _describe(exc), self._retry_at - trio.current_time())
                raise ClusterUnavailable(f"SSH to {self.target.address} failed: {_describe(exc)}") from None
            if self._failures:
                log.info("SSH connection to %s re-established after %d failed attempt(s)", self.target.address, self._failures)
            self._failures = 0
            self._retry_at = 0.0
            self.last_error = None
            self.connected = True
            self.connects += 1

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self.last_error = _describe(exc)
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** (self._failures - 1))
        self._retry_at = trio.current_time() + ceiling * (0.5 + 0.5 * self._jitter())

    def _mark_broken(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("SSH connection to %s lost: %s", self.target.address, _describe(exc))
        self.connected = False
        self.last_error = _describe(exc)

    # --------------------------------------------------------- asyncio side
    def _known_hosts(self) -> object:
        if self.target.insecure_host_key or self._learning:
            return None
        value = self.target.known_hosts
        if value is None:
            return asyncssh.import_known_hosts("")  # trust nothing: refuse, loudly
        if "\n" in value:
            return asyncssh.import_known_hosts(value)
        return asyncssh.read_known_hosts(str(Path(value)))

    @property
    def _learning(self) -> bool:
        """Trust on first use: no host key was given and none has been written yet."""
        return self.target.trust_on_first_use and not Path(str(self.target.known_hosts)).is_file()

    def _pin_host_key(self, conn: asyncssh.SSHClientConnection) -> None:
        """Write the key the login node showed, so every later connection must show the same one."""
        key = conn.get_server_host_key()
        if key is None:
            return
        host = self.target.host if self.target.port == 22 else f"[{self.target.host}]:{self.target.port}"
        path = Path(str(self.target.known_hosts))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
        path.write_text(f"{host} {algorithm} {blob}\n")
        log.warning("SSH host key of %s trusted on first use and pinned in %s: %s %s (set "
                    "JARVICE_SLURM_SSH_KNOWN_HOSTS to pin it yourself)", self.target.address, path,
                    key.get_algorithm(), key.get_fingerprint())

    async def _aio_connect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._conn = await asyncssh.connect(
            self.target.host,
            self.target.port,
            username=self.target.user,
            client_keys=[self._key],
            known_hosts=self._known_hosts(),
            keepalive_interval=self.target.keepalive,
            keepalive_count_max=3,
            connect_timeout=self.target.connect_timeout,
            login_timeout=self.target.connect_timeout,
            agent_path=None,
            config=[],
        )
        if self._learning:
            self._pin_host_key(self._conn)
        if self._session_on_connect:
            await self._prime_nodelay(self._conn)

    @staticmethod
    async def _prime_nodelay(conn: asyncssh.SSHClientConnection) -> None:
        """Run one session (``true``), so that the login node's sshd sets TCP_NODELAY on this connection.

        OpenSSH's sshd sets it only once a session starts (``ssh_packet_set_interactive``); a connection
        that only ever opens ``direct-tcpip`` channels keeps Nagle on, and small answers through the
        proxy then wait for a delayed ACK now and then (measured: p99 45-55 ms per small request on a
        kept-alive connection against 2.4 ms once a command had run). A key restricted to forwarding
        with ``command="/bin/false"`` (see the README) still starts the session: its failure is fine.
        """
        try:
            await asyncio.wait_for(conn.run("true", check=False), 10)
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            log.debug("SSH %s: the session that sets TCP_NODELAY failed: %s", conn.get_extra_info("peername"), exc)

    async def _aio_run(self, command: str, stdin: str | None) -> tuple[int | None, str, str]:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise _Stale("connection closed while idle")
        proc = await _opened(conn.create_process(command, encoding="utf-8", errors="replace"), _kill)
        try:
            out, err = await proc.communicate(stdin)
            if proc.exit_status is None and proc.exit_signal is None:
                # The channel closed without an exit status: the link dropped under the
                # command, which may or may not have taken effect. Never a command failure.
                raise asyncssh.ConnectionLost("channel closed without an exit status")
            return proc.exit_status, out or "", err or ""
        except asyncio.CancelledError:
            _kill(proc)
            raise
        finally:
            proc.close()

    async def _aio_open_shell(self) -> asyncssh.SSHClientProcess:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise _Stale("connection closed while idle")
        proc = await _opened(conn.create_process("sh", encoding="utf-8", errors="replace"), _kill)
        proc.stdin.write("exec 2>&1\n")  # one stream: nobody reads stderr, whose buffer would stall the channel
        return proc

    async def _aio_open_tunnel(self, host: str, port: int, tunnel: Tunnel) -> _ChannelPump:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise _Stale("connection closed while idle")
        reader, writer = await _opened(conn.open_connection(host, port), lambda opened: opened[1].close())
        return _ChannelPump(reader, writer, tunnel)

    async def _aio_close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None


class RemoteShell:
    """A long-lived ``sh`` on the login node, fed one program at a time on its stdin.

    Opening a session channel per command costs the login node an sshd session, a
    login shell and a round trip or two before the command even starts: with
    OpenSSH on loopback, ``sbatch`` through one kept shell runs about 1.8 times as
    often per second as ``sbatch`` as its own command. A program ends by printing
    ``end`` on a line; the output before it is the program's answer. Whatever goes
    wrong during an exchange (timeout, cancellation, EOF, link error), the shell's
    state is unknown, so it is closed and never used again. A shell found gone
    before the program reached it raises ShellEnded; gone after, AnswerLost.
    """

    def __init__(self, client: SSHClient, proc: asyncssh.SSHClientProcess, generation: int) -> None:
        self._client = client
        self._proc = proc  # an asyncssh object: touched on the asyncio thread only
        self._generation = generation  # the connection it lives on: a reconnect ends it
        self._closed = False

    @property
    def usable(self) -> bool:
        return not self._closed and self._client.connected and self._client.connects == self._generation

    async def exchange(self, program: str, *, end: str, timeout: float | None = None) -> str:
        client = self._client
        if not self.usable:
            await self.aclose()
            raise ShellEnded(f"the shell on {client.address} is closed")
        deadline = client._command_timeout if timeout is None else timeout
        try:
            return await client._call(_aio_exchange, self._proc, program, end, deadline=deadline,
                                      what="a program in the shell", refused=client._session_refused)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client._sessions.release()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            with contextlib.suppress(Exception):
                await self._client._bridge.run(_aio_kill, self._proc)


async def _aio_exchange(proc: asyncssh.SSHClientProcess, program: str, end: str) -> str:
    if proc.is_closing() or proc.stdout.at_eof():
        raise ShellEnded("the shell on the login node has ended")
    try:
        proc.stdin.write(program if program.endswith("\n") else program + "\n")
    except (OSError, asyncssh.Error) as exc:  # the channel closed under us: nothing was sent
        raise ShellEnded(f"the shell on the login node has ended ({_describe(exc)})") from None
    try:
        answer = await proc.stdout.readuntil(end + "\n")
    except asyncio.IncompleteReadError as exc:
        raise AnswerLost(f"the shell on the login node ended before answering (after {len(exc.partial)} bytes)"
                         ) from None
    return answer[: -len(end) - 1]


async def _aio_kill(proc: asyncssh.SSHClientProcess) -> None:
    _kill(proc)


def _kill(proc: asyncssh.SSHClientProcess) -> None:
    """Closing alone leaves the command running (sshd keeps the channel until it exits);
    OpenSSH >= 7.9 delivers a signal request to it."""
    with contextlib.suppress(asyncssh.Error, OSError):
        proc.send_signal("KILL")
    proc.close()


async def _opened(opening: Awaitable[T], close: Callable[[T], object]) -> T:
    """Await a channel's opening; if the caller gives up first, ``close`` the channel once it is open
    (asyncssh finishes an abandoned open and keeps the channel, and sshd its session)."""
    future = asyncio.ensure_future(opening)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda f: f.cancelled() or f.exception() is not None or close(f.result()))
        raise


class Tunnel(trio.abc.HalfCloseableStream):
    """One ``direct-tcpip`` channel as a trio stream; its asyncssh ends stay on the asyncio thread.

    A round trip to the asyncio thread per chunk halves throughput (the two threads
    take turns holding the GIL), so the two sides are pipelined instead, with bounded
    buffers in between: a pump on the asyncio thread reads ahead at most
    ``_READ_AHEAD`` chunks that trio has not taken yet, then stops reading (asyncssh
    then stops granting SSH window, which stops the sender); ``send_all`` hands data
    over without waiting, until ``_SEND_WINDOW`` bytes are not yet drained by asyncssh,
    and then waits. Backpressure thus reaches the TCP peer on either side. Each side
    changes its own state only, on its own thread; they talk through
    ``call_soon_threadsafe`` and ``TrioToken.run_sync_soon``. Failures surface as
    trio's BrokenResourceError.
    """

    def __init__(self, description: str, on_close: Callable[[], None]) -> None:
        self.description = description  # "HOST:PORT via SSH ADDR:PORT", for logs
        self._on_close = on_close
        self._token = trio.lowlevel.current_trio_token()
        self._pump: _ChannelPump | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._eof_received = False
        self._error: str | None = None
        self._in_flight = 0
        self._waiters = trio.lowlevel.ParkingLot()  # woken whenever data, EOF, an error or send credit arrives
        self._closed = False
        self._eof_sent = False
        self._sending = False
        self._receiving = False

    def _attach(self, pump: _ChannelPump) -> None:
        self._pump = pump

    # ----------------------------------------------------------- trio side
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this tunnel")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            self._check_usable()
            if self._eof_sent:
                raise trio.ClosedResourceError("EOF was already sent on this tunnel")
            while self._in_flight >= _SEND_WINDOW:
                await self._wait_change()
                self._check_usable()
            if data:
                self._in_flight += len(data)
                self._to_asyncio("write", bytes(data))
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        while not self._closed and self._error is None and self._in_flight >= _SEND_WINDOW:
            await self._wait_change()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` as soon as any arrive; ``b""`` once the far end sent EOF."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this tunnel")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("tunnel is closed")
                if self._chunks:
                    return self._take(max_bytes)
                if self._eof_received:
                    return b""
                if self._error is not None:
                    raise trio.BrokenResourceError(f"tunnel to {self.description} broke: {self._error}")
                await self._wait_change()
        finally:
            self._receiving = False

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_usable()
        if not self._eof_sent:
            self._eof_sent = True
            self._to_asyncio("write_eof")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()
            if self._pump is not None:
                with contextlib.suppress(RuntimeError):  # the asyncio loop is gone, and the channel with it
                    self._pump.loop.call_soon_threadsafe(self._pump.close)
            self._wake()
        await trio.lowlevel.checkpoint()

    def _take(self, max_bytes: int | None) -> bytes:
        chunk = self._chunks[0]
        if max_bytes is not None and len(chunk) > max_bytes:
            self._chunks[0] = chunk[max_bytes:]
            return chunk[:max_bytes]
        self._chunks.popleft()
        self._to_asyncio("grant")
        return chunk

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("tunnel is closed")
        if self._error is not None:
            raise trio.BrokenResourceError(f"tunnel to {self.description} broke: {self._error}")

    async def _wait_change(self) -> None:
        await self._waiters.park()

    def _wake(self) -> None:
        self._waiters.unpark_all()

    def _to_asyncio(self, method: str, *args: object) -> None:
        assert self._pump is not None
        try:
            self._pump.loop.call_soon_threadsafe(getattr(self._pump, method), *args)
        except RuntimeError:  # the SSH client (and its asyncio loop) is gone
            self._broken("the SSH client was closed")

    # callbacks run on the trio thread, scheduled by the pump
    def _arrived(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
        else:
            self._eof_received = True
        self._wake()

    def _drained(self, n: int) -> None:
        self._in_flight -= n
        self._wake()

    def _broken(self, why: str) -> None:
        if self._error is None:
            self._error = why
        self._wake()


class _ChannelPump:
    """The asyncio half of a Tunnel: owns the asyncssh reader and writer, on the asyncio thread only."""

    def __init__(self, reader: asyncssh.SSHReader, writer: asyncssh.SSHWriter, tunnel: Tunnel) -> None:
        self.loop = asyncio.get_running_loop()
        self._reader = reader
        self._writer = writer
        self._tunnel = tunnel
        self._token = tunnel._token
        self._credit = _READ_AHEAD
        self._has_credit = asyncio.Event()
        self._has_credit.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn(self._read())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _to_trio(self, fn: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    async def _read(self) -> None:
        try:
            while True:
                await self._has_credit.wait()
                data = await self._reader.read(_CHUNK)
                if data:
                    self._credit -= 1
                    if self._credit <= 0:
                        self._has_credit.clear()
                self._to_trio(self._tunnel._arrived, data)
                if not data:
                    return
        except (OSError, asyncssh.Error) as exc:
            self._to_trio(self._tunnel._broken, _describe(exc))

    def grant(self) -> None:
        self._credit += 1
        self._has_credit.set()

    def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except (OSError, asyncssh.Error) as exc:
            self._to_trio(self._tunnel._broken, _describe(exc))
            return
        self._spawn(self._drain(len(data)))

    async def _drain(self, n: int) -> None:
        try:
            await self._writer.drain()
        except (OSError, asyncssh.Error) as exc:
            self._to_trio(self._tunnel._broken, _describe(exc))
        else:
            self._to_trio(self._tunnel._drained, n)

    def write_eof(self) -> None:
        try:
            self._writer.write_eof()
        except (OSError, asyncssh.Error) as exc:
            self._to_trio(self._tunnel._broken, _describe(exc))

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._writer.close()


class _Stale(Exception):
    """The connection was found closed before a command was sent."""


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
