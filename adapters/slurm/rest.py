"""Slurm control through slurmrestd (``JARVICE_SLURM_CLIENT=slurmrestd_client``).

The same answers as ``SlurmClient``'s commands, from slurmrestd's JSON: one pooled
HTTP/1.1 client (httpx), the service identity's JWT in ``X-SLURM-USER-TOKEN`` on every
request, one data parser version chosen at start-up from the server's OpenAPI
description. What REST cannot do (the job's output and exit-code files, clean-up,
``pvcls``, tunnels) is the cluster files' interface (``adapters/slurm/files.py``).

How answers map to the adapters' errors, as the SSH client's do: no answer, a 5xx or
slurmctld unreachable behind slurmrestd -> ``ClusterUnavailable`` (503 upstream, jobs keep
their state); a 401/403 -> ``ClusterUnavailable`` naming the token's source (after one
fresh token was tried); Slurm refusing a job -> ``CommandFailed`` with Slurm's message.
"""

from __future__ import annotations

import gc
import json as jsonlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import trio

from adapters.errors import (
    AnswerLost,
    ClusterUnavailable,
    CommandFailed,
    DownstreamError,
    Misconfigured,
    SlurmUnreachable,
)
from adapters.identity import UserIdentity
from adapters.jobscript import NAME_RE, Submission
from adapters.slurm import rest_shapes as shapes
from adapters.slurm.client import ClusterInfo, JobFacts, Poll
from adapters.slurm.files import check_jobid
from adapters.slurm.parsers import JOB_PREFIX, NODE_NAME_RE, AccountingRecord, SlurmJob
from adapters.tokens import TokenSource
from statemachines.slurm_states import FINISHED_CODES

log = logging.getLogger(__name__)

# A complete listing at least this often, even when slurmctld says nothing changed: the
# "nothing changed" answer is trusted to skip parsing, never to prove a job gone for long.
FULL_LISTING_EVERY = 60.0
# v0.0.40 and v0.0.41 refuse a numeric ``update_time`` (HTTP 422, "Parsing of ... for timestamp failed")
INCREMENTAL_SINCE = (0, 0, 42)
# slurm error numbers that mean "slurmctld did not answer" (slurm_errno.h: 1001-1004 and 1800-1803 communication,
# 5004-5005 socket timeout / nothing sent)
_UNREACHABLE_ERRNOS = {1001, 1002, 1003, 1004, 1800, 1801, 1802, 1803, 5004, 5005}
_INVALID_JOB_ID = 2017  # ESLURM_INVALID_JOB_ID
# A token slurmctld refuses (forged, expired, no user claim) gets 511 with error 1007 "Protocol authentication
# error" (measured on 24.11 and 26.05); only a missing one gets 401.
_TOKEN_REFUSED = {401, 403, 511}
# An answer larger than this is parsed in a worker thread with the cyclic garbage collector paused. A complete
# listing is ~7.8 KB of (pretty) JSON per job slurmctld holds: 74 MB at 9,400 jobs (24.11). One json.loads of it
# holds the GIL throughout (a C call: 0.55-1.1 s), worker thread or not, and the millions of containers it makes
# set off full collections that hold it 90-200 ms more each; the trio loop and every upstream call wait. The
# poll's listing is read one job at a time (``_loads_ours``): measured on a 106 MB listing, the longest the GIL
# was held fell from 961 ms to 59 ms (the UTF-8 decode), and only our jobs' kept fields are ever alive together.
# slurmrestd starts a job with no environment of its own (sbatch passes the caller's): its script needs a PATH
_JOB_ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
LARGE_ANSWER = 256 * 1024
_KEPT = ("job_id", "name", "job_state", "state_reason", "nodes", "comment", "start_time", "end_time", "user_name")

