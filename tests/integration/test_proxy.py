"""Interactive jobs' local proxy, end to end on the real cluster.

A real Slurm job runs tests/support/webjob.py (HTTP + WebSocket echo) on a compute
node; LocalProxies listens on this host and carries user connections over the real
OpenSSH server's ``direct-tcpip`` channels to it. Users are real clients (httpx,
trio-websocket, plain sockets) on real sockets. Two things are added around real
components, each saying why: a second sshd of our own (the shared one must not be
reconfigured) to measure MaxSessions, and a TCP relay the test can cut, standing in
for a network failure between the daemon and the login node.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from adapters.errors import ClusterUnavailable
from adapters.proxy.base import ProxyState, ProxyTarget
from adapters.proxy.children import ChildProxies
from adapters.proxy.local import LocalProxies
from adapters.ssh import SSHClient, SSHTarget
from daemon.proxy_cmd import child_command, child_env
from daemon.server import open_ssh, ssh_target
from tests.integration.conftest import cluster_env, settings, slurm, state
from tests.support import webjob
from tests.support.cluster import current
from tests.support.processes import CLI, alive

MiB = 2**20


# ------------------------------------------------------------------ helpers and fixtures
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Job:
    id: str
    host: str  # NodeAddr of the job's node, as the daemon would learn it
    port: int

    def target(self, key: str) -> ProxyTarget:
        return ProxyTarget(key=key, host=self.host, port=self.port)


async def wait_reachable(proxies: LocalProxies, host: str, port: int, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not await proxies.probe(host, port):
            await trio.sleep(0.2)


@pytest.fixture
async def ssh() -> AsyncIterator[SSHClient]:
    async with open_ssh(settings()) as client:
        yield client


@pytest.fixture
async def proxies(nursery: trio.Nursery, ssh: SSHClient) -> LocalProxies:
    backend = LocalProxies(ssh, bind="127.0.0.1", public_host="127.0.0.1")
    await nursery.start(backend.run)
    return backend


@pytest.fixture
async def start_job(ssh: SSHClient) -> AsyncIterator[Callable[[], Awaitable[Job]]]:
    """Submit webjob.py as a real Slurm job (as user jarvice, through SSH) on a free port; scancel at the end."""
    submitted: list[str] = []
    backend = LocalProxies(ssh)  # only for probe(), the daemon's reachability test

    async def start() -> Job:
        port = free_port()
        job_id = await webjob.submit(ssh.run, port, f"sdproxy-{uuid.uuid4().hex[:10]}", minutes=5)
        submitted.append(job_id)
        host = await webjob.node_address(ssh.run, job_id, timeout=120)  # the shared cluster may be busy
        await wait_reachable(backend, host, port)
        return Job(job_id, host, port)

    yield start
    for job_id in submitted:
        slurm("scancel", job_id)


def ws_url(http_url: str, path: str = "ws") -> str:
    return http_url.replace("http://", "ws://", 1) + path


async def echo(url: str, payload: bytes | str) -> None:
    async with open_websocket_url(url, max_message_size=4 * MiB) as ws:
        await ws.send_message(payload)
        assert await ws.get_message() == payload


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


# ------------------------------------------------------------------ the tests
async def test_page_and_websocket_through_the_proxy(
    proxies: LocalProxies, ssh: SSHClient, start_job: Callable[[], Awaitable[Job]], caplog: pytest.LogCaptureFixture,
) -> None:
    job = await start_job()
    with caplog.at_level(logging.INFO, logger="adapters.proxy.local"):
        status = await proxies.start(job.target("101"))
    assert status.state is ProxyState.SERVING and status.url.startswith("http://127.0.0.1:")
    assert f"Started proxy to {job.host}:{job.port} via SSH {ssh.address}" in caplog.messages
    assert await proxies.start(job.target("101")) == status, "start is idempotent: same listener, same URL"

    async with httpx.AsyncClient(timeout=10) as client:
        page = await client.get(status.url)
    assert page.status_code == 200 and f"<p id=job>job {job.id}</p>" in page.text

    up, down = os.urandom(MiB), os.urandom(MiB)
    async with open_websocket_url(ws_url(status.url), max_message_size=4 * MiB) as ws:
        await ws.send_message(up)
        assert await ws.get_message() == up
        await ws.send_message(down)
        assert await ws.get_message() == down
        await ws.send_message("text survives too: é€")
        assert await ws.get_message() == "text survives too: é€"

    now = proxies.status("101")
    assert now is not None and now.connections_total >= 2
    assert now.bytes_up > 2 * MiB and now.bytes_down > 2 * MiB
    assert await proxies.keys() == {"101"}


async def test_probe_tells_when_the_service_is_reachable(proxies: LocalProxies, start_job) -> None:
    nothing = free_port()
    assert not await proxies.probe("127.0.0.1", nothing)
    job = await start_job()
    assert await proxies.probe(job.host, job.port)
    async with SSHClient(replace(ssh_target(settings()), port=1)) as dead:
        assert not await LocalProxies(dead).probe(job.host, job.port), "an unreachable login node is no service"


async def test_job_end_closes_its_connections_and_stop_removes_the_listener(
    proxies: LocalProxies, start_job, caplog: pytest.LogCaptureFixture,
) -> None:
    job = await start_job()
    url = (await proxies.start(job.target("102"))).url
    port = port_of(url)
    async with open_websocket_url(ws_url(url)) as ws:
        await ws.send_message("before")
        assert await ws.get_message() == "before"
        raw = await trio.open_tcp_stream("127.0.0.1", port)  # an idle keep-alive connection, as browsers keep
        await raw.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await raw.receive_some(65536)
        assert first.startswith(b"HTTP/1.0 200") or first.startswith(b"HTTP/1.1 200")
        while job.id.encode() not in first:
            first += await raw.receive_some(65536)
        assert proxies.status("102").connections == 2

        slurm("scancel", job.id)
        with trio.fail_after(30):  # the node's socket closes; EOF travels back through sshd and the proxy
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
            while await raw.receive_some(65536):
                pass
    # the raw client ignores the EOF and keeps its side open: the proxy closes it after its grace period
    with trio.fail_after(15):
        while proxies.status("102").connections:
            await trio.sleep(0.1)
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the proxy's end is gone: writes fail once the reset arrives
            await raw.send_all(b"anyone there?\r\n")
            await trio.sleep(0.05)
    await raw.aclose()

    # the listener is still up until the daemon stops it; a new user gets a closed connection, and a log line
    with caplog.at_level(logging.WARNING, logger="adapters.proxy.local"):
        late = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(15):
            assert await late.receive_some(100) == b""
        await late.aclose()
    assert any("closed the connection" in m and "not reachable" in m for m in caplog.messages)

    await proxies.stop("102")
    assert proxies.status("102") is None and await proxies.keys() == set()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    await proxies.stop("102")  # stopping again, or an unknown key, is not an error


async def test_twenty_concurrent_connections_and_two_jobs_side_by_side(proxies: LocalProxies, start_job) -> None:
    one, two = await start_job(), await start_job()
    assert one.port != two.port
    url1 = (await proxies.start(one.target("201"))).url
    url2 = (await proxies.start(two.target("202"))).url
    assert url1 != url2

    pages: dict[str, list[str]] = {url1: [], url2: []}

    async def user(i: int, url: str) -> None:
        payload = os.urandom(64 * 1024 + i)
        async with open_websocket_url(ws_url(url)) as ws:
            await ws.send_message(payload)
            assert await ws.get_message() == payload
            async with httpx.AsyncClient(timeout=20) as client:
                pages[url].append((await client.get(url)).text)
            await ws.send_message(payload[::-1])
            assert await ws.get_message() == payload[::-1]

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(user, i, url1 if i % 2 else url2)
    assert all(f"job {one.id}<" in p for p in pages[url1]) and len(pages[url1]) == 10
    assert all(f"job {two.id}<" in p for p in pages[url2]) and len(pages[url2]) == 10
    assert proxies.status("201").connections_total == 20 and proxies.status("202").connections_total == 20
    await proxies.stop("201")
    await echo(ws_url(url2), "the other job's proxy lives on")


async def settled(read: Callable[[], int]) -> int:
    """The counter's value once it stopped moving for a second."""
    with trio.fail_after(60):
        last = -1
        while (now := read()) != last:
            last = now
            await trio.sleep(1.0)
    return now


