"""config.settings.load(): what an admin sets in the environment, and what happens when it is wrong."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest

from config.settings import ConfigError, Settings, decode_private_key, load
from tests.support.processes import CLI


@pytest.fixture(scope="module")
def pem() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


@pytest.fixture
def env(pem: str) -> dict[str, str]:
    """The smallest environment the daemon starts with."""
    return {
        "JARVICE_SLURM_CLUSTER_ADDR": "login.example.org",
        "JARVICE_SLURM_SSH_PKEY": pem,
        "JARVICE_SCHED_SERVER_KEY": "upstream:s3cret",
    }


def test_minimal_env_loads_with_defaults(env: dict[str, str], pem: str) -> None:
    s = load(env)
    assert isinstance(s, Settings)
    assert s.cluster_addr == "login.example.org"
    assert s.cluster_port == 22
    assert s.ssh_user == "jarvice"
    assert s.ssh_pkey.strip() == pem.strip()
    assert s.server_key == "upstream:s3cret"
    assert s.server_user == "upstream"
    assert s.scratch_dir == "~"
    assert s.log_level == logging.INFO
    assert s.executor == "singularity"
    assert s.service_port == 2228 and s.ssh_port == 2227
    assert s.overlay_size == 640  # the JARVICE chart's default
    assert s.ssh_insecure_host_key is False
    assert s.registry.local_registry == ""


def test_secrets_are_not_in_repr(env: dict[str, str]) -> None:
    text = repr(load(env))
    assert "s3cret" not in text
    assert "PRIVATE KEY" not in text


def test_pem_and_base64_of_pem_give_the_same_key(env: dict[str, str], pem: str) -> None:
    from_pem = load(env).ssh_pkey
    env["JARVICE_SLURM_SSH_PKEY"] = base64.b64encode(pem.encode()).decode()
    from_b64 = load(env).ssh_pkey
    assert from_pem == from_b64
    assert from_b64.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    # the decoded key is a usable key, not just text that looks like one
    assert asyncssh.import_private_key(from_b64).algorithm == b"ssh-ed25519"


def test_base64_of_pem_wrapped_over_lines_is_accepted(pem: str) -> None:
    encoded = base64.encodebytes(pem.encode()).decode()  # 76-column lines, as `base64` prints
    assert "\n" in encoded.strip()
    assert decode_private_key(encoded).strip() == pem.strip()


@pytest.mark.parametrize("value", ["not a key", base64.b64encode(b"hello world").decode(), "////"])
def test_garbage_private_key_is_refused(env: dict[str, str], value: str) -> None:
    env["JARVICE_SLURM_SSH_PKEY"] = value
    with pytest.raises(ConfigError) as info:
        load(env)
    assert info.value.variable == "JARVICE_SLURM_SSH_PKEY"


def test_values_are_read(env: dict[str, str], tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("login.example.org ssh-ed25519 AAAA\n")
    env.update({
        "JARVICE_SLURM_CLUSTER_PORT": " 2222 ",
        "JARVICE_SLURM_SSH_USER": "svc_jarvice",
        "JARVICE_SLURM_SCHED_LOGLEVEL": "debug",
        "JARVICE_SLURM_SSH_INSECURE_HOST_KEY": "Yes",
        "JARVICE_SLURM_SCRATCH_DIR": "/scratch/jarvice/",
        "JARVICE_SLURM_SSH_KNOWN_HOSTS": str(known),
        "JARVICE_LOCAL_REGISTRY": "registry.local:5000",
        "JARVICE_LOCAL_REPO_BASE": "jarvice",
        "JARVICE_SLURM_POLL_INTERVAL": "0.5",
    })
    s = load(env)
    assert s.cluster_port == 2222
    assert s.ssh_user == "svc_jarvice"
    assert s.log_level == logging.DEBUG
    assert s.ssh_insecure_host_key is True
    assert s.scratch_dir == "/scratch/jarvice"
    assert s.ssh_known_hosts == str(known)
    assert s.registry.local_registry == "registry.local:5000"
    assert s.registry.local_repo_base == "jarvice"
    assert s.poll_interval == 0.5


def test_inline_known_hosts_lines_are_accepted(env: dict[str, str]) -> None:
    env["JARVICE_SLURM_SSH_KNOWN_HOSTS"] = "login.example.org ssh-ed25519 AAAAC3Nza"
    assert load(env).ssh_known_hosts == "login.example.org ssh-ed25519 AAAAC3Nza\n"


def test_insecure_no_auth_allows_a_missing_server_key(env: dict[str, str]) -> None:
    del env["JARVICE_SCHED_SERVER_KEY"]
    env["JARVICE_SLURM_INSECURE_NO_AUTH"] = "true"
    s = load(env)
    assert s.server_key is None and s.server_user is None


@pytest.mark.parametrize(("level", "expected"), [("10", 10), ("WARN", 30), ("error", 40), ("CRITICAL", 50)])
def test_log_levels(env: dict[str, str], level: str, expected: int) -> None:
    env["JARVICE_SLURM_SCHED_LOGLEVEL"] = level
    assert load(env).log_level == expected


INVALID = [
    # (variables to set, variables to remove, the variable the error must name)
    ({"JARVICE_SLURM_CLUSTER_PORT": "0"}, [], "JARVICE_SLURM_CLUSTER_PORT"),
    ({"JARVICE_SLURM_CLUSTER_PORT": "abc"}, [], "JARVICE_SLURM_CLUSTER_PORT"),
    ({"JARVICE_SLURM_CLUSTER_PORT": "65536"}, [], "JARVICE_SLURM_CLUSTER_PORT"),
    ({"JARVICE_SLURM_SERVICE_PORT": "0"}, [], "JARVICE_SLURM_SERVICE_PORT"),
    ({"JARVICE_SLURM_SCHED_LOGLEVEL": "LOUD"}, [], "JARVICE_SLURM_SCHED_LOGLEVEL"),
    ({"JARVICE_SLURM_SCHED_LOGLEVEL": "15"}, [], "JARVICE_SLURM_SCHED_LOGLEVEL"),
    ({"JARVICE_SLURM_SSH_INSECURE_HOST_KEY": "maybe"}, [], "JARVICE_SLURM_SSH_INSECURE_HOST_KEY"),
    ({"JARVICE_SINGULARITY_VERBOSE": "2"}, [], "JARVICE_SINGULARITY_VERBOSE"),
    ({}, ["JARVICE_SLURM_CLUSTER_ADDR"], "JARVICE_SLURM_CLUSTER_ADDR"),
    ({"JARVICE_SLURM_CLUSTER_ADDR": "   "}, [], "JARVICE_SLURM_CLUSTER_ADDR"),
    ({"JARVICE_SLURM_CLUSTER_ADDR": "host;rm -rf /"}, [], "JARVICE_SLURM_CLUSTER_ADDR"),
    ({}, ["JARVICE_SCHED_SERVER_KEY"], "JARVICE_SCHED_SERVER_KEY"),
    ({"JARVICE_SLURM_INSECURE_NO_AUTH": "false"}, ["JARVICE_SCHED_SERVER_KEY"], "JARVICE_SCHED_SERVER_KEY"),
    ({"JARVICE_SCHED_SERVER_KEY": "no-colon"}, [], "JARVICE_SCHED_SERVER_KEY"),
    ({}, ["JARVICE_SLURM_SSH_PKEY"], "JARVICE_SLURM_SSH_PKEY"),
    ({"JARVICE_SLURM_SCRATCH_DIR": "scratch/jarvice"}, [], "JARVICE_SLURM_SCRATCH_DIR"),
    ({"JARVICE_SLURM_SSH_KNOWN_HOSTS": "/nonexistent/known_hosts"}, [], "JARVICE_SLURM_SSH_KNOWN_HOSTS"),
    ({"JARVICE_LOCAL_REGISTRY": "registry.local:5000"}, [], "JARVICE_LOCAL_REPO_BASE"),
    ({"JARVICE_REGISTRY_PROXY_PORT": "5000"}, [], "JARVICE_REGISTRY_PROXY_REPOS"),
    ({"JARVICE_DOCKER_PASSWORD": "not base64!"}, [], "JARVICE_DOCKER_PASSWORD"),
    ({"JARVICE_SLURM_SSH_USER": "Root$"}, [], "JARVICE_SLURM_SSH_USER"),
    ({"JARVICE_SLURM_POLL_INTERVAL": "0"}, [], "JARVICE_SLURM_POLL_INTERVAL"),
    ({"JARVICE_SLURM_COMMAND_TIMEOUT": "soon"}, [], "JARVICE_SLURM_COMMAND_TIMEOUT"),
    ({"JARVICE_JOBS_DOMAIN": "https://jobs.example.org"}, [], "JARVICE_JOBS_DOMAIN"),
]


@pytest.mark.parametrize(("set_", "unset", "variable"), INVALID, ids=[f"{v}-{i}" for i, (_, _, v) in enumerate(INVALID)])
def test_invalid_value_names_the_variable(env: dict[str, str], set_: dict, unset: list, variable: str) -> None:
    env.update(set_)
    for name in unset:
        del env[name]
    with pytest.raises(ConfigError) as info:
        load(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")


def test_ipv6_loopback_is_an_address(env: dict[str, str]) -> None:
    env["JARVICE_SLURM_CLUSTER_ADDR"] = "::1"
    assert load(env).cluster_addr == "::1"


# ------------------------------------------------------------------ the console command
def _clean_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JARVICE_", "SLURM_"))}
    base.update(extra)
    return base


@pytest.mark.parametrize(
    ("extra", "variable"),
    [
        ({"JARVICE_SLURM_CLUSTER_PORT": "0"}, "JARVICE_SLURM_CLUSTER_PORT"),
        ({"JARVICE_SLURM_SCHED_LOGLEVEL": "LOUD"}, "JARVICE_SLURM_SCHED_LOGLEVEL"),
    ],
)
def test_serve_with_invalid_env_exits_2_with_one_line(pem: str, extra: dict, variable: str) -> None:
    environ = _clean_env(JARVICE_SLURM_CLUSTER_ADDR="login.example.org", JARVICE_SLURM_SSH_PKEY=pem,
                         JARVICE_SCHED_SERVER_KEY="upstream:s3cret", **extra)
    proc = subprocess.run([CLI, "serve"], env=environ, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert variable in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_serve_without_cluster_addr_names_it() -> None:
    proc = subprocess.run([CLI, "serve"], env=_clean_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "slurm-downstream: configuration error: JARVICE_SLURM_CLUSTER_ADDR: is required and not set"
    ]


def test_help_mentions_serve_and_check() -> None:
    proc = subprocess.run([CLI, "--help"], env=_clean_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert "serve" in proc.stdout and "check" in proc.stdout
    assert proc.stderr == ""
