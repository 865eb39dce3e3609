"""``slurm-downstream proxy``: one interactive job's proxy, as a Kubernetes proxy pod runs it.

The pod (one per interactive job, ``jarvice-job-proxy-<number>``) listens on
``--listen`` and carries every user connection, byte for byte, over its own SSH
connection to the login node and on to the job's web service at ``--target``: the
same LocalProxies the daemon runs in local mode, with exactly one proxy in it.

SSH comes from the environment, never the command line (a pod's arguments are
visible to anyone who can read the pod): JARVICE_SLURM_CLUSTER_ADDR,
JARVICE_SLURM_CLUSTER_PORT, JARVICE_SLURM_SSH_USER, JARVICE_SLURM_SSH_PKEY (from the
Secret; PEM or base64 of PEM), JARVICE_SLURM_SSH_KNOWN_HOSTS or
JARVICE_SLURM_SSH_INSECURE_HOST_KEY, JARVICE_SLURM_SSH_KEEPALIVE and
JARVICE_SLURM_SCHED_LOGLEVEL; the daemon-only variables (server key, scratch...) are
not needed. Health: this is a TCP proxy only, with no HTTP endpoint of its own; a
``tcpSocket`` probe on the listen port is ready once the listener is bound. Exit
codes: 0 on SIGTERM/SIGINT, 1 when the port cannot be bound, 2 on bad configuration.

The daemon runs the same command as a child process per job in local mode
(adapters/proxy/children.py), so that the bytes users move never wait for, nor
hold, the daemon's GIL. Two inherited descriptors tie such a child to its daemon:

* ``--listen-fd``: the listening socket the daemon bound (its port is in the URL the
  user got); the daemon keeps its own copy, so a restarted child serves the same
  port, and connections made while it restarts wait in the socket's backlog;
* ``--control-fd``: one end of a socket pair. The child writes a JSON line of its
  counters (connections, bytes) there when they change, which is how the daemon's
  admin page and metrics see its traffic, and reads it only for end of file: the
  kernel closes the daemon's end when the daemon exits in any way, SIGKILL
  included, and the child then stops (exit 0). ``PR_SET_PDEATHSIG`` would not do:
  it fires when the *thread* that forked exits, and trio forks from a worker thread
  that ends after ten idle seconds.

The SSH key reaches a child through its environment (readable only by the daemon's
own user, like the daemon's), never its command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping

import trio

from adapters.proxy.base import ProxyState, ProxyTarget
from adapters.proxy.local import LocalProxies
from adapters.ssh import SSHClient, SSHTarget
from config.settings import _HOST_RE, ConfigError, Settings, _is_ip, logging_settings, ssh_login
from daemon.logs import configure_logging
from daemon.process import describe_key, on_signal

log = logging.getLogger("slurm_downstream.proxy")

EXIT_BIND = 1
EXIT_CONFIG = 2


def host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``, checked, for argparse."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if not (_HOST_RE.match(host) or _is_ip(host)):
        raise argparse.ArgumentTypeError(f"not a host name or address: {host!r}")
    return host, int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=host_port, default=("0.0.0.0", 8080), metavar="ADDR:PORT",
                        help="where users connect (default 0.0.0.0:8080)")
    parser.add_argument("--target", type=host_port, required=True, metavar="HOST:PORT",
                        help="the job's web service, as the login node reaches it (the node's NodeAddr and port)")
    parser.add_argument("--key", default="", help="the job's number, for log lines (default: the target)")
    parser.add_argument("--listen-fd", type=int, default=None, metavar="FD",
                        help="serve this inherited listening socket instead of binding --listen (the daemon's children)")
    parser.add_argument("--control-fd", type=int, default=None, metavar="FD",
                        help="an inherited socket: counters are reported on it, and its end of file stops the proxy")
    parser.add_argument("--nice", type=int, default=0, choices=range(20), metavar="0..19",
                        help="lower this process's CPU priority (the daemon's children: its answers come first)")


def ssh_target_from_env(env: Mapping[str, str]) -> SSHTarget:
    """The SSH half of the daemon's settings, with the daemon's checks; raises ConfigError."""
    target = ssh_login(env)
    describe_key(target.private_key)  # refuses an unusable key with the daemon's message
    return target


def lower_priority(nice: int) -> None:
    """Yield the CPU to the daemon: this process's nice value, and its autogroup's.

    Called before any thread starts (asyncssh's, trio's workers), which then inherit it. The
    daemon starts each proxy in a session of its own, and Linux (``sched_autogroup_enabled``,
    the default on most distributions) shares the CPU first between sessions' autogroups and
    applies a nice value only within one: the process's nice alone would change nothing against
    the daemon, so the autogroup (this process alone) gets the same nice value. Measured on the
    benchmark's machine: without it, four streaming proxies each weighed as much as the whole daemon.
    """
    os.nice(nice)
    try:
        with open("/proc/self/autogroup", "w", encoding="ascii") as group:
            group.write(str(nice))
    except OSError:  # no autogroups (kernel without them, or a container hiding /proc/self/autogroup)
        pass


def main(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        ssh = ssh_target_from_env(env)
        level, fmt = logging_settings(env)  # as the daemon that started the pod logs
    except ConfigError as exc:
        print(f"slurm-downstream proxy: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(level, fmt)
    if args.nice:
        lower_priority(args.nice)
    (listen_host, listen_port), (host, port) = args.listen, args.target
    target = ProxyTarget(key=args.key or f"{host}:{port}", host=host, port=port)
    try:
        return trio.run(_serve, ssh, listen_host, listen_port, target, args.listen_fd, args.control_fd)
    except KeyboardInterrupt:
        return 0


async def _serve(ssh_target: SSHTarget, listen_host: str, listen_port: int, target: ProxyTarget,
                 listen_fd: int | None = None, control_fd: int | None = None) -> int:
    adopt = None
    if listen_fd is not None:  # bound by the daemon: serve it as it is
        adopt = trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=listen_fd)))
    reporter = None
    if control_fd is not None:
        reporter = _Reporter(trio.socket.from_stdlib_socket(socket.socket(fileno=control_fd)), target.key)
    stop = trio.Event()
    async with SSHClient(ssh_target, session_on_connect=True) as ssh:  # tunnels only: see SSHClient._prime_nodelay
        proxies = LocalProxies(ssh, bind=listen_host, public_host=listen_host, ports=(listen_port, listen_port),
                               adopt=adopt)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_signal, stop.set)
            nursery.start_soon(_stop_when, stop, reporter, nursery.cancel_scope)
            if reporter is not None:
                nursery.start_soon(reporter.lifeline, stop)
            await nursery.start(proxies.run)
            status = await proxies.start(target)
            if status.state is ProxyState.FAILED:
                nursery.cancel_scope.cancel()
                return EXIT_BIND
            if reporter is not None:  # it serves (users' connections are accepted): the daemon may give the URL out
                nursery.start_soon(reporter.run, proxies, stop)
            if await proxies.probe(target.host, target.port):
                log.info("%s:%d is reachable through the login node", target.host, target.port)
            else:  # the job's service may still be starting; each user connection tries again
                log.warning("%s:%d is not reachable through %s yet (%s); users get closed connections until it is",
                            target.host, target.port, ssh.address, ssh.last_error or "nothing listens there")
    return 0


async def _stop_when(stop: trio.Event, reporter: _Reporter | None, scope: trio.CancelScope) -> None:
    """The orderly stop: the daemon hears the last counters (the bytes of the final moments), then all closes."""
    await stop.wait()
    if reporter is not None:
        with trio.move_on_after(1):
            await reporter.send()
    scope.cancel()


REPORT_INTERVAL = 0.5  # seconds between two counter reports to the daemon (only when they changed)


class _Reporter:
    """The child's end of the control socket (``--control-fd``): counters out, the daemon's end of file in."""

    def __init__(self, control: trio.socket.SocketType, key: str) -> None:
        self.control = control
        self.key = key
        self.proxies: LocalProxies | None = None  # set once it serves: nothing to report before
        self.last: dict | None = None

    async def lifeline(self, stop: trio.Event) -> None:
        """Stop when the daemon's end closes: the daemon is gone, however it died (SIGKILL included)."""
        try:
            while await self.control.recv(4096):
                pass  # the daemon sends nothing today; whatever it sends is not end of file
        except OSError:
            pass
        if not stop.is_set():
            log.info("the daemon that started this proxy is gone: stopping")
            stop.set()

    async def run(self, proxies: LocalProxies, stop: trio.Event) -> None:
        """Report when the counters change (the first report says it serves)."""
        self.proxies = proxies
        while await self.send():
            await trio.sleep(REPORT_INTERVAL)
        stop.set()  # the daemon is gone

    async def send(self) -> bool:
        """Report the counters if they changed; False once the daemon's end is closed."""
        status = self.proxies.status(self.key) if self.proxies is not None else None
        if status is None:
            return True
        now = {"state": status.state.value, "error": status.error, "connections": status.connections,
               "connections_total": status.connections_total, "bytes_up": status.bytes_up,
               "bytes_down": status.bytes_down, "pid": os.getpid()}
        if now != self.last:
            try:
                await self.control.send((json.dumps(now) + "\n").encode())
            except OSError:
                return False
            self.last = now
        return True


