"""Jobs of several users through slurmrestd, on the test clusters of 24.11 and 26.05 (issue 15's cluster side).

What ``tests/cluster/up`` sets up for per-user jobs, proven on the real clusters without the daemon:
slurmdbd with MariaDB, users alice and bob each in a Slurm account of their own, ``PrivateData=jobs``,
and the service user (``jarvice``, the SSH user and the service token's user) the coordinator of
both accounts. A token the OIDC stand-in signs for alice (``preferred_username=alice``), sent as
``X-SLURM-USER-TOKEN``, submits a job that runs as alice and writes into the jobs' shared dir
(``<scratch>/.jarvice``, 3770, group ``jarvice``); the service user sees both users' jobs, and
without the coordinator role it sees neither. slurmrestd also serves accounting
(``openapi/slurmdbd``): a job slurmctld has purged is still answered by ``/slurmdb/.../job/<id>``.

Facts measured here (24.11 and 26.05 alike unless said):

* A forged token (another key), an expired one and one without the username claim: submit answers
  **HTTP 511**, error 1007 ``Protocol authentication error``; nothing is submitted.
* A token for a user that does not exist on the cluster: ``diag/`` and ``jobs/`` answer 200 (jobs/
  lists nothing); submit is refused with HTTP **500**: 24.11 error 2045 ``Invalid account or
  account/partition combination specified`` (slurmctld maps the unknown name to uid 99, which has
  no association: ``AccountingStorageEnforce=associations``), 26.05 error 6010 ``Rejecting
  authentication of user nobody or group nobody``. (Without the enforcement, 24.11 accepted the
  job as uid 99 and held it forever: JobHeldAdmin, "refusing to create job credential for invalid
  user nobody".)
* slurmctld purged a finished job 10-14 s after it ended (MinJobAge=10); ``/slurmdb/v0.0.42/job/<id>``
  then answers with the service token (its user, account, state, exit code); with bob's token 200 and
  no job (slurmdbd's ``PrivateData=jobs``).
* Without the coordinator role the service user's ``jobs/``, ``job/<id>`` and ``squeue`` show neither
  user's job (``job/<id>`` of a hidden job: no record); the role is effective at once both ways.
* A job's output file belongs to its user, with the group ``jarvice`` (the dir is setgid) and
  mode 0644 (slurmrestd's jobs get no umask of the caller's); the service user reads and removes it.
"""

from __future__ import annotations

import stat
import subprocess
import time
import uuid

import httpx
import pytest

from tests.support.cluster import Cluster, current

pytestmark = pytest.mark.cluster

V = "v0.0.42"   # offered by both 24.11 (v0.0.40-42) and 26.05 (v0.0.42-45)


def rest(method: str, path: str, token: str, **kw: object) -> httpx.Response:
    return httpx.request(method, f"{current().rest_url}/{path}", headers={"X-SLURM-USER-TOKEN": token}, timeout=30, **kw)


def errors(response: httpx.Response) -> list[tuple[int, str]]:
    return [(e.get("error_number"), e.get("error")) for e in response.json().get("errors", [])]


def unique(tag: str) -> str:
    return f"ident_{tag}_{uuid.uuid4().hex[:8]}"


def submit(token: str, name: str, script: str = "id -un\nid -Gn\n") -> httpx.Response:
    cluster = current()
    job = {"name": name, "current_working_directory": str(cluster.jobs_dir),
           "standard_output": f"{cluster.jobs_dir}/%j.out", "environment": ["PATH=/usr/bin:/bin"]}
    return rest("POST", f"slurm/{V}/job/submit", token, json={"script": f"#!/bin/sh\n{script}", "job": job})


def submitted(token: str, name: str, script: str = "id -un\nid -Gn\n") -> str:
    response = submit(token, name, script)
    assert response.status_code == 200, (response.status_code, errors(response))
    return str(response.json()["job_id"])


def job(jobid: str, token: str | None = None) -> dict | None:
    """slurmctld's record of the job, as the service user sees it (None: not shown)."""
    response = rest("GET", f"slurm/{V}/job/{jobid}", token or current().static_token)
    jobs = response.json().get("jobs", []) if response.status_code == 200 else []
    return jobs[0] if jobs else None


def listed(token: str | None = None) -> dict[str, str]:
    """Job id -> user of every job ``GET jobs/`` shows."""
    response = rest("GET", f"slurm/{V}/jobs/", token or current().static_token)
    assert response.status_code == 200, (response.status_code, errors(response))
    return {str(j["job_id"]): j["user_name"] for j in response.json()["jobs"]}


