"""Interactive jobs: their port pool and their proxies, tended after every poll.

A running interactive job gets a proxy once its web service answers through the login node.
What can go wrong is told apart by whether waiting fixes it:

* transient (the Kubernetes API or SSH could not be asked, the node's address could not be
  read): retried with backoff, without limit, and never held against the job;
* permanent (the backend gave up: image pull back-off, crash loop, the API refused the
  objects, no port to listen on): counted; after ``PROXY_RETRIES`` the job stops trying and
  its ``last_error`` says why, at no further cost per poll.

Both counts reset once the proxy serves. Those counts and the proxy's state are each job's
``ProxyLife``, which only the pure proxy machine (statemachines/proxy.py) moves: this module
carries the proxies out and tells the machine how each attempt went.

A proxy is aimed at the job's current first node and port on every tend: a job that Slurm
requeued loses its URL while it pends and gets a re-aimed proxy when it runs again (on
whichever node). A node's address is read again whenever a job
starts on it (cloud and power-saved nodes change ``NodeAddr``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from adapters.errors import ClusterUnavailable, DownstreamError, InvalidRequest
from adapters.proxy.base import ProxyState, ProxyStatus, ProxyTarget
from adapters.proxy.local import probe as probe_service
from adapters.ssh import ForwardingProhibited
from daemon.logs import job_extra
from statemachines.job import Job, JobState
from statemachines.proxy import PROXY_RETRIES, SILENT_PROBES, ProxyMachine, ProxyPhase
from statemachines.slurm_states import Phase, phase_of

if TYPE_CHECKING:
    from daemon.service import Downstream

log = logging.getLogger(__name__)

PROBE_LIMIT = 8  # interactive jobs probed (and their proxies started) at once after a poll


@dataclass
class _Aim:
    """Where a job's proxy points, and the address its node had when the job started there."""

    node: str
    host: str
    port: int


