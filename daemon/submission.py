"""Submission: one Slurm job per upstream name, whatever the link does (idempotence, limbo, adoption).

A submit whose sbatch answer was lost is in limbo: its name stays reserved until a retried submit
or a poll finds the job in Slurm, or a poll begun ``command_timeout`` after the loss proves it absent.
Submits of one name, and settling that name from limbo, happen under the name's lock (kopf's
per-object serialisation). After a restart, the first poll adopts every job Slurm runs under our
names and this deployment's instance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio

from adapters import jobscript
from adapters.errors import ClusterUnavailable, CommandFailed, DownstreamError, InvalidRequest
from adapters.identity import UserIdentity, user_identity
from adapters.slurm.client import Poll, SlurmJob
from adapters.slurm.parsers import parse_comment
from daemon.logs import job_extra
from statemachines.book import DuplicateJob
from statemachines.job import Effect, Finished, Job, JobState
from statemachines.slurm_states import Phase, phase_of

if TYPE_CHECKING:
    from daemon.service import Downstream

log = logging.getLogger(__name__)


class Submissions:
    """The submission concern of one ``Downstream``."""

    def __init__(self, core: Downstream) -> None:
        self.core = core
        self._duplicates: set[str] = set()  # Slurm job ids already reported as duplicates

    # ------------------------------------------------------------ restart and polls
    def restore(self, now: float) -> None:
        """Submits in doubt when the daemon stopped: their names (and ports) stay reserved."""
        book = self.core.book
        for intent in self.core.journal.intents():
            if book.named(intent.name) is None:
                job = Job(name=intent.name, number=intent.number, interactive=intent.interactive,
                          port_index=intent.port_index)  # its ports stay reserved while it is in doubt
                book.add(job)
                book.in_limbo(job, now, "the daemon stopped while its sbatch was in flight")

    def adopt_or_settle(self, poll: Poll, now: float) -> list[Effect]:
        """Jobs Slurm runs under our names that the book does not know by id."""
        core, book = self.core, self.core.book
        effects: list[Effect] = []
        for jobid in book.unknown(poll.jobs):
            sj = poll.jobs[jobid]
            known = book.named(sj.name)
            if known is not None and known.limbo_since is not None:
                if core.locked(sj.name):
                    continue  # a retried submit is settling it, under the name's lock: it alone may
                log.warning("job %s (%s): the submit whose answer was lost did reach Slurm", jobid, sj.name,
                            extra=job_extra(sj.name, jobid))
                effects += self.settle(known, sj, since=poll.started_at)
                continue
            if known is not None and not known.jobid:
                continue  # its sbatch is in flight and will register it when it answers
            if known is not None:
                if jobid not in self._duplicates and phase_of(sj.code, sj.reason) is not Phase.FINISHED:
                    self._duplicates.add(jobid)
                    log.error("job %s: Slurm runs a second job named jarvice_%s (tracked: %s); not adopted",
                              jobid, sj.name, known.jobid or "none")
                continue
            tag = parse_comment(sj.comment)
            if tag is None or f"{sj.name}/{jobid}" in core.answers:
                continue  # not submitted by a downstream, or finished and already collected
            if tag.instance and tag.instance != core.script_env.instance:
                continue  # another deployment's job (staging and production sharing an account): never ours
            job = book.adopt(sj.name, tag.number, jobid, sj, now=now, since=poll.started_at,
                             interactive=tag.interactive)
            if job is not None:
                job.port_index = tag.port_index
                log.info("job %s (%s, number %s): adopted from Slurm as %s", jobid, sj.name, tag.number, job.state,
                         extra=job_extra(sj.name, jobid))
                if job.final:  # ended while nobody watched: its outcome is kept until upstream collects it
                    effects.append(Finished(jobid, JobState(job.state)))
        return effects

    def settle(self, job: Job, sj: SlurmJob, *, since: float) -> list[Effect]:
        """A job in limbo is in Slurm after all: its ports are the ones its comment names (after a
        restart the book may not know them, and must neither lose its proxy nor hand its ports out)."""
        tag = parse_comment(sj.comment)
        if tag is not None and tag.port_index is not None:
            job.port_index = tag.port_index
        effects = self.core.book.settle(job, sj.jobid, sj, now=self.core.clock(), since=since)
        self.core.journal.settle(job.name)
        return effects

    def expire_limbo(self, poll: Poll) -> None:
        """A complete poll begun well after a lost sbatch that does not show it: it never took effect."""
        if not poll.complete:
            return
        core = self.core
        for job in core.book.limbo():
            if core.locked(job.name):
                continue  # a retried submit is settling it right now
            if job.limbo_since is not None and poll.started_at > job.limbo_since + core.command_timeout:
                log.warning("job %s: the submit whose answer was lost never reached Slurm; upstream may submit again",
                            job.name)
                core.book.forget(job)
                core.journal.settle(job.name)

    # ------------------------------------------------------------ /submit
    async def submit(self, args: Mapping[str, object]) -> list:
        core = self.core
        submission = jobscript.build(args, core.executor, core.script_env)
        identity = user_identity(args.get("bearer"), core.user_claim, core.wall()) if core.user_claim else None
        if submission.request.interactive and not core.slurm.available:
            raise InvalidRequest("interactive jobs need SSH to the login node to reach their web service, and this "
                                 "slurmrestd_client deployment has none (JARVICE_SLURM_CLUSTER_ADDR is not set)")
        if core.cluster is None:
            raise ClusterUnavailable(core.status.last_error or "the cluster has not answered yet")
        # Whether this name is already in Slurm is known only from a fresh poll (which
        # adopts every job under our names): without one, submitting could duplicate it.
        core.require_fresh()
        req = submission.request
        lock = core.lock(req.name)
        try:
            async with lock:
                try:
                    job = core.book.new(req.name, req.number, interactive=req.interactive, fscript=submission.fscript)
                except DuplicateJob as dup:
                    job = dup.job
                    if job.limbo_since is None:
                        log.info("submit of %s repeated: answering with job %s", req.name, job.jobid,
                                 extra=job_extra(req.name, job.jobid))
                        return [job.jobid, job.fscript or submission.fscript]
                    asked = core.clock()
                    if await self._settle_by_name(job):
                        return [job.jobid, submission.fscript]
                    if job.limbo_since is not None and asked <= job.limbo_since + core.command_timeout:
                        raise ClusterUnavailable(f"{req.name}: an earlier submit's answer was lost; whether it reached "
                                                 f"Slurm is known {core.command_timeout:g}s after it was sent") from None
                    core.book.proven_absent(job)  # submit it now
                    job.fscript = submission.fscript
                if req.interactive and job.port_index is None:
                    job.port_index = core.interactive.free_port_index()
                if job.port_index is not None:  # known only now: rendered again with the job's ports
                    submission = jobscript.build(args, core.executor, core.script_env, port_index=job.port_index)
                    job.fscript = submission.fscript  # what a repeated submit answers: the script Slurm runs
                core.journal.intend(req.name, req.number, req.interactive, job.port_index)
                job.user = identity.user if identity else ""
                try:
                    jobid = await self._sbatch(job, submission, identity)
                except DownstreamError:
                    core.metrics.submit_failures.inc()
                    raise
                core.metrics.submits.inc()
                core.metrics.submits_by_identity.labels("user" if identity else "service").inc()
                core.execute(core.book.submitted(job, jobid, held=req.held, now=core.clock()))
                core.journal.settle(req.name)
        finally:
            core.unlock(req.name, lock)
        log.info("job %s submitted for %s (number %s, %d node(s)%s%s)", jobid, req.name, req.number, req.nodes,
                 ", held" if req.held else "", f", as {identity.user}" if identity else "",
                 extra=job_extra(req.name, jobid))
        core.wake()
        return [jobid, submission.fscript]

    async def _sbatch(self, job: Job, submission: jobscript.Submission, identity: UserIdentity | None) -> str:
        """sbatch, and when its answer is lost, whether it took effect; else the job is in limbo *since it was
        sent*: the command timeout bounds the sbatch client, which gets its job id as soon as slurmctld has
        made the job, so a look-up begun ``command_timeout`` after sending sees every job it could have made."""
        core = self.core
        sent = core.clock()
        try:
            # Shielded: a client that hangs up mid-sbatch must not leave a job in
            # Slurm that the book forgot. The SSH command timeout still bounds it.
            with trio.CancelScope(shield=True):
                return await core.upstream(core.slurm.submit, submission, identity)
        except CommandFailed as exc:
            core.book.submit_failed(job, exc.stderr)
            raise InvalidRequest(f"Slurm refused the job: {exc.stderr or 'sbatch failed'}") from None
        except ClusterUnavailable as exc:
            # The link may have dropped after sbatch took effect: never submit twice.
            try:
                with trio.CancelScope(shield=True):
                    found = await core.upstream(core.slurm.find_by_name, job.name)
            except DownstreamError as lookup:
                # Unknown: keep the name reserved until a poll finds the job or proves it absent.
                core.book.in_limbo(job, sent, f"sbatch answer lost: {exc}")
                raise ClusterUnavailable(f"{exc}; and looking the job up failed: {lookup}") from None
            if found:
                log.warning("sbatch for %s lost its answer; found it in Slurm as job %s", job.name, found[-1].jobid,
                            extra=job_extra(job.name, found[-1].jobid))
                return found[-1].jobid
            # Not found *yet* is not absent: a timed-out sbatch may still be applied by slurmctld. Forgetting
            # the job would let upstream's retry submit a second one; it stays in doubt until a poll begun
            # command_timeout later (or a retried submit's look-up then) settles it.
            core.book.in_limbo(job, sent, f"sbatch answer lost, not in Slurm yet: {exc}")
            raise ClusterUnavailable(f"{exc}; the job is not in Slurm yet, and may still appear there") from None
        except BaseException:
            core.book.submit_failed(job, "interrupted")
            core.journal.settle(job.name)
            raise

    async def _settle_by_name(self, job: Job) -> bool:
        """A retried submit of a job in limbo: is it in Slurm after all? (ClusterUnavailable if unknown.)"""
        core = self.core
        try:
            found = await core.upstream(core.slurm.find_by_name, job.name)
        except CommandFailed as exc:  # whether it is in Slurm stays unknown: try again later
            raise ClusterUnavailable(f"looking up {job.name} in Slurm failed: {exc}") from None
        if not found:
            return False
        sj = found[-1]
        core.execute(self.settle(job, sj, since=core.clock()))
        log.warning("submit of %s repeated after a lost answer: it is job %s", job.name, sj.jobid,
                    extra=job_extra(job.name, sj.jobid))
        return True
