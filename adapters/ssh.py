"""One persistent, multiplexed, host-key-checked SSH connection to the login node.

Sites ban clients that open a connection per command (the reference downstream
does, 0.25 s each); we hold one connection, open at most ``max_sessions`` channels
on it at a time (below OpenSSH's MaxSessions, default 10), keep it alive, and
after a failure reconnect with exponential backoff and full jitter. While backing
off, callers fail fast with ClusterUnavailable instead of queueing behind a dead
link, so upstream gets a quick 503 and the login node is not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import asyncssh
import trio

from adapters.aiobridge import AsyncioThread
from adapters.errors import ClusterUnavailable, HostKeyRejected

log = logging.getLogger(__name__)

_KEY_ALGORITHMS = {b"ssh-ed25519", b"ssh-rsa"}


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


@dataclass(frozen=True)
class SSHTarget:
    host: str
    port: int
    user: str
    private_key: str = field(repr=False)  # PEM
    known_hosts: str | None = None  # a file path, or known_hosts lines
    insecure_host_key: bool = False
    keepalive: float = 15.0
    connect_timeout: float = 15.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


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
        command_timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.target = target
        self._key = load_private_key(target.private_key)
        self._bridge = AsyncioThread("asyncssh")
        self._sessions = trio.Semaphore(max_sessions)
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
            try:
                with trio.fail_after(deadline):
                    for attempt in (1, 2):
                        await self._ensure_connected()
                        try:
                            exit_status, out, err = await self._bridge.run(self._aio_run, command, stdin)
                            break
                        except _Stale as exc:  # dropped while idle; nothing was sent, so retry once
                            self._mark_broken(exc)
                            if attempt == 2:
                                raise ClusterUnavailable(f"SSH to {self.target.address} keeps dropping") from None
            except trio.TooSlowError:
                raise ClusterUnavailable(f"command timed out after {deadline:g}s on {self.target.address}") from None
            except (OSError, asyncssh.Error) as exc:
                self._mark_broken(exc)
                raise ClusterUnavailable(f"SSH to {self.target.address} failed: {_describe(exc)}") from None
        self.commands += 1
        return CommandResult(exit_status, out, err)

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
        if self.target.insecure_host_key:
            return None
        value = self.target.known_hosts
        if value is None:
            return asyncssh.import_known_hosts("")  # trust nothing: refuse, loudly
        if "\n" in value:
            return asyncssh.import_known_hosts(value)
        return asyncssh.read_known_hosts(str(Path(value)))

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

    async def _aio_run(self, command: str, stdin: str | None) -> tuple[int | None, str, str]:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise _Stale("connection closed while idle")
        proc = await conn.create_process(command, encoding="utf-8", errors="replace")
        try:
            out, err = await proc.communicate(stdin)
            return proc.exit_status, out or "", err or ""
        except asyncio.CancelledError:
            # Closing alone leaves the command running (sshd keeps the channel until
            # it exits); OpenSSH >= 7.9 delivers a signal request to it.
            with contextlib.suppress(asyncssh.Error, OSError):
                proc.send_signal("KILL")
            raise
        finally:
            proc.close()

    async def _aio_close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None


class _Stale(Exception):
    """The connection was found closed before a command was sent."""


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