_paused_lock = threading.Lock()
_paused = 0  # worker threads parsing with the collector paused
_was_enabled = True


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic collection meanwhile (process-wide; reference counting still frees what is dropped)."""
    global _paused, _was_enabled
    with _paused_lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()


def _loads(content: bytes) -> Any:
    with _collector_paused():
        return jsonlib.loads(content)


def _loads_ours(content: bytes) -> Any:
    """A listing with only our jobs' records, each cut to ``_KEPT``, read one job at a time.

    ``json.loads`` is one C call: it holds the GIL for all of a 74 MB listing (0.55 s at best), which no worker
    thread hides from the trio loop, and it builds every record whole (RSS ~500 MB at 9,400 jobs). Decoding job
    by job lets the loop in between records and keeps one record whole at a time."""
    try:
        with _collector_paused():  # the records decoded and dropped would set off full collections (GIL held)
            return _scan_listing(content.decode())
    except (ValueError, IndexError):  # not the shape expected: read it whole
        answer = _loads(content)
        if isinstance(answer, dict) and isinstance(answer.get("jobs"), list):
            answer["jobs"] = _slim(answer["jobs"])
        return answer


_DECODER = jsonlib.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _scan_listing(text: str) -> dict[str, Any]:
    """``{"jobs": [...], ...}``: every member decoded as is, but "jobs" one record at a time through ``_slim``."""
    space = _SPACE.match
    answer: dict[str, Any] = {}
    i = space(text, 0).end()
    if text[i] != "{":
        raise ValueError("not a JSON object")
    i = space(text, i + 1).end()
    while text[i] != "}":
        key, i = _DECODER.raw_decode(text, i)
        i = space(text, i).end()
        if text[i] != ":":
            raise ValueError("':' expected")
        i = space(text, i + 1).end()
        if key == "jobs" and text[i] == "[":
            jobs: list[dict[str, Any]] = []
            i = space(text, i + 1).end()
            while text[i] != "]":
                record, i = _DECODER.raw_decode(text, i)
                jobs += _slim((record,))
                i = space(text, i).end()
                if text[i] == ",":
                    i = space(text, i + 1).end()
                elif text[i] != "]":
                    raise ValueError("',' or ']' expected")
            value: Any = jobs
            i += 1
        else:
            value, i = _DECODER.raw_decode(text, i)
        answer[str(key)] = value
        i = space(text, i).end()
        if text[i] == ",":
            i = space(text, i + 1).end()
        elif text[i] != "}":
            raise ValueError("',' or '}' expected")
    if text[i + 1:].strip():
        raise ValueError("data after the object")
    return answer


def _errnos(body: Mapping[str, Any]) -> set[Any]:
    """The Slurm error numbers of an answer's ``errors``."""
    return {e.get("error_number") for e in body.get("errors") or () if isinstance(e, dict)}


def _unavailable(what: str, status: int, body: Mapping[str, Any]) -> ClusterUnavailable:
    """slurmrestd answered, with a failure waiting may cure (5xx, or an answer without what was asked)."""
    return ClusterUnavailable(f"{what}: slurmrestd answered HTTP {status}: {shapes.errors_text(body)[:300]}")


def _slim(records: Sequence[Any]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in _KEPT if k in r} for r in records
            if isinstance(r, dict) and str(r.get("name", "")).startswith(JOB_PREFIX)]


