"""Interactive jobs end to end: upstream submits, Slurm runs a web service, a user's browser reaches it.

Everything is real: the daemon (local proxy mode) on a socket, SSH to the test
cluster's sshd, a Slurm job running ``tests/support/webjob.py`` (HTTP + WebSocket)
on the port the daemon assigned, and the user's HTTP and WebSocket connections
going through the daemon's per-job proxy and an SSH direct-tcpip channel.
The compute nodes sit behind the login node (tests/cluster/up), as in production:
the job's service is reached through the login node or not at all.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from config.settings import decode_private_key
from tests.integration.conftest import Daemon, cluster_env, slurm, unique_name
from tests.support.cluster import current
from tests.support.processes import CLI, DaemonProcess, alive, descendants, free_port
from tests.support.upstream import Upstream, submit_args
from tests.support.webjob import upstream_body


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


async def info_url(daemon: Daemon, ids: dict, timeout: float = 90) -> str:
    path = f"/request/{ids['name']}/{ids['number']}/{ids['jobid']}/info"
    with trio.fail_after(timeout):
        while not (url := (await daemon.upstream.post(path, {"qs": {}})).json()["url"]):
            await trio.sleep(0.3)
    return url


async def test_an_interactive_job_is_reached_through_its_url(daemon: Daemon) -> None:
    jobs = []
    for number in (31, 32):  # two at once: each gets its own port and its own proxy
        name = unique_name("web")
        jobid, fscript = await daemon.upstream.call(
            "/submit", submit_args(name, number, upstream_body(), interactive=True))
        port = int(re.search(r"SINGULARITYENV_JARVICE_SERVICE_PORT=(\d+)", fscript)[1])
        jobs.append(({"name": name, "number": number, "jobid": jobid}, port))
    assert jobs[0][1] != jobs[1][1], "two interactive jobs were given the same service port"
    try:
        urls = [await info_url(daemon, ids) for ids, _ in jobs]
        assert urls[0] != urls[1], urls
        print("interactive URLs:", urls)
        async with httpx.AsyncClient(timeout=10) as browser:
            for (ids, _), url in zip(jobs, urls, strict=True):
                page = (await browser.get(url)).text
                assert f"job {ids['jobid']}" in page  # each URL reaches its own job
        ws_url = urls[0].replace("http://", "ws://", 1).rstrip("/") + "/ws"
        async with open_websocket_url(ws_url) as ws:
            payload = bytes(range(256)) * 4096  # 1 MiB
            await ws.send_message(payload)
            assert await ws.get_message() == payload

        with trio.fail_after(15):  # admins see the traffic: in /metrics and on the state dump
            while True:
                metrics = (await daemon.upstream.client.get("/metrics")).text
                up = re.search(r'^slurm_downstream_proxy_bytes_total\{direction="up"\} (\S+)', metrics, re.M)
                if up and float(up[1]) >= len(payload):
                    break
                await trio.sleep(0.3)
        state = (await daemon.upstream.client.get("/admin/state")).json()
        shown = next(j for j in state["jobs"] if j["jobid"] == jobs[0][0]["jobid"])
        assert shown["state"] == "proxying" and shown["proxy"]["state"] == "serving" and shown["proxy"]["url"] == urls[0]

        await daemon.upstream.call("/terminate", jobs[0][0])
        with trio.fail_after(30):
            while True:  # the proxy goes with the job: connections are refused, info says nothing
                try:
                    async with httpx.AsyncClient(timeout=2) as browser:
                        await browser.get(urls[0])
                except httpx.TransportError:
                    break
                await trio.sleep(0.3)
        info = f"/request/{jobs[0][0]['name']}/31/{jobs[0][0]['jobid']}/info"
        assert (await daemon.upstream.post(info, {"qs": {}})).json()["url"] == ""
        async with httpx.AsyncClient(timeout=10) as browser:  # the other job is untouched
            assert f"job {jobs[1][0]['jobid']}" in (await browser.get(urls[1])).text
    finally:
        for ids, _ in jobs:
            await daemon.upstream.call("/terminate", ids)


async def test_the_service_on_a_compute_node_is_reached_only_through_the_proxy(daemon: Daemon) -> None:
    name = unique_name("hidden")
    jobid, fscript = await daemon.upstream.call("/submit", submit_args(name, 33, upstream_body(), interactive=True))
    port = int(re.search(r"SINGULARITYENV_JARVICE_SERVICE_PORT=(\d+)", fscript)[1])
    ids = {"name": name, "number": 33, "jobid": jobid}
    try:
        url = await info_url(daemon, ids)
        node = slurm("squeue", "-h", "-j", jobid, "-o", "%N").stdout.strip()
        addr = re.search(r"NodeAddr=(\S+)", slurm("scontrol", "-o", "show", "node", node).stdout)[1]
        assert addr != current().host  # the node is a host of its own, not the login node
        # the login node reaches the service (so it listens), at the address Slurm gives
        probe = f"import socket; socket.create_connection(({addr!r}, {port}), 5).close()"
        assert slurm("python3", "-c", probe).returncode == 0
        # this process, in the daemon's network namespace, cannot: no route to the cluster's network
        with trio.fail_after(10), pytest.raises(OSError):
            await trio.open_tcp_stream(addr, port)
        async with httpx.AsyncClient(timeout=10) as browser:  # the daemon's proxy, via the login node, can
            assert f"job {jobid}" in (await browser.get(url)).text
    finally:
        await daemon.upstream.call("/terminate", ids)


# ------------------------------------------------------------------ local mode's proxy processes
async def admin_proxy(daemon_url: str, client: httpx.AsyncClient, jobid: str) -> dict:
    state = (await client.get(daemon_url.rstrip("/") + "/admin/state")).json()
    return next(j for j in state["jobs"] if j["jobid"] == jobid)["proxy"] or {}


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def secret_pieces() -> list[str]:
    """The SSH key as configured (base64 of PEM) and every long line of the PEM: none may show on a command line."""
    raw = cluster_env()["JARVICE_SLURM_SSH_PKEY"]
    pem = decode_private_key(raw)
    return [raw, *(line for line in pem.splitlines() if len(line) > 20 and "PRIVATE KEY" not in line)]


async def serves(url: str, jobid: str, timeout: float) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                async with httpx.AsyncClient(timeout=5) as browser:
                    if f"job {jobid}" in (await browser.get(url)).text:
                        return
            except httpx.TransportError:
                pass
            await trio.sleep(0.2)


async def test_a_killed_proxy_process_is_restarted_and_its_url_serves_again(daemon: Daemon) -> None:
    """Local mode: each job's proxy is a process of its own (not the daemon's), with no key on its command line;
    SIGKILLed, it is restarted on the same port (same URL), counted in /metrics, shown on the state dump."""
    name = unique_name("respawn")
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 34, upstream_body(), interactive=True))
    ids = {"name": name, "number": 34, "jobid": jobid}
    client = daemon.upstream.client
    try:
        url = await info_url(daemon, ids)
        proxy = await admin_proxy(daemon.url, client, jobid)
        pid = proxy["pid"]
        assert proxy["state"] == "serving" and proxy["url"] == url and proxy["restarts"] == 0
        assert pid != os.getpid() and alive(pid), "the proxy runs as a process of its own"
        assert "proxy" in cmdline(pid) and f"{port_of(url)}" in cmdline(pid)
        for piece in secret_pieces():
            assert piece not in cmdline(pid), "the SSH key is on the proxy process's command line"
        await serves(url, jobid, 10)

        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(30):  # restarted (after a short backoff) on the same port: the URL is unchanged
            while True:
                proxy = await admin_proxy(daemon.url, client, jobid)
                if proxy.get("pid") not in (None, pid) and proxy["state"] == "serving":
                    break
                await trio.sleep(0.2)
        assert proxy["restarts"] == 1 and proxy["url"] == url and not alive(pid)
        await serves(url, jobid, 10)
        assert await info_url(daemon, ids, timeout=10) == url
        metrics = (await client.get("/metrics")).text
        died = re.search(r'^slurm_downstream_effect_failures_total\{effect="proxy process",kind="error"\} (\S+)',
                         metrics, re.M)
        assert died and float(died[1]) >= 1, "a proxy process that died is counted like any failed effect"

        await daemon.upstream.call("/terminate", ids)  # the job ends: its proxy process goes, and its port
        new_pid = proxy["pid"]
        with trio.fail_after(30):
            while alive(new_pid):
                await trio.sleep(0.2)
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port_of(url))
    finally:
        await daemon.upstream.call("/terminate", ids)


async def test_a_sigkilled_daemon_leaves_no_proxy_process(tmp_path: Path) -> None:
    """``slurm-downstream serve`` as operators run it, SIGKILLed while a proxy process serves a user:
    the process stops by itself (its control socket's end of file), and the URL stops answering."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JARVICE_")}
    env |= cluster_env() | {"JARVICE_SLURM_POLL_INTERVAL": "0.5", "JARVICE_SLURM_JOURNAL": ":memory:"}
    daemon = DaemonProcess(CLI, env, free_port(), tmp_path / "daemon.log")
    user, password = env["JARVICE_SCHED_SERVER_KEY"].split(":", 1)
    name = unique_name("orphan")
    ids: dict = {}
    try:
        await daemon.start()
        async with httpx.AsyncClient(base_url=daemon.url, auth=(user, password), timeout=30) as client:
            up = Upstream(client)
            with trio.fail_after(60):
                while True:
                    try:
                        if (await client.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.2)
            jobid, _ = await up.call("/submit", submit_args(name, 35, upstream_body(), interactive=True))
            ids = {"name": name, "number": 35, "jobid": jobid}
            url = await info_url(Daemon(up, None, daemon.url), ids)  # type: ignore[arg-type]
            pid = (await admin_proxy(daemon.url, client, jobid))["pid"]
            assert pid in descendants(daemon.process.pid)
            await serves(url, jobid, 10)
            async with open_websocket_url(url.replace("http://", "ws://", 1) + "ws") as ws:  # a user connected
                await daemon.kill(signal.SIGKILL)
                with trio.fail_after(10):
                    while alive(pid):
                        await trio.sleep(0.1)
                with pytest.raises(ConnectionClosed), trio.fail_after(10):
                    await ws.send_message("anyone there?")
                    await ws.get_message()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port_of(url))
        assert "Traceback" not in daemon.log_text()
    finally:
        await daemon.kill()
        if ids:
            slurm("scancel", ids["jobid"])
