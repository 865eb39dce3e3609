"""Benchmark: an interactive job's web traffic through the daemon's local proxy, next to ``ssh -L``.

One real Slurm job runs tests/support/webjob.py on a compute node of the test
cluster. The same service is then reached three ways:

* ``direct``: straight to the node's port from the login node's network namespace
  (the daemon's cannot reach compute nodes, as on a real site; the load generator
  runs there with ``nsenter``): the ceiling of client and service;
* ``proxy``: the daemon's local-mode proxy as it ships: a ``slurm-downstream proxy``
  process (ChildProxies) with its own SSH connection (asyncssh on its asyncio thread,
  one ``direct-tcpip`` channel per user connection);
* ``ssh -L``: the OpenSSH client binary forwarding a local port through the same
  login node with the test cluster's key and known_hosts (a new channel per
  connection too): what a user or a C implementation gets.

The load comes from a separate process (this file with ``--client``, stdlib
blocking sockets), so the proxy does not share its process with the load
generator, as ``ssh`` does not. Throughput: 256 MiB downloads (GET /blob) and
uploads (POST /sink, byte count checked), MB/s = 10^6 bytes per second, median of
three. Latency: small ``GET /`` requests, on one kept-alive connection and with a
new connection each (which adds the channel open), median and p99; "added" is the
path's figure minus the direct one. Everything shares the machine's cores (2 here):
the figures are relative, not a site's capacity.

Run: ``.venv/bin/python bench/proxy_throughput.py`` or ``run()`` from ``python -m bench``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402

from adapters.proxy.base import ProxyTarget  # noqa: E402
from adapters.proxy.children import ChildProxies  # noqa: E402
from adapters.proxy.local import probe  # noqa: E402
from bench import hosts  # noqa: E402
from bench.cluster import STATE, cancel, cluster_env, cluster_netns_prefix, free_port  # noqa: E402
from bench.stats import percentile, show  # noqa: E402
from config.settings import load  # noqa: E402
from daemon.proxy_cmd import child_command, child_env  # noqa: E402
from daemon.server import open_ssh  # noqa: E402
from tests.support import webjob  # noqa: E402

MiB = 2**20
TRANSFER = 256 * MiB
REPS = 3
KEEPALIVE_REQUESTS = 1000
NEW_CONNECTION_REQUESTS = 300
WARMUP = 20
PATHS = ("direct", "proxy", "ssh -L")


# ------------------------------------------------------------------ the load generator (its own process)
def _request(sock: socket.socket, method: str, path: str, body_len: int = 0, close: bool = False) -> None:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {body_len}\r\n"
    sock.sendall((head + ("Connection: close\r\n" if close else "") + "\r\n").encode())


def _response(sock: socket.socket, keep_body: bool = True) -> tuple[int, bytes]:
    """(bytes of body received, body if kept): a minimal HTTP/1.1 reader for Content-Length answers."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the answer's headers")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    got = len(rest)
    kept = [rest] if keep_body else []
    view = bytearray(MiB)
    while got < length:
        n = sock.recv_into(view, min(len(view), length - got))
        if not n:
            raise ConnectionError("connection closed in the middle of the body")
        got += n
        if keep_body:
            kept.append(bytes(view[:n]))
    return got, b"".join(kept)