def finished(jobid: str, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        record = job(jobid)
        if record and not {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING"} & set(record["job_state"]):
            return record
        time.sleep(0.3)
    raise AssertionError(f"job {jobid} did not finish in {timeout}s: {job(jobid)}")


def as_service_user(cluster: Cluster, command: str) -> subprocess.CompletedProcess[str]:
    """``command`` over SSH as the service user (the daemon's view of the cluster)."""
    return subprocess.run(["ssh", "-F", str(cluster.state / "ssh" / "ssh_config"), "slurmtest", command],
                          capture_output=True, text=True, timeout=60)


def squeue_of_service_user(cluster: Cluster) -> dict[str, str]:
    out = as_service_user(cluster, "squeue -h -t all -o '%i|%u'")
    assert out.returncode == 0, out.stderr
    return dict(line.split("|") for line in out.stdout.split())


def cancel(*jobids: str) -> None:
    subprocess.run(current().login("scancel", *jobids), capture_output=True, timeout=60)


def test_the_cluster_has_accounts_users_and_a_coordinator() -> None:
    cluster = current()
    assert cluster.accounting == "slurmdbd"
    out = subprocess.run(cluster.login("sacctmgr", "-n", "-P", "show", "user", "withcoord",
                                       "format=user,defaultaccount,coordinators"),
                         capture_output=True, text=True, check=True, timeout=60).stdout
    users = {u: (default, coords) for u, default, coords in (line.split("|") for line in out.split())}
    for user in cluster.job_users:
        assert users[user] == (cluster.account_of(user), "")
    assert users[cluster.service_user] == (cluster.account_of(cluster.service_user), ",".join(cluster.coordinated_accounts))
    assert set(cluster.coordinated_accounts) == {cluster.account_of(u) for u in cluster.job_users}
    config = subprocess.run(cluster.login("scontrol", "show", "config"), capture_output=True, text=True,
                            check=True, timeout=60).stdout
    assert "PrivateData             = jobs" in config
    assert "AccountingStorageType   = accounting_storage/slurmdbd" in config
    # every node knows the users, with the same uid as here, in the group of the jobs' files
    for node in ("login", "node1", "node2"):
        for user in (*cluster.job_users, cluster.service_user):
            ids = subprocess.run(cluster.node(node, "id", user), capture_output=True, text=True, check=True).stdout
            assert f"uid={subprocess.run(['id', '-u', user], capture_output=True, text=True).stdout.strip()}(" in ids
            assert f"({cluster.user_group})" in ids
    mode = cluster.jobs_dir.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o3770 and cluster.jobs_dir.owner() == cluster.service_user
    assert cluster.jobs_dir.group() == cluster.user_group


def test_each_user_s_job_runs_as_that_user_and_the_service_user_sees_both() -> None:
    cluster = current()
    alice, bob = cluster.job_users
    ids = {user: submitted(cluster.user_token(user), unique(user)) for user in (alice, bob)}
    try:
        shown = listed()  # the service token (jarvice, coordinator of both accounts)
        assert {ids[alice]: alice, ids[bob]: bob}.items() <= shown.items()
        over_ssh = squeue_of_service_user(cluster)
        assert over_ssh.get(ids[alice]) == alice and over_ssh.get(ids[bob]) == bob
        # each user sees their own job only (PrivateData=jobs)
        assert ids[alice] in listed(cluster.user_token(alice)) and ids[bob] not in listed(cluster.user_token(alice))
        for user, jobid in ids.items():
            record = finished(jobid)
            assert record["user_name"] == user and record["account"] == cluster.account_of(user)
            assert record["job_state"] == ["COMPLETED"], record["job_state"]
            out = cluster.jobs_dir / f"{jobid}.out"
            assert out.read_text().split("\n")[0] == user  # id -un in the job
            assert cluster.user_group in out.read_text().split("\n")[1].split()  # id -Gn: the shared group
            assert out.owner() == user and out.group() == cluster.user_group
            print(f"{user}: job {jobid} {oct(stat.S_IMODE(out.stat().st_mode))} {out.owner()}:{out.group()}")
            # the service user reads and removes the user's file (it owns the dir: the sticky bit lets it)
            read = as_service_user(cluster, f"cat {out} && rm {out}")
            assert read.returncode == 0 and read.stdout.startswith(user), read.stderr
            assert not out.exists()
    finally:
        cancel(*ids.values())


def test_a_user_cannot_remove_another_user_s_file() -> None:
    cluster = current()
    alice, bob = cluster.job_users
    jobid = submitted(cluster.user_token(alice), unique("sticky"))
    finished(jobid)
    out = cluster.jobs_dir / f"{jobid}.out"
    try:
        rm = subprocess.run(cluster.login("runuser", "-u", bob, "--", "rm", "-f", str(out)),
                            capture_output=True, text=True, timeout=60)
        assert rm.returncode != 0 and "Operation not permitted" in rm.stderr
        assert out.exists()
    finally:
        out.unlink(missing_ok=True)


def test_without_the_coordinator_role_the_service_user_sees_neither_user_s_jobs() -> None:
    cluster = current()
    alice, bob = cluster.job_users
    ids = {user: submitted(cluster.user_token(user), unique(f"{user}_coord"), "sleep 60\n") for user in (alice, bob)}
    try:
        assert set(ids.values()) <= set(listed())
        with cluster.coordinator_removed():
            assert not set(ids.values()) & set(listed())
            assert not set(ids.values()) & set(squeue_of_service_user(cluster))
            assert job(ids[alice]) is None
            assert job(ids[alice], cluster.user_token(alice))["user_name"] == alice  # still there: alice sees it
        assert set(ids.values()) <= set(listed())  # restored
    finally:
        cancel(*ids.values())
        for jobid in ids.values():
            (cluster.jobs_dir / f"{jobid}.out").unlink(missing_ok=True)


def test_accounting_through_rest_answers_for_a_purged_job() -> None:
    cluster = current()
    alice, bob = cluster.job_users
    jobid = submitted(cluster.user_token(alice), unique("purged"), "exit 3\n")
    assert finished(jobid)["job_state"] == ["FAILED"]
    started = time.monotonic()
    while job(jobid) is not None:  # MinJobAge (10 s) and slurmctld's purge cadence
        assert time.monotonic() - started < 150, "slurmctld did not purge the job"
        time.sleep(2)
    print(f"job {jobid} purged by slurmctld {time.monotonic() - started:.0f}s after it finished")
    response = rest("GET", f"slurmdb/{V}/job/{jobid}", cluster.static_token)
    assert response.status_code == 200, (response.status_code, errors(response))
    [record] = response.json()["jobs"]
    assert record["user"] == alice and record["account"] == cluster.account_of(alice)
    assert record["state"]["current"] == ["FAILED"]
    assert record["exit_code"]["return_code"]["number"] == 3
    # slurmdbd's PrivateData=jobs: alice sees her record, bob does not
    assert [j["job_id"] for j in rest("GET", f"slurmdb/{V}/job/{jobid}", cluster.user_token(alice)).json()["jobs"]] == [
        int(jobid)]
    other = rest("GET", f"slurmdb/{V}/job/{jobid}", cluster.user_token(bob))
    assert other.status_code == 200 and other.json()["jobs"] == []  # not an error: no record he may see
    (cluster.jobs_dir / f"{jobid}.out").unlink(missing_ok=True)


@pytest.mark.parametrize("kind", ["forged", "expired", "no claim"])
def test_a_refused_token_submits_nothing(kind: str) -> None:
    cluster = current()
    alice = cluster.job_users[0]
    token = cluster.user_token(alice, **{"forged": {"forged": True}, "expired": {"lifetime": -5},
                                         "no claim": {"claim": False}}[kind])
    name = unique(kind.replace(" ", "_"))
    response = submit(token, name)
    assert response.status_code == 511
    assert errors(response) == [(1007, "Protocol authentication error")]
    assert rest("GET", f"slurm/{V}/diag/", token).status_code == 511
    assert name not in {j["name"] for j in rest("GET", f"slurm/{V}/jobs/", cluster.static_token).json()["jobs"]}


def test_a_token_for_a_user_unknown_to_the_cluster() -> None:
    cluster = current()
    token = cluster.user_token(f"nosuch{uuid.uuid4().hex[:6]}")
    # the known oddity: slurmctld takes it (as uid 99, "nobody") for reading
    assert rest("GET", f"slurm/{V}/diag/", token).status_code == 200
    assert listed(token) == {}
    name = unique("unknown_user")
    response = submit(token, name)
    print(f"unknown user's submit: {response.status_code} {errors(response)}")
    assert response.status_code == 500
    assert errors(response) == {"24.11": [(2045, "Invalid account or account/partition combination specified")],
                                "26.05": [(6010, "Rejecting authentication of user nobody or group nobody")]}[
        cluster.version]
    assert name not in {j["name"] for j in rest("GET", f"slurm/{V}/jobs/", cluster.static_token).json()["jobs"]}