# ------------------------------------------------------------------ the daemon's local-mode children
def child_command() -> list[str]:
    """This command as the daemon starts it for each job in local mode (the per-job arguments follow)."""
    return [sys.executable, "-m", "daemon.cli", "proxy"]


def child_env(settings: Settings, base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What a child reads (``ssh_target_from_env``, ``logging_settings``): the daemon's SSH and log settings.

    Built from the daemon's settings, not copied from its environment: the daemon may have been
    configured otherwise (the tests pass settings in-process), and nothing daemon-only (the
    server key) has to reach a process that handles users' traffic. The known_hosts is passed
    explicitly, so a child never trusts on first use: by the time a job runs, the daemon has
    connected and pinned the login node's key.
    """
    env = {k: base[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH") if k in base}
    env |= {
        "JARVICE_SLURM_CLUSTER_ADDR": settings.cluster_addr,
        "JARVICE_SLURM_CLUSTER_PORT": str(settings.cluster_port),
        "JARVICE_SLURM_SSH_USER": settings.ssh_user,
        "JARVICE_SLURM_SSH_PKEY": settings.ssh_pkey,
        "JARVICE_SLURM_SSH_KEEPALIVE": repr(settings.ssh_keepalive),
        "JARVICE_SLURM_SCHED_LOGLEVEL": str(settings.log_level),
        "JARVICE_SLURM_LOG_FORMAT": settings.log_format,
    }
    if settings.ssh_insecure_host_key:
        env["JARVICE_SLURM_SSH_INSECURE_HOST_KEY"] = "true"
    elif settings.ssh_known_hosts:
        env["JARVICE_SLURM_SSH_KNOWN_HOSTS"] = settings.ssh_known_hosts
    return env
