"""The daemon as operators run it: the console command, an unreachable cluster, listings."""

from __future__ import annotations

import os
import re
import subprocess

import httpx
import trio

from daemon.server import serve
from tests.integration.conftest import Daemon, cluster_env, settings, state, unique_name
from tests.support.cluster import current
from tests.support.processes import CLI
from tests.support.upstream import Upstream, submit_args


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("JARVICE_")}
    full.update(cluster_env(), **env)
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=full, timeout=60)


def test_check_reports_every_preflight_and_succeeds() -> None:
    result = run_cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "+----- Slurm Scheduler init report -----+" in result.stdout
    cluster = current()
    accounting = "sacct works (slurmdbd)" if cluster.accounting == "slurmdbd" else "sacct -c works"
    for line in [f"ok      ssh             jarvice@{cluster.host}:", f"ok      slurm version   slurm {cluster.version}",
                 "ok      select type     select/cons_tres", "ok      scratch dir     ", "ok      flock ",
                 "ok      MinJobAge       ", "ok      squeue          ", f"ok      accounting      {accounting}"]:
        assert line in result.stdout
    key = cluster_env()["JARVICE_SLURM_SSH_PKEY"]
    assert key[:40] not in result.stdout + result.stderr  # the key is shown as a fingerprint only


def test_check_fails_when_the_cluster_cannot_be_reached() -> None:
    result = run_cli("check", JARVICE_SLURM_CLUSTER_PORT="1")
    assert result.returncode == 1
    assert f"error   ssh             SSH to {current().host}:1 failed" in result.stdout
    assert "hint: check JARVICE_SLURM_CLUSTER_ADDR/PORT" in result.stdout


def test_check_fails_on_a_scratch_dir_jobs_cannot_use() -> None:
    result = run_cli("check", JARVICE_SLURM_SCRATCH_DIR="/")
    assert result.returncode == 1
    assert "error   scratch dir     / is not writable by jarvice" in result.stdout


async def test_unreachable_cluster_answers_503_never_made_up_state(nursery: trio.Nursery) -> None:
    conf = settings(JARVICE_SLURM_CLUSTER_PORT="1")
    binds = await nursery.start(lambda task_status: serve(conf, "127.0.0.1", 0, handle_signals=False,
                                                          task_status=task_status))
    user, password = conf.server_key.split(":", 1)
    async with httpx.AsyncClient(base_url=binds[0], auth=(user, password)) as client:
        upstream = Upstream(client)
        assert (await client.get("/live")).status_code == 200
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "NOT READY"
        for path in ["/queued", "/running"]:
            response = await client.get(path)
            assert response.status_code == 503 and "cluster unavailable" in response.json()["error"]
        submit = await upstream.post("/submit", submit_args(unique_name("down"), 1, "true"))
        assert submit.status_code == 503
        exit_status = await upstream.post("/exitstatus", {"name": "x", "number": 1, "jobid": "5"})
        assert exit_status.status_code == 503
        assert (await client.get("/gc")).json() == {"status": "BAD"}


async def test_pvcls_lists_a_directory_on_the_cluster(daemon: Daemon) -> None:
    top = state() / "scratch" / f"pvcls-{unique_name('ls')}"
    (top / "sub").mkdir(parents=True)
    (top / "file.txt").write_text("12345")
    os.system(f"chown -R jarvice {top}")
    plain = await daemon.upstream.post("/request/pvcls", {"qs": {"path": [str(top)]}})
    assert plain.status_code == 200
    assert sorted(plain.text.splitlines()) == [f"/data{top}/file.txt", f"/data{top}/sub/"]
    detailed = await daemon.upstream.post("/request/pvcls", {"qs": {"path": [str(top)], "details": ["true"]}})
    lines = {line.split(" ", 2)[2]: line.split(" ")[:2] for line in detailed.text.splitlines()}
    assert lines[f"/data{top}/file.txt"][1] == "5" and lines[f"/data{top}/file.txt"][0].isdigit()
    assert f"/data{top}/sub/" in lines
    refused = await daemon.upstream.post("/request/pvcls", {"qs": {"path": ["/tmp/../etc"]}})
    assert refused.status_code == 400


async def test_constant_and_job_request_endpoints(daemon: Daemon) -> None:
    assert await daemon.upstream.call("/nodes") is True
    assert await daemon.upstream.call("/online", {"host": "x"}) is True
    name = unique_name("req")
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 31, "sleep 60"))
    base = f"/request/{name}/31/{jobid}"
    for method in ["ping", "connect", "whatever"]:
        response = await daemon.upstream.post(f"{base}/{method}", {"qs": {}})
        assert response.status_code == 200 and response.text == ""
    info = await daemon.upstream.call(f"{base}/info", {"qs": {}})
    assert info == {"about": "", "help": "", "url": "", "actions": {}}
    assert (await daemon.upstream.post(f"{base}/screenshot", {"qs": {}})).status_code == 404
    assert (await daemon.upstream.post(f"{base}/shutdown", {"qs": {}})).status_code == 200
    await daemon.wait_phase(name, "finished", timeout=30)
    rc, *_ = await daemon.upstream.call("/exitstatus", {"name": name, "number": 31, "jobid": jobid})
    assert rc == -15


async def test_start_up_learns_the_cluster_from_one_probe(daemon: Daemon) -> None:
    """The probe that the preflight checks judge is the one the Slurm client learns from: one `sh -s`
    round trip plus the jobs' mkdir, no separate `sbatch --version` counted among the submits."""
    metrics = (await daemon.upstream.client.get("/metrics")).text
    counts = {m[1]: float(m[2]) for m in re.finditer(
        r'^slurm_downstream_slurm_command_seconds_count\{command="([^"]+)"\} (\S+)', metrics, re.M)}
    assert counts.get("sh") == 1, counts
    assert counts.get("mkdir") == 1, counts
    assert "sbatch" not in counts and "scontrol" not in counts, counts
    checks = {c["name"]: c["level"] for c in (await daemon.upstream.client.get("/admin/state")).json()["preflight"]}
    assert checks["slurm version"] == "ok" and checks["accounting"] == "ok" and checks["squeue"] == "ok", checks
