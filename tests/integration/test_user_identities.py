"""Jobs on behalf of the JARVICE user, through the real daemon and the real slurmrestd (issue 15).

On the test clusters of 24.11 and 26.05 (slurmdbd, ``PrivateData=jobs``, users alice and bob in
accounts of their own, the service user ``jarvice`` their coordinator; tokens from the local stand-in
of JARVICE's identity provider, ``tests/support/oidc.py``: no Keycloak can run here), upstream sends
each user's JWT as ``bearer``, as JARVICE does: the job runs as that user, the daemon shows and
collects it with the service identity, and keeps it across a SIGKILL and across a lost coordinator
role (kept, not ended, until it can be seen again).
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.integration.conftest import Daemon, settings, start_daemon, unique_name
from tests.integration.test_faults import daemon_env, daemon_processes, first_ok, http  # noqa: F401 - a fixture
from tests.support.cluster import current
from tests.support.processes import CLI, DaemonProcess, free_port
from tests.support.upstream import Upstream, ids, submit_args

BODY = 'echo "runs as $(id -un)"; sleep {seconds}; exit {rc}'


async def submit_as(up: Upstream, user: str, tag: str, number: int, *, seconds: int = 1, rc: int = 0) -> tuple[str, str]:
    name = unique_name(tag)
    args = {**submit_args(name, number, BODY.format(seconds=seconds, rc=rc), marker=False),
            "bearer": current().user_token(user)}
    answer = await up.post("/submit", args)
    assert answer.status_code == 200, answer.text
    return name, answer.json()[0]


async def finished(up: Upstream, name: str, timeout: float = 90) -> None:
    with trio.fail_after(timeout):
        while True:
            lists = [await up.call("/queued"), await up.call("/running")]
            if all(entry[0] != name for entries in lists for entry in entries):
                return
            await trio.sleep(0.3)


async def test_each_users_job_runs_as_that_user_and_is_collected(daemon: Daemon) -> None:
    up = daemon.upstream
    alice, alice_id = await submit_as(up, "alice", "as-alice", 81, seconds=3)
    bob, bob_id = await submit_as(up, "bob", "as-bob", 82, seconds=3, rc=2)
    await daemon.wait_phase(alice, "running")
    await daemon.wait_phase(bob, "running")
    admin = (await up.client.get("/admin/state")).json()
    users = {job["jobid"]: job["user"] for job in admin["jobs"]}
    assert users[alice_id] == "alice" and users[bob_id] == "bob"
    assert "as alice" in (await up.client.get("/admin")).text
    for name in (alice, bob):
        await finished(up, name)
    rc, _, (log, termination) = await up.call("/exitstatus", ids(alice, 81, alice_id))
    assert rc == 0 and "runs as alice" in log and "COMPLETED" in termination
    rc, _, (log, termination) = await up.call("/exitstatus", ids(bob, 82, bob_id))
    assert rc == 1 and "runs as bob" in log and "FAILED" in termination
    jobs_dir = current().jobs_dir
    assert not list(jobs_dir.glob(f"{alice_id}.*")) and not list(jobs_dir.glob(f"{bob_id}.*"))  # collected
    metrics = (await up.client.get("/metrics")).text
    assert 'slurm_downstream_submits_by_identity_total{identity="user"}' in metrics
    assert "alice" not in metrics.replace(alice, "")  # counted per kind, never per user name


async def test_a_lost_coordinator_role_neither_ends_a_job_nor_goes_unsaid(nursery: trio.Nursery) -> None:
    async for daemon in start_daemon(nursery, settings()):
        up = daemon.upstream
        name, jobid = await submit_as(up, "alice", "hidden", 83, seconds=12, rc=0)
        await daemon.wait_phase(name, "running")
        with current().coordinator_removed():
            await trio.sleep(4)  # several polls that do not show it
            assert [name, jobid] in await up.call("/running"), "a job that became invisible was reported ended"
            state = (await up.client.get("/admin/state")).json()
            job = next(j for j in state["jobs"] if j["jobid"] == jobid)
            assert job["state"] == "running" and "coordinator" in (job["last_error"] or "")
            async for restarted in start_daemon(nursery, settings()):  # preflight, now, says why
                checks = (await restarted.upstream.client.get("/admin/state")).json()["preflight"]
                visibility = next(c for c in checks if c["name"] == "job visibility")
                assert visibility["level"] == "warning" and "sacctmgr add coordinator" in visibility["hint"]
                break
        await finished(up, name)  # seen again, then ended as it did
        rc, _, (log, termination) = await up.call("/exitstatus", ids(name, 83, jobid))
        assert rc == 0 and "runs as alice" in log and "COMPLETED" in termination
    nursery.cancel_scope.cancel()


async def test_a_sigkilled_daemon_adopts_both_users_jobs(daemon_processes: list[DaemonProcess],  # noqa: F811
                                                         tmp_path: Path) -> None:
    env = daemon_env(JARVICE_SLURM_CLIENT="slurmrestd_client", JARVICE_SLURM_JOURNAL=str(tmp_path / "journal"))
    port = free_port()
    first = DaemonProcess(CLI, env, port, tmp_path / "daemon-1.log")
    daemon_processes.append(first)
    await first.start()
    async with http(first.url) as up:
        await first_ok(lambda up=up: up.client.get("/ready"), 30)
        alice, alice_id = await submit_as(up, "alice", "kill-alice", 84, seconds=8, rc=0)
        bob, bob_id = await submit_as(up, "bob", "kill-bob", 85, seconds=8, rc=3)
        with trio.fail_after(60):
            while {n for n, _ in await up.call("/running")} < {alice, bob}:
                await trio.sleep(0.3)
    await first.kill()
    second = DaemonProcess(CLI, env, port, tmp_path / "daemon-2.log")
    daemon_processes.append(second)
    await second.start()
    async with http(second.url) as up:
        await first_ok(lambda up=up: up.client.get("/ready"), 30)
        users = {j["jobid"]: j["user"] for j in (await up.client.get("/admin/state")).json()["jobs"]}
        assert users.get(alice_id) == "alice" and users.get(bob_id) == "bob"
        for name in (alice, bob):
            await finished(up, name)
        assert (await up.call("/exitstatus", ids(alice, 84, alice_id)))[0] == 0
        rc, _, (log, _) = await up.call("/exitstatus", ids(bob, 85, bob_id))
        assert rc == 1 and "runs as bob" in log
    log_text = first.log_text() + second.log_text()
    assert "eyJ" not in log_text  # no token, the users' nor the service's, in either daemon's log
