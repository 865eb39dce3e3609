"""adapters.slurm.parsers on what Slurm really printed (tests/fixtures/slurm/).

``*_daemon_format*`` files were captured with the exact command lines the client
builds (see daemon_format_captures.md); the other files come from the cluster
capture script (README.md there) and are adapted where their format differs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.slurm import parsers
from adapters.slurm.client import ClusterInfo, SlurmClient
from adapters.slurm.parsers import (
    SEP,
    SQUEUE_FORMAT,
    JobTag,
    ParseError,
    SlurmJob,
    expand_nodes,
    job_comment,
    parse_comment,
    parse_config,
    parse_duration,
    parse_exit_code,
    parse_rc,
    parse_sacct,
    parse_sbatch,
    parse_squeue,
)
from adapters.ssh import CommandResult
from statemachines.slurm_states import Phase, exit_code_of, phase_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.fixture(scope="module")
def squeue_all() -> str:
    return fixture("squeue_daemon_format_all.txt")


@pytest.fixture(scope="module")
def sacct_all() -> str:
    return fixture("sacct_jobcomp_daemon_format.txt")


# ------------------------------------------------------------------ squeue
def test_fixture_is_in_the_daemons_format(squeue_all: str) -> None:
    assert SQUEUE_FORMAT == "%A\x1f%j\x1f%t\x1f%M\x1f%N\x1f%r\x1f%k"
    assert all(line.count(SEP) == 6 for line in squeue_all.splitlines())


def test_squeue_keeps_only_jarvice_jobs(squeue_all: str) -> None:
    jobs = parse_squeue(squeue_all)
    # 13 lines: 11 JARVICE jobs and two jobs of the same user named 'hostname' and 'sh'
    assert len(squeue_all.splitlines()) == 13
    assert sorted(jobs, key=int) == ["2", "3", "4", "5", "6", "7", "10", "11", "12", "13", "14"]
    assert all(j.jobid == key for key, j in jobs.items())
    assert not any(j.name in {"hostname", "sh"} for j in jobs.values())


def test_squeue_running_two_node_job(squeue_all: str) -> None:
    job = parse_squeue(squeue_all)["4"]
    assert job == SlurmJob(jobid="4", name="utest-abe-carol_mpi", code="R", elapsed=7, nodes=("node1", "node2"),
                           reason="None", comment="jarvice:103")
    assert phase_of(job.code, job.reason) is Phase.RUNNING


def test_squeue_held_job(squeue_all: str) -> None:
    job = parse_squeue(squeue_all)["5"]
    assert job.name == "utest-abf-bob_held"
    assert job.code == "PD"
    assert job.nodes == ()
    assert job.elapsed == 0
    assert job.reason == "JobHeldUser"
    assert job.comment == "jarvice:104 with space"
    assert phase_of(job.code, job.reason) is Phase.HELD


@pytest.mark.parametrize(
    ("jobid", "name", "code", "elapsed", "rc"),
    [("2", "utest-abc-alice_ok", "CD", 0, 0), ("3", "utest-abd-alice_fail", "F", 0, 1),
     ("6", "utest-abg-alice_cancel", "CA", 4, -15)],
)
def test_squeue_finished_jobs(squeue_all: str, jobid: str, name: str, code: str, elapsed: int, rc: int) -> None:
    job = parse_squeue(squeue_all)[jobid]
    assert (job.name, job.code, job.elapsed, job.nodes) == (name, code, elapsed, ("node1",))
    assert phase_of(job.code, job.reason) is Phase.FINISHED
    assert exit_code_of(job.code) == rc


def test_squeue_failed_job_reason(squeue_all: str) -> None:
    assert parse_squeue(squeue_all)["3"].reason == "NonZeroExitCode"


def test_squeue_one_job(squeue_all: str) -> None:
    one = parse_squeue(fixture("squeue_daemon_format_one_job.txt"))
    assert one == {"4": parse_squeue(squeue_all)["4"]}


def test_squeue_of_a_purged_job_is_empty() -> None:
    """`squeue -j <gone>` exits 1 with nothing on stdout: no job, no crash."""
    assert fixture("squeue_invalid_job.rc").strip() == "1"
    assert "Invalid job id specified" in fixture("squeue_invalid_job.txt")
    assert parse_squeue(fixture("squeue_invalid_job.stdout.txt")) == {}


def test_squeue_malformed_lines_are_skipped(squeue_all: str, caplog: pytest.LogCaptureFixture) -> None:
    lines = squeue_all.splitlines()
    good = parse_squeue(squeue_all)
    bad = [
        lines[0][: lines[0].index(SEP, lines[0].index(SEP) + 1)],  # cut after two fields
        "slurm_load_jobs error: Socket timed out on send/recv operation",
        SEP.join(["99", "jarvice_bad-elapsed", "R", "soon", "node1", "None", "jarvice:1"]),
        SEP.join(["98", "jarvice_bad-nodes", "R", "0:01", "node[1-", "None", "jarvice:1"]),
        lines[1] + SEP + "extra",
        "",
        "   ",
    ]
    # every good line but lines[1], which only appears with an extra field
    mixed = "\n".join([lines[0], *bad[:3], *lines[2:6], *bad[3:], *lines[6:]]) + "\n"
    with caplog.at_level("WARNING"):
        assert parse_squeue(mixed) == {k: v for k, v in good.items() if k != lines[1].split(SEP)[0]}
    assert "99" not in parse_squeue(mixed) and "98" not in parse_squeue(mixed)
    assert sum("skipped" in r.message for r in caplog.records) >= 5


def test_other_capture_agrees_with_its_job_list() -> None:
    """The capture script's squeue (with an extra %T column) says what its jobs.txt says."""
    roles = {role: (jobid, name) for role, jobid, name in
             (line.split("\t") for line in fixture("jobs.txt").splitlines() if line.strip())}
    lines = []
    for line in fixture("squeue_all.txt").splitlines():
        fields = line.split(SEP)
        if len(fields) == 8:  # %A %j %T %t %M %N %r %k: drop %T
            del fields[2]
        lines.append(SEP.join(fields))
    jobs = parse_squeue("\n".join(lines))
    assert not any(j.name == "warmup" for j in jobs.values())
    expected = {"completed": ("CD", Phase.FINISHED), "failed": ("F", Phase.FINISHED),
                "running": ("R", Phase.RUNNING), "held": ("PD", Phase.HELD), "cancelled": ("CA", Phase.FINISHED)}
    for role, (code, phase) in expected.items():
        jobid, name = roles[role]
        job = jobs[jobid]
        assert job.name == name.removeprefix("jarvice_")
        assert job.code == code
        assert phase_of(job.code, job.reason) is phase
    assert jobs[roles["running"][0]].nodes == ("node1", "node2")


