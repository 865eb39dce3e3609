"""The JARVICE Helm chart's environment (the contract's *The Helm chart's environment*).

What the chart sets must be read as the chart means it: a namespaced Issuer is not a
ClusterIssuer, the reference's older names still work (and say they are old), the
slurmrestd client's variables are checked together (an unusable combination stops the
start in one line naming the variable), and the pod's own egress
proxy and root CA reach the daemon's outbound HTTP.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import asyncssh
import pytest
import trio

from adapters.errors import DownstreamError
from adapters.kube.client import DEPLOYMENTS, KubeClient
from config.settings import ConfigError, OutboundHTTP, load
from daemon.server import script_environment


@pytest.fixture(scope="module")
def pem() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


@pytest.fixture
def env(pem: str) -> dict[str, str]:
    return {"JARVICE_SLURM_CLUSTER_ADDR": "login.example.org", "JARVICE_SLURM_SSH_PKEY": pem,
            "JARVICE_SCHED_SERVER_KEY": "upstream:s3cret"}


@pytest.mark.parametrize(("old", "new", "value"), [
    ("JARVICE_SINGULARITY_OVERLAY_SIZE", "overlay_size", 100),
    ("JARVICE_BAREMETAL_HTTP_PROXY", "http_proxy", "http://proxy:3128"),
    ("JARVICE_BAREMETAL_HTTPS_PROXY", "https_proxy", "http://proxy:3129"),
    ("JARVICE_BAREMETAL_NO_PROXY", "no_proxy", "localhost,.site"),
    ("JARVICE_JOB_SCRATCH_DIR", "scratch_dir", "/scratch/jarvice"),
])
def test_the_references_names_are_read_and_said_to_be_deprecated(env: dict[str, str], old: str, new: str,
                                                                   value: object) -> None:
    settings = load({**env, old: str(value)})
    assert getattr(settings, new) == value
    assert any(old in note and "deprecated" in note for note in settings.deprecations)


def test_the_current_name_wins_over_the_old_one(env: dict[str, str]) -> None:
    settings = load({**env, "JARVICE_SLURM_OVERLAY_SIZE": "700", "JARVICE_SINGULARITY_OVERLAY_SIZE": "100"})
    assert settings.overlay_size == 700
    assert settings.deprecations == ("JARVICE_SINGULARITY_OVERLAY_SIZE is ignored: JARVICE_SLURM_OVERLAY_SIZE is set "
                                     "(and JARVICE_SINGULARITY_OVERLAY_SIZE is deprecated)",)


JWT = "eyJhbGciOiJSUzI1NiJ9.eyJwcmVmZXJyZWRfdXNlcm5hbWUiOiJqYXJ2aWNlIn0.c2ln"
REST = {"JARVICE_SLURM_CLIENT": "slurmrestd_client", "JARVICE_SLURMRESTD_URL": "http://login:6820/"}


def test_the_slurmrestd_client_takes_the_charts_variables(env: dict[str, str]) -> None:
    keycloak = load({**env, **REST, "JARVICE_KEYCLOAK_TOKEN_URL": "https://kc/realms/j/protocol/openid-connect/token",
                     "JARVICE_KEYCLOAK_CLIENT_SECRET": "s3cret", "JARVICE_SLURM_DATA_PARSER_VERSION": "v0.0.42"})
    assert keycloak.slurm_client == "slurmrestd_client" and keycloak.rest is not None
    assert keycloak.rest.url == "http://login:6820" and keycloak.rest.client_id == "nimbix-slurm-sched-client"
    assert keycloak.rest.username_claim == "preferred_username" and keycloak.rest.parser == "v0.0.42"
    assert "s3cret" not in repr(keycloak) and "nimbix-slurm-sched-client at https://kc" in keycloak.rest.token_source
    static = load({**env, **REST, "JARVICE_SLURM_SA_TOKEN": JWT})
    assert static.rest.token_source == "JARVICE_SLURM_SA_TOKEN (static)" and JWT not in repr(static)
    assert static.has_ssh  # SSH still reaches the files and the web services
    no_ssh = {k: v for k, v in env.items() if not k.startswith("JARVICE_SLURM_")}
    alone = load({**no_ssh, **REST, "JARVICE_SLURM_SA_TOKEN": JWT, "JARVICE_SLURM_SCRATCH_DIR": "/scratch"})
    assert not alone.has_ssh and alone.rest is not None
    url_only = {"JARVICE_SLURMRESTD_URL": REST["JARVICE_SLURMRESTD_URL"]}
    assert load({**env, "JARVICE_SLURM_CLIENT": "ssh_client", **url_only}).rest is None


@pytest.mark.parametrize(("extra", "variable", "why"), [
    ({"JARVICE_SLURM_CLIENT": "rest"}, "JARVICE_SLURM_CLIENT", "expected ssh_client or slurmrestd_client"),
    ({"JARVICE_SLURMRESTD_URL": ""}, "JARVICE_SLURMRESTD_URL", "is required"),
    ({"JARVICE_SLURMRESTD_URL": "login:6820"}, "JARVICE_SLURMRESTD_URL", "http:// or https://"),
    ({}, "JARVICE_SLURM_SA_TOKEN", "needs a service identity"),
    ({"JARVICE_SLURM_SA_TOKEN": "not-a-jwt"}, "JARVICE_SLURM_SA_TOKEN", "not a JWT"),
    ({"JARVICE_KEYCLOAK_TOKEN_URL": "http://kc/token"}, "JARVICE_KEYCLOAK_CLIENT_SECRET", "is required"),
    ({"JARVICE_SLURM_SA_TOKEN": JWT, "JARVICE_SLURM_DATA_PARSER_VERSION": "42"},
     "JARVICE_SLURM_DATA_PARSER_VERSION", "auto or a version"),
])
def test_an_unusable_slurmrestd_setting_is_named_in_one_line(env: dict[str, str], extra: dict[str, str], variable: str,
                                                             why: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({**env, **REST, **extra})
    assert info.value.variable == variable and why in info.value.why and "\n" not in str(info.value)


def test_without_ssh_the_scratch_dir_must_be_absolute(env: dict[str, str]) -> None:
    no_ssh = {k: v for k, v in env.items() if not k.startswith("JARVICE_SLURM_")}
    with pytest.raises(ConfigError, match="JARVICE_SLURM_SCRATCH_DIR: must be an absolute path"):
        load({**no_ssh, **REST, "JARVICE_SLURM_SA_TOKEN": JWT})


def test_both_cert_issuers_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="not both"):
        load({**env, "JARVICE_JOBS_INGRESS_CERT_ISSUER": "a", "JARVICE_JOBS_INGRESS_CERT_CLUSTER_ISSUER": "b"})


def test_global_scratch_registries_group_and_repo_base_reach_the_jobs(env: dict[str, str]) -> None:
    settings = load({**env, "JARVICE_JOB_GLOBAL_SCRATCH_DIR": "/global/", "JARVICE_JOB_GLOBAL_REGISTRIES":
                     "docker.io, ghcr.io/nimbix", "JARVICE_SLURM_SSH_USER_GROUP": "jarvice-users",
                     "JARVICE_SYSTEM_OMIT_REPO_BASE": "true", "JARVICE_CHOWN_WRAPPER": "/usr/local/bin/jchown"})
    script_env = script_environment(settings)
    assert script_env.global_scratch_dir == "/global"
    assert script_env.global_registries == ("docker.io", "ghcr.io/nimbix")
    assert script_env.job_group == "jarvice-users"
    assert script_env.omit_repo_base is True
    assert settings.chown_wrapper == "/usr/local/bin/jchown"


@pytest.mark.parametrize(("name", "value"), [
    ("JARVICE_JOB_GLOBAL_SCRATCH_DIR", "relative/dir"),
    ("JARVICE_SLURM_SSH_USER_GROUP", "users; rm -rf /"),
    ("JARVICE_CHOWN_WRAPPER", "sudo chown"),
    ("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem"),
    ("JARVICE_SLURM_GC_AGE", "soon"),
])
def test_bad_values_name_their_variable(env: dict[str, str], name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({**env, name: value})
    assert info.value.variable == name


def test_path_based_domain_in_kubernetes_mode_tells_jobs_their_ingress_path(env: dict[str, str]) -> None:
    kube = {**env, "JARVICE_SLURM_PROXY_MODE": "kubernetes", "JARVICE_SLURM_PROXY_IMAGE": "img",
            "JARVICE_JOBS_DOMAIN": "jarvice.example.com/job$"}
    assert script_environment(load(kube)).ingress is not None
    assert script_environment(load({**kube, "JARVICE_JOBS_DOMAIN": "example.com"})).ingress is None
    local = {**env, "JARVICE_JOBS_DOMAIN": "jarvice.example.com/job$"}  # local proxies: served at /
    assert script_environment(load(local)).ingress is None


class _ProxyStandIn:
    """A listener that records the first request line it gets and answers 502, as a proxy that cannot connect."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.request_line = ""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.request_line = data.split(b"\r\n", 1)[0].decode()
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


