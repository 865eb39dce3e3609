"""Prometheus metrics: what an operator graphs and alerts on.

One ``Metrics`` object per daemon, on its own ``CollectorRegistry`` (never the
process-global one, so tests and several daemons in one process do not collide).
Counters that the daemon bumps are attributes; numbers that already live in
other objects (jobs per state in the book, the SSH client's connection count)
are read at scrape time through callables, so they can never drift from the
truth and cost nothing between scrapes.

Labels are bounded on purpose: Slurm commands by command name (a fixed set),
HTTP requests by route rule (``/request/<path:path>``, never the raw path),
proxy bytes by direction. A per-job label would grow without limit.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from quart import Quart, request, request_started

from adapters.errors import ClusterUnavailable
from adapters.ssh import CommandResult, CommandRunner, Shell, ShellOpener

PREFIX = "slurm_downstream"
# Slurm round trips are 2-100 ms on a healthy link; the tail is what matters
COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
KNOWN_COMMANDS = frozenset({
    "sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo", "srun",  # Slurm
    "tail", "find", "rm", "cat", "mkdir", "sh", "true", "socat",  # files, the probe, gc, tunnels
})
UNMATCHED = "unmatched"  # the endpoint label of requests no route matched (404, 405)
_SCOPE_KEY = "slurm_downstream.endpoint"
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class RestStats(Protocol):
    """What the collector reads of ``adapters.slurm.rest.RestSlurm``."""

    requests: int
    tokens: object


class SSHStats(Protocol):
    """What the collector reads of ``adapters.ssh.SSHClient`` at scrape time."""

    connected: bool
    connects: int
    commands: int


def command_label(command: str) -> str:
    """The metric label of a remote command line: its first known program, else ``other``.

    ``SLURM_TIME_FORMAT=standard squeue ...`` is ``squeue``; ``test -f x && tail ...``
    is ``tail``; the compound inspect line (squeue; cat; sacct) counts as ``squeue``.
    """
    for token in command.split():
        if _ASSIGNMENT.match(token):
            continue
        name = token.rsplit("/", 1)[-1]
        if name in KNOWN_COMMANDS:
            return name
    return "other"


class _Live(Collector):
    """Numbers owned by other objects, read when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        m = self.metrics
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs tracked by the daemon, by state", labels=["state"])
        for state, count in sorted((m.jobs() if m.jobs else {}).items()):
            jobs.add_metric([state], count)
        yield jobs
        if m.ssh is not None:
            yield GaugeMetricFamily(f"{PREFIX}_ssh_connected", "1 while the SSH connection to the login node is up",
                                    value=1 if m.ssh.connected else 0)
            yield CounterMetricFamily(f"{PREFIX}_ssh_reconnects", "SSH connections opened after the first one",
                                      value=max(0, m.ssh.connects - 1))
            yield CounterMetricFamily(f"{PREFIX}_ssh_commands", "Remote commands completed over SSH",
                                      value=m.ssh.commands)
        if m.rest is not None:
            yield CounterMetricFamily(f"{PREFIX}_slurmrestd_requests", "Requests sent to slurmrestd",
                                      value=m.rest.requests)
            fetched = getattr(m.rest.tokens, "fetch_count", None)
            if fetched is not None:
                yield CounterMetricFamily(f"{PREFIX}_token_fetches", "Service tokens fetched from the token endpoint",
                                          value=fetched)
        if m.refused is not None:
            yield CounterMetricFamily(f"{PREFIX}_transitions_refused", "Illegal job state transitions refused",
                                      value=m.refused())

    def describe(self) -> Any:
        return []  # collected on demand; no fixed description to register


