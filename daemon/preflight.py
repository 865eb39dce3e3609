"""Preflight: is this login node fit to run JARVICE jobs, and if not, what to do.

One probe (``adapters/slurm/probe.py``, a single SSH round trip) gathers the
facts; this module judges them against the settings. Each finding is a Check
with a level an operator can act on: ``error`` means jobs will fail or be lost
(``slurm-downstream check`` exits 1), ``warning`` means the daemon copes but
with less (e.g. no accounting: exit codes come from the jobs' own rc files).
Every non-ok check carries a hint naming the setting or command that fixes it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

from adapters.errors import ClusterUnavailable, HostKeyRejected
from adapters.slurm.probe import PROBE_TIMEOUT, ProbeFacts, probe
from adapters.ssh import CommandRunner
from config.settings import Settings

Level = Literal["ok", "warning", "error"]

REQUIRED_SELECT = "select/cons_tres"
OVERLAY_FREE_SINGULARITY = (3, 11, 3)  # JARVICE_SLURM_OVERLAY_SIZE=0 needs SingularityCE >= this
POLLS_PER_MIN_JOB_AGE = 3  # a finished job should be seen by this many polls before Slurm purges it


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        """For the admin page's ``preflight`` list and JSON logs."""
        return {"name": self.name, "level": self.level, "detail": self.detail, "hint": self.hint}


def _ssh_failure(exc: ClusterUnavailable, s: Settings) -> Check:
    if isinstance(exc, HostKeyRejected):
        hint = (f"check the login node's key (ssh-keyscan -p {s.cluster_port} {s.cluster_addr}) and put it in "
                "JARVICE_SLURM_SSH_KNOWN_HOSTS")
    elif "denied" in str(exc).lower() or "auth" in str(exc).lower():
        hint = f"add the public key of JARVICE_SLURM_SSH_PKEY to ~{s.ssh_user}/.ssh/authorized_keys on the login node"
    else:
        hint = "check JARVICE_SLURM_CLUSTER_ADDR/PORT, that sshd runs there and that this host may reach it"
    return Check("ssh", "error", f"{exc} (as {s.ssh_user})", hint)


def _version(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v))


def evaluate(facts: ProbeFacts, settings: Settings, poll_interval: float) -> list[Check]:
    """Judge the probe's facts. Pure, so every rule is unit-tested on recorded outputs."""
    s = settings
    where = f"{facts.user or s.ssh_user}@{s.cluster_addr}:{s.cluster_port}"
    if s.ssh_insecure_host_key:
        checks = [Check("ssh", "warning", f"{where}, host key NOT verified",
                        "set JARVICE_SLURM_SSH_KNOWN_HOSTS and drop JARVICE_SLURM_SSH_INSECURE_HOST_KEY")]
    elif s.ssh_trust_on_first_use:
        checks = [Check("ssh", "warning", f"{where}, host key trusted on first use (pinned in {s.ssh_known_hosts})",
                        "compare its fingerprint (in the log) with the login node's, and set JARVICE_SLURM_SSH_KNOWN_HOSTS")]
    else:
        checks = [Check("ssh", "ok", f"{where}, host key verified")]
    if not facts.complete:
        checks.append(Check("probe", "error", "the probe's output was cut short (login shell banner or a crash?)",
                            "run `sh -s` by hand over ssh and compare; a login script must not exit or exec"))

    version = facts.step("version")
    if version.ok and facts.slurm_version:
        checks.append(Check("slurm version", "ok", f"slurm {facts.slurm_version}"))
    else:
        checks.append(Check("slurm version", "error", f"sbatch --version: {version.first_line or 'no answer'}",
                            "put Slurm's commands on the service user's PATH (and SLURM_CONF if needed)"))

    config = facts.step("config")
    if not config.ok or not facts.config:
        checks.append(Check("slurmctld", "error", f"scontrol show config: {config.first_line or 'no answer'}",
                            "slurmctld must answer from the login node (scontrol ping)"))
    else:
        checks += _config_checks(facts, poll_interval)

    squeue = facts.step("squeue")
    if facts.squeue_jobs is not None:
        checks.append(Check("squeue", "ok", f"{facts.squeue_jobs} job(s) of {facts.user or s.ssh_user} listed"))
    else:
        checks.append(Check("squeue", "error", squeue.first_line or f"exit status {squeue.rc}",
                            "the poller runs `squeue -t all -u USER`; it must work from the login node"))

    checks.append(_singularity(facts, s))
    checks.append(_resize2fs(facts, s))
    checks += _scratch(facts, s)
    if facts.socat:
        checks.append(Check("socat", "ok", facts.socat))
    else:
        checks.append(Check("socat", "warning", "socat is not on the login node's PATH",
                            "interactive jobs reach their web service through `socat` on the login node: install it"))
    checks += _tested_range(facts)
    return checks