def _client(host: str, port: int, mode: str, amount: int) -> dict:
    if mode == "download":
        with socket.create_connection((host, port)) as sock:
            t0 = time.perf_counter()
            _request(sock, "GET", f"/blob?bytes={amount}")
            got, _ = _response(sock, keep_body=False)
            return {"seconds": time.perf_counter() - t0, "bytes": got}
    if mode == "upload":
        block = memoryview(b"u" * MiB)
        with socket.create_connection((host, port)) as sock:
            t0 = time.perf_counter()
            _request(sock, "POST", "/sink", amount)
            for _ in range(amount // MiB):
                sock.sendall(block)
            _, body = _response(sock)
            seconds = time.perf_counter() - t0
        return {"seconds": seconds, "bytes": json.loads(body)["bytes"]}
    samples = []
    if mode == "keepalive":
        with socket.create_connection((host, port)) as sock:
            for i in range(amount + WARMUP):
                t0 = time.perf_counter()
                _request(sock, "GET", "/")
                _response(sock)
                if i >= WARMUP:
                    samples.append(time.perf_counter() - t0)
    elif mode == "new-connection":
        for i in range(amount + WARMUP):
            t0 = time.perf_counter()
            with socket.create_connection((host, port)) as sock:
                _request(sock, "GET", "/", close=True)
                _response(sock)
            if i >= WARMUP:
                samples.append(time.perf_counter() - t0)
    else:
        raise SystemExit(f"unknown mode {mode}")
    return {"samples": samples}


def login_netns() -> str:
    """The test cluster's login node namespace (tests/cluster/up writes NS=... to <state>/net)."""
    return f"/run/netns/{cluster_netns_prefix()}login"


async def _load(host: str, port: int, netns: str | None, mode: str, amount: int, nice: int = 0) -> dict:
    argv = [sys.executable, __file__, "--client", host, str(port), mode, str(amount)]
    if nice:  # a user's browser, which is not on the daemon's machine: it yields the shared cores
        argv = ["nice", "-n", str(nice), *argv]
    if netns is not None:  # the client in that network namespace (same files, same python)
        argv = ["nsenter", f"--net={netns}", *argv]
    argv = hosts.browser_argv(argv)
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"load generator ({mode} to {host}:{port}) failed: {result.stderr.decode().strip()[-2000:]}")
    return json.loads(result.stdout)