class RestSlurm:
    """``SlurmControl`` over slurmrestd."""

    def __init__(self, url: str, tokens: TokenSource, *, user: str, http: httpx.AsyncClient, parser: str = "auto",
                 wall: Any = time.time) -> None:
        self.url = url.rstrip("/")
        self.tokens = tokens
        self.user = user  # the service user (JARVICE_SLURM_SSH_USER), when the service token names none
        self.wanted_parser = parser
        self.parser = "" if parser == "auto" else parser  # chosen by preflight
        self.offered: list[str] = []
        self.accounting = "controller"  # "slurmdbd" once preflight sees slurmrestd serve it
        self.http = http  # the daemon's (server.rest_http): the pod's proxy and CA, one pool with the token endpoint
        self.wall = wall
        self._last_update: int | None = None  # the last listing's ``last_update``
        self._listed: list[dict[str, Any]] = []  # its records of our jobs (the fields job_of reads), for "no change"
        self._listed_at = -math.inf
        self.requests = 0  # sent to slurmrestd (benchmarks: requests per minute)

    # ---------------------------------------------------------------- HTTP
    def _path(self, rest: str) -> str:
        if not self.parser:
            raise ClusterUnavailable("slurmrestd: no data parser chosen yet (preflight has not run)")
        return f"{self.url}/slurm/{self.parser}/{rest}"

    async def _request(self, method: str, url: str, *, what: str, json: Any = None,
                       params: Mapping[str, str] | None = None,
                       as_user: UserIdentity | None = None,
                       loads: Callable[[bytes], Any] = _loads) -> tuple[int, dict[str, Any]]:
        """One request with the service token, a refused one retried once with a fresh token; or with a
        user's own token (``as_user``), sent once: only its owner can renew it. (status, body)."""
        for attempt in (1, 2):
            try:
                token = as_user.token if as_user is not None else await self.tokens.token()
            except ClusterUnavailable:
                raise
            except DownstreamError as exc:  # refused by the token endpoint: as unusable as a refused token
                raise ClusterUnavailable(f"{what}: no service token: {exc}") from None
            self.requests += 1
            try:
                response = await self.http.request(method, url, json=json, params=params,
                                                   headers={"X-SLURM-USER-TOKEN": token})
            except httpx.TimeoutException as exc:
                raise AnswerLost(f"{what}: slurmrestd at {self.url} did not answer in time ({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                raise ClusterUnavailable(f"{what}: slurmrestd at {self.url} unreachable: {exc!r}") from None
            if response.status_code in _TOKEN_REFUSED and as_user is not None:
                raise CommandFailed(what, response.status_code, f"Slurm refused the bearer token of {as_user.user} "
                                    f"(HTTP {response.status_code}): expired, not signed by the identity provider "
                                    "Slurm trusts (AuthAltParameters=jwks=...), or no such user on the cluster")
            if response.status_code in _TOKEN_REFUSED:
                self.tokens.invalidate(token)
                if attempt == 1:
                    continue
                raise ClusterUnavailable(f"{what}: slurmrestd refused the service token from {self.tokens.description} "
                                         f"(HTTP {response.status_code})")
            break
        if response.status_code == 304:
            return 304, {}
        try:
            if len(response.content) > LARGE_ANSWER:
                body = await trio.to_thread.run_sync(loads, response.content)
            else:
                body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code >= 500 and not body.get("errors"):
            raise ClusterUnavailable(f"{what}: slurmrestd answered HTTP {response.status_code}")
        errnos = _errnos(body)
        if errnos & _UNREACHABLE_ERRNOS:
            raise SlurmUnreachable(f"{what}: slurmctld did not answer slurmrestd: {shapes.errors_text(body)[:300]}")
        return response.status_code, body

    def _refused(self, what: str, status: int, body: Mapping[str, Any]) -> CommandFailed:
        return CommandFailed(what, status, shapes.errors_text(body) or f"slurmrestd answered HTTP {status}")

    async def _get(self, rest: str, what: str, params: Mapping[str, str] | None = None,
                   loads: Callable[[bytes], Any] = _loads) -> tuple[int, dict[str, Any]]:
        return await self._request("GET", self._path(rest), what=what, params=params, loads=loads)

    # ---------------------------------------------------------------- start-up
    async def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI description (``/openapi/v3``; older servers ``/openapi``)."""
        for path in ("/openapi/v3", "/openapi"):
            status, body = await self._request("GET", self.url + path, what="openapi")
            if status == 200 and body.get("paths"):
                return body
        raise ClusterUnavailable(f"slurmrestd at {self.url} serves no OpenAPI description")

    async def choose_parser(self) -> str:
        """The data parser, and where finished jobs are looked up: slurmdbd when slurmrestd serves it."""
        openapi = await self.openapi()
        self.offered = shapes.offered_parsers(openapi)
        try:
            self.parser = shapes.choose_parser(self.offered, self.wanted_parser)
        except ValueError as exc:
            raise Misconfigured("JARVICE_SLURM_DATA_PARSER_VERSION", str(exc)) from None
        self.accounting = "slurmdbd" if shapes.serves_accounting(openapi, self.parser) else "controller"
        return self.parser

    def _dbd(self, rest: str) -> str:
        return f"{self.url}/slurmdb/{self.parser}/{rest}"

    async def _accounted(self, jobid: str) -> AccountingRecord | None:
        """slurmdbd's record of a job slurmctld no longer holds; None when it has none. Unreachable: raised,
        since "nothing known" would end the job."""
        status, answer = await self._request("GET", self._dbd(f"job/{check_jobid(jobid)}"), what="sacct")
        records = [r for r in answer.get("jobs") or () if isinstance(r, dict)]
        if status != 200:  # slurmdbd down or refusing: nothing may be concluded (an unknown job is a 200, empty)
            raise _unavailable("sacct", status, answer)
        return shapes.accounting_of(records[0]) if records else None

    async def coordinated_accounts(self) -> list[str] | None:
        """The accounts the service user coordinates (what it sees of others' jobs under PrivateData=jobs);
        None when slurmrestd serves no accounting."""
        if self.accounting != "slurmdbd":
            return None
        _, answer = await self._request("GET", self._dbd(f"user/{self.service_user}"), what="sacctmgr show user",
                                        params={"with_coords": "true"})
        users = [u for u in answer.get("users") or () if isinstance(u, dict)]
        if not users:
            return []
        return sorted(str(c.get("name")) for c in users[0].get("coordinators") or () if isinstance(c, dict))

    async def preflight(self) -> ClusterInfo:
        """Which parser, which Slurm, and the controller's settings the daemon depends on (MinJobAge...)."""
        await self.choose_parser()
        status, ping = await self._get("ping/", "ping")
        if status != 200:
            raise _unavailable("ping", status, ping)
        meta = ping.get("meta") or {}
        release = ((meta.get("slurm") or {}).get("release")) or ""
        version = f"slurm {release} (slurmrestd, data parser {self.parser})".strip()
        await self.ping()  # slurmctld answers and accepts the token
        return ClusterInfo(version=version, home="", config={})

    @property
    def service_user(self) -> str:
        """Who the service token says it is (its user-name claim), else the configured user."""
        return self.tokens.username or self.user

    async def visible_users(self) -> set[str]:
        """The users whose jobs the service identity sees (preflight: PrivateData and coordinators)."""
        _, answer = await self._listing(None)
        return {str(r.get("user_name")) for r in answer.get("jobs") or () if isinstance(r, dict) and r.get("user_name")}

    async def ping(self) -> None:
        """slurmctld answers, and accepts the token: ``diag/`` (``ping/`` answers 200 to any token at all)."""
        status, body = await self._get("diag/", "diag")
        if status != 200:
            raise SlurmUnreachable(f"diag: slurmctld does not answer slurmrestd: {shapes.errors_text(body) or status}")

    # ---------------------------------------------------------------- jobs
    async def submit(self, submission: Submission, as_user: UserIdentity | None = None) -> str:
        """``POST job/submit``: as the service user, or as ``as_user`` with the user's own token."""
        try:
            body = shapes.job_description(submission.sbatch_args, submission.batch_script, _JOB_ENVIRONMENT)
        except shapes.UnsupportedOption as exc:
            raise CommandFailed("job/submit", None, str(exc)) from None
        status, answer = await self._request("POST", self._path("job/submit"), what="sbatch", json=body, as_user=as_user)
        jobid = answer.get("job_id")
        if status == 200 and isinstance(jobid, int) and not isinstance(jobid, bool) and jobid > 0:
            return str(jobid)
        if status != 200 and answer.get("errors"):  # Slurm's refusal (slurmrestd answers it with a 500)
            raise self._refused("sbatch", status, answer)
        # made or not: unknown (the caller looks the name up)
        raise AnswerLost(f"job/submit: HTTP {status} without a job id: {shapes.errors_text(answer)[:300]}")

    async def _listing(self, since: int | None, loads: Callable[[bytes], Any] = _loads) -> tuple[int, dict[str, Any]]:
        params = {"update_time": str(since)} if since is not None else None
        status, answer = await self._get("jobs/", "jobs", params, loads)
        if status not in (200, 304):
            raise _unavailable("jobs", status, answer)
        return status, answer

    @staticmethod
    def _unchanged(status: int, answer: Mapping[str, Any]) -> bool:
        """slurmctld's "no change since update_time": HTTP 304 (newer servers) or a warning with no jobs."""
        if status == 304:
            return True
        warnings = " ".join(str(w.get("description", "")) for w in answer.get("warnings") or () if isinstance(w, dict))
        return not answer.get("jobs") and "No job changes" in warnings

    async def poll(self) -> Poll:
        """All of our jobs in one request. Between complete listings, ``update_time`` lets slurmctld say
        "nothing changed" instead of sending (and this daemon parsing) every job again."""
        started = trio.current_time()
        now = self.wall()
        full = (self._last_update is None or started - self._listed_at >= FULL_LISTING_EVERY
                or shapes.version_key(self.parser) < INCREMENTAL_SINCE)
        status, answer = await self._listing(None if full else self._last_update, _loads_ours)
        if not full and self._unchanged(status, answer):
            jobs, skipped = await trio.to_thread.run_sync(shapes.jobs_of, {"jobs": self._listed}, now)
            return Poll(started_at=started, jobs=jobs, complete=not skipped)
        records, jobs, skipped = await trio.to_thread.run_sync(self._ours, answer, now)
        last = shapes.number(answer.get("last_update"))
        if not skipped:
            self._listed = records
            self._last_update = last
            self._listed_at = started
        return Poll(started_at=started, jobs=jobs, complete=not skipped)

    @staticmethod
    def _ours(answer: Mapping[str, Any], now: float) -> tuple[list[dict[str, Any]], dict[str, SlurmJob], int]:
        """A listing's records of our jobs (only the fields kept), and them as SlurmJobs (in a worker thread)."""
        records = _slim(answer.get("jobs") or ())
        jobs, skipped = shapes.jobs_of({"jobs": records}, now)
        return records, jobs, skipped

    async def _job(self, jobid: str) -> dict[str, Any] | None:
        """``GET job/<id>``: its record, or None when slurmctld no longer knows it."""
        status, answer = await self._get(f"job/{check_jobid(jobid)}", "job")
        records = [r for r in answer.get("jobs") or () if isinstance(r, dict)]
        if status == 200 and records:
            return records[0]
        errnos = _errnos(answer)
        if _INVALID_JOB_ID in errnos or (status in (200, 404) and not records and not errnos):
            return None
        if status >= 500 or status == 200:
            raise _unavailable(f"job/{jobid}", status, answer)
        raise self._refused(f"job/{jobid}", status, answer)

    async def find_by_name(self, name: str) -> list[SlurmJob]:
        if not NAME_RE.match(name):
            raise ValueError(f"not a job name: {name!r}")
        # complete (a lost submit's job must be seen if it exists), read as the poll reads it: our jobs
        # only, job by job, and parsed in a worker thread, off upstream's request path
        _, answer = await self._listing(None, _loads_ours)
        _, jobs, _ = await trio.to_thread.run_sync(self._ours, answer, self.wall())
        return sorted((j for j in jobs.values() if j.name == name), key=lambda j: int(j.jobid))

    async def inspect(self, jobid: str) -> JobFacts:
        return (await self.inspect_many([jobid]))[jobid]

    async def inspect_many(self, jobids: Sequence[str]) -> dict[str, JobFacts]:
        """Each job's record, concurrently (one request each, few at a time). A finished job slurmctld still
        holds is its accounting record; the exit-code file is the files' interface's to add."""
        ids = [check_jobid(j) for j in jobids]
        facts: dict[str, JobFacts] = {}
        limit = trio.Semaphore(4)
        failures: list[DownstreamError] = []

        async def one(jobid: str) -> None:
            async with limit:
                try:
                    record = await self._job(jobid)
                    accounted = await self._accounted(jobid) if record is None and self.accounting == "slurmdbd" else None
                except DownstreamError as exc:
                    failures.append(exc)
                    return
            now = self.wall()
            if record is None:
                facts[jobid] = JobFacts(jobid=jobid, accounting=accounted)
                return
            facts[jobid] = JobFacts(jobid=jobid, squeue=shapes.job_of(record, now), accounting=shapes.record_of(record, now))

        async with trio.open_nursery() as nursery:
            for jobid in ids:
                nursery.start_soon(one, jobid)
        if failures:
            raise failures[0]
        return {j: facts[j] for j in ids}

    async def cancel(self, jobid: str, name: str) -> None:
        """Only a job that carries our name for it, as ``scancel -n``: a wrong id cannot cancel a foreign job."""
        record = await self._job(jobid)
        if record is None:
            raise CommandFailed("scancel", 1, f"Kill job error on job id {jobid}: Invalid job id specified")
        if record.get("name") != JOB_PREFIX + name:
            return  # scancel -n with a non-matching job cancels nothing and says nothing
        if shapes.state_code(record.get("job_state")) in FINISHED_CODES:  # slurmrestd would say nothing
            raise CommandFailed("scancel", 1, f"Kill job error on job id {jobid}: Job/step already completing or completed")
        status, answer = await self._request("DELETE", self._path(f"job/{jobid}"), what="scancel")
        if status != 200 or answer.get("errors"):  # e.g. already completing or completed, as scancel says
            raise self._refused("scancel", status, answer)

    async def release(self, jobid: str) -> None:
        status, answer = await self._request("POST", self._path(f"job/{check_jobid(jobid)}"), what="scontrol release",
                                             json={"hold": False})
        if status != 200 or answer.get("errors"):
            raise self._refused("scontrol release", status, answer)

    async def node_address(self, node: str) -> str:
        if not NODE_NAME_RE.fullmatch(node):
            raise ValueError(f"not a node name: {node!r}")
        status, answer = await self._get(f"node/{node}", "scontrol show node")
        for record in answer.get("nodes") or ():
            if isinstance(record, dict) and record.get("name") == node:
                address = record.get("address")
                if isinstance(address, str) and address:
                    return address
        raise CommandFailed("scontrol show node", status, shapes.errors_text(answer) or f"no NodeAddr for {node}")

    async def show_job(self, jobid: str) -> str:
        record = await self._job(jobid)
        if record is None:
            return "slurm_load_jobs error: Invalid job id specified\n"
        return shapes.show_job_text(record)