# The Slurm versions the test suite runs on (tests/cluster/up SLURM_VERSION=...; README "The test clusters").
TESTED_SLURM = ((22, 5), (24, 11), (26, 5))


def _tested_range(facts: ProbeFacts) -> list[Check]:
    """Whether the login node's Slurm is one the daemon is tested on; nothing when its version is unknown
    (the "slurm version" check already says so)."""
    m = re.match(r"(\d+)\.(\d+)", facts.slurm_version or "")
    if not m:
        return []
    have = (int(m[1]), int(m[2]))
    tested = ", ".join(f"{a}.{b:02d}" for a, b in TESTED_SLURM)
    shown = f"{have[0]}.{have[1]:02d}"
    if have in TESTED_SLURM:
        return [Check("tested range", "ok", f"slurm {shown} is tested ({tested})")]
    if TESTED_SLURM[0] <= have <= TESTED_SLURM[-1]:
        return [Check("tested range", "ok", f"slurm {shown} is within the tested range ({tested})")]
    return [Check("tested range", "warning", f"slurm {shown} is outside the tested range ({tested})",
                  "squeue, sacct and scontrol output change between Slurm releases: run the daemon's test suite "
                  "on this version first (README: The test cluster), or use a tested one")]


def _config_checks(facts: ProbeFacts, poll_interval: float) -> list[Check]:
    checks = []
    select = facts.select_type or "(not set)"
    if select == REQUIRED_SELECT:
        checks.append(Check("select type", "ok", select))
    else:
        checks.append(Check("select type", "error", f"{select}, not {REQUIRED_SELECT}",
                            f"JARVICE jobs ask for GPUs and cores per node: set SelectType={REQUIRED_SELECT} "
                            "in slurm.conf"))
    age = facts.min_job_age
    need = POLLS_PER_MIN_JOB_AGE * poll_interval
    if age is None:
        checks.append(Check("MinJobAge", "warning", f"unreadable: {facts.config.get('MinJobAge', '(not shown)')!r}",
                            "finished jobs are then resolved from their exit-code files and accounting"))
    elif age < need:
        checks.append(Check("MinJobAge", "warning",
                            f"{age}s < {POLLS_PER_MIN_JOB_AGE} x poll interval {poll_interval:.3g}s: "
                            "finished jobs may vanish from squeue between polls",
                            f"lower JARVICE_SLURM_POLL_INTERVAL below {age / POLLS_PER_MIN_JOB_AGE:.3g}s or raise "
                            "MinJobAge in slurm.conf; meanwhile such jobs are resolved from rc files and accounting"))
    else:
        checks.append(Check("MinJobAge", "ok", f"{age}s (>= {POLLS_PER_MIN_JOB_AGE} x poll interval {poll_interval:.3g}s)"))
    mode = facts.accounting
    if mode == "sacct":
        checks.append(Check("accounting", "ok", "sacct works (slurmdbd)"))
    elif mode == "jobcomp":
        checks.append(Check("accounting", "ok", "sacct -c works (jobcomp/filetxt)"))
    else:
        why = facts.step("sacct").first_line or "sacct failed"
        checks.append(Check("accounting", "warning", f"neither sacct nor sacct -c work ({why})",
                            "exit codes then come only from the jobs' rc files; enable slurmdbd or "
                            "JobCompType=jobcomp/filetxt (readable by the service user)"))
    return checks


def _singularity(facts: ProbeFacts, s: Settings) -> Check:
    if s.executor != "singularity":
        return Check("singularity", "ok", f"not used (JARVICE_BAREMETAL_EXECUTOR={s.executor})")
    found = facts.singularity
    no_overlay = s.overlay_size == 0
    need = _version(OVERLAY_FREE_SINGULARITY)
    if found is None:
        if no_overlay:
            return Check("singularity", "error",
                         f"not on the login node's PATH; JARVICE_SLURM_OVERLAY_SIZE=0 needs SingularityCE >= {need}",
                         f"install SingularityCE >= {need}, or set JARVICE_SLURM_OVERLAY_SIZE > 0")
        return Check("singularity", "warning", "not on the login node's PATH",
                     "jobs run singularity on the compute nodes: make sure it is installed there")
    path, flavour, version = found
    shown = f"{flavour or 'singularity'} {_version(version) or '(version unreadable)'} ({path})"
    if not no_overlay:
        return Check("singularity", "ok", shown)
    if flavour == "apptainer":
        return Check("singularity", "warning", f"{shown}; JARVICE_SLURM_OVERLAY_SIZE=0 is specified for SingularityCE "
                                               f">= {need}", "check that this Apptainer runs images without an overlay")
    if not version or version < OVERLAY_FREE_SINGULARITY:
        return Check("singularity", "error", f"{shown}; JARVICE_SLURM_OVERLAY_SIZE=0 needs SingularityCE >= {need}",
                     f"upgrade to SingularityCE >= {need}, or set JARVICE_SLURM_OVERLAY_SIZE > 0")
    return Check("singularity", "ok", f"{shown}, runs without an overlay")


