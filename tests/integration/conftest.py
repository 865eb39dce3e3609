"""The daemon, in-process, on a real socket, against the real local test cluster.

Nothing is replaced: the daemon speaks SSH to the OpenSSH server that
``tests/cluster/up`` started on 127.0.0.1, which runs the real Slurm commands.
The cluster must be up (``make test`` brings it up); a missing cluster is a
failure, not a skip, so CI can never pass without running these tests.
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
from tests.support.cluster import read_exports
from tests.support.upstream import Upstream

STATE = Path(os.environ.get("SLURM_DOWNSTREAM_TESTCLUSTER", "/tmp/slurm-downstream-testcluster"))

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here needs the test cluster (a conftest's ``pytestmark`` marks nothing)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)


def cluster_env() -> dict[str, str]:
    env_file = STATE / "daemon.env"
    if not env_file.is_file():
        pytest.fail(f"no test cluster: {env_file} is missing; run tests/cluster/up (make test does)")
    return read_exports(env_file)


def settings(**overrides: str) -> Settings:
    env = cluster_env()
    env.setdefault("JARVICE_SLURM_POLL_INTERVAL", "0.5")
    env.setdefault("JARVICE_SLURM_JOURNAL", ":memory:")
    env.update(overrides)
    return load(env)


def slurm(*args: str) -> subprocess.CompletedProcess:
    """Ask the cluster directly (as root on the host), to check what the daemon did."""
    env = dict(os.environ, SLURM_CONF=str(STATE / "etc" / "slurm.conf"), SLURM_TIME_FORMAT="standard")
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=30)


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
        yield Daemon(Upstream(client), conf, url)


@pytest.fixture
async def daemon(nursery: trio.Nursery) -> AsyncIterator[Daemon]:
    async for d in start_daemon(nursery, settings()):
        yield d
    nursery.cancel_scope.cancel()
