"""Interactive jobs' proxies in local mode: one child process per job, supervised by the daemon.

Why processes: a proxy copies every byte a user moves (SSH decryption included) in
Python. Run as tasks of the daemon (LocalProxies in its own process), four streaming
proxies kept the daemon's one GIL so busy that upstream's ``/runstatus`` p99 went from
a few ms to seconds (``python -m bench interactive_load``). Each child is the same
``slurm-downstream proxy`` command a Kubernetes proxy pod runs, with its own SSH
connection to the login node, so the data plane and the control plane share nothing
but the machine's cores.

What the daemon keeps, and why:

* the **listening socket**: bound here, on the port the URL names, and handed to the
  child (``--listen-fd``). The daemon keeps its copy, so a child that dies is replaced
  on the same port (the URL does not change), connections made meanwhile wait in the
  backlog, and no other process can take the port between two children;
* a **control socket pair** per child (``--control-fd``): the child reports its counters
  (connections, bytes) on it, which the admin page and ``/metrics`` show, and stops when
  it reads end of file there: the kernel closes the daemon's end when the daemon exits
  in any way, SIGKILL included, so no proxy outlives its daemon;
* the **process**: restarted with exponential backoff when it exits on its own (each exit
  is reported through ``on_exit``, which the daemon logs with the job and counts),
  restarted at once with the new target when the job moved node (a requeue), terminated
  (SIGTERM, then SIGKILL) when the job's proxy is stopped or the daemon stops. A child
  that exits with the configuration error code (2) would fail the same way again: it
  is not restarted, and the proxy is FAILED (the daemon counts that against the job).

Children run in a session of their own: a terminal's Ctrl-C reaches the daemon, which
stops them, not each child behind its back. The SSH key reaches them through their
environment (as it reaches the daemon), never their command line.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from adapters.errors import DownstreamError
from adapters.proxy.base import ProxyState, ProxyStatus, ProxyTarget
from adapters.proxy.local import check_port_range, listen_in_range

log = logging.getLogger(__name__)

EXIT_CONFIG = 2  # the proxy command's exit code for bad configuration: restarting would not help


class ProxyExited(DownstreamError):
    """A job's proxy process exited without being asked to; it is restarted (or given up, see ``permanent``)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# key, why, how many exits in a row (1-based): the daemon logs it with the job and counts it
ExitHook = Callable[[str, ProxyExited, int], None]


@dataclass
class _Counters:
    connections: int = 0
    connections_total: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def plus(self, other: _Counters) -> _Counters:
        """``other`` counted after these: totals add up; open connections are the later count's."""
        return _Counters(other.connections, self.connections_total + other.connections_total,
                         self.bytes_up + other.bytes_up, self.bytes_down + other.bytes_down)


@dataclass
class _Child:
    target: ProxyTarget
    listener: trio.SocketListener
    port: int
    url: str
    restarts: int = 0
    state: ProxyState = ProxyState.STARTING
    error: str = ""
    pid: int | None = None
    earlier: _Counters = field(default_factory=_Counters)  # what the processes before this one counted
    now: _Counters = field(default_factory=_Counters)  # the running process's own report
    settled: trio.Event = field(default_factory=trio.Event)  # this process reported, or exited
    partial: bytes = b""  # the start of a report line not read whole yet
    last_code: int | None = None  # the last process's exit code
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)

    def status(self) -> ProxyStatus:
        total = self.earlier.plus(self.now)
        return ProxyStatus(self.state, url=self.url if self.state is ProxyState.SERVING else "", error=self.error,
                           connections=total.connections, connections_total=total.connections_total,
                           bytes_up=total.bytes_up, bytes_down=total.bytes_down, restarts=self.restarts,
                           pid=self.pid)


