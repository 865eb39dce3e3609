"""The one supervised path for the daemon's background work (kopf's handlers, on a trio nursery).

Everything the daemon does for a job off upstream's request path (resolve a vanished job,
tend or stop its proxy, remove its files) goes through here, so that one failure stays
that job's problem: it is logged with the job, counted in ``/metrics``
(``slurm_downstream_effect_failures_total{effect,kind}``), retried with backoff, and never
reaches the nursery, whose cancellation would end the daemon and every proxy session with it.

``kind`` tells an expected failure (``DownstreamError``: the cluster or the proxy backend
could not do it now) from a bug (anything else: logged with its traceback). Both retry:
a bug that a job's data triggers must not stop the other jobs, and may be transient too
(an untranslated Kubernetes error).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from adapters.errors import DownstreamError
from daemon.logs import job_extra
from daemon.metrics import Metrics

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[object]]


def failure_kind(exc: BaseException) -> str:
    """``error``: the cluster or a backend said no or could not be asked; ``bug``: anything else."""
    return "error" if isinstance(exc, DownstreamError) else "bug"


@dataclass
class Supervisor:
    """Runs effects in the daemon's nursery, isolated, with exponential backoff between attempts.

    ``backoff`` is the first delay, doubled per failure up to ``backoff_cap``. Effects with a
    ``key`` run at most once at a time: asking again while one runs (or waits to retry) is a no-op,
    so a poll that sees the same need again does not start a second copy.
    """

    metrics: Metrics
    backoff: float = 1.0
    backoff_cap: float = 60.0
    nursery: trio.Nursery | None = None
    _running: set[str] = field(default_factory=set)

    def delay(self, attempt: int) -> float:
        """The wait after the ``attempt``-th failure in a row (1-based): doubling, capped."""
        return min(self.backoff_cap, self.backoff * 2 ** min(max(attempt - 1, 0), 30))

    def busy(self, key: str) -> bool:
        return key in self._running

    def failed(self, effect: str, name: str, jobid: str, exc: BaseException, attempt: int = 1) -> None:
        """Log and count one failure of ``effect`` for a job (also for callers that retry by themselves)."""
        kind = failure_kind(exc)
        self.metrics.effect_failures.labels(effect, kind).inc()
        what = f"job {jobid or '-'} ({name or '-'}): {effect} failed (attempt {attempt})"
        if kind == "bug":
            log.error("%s: %r", what, exc, exc_info=exc, extra=job_extra(name, jobid))
        else:
            log.warning("%s: %s", what, exc, extra=job_extra(name, jobid))

    async def guard(self, effect: str, name: str, jobid: str, work: Work) -> bool:
        """Run ``work`` once, here; a failure is logged and counted, never raised. True if it succeeded."""
        try:
            await work()
        except Exception as exc:  # noqa: BLE001 - isolation is the point: Cancelled is a BaseException
            self.failed(effect, name, jobid, exc)
            return False
        return True

    def spawn(self, effect: str, name: str, jobid: str, work: Work, *, key: str | None = None,
              attempts: int | None = None, first_delay: bool = False) -> bool:
        """Run ``work`` in the background until it succeeds (or ``attempts`` ran); False if not started.

        Not started when no nursery runs yet (the daemon is not polling) or ``key`` is already busy.
        """
        if self.nursery is None or (key is not None and key in self._running):
            return False
        if key is not None:
            self._running.add(key)
        self.nursery.start_soon(self._retrying, effect, name, jobid, work, key, attempts, first_delay)
        return True

    async def now_or_later(self, effect: str, name: str, jobid: str, work: Work, *, key: str | None = None) -> bool:
        """Try ``work`` here (the caller sees its effect at once); if it fails, retry it in the background."""
        if key is not None and key in self._running:
            return False
        if await self.guard(effect, name, jobid, work):
            return True
        self.spawn(effect, name, jobid, work, key=key, first_delay=True)
        return False

    async def _retrying(self, effect: str, name: str, jobid: str, work: Work, key: str | None,
                        attempts: int | None, first_delay: bool) -> None:
        attempt, waited = 0, 0
        try:
            if first_delay:  # the caller's own attempt failed just now
                waited += 1
                await trio.sleep(self.delay(waited))
            while attempts is None or attempt < attempts:
                attempt += 1
                try:
                    await work()
                    return
                except Exception as exc:  # noqa: BLE001 - see guard
                    self.failed(effect, name, jobid, exc, attempt)
                if attempts is not None and attempt >= attempts:
                    return  # the caller retries (the next poll asks again): the key is free for it
                waited += 1
                await trio.sleep(self.delay(waited))
        finally:
            if key is not None:
                self._running.discard(key)
