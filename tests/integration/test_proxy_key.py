"""Preflight of the Kubernetes proxy pods' key, against the login node's real sshd on every tested version.

``tests/cluster/up`` gives the service user's ``authorized_keys`` three proxy keys, restricted as sites restrict
them (``Cluster.proxy_key``): ``proxy`` as the README says (forwarding to the nodes' NodeAddr only, any session
answered by /bin/false), ``proxy_shell`` with ``restrict,port-forwarding`` and no forced command (it runs
commands), ``proxy_no_forwarding`` without ``port-forwarding``. sshd alone decides what each may do; the checks
must say it as an operator needs it.

Replaced: the Kubernetes API server (none can run here), by tests/support/kube_api.py, which serves the proxy
pods' Secret as the API server does (``stringData`` stored base64'd in ``data``) and can refuse it with 403.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from adapters.ssh import SSHClient
from config.settings import Settings
from daemon.preflight import Check, exit_code, format_checks
from daemon.preflight_proxy import proxy_key_checks
from daemon.server import open_kube, ssh_target
from tests.integration.conftest import cluster_env, settings, slurm
from tests.support.cluster import current
from tests.support.kube_api import KubeAPIStandIn

NS = "jarvice-jobs-keys"
SECRET = "proxy-key-it"


@pytest.fixture
def api() -> Iterator[KubeAPIStandIn]:
    with KubeAPIStandIn() as stand_in:
        yield stand_in


def store_key(api: KubeAPIStandIn, pem: str) -> None:
    """What the operator does once: kubectl -n NS create secret generic SECRET --from-file=pkey=KEYFILE."""
    api.put({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": SECRET, "namespace": NS},
             "stringData": {"pkey": pem}})


def kube_env(api: KubeAPIStandIn) -> dict[str, str]:
    """Kubernetes proxy mode's variables, as a deployment sets them, with the stand-in as the API."""
    return {"JARVICE_SLURM_PROXY_MODE": "kubernetes", "JARVICE_SLURM_KUBE_API": api.url,
            "JARVICE_SLURM_PROXY_IMAGE": "registry.example/slurm-downstream:test",
            "JARVICE_SLURM_PROXY_SSH_SECRET": SECRET, "JARVICE_JOBS_NAMESPACE": NS,
            "JARVICE_JOBS_DOMAIN": "jarvice.example.com/job$"}


def kube_settings(api: KubeAPIStandIn) -> Settings:
    return settings(**kube_env(api))


async def key_checks(conf: Settings) -> list[Check]:
    """The daemon's checks of the proxy pods' key, with its own SSH connection and Kubernetes client."""
    kube = await open_kube(conf)
    try:
        async with SSHClient(ssh_target(conf)) as ssh:
            checks = await proxy_key_checks(ssh, conf, kube)
    finally:
        if kube is not None:
            kube.close()
    print("\n".join(format_checks(checks)))
    return checks


async def checks_of(conf: Settings) -> dict[str, tuple[str, str]]:
    checks = await key_checks(conf)
    assert len({c.name for c in checks}) == len(checks), "one check of each name"
    return {c.name: (c.level, c.detail) for c in checks}


def node_addresses() -> list[str]:
    out = slurm("scontrol", "-o", "show", "nodes").stdout
    return sorted(w.split("=", 1)[1] for w in out.split() if w.startswith("NodeAddr="))


async def test_a_key_restricted_as_the_readme_says_forwards_to_every_node_and_runs_nothing(
        slurm_cluster: object, api: KubeAPIStandIn) -> None:
    store_key(api, current().proxy_key("proxy"))
    checks = await checks_of(kube_settings(api))
    assert checks["proxy key"] == ("ok", f"the key in Secret {NS}/{SECRET} runs no command on the login node")
    nodes = node_addresses()
    assert checks["proxy forwarding"] == (
        "ok", f"the key in Secret {NS}/{SECRET} may forward to the nodes ({len(nodes)} of {len(nodes)} node(s) checked)")
    assert api.requests_to("GET", f"/secrets/{SECRET}"), "the key was not read from the proxy pods' Secret"


