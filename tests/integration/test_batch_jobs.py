"""Batch jobs end to end: upstream HTTP -> daemon -> SSH -> real Slurm -> back."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import trio

from tests.integration.conftest import Daemon, settings, slurm, start_daemon, state, unique_name
from tests.support.upstream import ids, submit_args

HMS = re.compile(r"^\d{2,}:\d{2}:\d{2}$")


async def run_to_end(daemon: Daemon, name: str, number: int, body: str, **kw: object) -> tuple[str, list]:
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, number, body, **kw))
    await daemon.wait_phase(name, "finished")
    return jobid, await daemon.upstream.call("/exitstatus", ids(name, number, jobid))


async def test_successful_job_reports_rc0_output_and_elapsed(daemon: Daemon) -> None:
    name = unique_name("ok")
    jobid, fscript = await daemon.upstream.call(
        "/submit", submit_args(name, 11, 'echo "hello from $PROCESS_NODENAME brace=${{JOB_NNODES}}"; sleep 2')
    )
    assert jobid.isdigit() and isinstance(fscript, str) and "hello from" in fscript
    await daemon.wait_phase(name, "running")
    nodes, elapsed, label, extra = await daemon.upstream.call("/runstatus", ids(name, 11, jobid))
    assert nodes and all(n.startswith("node") for n in nodes)
    assert HMS.match(elapsed) and label == f"{name}/11/{jobid}" and extra is None
    await daemon.wait_phase(name, "finished")

    answer = await daemon.upstream.call("/exitstatus", ids(name, 11, jobid))
    rc, elapsed, (log, termination) = answer
    assert rc == 0
    assert HMS.match(elapsed) and elapsed >= "00:00:02"
    assert "hello from node" in log and "brace=1" in log
    assert termination == "<< termination state: COMPLETED -- see STDOUT for job errors >>"
    # idempotent, and the job's files are collected
    assert await daemon.upstream.call("/exitstatus", ids(name, 11, jobid)) == answer
    assert not list((state() / "scratch" / ".jarvice").glob(f"{jobid}.*"))
    assert await daemon.upstream.call("/runstatus", ids(name, 11, jobid)) == [None, None, None, None]


async def test_failing_job_reports_rc1(daemon: Daemon) -> None:
    name = unique_name("fail")
    _, (rc, _, (log, termination)) = await run_to_end(daemon, name, 12, 'echo "about to fail" >&2; exit 3')
    assert rc == 1
    assert "about to fail" in log
    assert "termination state: FAILED" in termination


async def test_terminate_reports_minus_15(daemon: Daemon) -> None:
    name = unique_name("term")
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 13, "echo started; sleep 120"))
    await daemon.wait_phase(name, "running")
    assert await daemon.upstream.call("/terminate", ids(name, 13, jobid)) is True
    await daemon.wait_phase(name, "finished", timeout=30)
    rc, _, (_, termination) = await daemon.upstream.call("/exitstatus", ids(name, 13, jobid))
    assert rc == -15
    assert "CANCELLED" in termination


async def test_held_job_waits_until_released(daemon: Daemon) -> None:
    name = unique_name("held")
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 14, "echo released-and-ran", held=True))
    await daemon.wait_phase(name, "queued")
    await trio.sleep(1.5)  # several polls: a held job must stay queued
    assert [name, jobid] in await daemon.upstream.call("/queued")
    assert await daemon.upstream.call("/runstatus", ids(name, 14, jobid)) == [[], "00:00:00", f"{name}/14/{jobid}", None]
    assert "JobHeldUser" in slurm("squeue", "-h", "-j", jobid, "-o", "%r").stdout

    assert await daemon.upstream.call("/release", ids(name, 14, jobid)) is True
    await daemon.wait_phase(name, "finished")
    rc, _, (log, _) = await daemon.upstream.call("/exitstatus", ids(name, 14, jobid))
    assert rc == 0 and "released-and-ran" in log


async def test_two_node_job_runs_one_task_per_node(daemon: Daemon) -> None:
    name = unique_name("2n")
    body = 'echo "task $PROCESS_PROCID on $PROCESS_NODENAME of $JOB_NNODES: $JOB_JOB_FORMATED_NODELIST"; sleep 2'
    # the app runs on task 0; JARVICE's worker part on the other node prints the same line
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 15, body, nodes=2, worker=body))
    await daemon.wait_phase(name, "running")
    nodes, *_ = await daemon.upstream.call("/runstatus", ids(name, 15, jobid))
    assert sorted(nodes) == ["node1", "node2"]
    await daemon.wait_phase(name, "finished")
    rc, elapsed, (log, termination) = await daemon.upstream.call("/exitstatus", ids(name, 15, jobid))
    assert rc == 0 and "COMPLETED" in termination
    assert HMS.match(elapsed) and elapsed >= "00:00:02"
    assert "task 0 on node" in log and "task 1 on node" in log
    assert "of 2: node1 node2" in log


async def test_events_show_slurms_view_of_the_job(daemon: Daemon) -> None:
    name = unique_name("ev")
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 16, "sleep 30"))
    events = await daemon.upstream.call("/events", ids(name, 16, jobid))
    assert f"JobId={jobid}" in events and f"JobName=jarvice_{name}" in events
    await daemon.upstream.call("/terminate", ids(name, 16, jobid))
    await daemon.wait_phase(name, "finished", timeout=30)


async def test_tail_returns_the_last_lines_while_running(daemon: Daemon) -> None:
    name = unique_name("tail")
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 17, "seq 1 500; sleep 30"))
    await daemon.wait_phase(name, "running")
    with trio.fail_after(20):
        while True:
            response = await daemon.upstream.post(f"/request/{name}/17/{jobid}/tail", {"qs": {"lines": ["3"]}})
            if response.status_code == 200 and response.text.endswith("500\n"):
                break
            await trio.sleep(0.2)
    assert response.text == "498\n499\n500\n"
    assert response.headers["content-type"].startswith("text/plain")
    await daemon.upstream.call("/terminate", ids(name, 17, jobid))
    await daemon.wait_phase(name, "finished", timeout=30)


async def test_job_purged_from_slurm_is_still_answered() -> None:
    """Slurm forgets a finished job after MinJobAge; its exit file and jobcomp remain.

    A first daemon submits the job and stops; once Slurm has purged the job, a
    second daemon, which never saw it, is asked for its exit status.
    """
    name = unique_name("purge")
    async with trio.open_nursery() as first:
        async for d in start_daemon(first, settings()):
            jobid, _ = await d.upstream.call("/submit", submit_args(name, 18, "echo purged-output; exit 0"))
            await d.wait_phase(name, "finished")
        first.cancel_scope.cancel()
    with trio.fail_after(150):  # MinJobAge plus slurmctld's purge cadence
        while slurm("squeue", "-h", "-t", "all", "-j", jobid).returncode == 0:
            await trio.sleep(2)
    async with trio.open_nursery() as second:
        async for d in start_daemon(second, settings()):
            rc, _, (log, termination) = await d.upstream.call("/exitstatus", ids(name, 18, jobid))
            assert rc == 0
            assert "purged-output" in log
            assert "COMPLETED" in termination
        second.cancel_scope.cancel()


async def test_a_job_that_ends_and_is_purged_between_two_polls_is_resolved(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """The poller never saw the end: the job's exit-code file and jobcomp tell it."""
    name = unique_name("between")
    caplog.set_level(logging.INFO, logger="daemon.service")
    async for d in start_daemon(nursery, settings(JARVICE_SLURM_POLL_INTERVAL="45")):
        jobid, _ = await d.upstream.call("/submit", submit_args(name, 24, "echo between-polls; sleep 2; exit 0"))
        with trio.fail_after(120):
            while slurm("squeue", "-h", "-t", "all", "-j", jobid).returncode == 0:
                await trio.sleep(1)
        await d.wait_phase(name, "finished", timeout=60)
        rc, _, (log, termination) = await d.upstream.call("/exitstatus", ids(name, 24, jobid))
        assert rc == 0 and "between-polls" in log and "COMPLETED" in termination
        assert any(f"job {jobid} left squeue unseen" in r.message for r in caplog.records)


