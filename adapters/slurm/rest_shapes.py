"""slurmrestd's JSON, both ways: job descriptions out, job records in. Pure functions.

The data parsers v0.0.40 to v0.0.45 (Slurm 24.11 serves 40-42, 26.05 serves 42-45) agree
on every field read or written here; where an older one wrote a number bare instead of
``{"set", "infinite", "number"}``, or a state as a string instead of a list, both are read.

A job's description is made from the very ``sbatch`` options the SSH client passes
(``Submission.sbatch_args``), through one table: the two clients then submit the same job,
and an option the REST API has no field for is refused by name instead of dropped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from adapters.slurm.parsers import JOB_PREFIX, AccountingRecord, ParseError, SlurmJob, expand_nodes
from statemachines.slurm_states import FINISHED_CODES, to_code

# The data parsers this client reads and writes, oldest first.
SUPPORTED_PARSERS = ("v0.0.40", "v0.0.41", "v0.0.42", "v0.0.43", "v0.0.44", "v0.0.45")
_PARSER_PATH_RE = re.compile(r"^/slurm/(v\d+\.\d+\.\d+)/")


class UnsupportedOption(ValueError):
    """An sbatch option the REST job description cannot carry."""


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("."))


def offered_parsers(openapi: Mapping[str, Any]) -> list[str]:
    """The data parser versions a slurmrestd serves, from its OpenAPI description, oldest first."""
    found = {m[1] for path in openapi.get("paths", {}) if (m := _PARSER_PATH_RE.match(path))}
    return sorted(found, key=version_key)


def choose_parser(offered: Iterable[str], wanted: str = "auto") -> str:
    """``auto``: the newest version both sides know; else ``wanted``, which both must know."""
    offered = list(offered)
    common = [v for v in offered if v in SUPPORTED_PARSERS]
    if wanted != "auto":
        if wanted not in offered:
            raise ValueError(f"slurmrestd does not serve data parser {wanted} (it serves {', '.join(offered) or 'none'})")
        if wanted not in SUPPORTED_PARSERS:
            raise ValueError(f"data parser {wanted} is not one this daemon reads ({', '.join(SUPPORTED_PARSERS)})")
        return wanted
    if not common:
        raise ValueError(f"slurmrestd serves data parsers {', '.join(offered) or 'none'}; this daemon reads "
                         f"{SUPPORTED_PARSERS[0]} to {SUPPORTED_PARSERS[-1]}")
    return max(common, key=version_key)


# ------------------------------------------------------------------ reading numbers and states
def number(value: Any) -> int | None:
    """A ``*_no_val`` field (``{"set": true, "number": 5}``) or a bare number; None when unset or infinite."""
    if isinstance(value, dict):
        if not value.get("set", False) or value.get("infinite", False):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def state_code(value: Any) -> str:
    """``job_state``: a list whose first item is the base state (then flags such as COMPLETING), or a string."""
    if isinstance(value, list):
        value = value[0] if value else ""
    if not isinstance(value, str) or not value:
        raise ParseError(f"not a job state: {value!r}")
    return to_code(value)


def _elapsed(job: Mapping[str, Any], now: float) -> int:
    start = number(job.get("start_time"))
    if not start:
        return 0
    end = number(job.get("end_time"))
    finished = bool(end) and (end <= now or state_code(job.get("job_state")) in FINISHED_CODES)
    return max(0, int((end if finished and end else now) - start))


def exit_status(job: Mapping[str, Any]) -> int | None:
    """The batch script's exit code, as sacct's ``ExitCode`` first half."""
    code = job.get("exit_code")
    if isinstance(code, dict):
        return number(code.get("return_code"))
    return number(code)


def job_of(record: Mapping[str, Any], now: float) -> SlurmJob | None:
    """One job of ``GET /jobs/`` as squeue would show it; None when it is not one of ours."""
    name = record.get("name")
    if not isinstance(name, str) or not name.startswith(JOB_PREFIX):
        return None
    jobid = record.get("job_id")
    if isinstance(jobid, bool) or not isinstance(jobid, int):
        raise ParseError(f"job without an id: {name!r}")
    code = state_code(record.get("job_state"))
    reason = record.get("state_reason") or ""
    return SlurmJob(
        jobid=str(jobid),
        name=name[len(JOB_PREFIX):],
        code=code,
        elapsed=_elapsed(record, now),
        nodes=expand_nodes(record.get("nodes") or ""),
        reason="None" if reason == "" else str(reason),
        comment=str(record.get("comment") or ""),
        user=str(record.get("user_name") or ""),
    )


def jobs_of(answer: Mapping[str, Any], now: float | None = None) -> tuple[dict[str, SlurmJob], int]:
    """Our jobs of a ``GET /jobs/`` answer, and how many records could not be read (see ``Poll.complete``)."""
    now = time.time() if now is None else now
    jobs: dict[str, SlurmJob] = {}
    skipped = 0
    for record in answer.get("jobs") or ():
        try:
            job = job_of(record, now) if isinstance(record, dict) else None
        except ParseError:
            skipped += 1
            continue
        if job is not None:
            jobs[job.jobid] = job
    return jobs, skipped


def record_of(record: Mapping[str, Any], now: float | None = None) -> AccountingRecord | None:
    """A finished job the controller still holds, as accounting would remember it (None while it runs).

    slurmctld keeps a finished job MinJobAge seconds with its exit code: a site without slurmdbd
    (or without REST access to it) still gets the code, as ``sacct -c`` gives it over SSH."""
    now = time.time() if now is None else now
    job = job_of(record, now)
    if job is None or job.code not in FINISHED_CODES:
        return None
    return AccountingRecord(jobid=job.jobid, name=job.name, code=job.code, exit_code=exit_status(record),
                            elapsed=job.elapsed, nodes=job.nodes)


def accounting_of(record: Mapping[str, Any]) -> AccountingRecord | None:
    """A job of slurmdbd's ``GET /slurmdb/<parser>/job/<id>`` (after slurmctld purged it); None when not ours."""
    name = record.get("name")
    jobid = record.get("job_id")
    if not isinstance(name, str) or not name.startswith(JOB_PREFIX) or not isinstance(jobid, int):
        return None
    state = record.get("state")
    code = state_code(state.get("current") if isinstance(state, dict) else state)
    times = record.get("time") if isinstance(record.get("time"), dict) else {}
    return AccountingRecord(jobid=str(jobid), name=name[len(JOB_PREFIX):], code=code, exit_code=exit_status(record),
                            elapsed=number(times.get("elapsed")) or 0, nodes=expand_nodes(record.get("nodes") or ""))


