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
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping

import trio

from adapters.proxy.base import ProxyState, ProxyTarget
from adapters.proxy.local import LocalProxies
from adapters.ssh import SSHClient, SSHTarget
from config.settings import _HOST_RE, ConfigError, _is_ip, logging_settings, ssh_login
from daemon.logs import configure_logging
from daemon.server import describe_key, stop_on_signal

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


def ssh_target_from_env(env: Mapping[str, str]) -> SSHTarget:
    """The SSH half of the daemon's settings, with the daemon's checks; raises ConfigError."""
    target = ssh_login(env)
    describe_key(target.private_key)  # refuses an unusable key with the daemon's message
    return target


def main(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        ssh = ssh_target_from_env(env)
        level, fmt = logging_settings(env)  # as the daemon that started the pod logs
    except ConfigError as exc:
        print(f"slurm-downstream proxy: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(level, fmt)
    (listen_host, listen_port), (host, port) = args.listen, args.target
    target = ProxyTarget(key=args.key or f"{host}:{port}", host=host, port=port)
    try:
        return trio.run(_serve, ssh, listen_host, listen_port, target)
    except KeyboardInterrupt:
        return 0


async def _serve(ssh_target: SSHTarget, listen_host: str, listen_port: int, target: ProxyTarget) -> int:
    async with SSHClient(ssh_target) as ssh:
        proxies = LocalProxies(ssh, bind=listen_host, public_host=listen_host, ports=(listen_port, listen_port))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal, nursery.cancel_scope)
            await nursery.start(proxies.run)
            status = await proxies.start(target)
            if status.state is ProxyState.FAILED:
                nursery.cancel_scope.cancel()
                return EXIT_BIND
            if await proxies.probe(target.host, target.port):
                log.info("%s:%d is reachable through the login node", target.host, target.port)
            else:  # the job's service may still be starting; each user connection tries again
                log.warning("%s:%d is not reachable through %s yet (%s); users get closed connections until it is",
                            target.host, target.port, ssh.address, ssh.last_error or "nothing listens there")
    return 0
