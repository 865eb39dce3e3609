"""Parsers for what Slurm prints. Pure functions, tested against captured real output.

Robustness rules from peers' bug trackers: fields are split on a byte that never
occurs in Slurm's values (0x1f, the ASCII unit separator), times are read with
``SLURM_TIME_FORMAT=standard``, and elapsed times may carry days (``D-HH:MM:SS``).
A line that does not parse is skipped and reported, never guessed at.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import hostlist

from statemachines.slurm_states import to_code

log = logging.getLogger(__name__)

SEP = "\x1f"
NODE_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")  # node names the daemon passes to Slurm (fullmatch)
JOB_PREFIX = "jarvice_"

# squeue -o fields, in order; the daemon asks for exactly these.
SQUEUE_FIELDS = ("%A", "%j", "%t", "%M", "%N", "%r", "%k")
SQUEUE_FORMAT = SEP.join(SQUEUE_FIELDS)
SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "Elapsed", "NodeList")

_DURATION_RE = re.compile(r"^(?:(\d+)-)?(\d+(?::\d{1,2}){0,2})(?:\.\d+)?$")


class ParseError(ValueError):
    """Slurm printed something this daemon does not understand."""


@dataclass(frozen=True)
class SlurmJob:
    """One job as squeue shows it at one instant."""

    jobid: str
    name: str  # upstream's name, without the jarvice_ prefix
    code: str  # compact state code, e.g. PD, R, CD
    elapsed: int  # seconds
    nodes: tuple[str, ...]
    reason: str
    comment: str
    user: str = ""  # the Slurm user it runs as, where the answer says (slurmrestd); "" over SSH: the service user


@dataclass(frozen=True)
class AccountingRecord:
    """One job as sacct (or sacct -c, from the jobcomp file) remembers it."""

    jobid: str
    name: str
    code: str
    exit_code: int | None
    elapsed: int
    nodes: tuple[str, ...]


def parse_duration(text: str) -> int:
    """Slurm's printed durations: ``M:SS``, ``H:MM:SS``, ``D-HH:MM:SS`` (and bare seconds)."""
    text = text.strip()
    if not text or text in {"INVALID", "UNLIMITED", "NOT_SET", "N/A", "Partition_Limit"}:
        return 0
    match = _DURATION_RE.match(text)
    if not match:
        raise ParseError(f"not a Slurm duration: {text!r}")
    days, clock = match.groups()
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return int(days or 0) * 86400 + seconds


def expand_nodes(text: str) -> tuple[str, ...]:
    """``node[1-3],gpu07`` -> ``('node1', 'node2', 'node3', 'gpu07')``."""
    text = text.strip()
    if not text or text in {"(null)", "None assigned", "None"}:
        return ()
    try:
        return tuple(hostlist.expand_hostlist(text))
    except hostlist.BadHostlist as exc:
        raise ParseError(f"not a Slurm node list: {text!r} ({exc})") from None


def strip_prefix(slurm_name: str) -> str | None:
    return slurm_name[len(JOB_PREFIX):] if slurm_name.startswith(JOB_PREFIX) else None


def parse_squeue(output: str) -> dict[str, SlurmJob]:
    """Parse ``squeue -h -o SQUEUE_FORMAT``; keep only JARVICE jobs."""
    return parse_squeue_counting(output)[0]


def parse_squeue_counting(output: str, memo: dict[str, SlurmJob] | None = None) -> tuple[dict[str, SlurmJob], int]:
    """The jobs, and how many lines were skipped: a poll with skipped lines proves no job gone.

    ``memo``: the previous answer's lines and their jobs. A line printed again as it
    was (a pending job's, mostly) is not parsed again: its job is the same object,
    which also lets the book see at once that nothing changed. It is refilled with
    this answer's lines, so it never holds more than one answer.
    """
    jobs: dict[str, SlurmJob] = {}
    skipped = 0
    previous = memo or {}
    parsed: dict[str, SlurmJob] = {}  # this answer's lines
    for line in output.splitlines():
        known = previous.get(line)
        if known is not None:
            jobs[known.jobid] = parsed[line] = known
            continue
        if not line.strip():
            continue
        fields = line.split(SEP)
        if len(fields) != len(SQUEUE_FIELDS):
            log.warning("squeue: skipped a line with %d fields instead of %d: %r", len(fields), len(SQUEUE_FIELDS), line[:200])
            skipped += 1
            continue
        jobid, slurm_name, code, elapsed, nodes, reason, comment = fields
        name = strip_prefix(slurm_name)
        if name is None:
            continue
        try:
            job = jobs[jobid.strip()] = SlurmJob(
                jobid=jobid.strip(),
                name=name,
                code=to_code(code),
                elapsed=parse_duration(elapsed),
                nodes=expand_nodes(nodes),
                reason=reason.strip(),
                comment=comment.strip(),
            )
        except ParseError as exc:
            log.warning("squeue: skipped job %s: %s", jobid, exc)
            skipped += 1
            continue
        parsed[line] = job
    if memo is not None:
        memo.clear()
        memo.update(parsed)
    return jobs, skipped


@dataclass(frozen=True)
class JobTag:
    """What a downstream writes into the job's Slurm comment: enough to adopt it after a restart."""

    number: int
    interactive: bool = False
    port_index: int | None = None
    instance: str = ""  # the deployment that submitted it (``d=``); "" in comments from before instances


_COMMENT_RE = re.compile(r"jarvice:(\d{1,15})(?P<flags>(?:;[a-z]+=[^;]*)*)")