def serves_accounting(openapi: Mapping[str, Any], parser: str) -> bool:
    """Whether slurmrestd also runs ``openapi/slurmdbd`` (jobs slurmctld forgot, coordinators)."""
    return f"/slurmdb/{parser}/job/{{job_id}}" in openapi.get("paths", {})


# ------------------------------------------------------------------ /events: a job as readable text
# REST field -> the name ``scontrol show job`` prints it under, in scontrol's order
_SHOWN = {"job_id": "JobId", "name": "JobName", "user_name": "UserId", "account": "Account", "partition": "Partition",
          "job_state": "JobState", "state_reason": "Reason", "restart_cnt": "Restarts", "submit_time": "SubmitTime",
          "start_time": "StartTime", "end_time": "EndTime", "time_limit": "TimeLimit", "nodes": "NodeList",
          "batch_host": "BatchHost", "node_count": "NumNodes", "cpus": "NumCPUs", "tasks": "NumTasks",
          "comment": "Comment", "exit_code": "ExitCode", "current_working_directory": "WorkDir",
          "standard_output": "StdOut"}


def _readable(value: Any) -> str:
    if isinstance(value, dict) and "set" in value:
        n = number(value)
        if n is None:
            return "UNLIMITED" if value.get("infinite") else "None"
        return str(n)
    if isinstance(value, dict) and "return_code" in value:
        rc, signal = number(value.get("return_code")), value.get("signal") or {}
        sig = number(signal.get("id")) if isinstance(signal, dict) else None
        return f"{rc if rc is not None else ''}:{sig or 0}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def show_job_text(record: Mapping[str, Any]) -> str:
    """``Key=Value`` lines in the spirit of ``scontrol show job``; times as ISO dates."""
    words = []
    for key, label in _SHOWN.items():
        if key not in record:
            continue
        value = record[key]
        if key.endswith("_time") and key != "time_limit" and (n := number(value)):
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(n))
        else:
            text = _readable(value)
        words.append(f"{label}={text or '(null)'}")
    return " ".join(words) + "\n"


def errors_text(answer: Mapping[str, Any]) -> str:
    """slurmrestd's ``errors`` list as one line (Slurm's own words)."""
    parts = []
    for error in answer.get("errors") or ():
        if isinstance(error, dict):
            what, why = str(error.get("description") or ""), str(error.get("error") or "")
            parts.append(f"{what}: {why}" if what and why and what != why else what or why)  # as sbatch words it
    return "; ".join(p for p in parts if p)