class Interactive:
    """The interactive concern of one ``Downstream``: it reads the core's book, backends and supervisor."""

    def __init__(self, core: Downstream) -> None:
        self.core = core
        self.machine = ProxyMachine()  # every interactive job's proxy life moves through it
        self._aims: dict[str, _Aim] = {}  # job id -> its proxy's target, as last started
        self._bytes_seen: dict[int, tuple[int, int]] = {}
        self._probes = trio.CapacityLimiter(PROBE_LIMIT)
        self._asked = False  # a poll asked for a tending that has not begun yet

    # ------------------------------------------------------------ ports
    def free_port_index(self) -> int:
        used = {j.port_index for j in self.core.book if j.port_index is not None and not j.final}
        for index in range(self.core.port_count):
            if index not in used:
                return index
        raise ClusterUnavailable(f"all {self.core.port_count} interactive ports are in use (JARVICE_SLURM_PORT_COUNT)")

    # ------------------------------------------------------------ what upstream and admins see
    def status(self, job: Job) -> ProxyStatus | None:
        proxies = self.core.proxies
        if proxies is None or not job.interactive:
            return None
        return proxies.status(str(job.number))

    def url_of(self, name: str, jobid: str) -> str:
        """``info``'s URL: empty until the job's service is reachable through its proxy."""
        job = self.core.book.get(jobid)
        if job is None or job.name != name or JobState(job.state) is not JobState.PROXYING:
            return ""
        if self.closed(job) or phase_of(job.code, job.reason) is not Phase.RUNNING:
            return ""  # terminated (its proxy's stop may be retrying), or requeued: no URL to a dying service
        status = self.status(job)  # the proxy's own word, not a copy of it
        return status.url if status is not None and status.state is ProxyState.SERVING else ""

    @staticmethod
    def closed(job: Job) -> bool:
        """Terminated (or ended): no proxy again, though Slurm may show it running until KillWait ends it."""
        return job.proxy is not None and job.proxy.state == ProxyPhase.CLOSED

    def close(self, job: Job) -> None:
        """Upstream terminated the job, or it reached a final state: never a proxy again."""
        if job.proxy is not None:
            self.machine.close(job.proxy)

    def proxy_exited(self, key: str, exc: Exception, in_a_row: int) -> None:
        """A proxy process died on its own (local mode): logged with its job and counted like any failed effect.

        The backend restarts it (with backoff) by itself; the next tend sees its status meanwhile.
        """
        job = next((j for j in self.core.book if j.interactive and str(j.number) == key and not j.final), None)
        self.core.supervisor.failed("proxy process", job.name if job else "", job.jobid if job else "", exc, in_a_row)

    # ------------------------------------------------------------ tending
    def after_poll(self) -> None:
        """Tend once more after this poll: now, or right after a tending still under way (which may have read
        the jobs before this poll changed them); never two at once."""
        self._asked = True
        self.core.supervisor.spawn("tend proxies", "", "", self._tend_while_asked, key="tend", attempts=1)

    async def _tend_while_asked(self) -> None:
        while self._asked:
            self._asked = False
            await self.tend()

    async def tend(self) -> None:
        """After each poll: a proxy for every running interactive job whose service answers.

        Jobs are tended concurrently (at most ``PROBE_LIMIT`` at once), each under the supervisor's
        guard: one job's failure is logged with it and counted, and the others are still tended.
        """
        interactive = [job for job in self.core.book if job.interactive and not job.final]
        async with trio.open_nursery() as nursery:
            for job in interactive:
                if job.port_index is not None:
                    nursery.start_soon(self._tend_guarded, job)
        live = {job.jobid for job in interactive}
        for jobid in set(self._aims) - live:
            del self._aims[jobid]
        self._count_traffic(interactive)

    async def _tend_guarded(self, job: Job) -> None:
        async with self._probes:
            await self.core.supervisor.guard("tend proxy", job.name, job.jobid, partial(self._tend, job))

    async def _tend(self, job: Job) -> None:
        proxies, life = self.core.proxies, job.proxy
        assert proxies is not None and life is not None
        key = str(job.number)
        status = proxies.status(key)
        serving = status is not None and status.state is ProxyState.SERVING
        pending_again = phase_of(job.code, job.reason) in (Phase.PENDING, Phase.HELD)  # requeued by Slurm
        stopped = JobState(job.state) is JobState.PROXYING and (not serving or pending_again)
        if stopped:
            job.last_error = "requeued: pending again" if pending_again else (
                status.error if status and status.error else "its proxy stopped")
            self.core.book.machine.fire(job, "proxy_down")
        if stopped or pending_again:  # pending again: also a wait or a start it had without proxying yet
            self.machine.dropped(life)
        if pending_again:
            self._aims.pop(job.jobid, None)  # its node may change, or its address: read again when it runs
            return
        if JobState(job.state) is not JobState.RUNNING and JobState(job.state) is not JobState.PROXYING:
            return
        if not job.nodes or not self.machine.may_try(life, self.core.clock()):
            # closed: a terminated job's service may answer until Slurm's KillWait ends it, not to users;
            # or given up (its info says why); or waiting out its backoff
            return
        if status is not None and status.state is ProxyState.FAILED:
            await self._failed(job, status.error, permanent=True)
            return
        try:
            aim = await self._aim(job)
        except DownstreamError as exc:
            await self._failed(job, f"the address of node {job.nodes[0]}: {exc}", permanent=False)
            return
        if serving and self._aims.get(job.jobid) == aim:
            self._serving(job, status)
            return
        try:
            answered = self.core.tunnels is None or await probe_service(self.core.tunnels, aim.host, aim.port)
        except ForwardingProhibited as exc:  # the login node's sshd will not forward there: no wait fixes that
            await self._failed(job, f"the login node refuses to forward to node {aim.node} ({exc}): check sshd's "
                                    "AllowTcpForwarding and, for a restricted key, its permitopen", permanent=True)
            return
        if not answered:
            if self.machine.unanswered(life):  # once, at SILENT_PROBES
                job.last_error = f"its service on {aim.node} port {aim.port} has not answered {SILENT_PROBES} probes"
                log.warning("job %s (%s): %s", job.jobid, job.name, job.last_error, extra=job_extra(job.name, job.jobid))
            return  # the job's web server is not listening yet: the URL stays empty
        try:
            status = await proxies.start(ProxyTarget(key=key, host=aim.host, port=aim.port))
        except DownstreamError as exc:
            await self._failed(job, str(exc), permanent=isinstance(exc, InvalidRequest))
            return
        if status.state is ProxyState.FAILED:
            await self._failed(job, status.error, permanent=True)
            return
        self._aims[job.jobid] = aim
        if status.state is ProxyState.SERVING:
            self._serving(job, status)
        else:
            self.machine.started(life)

    async def _aim(self, job: Job) -> _Aim:
        """The job's first node and service port; the node's address read again when the job (re)started there."""
        node = job.nodes[0]
        port = self.core.script_env.service_port + (job.port_index or 0)
        known = self._aims.get(job.jobid)
        if known is not None and known.node == node:
            return _Aim(node, known.host, port)
        # on upstream's channel budget: many jobs starting at once must not take the poller's SSH channel
        return _Aim(node, await self.core.upstream(self.core.slurm.node_address, node), port)

    def _serving(self, job: Job, status: ProxyStatus) -> None:
        assert job.proxy is not None
        if not self.machine.served(job.proxy):
            return  # closed while it started: never proxying
        if JobState(job.state) is JobState.RUNNING:
            job.last_error = ""
            self.core.book.machine.fire(job, "proxy_up")
            log.info("job %s (%s): interactive service at %s", job.jobid, job.name, status.url,
                     extra=job_extra(job.name, job.jobid))

    async def _failed(self, job: Job, why: str, *, permanent: bool) -> None:
        """Count a failure that waiting will not fix; back off either way (never a retry every poll)."""
        life = job.proxy
        assert life is not None
        if not self.machine.failed(life, permanent=permanent, now=self.core.clock(), backoff=self.core.supervisor.delay):
            return  # closed while it started: its proxy is being stopped already
        if permanent:
            job.last_error = f"proxy failed ({life.failures}/{PROXY_RETRIES}): {why}"
            self._aims.pop(job.jobid, None)
            # started afresh next time: a backend that gave up keeps its failed proxy until it is stopped
            await self.core.supervisor.guard("stop proxy", job.name, job.jobid,
                                             partial(self.core.proxies.stop, str(job.number)))  # type: ignore[union-attr]
        else:
            job.last_error = f"proxy not started yet (retried): {why}"
        log.warning("job %s (%s): %s", job.jobid, job.name, job.last_error, extra=job_extra(job.name, job.jobid))

    def _count_traffic(self, jobs: list[Job]) -> None:
        """Proxies count their own bytes; the metrics get what moved since the last look."""
        metrics, open_now, seen = self.core.metrics, 0, {}
        for job in jobs:
            status = self.status(job)
            if status is None:
                continue
            open_now += status.connections
            seen_up, seen_down = self._bytes_seen.get(job.number, (0, 0))
            metrics.proxy_bytes_up(max(0, status.bytes_up - seen_up))
            metrics.proxy_bytes_down(max(0, status.bytes_down - seen_down))
            seen[job.number] = (status.bytes_up, status.bytes_down)
        self._bytes_seen = seen  # ended jobs drop out
        metrics.proxy_connections.set(open_now)

    # ------------------------------------------------------------ stopping
    def stop_later(self, number: int, jobid: str, name: str) -> None:
        """Stop a job's proxy off the caller's path, retried until it is gone (/gc also collects it)."""
        proxies = self.core.proxies
        if proxies is not None:
            self.core.supervisor.spawn("stop proxy", name, jobid, partial(proxies.stop, str(number)),
                                       key=f"stop-proxy:{number}")

    async def stop_now(self, job: Job) -> None:
        """Stop a job's proxy before answering (/terminate: users lose it at once); retried if that fails."""
        proxies = self.core.proxies
        if proxies is not None:
            await self.core.supervisor.now_or_later("stop proxy", job.name, job.jobid,
                                                    partial(proxies.stop, str(job.number)),
                                                    key=f"stop-proxy:{job.number}")

    async def collect(self) -> None:
        """/gc: proxies whose job is gone (from before a restart, or a stop that failed); each stop guarded."""
        proxies = self.core.proxies
        assert proxies is not None
        wanted = {str(j.number) for j in self.core.book if j.interactive and not j.final}
        for key in sorted(await proxies.keys() - wanted):
            log.info("gc: removing the proxy of job number %s, which no tracked job needs", key)
            await self.core.supervisor.guard("stop proxy", "", "", partial(proxies.stop, key))