class ChildProxies:
    """The ProxyBackend that runs every job's proxy as a child process (see the module's docstring).

    ``command`` is the proxy command without its per-job arguments (``[python, -m, daemon.cli,
    proxy]``); ``env`` is the children's whole environment (SSH settings and key, log settings).
    ``ports`` as LocalProxies': ``(0, 0)`` lets the OS choose, a range is handed out round-robin.
    ``nice``: the children's CPU priority below the daemon's. Processes, not the GIL, share the
    cores now: at equal priority, four streaming proxies (plus the sshd and clients they keep
    busy) left the daemon a twelfth of the machine and its answers took seconds; niced, they
    take whatever CPU the daemon leaves, which is nearly all of it.
    """

    def __init__(self, command: Sequence[str], env: Mapping[str, str], *, bind: str = "0.0.0.0",
                 public_host: str = "localhost", ports: tuple[int, int] = (0, 0), backoff: float = 0.5,
                 backoff_cap: float = 30.0, stable_after: float = 30.0, ready_timeout: float = 20.0,
                 stop_grace: float = 3.0, nice: int = 10, on_exit: ExitHook | None = None) -> None:
        self._command = list(command)
        self._env = dict(env)
        self._bind = bind
        self._public_host = f"[{public_host}]" if ":" in public_host else public_host
        self._ports = check_port_range(ports)
        self._next_port = self._ports[0]
        self._backoff, self._backoff_cap, self._stable_after = backoff, backoff_cap, stable_after
        self._ready_timeout, self._stop_grace, self._nice = ready_timeout, stop_grace, nice
        self.on_exit = on_exit
        self._children: dict[str, _Child] = {}
        self._failed: dict[str, ProxyStatus] = {}  # no port to listen on
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the children's supervisors until cancelled; cancelling terminates every child."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:  # every supervisor has terminated its process by now (their finally blocks are shielded)
            self._nursery = None
            for child in self._children.values():
                child.listener.socket.close()
            self._children.clear()

    # ---------------------------------------------------------------- ProxyBackend
    async def start(self, target: ProxyTarget) -> ProxyStatus:
        """Run ``target.key``'s proxy process (or keep it); a moved target restarts it on the same port."""
        async with self._lock:
            nursery = self._nursery
            if nursery is None:
                raise RuntimeError("ChildProxies.run() is not running")
            child = self._children.get(target.key)
            if child is not None and child.target == target:
                if child.state is not ProxyState.STARTING:
                    return child.status()
            elif child is not None:  # the job moved (requeued onto another node): same port, new target
                log.info("Re-aiming proxy %s from %s:%d to %s:%d", target.key, child.target.host, child.target.port,
                         target.host, target.port)
                await self._end(child)
                child = _Child(target, child.listener, child.port, child.url, restarts=child.restarts + 1,
                               earlier=child.earlier.plus(child.now))
                child.earlier.connections = 0
                self._children[target.key] = child
                await nursery.start(self._supervise, child)
            else:
                try:
                    listener, self._next_port = await listen_in_range(
                        self._bind, self._ports, self._next_port, {c.port for c in self._children.values()})
                except OSError as exc:
                    status = ProxyStatus(ProxyState.FAILED, error=f"cannot listen on {self._bind}: "
                                         f"{exc.strerror or exc}")
                    self._failed[target.key] = status
                    log.error("Proxy %s to %s:%d not started: %s", target.key, target.host, target.port, status.error)
                    return status
                port = listener.socket.getsockname()[1]
                child = _Child(target, listener, port, f"http://{self._public_host}:{port}/")
                self._children[target.key] = child
                self._failed.pop(target.key, None)
                await nursery.start(self._supervise, child)
                log.info("Proxy %s listens on %s:%d, users open %s", target.key, self._bind, port, child.url)
            settled = child.settled
        with trio.move_on_after(self._ready_timeout):  # outside the lock: other jobs' proxies start meanwhile
            await settled.wait()
        return child.status()

    async def stop(self, key: str) -> None:
        """Terminate ``key``'s process and close its port; unknown keys are fine."""
        async with self._lock:
            self._failed.pop(key, None)
            child = self._children.pop(key, None)
            if child is None:
                return
            await self._end(child)
            child.listener.socket.close()
        total = child.earlier.plus(child.now)
        log.info("Stopped proxy %s to %s:%d (process %s, %d connection(s) served)", key, child.target.host,
                 child.target.port, child.pid or "-", total.connections_total)

    def status(self, key: str) -> ProxyStatus | None:
        child = self._children.get(key)
        return child.status() if child is not None else self._failed.get(key)

    async def keys(self) -> set[str]:
        return set(self._children) | set(self._failed)

    def pids(self) -> dict[str, int]:
        """The running children's process ids, by key (for tests and the admin page)."""
        return {key: c.pid for key, c in self._children.items() if c.pid is not None}

    # ---------------------------------------------------------------- supervision
    async def _end(self, child: _Child) -> None:
        child.scope.cancel()
        await child.done.wait()

    async def _supervise(self, child: _Child, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the child's process again and again until cancelled (stop, re-aim, the daemon stopping).

        Nothing raised here may reach the nursery (it would end the daemon): a process that could
        not be started, or a bug, counts as an exit and is retried like one.
        """
        in_a_row = 0
        task_status.started()
        try:
            with child.scope:
                while True:
                    began = trio.current_time()
                    try:
                        why = f"proxy process {child.pid} {_exit_text(await self._run_once(child))}"
                        permanent = child.last_code == EXIT_CONFIG
                    except Exception as exc:  # noqa: BLE001 - see the docstring; Cancelled is a BaseException
                        if not isinstance(exc, OSError):
                            log.exception("Proxy %s: supervising its process failed", child.target.key)
                        why, permanent = f"proxy process not started: {exc}", False
                    ran = trio.current_time() - began
                    in_a_row = 1 if ran >= self._stable_after else in_a_row + 1
                    why += f" after {ran:.1f} s"
                    if permanent:
                        child.state, child.error = ProxyState.FAILED, f"{why} (configuration error: not restarted)"
                    else:
                        delay = min(self._backoff_cap, self._backoff * 2 ** min(in_a_row - 1, 30))
                        child.state, child.error = ProxyState.STARTING, f"{why}; restarting in {delay:.1f} s"
                    child.earlier, child.now = child.earlier.plus(child.now), _Counters()
                    child.earlier.connections = 0
                    child.settled.set()
                    self._exited(child, ProxyExited(child.error, permanent=permanent), in_a_row)
                    if permanent:
                        await trio.sleep_forever()  # FAILED until the daemon stops it
                    await trio.sleep(delay)
                    child.restarts += 1
                    child.settled = trio.Event()
        finally:
            child.done.set()

    def _exited(self, child: _Child, exc: ProxyExited, in_a_row: int) -> None:
        if self.on_exit is None:
            log.warning("Proxy %s: %s", child.target.key, exc)
            return
        try:
            self.on_exit(child.target.key, exc, in_a_row)
        except Exception:  # the hook's failure must not stop the restarts
            log.exception("Proxy %s: the exit hook failed", child.target.key)

    async def _run_once(self, child: _Child) -> int:
        """One process of the child: spawn, read its reports until it exits; terminate it if cancelled."""
        target = child.target
        ours, theirs = socket.socketpair()
        listen_fd = child.listener.socket.fileno()
        argv = [*self._command, "--listen", f"{_host(self._bind)}:{child.port}", "--listen-fd", str(listen_fd),
                "--control-fd", str(theirs.fileno()), "--target", f"{_host(target.host)}:{target.port}",
                "--key", target.key, "--nice", str(self._nice)]
        try:
            process = await trio.lowlevel.open_process(
                argv, env=self._env, stdin=subprocess.DEVNULL, pass_fds=(listen_fd, theirs.fileno()),
                start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child has its copy; ours must go, or the child's EOF would never come
        child.pid = process.pid
        child.state, child.now, child.partial = ProxyState.STARTING, _Counters(), b""
        log.info("Started proxy to %s:%d as process %d (job number %s)", target.host, target.port, process.pid,
                 target.key)
        control = trio.socket.from_stdlib_socket(ours)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_reports, child, control)
                await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._terminate(process)
                with trio.move_on_after(1):  # what it said last (a stopped child reports its final counters)
                    await self._read_reports(child, control)
                control.close()
        assert process.returncode is not None
        child.last_code = process.returncode
        return process.returncode

    async def _terminate(self, process: trio.Process) -> None:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(self._stop_grace):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

    @staticmethod
    async def _read_reports(child: _Child, control: trio.socket.SocketType) -> None:
        """The child's JSON lines of counters; the first one says it serves."""
        while True:
            try:
                data = await control.recv(65536)
            except OSError:
                return
            if not data:
                return
            *lines, child.partial = (child.partial + data).split(b"\n")
            for line in lines:
                try:
                    report = json.loads(line)
                    child.now = _Counters(int(report["connections"]), int(report["connections_total"]),
                                          int(report["bytes_up"]), int(report["bytes_down"]))
                    state = ProxyState(report["state"])
                except (ValueError, KeyError, TypeError):
                    log.warning("Proxy %s: an unreadable report from process %s: %r", child.target.key, child.pid,
                                line[:200])
                    continue
                child.state, child.error = state, str(report.get("error") or "")
                child.settled.set()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