# ------------------------------------------------------------------ job descriptions
_SIZE_RE = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_SCALE = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def megabytes(text: str) -> int:
    """``--mem`` sizes (default unit MB): ``16G`` -> 16384."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise UnsupportedOption(f"not a memory size: {text!r}")
    return max(1, int(int(m[1]) * _SCALE[m[2].upper()] + 0.999))


_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def minutes(text: str) -> int:
    """Slurm's ``--time`` forms: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S`` -> minutes, rounded up."""
    m = _TIME_RE.match(text.strip())
    if not m:
        raise UnsupportedOption(f"not a Slurm time: {text!r}")
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        hours, mins, secs = int(a), int(b or 0), int(c or 0)
    elif c is not None:  # H:M:S
        hours, mins, secs = int(a), int(b), int(c)
    elif b is not None:  # M:S
        hours, mins, secs = 0, int(a), int(b)
    else:  # M
        hours, mins, secs = 0, int(a), 0
    total = ((int(days or 0) * 24 + hours) * 60 + mins) * 60 + secs
    return (total + 59) // 60


def _set(n: int) -> dict[str, Any]:
    return {"set": True, "infinite": False, "number": n}


def _csv_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


# sbatch long option -> (REST field, value converter); flags take no value.
_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "job-name": ("name", str),
    "comment": ("comment", str),
    "output": ("standard_output", str),
    "error": ("standard_error", str),
    "chdir": ("current_working_directory", str),
    "nodes": ("nodes", str),
    "ntasks": ("tasks", int),
    "ntasks-per-node": ("tasks_per_node", int),
    "cpus-per-task": ("cpus_per_task", int),
    "mem": ("memory_per_node", lambda v: _set(megabytes(v))),
    "mem-per-cpu": ("memory_per_cpu", lambda v: _set(megabytes(v))),
    "gpus-per-node": ("tres_per_node", lambda v: f"gres/gpu:{v}"),
    "gpus": ("tres_per_job", lambda v: f"gres/gpu:{v}"),
    "gres": ("tres_per_node", lambda v: ",".join(p if p.startswith("gres/") else f"gres/{p}" for p in _csv_list(v))),
    "time": ("time_limit", lambda v: _set(minutes(v))),
    "time-min": ("time_minimum", lambda v: _set(minutes(v))),
    "partition": ("partition", str),
    "licenses": ("licenses", str),
    "account": ("account", str),
    "qos": ("qos", str),
    "reservation": ("reservation", str),
    "constraint": ("constraints", str),
    "exclude": ("excluded_nodes", _csv_list),
    "nodelist": ("required_nodes", _csv_list),
    "dependency": ("dependency", str),
    "mail-user": ("mail_user", str),
    "mail-type": ("mail_type", lambda v: [p.strip().upper() for p in _csv_list(v)]),
    "nice": ("nice", int),
    "wckey": ("wckey", str),
}
_FLAGS: dict[str, tuple[str, Any]] = {
    "hold": ("hold", True),
    "exclusive": ("shared", ["none"]),  # sbatch --exclusive: OverSubscribe=NO
    "requeue": ("requeue", True),
    "no-requeue": ("requeue", False),
}
_IGNORED = {"parsable"}  # an sbatch client's own option: how it prints the answer


def job_description(sbatch_args: Iterable[str], script: str, environment: Mapping[str, str]) -> dict[str, Any]:
    """``POST job/submit``'s body for the job sbatch would make of these options and this script.

    sbatch passes its own environment to the job; a REST job gets only ``environment``, which
    the caller fills with what a login shell would have (at least PATH and HOME)."""
    job: dict[str, Any] = {"script": script, "environment": [f"{k}={v}" for k, v in environment.items()]}
    for arg in sbatch_args:
        if not arg.startswith("--"):
            raise UnsupportedOption(f"not a long sbatch option: {arg[:60]!r}")
        option, has_value, value = arg[2:].partition("=")
        if option in _IGNORED:
            continue
        if option in _FLAGS and not has_value:
            field, flag_value = _FLAGS[option]
            job[field] = flag_value
            continue
        if option not in _FIELDS or not has_value:
            raise UnsupportedOption(f"sbatch option --{option} has no equivalent in slurmrestd's job description")
        field, convert = _FIELDS[option]
        try:
            job[field] = convert(value)
        except ValueError as exc:
            raise UnsupportedOption(f"sbatch option --{option}={value[:60]}: {exc}") from None
    return {"job": job}