async def test_the_kubernetes_api_is_reached_through_the_pods_egress_proxy() -> None:
    """The chart passes lowercase http_proxy/no_proxy: the daemon's own HTTP honours them.
    (Kubernetes API: no server at all; the proxy stand-in sees the request and answers 502.)"""
    proxy = _ProxyStandIn()
    kube = await KubeClient.open("http://kube-api.example:6443", timeout=3, retries=0,
                                 outbound=OutboundHTTP(http_proxy=f"http://127.0.0.1:{proxy.port}"))
    with pytest.raises(DownstreamError):
        await kube.get(DEPLOYMENTS, "jobs", "jarvice-job-proxy-1")
    await trio.to_thread.run_sync(proxy.thread.join, 5)
    assert proxy.request_line.startswith("GET http://kube-api.example:6443/apis/apps/v1/namespaces/jobs/deployments/")


async def test_no_proxy_bypasses_it_and_the_site_ca_is_trusted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    kube = await KubeClient.open("https://kube-api.example:6443", outbound=OutboundHTTP(
        https_proxy="http://proxy:3128", no_proxy="kube-api.example", ca_bundle=str(ca)))
    config = kube._api.configuration  # noqa: SLF001 - what the official client will use
    assert config.ssl_ca_cert == str(ca)
    assert config.no_proxy == "kube-api.example" and config.proxy == "http://proxy:3128"


def test_without_ssh_the_service_user_is_checked_too(env: dict[str, str]) -> None:
    """slurmrestd puts the service user in URL paths (slurmdb's user/<name>): a bad one stops the start as over SSH."""
    no_ssh = {k: v for k, v in env.items() if not k.startswith("JARVICE_SLURM_")}
    with pytest.raises(ConfigError, match="JARVICE_SLURM_SSH_USER: not a valid login name"):
        load({**no_ssh, **REST, "JARVICE_SLURM_SA_TOKEN": JWT, "JARVICE_SLURM_SCRATCH_DIR": "/scratch",
              "JARVICE_SLURM_SSH_USER": "../admin"})
