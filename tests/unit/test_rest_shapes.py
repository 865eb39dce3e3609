"""slurmrestd's JSON, read and written: against answers recorded from the test clusters' slurmrestd.

The fixtures in ``tests/fixtures/slurmrestd`` are real answers (Slurm 24.11 with data parsers
v0.0.40 and v0.0.42, Slurm 26.05 with v0.0.45); each test says what a user would see go wrong
if the reading were off (a running job shown queued, a failed job's code lost, an option dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters import jobscript
from adapters.slurm import rest_shapes as shapes
from tests.support.upstream import submit_args

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurmrestd"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("answer", ["running-24.11-v0.0.42.json", "running-26.05-v0.0.45.json"])
def test_a_listing_shows_our_running_failed_and_never_foreign_jobs(answer: str) -> None:
    data = fixture(answer)
    start = min(shapes.number(j["start_time"]) or 0 for j in data["jobs"] if j["name"] == "jarvice_two-nodes")
    jobs, skipped = shapes.jobs_of(data, now=start + 4)
    assert skipped == 0
    by_name = {j.name: j for j in jobs.values()}
    assert set(by_name) == {"two-nodes", "fails"}  # "not-ours" has no jarvice_ prefix
    two = by_name["two-nodes"]
    assert two.code == "R" and two.nodes == ("node1", "node2") and two.elapsed == 4
    assert two.comment == "jarvice:8;i=1;p=3"
    fails = by_name["fails"]
    assert fails.code == "F" and fails.nodes == ("node1",)
    record = next(r for r in data["jobs"] if r["name"] == "jarvice_fails")
    finished = shapes.record_of(record, now=start + 100)
    assert finished is not None and finished.exit_code == 3 and finished.code == "F"
    assert shapes.record_of(next(r for r in data["jobs"] if r["name"] == "jarvice_two-nodes"), now=start + 4) is None


def test_a_held_job_and_the_oldest_parser_read_alike() -> None:
    held, _ = shapes.jobs_of(fixture("held-24.11-v0.0.42.json"))
    (job,) = held.values()
    assert job.code == "PD" and job.reason == "JobHeldUser" and job.elapsed == 0 and job.comment == "jarvice:77"
    old, _ = shapes.jobs_of(fixture("jobs-24.11-v0.0.40.json"))
    assert {j.code for j in old.values()} == {"CA", "PD"}


def test_an_unreadable_record_makes_the_listing_incomplete_not_shorter() -> None:
    data = fixture("running-24.11-v0.0.42.json")
    data["jobs"][0]["job_state"] = []
    jobs, skipped = shapes.jobs_of(data, now=0)
    assert skipped == 1 and len(jobs) == 1


def test_slurms_refusal_reads_as_sbatch_words_it() -> None:
    assert shapes.errors_text(fixture("submit-refused-24.11-v0.0.42.json")) == (
        "Batch job submission failed: Invalid partition name specified")


def test_show_job_is_readable_key_value_text() -> None:
    record = next(r for r in fixture("running-26.05-v0.0.45.json")["jobs"] if r["name"] == "jarvice_fails")
    text = shapes.show_job_text(record)
    assert "JobState=FAILED" in text and "ExitCode=3:0" in text and "JobName=jarvice_fails" in text
    assert "{" not in text


@pytest.mark.parametrize(("offered", "wanted", "chosen"), [
    (["v0.0.40", "v0.0.41", "v0.0.42"], "auto", "v0.0.42"),
    (["v0.0.42", "v0.0.43", "v0.0.44", "v0.0.45"], "auto", "v0.0.45"),
    (["v0.0.42", "v0.0.99"], "auto", "v0.0.42"),
    (["v0.0.40", "v0.0.41", "v0.0.42"], "v0.0.40", "v0.0.40"),
])
def test_the_newest_common_data_parser_is_chosen(offered: list[str], wanted: str, chosen: str) -> None:
    assert shapes.choose_parser(offered, wanted) == chosen


@pytest.mark.parametrize(("offered", "wanted", "why"), [
    (["v0.0.42", "v0.0.43"], "v0.0.40", "does not serve data parser v0.0.40"),
    (["v0.0.38", "v0.0.39"], "auto", "this daemon reads v0.0.40"),
])
def test_a_data_parser_that_cannot_be_used_is_named(offered: list[str], wanted: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        shapes.choose_parser(offered, wanted)


def test_the_offered_parsers_come_from_the_openapi_paths() -> None:
    openapi = {"paths": {"/slurm/v0.0.41/ping/": {}, "/slurm/v0.0.40/jobs/": {}, "/slurmdb/v0.0.42/jobs/": {},
                         "/openapi/v3": {}}}
    assert shapes.offered_parsers(openapi) == ["v0.0.40", "v0.0.41"]


@pytest.mark.parametrize(("text", "minutes"), [("90", 90), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440),
                                               ("1-2:30", 1590), ("0-0:0:1", 1)])
def test_slurm_time_limits_become_minutes_rounded_up(text: str, minutes: int) -> None:
    assert shapes.minutes(text) == minutes


def test_the_job_description_carries_what_sbatch_would_be_told() -> None:
    env = jobscript.ScriptEnvironment(scratch_dir="/scratch")
    devices = ["partition=gpu", "exclusive=True", "sbatch_account=proj1", "sbatch_constraint=ib"]
    args = submit_args("desc-1", 12, "echo hi", executor="singularity", marker=False, nodes=2, cores=4, ram=16,
                       gpus=1, walltime="2:00:00", devices=devices, held=True)
    submission = jobscript.build(args, "singularity", env)
    body = shapes.job_description(submission.sbatch_args, submission.batch_script, {"PATH": "/bin"})["job"]
    assert body["name"] == "jarvice_desc-1" and body["comment"] == "jarvice:12"
    assert body["nodes"] == "2" and body["tasks"] == 8 and body["hold"] is True
    assert body["memory_per_node"]["number"] == 16 * 1024 and body["tres_per_node"] == "gres/gpu:1"
    assert body["time_limit"]["number"] == 120 and body["partition"] == "gpu" and body["shared"] == ["none"]
    assert body["account"] == "proj1" and body["constraints"] == "ib"
    assert body["standard_output"].endswith("/%j.out") and body["script"] == submission.batch_script
    assert body["environment"] == ["PATH=/bin"]


def test_an_option_rest_cannot_carry_is_refused_by_name() -> None:
    with pytest.raises(shapes.UnsupportedOption, match="--x11"):
        shapes.job_description(["--job-name=jarvice_a", "--x11=all"], "#!/bin/sh\n", {})


def test_a_purged_job_is_read_from_slurmdbds_record() -> None:
    (record,) = fixture("dbjob-failed-24.11-v0.0.42.json")["jobs"]
    acct = shapes.accounting_of(record)
    assert acct is not None and acct.code == "F" and acct.exit_code == 3 and acct.nodes == ("node1",)
    assert acct.name.startswith("20261123-contract-") and acct.jobid == "12"
    assert shapes.accounting_of({**record, "name": "not-ours"}) is None
