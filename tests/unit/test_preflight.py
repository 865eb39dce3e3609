"""Preflight rules, judged on probe output recorded from the real test cluster.

RECORDED is what ``sh -s`` with ``probe_script()`` printed on the test cluster's
login node (Slurm 22.05.8, jobcomp/filetxt, no singularity), with the 190-line
``scontrol show config`` trimmed to the keys the rules read. Variants swap one
step's output for another recorded answer (a slurmctld that does not answer, a
read-only directory, singularity versions as their packages print them), which
is how each rule is shown to fire. The real cluster runs the same checks in
tests/integration/test_preflight.py.
"""

from __future__ import annotations

from dataclasses import replace

import asyncssh
import pytest

from adapters.errors import ClusterUnavailable, HostKeyRejected
from adapters.slurm.probe import MARK, parse_probe, probe_script
from adapters.ssh import CommandResult
from config.settings import Settings, load
from daemon.preflight import Check, evaluate, exit_code, format_checks, run_preflight

RECORDED = f"""\
{MARK} whoami 0
jarvice
/home/jarvice
{MARK} version 0
slurm-wlm 22.05.8
{MARK} config 0
Configuration data as of 2026-11-23T20:32:25
AccountingStorageType   = accounting_storage/none
JobCompType             = jobcomp/filetxt
MinJobAge               = 10 sec
SelectType              = select/cons_tres
SelectTypeParameters    = CR_CORE
SLURM_VERSION           = 22.05.8

Slurmctld(primary) at vm is UP
{MARK} squeue 0
1
{MARK} sacct 1
Slurm accounting storage is disabled
{MARK} jobcomp 0

{MARK} singularity 127

{MARK} socat 0
/usr/bin/socat
{MARK} resize2fs 0
/usr/local/bin/resize2fs
{MARK} scratch 0
/tmp/slurm-downstream-testcluster/scratch
writable
flock exclusive
{MARK} end 0
"""


def with_step(name: str, rc: int, output: str, recorded: str = RECORDED) -> str:
    """RECORDED with one step's answer replaced."""
    head, rest = recorded.split(f"{MARK} {name} ", 1)
    tail = rest.split(f"\n{MARK} ", 1)[1]
    return f"{head}{MARK} {name} {rc}\n{output}\n{MARK} {tail}"