async def test_a_side_that_stops_reading_stops_the_other_side(proxies: LocalProxies, start_job) -> None:
    """Backpressure, both ways: nothing piles up in the proxy when one side stops reading."""
    job = await start_job()
    url = (await proxies.start(job.target("103"))).url
    port = port_of(url)
    huge = 8 * 2**30

    # download: the job would send 8 GiB; the user reads nothing
    reader = await trio.open_tcp_stream("127.0.0.1", port)
    await reader.send_all(f"GET /blob?bytes={huge} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await settled(lambda: proxies.status("103").bytes_down)
    async with httpx.AsyncClient(timeout=10) as client:  # ask the job, over a second connection, how far it got
        written = (await client.get(url + "progress")).json()["blob_bytes"]
    assert 0 < written < 64 * MiB, "the job is held back: what it wrote is what socket buffers and SSH windows hold"
    await reader.aclose()

    # upload: the user would send 8 GiB; the job's service never reads its request body
    writer = await trio.open_tcp_stream("127.0.0.1", port)
    await writer.send_all(f"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: {huge}\r\n\r\n".encode())
    sent = 0
    chunk = b"u" * 65536
    while True:
        with trio.move_on_after(3) as blocked:
            await writer.send_all(chunk)
            sent += len(chunk)
        if blocked.cancelled_caught:
            break
        assert sent < 256 * MiB, "the user's writes never block: the proxy buffers without bound"
    stuck_up = await settled(lambda: proxies.status("103").bytes_up)
    assert stuck_up < 64 * MiB
    await writer.aclose()
    # the proxy still serves others
    await echo(ws_url(url), "still fine")


# ------------------------------------------------------------------ MaxSessions: an sshd of our own
@pytest.fixture
async def strict_sshd(tmp_path: Path) -> AsyncIterator[SSHTarget]:
    """The test cluster's sshd configuration with OpenSSH's default-like MaxSessions, on a port of our own.

    The shared sshd allows 100 sessions (so that parallel test runs fit) and must not
    be reconfigured; this one allows exactly as many as the daemon uses by default.
    """
    limit = settings().ssh_max_sessions
    port = free_port()
    cluster = current()
    lines = []
    for line in (cluster.state / "ssh" / "sshd_config").read_text().splitlines():
        word = line.split(" ", 1)[0]
        if word in ("Port", "PidFile", "MaxSessions"):
            continue
        lines.append(line)
    with cluster.workdir("strict-sshd-") as workdir:  # the login node reads its config from there
        lines += [f"Port {port}", f"PidFile {workdir}/sshd.pid", f"MaxSessions {limit}"]
        config = workdir / "sshd_config"
        config.write_text("\n".join(lines) + "\n")
        log = (tmp_path / "sshd.log").open("w")
        # on the login node (its namespace and root), as the cluster's own sshd runs
        proc = subprocess.Popen(cluster.login("/usr/sbin/sshd", "-D", "-e", "-f", str(config)), stdout=log, stderr=log)
        try:
            with trio.fail_after(10):
                while True:
                    try:
                        (await trio.open_tcp_stream(cluster.host, port)).socket.close()
                        break
                    except OSError:
                        assert proc.poll() is None, (tmp_path / "sshd.log").read_text()
                        await trio.sleep(0.05)
            host_key = (cluster.state / "ssh" / "known_hosts").read_text().split()[1:3]
            known = f"[{cluster.host}]:{port} {host_key[0]} {host_key[1]}\n"
            yield replace(ssh_target(settings()), port=port, known_hosts=known)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def running_sleeps(marker: str) -> int:
    result = subprocess.run(["pgrep", "-c", "-u", "jarvice", "-f", marker], capture_output=True, text=True)
    return int(result.stdout.strip() or 0)


async def test_tunnels_do_not_count_against_max_sessions(strict_sshd: SSHTarget, nursery: trio.Nursery,
                                                         start_job) -> None:
    limit = settings().ssh_max_sessions
    job = await start_job()
    # one more slot than sshd allows, so that sshd's own limit is what the test meets
    async with SSHClient(strict_sshd, max_sessions=limit + 1) as ssh:
        backend = LocalProxies(ssh, bind="127.0.0.1", public_host="127.0.0.1")
        await nursery.start(backend.run)
        url = (await backend.start(job.target("301"))).url
        marker = f"sleep 120.{uuid.uuid4().int % 10**6:06d}"  # held until the test cancels them

        async def command() -> None:
            await ssh.run(marker, timeout=180)

        async with trio.open_nursery() as commands:
            for _ in range(limit):
                commands.start_soon(command)
            with trio.fail_after(10):
                while running_sleeps(marker) < limit:
                    await trio.sleep(0.05)
            # every session sshd allows is taken: a further command is refused by sshd itself...
            with pytest.raises(ClusterUnavailable, match="refused a session"):
                await ssh.run("true")
            # ...while 20 proxied connections, each its own channel, all open at once and work
            opened = trio.Semaphore(0)
            release = trio.Event()

            async def user(i: int) -> None:
                async with open_websocket_url(ws_url(url)) as ws:
                    opened.release()
                    await release.wait()
                    await ws.send_message(f"user {i}")
                    assert await ws.get_message() == f"user {i}"

            with trio.fail_after(20):
                async with trio.open_nursery() as users:
                    for i in range(20):
                        users.start_soon(user, i)
                    for _ in range(20):
                        await opened.acquire()
                    assert backend.status("301").connections == 20 and ssh.tunnels_open == 20
                    release.set()
            assert running_sleeps(marker) == limit, "the commands held every session throughout"
            commands.cancel_scope.cancel()  # SSHClient kills cancelled commands on the remote side
        with trio.fail_after(10):
            while running_sleeps(marker):
                await trio.sleep(0.05)
        assert (await ssh.run("echo sessions-free")).stdout == "sessions-free\n"
        assert ssh.connects == 1, "refusals and tunnels never cost the connection"


# ------------------------------------------------------------------ a broken SSH path
class Relay:
    """A TCP hop between the SSH client and the cluster's sshd, which the test cuts like a failing network would."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._to = port
        self._scopes: set[trio.CancelScope] = set()
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._hop, listeners, task_status=task_status)

    async def _hop(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            async with client, await trio.open_tcp_stream(self._host, self._to) as server:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._copy, client, server)
                    nursery.start_soon(self._copy, server, client)
        self._scopes.discard(scope)

    @staticmethod
    async def _copy(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        try:
            async for data in src:
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the other side went away; the hop ends with the other direction

    def cut(self) -> None:
        for scope in self._scopes:
            scope.cancel()


async def test_a_broken_ssh_path_closes_user_connections_cleanly_and_the_next_one_reconnects(
    nursery: trio.Nursery, start_job, caplog: pytest.LogCaptureFixture,
) -> None:
    job = await start_job()
    cluster = ssh_target(settings())
    relay = Relay(cluster.host, cluster.port)
    await nursery.start(relay.run)
    host_key = (state() / "ssh" / "known_hosts").read_text().split()[1:3]
    via_relay = replace(cluster, host="127.0.0.1", port=relay.port,
                        known_hosts=f"[127.0.0.1]:{relay.port} {host_key[0]} {host_key[1]}\n")
    async with SSHClient(via_relay) as ssh:
        backend = LocalProxies(ssh, bind="127.0.0.1", public_host="127.0.0.1")
        await nursery.start(backend.run)
        url = (await backend.start(job.target("401"))).url
        with caplog.at_level(logging.DEBUG, logger="adapters"):
            async with open_websocket_url(ws_url(url)) as ws:
                await ws.send_message("before the cut")
                assert await ws.get_message() == "before the cut"
                relay.cut()
                with trio.fail_after(15), pytest.raises(ConnectionClosed):
                    await ws.get_message()
            with trio.fail_after(15):
                while backend.status("401").connections:
                    await trio.sleep(0.05)
            await echo(ws_url(url), "after the cut")  # a new user connection makes the client reconnect
        assert ssh.connects == 2
    lost = [r for r in caplog.records if r.name == "adapters.proxy.local" and r.levelno == logging.WARNING]
    assert lost and "closed the connection from" in lost[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a broken path"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ the proxy pod's command
def pod_env() -> dict[str, str]:
    """What a proxy pod gets: the SSH variables (the key from a Secret), none of the daemon-only ones."""
    env = {k: v for k, v in cluster_env().items() if k.startswith("JARVICE_SLURM_") and k != "JARVICE_SLURM_SCRATCH_DIR"}
    return env | {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}


async def test_the_proxy_command_carries_a_job_like_a_pod_would(start_job, tmp_path: Path) -> None:
    job = await start_job()
    port = free_port()
    errors = (tmp_path / "stderr").open("w")
    proc = await trio.lowlevel.open_process(
        [CLI, "proxy", "--listen", f"127.0.0.1:{port}", "--target", f"{job.host}:{job.port}",
         "--key", "501"], env=pod_env(), stderr=errors, stdout=errors)
    try:
        via = f"{current().host}:{cluster_env()['JARVICE_SLURM_CLUSTER_PORT']}"
        expected = f"Started proxy to {job.host}:{job.port} via SSH {via}"
        with trio.fail_after(30):
            while expected not in (tmp_path / "stderr").read_text():
                assert proc.poll() is None, (tmp_path / "stderr").read_text()
                await trio.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        async with httpx.AsyncClient(timeout=10) as client:
            assert f"job {job.id}<" in (await client.get(url)).text
        await echo(ws_url(url), os.urandom(MiB))
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            await proc.wait()
        errors.close()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    log = (tmp_path / "stderr").read_text()
    assert "reachable through the login node" in log and "Traceback" not in log


def test_the_proxy_command_names_what_is_missing() -> None:
    env = pod_env()
    del env["JARVICE_SLURM_CLUSTER_ADDR"]
    run = subprocess.run([CLI, "proxy", "--target", "10.0.0.7:8000"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "JARVICE_SLURM_CLUSTER_ADDR: is required" in run.stderr
    run = subprocess.run([CLI, "proxy", "--target", "10.0.0.7"], env=pod_env(),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "expected HOST:PORT" in run.stderr
    env = pod_env() | {"JARVICE_SLURM_SSH_PKEY": "bm90IGEga2V5"}
    run = subprocess.run([CLI, "proxy", "--target", "10.0.0.7:8000"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "JARVICE_SLURM_SSH_PKEY" in run.stderr and "Traceback" not in run.stderr


def test_the_proxy_command_exits_1_when_its_port_is_taken() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        run = subprocess.run([CLI, "proxy", "--listen", f"127.0.0.1:{taken}", "--target",
                              "10.0.0.7:8000"], env=pod_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "not started" in run.stderr and "Traceback" not in run.stderr


def test_the_proxy_command_logs_in_the_daemons_format() -> None:
    """A pod gets JARVICE_SLURM_LOG_FORMAT from the daemon: with json, every line it prints is a JSON object."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        run = subprocess.run([CLI, "proxy", "--listen", f"127.0.0.1:{taken}", "--target", "10.0.0.7:8000"],
                             env=pod_env() | {"JARVICE_SLURM_LOG_FORMAT": "json"}, capture_output=True, text=True,
                             timeout=60)
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode == 1 and lines
    records = [json.loads(line) for line in lines]
    assert any("not started" in r["message"] for r in records), records