async def test_a_key_that_runs_commands_is_a_warning_that_shows_the_restricted_line(
        slurm_cluster: object, api: KubeAPIStandIn) -> None:
    store_key(api, current().proxy_key("proxy_shell"))
    conf = kube_settings(api)
    checks = await key_checks(conf)
    level, detail = next((c.level, c.detail) for c in checks if c.name == "proxy key")
    hint = next(c.hint for c in checks if c.name == "proxy key")
    assert level == "warning" and f"runs commands on the login node as {conf.ssh_user}" in detail
    assert 'restrict,port-forwarding,command="/bin/false",permitopen=' in hint
    assert {c.name: c.level for c in checks}["proxy forwarding"] == "ok"  # it does forward: only too much else
    assert exit_code(checks) == 0, "a warning: the proxies work, the key is merely too strong"


async def test_a_key_without_forwarding_is_an_error_naming_every_node(slurm_cluster: object,
                                                                      api: KubeAPIStandIn) -> None:
    store_key(api, current().proxy_key("proxy_no_forwarding"))
    checks = await checks_of(kube_settings(api))
    level, detail = checks["proxy forwarding"]
    assert level == "error", "no interactive job could ever get a URL"
    for addr in node_addresses():
        assert addr in detail
    assert checks["proxy key"][0] == "ok"  # /bin/false answers its sessions


async def test_the_daemons_own_key_in_the_secret_is_called_out(slurm_cluster: object, api: KubeAPIStandIn) -> None:
    conf = kube_settings(api)
    store_key(api, conf.ssh_pkey)
    checks = await key_checks(conf)
    details = [c.detail for c in checks if c.name == "proxy key" and c.level == "warning"]
    assert any("is the daemon's own key" in d for d in details), details
    assert any("runs commands" in d for d in details), details


async def test_a_missing_unreadable_or_unusable_secret_is_said_without_touching_the_login_node(
        slurm_cluster: object, api: KubeAPIStandIn) -> None:
    conf = kube_settings(api)
    checks = await checks_of(conf)
    assert checks["proxy key"][0] == "error" and "does not exist: proxy pods cannot start" in checks["proxy key"][1]
    api.forbidden.add(("GET", "secrets"))
    checks = await checks_of(conf)
    assert checks["proxy key"][0] == "warning" and "403" in checks["proxy key"][1]
    api.forbidden.clear()
    api.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NS},
             "stringData": {"key": "no pkey here"}})
    checks = await checks_of(conf)
    assert checks["proxy key"] == ("error", f'Secret {NS}/{SECRET} has no key "pkey" (the proxy pods\' container '
                                            "cannot start)")


async def test_local_mode_has_no_proxy_key_to_check(slurm_cluster: object) -> None:
    assert await key_checks(settings()) == []


def test_slurm_downstream_check_prints_the_proxy_keys_findings(slurm_cluster: object, api: KubeAPIStandIn) -> None:
    """What an operator runs by hand, with the deployment's variables: the finding and its hint on screen."""
    store_key(api, current().proxy_key("proxy_shell"))
    env = {**os.environ, **cluster_env(), **kube_env(api)}
    done = subprocess.run([sys.executable, "-m", "daemon.cli", "check"], env=env, capture_output=True, text=True,
                          timeout=120)
    lines = done.stdout.splitlines()
    warning = next((i for i, line in enumerate(lines) if line.startswith("warning") and "proxy key" in line), None)
    assert warning is not None, done.stdout + done.stderr
    assert "runs commands on the login node" in lines[warning]
    assert "hint:" in lines[warning + 1] and "permitopen" in lines[warning + 1]
    assert any(line.startswith("ok") and "proxy forwarding" in line for line in lines), done.stdout
