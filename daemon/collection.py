"""Collection: outcomes and answers kept until upstream collects them, and the jobs' files removed after.

A finished job's outcome is journalled (the cluster may purge it and have no accounting); its
``/exitstatus`` answer is cached and journalled so that a repeated call, even after a restart,
says the same; then its files go, and a removal that fails is journalled and retried at ``/gc``.
``/gc`` also forgets finished jobs upstream never collected and sweeps files nobody will collect.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from adapters.errors import ClusterUnavailable, DownstreamError
from daemon.core import ANSWER_RETENTION, GC_BATCH, Answer, Conflict, NotFound, hms, job_identity, termination_line
from daemon.logs import job_extra
from statemachines.job import Job, JobState
from statemachines.slurm_states import UNKNOWN_EXIT, Phase, code_from_rc_file, exit_code_of, long_name, phase_of

if TYPE_CHECKING:
    from daemon.service import Downstream

log = logging.getLogger(__name__)


class Collection:
    """The collection concern of one ``Downstream``; the answer cache itself is the core's (adoption reads it)."""

    def __init__(self, core: Downstream) -> None:
        self.core = core

    # ------------------------------------------------------------ what the journal keeps
    def restore(self, now: float, wall: float) -> None:
        """Outcomes and answers upstream has not collected yet, from before a restart."""
        core, book = self.core, self.core.book
        for outcome in core.journal.outcomes():
            if book.named(outcome.name) is None and book.get(outcome.jobid) is None:
                rec = outcome.record
                book.add(Job(name=outcome.name, number=outcome.number, jobid=outcome.jobid,
                             state=JobState(rec["state"]), exit_code=rec["exit_code"], elapsed=rec["elapsed"],
                             termination=rec["termination"], nodes=tuple(rec["nodes"]), adopted=True))
        for key, (answer, expires) in core.journal.answers(wall).items():
            core.answers[key] = Answer(answer, now + (expires - wall))

    def record_outcome(self, job: Job) -> None:
        """Until upstream collects it: the cluster may purge the job and have no accounting."""
        self.core.journal.finished(job.jobid, job.name, job.number, {
            "state": JobState(job.state).value, "exit_code": job.exit_code, "elapsed": job.elapsed,
            "termination": job.termination, "nodes": list(job.nodes), "at": self.core.wall()})

    def expire_answers(self, now: float) -> None:
        answers = self.core.answers
        expired = [j for j, a in answers.items() if a.expires < now]
        for key in expired:
            del answers[key]
        if expired:
            self.core.journal.expire(self.core.wall())

    # ------------------------------------------------------------ /exitstatus
    async def exitstatus(self, args: Mapping[str, object]) -> list:
        """The answer (the same every time), then the job's files removed (retried at /gc if that fails)."""
        core = self.core
        name, _, jobid = job_identity(args)
        key = f"{name}/{jobid}"
        cached = core.answers.get(key)
        if cached is not None:
            return cached.value
        lock = core.lock(f"exit:{jobid}")
        try:
            async with lock:
                cached = core.answers.get(key)
                if cached is not None:
                    return cached.value
                job = core.book.get(jobid)
                if job is not None and job.name != name:
                    raise NotFound(f"job {jobid} is not named {name}")
                if job is not None:
                    if not job.final:
                        core.require_fresh()  # "still running" from an old snapshot would be made up
                        raise Conflict(f"job {jobid} is still {job.state.value} in Slurm; it has no exit status yet")
                    rc, elapsed, state = job.exit_code, job.elapsed, job.termination
                else:
                    rc, elapsed, state = await self._outcome_from_cluster(name, jobid)
                tail = await core.upstream(core.slurm.tail, jobid) or ""
                answer = [rc if rc is not None else UNKNOWN_EXIT, hms(elapsed), [tail, termination_line(state or "UNKNOWN")]]
                core.answers[key] = Answer(answer, core.clock() + ANSWER_RETENTION)
                core.journal.answered(key, answer, core.wall() + ANSWER_RETENTION)
                core.journal.collected(jobid)
                if job is not None:
                    core.book.forget(job)
        finally:
            core.unlock(f"exit:{jobid}", lock)
        await self.clean([jobid])
        return answer

    async def _outcome_from_cluster(self, name: str, jobid: str) -> tuple[int, int, str]:
        """A job this daemon does not track (purged, or from before a restart)."""
        core = self.core
        facts = await core.upstream(core.slurm.inspect, jobid)
        for record in (facts.squeue, facts.accounting):
            if record is None:
                continue
            if record.name != name:
                raise NotFound(f"job {jobid} is not named {name}")
            if phase_of(record.code, getattr(record, "reason", "")) is not Phase.FINISHED:
                raise Conflict(f"job {jobid} is still {long_name(record.code)} in Slurm; it has no exit status yet")
            return exit_code_of(record.code), record.elapsed, long_name(record.code)
        if facts.rc_file is not None:
            code = code_from_rc_file(facts.rc_file)
            return exit_code_of(code), 0, long_name(code)
        return UNKNOWN_EXIT, 0, "UNKNOWN"

    async def clean(self, jobids: list[str]) -> bool:
        """Remove the jobs' files; until that succeeds the journal keeps asking (/gc retries, restarts too)."""
        core = self.core
        core.journal.to_clean(jobids, core.wall())
        try:
            await core.upstream(core.slurm.cleanup, jobids)
        except Exception as exc:  # noqa: BLE001 - the answer stands; the files wait for the next /gc
            core.supervisor.failed("clean", "", ",".join(jobids), exc)
            return False
        core.journal.cleaned(jobids)
        return True

    # ------------------------------------------------------------ /gc
    async def sweep(self) -> None:
        """Jobs' files whose removal failed before, finished jobs upstream never collected, and files of
        jobs that are neither tracked nor known to Slurm, once older than ``gc_age``."""
        core = self.core
        forgotten = self._forget_uncollected()
        pending = core.journal.cleanups()
        try:
            orphans = await self._orphans()
        except DownstreamError as exc:
            log.warning("gc: could not list the jobs' files: %s", exc)
            orphans = []
        if orphans:
            log.info("gc: %d job(s) left files that nobody will collect (neither tracked nor known to Slurm, "
                     "older than %s): %s", len(orphans), hms(int(core.gc_age)), ", ".join(orphans))
        todo = list(dict.fromkeys(pending + forgotten + orphans))
        for start in range(0, len(todo), GC_BATCH):
            batch = todo[start:start + GC_BATCH]
            if await self.clean(batch):
                log.info("gc: removed the files of job(s) %s", ", ".join(batch))

    def _forget_uncollected(self) -> list[str]:
        """Finished jobs whose /exitstatus upstream never asked for within ``gc_age``: upstream has moved on."""
        core = self.core
        wall, forgotten = core.wall(), []
        for outcome in core.journal.outcomes():
            if wall - outcome.record.get("at", wall) <= core.gc_age:
                continue
            job = core.book.get(outcome.jobid)
            if job is not None and job.final:
                core.book.forget(job)
            core.journal.collected(outcome.jobid)
            forgotten.append(outcome.jobid)
            log.info("gc: job %s (%s) finished %s ago and upstream never collected it: forgotten", outcome.jobid,
                     outcome.name, hms(int(wall - outcome.record["at"])), extra=job_extra(outcome.name, outcome.jobid))
        return forgotten

    async def _orphans(self) -> list[str]:
        """Job ids with files in the jobs dir that no tracked job and no job Slurm lists owns, old enough.

        Only from a fresh, complete snapshot and with no submit in doubt: a job that exists but is not
        yet seen must never lose its files (the age limit protects it too)."""
        core = self.core
        try:
            core.require_fresh()
        except ClusterUnavailable:
            return []
        if core.book.limbo():
            return []
        files = await core.upstream(core.slurm.job_files)
        known = core.in_slurm | {job.jobid for job in core.book if job.jobid}
        wall = core.wall()
        return sorted((j for j, mtime in files.items() if j not in known and wall - mtime > core.gc_age), key=int)
