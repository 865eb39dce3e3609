"""JARVICE_SLURM_CLIENT=slurmrestd_client where it differs from SSH: no SSH at all, and slurmrestd's own faults.

Runs only through the test clusters' real slurmrestd (Slurm 24.11 and 26.05, JWT from the
local stand-in of Keycloak's token endpoint, ``tests/support/oidc.py``: no Keycloak can run here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from config.settings import ConfigError
from daemon.server import serve
from tests.integration.conftest import Daemon, settings, slurm, start_daemon, unique_name, user_token
from tests.support.cluster import current
from tests.support.upstream import ids, submit_args


async def test_without_ssh_batch_jobs_run_and_what_cannot_be_shown_says_why(nursery: trio.Nursery) -> None:
    conf = settings(JARVICE_SLURM_CLUSTER_ADDR="")  # slurmrestd only: no shell on the login node at all
    assert not conf.has_ssh and conf.rest is not None
    async for daemon in start_daemon(nursery, conf):
        name = unique_name("nossh")
        jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 31, "echo unseen; exit 3", marker=False))
        await daemon.wait_phase(name, "finished")
        rc, _, (log, termination) = await daemon.upstream.call("/exitstatus", ids(name, 31, jobid))
        assert rc == 1 and "FAILED" in termination  # from slurmctld, through slurmrestd
        assert "without SSH access to the login node" in log and "unseen" not in log

        web = submit_args(unique_name("nossh-web"), 32, "sleep 60", interactive=True)
        refused = await daemon.upstream.post("/submit", web)
        assert refused.status_code == 400 and "interactive jobs need SSH" in refused.json()["error"]
        assert await daemon.upstream.call("/queued") == [] or all(n != web["name"] for n, _ in
                                                                 await daemon.upstream.call("/queued"))

        async with httpx.AsyncClient(base_url=daemon.url) as anonymous:
            ready = await anonymous.get("/ready")
            assert ready.status_code == 200 and "no SSH" in ready.json()["limited"]
        admin = (await daemon.upstream.client.get("/admin/state")).json()
        assert admin["ssh"]["target"] == "not configured"
        ssh_check = next(c for c in admin["preflight"] if c["name"] == "ssh")
        assert ssh_check["level"] == "warning" and "interactive jobs are refused" in ssh_check["detail"]
        assert any(c["name"] == "data parser" and c["level"] == "ok" for c in admin["preflight"])
        metrics = (await daemon.upstream.client.get("/metrics")).text
        requests = next(line for line in metrics.splitlines() if line.startswith("slurm_downstream_slurmrestd_requests"))
        assert float(requests.split()[-1]) > 0 and "slurm_downstream_token_fetches" in metrics
        assert conf.rest.client_secret not in metrics and conf.rest.client_secret not in str(admin)
    nursery.cancel_scope.cancel()


async def test_a_wrong_client_secret_is_a_503_and_preflight_names_the_client(nursery: trio.Nursery) -> None:
    conf = settings(JARVICE_KEYCLOAK_CLIENT_SECRET="not-the-secret")
    binds = await nursery.start(lambda task_status: serve(conf, "127.0.0.1", 0, handle_signals=False,
                                                           task_status=task_status))
    user, password = conf.server_key.split(":", 1)
    async with httpx.AsyncClient(base_url=binds[0], auth=(user, password)) as upstream:
        assert (await upstream.get("/ready")).status_code == 503
        queued = await upstream.get("/queued")
        assert queued.status_code == 503 and "error" in queued.json()
        args = {**submit_args(unique_name("badsecret"), 61, "true"), "bearer": user_token()}
        submit = await upstream.post("/submit", data={"args": json.dumps(args)})
        assert submit.status_code == 503
        admin = (await upstream.get("/admin/state")).json()
    check = next(c for c in admin["preflight"] if c["name"] == "slurmrestd")
    assert check["level"] == "error" and conf.rest.client_id in check["detail"] and "unauthorized_client" in check["detail"]
    assert "not-the-secret" not in json.dumps(admin)
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("parser", ["v0.0.42", "v0.0.39"])
async def test_a_fixed_data_parser_is_used_or_refused_at_start(nursery: trio.Nursery, parser: str) -> None:
    conf = settings(JARVICE_SLURM_DATA_PARSER_VERSION=parser)
    if parser == "v0.0.42":  # served by both 24.11 and 26.05
        async for daemon in start_daemon(nursery, conf):
            admin = (await daemon.upstream.client.get("/admin/state")).json()
            check = next(c for c in admin["preflight"] if c["name"] == "data parser")
            assert check["detail"].startswith("v0.0.42 ")
        nursery.cancel_scope.cancel()
        return
    # a version the server lacks stops the start in one line naming the variable and what is offered
    with trio.fail_after(30), pytest.raises(ConfigError, match="does not serve data parser v0.0.39 .*serves v0.0.4"):
        await nursery.start(lambda task_status: serve(conf, "127.0.0.1", 0, handle_signals=False,
                                                      task_status=task_status))


class Slurmrestd:
    """The test cluster's slurmrestd, killed and started again exactly as ``tests/cluster/up`` started it."""

    def __init__(self) -> None:
        self.state = current().state
        self.pidfile = self.state / "slurmrestd.pid"
        self.argv = Path(f"/proc/{self.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    async def start(self) -> None:
        script = 'echo $$ > "$1"; log=$2; shift 2; exec env SLURM_JWT=daemon "$@" >>"$log" 2>&1'
        subprocess.run(["setsid", "-f", str(self.state / "bin" / "enter"), "login", "/bin/sh", "-c", script, "sh",
                        str(self.pidfile), str(self.state / "log" / "slurmrestd.log"), *map(os.fsdecode, self.argv)],
                       check=True, timeout=30)
        url = current().rest_url
        with trio.fail_after(30):
            while True:
                try:
                    async with httpx.AsyncClient() as probe:
                        await probe.get(f"{url}/openapi/v3", timeout=2)
                    return
                except httpx.HTTPError:
                    await trio.sleep(0.2)


async def until_status(daemon: Daemon, path: str, status: int, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while (await daemon.upstream.client.get(path)).status_code != status:
            await trio.sleep(0.2)


async def test_slurmrestd_killed_and_started_again_under_running_jobs(nursery: trio.Nursery) -> None:
    """503 while it is down (jobs keep their state, nothing submitted twice); after it is back every job ends right."""
    restd = Slurmrestd()
    async for daemon in start_daemon(nursery, settings()):
        names = [unique_name(f"restd{i}") for i in range(3)]
        jobids = {}
        for i, name in enumerate(names):
            jobids[name], _ = await daemon.upstream.call("/submit", submit_args(name, 40 + i, f"sleep 12; exit {i}",
                                                                                marker=False))
        for name in names:
            await daemon.wait_phase(name, "running")
        restd.kill()
        await until_status(daemon, "/queued", 503)
        refused = await daemon.upstream.post("/submit", submit_args(unique_name("restd-down"), 49, "true"))
        assert refused.status_code == 503 and "error" in refused.json()
        await trio.sleep(14)  # the jobs end while slurmrestd is down
        await restd.start()
        await until_status(daemon, "/queued", 200)  # fresh again: the first poll through the new slurmrestd
        for i, name in enumerate(names):
            await daemon.wait_phase(name, "finished")
            rc, _, _ = await daemon.upstream.call("/exitstatus", ids(name, 40 + i, jobids[name]))
            assert rc == (0 if i == 0 else 1)
            assert slurm("squeue", "-h", "-t", "all", "-n", f"jarvice_{name}", "-o", "%i").stdout.split() in (
                [jobids[name]], [])  # one job per name, never a second
    nursery.cancel_scope.cancel()


async def test_a_token_that_expires_while_the_token_endpoint_is_down(nursery: trio.Nursery) -> None:
    """Short-lived tokens, then the endpoint fails: 503 once the token is refused, none lost, back by itself."""
    cluster = current()
    cluster.oidc("config", lifetime=6)
    try:
        async for daemon in start_daemon(nursery, settings()):
            name = unique_name("tokexp")
            jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 51, "sleep 10", marker=False))
            await daemon.wait_phase(name, "running")
            cluster.oidc("config", fail=True)
            await until_status(daemon, "/running", 503, timeout=40)  # the last token expired; no new one
            cluster.oidc("config", fail=False)
            await until_status(daemon, "/running", 200)
            await daemon.wait_phase(name, "finished", timeout=60)
            rc, _, (_, termination) = await daemon.upstream.call("/exitstatus", ids(name, 51, jobid))
            assert rc == 0 and "COMPLETED" in termination
        nursery.cancel_scope.cancel()
    finally:
        cluster.oidc("reset")


@pytest.mark.parametrize(("kind", "token_args", "why"), [
    ("forged", {"forged": True}, "Slurm refused the bearer token of jarvice"),
    ("expired", {"lifetime": -60}, "the bearer token of jarvice has expired"),
    ("claimless", {"claim": False}, "no 'preferred_username' claim"),
])
async def test_a_users_token_slurm_would_refuse_submits_nothing(daemon: Daemon, kind: str, token_args: dict,
                                                                 why: str) -> None:
    cluster = current()
    minted = {"lifetime": 600, **token_args}  # a copy: the parameter is shared by every version's run
    bearer = cluster.oidc("token", username="jarvice", **minted)
    name = unique_name(f"tok-{kind}")
    answer = await daemon.upstream.client.post(
        "/submit", data={"args": json.dumps({**submit_args(name, 71, "true"), "bearer": bearer["access_token"]})})
    assert answer.status_code == 400 and why in answer.json()["error"]
    assert bearer["access_token"] not in answer.text
    assert slurm("squeue", "-h", "-t", "all", "-n", f"jarvice_{name}", "-o", "%i").stdout.strip() == ""
