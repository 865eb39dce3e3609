"""What the Kubernetes proxy pods' SSH key may do on the login node, asked of sshd itself.

A proxy pod carries users' browser traffic, so its key should be good for one thing:
forwarding to the compute nodes. Whether it is depends on the options of its line in the
service user's ``authorized_keys`` (``restrict,port-forwarding,command="/bin/false",
permitopen=...``), which nobody can read from here; so the key is tried the way an
attacker in the pod would (run a command) and the way a proxy does (open ``direct-tcpip``
channels to a few nodes' ``NodeAddr``). sshd's answers say the rest:

* a command that prints our marker ran: the key opens shells;
* a channel refused as *administratively prohibited* is forwarding the key may not do
  (no ``port-forwarding``, or a ``permitopen`` without that node); any other outcome
  (connected, or *connection refused* because nothing listens on the port) means sshd
  agreed to forward there.

The key itself is read from the proxy pods' Secret by the caller; it is held in memory
for the probe only and never logged.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

import trio

from adapters.errors import ClusterUnavailable
from adapters.ssh import ForwardingProhibited, SSHClient, TargetUnreachable
from config.settings import SSHTarget

PROBE_TIMEOUT = 10.0  # seconds for the login, the command, and each channel


@dataclass(frozen=True)
class Forwarding:
    """sshd's answer to one ``direct-tcpip`` request: ``allowed``, ``prohibited`` or ``unknown`` (why in ``detail``)."""

    host: str
    answer: str
    detail: str = ""


@dataclass(frozen=True)
class KeyReach:
    """What the key did on the login node; ``login_error`` set means nothing else was tried."""

    login_error: str = ""
    runs_commands: bool = False
    forwarding: tuple[Forwarding, ...] = ()


async def _forwarding(ssh: SSHClient, host: str, port: int, timeout: float) -> Forwarding:
    try:
        tunnel = await ssh.open_tunnel(host, port, timeout=timeout)
    except ForwardingProhibited as exc:
        return Forwarding(host, "prohibited", str(exc))
    except TargetUnreachable as exc:  # sshd tried to connect: it forwards there
        return Forwarding(host, "allowed", str(exc))
    except ClusterUnavailable as exc:
        return Forwarding(host, "unknown", str(exc))
    await tunnel.aclose()
    return Forwarding(host, "allowed")


async def probe_key(target: SSHTarget, private_key: str, hosts: Sequence[str], port: int,
                    *, timeout: float = PROBE_TIMEOUT) -> KeyReach:
    """Log in with ``private_key`` where ``target`` points, try a command, then a channel to each host's ``port``."""
    marker = secrets.token_hex(8)
    async with SSHClient(replace(target, private_key=private_key, connect_timeout=timeout),
                         command_timeout=timeout, backoff_base=0.0) as ssh:
        try:
            result = await ssh.run(f"echo {marker}")
        except ClusterUnavailable as exc:
            if not ssh.connected:
                return KeyReach(login_error=str(exc))
            runs = False  # sshd took the key but refused a session: no command either
        else:
            runs = result.exit_status == 0 and marker in result.stdout
        answers: list[Forwarding] = [Forwarding(host, "unknown") for host in hosts]  # in the order of hosts

        async def one(i: int) -> None:
            answers[i] = await _forwarding(ssh, hosts[i], port, timeout)

        async with trio.open_nursery() as nursery:
            for i in range(len(hosts)):
                nursery.start_soon(one, i)
    return KeyReach(runs_commands=runs, forwarding=tuple(answers))