async def test_shell_metacharacters_in_a_name_are_refused_and_nothing_runs(daemon: Daemon, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    before = slurm("squeue", "-h", "-t", "all", "-o", "%A").stdout.split()
    for bad in [f"x$(touch {canary})", f"x`touch {canary}`", "x'; touch /tmp/c #", "a b", "x\ny", "-rf", "x;id"]:
        response = await daemon.upstream.post("/submit", submit_args(bad, 19, "echo should-not-run"))
        assert response.status_code == 400, bad
        assert "'name'" in response.json()["error"]
    after = slurm("squeue", "-h", "-t", "all", "-o", "%A").stdout.split()
    assert after == before
    assert not canary.exists()


async def test_unknown_job_answers_of_the_contract(daemon: Daemon) -> None:
    unknown = ids(unique_name("unknown"), 20, "99999999")
    assert await daemon.upstream.call("/runstatus", unknown) == [None, None, None, None]
    rc, elapsed, (log, termination) = await daemon.upstream.call("/exitstatus", unknown)
    assert (rc, elapsed, log) == (-9, "00:00:00", "")
    assert "UNKNOWN" in termination


async def test_credentials_are_required_except_for_probes(daemon: Daemon) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=daemon.url) as anonymous:
        assert (await anonymous.get("/live")).json() == {"status": "OK"}
        ready = await anonymous.get("/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "OK"
        for path in ["/queued", "/running", "/nodes", "/gc"]:
            response = await anonymous.get(path)
            assert response.status_code == 401 and "credentials" in response.json()["error"]
        wrong = await anonymous.get("/queued", auth=("jarvice", "wrong"))
        assert wrong.status_code == 401
        submit = await anonymous.post("/submit", data={"args": "{}"})
        assert submit.status_code == 401


async def test_malformed_requests_get_400_naming_the_problem(daemon: Daemon) -> None:
    client = daemon.upstream.client
    not_json = await client.post("/runstatus", data={"args": "{nope"})
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
    missing = await daemon.upstream.post("/exitstatus", {"name": "x", "number": 1})
    assert missing.status_code == 400 and "'jobid'" in missing.json()["error"]
    bad_script = submit_args(unique_name("bad"), 21, "echo {oops}")
    response = await daemon.upstream.post("/submit", bad_script)
    assert response.status_code == 400 and "{oops}" in response.json()["error"]
    unknown_device = submit_args(unique_name("dev"), 22, "true", devices=["fpga=1"])
    response = await daemon.upstream.post("/submit", unknown_device)
    assert response.status_code == 400 and "fpga" in response.json()["error"]
    assert (await client.get("/no/such/endpoint")).status_code == 404


async def test_repeated_submit_returns_the_same_job(daemon: Daemon) -> None:
    name = unique_name("dup")
    args = submit_args(name, 23, "sleep 20")
    first = await daemon.upstream.call("/submit", args)
    second = await daemon.upstream.call("/submit", args)
    assert first == second
    assert len(slurm("squeue", "-h", "-t", "all", "-n", f"jarvice_{name}", "-o", "%A").stdout.split()) == 1
    await daemon.upstream.call("/terminate", ids(name, 23, first[0]))
    await daemon.wait_phase(name, "finished", timeout=30)
