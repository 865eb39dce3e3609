"""Preflight of the Kubernetes proxy pods' SSH key: it should forward to the compute nodes and nothing else.

A proxy pod handles users' traffic; if its key can run a command on the login node, a
compromised pod is a shell as the account that runs every job. The key is read from the
pods' Secret (the one thing the daemon's Role may read: config/deploy/rbac.yaml), tried
on the login node (adapters/proxy/key_probe.py) and judged here. Never raises: each
finding is a Check with a hint, like the rest of preflight.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from adapters.errors import DownstreamError
from adapters.proxy.key_probe import KeyReach, probe_key
from adapters.slurm import parsers
from adapters.ssh import SSHClient, load_private_key
from config.settings import Settings
from daemon.preflight import Check, Level

if TYPE_CHECKING:
    from adapters.kube.client import KubeClient

log = logging.getLogger(__name__)

PROBED_NODES = 8  # nodes whose forwarding is tried (a sample: a big cluster's thousands would be a storm at start)
PROXY_KEY_LINE = 'restrict,port-forwarding,command="/bin/false",permitopen="NODEADDR:*",... ssh-ed25519 AAAA...'


async def proxy_key_checks(ssh: SSHClient, settings: Settings, kube: KubeClient | None) -> list[Check]:
    """Kubernetes mode: read the proxy pods' key from their Secret (through ``kube``, the daemon's client) and try
    it on the login node; else nothing."""
    proxy = settings.proxy
    if proxy.mode != "kubernetes" or kube is None:
        return []
    where = f"Secret {proxy.namespace}/{proxy.ssh_secret}"
    from adapters.kube.client import KubeNotFound  # the kubernetes package is heavy: imported only in this mode
    from adapters.kube.proxies import read_proxy_key

    try:
        pem = await read_proxy_key(kube, proxy.namespace, proxy.ssh_secret)
    except KubeNotFound:
        return [Check("proxy key", "error", f"{where} does not exist: proxy pods cannot start",
                      f"kubectl -n {proxy.namespace} create secret generic {proxy.ssh_secret} --from-file=pkey=KEYFILE "
                      "(README: Who can reach an interactive job)")]
    except ValueError as exc:
        return [Check("proxy key", "error", str(exc), "put the proxy pods' private key under pkey (PEM or base64 of it)")]
    except DownstreamError as exc:  # forbidden, or the API is not reachable: the pods may be fine, unchecked
        return [Check("proxy key", "warning", f"{where} could not be read to check its key: {exc}",
                      f"let the daemon's Role get the Secret {proxy.ssh_secret} (config/deploy/rbac.yaml)")]
    same = load_private_key(pem).public_data == load_private_key(settings.ssh_pkey).public_data
    try:
        listed = parsers.parse_node_addresses((await ssh.run("scontrol -o show nodes")).stdout)
    except DownstreamError as exc:
        log.warning("preflight: node addresses not read (%s); the proxy key's forwarding is not checked", exc)
        listed = {}
    hosts = sorted(set(listed.values()))[:PROBED_NODES]
    reach = await probe_key(ssh.target, pem, hosts, settings.service_port)
    return judge(where, settings.ssh_user, reach, same_as_daemon=same, nodes_total=len(set(listed.values())))


def judge(where: str, user: str, reach: KeyReach, *, same_as_daemon: bool, nodes_total: int) -> list[Check]:
    """Judge what the proxy pods' key (``where``: its Secret) did on the login node: it should forward to the
    compute nodes and do nothing else (README, *Who can reach an interactive job*)."""
    restrict = f"restrict its line in ~{user}/.ssh/authorized_keys on the login node: {PROXY_KEY_LINE}"
    if reach.login_error:
        return [Check("proxy key", "error", f"the key in {where} cannot log in as {user}: {reach.login_error}",
                      f"add its public key to ~{user}/.ssh/authorized_keys, restricted: {PROXY_KEY_LINE}")]
    checks = []
    if same_as_daemon:
        checks.append(Check("proxy key", "warning", f"the proxy pods' key ({where}) is the daemon's own key",
                            "give the proxy pods a key of their own (README: Who can reach an interactive job) and "
                            + restrict))
    if reach.runs_commands:
        checks.append(Check("proxy key", "warning",
                            f"the key in {where} runs commands on the login node as {user}: a proxy pod, which "
                            "carries users' traffic, could open a shell as the account that runs every job",
                            restrict))
    prohibited = [f.host for f in reach.forwarding if f.answer == "prohibited"]
    unknown = [f for f in reach.forwarding if f.answer == "unknown"]
    checked = f"{len(reach.forwarding)} of {nodes_total} node(s) checked"
    if prohibited:
        level: Level = "error" if len(prohibited) == len(reach.forwarding) else "warning"
        checks.append(Check("proxy forwarding", level,
                            f"sshd refuses the key in {where} forwarding to {', '.join(prohibited)} ({checked}): "
                            "interactive jobs there never get a URL",
                            "give its authorized_keys line port-forwarding and a permitopen=\"NODEADDR:*\" for each "
                            "node (Slurm's NodeAddr, as `scontrol show node` prints it)"))
    elif unknown:
        checks.append(Check("proxy forwarding", "warning", f"no answer for {unknown[0].host}: {unknown[0].detail}",
                            "check that the login node reaches the compute nodes"))
    elif reach.forwarding:
        checks.append(Check("proxy forwarding", "ok", f"the key in {where} may forward to the nodes ({checked})"))
    if not (same_as_daemon or reach.runs_commands):
        checks.insert(0, Check("proxy key", "ok", f"the key in {where} runs no command on the login node"))
    return checks