# ------------------------------------------------------------------ durations and node lists
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0:05", 5), ("0:00", 0), ("1:02:03", 3723), ("00:00:07", 7), ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
     ("1-00:00:00", 86400), ("100:00:00", 360000), ("59", 59), ("12:34.567", 754), (" 0:04 \n", 4),
     ("INVALID", 0), ("UNLIMITED", 0), ("N/A", 0), ("", 0)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "1:2:3:4", "-5", "1-", "1h", "1:xx", "2-", "1:02:03 PM"])
def test_parse_duration_garbage_raises(text: str) -> None:
    with pytest.raises(ParseError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "nodes"),
    [("node[1-2]", ("node1", "node2")), ("gpu[01-03]", ("gpu01", "gpu02", "gpu03")), ("node1", ("node1",)),
     ("node[1-3,07],gpu07", ("node1", "node2", "node3", "node07", "gpu07")), ("n[9-10]", ("n9", "n10")),
     ("", ()), ("(null)", ()), ("None assigned", ())],
)
def test_expand_nodes(text: str, nodes: tuple[str, ...]) -> None:
    assert expand_nodes(text) == nodes


@pytest.mark.parametrize("text", ["node[1-", "node[2-1]", "node]1["])
def test_expand_nodes_garbage_raises(text: str) -> None:
    with pytest.raises(ParseError):
        expand_nodes(text)


# ------------------------------------------------------------------ sacct
def test_sacct_jobcomp_records(sacct_all: str) -> None:
    records = parse_sacct(sacct_all)
    assert len(records) == len(sacct_all.splitlines()) == 14
    ok, fail, cancel, mpi, held = (records[i] for i in ("2", "3", "6", "4", "5"))
    assert (ok.name, ok.code, ok.exit_code, ok.nodes) == ("utest-abc-alice_ok", "CD", 0, ("node1",))
    assert (fail.name, fail.code, fail.exit_code) == ("utest-abd-alice_fail", "F", 3)
    assert (cancel.code, cancel.elapsed) == ("CA", 4)
    assert (mpi.code, mpi.elapsed, mpi.nodes) == ("CA", 7, ("node1", "node2"))
    assert (held.code, held.nodes) == ("CA", ())
    assert [exit_code_of(r.code) for r in (ok, fail, cancel)] == [0, 1, -15]