# ------------------------------------------------------------------ local mode: a process per job (ChildProxies)
async def test_proxy_processes_are_re_aimed_on_the_same_port_and_all_stop_with_the_daemon(start_job) -> None:
    """The daemon's local mode: a moved job (requeued onto another node) gets its proxy process restarted with
    the new target on the same port, so its URL does not change; a stopped proxy's process and port go; the
    backend's end (the daemon stopping) terminates every process left."""
    first, second, third = await start_job(), await start_job(), await start_job()
    conf = settings()
    backend = ChildProxies(child_command(), child_env(conf), bind="127.0.0.1", public_host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        status = await backend.start(first.target("601"))
        assert status.state is ProxyState.SERVING and status.pid is not None, status
        url, pid = status.url, status.pid
        async with httpx.AsyncClient(timeout=10) as client:
            assert f"job {first.id}<" in (await client.get(url)).text
        await echo(ws_url(url), os.urandom(MiB))

        moved = await backend.start(second.target("601"))  # same key, another node or port
        assert moved.state is ProxyState.SERVING and moved.url == url and moved.restarts == 1
        assert moved.pid != pid and not alive(pid)
        assert moved.bytes_up > MiB, "the counters carry over a restart (the metrics count deltas)"
        async with httpx.AsyncClient(timeout=10) as client:
            assert f"job {second.id}<" in (await client.get(url)).text

        other = await backend.start(third.target("602"))
        assert other.state is ProxyState.SERVING and other.url != url
        await backend.stop("601")
        assert not alive(moved.pid) and backend.status("601") is None and await backend.keys() == {"602"}
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port_of(url))
        nursery.cancel_scope.cancel()
    assert not alive(other.pid), "the daemon's stop terminates its proxy processes"
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port_of(other.url))
