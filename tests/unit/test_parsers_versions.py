"""adapters.slurm.parsers on what each tested Slurm version printed (tests/fixtures/slurm/versions/<version>/).

Every set was captured by ``tests/cluster/capture`` on that version's test cluster, with
the daemon's own command lines for the ``*_daemon_format*`` files (README.md in each
directory). The same assertions hold for every version: a difference between versions
is the parser's business (adapters/slurm/parsers.py), never this file's.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from adapters.slurm.parsers import (
    SEP,
    SQUEUE_FORMAT,
    min_job_age,
    parse_comment,
    parse_config,
    parse_node_address,
    parse_sacct,
    parse_sbatch,
    parse_squeue,
)
from statemachines.slurm_states import Phase, exit_code_of, phase_of
from tests.support.cluster import TESTED

VERSIONS = Path(__file__).resolve().parents[1] / "fixtures" / "slurm" / "versions"


class Capture:
    def __init__(self, version: str) -> None:
        self.version = version
        self.dir = VERSIONS / version

    def text(self, name: str) -> str:
        return (self.dir / name).read_text()

    def roles(self) -> dict[str, tuple[str, str]]:
        """role -> (job id, Slurm job name), from jobs.txt."""
        return {role: (jobid, name) for role, jobid, name in
                (line.split("\t") for line in self.text("jobs.txt").splitlines() if line.strip())}


@pytest.fixture(params=TESTED, ids=[f"slurm-{v}" for v in TESTED])
def capture(request: pytest.FixtureRequest) -> Capture:
    return Capture(request.param)


def test_every_tested_version_has_its_capture() -> None:
    assert sorted(p.name for p in VERSIONS.iterdir() if p.is_dir()) == sorted(TESTED)


def test_the_capture_is_of_its_version(capture: Capture) -> None:
    assert capture.text("sinfo_version.txt").split()[-1].startswith(capture.version + ".")
    config = parse_config(capture.text("scontrol_show_config.txt"))
    assert config["SLURM_VERSION"].startswith(capture.version + ".")


def test_the_daemons_poll_reads_every_state(capture: Capture) -> None:
    out = capture.text("squeue_daemon_format_all.txt")
    assert all(line.count(SEP) == SQUEUE_FORMAT.count(SEP) for line in out.splitlines())
    jobs = parse_squeue(out)
    roles = capture.roles()
    expected = {"completed": ("CD", Phase.FINISHED, 0, "None"), "failed": ("F", Phase.FINISHED, 1, "NonZeroExitCode"),
                "cancelled": ("CA", Phase.FINISHED, -15, "None"), "running": ("R", Phase.RUNNING, None, "None"),
                "held": ("PD", Phase.HELD, None, "JobHeldUser")}
    for role, (code, phase, rc, reason) in expected.items():
        jobid, name = roles[role]
        job = jobs[jobid]
        assert (job.name, job.code, job.reason) == (name.removeprefix("jarvice_"), code, reason), role
        assert phase_of(job.code, job.reason) is phase
        if rc is not None:
            assert exit_code_of(job.code) == rc
        assert job.comment.startswith("jarvice:")
    assert jobs[roles["running"][0]].nodes == ("node1", "node2")
    assert jobs[roles["running"][0]].elapsed >= 1
    assert jobs[roles["held"][0]].nodes == ()
    assert parse_comment("jarvice:1234") is not None


def test_the_daemons_accounting_reads_finished_jobs(capture: Capture) -> None:
    records = parse_sacct(capture.text("sacct_jobcomp_daemon_format.txt"))
    roles = capture.roles()
    ok, fail, cancel = (records[roles[r][0]] for r in ("completed", "failed", "cancelled"))
    assert (ok.code, ok.exit_code, ok.nodes) == ("CD", 0, ("node1",))
    assert (fail.code, fail.exit_code) == ("F", 3)
    assert cancel.code == "CA" and exit_code_of(cancel.code) == -15
    assert ok.name == roles["completed"][1].removeprefix("jarvice_")
    assert records["1"].name == "warmup"


def test_sbatch_parsable_is_the_job_id(capture: Capture) -> None:
    assert parse_sbatch(capture.text("sbatch_parsable.txt")) == capture.roles()["completed"][0]


def test_the_configuration_the_daemon_reads(capture: Capture) -> None:
    config = parse_config(capture.text("scontrol_show_config.txt"))
    assert min_job_age(config) == 10  # tests/cluster/up's MinJobAge
    assert config["SelectType"] == "select/cons_tres"
    assert config["JobCompType"] == "jobcomp/filetxt"
    # 22.05 prints accounting_storage/none, 24.11 and 26.05 "(null)": the parser says none for both
    assert config["AccountingStorageType"] == "accounting_storage/none"
    assert parse_config(capture.text("scontrol_config_minjobage.txt")) == {"MinJobAge": "10 sec"}


def test_a_nodes_address_is_its_own(capture: Capture) -> None:
    address = parse_node_address(capture.text("scontrol_show_node.txt"))
    assert address is not None and ipaddress.ip_address(address).is_private and not ipaddress.ip_address(address).is_loopback


def test_a_purged_job_is_invalid_to_squeue_and_accounting_storage_off_to_sacct(capture: Capture) -> None:
    """client.inspect tells 'no such job' from 'slurmctld did not answer' by squeue's message."""
    assert capture.text("squeue_invalid_job.rc").strip() == "1"
    assert "Invalid job id" in capture.text("squeue_invalid_job.txt")
    assert parse_squeue(capture.text("squeue_invalid_job.stdout.txt")) == {}
    assert capture.text("sacct_noaccounting.rc").strip() == "1"
    assert parse_sacct(capture.text("sacct_noaccounting.stdout.txt")) == {}