# ------------------------------------------------------------------ the three paths
@contextlib.asynccontextmanager
async def ssh_forward(host: str, port: int) -> AsyncIterator[int]:
    """``ssh -L`` with the OpenSSH client to ``host:port`` through the test cluster's login node; yields the local port."""
    env = cluster_env()
    local = free_port()
    argv = ["ssh", "-F", "/dev/null", "-N", "-p", env["JARVICE_SLURM_CLUSTER_PORT"],
            "-i", str(STATE / "ssh" / "id_ed25519"), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={env['JARVICE_SLURM_SSH_KNOWN_HOSTS']}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none",
            "-L", f"127.0.0.1:{local}:{host}:{port}", f"{env['JARVICE_SLURM_SSH_USER']}@{env['JARVICE_SLURM_CLUSTER_ADDR']}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(20):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"ssh -L exited {proc.returncode}: {proc.stderr.read().decode().strip()}")
                try:
                    (await trio.open_tcp_stream("127.0.0.1", local)).socket.close()
                    break
                except OSError:
                    await trio.sleep(0.05)
        yield local
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _throughput(addr: tuple[str, int, str | None], mode: str) -> float:
    rates = []
    for _ in range(REPS):
        r = await _load(*addr, mode, TRANSFER)
        if r["bytes"] != TRANSFER:
            raise RuntimeError(f"{mode} through {addr} moved {r['bytes']} bytes, not {TRANSFER}")
        rates.append(r["bytes"] / r["seconds"] / 1e6)
    return sorted(rates)[len(rates) // 2]


async def _latency(addr: tuple[str, int, str | None], mode: str, count: int) -> dict[str, float]:
    samples = (await _load(*addr, mode, count))["samples"]
    return {"median_ms": percentile(samples, 50) * 1000, "p99_ms": percentile(samples, 99) * 1000, "n": len(samples)}


async def measure() -> dict:
    """The whole benchmark inside a running trio loop (``run`` is the synchronous entry point)."""
    settings = load(cluster_env())
    results: dict = {"transfer_bytes": TRANSFER, "reps": REPS, "throughput_MBps": {}, "latency_ms": {},
                     "added_latency_ms": {}}
    async with open_ssh(settings) as ssh:
        port = free_port()
        job_id = await webjob.submit(ssh.run, port, f"sdbench-proxy-{uuid.uuid4().hex[:8]}", minutes=15)
        try:
            host = await webjob.node_address(ssh.run, job_id)
            async with trio.open_nursery() as nursery:
                # as the daemon runs it in local mode: a process of its own with its own SSH connection
                proxies = ChildProxies(child_command(), child_env(settings), bind="127.0.0.1",
                                       public_host="127.0.0.1")
                await nursery.start(proxies.run)
                with trio.fail_after(30):
                    while not await probe(ssh, host, port):
                        await trio.sleep(0.2)
                url = (await proxies.start(ProxyTarget("bench", host, port))).url
                proxy_port = int(url.rstrip("/").rsplit(":", 1)[1])
                async with ssh_forward(host, port) as forwarded:
                    paths = {"direct": (host, port, login_netns()), "proxy": ("127.0.0.1", proxy_port, None),
                             "ssh -L": ("127.0.0.1", forwarded, None)}
                    for mode in ("download", "upload"):
                        results["throughput_MBps"][mode] = {name: await _throughput(addr, mode)
                                                            for name, addr in paths.items()}
                    for mode, count in (("keepalive", KEEPALIVE_REQUESTS), ("new-connection", NEW_CONNECTION_REQUESTS)):
                        results["latency_ms"][mode] = {name: await _latency(addr, mode, count)
                                                       for name, addr in paths.items()}
                results["proxy_counters"] = dataclasses.asdict(proxies.status("bench"))
                nursery.cancel_scope.cancel()
        finally:
            cancel([job_id])
        results["tunnels_total"] = ssh.tunnels_total
    for mode, by_path in results["latency_ms"].items():
        direct = by_path["direct"]
        results["added_latency_ms"][mode] = {
            name: {"median_ms": v["median_ms"] - direct["median_ms"], "p99_ms": v["p99_ms"] - direct["p99_ms"]}
            for name, v in by_path.items() if name != "direct"}
    _print(results)
    return results


def _print(r: dict) -> None:
    tp = r["throughput_MBps"]
    show("proxy throughput (MB/s, 10^6 bytes/s, median of "
         f"{r['reps']} x {r['transfer_bytes'] // MiB} MiB)", ["direction", *PATHS, "proxy / ssh -L"],
         [[mode, *(tp[mode][p] for p in PATHS), tp[mode]["proxy"] / tp[mode]["ssh -L"]] for mode in tp],
         ["direct: to the node's port from the login node, without SSH (the ceiling of client and service here)",
          "proxy: the daemon's proxy process (slurm-downstream proxy, asyncssh); ssh -L: the OpenSSH client binary"])
    lat, added = r["latency_ms"], r["added_latency_ms"]
    show("proxy latency per small HTTP request (GET /, ms)",
         ["connection", *(f"{p} median" for p in PATHS), *(f"{p} p99" for p in PATHS),
          "proxy added median", "proxy added p99", "ssh -L added median"],
         [[mode, *(lat[mode][p]["median_ms"] for p in PATHS), *(lat[mode][p]["p99_ms"] for p in PATHS),
           added[mode]["proxy"]["median_ms"], added[mode]["proxy"]["p99_ms"], added[mode]["ssh -L"]["median_ms"]]
          for mode in lat],
         [f"keepalive: {KEEPALIVE_REQUESTS} requests on one connection; new-connection: {NEW_CONNECTION_REQUESTS} "
          "requests, each on a new TCP connection (for proxy and ssh -L: a new SSH channel, sshd connects to the node)",
          "added = path minus direct",
          "ssh -N -L leaves Nagle on (OpenSSH sets TCP_NODELAY only for interactive sessions): small request/answer "
          "pairs through it can wait for a delayed ACK (~40 ms); asyncssh sets TCP_NODELAY"])


def run() -> dict:
    """Entry point for ``python -m bench``: start a job, measure, cancel the job, return the figures."""
    return trio.run(measure)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        _, _, host, port, mode, amount = sys.argv
        print(json.dumps(_client(host, int(port), mode, int(amount))))
    else:
        print(json.dumps(run(), indent=2))
