"""Hostile input on the real stack: every endpoint fuzzed against one real daemon.

The daemon is the real one on a real socket, speaking SSH to the test cluster's
OpenSSH on this host, which runs the real Slurm commands (tests/fuzz/conftest.py).
For every example: the status is one the contract allows (never 500, never 503:
a request that drops the SSH link shows up as 503), no traceback text, 4xx answers
are JSON whose message names the problem, and no canary file appeared (the login
node and the compute nodes are this host, so an injection that ran anywhere leaves
it). An invalid /submit must create no job: squeue as root, and the daemon's own
/queued and /running. Valid submissions with injections in their free-text values
run for real, and the job shows it received each value intact, as data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import LiveDaemon, check_answer, listed, post_args, send, slurm_job_names, wait_gone
from tests.fuzz.strategies import (
    BASE_FIELDS,
    HostileJob,
    canaries,
    hostile_jobs,
    invalid_submits,
    job_calls,
    other_calls,
    pvcls_calls,
    render_script,
    submit_args,
)
from tests.integration.conftest import slurm, unique_name
from tests.support.cluster import current

pytestmark = pytest.mark.cluster

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module")
def pvcls_root() -> Iterator[str]:
    """A small directory the login node sees for listings: in the cluster's state dir, which is shared with the
    login node on every version (this host's /tmp is not, on 24.11 and 26.05: their nodes run in a root of their own)."""
    with current().workdir("sd-fuzz-ls-") as root:
        (root / "sub").mkdir(mode=0o755)
        (root / "file.txt").write_text("x")
        yield str(root)


# ------------------------------------------------------------------ invalid input
@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_invalid_submit_is_refused_by_name_and_submits_nothing(live_daemon: LiveDaemon, data: st.DataObject) -> None:
    client = live_daemon.client
    name = unique_name("fz")
    call = data.draw(invalid_submits(name))
    before = listed(client)
    response = send(client, call)
    if response.status_code == 200:  # a bug: do not leave its job on the shared cluster
        slurm("scancel", str(response.json()[0]))
    check_answer(call, response)
    assert listed(client) <= before, f"the daemon lists a new job after {call.note}"
    if isinstance(call.name, str):
        assert f"jarvice_{call.name}" not in slurm_job_names(), f"a job was submitted for {call.note}"


@settings(FUZZ, max_examples=300)
@given(call=job_calls())
def test_job_requests_with_hostile_identities(live_daemon: LiveDaemon, call) -> None:
    check_answer(call, send(live_daemon.client, call))


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_pvcls_with_hostile_paths(live_daemon: LiveDaemon, pvcls_root: str, data: st.DataObject) -> None:
    call = data.draw(pvcls_calls(pvcls_root))
    check_answer(call, send(live_daemon.client, call))


@settings(FUZZ, max_examples=200)
@given(call=other_calls())
def test_other_endpoints_methods_paths_and_raw_bodies(live_daemon: LiveDaemon, call) -> None:
    check_answer(call, send(live_daemon.client, call))


def test_pvcls_lists_the_fuzz_directory(live_daemon: LiveDaemon, pvcls_root: str) -> None:
    """The listing the fuzzed paths are compared with works at all (else 502 everywhere would pass)."""
    response = post_args(live_daemon.client, "/request/pvcls", {"qs": {"path": [pvcls_root]}})
    assert response.status_code == 200, response.text
    assert sorted(response.text.splitlines()) == [f"/data{pvcls_root}/file.txt", f"/data{pvcls_root}/sub/"]


# ------------------------------------------------------------------ valid input, hostile values
def read_values(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if line.split("=", 1)[0] in ("cmd", "image", "user"))


@settings(FUZZ, max_examples=6)
@given(job=hostile_jobs())
def test_injections_in_a_valid_submission_reach_the_job_as_data(live_daemon: LiveDaemon, job: HostileJob) -> None:
    client = live_daemon.client
    name = f"{job.prefix}-{uuid.uuid4().hex[:8]}"
    response = post_args(client, "/submit", submit_args(name, job.script(), number=31))
    assert response.status_code == 200, response.text
    jobid, fscript = response.json()
    try:
        # the name reached Slurm as one word, the sbatch option value too
        assert f"jarvice_{name}" in slurm_job_names()
        events = post_args(client, "/events", {"name": name, "number": 31, "jobid": jobid})
        assert events.status_code == 200 and f"MailUser={job.mail_user}" in events.json(), events.text
        wait_gone(client, name)
        base = f"/request/{name}/31/{jobid}"
        output = post_args(client, f"{base}/tail", {"qs": {}})
        assert output.status_code == 200, output.text
        assert read_values(output.text) == job.expected_output(), output.text
        assert post_args(client, f"{base}/tail", {"qs": {"lines": [job.lines]}}).status_code == 200
    finally:
        done = post_args(client, "/terminate", {"name": name, "number": 31, "jobid": jobid})
        assert done.status_code == 200, done.text
        wait_gone(client, name)
        rc = post_args(client, "/exitstatus", {"name": name, "number": 31, "jobid": jobid})
        assert rc.status_code == 200, rc.text
    assert rc.json()[0] == 0, rc.text
    assert not canaries(), f"an injection ran: {canaries()}"
    assert "Traceback" not in fscript


# ------------------------------------------------------------------ job-scoped actions stay with the named job
def test_release_is_scoped_to_the_named_job(live_daemon: LiveDaemon) -> None:
    client = live_daemon.client
    name = unique_name("rel")
    jobid, _ = post_args(client, "/submit", submit_args(name, render_script(dict(BASE_FIELDS)), held=True)).json()
    ids = {"name": name, "number": 7, "jobid": jobid}
    try:
        other = post_args(client, "/release", {**ids, "name": unique_name("other")})
        reason = slurm("squeue", "-h", "-j", jobid, "-o", "%r").stdout.strip()
        assert other.status_code in (404, 409) and reason.startswith("JobHeld"), (other.text, reason)
    finally:
        post_args(client, "/terminate", ids)
        wait_gone(client, name)
        post_args(client, "/exitstatus", ids)


def test_events_show_only_the_named_jarvice_job(live_daemon: LiveDaemon) -> None:
    foreign = slurm("sbatch", "--parsable", "--hold", "-J", "not-jarvice-fuzz", "--wrap", "true")
    assert foreign.returncode == 0, foreign.stderr
    jobid = foreign.stdout.strip().split(";")[0]
    try:
        shown = post_args(live_daemon.client, "/events", {"name": unique_name("ev"), "number": 7, "jobid": jobid})
        assert "not-jarvice-fuzz" not in shown.text, shown.text[:300]
    finally:
        slurm("scancel", jobid)