class Metrics:
    """Every metric the daemon exposes, with named attributes for the code that counts.

    ``jobs`` (state -> count, e.g. ``book.counts``), ``ssh`` (an SSHClient) and
    ``refused`` (e.g. ``lambda: book.machine.rejected``) may be given later by
    assignment, once the objects exist.
    """

    def __init__(self, *, version: str = "", jobs: Callable[[], Mapping[str, int]] | None = None,
                 ssh: SSHStats | None = None, refused: Callable[[], int] | None = None) -> None:
        self.jobs = jobs
        self.ssh = ssh
        self.rest: RestStats | None = None  # slurmrestd_client: its request count (and its tokens' fetches)
        self.refused = refused
        r = self.registry = CollectorRegistry()
        # the process as admins size it: resident memory, CPU, open files; and the collector's runs
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        Gauge(f"{PREFIX}_build_info", "The daemon's version", ["version"], registry=r).labels(version or "unknown").set(1)
        self.submits = Counter(f"{PREFIX}_submits", "Jobs submitted to Slurm (sbatch answered with a job id)", registry=r)
        self.submits_by_identity = Counter(
            f"{PREFIX}_submits_by_identity",
            "Jobs submitted, by whose credentials: the service identity's, or the JARVICE user's own (slurmrestd)",
            ["identity"], registry=r)
        self.submit_failures = Counter(f"{PREFIX}_submit_failures",
                                       "Submits that did not reach Slurm (refused by sbatch, cluster unavailable)",
                                       registry=r)
        self.slurm_command_seconds = Histogram(f"{PREFIX}_slurm_command_seconds",
                                               "Round trip of one remote command, by program",
                                               ["command"], buckets=COMMAND_BUCKETS, registry=r)
        self.slurm_command_failures = Counter(f"{PREFIX}_slurm_command_failures",
                                              "Remote commands that exited non-zero or could not run, by program",
                                              ["command"], registry=r)
        self.poll_seconds = Histogram(f"{PREFIX}_poll_seconds", "Duration of successful squeue polls",
                                      buckets=COMMAND_BUCKETS, registry=r)
        self.poll_failures = Counter(f"{PREFIX}_poll_failures", "Polls that could not ask Slurm", registry=r)
        self.request_seconds = Histogram(f"{PREFIX}_http_request_seconds",
                                         "Upstream API requests, by route rule and status",
                                         ["endpoint", "status"], buckets=REQUEST_BUCKETS, registry=r)
        self.proxy_connections = Gauge(f"{PREFIX}_proxy_connections", "User connections open through job proxies",
                                       registry=r)
        self.proxy_bytes = Counter(f"{PREFIX}_proxy_bytes", "Bytes carried by job proxies, by direction (up: user to job)",
                                   ["direction"], registry=r)
        self.effect_failures = Counter(f"{PREFIX}_effect_failures",
                                       "Background work for a job that failed and will be retried, by effect and "
                                       "kind (error: the cluster or a backend could not do it; bug: anything else)",
                                       ["effect", "kind"], registry=r)
        r.register(_Live(self))

    # ------------------------------------------------------------ helpers for the counting code
    def observe_poll(self, seconds: float | None) -> None:
        """A poll finished: its duration, or None when it failed."""
        if seconds is None:
            self.poll_failures.inc()
        else:
            self.poll_seconds.observe(seconds)

    def proxy_bytes_up(self, n: int) -> None:
        self.proxy_bytes.labels("up").inc(n)

    def proxy_bytes_down(self, n: int) -> None:
        self.proxy_bytes.labels("down").inc(n)

    def timed(self, runner: CommandRunner) -> TimedRunner:
        return TimedRunner(runner, self)

    @contextlib.contextmanager
    def timing(self, command: str) -> Iterator[Callable[[bool], None]]:
        """Time one remote command (or shell program) under its program's label; count its failure.

        Yields ``failed(bool)`` for an answer that came back but says the command failed.
        """
        label = command_label(command)
        started = time.perf_counter()

        def failed(yes: bool = True) -> None:
            if yes:
                self.slurm_command_failures.labels(label).inc()

        try:
            yield failed
        except ClusterUnavailable:
            failed()
            raise
        finally:
            self.slurm_command_seconds.labels(label).observe(time.perf_counter() - started)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class TimedRunner:
    """A CommandRunner that times every command by program; otherwise the runner it wraps.

    Wrap the SSH client once, where the Slurm client is built, and every Slurm
    command is measured with no change to the adapters. Attribute reads fall
    through, so ``connected``/``last_error`` of the SSH client stay visible.
    """

    def __init__(self, runner: CommandRunner, metrics: Metrics) -> None:
        self.inner = runner
        self.metrics = metrics

    async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
        with self.metrics.timing(command) as failed:
            result = await self.inner.run(command, stdin=stdin, timeout=timeout)
            failed(not result.ok)
        return result

    async def open_shell(self) -> Shell:
        """The wrapped runner's kept shell, its programs timed like commands."""
        return _TimedShell(await cast(ShellOpener, self.inner).open_shell(), self.metrics)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _TimedShell:
    def __init__(self, shell: Shell, metrics: Metrics) -> None:
        self.inner = shell
        self.metrics = metrics

    async def exchange(self, program: str, *, end: str, timeout: float | None = None) -> str:
        with self.metrics.timing(program):
            return await self.inner.exchange(program, end=end, timeout=timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


def instrument(app: Quart, metrics: Metrics) -> None:
    """Time every HTTP request of ``app``, labelled by route rule and status.

    The timer wraps the ASGI app, so requests that an earlier ``before_request``
    hook answers (401) and unhandled errors (500) are measured too; the route rule
    is recorded on Quart's ``request_started`` signal, which every request sends
    before its hooks run. Call it once, at any point after the app is created.
    """
    inner = app.asgi_app

    async def timed_app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        started = time.perf_counter()
        status, observed = 500, False

        def observe() -> None:
            nonlocal observed
            if not observed:
                observed = True
                metrics.request_seconds.labels(scope.get(_SCOPE_KEY, UNMATCHED), str(status)).observe(
                    time.perf_counter() - started)

        async def send_and_observe(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                observe()  # before the last byte leaves: a client never sees a response not yet counted
            await send(message)

        try:
            await inner(scope, receive, send_and_observe)
        finally:
            observe()  # no complete response (the client left, or the app crashed)

    def record_endpoint(sender: Quart, **_: Any) -> None:
        rule = request.url_rule
        request.scope[_SCOPE_KEY] = rule.rule if rule is not None else UNMATCHED

    # request_started fires before any before_request hook, even when one of them answers
    request_started.connect(record_endpoint, app, weak=False)
    app.asgi_app = timed_app  # type: ignore[method-assign]