def with_config(key: str, value: str) -> str:
    lines = [f"{key:<24}= {value}" if line.startswith(key + " ") else line for line in RECORDED.splitlines()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def conf() -> Settings:
    pem = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    return load({"JARVICE_SLURM_CLUSTER_ADDR": "login.example.org", "JARVICE_SLURM_SSH_PKEY": pem,
                 "JARVICE_SCHED_SERVER_KEY": "u:p", "JARVICE_SLURM_SCRATCH_DIR": "/tmp/slurm-downstream-testcluster/scratch",
                 "JARVICE_SLURM_SSH_KNOWN_HOSTS": "login.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"})


def judge(output: str, conf: Settings, poll: float = 2.0, **changes: object) -> dict[str, Check]:
    return {c.name: c for c in evaluate(parse_probe(output), replace(conf, **changes), poll)}


def test_the_recorded_test_cluster_passes_with_one_warning(conf: Settings) -> None:
    checks = judge(RECORDED, conf)
    assert checks["slurm version"] == Check("slurm version", "ok", "slurm 22.05.8")
    assert checks["select type"].level == "ok"
    assert checks["accounting"].detail == "sacct -c works (jobcomp/filetxt)"
    assert checks["squeue"].detail == "1 job(s) of jarvice listed"
    assert checks["scratch dir"].level == checks["flock"].level == checks["socat"].level == "ok"
    assert [c.name for c in checks.values() if c.level != "ok"] == ["singularity"]
    assert checks["singularity"].level == "warning"
    assert exit_code(list(checks.values())) == 0


def test_a_login_banner_before_the_probe_is_ignored(conf: Settings) -> None:
    assert judge("Welcome to login1!\nMaintenance on Friday.\n" + RECORDED, conf) == judge(RECORDED, conf)


def test_output_cut_short_is_an_error(conf: Settings) -> None:
    cut = RECORDED.split(f"{MARK} singularity")[0]
    checks = judge(cut, conf)
    assert checks["probe"].level == "error"
    assert exit_code(list(checks.values())) == 1


@pytest.mark.parametrize("select", ["select/linear", "select/cons_res"])
def test_select_type_other_than_cons_tres_is_an_error(conf: Settings, select: str) -> None:
    check = judge(with_config("SelectType", select), conf)["select type"]
    assert check.level == "error"
    assert select in check.detail and "SelectType=select/cons_tres" in check.hint


def test_min_job_age_below_three_polls_warns(conf: Settings) -> None:
    assert judge(RECORDED, conf, poll=3.0)["MinJobAge"].level == "ok"  # 10 s >= 3 x 3 s
    check = judge(RECORDED, conf, poll=4.0)["MinJobAge"]
    assert check.level == "warning"
    assert check.detail.startswith("10s < 3 x poll interval 4s")
    assert "JARVICE_SLURM_POLL_INTERVAL below 3.33s" in check.hint


def test_accounting_modes(conf: Settings) -> None:
    slurmdbd = with_step("sacct", 0, "")
    assert judge(slurmdbd, conf)["accounting"] == Check("accounting", "ok", "sacct works (slurmdbd)")
    neither = with_step("jobcomp", 1, "sacct: error: Unable to open file /var/log/slurm/jobcomp.log")
    check = judge(neither, conf)["accounting"]
    assert check.level == "warning"
    assert "Slurm accounting storage is disabled" in check.detail and "rc files" in check.hint
    # sacct -c answering while jobcomp is not filetxt reads nothing useful
    assert judge(with_config("JobCompType", "jobcomp/none"), conf)["accounting"].level == "warning"


def test_slurmctld_down_is_an_error_and_skips_what_depends_on_it(conf: Settings) -> None:
    down = with_step("config", 1, "slurm_load_ctl_conf error: Unable to contact slurm controller (connect failure)")
    down = with_step("squeue", 1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)", down)
    checks = judge(down, conf)
    assert checks["slurmctld"].level == "error" and "Unable to contact slurm controller" in checks["slurmctld"].detail
    assert checks["squeue"].level == "error"
    assert "select type" not in checks and "MinJobAge" not in checks
    assert checks["slurm version"].level == "ok"  # sbatch --version needs no controller


def test_slurm_commands_missing(conf: Settings) -> None:
    checks = judge(with_step("version", 127, "sh: 1: sbatch: not found"), conf)
    assert checks["slurm version"].level == "error" and "sbatch: not found" in checks["slurm version"].detail


SINGULARITY = {
    "ce-3.11.3": "/usr/bin/singularity\nsingularity-ce version 3.11.3-jammy",
    "ce-4.1.2": "/usr/local/bin/singularity\nsingularity-ce version 4.1.2",
    "ce-3.11.2": "/usr/bin/singularity\nsingularity-ce version 3.11.2-focal",
    "old-3.7": "/usr/bin/singularity\nsingularity version 3.7.1-1.el7",
    "apptainer": "/usr/bin/singularity\napptainer version 1.2.5-1.el8",
}


@pytest.mark.parametrize(("found", "overlay", "level"), [
    ("ce-3.11.3", 600, "ok"),
    ("old-3.7", 600, "ok"),
    ("ce-3.11.3", 0, "ok"),
    ("ce-4.1.2", 0, "ok"),
    ("ce-3.11.2", 0, "error"),
    ("old-3.7", 0, "error"),
    ("apptainer", 0, "warning"),
])
def test_singularity_version_rule_for_overlay_size_zero(conf: Settings, found: str, overlay: int, level: str) -> None:
    check = judge(with_step("singularity", 0, SINGULARITY[found]), conf, overlay_size=overlay)["singularity"]
    assert check.level == level, check
    assert SINGULARITY[found].split()[0] in check.detail  # where it was found


def test_singularity_absent(conf: Settings) -> None:
    assert judge(RECORDED, conf, overlay_size=600)["singularity"].level == "warning"
    check = judge(RECORDED, conf, overlay_size=0)["singularity"]
    assert check.level == "error" and "3.11.3" in check.detail
    assert judge(RECORDED, conf, overlay_size=0, executor="bare")["singularity"].level == "ok"


def test_scratch_dir_problems(conf: Settings) -> None:
    path = "/tmp/slurm-downstream-testcluster/scratch"
    missing = judge(with_step("scratch", 0, f"{path}\nmissing"), conf)
    assert missing["scratch dir"].level == "error" and "does not exist" in missing["scratch dir"].detail
    assert "flock" not in missing
    denied = "mktemp: failed to create file via template '/data/.slurm-downstream-probe.XXXXXX': Permission denied"
    readonly = judge(with_step("scratch", 0, f"/data\nnot-writable {denied}"), conf)["scratch dir"]
    assert readonly.level == "error" and "/data is not writable by jarvice: mktemp" in readonly.detail
    nfs = judge(with_step("scratch", 0, f"{path}\nwritable\nflock flock: {path}/x: No locks available"), conf)
    assert nfs["scratch dir"].level == "ok"
    assert nfs["flock"].level == "error" and "No locks available" in nfs["flock"].detail
    ignored = judge(with_step("scratch", 0, f"{path}\nwritable\nflock shared"), conf)["flock"]
    assert ignored.level == "error" and "both got an exclusive lock" in ignored.detail
    assert judge(with_step("scratch", 0, f"{path}\nwritable\nflock missing"), conf)["flock"].level == "error"


def test_socat_missing_warns(conf: Settings) -> None:
    check = judge(with_step("socat", 1, ""), conf)["socat"]
    assert check.level == "warning" and "interactive" in check.hint


def test_resize2fs_is_needed_only_with_overlay_images(conf: Settings) -> None:
    assert judge(RECORDED, conf)["resize2fs"] == Check("resize2fs", "ok",
                                                       "/usr/local/bin/resize2fs (overlay images of 640 MiB)")
    missing = judge(with_step("resize2fs", 1, ""), conf)["resize2fs"]
    assert missing.level == "warning" and "/usr/sbin" in missing.hint and "JARVICE_SLURM_OVERLAY_SIZE=0" in missing.hint
    assert judge(with_step("resize2fs", 1, ""), conf, overlay_size=0)["resize2fs"].level == "ok"


def test_a_host_key_trusted_on_first_use_warns(conf: Settings) -> None:
    check = judge(RECORDED, conf, ssh_trust_on_first_use=True)["ssh"]
    assert check.level == "warning" and "first use" in check.detail and "JARVICE_SLURM_SSH_KNOWN_HOSTS" in check.hint


def test_insecure_host_key_warns(conf: Settings) -> None:
    check = judge(RECORDED, conf, ssh_insecure_host_key=True)["ssh"]
    assert check.level == "warning" and "NOT verified" in check.detail


def test_format_one_line_per_check_with_hints_indented() -> None:
    lines = format_checks([
        Check("slurm version", "ok", "slurm 22.05.8"),
        Check("socat", "warning", "socat is not on the login node's PATH", "install it"),
        Check("select type", "error", "select/linear, not select/cons_tres", "set SelectType"),
    ])
    assert lines == [
        "ok      slurm version   slurm 22.05.8",
        "warning socat           socat is not on the login node's PATH",
        "                        hint: install it",
        "error   select type     select/linear, not select/cons_tres",
        "                        hint: set SelectType",
    ]


def test_probe_script_quotes_the_scratch_dir() -> None:
    script = probe_script("/data/it's here; rm -rf /")
    assert "scratch='/data/it'\"'\"'s here; rm -rf /'" in script
    assert "scratch='~'" in probe_script("~")


class Answers:
    """A CommandRunner that answers like a login node that printed ``stdout`` (or raises ``error``)."""

    def __init__(self, stdout: str = "", error: Exception | None = None) -> None:
        self.stdout, self.error, self.commands = stdout, error, []

    async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
        self.commands.append((command, stdin))
        if self.error:
            raise self.error
        return CommandResult(0, self.stdout, "")


async def test_run_preflight_is_one_command(conf: Settings) -> None:
    runner = Answers(RECORDED)
    checks = await run_preflight(runner, conf, poll_interval=1.0)
    assert len(runner.commands) == 1 and runner.commands[0][0] == "sh -s"
    assert runner.commands[0][1] == probe_script(conf.scratch_dir)
    assert {c.name for c in checks} >= {"ssh", "slurm version", "select type", "scratch dir", "socat"}


async def test_unreachable_cluster_is_one_ssh_error_with_a_hint(conf: Settings) -> None:
    checks = await run_preflight(Answers(error=ClusterUnavailable("SSH to login.example.org:22 failed: refused")), conf)
    assert [(c.name, c.level) for c in checks] == [("ssh", "error")]
    assert "JARVICE_SLURM_CLUSTER_ADDR" in checks[0].hint
    checks = await run_preflight(Answers(error=HostKeyRejected("SSH host key of login.example.org:22 refused")), conf)
    assert "ssh-keyscan -p 22 login.example.org" in checks[0].hint
    assert exit_code(checks) == 1


@pytest.mark.parametrize(("printed", "level", "detail"), [
    ("slurm-wlm 22.05.8", "ok", "slurm 22.05 is tested (22.05, 24.11, 26.05)"),
    ("slurm 24.11.5", "ok", "slurm 24.11 is tested (22.05, 24.11, 26.05)"),
    ("slurm-wlm 26.05.5", "ok", "slurm 26.05 is tested (22.05, 24.11, 26.05)"),
    ("slurm 23.11.10", "ok", "slurm 23.11 is within the tested range (22.05, 24.11, 26.05)"),
    ("slurm 21.08.8", "warning", "slurm 21.08 is outside the tested range (22.05, 24.11, 26.05)"),
    ("slurm 26.11.0", "warning", "slurm 26.11 is outside the tested range (22.05, 24.11, 26.05)"),
])
def test_the_slurm_version_is_judged_against_the_tested_range(conf: Settings, printed: str, level: str,
                                                              detail: str) -> None:
    checks = judge(with_step("version", 0, printed), conf)
    assert checks["tested range"].level == level and checks["tested range"].detail == detail
    assert checks["slurm version"].level == "ok"
    if level == "warning":
        assert "test suite" in checks["tested range"].hint
    assert exit_code(list(checks.values())) == 0  # an untested version is a warning, never an error


def test_without_sbatch_the_range_is_judged_on_slurmctlds_version(conf: Settings) -> None:
    checks = judge(with_step("version", 127, "sh: 1: sbatch: not found"), conf)
    assert checks["slurm version"].level == "error"
    assert checks["tested range"].detail == "slurm 22.05 is tested (22.05, 24.11, 26.05)"  # SLURM_VERSION = 22.05.8
    no_version = with_step("version", 127, "sh: 1: sbatch: not found").replace("SLURM_VERSION           = 22.05.8\n", "")
    assert "tested range" not in judge(no_version, conf)


# ------------------------------------------------------------------ the proxy pods' key (daemon/preflight_proxy.py)
# Real sshd answers for each kind of key are in tests/integration/test_proxy_key.py; these are the combinations
# a two-node test cluster cannot show.
def _judge_proxy(*answers: str, runs: bool = False, login_error: str = "") -> dict[str, tuple[str, str]]:
    from adapters.proxy.key_probe import Forwarding, KeyReach
    from daemon.preflight_proxy import judge

    reach = KeyReach(login_error=login_error, runs_commands=runs,
                     forwarding=tuple(Forwarding(f"10.0.0.{i}", a, "timed out" if a == "unknown" else "")
                                      for i, a in enumerate(answers, 1)))
    checks = judge("Secret ns/key", "jarvice", reach, same_as_daemon=False, nodes_total=20)
    return {c.name: (c.level, c.detail) for c in checks}


def test_proxy_key_refused_forwarding_to_some_nodes_is_a_warning_to_all_an_error() -> None:
    some = _judge_proxy("allowed", "prohibited", "allowed")
    assert some["proxy forwarding"][0] == "warning" and "to 10.0.0.2 (3 of 20 node(s) checked)" in some["proxy forwarding"][1]
    assert _judge_proxy("prohibited", "prohibited")["proxy forwarding"][0] == "error"


def test_proxy_key_no_answer_from_a_node_is_not_called_fine() -> None:
    checks = _judge_proxy("allowed", "unknown")
    assert checks["proxy forwarding"] == ("warning", "no answer for 10.0.0.2: timed out")


def test_proxy_key_that_cannot_log_in_is_one_error() -> None:
    checks = _judge_proxy(login_error="Permission denied")
    assert checks == {"proxy key": ("error", "the key in Secret ns/key cannot log in as jarvice: Permission denied")}