def parse_comment(comment: str) -> JobTag | None:
    """``jarvice:<number>`` optionally followed by ``;key=value`` flags; None when not ours."""
    match = _COMMENT_RE.fullmatch(comment.strip())
    if not match:
        return None
    flags = dict(item.split("=", 1) for item in match["flags"].split(";") if item)
    port = flags.get("p", "")
    return JobTag(number=int(match[1]), interactive=flags.get("i") == "1",
                  port_index=int(port) if port.isdigit() and len(port) < 6 else None, instance=flags.get("d", ""))


def job_comment(number: int, port_index: int | None = None, instance: str = "") -> str:
    """The Slurm comment ``parse_comment`` reads back; an interactive job's carries its port index, and
    a deployment with an instance name (``JARVICE_SLURM_INSTANCE``) signs its jobs with it."""
    comment = f"jarvice:{number}" if port_index is None else f"jarvice:{number};i=1;p={port_index}"
    return f"{comment};d={instance}" if instance else comment


def parse_node_address(output: str) -> str | None:
    """``NodeAddr=`` of ``scontrol show node NAME``: where the login node reaches the node."""
    match = re.search(r"\bNodeAddr=(\S+)", output)
    return match[1] if match else None


def parse_node_addresses(output: str) -> dict[str, str]:
    """NodeName -> NodeAddr of every node in ``scontrol -o show nodes`` (one node per line)."""
    found = {}
    for line in output.splitlines():
        name, addr = re.search(r"\bNodeName=(\S+)", line), re.search(r"\bNodeAddr=(\S+)", line)
        if name and addr:
            found[name[1]] = addr[1]
    return found


def parse_exit_code(text: str) -> int | None:
    """sacct's ``ExitCode`` is ``code:signal``."""
    head = text.strip().split(":", 1)[0]
    return int(head) if head.isdigit() else None


def parse_sacct(output: str) -> dict[str, AccountingRecord]:
    """Parse ``sacct -n -P --delimiter=SEP -o SACCT_FIELDS`` (with or without ``-c``).

    sacct lists job steps (``12.batch``) too; only the allocation line counts.
    The jobcomp file may hold one job twice (requeued); the last line wins.
    """
    records: dict[str, AccountingRecord] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        fields = line.split(SEP)
        if len(fields) != len(SACCT_FIELDS):
            log.warning("sacct: skipped a line with %d fields: %r", len(fields), line[:200])
            continue
        jobid, name, state, exit_code, elapsed, nodes = (f.strip() for f in fields)
        if "." in jobid:
            continue
        try:
            records[jobid] = AccountingRecord(
                jobid=jobid,
                name=strip_prefix(name) or name,
                code=to_code(state),
                exit_code=parse_exit_code(exit_code),
                elapsed=parse_duration(elapsed),
                nodes=expand_nodes(nodes),
            )
        except ParseError as exc:
            log.warning("sacct: skipped job %s: %s", jobid, exc)
    return records


def parse_sbatch(output: str) -> str:
    """``sbatch --parsable`` prints ``jobid`` or ``jobid;cluster`` on its last line."""
    # the last line: a login banner or a warning may come first
    last = output.strip().splitlines()[-1] if output.strip() else ""
    jobid = last.split(";", 1)[0].strip()
    if not jobid.isdigit():
        raise ParseError(f"sbatch printed no job id: {output.strip()[:200]!r}")
    return jobid


def parse_config(output: str) -> dict[str, str]:
    """``scontrol show config``: ``Key  = value`` lines."""
    config: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    # Slurm 23.11 removed the accounting_storage/none plugin: 24.11 and 26.05 show an unset
    # AccountingStorageType as "(null)" where 22.05 shows "accounting_storage/none"; both mean none.
    if config.get("AccountingStorageType") == "(null)":
        config["AccountingStorageType"] = "accounting_storage/none"
    return config


def min_job_age(config: dict[str, str]) -> int | None:
    """Seconds Slurm keeps finished jobs in squeue (``MinJobAge = 300 sec``); None when unreadable."""
    match = re.match(r"\s*(\d+)", config.get("MinJobAge", ""))
    return int(match[1]) if match else None


def parse_rc(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"-?\d{1,5}", text) else None


def parse_rc_lines(text: str, jobids: list[str]) -> dict[str, int | None]:
    """``<jobid> <contents of its .rc file>`` lines -> each asked job's exit code (None: no file)."""
    rcs: dict[str, int | None] = dict.fromkeys(jobids)
    for line in text.splitlines():
        jobid, _, rest = line.partition(" ")
        if jobid in rcs:
            rcs[jobid] = parse_rc(rest)
    return rcs


_JOB_FILE_RE = re.compile(r"^(?:jobs/)?([0-9]{1,12})(?:\.[^/]*)?\Z")


def parse_job_files(text: str) -> dict[str, float]:
    """``find -printf '%P\\t%T@\\n'`` in the jobs dir: ``<id>.out``, ``<id>.rc``, ``jobs/<id>`` ... -> newest
    mtime per job id. Other entries (``jobs`` itself, a site's own files) are no job's."""
    newest: dict[str, float] = {}
    for line in text.splitlines():
        path, _, mtime = line.rpartition("\t")
        m = _JOB_FILE_RE.match(path)
        if not m or (path.startswith("jobs/") and "." in path):
            continue
        try:
            when = float(mtime)
        except ValueError:
            continue
        jobid = str(int(m[1]))
        newest[jobid] = max(when, newest.get(jobid, when))
    return newest