def test_sacct_keeps_foreign_names_as_they_are(sacct_all: str) -> None:
    assert parse_sacct(sacct_all)["1"].name == "warmup"


def test_sacct_one_job() -> None:
    one = parse_sacct(fixture("sacct_jobcomp_daemon_format_one_job.txt"))
    assert list(one) == ["3"]
    assert one["3"].exit_code == 3


def test_sacct_step_lines_are_ignored(sacct_all: str) -> None:
    """sacct without -X also lists steps (12.batch, 12.0, 12.extern); only the allocation counts."""
    line = next(line for line in sacct_all.splitlines() if line.startswith("3" + SEP))
    steps = [
        SEP.join(["3.batch", "batch", "FAILED", "3:0", "00:00:00", "node1"]),
        SEP.join(["3.extern", "extern", "COMPLETED", "0:0", "00:00:00", "node1"]),
        SEP.join(["3.0", "bash", "CANCELLED by 1001", "0:9", "00:00:00", "node1"]),
    ]
    records = parse_sacct("\n".join([line, *steps]) + "\n")
    assert list(records) == ["3"]
    assert records["3"].code == "F" and records["3"].exit_code == 3


def test_sacct_last_line_wins() -> None:
    """A requeued job appears twice in the jobcomp file: the later record is the current one."""
    first = SEP.join(["7", "jarvice_x", "NODE_FAIL", "0:0", "00:01:00", "node1"])
    second = SEP.join(["7", "jarvice_x", "COMPLETED", "0:0", "00:02:00", "node2"])
    record = parse_sacct(f"{first}\n{second}\n")["7"]
    assert (record.code, record.elapsed, record.nodes) == ("CD", 120, ("node2",))


def test_sacct_cancelled_by_uid_and_malformed_lines() -> None:
    text = "\n".join([
        SEP.join(["8", "jarvice_y", "CANCELLED by 1001", "0:15", "1-00:00:01", "gpu[01-02]"]),
        "Slurm accounting storage is disabled",
        SEP.join(["9", "jarvice_z", "COMPLETED", "0:0", "whenever", "node1"]),
    ])
    records = parse_sacct(text)
    assert list(records) == ["8"]
    assert records["8"].code == "CA"
    assert records["8"].elapsed == 86401
    assert records["8"].nodes == ("gpu01", "gpu02")


@pytest.mark.parametrize(("text", "code"), [("0:0", 0), ("3:0", 3), ("0:15", 0), ("137:9", 137), ("", None), ("x:y", None)])
def test_exit_code_is_the_part_before_the_signal(text: str, code: int | None) -> None:
    assert parse_exit_code(text) == code


def test_other_capture_sacct_agrees_with_its_job_list() -> None:
    """The capture script's sacct -c used '|' as delimiter; its values hold no '|', so swapping is exact."""
    roles = {role: jobid for role, jobid, _ in
             (line.split("\t") for line in fixture("jobs.txt").splitlines() if line.strip())}
    records = parse_sacct(fixture("sacct_jobcomp.txt").replace("|", SEP))
    assert (records[roles["completed"]].code, records[roles["completed"]].exit_code) == ("CD", 0)
    assert (records[roles["failed"]].code, records[roles["failed"]].exit_code) == ("F", 3)
    assert records[roles["cancelled"]].code == "CA"


def test_sacct_without_accounting_prints_nothing_to_parse() -> None:
    assert fixture("sacct_noaccounting.rc").strip() == "1"
    assert parse_sacct(fixture("sacct_noaccounting.stdout.txt")) == {}


# ------------------------------------------------------------------ sbatch, config, rc
def test_parse_sbatch_on_captured_output() -> None:
    jobid = parse_sbatch(fixture("sbatch_parsable.txt"))
    roles = {role: jid for role, jid, _ in (line.split("\t") for line in fixture("jobs.txt").splitlines() if line.strip())}
    assert jobid == roles["completed"]


@pytest.mark.parametrize(("text", "jobid"), [("12", "12"), ("12\n", "12"), ("12;cluster\n", "12"), (" 345;c2 \n", "345")])
def test_parse_sbatch(text: str, jobid: str) -> None:
    assert parse_sbatch(text) == jobid


@pytest.mark.parametrize("text", ["", "\n", "Submitted batch job 12", "sbatch: error: Batch job submission failed",
                                  "abc;cluster", "12a"])
def test_parse_sbatch_garbage_raises(text: str) -> None:
    with pytest.raises(ParseError):
        parse_sbatch(text)