def _resize2fs(facts: ProbeFacts, s: Settings) -> Check:
    if s.overlay_size == 0:
        return Check("resize2fs", "ok", "not needed (JARVICE_SLURM_OVERLAY_SIZE=0: writable tmpfs, no overlay image)")
    if facts.resize2fs:
        return Check("resize2fs", "ok", f"{facts.resize2fs} (overlay images of {s.overlay_size} MiB)")
    return Check("resize2fs", "warning", "not on the service user's PATH on the login node",
                 "JARVICE scripts size overlay images with resize2fs on the compute nodes: put it on the user's PATH "
                 "there (Debian keeps it in /usr/sbin), or set JARVICE_SLURM_OVERLAY_SIZE=0 with SingularityCE >= "
                 f"{_version(OVERLAY_FREE_SINGULARITY)}")


def _scratch(facts: ProbeFacts, s: Settings) -> list[Check]:
    sc = facts.scratch
    where = sc.path or s.scratch_dir
    var = "JARVICE_SLURM_SCRATCH_DIR"
    if not sc.exists:
        return [Check("scratch dir", "error", f"{where} does not exist (or is not reachable) for {facts.user or s.ssh_user}",
                      f"create it on the shared file system, or set {var}")]
    if not sc.writable:
        return [Check("scratch dir", "error", f"{where} is not writable by {facts.user or s.ssh_user}"
                                              + (f": {sc.error}" if sc.error else ""),
                      f"chown/chmod it for the service user, or set {var} to a directory it owns")]
    checks = [Check("scratch dir", "ok", f"{where} exists and is writable")]
    if sc.flock == "exclusive":
        checks.append(Check("flock", "ok", f"locks in {where} exclude each other"))
    elif sc.flock == "missing":
        checks.append(Check("flock", "error", "the flock command is not on the login node's PATH",
                            "install util-linux's flock"))
    elif sc.flock == "shared":
        checks.append(Check("flock", "error", f"two processes both got an exclusive lock in {where}",
                            "the file system ignores locks (NFS mounted with nolock?); use a scratch dir that honours flock"))
    else:
        checks.append(Check("flock", "error", f"flock fails in {where}: {sc.flock or 'no answer'}",
                            "the file system does not support locks (NFS without lockd?); mount it with locking "
                            f"or set {var} elsewhere"))
    return checks


async def run_preflight(runner: CommandRunner, settings: Settings, poll_interval: float | None = None,
                        timeout: float = PROBE_TIMEOUT, facts: ProbeFacts | None = None) -> list[Check]:
    """Probe the login node once (unless ``facts`` are already at hand) and judge what it says.
    Never raises for cluster trouble."""
    interval = settings.poll_interval if poll_interval is None else poll_interval
    if facts is None:
        try:
            facts = await probe(runner, settings.scratch_dir, timeout=timeout)
        except ClusterUnavailable as exc:
            return [_ssh_failure(exc, settings)]
    return evaluate(facts, settings, interval)


LEVEL_WIDTH = 8
NAME_WIDTH = 16


def format_checks(checks: list[Check]) -> list[str]:
    """``ok      slurm version   slurm 22.05.8``; a hint goes on the next line, under the detail."""
    lines = []
    for c in checks:
        lines.append(f"{c.level:<{LEVEL_WIDTH}}{c.name:<{NAME_WIDTH - 1}} {c.detail}")
        if c.hint and c.level != "ok":
            lines.append(" " * (LEVEL_WIDTH + NAME_WIDTH) + f"hint: {c.hint}")
    return lines


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.level == "error" for c in checks) else 0


_LOG_LEVEL = {"ok": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def log_checks(logger: logging.Logger, checks: list[Check]) -> None:
    """What ``serve`` does with the same checks: one log line each, at the check's level."""
    for c in checks:
        logger.log(_LOG_LEVEL[c.level], "preflight %s: %s%s", c.name, c.detail, f" (hint: {c.hint})" if c.hint and
                   c.level != "ok" else "")
