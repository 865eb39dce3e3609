"""Interactive jobs end to end: upstream submits, Slurm runs a web service, a user's browser reaches it.

Everything is real: the daemon (local proxy mode) on a socket, SSH to the test
cluster's sshd, a Slurm job running ``tests/support/webjob.py`` (HTTP + WebSocket)
on the port the daemon assigned, and the user's HTTP and WebSocket connections
going through the daemon's per-job proxy and an SSH direct-tcpip channel.
The compute nodes sit behind the login node (tests/cluster/up), as in production:
the job's service is reached through the login node or not at all.
"""

from __future__ import annotations

import re

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.integration.conftest import Daemon, slurm, unique_name
from tests.support.cluster import current
from tests.support.upstream import submit_args
from tests.support.webjob import upstream_body


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