def test_parse_config_fragment() -> None:
    config = parse_config(fixture("scontrol_config_minjobage.txt"))
    assert config == {"MinJobAge": "300 sec"}
    assert ClusterInfo(version="slurm 22.05.8", home="/home/jarvice", config=config).min_job_age == 300


def test_parse_config_full() -> None:
    config = parse_config(fixture("scontrol_show_config.txt"))
    assert config["MinJobAge"] == "300 sec"
    assert config["JobCompType"] == "jobcomp/filetxt"
    assert config["AccountingStorageType"] == "accounting_storage/none"
    assert config["AuthInfo"].startswith("socket=")  # a value holding '=' is kept whole
    assert config["SLURM_VERSION"] == "22.05.8"
    assert not any(" " in key for key in config)
    info = ClusterInfo(version="slurm 22.05.8", home="/home/jarvice", config=config)
    assert info.min_job_age == 300


def test_cluster_info_defaults_without_config() -> None:
    assert ClusterInfo(version="", home="/").min_job_age is None  # nothing read (slurmrestd serves no config)
    assert ClusterInfo(version="", home="/", config={"SelectType": "select/cons_tres"}).min_job_age == 300
    assert ClusterInfo(version="", home="/", config={"MinJobAge": "10 sec"}).min_job_age == 10
    assert ClusterInfo(version="", home="/", config={"MinJobAge": "garbled"}).min_job_age == 300


@pytest.mark.parametrize(("text", "rc"), [("0\n", 0), ("3\n", 3), ("-1", -1), ("", None), ("abc", None), ("1 2", None)])
def test_parse_rc(text: str, rc: int | None) -> None:
    assert parse_rc(text) == rc


# ------------------------------------------------------------------ through the client's commands
class _Runner:
    def __init__(self, stdout: str) -> None:
        self.stdout = stdout
        self.commands: list[str] = []

    async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
        self.commands.append(command)
        return CommandResult(0, self.stdout, "")


async def test_poll_runs_the_captured_command_and_parses_it(squeue_all: str) -> None:
    import shlex

    runner = _Runner(squeue_all)
    poll = await SlurmClient(runner, user="jarvice", scratch_dir="/s").poll()
    assert shlex.split(runner.commands[0]) == ["SLURM_TIME_FORMAT=standard", "squeue", "-h", "-t", "all", "-u", "jarvice",
                                               "-o", parsers.SQUEUE_FORMAT]
    assert poll.jobs == parse_squeue(squeue_all)


async def test_inspect_combines_squeue_rc_file_and_sacct() -> None:
    mark = "@@slurm-downstream@@"
    stdout = (fixture("squeue_invalid_job.txt") + f"{mark} 1\n" + "3 3\n" + f"{mark}\n"  # job 3's rc file holds 3
              + fixture("sacct_jobcomp_daemon_format_one_job.txt"))
    runner = _Runner(stdout)
    facts = await SlurmClient(runner, user="jarvice", scratch_dir="/s", accounting="jobcomp").inspect("3")
    assert facts.squeue is None
    assert facts.rc_file == 3
    assert facts.accounting is not None and facts.accounting.code == "F"
    assert "sacct -c -n -P -X --delimiter=" in runner.commands[0]


async def test_inspect_refuses_to_conclude_when_squeue_cannot_reach_slurmctld() -> None:
    """A failed squeue is not a purged job: the caller must keep the job's last state."""
    from adapters.errors import ClusterUnavailable

    mark = "@@slurm-downstream@@"
    stdout = (f"slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n{mark} 1\n"
              f"{mark}\n")
    with pytest.raises(ClusterUnavailable, match="Unable to contact"):
        await SlurmClient(_Runner(stdout), user="jarvice", scratch_dir="/s", accounting="none").inspect("3")


@pytest.mark.parametrize(("number", "port_index"), [(7, None), (7, 0), (10**15 - 1, 99), (42, 12345)])
def test_a_job_comment_reads_back_as_written(number: int, port_index: int | None) -> None:
    """After a restart the daemon adopts jobs from their comment: number, interactive, service port."""
    assert parse_comment(job_comment(number, port_index)) == JobTag(number, port_index is not None, port_index)


@pytest.mark.parametrize("comment", ["", "jarvice:", "jarvice:x", "other:7", "jarvice:7;", "jarvice:7 extra"])
def test_comments_not_written_by_a_downstream_are_not_ours(comment: str) -> None:
    assert parse_comment(comment) is None
