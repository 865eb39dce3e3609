"""The daemon under test, as its own process, and an upstream client for it.

The daemon runs in a separate process (``slurm-downstream serve``, or the
simulated-population server in ``bench.simulated``), so the HTTP client that
measures it does not share its trio loop or its core: latency is what a remote
upstream would see over a real socket, minus the network.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from bench.cluster import free_port
from tests.support.upstream import Upstream, submit_args

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0


@dataclass
class DaemonProcess:
    """A running daemon: its pid (for /proc), URL, and an upstream client."""

    name: str
    process: trio.Process
    url: str
    client: httpx.AsyncClient
    log_path: Path
    bearer: str | None = None  # /submit's bearer in place of the placeholder ("": the service identity)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.client, bearer=self.bearer)

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM (kB) of the daemon process, from /proc."""
        return memory(self.pid)

    def cpu_seconds(self) -> float:
        """user + system CPU time of the daemon process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def children_cpu_seconds(self) -> float:
        """user + system CPU time so far of the daemon's running children (local mode's proxy processes)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == self.pid:
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")


def memory(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a process (``self``: this one), from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def client_for(url: str, server_key: str, connections: int = 16) -> httpx.AsyncClient:
    user, password = server_key.split(":", 1)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, auth=(user, password), timeout=60, limits=limits)


@asynccontextmanager
async def daemon(name: str, env: Mapping[str, str], log_dir: Path, *, argv: list[str] | None = None,
                 ) -> AsyncIterator[DaemonProcess]:
    """Start a daemon process with ``env`` (JARVICE_*), wait until /ready, stop it (SIGTERM) after."""
    port = free_port()
    log_path = log_dir / f"daemon-{name}.log"
    command = argv or [str(ROOT / ".venv" / "bin" / "slurm-downstream"), "serve"]
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.setdefault("JARVICE_SLURM_JOURNAL", str(log_dir / f"journal-{name}.sqlite3"))
    full_env["PYTHONPATH"] = str(ROOT)
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            env=full_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(ROOT),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with client_for(url, env["JARVICE_SCHED_SERVER_KEY"]) as client:
            await _wait_ready(client, process, log_path)
            # slurmrestd_client reads /submit's bearer as the user's JWT: the benchmarks submit as the service
            # identity (an empty bearer), as they did over SSH
            bearer = "" if env.get("JARVICE_SLURM_CLIENT") == "slurmrestd_client" else None
            yield DaemonProcess(name, process, url, client, log_path, bearer)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with trio.move_on_after(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _wait_ready(client: httpx.AsyncClient, process: trio.Process, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.returncode is not None or process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}; see {log_path}")
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await trio.sleep(0.05)
    raise RuntimeError(f"daemon not ready after {READY_TIMEOUT:g}s; see {log_path}")


def job_name(run: str, tag: str, i: int) -> str:
    """Unique upstream names: the run's tag keeps concurrent runs and other tests apart."""
    return f"20261123-bench{tag}-alice_{run}-{i:05d}"


async def submit(upstream: Upstream, name: str, number: int, *, held: bool, body: str = "true") -> str:
    """One /submit; the Slurm job id."""
    response = await upstream.post("/submit", submit_args(name, number, body, held=held))
    if response.status_code != 200:
        raise RuntimeError(f"/submit {name}: {response.status_code} {response.text[:300]}")
    return str(response.json()[0])
