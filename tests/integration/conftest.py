"""The daemon, in-process, on a real socket, against the real local test clusters.

Nothing is replaced: the daemon speaks SSH to the OpenSSH server that
``tests/cluster/up`` started on the login node (its own network namespace), which runs
the real Slurm commands. The clusters must be up (``make test`` brings them up); a
missing cluster is a failure, not a skip, so CI can never pass without running these
tests. The modules of ``tests.support.cluster.EVERY_VERSION`` run on every Slurm
version of ``SLURM_VERSIONS``; ``current()`` is the cluster of the running test.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from config.settings import Settings, load
from daemon.server import serve
from tests.support.cluster import current, generate_tests, read_exports, slurm_cluster  # noqa: F401 - a fixture
from tests.support.upstream import Upstream

pytest_generate_tests = generate_tests


def state() -> Path:
    """The state directory of the running test's cluster."""
    return current().state

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here needs the test cluster (a conftest's ``pytestmark`` marks nothing)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)


def cluster_env() -> dict[str, str]:
    cluster = current()
    if not cluster.env_file.is_file():
        pytest.fail(f"no Slurm {cluster.version} test cluster: {cluster.env_file} is missing; "
                    f"run SLURM_VERSION={cluster.version} tests/cluster/up (make test does)")
    return read_exports(cluster.env_file)


def settings(**overrides: str) -> Settings:
    env = cluster_env()
    if current().rest:
        env["JARVICE_SLURM_CLIENT"] = "slurmrestd_client"
    env.setdefault("JARVICE_SLURM_POLL_INTERVAL", "0.5")
    env.setdefault("JARVICE_SLURM_JOURNAL", ":memory:")
    env.update(overrides)
    return load(env)


def slurm(*args: str) -> subprocess.CompletedProcess:
    """Ask the cluster directly (as root on its login node), to check what the daemon did."""
    env = dict(os.environ, SLURM_TIME_FORMAT="standard")
    return subprocess.run(current().login(*args), capture_output=True, text=True, env=env, timeout=30)


def user_token() -> str | None:
    """The bearer JARVICE sends for the cluster's service user when the running test's daemon uses slurmrestd:
    a JWT from the cluster's stand-in of the identity provider; else None."""
    cluster = current()
    return cluster.user_token(cluster.service_user, lifetime=3600) if cluster.rest else None


def unique_name(tag: str) -> str:
    return f"20261123-{tag}-alice_it-{uuid.uuid4().hex[:10]}"


class Daemon:
    def __init__(self, upstream: Upstream, settings: Settings, url: str) -> None:
        self.upstream = upstream
        self.settings = settings
        self.url = url

    async def wait_phase(self, name: str, phase: str, timeout: float = 60) -> None:
        """Wait until upstream sees the job as queued, running or finished (in neither list)."""
        with trio.fail_after(timeout):
            while True:
                queued = [n for n, _ in await self.upstream.call("/queued")]
                running = [n for n, _ in await self.upstream.call("/running")]
                now = "queued" if name in queued else "running" if name in running else "finished"
                if now == phase:
                    return
                await trio.sleep(0.2)


async def start_daemon(nursery: trio.Nursery, conf: Settings) -> AsyncIterator[Daemon]:
    binds = await nursery.start(lambda task_status: serve(conf, "127.0.0.1", 0, handle_signals=False,
                                                           task_status=task_status))
    url = binds[0]
    user, password = conf.server_key.split(":", 1)
    async with httpx.AsyncClient(base_url=url, auth=(user, password), timeout=30) as client:
        with trio.fail_after(30):
            while (await client.get("/ready")).status_code != 200:
                await trio.sleep(0.1)
        yield Daemon(Upstream(client, bearer=user_token()), conf, url)


@pytest.fixture
async def daemon(nursery: trio.Nursery) -> AsyncIterator[Daemon]:
    async for d in start_daemon(nursery, settings()):
        yield d
    nursery.cancel_scope.cancel()
