"""The /metrics numbers, as a Prometheus scrape reads them (parsed with prometheus_client's own parser).

HTTP requests go through a real hypercorn socket; jobs come from a real JobBook.
The remote command runner is a stand-in at the transport boundary (it answers
like a login node after a trio sleep), because the point here is the timing and
labelling, which the real cluster would make slow and nondeterministic.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from quart import Response, request
from quart_trio import QuartTrio

from adapters.errors import ClusterUnavailable
from adapters.jobscript import ScriptEnvironment
from adapters.slurm.twin import Fault, SimulatedSlurm
from adapters.ssh import CommandResult
from daemon.metrics import Metrics, command_label, instrument
from daemon.service import Downstream
from statemachines.book import JobBook
from tests.browser.serving import serve_app


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_jobs_by_state_are_read_from_the_book_at_scrape_time() -> None:
    book = JobBook()
    metrics = Metrics(version="1.2.3", jobs=book.counts)
    assert value(scrape(metrics), "slurm_downstream_jobs", state="submitted") == 0
    for i in range(3):
        job = book.new(f"job{i}", i)
        book.submitted(job, str(100 + i), held=i == 2, now=0.0)
    book.new("job9", 9)  # accepted, sbatch not answered yet
    samples = scrape(metrics)
    assert value(samples, "slurm_downstream_jobs", state="submitted") == 2
    assert value(samples, "slurm_downstream_jobs", state="held") == 1
    assert value(samples, "slurm_downstream_jobs", state="queued") == 1
    assert value(samples, "slurm_downstream_jobs", state="completed") == 0
    assert value(samples, "slurm_downstream_build_info", version="1.2.3") == 1


@dataclass
class FakeSSH:
    """The three attributes of adapters.ssh.SSHClient the collector reads."""

    connected: bool = True
    connects: int = 1
    commands: int = 0


def test_ssh_reconnects_and_link_state() -> None:
    ssh = FakeSSH()
    metrics = Metrics()
    assert value(scrape(metrics), "slurm_downstream_ssh_connected") is None  # no SSH client given yet
    metrics.ssh = ssh
    assert value(scrape(metrics), "slurm_downstream_ssh_reconnects_total") == 0
    ssh.connected, ssh.connects, ssh.commands = False, 3, 42
    samples = scrape(metrics)
    assert value(samples, "slurm_downstream_ssh_connected") == 0
    assert value(samples, "slurm_downstream_ssh_reconnects_total") == 2
    assert value(samples, "slurm_downstream_ssh_commands_total") == 42


@pytest.mark.parametrize(("command", "label"), [
    ("SLURM_TIME_FORMAT=standard squeue -h -t all -u jarvice -o '%A'", "squeue"),
    ("sbatch --parsable --job-name=jarvice_x", "sbatch"),
    ("SLURM_TIME_FORMAT=standard sacct -c -n -X -j 12", "sacct"),
    ("scancel -n jarvice_x 12", "scancel"),
    ("scontrol show job 12", "scontrol"),
    ("test -f '/s/.jarvice/12.out' && tail -n 100 '/s/.jarvice/12.out' | tail -c 1048576", "tail"),
    ("/usr/bin/sbatch --version", "sbatch"),
    ("sh -s", "sh"),
    ("printf %s \"$HOME\"", "other"),
    ("echo $(id) && python3 -c 'x'", "other"),
])
def test_command_labels_are_bounded(command: str, label: str) -> None:
    assert command_label(command) == label


class LoginNode:
    """Answers like a login node: each command takes ``delay`` seconds; some fail."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
        await trio.sleep(self.delay)
        if command.startswith("scancel"):
            return CommandResult(1, "", "scancel: error: Invalid job id specified")
        if command.startswith("sacct"):
            raise ClusterUnavailable("command timed out")
        return CommandResult(0, "123\n", "")


async def test_slurm_command_latency_and_failures_by_command() -> None:
    metrics = Metrics()
    runner = metrics.timed(LoginNode(delay=0.02))
    for _ in range(3):
        assert (await runner.run("sbatch --parsable")).stdout == "123\n"
    await runner.run("squeue -h")
    assert not (await runner.run("scancel 5")).ok
    with pytest.raises(ClusterUnavailable):
        await runner.run("sacct -j 5")
    samples = scrape(metrics)
    assert value(samples, "slurm_downstream_slurm_command_seconds_count", command="sbatch") == 3
    assert value(samples, "slurm_downstream_slurm_command_seconds_sum", command="sbatch") >= 0.06
    assert value(samples, "slurm_downstream_slurm_command_seconds_bucket", command="sbatch", le="0.01") == 0
    assert value(samples, "slurm_downstream_slurm_command_seconds_bucket", command="sbatch", le="0.05") == 3
    assert value(samples, "slurm_downstream_slurm_command_seconds_count", command="squeue") == 1
    assert value(samples, "slurm_downstream_slurm_command_failures_total", command="scancel") == 1
    assert value(samples, "slurm_downstream_slurm_command_failures_total", command="sacct") == 1
    assert value(samples, "slurm_downstream_slurm_command_failures_total", command="sbatch") is None
    assert runner.delay == 0.02  # other attributes are the wrapped runner's


def test_polls_submits_and_proxies() -> None:
    metrics = Metrics()
    metrics.observe_poll(0.03)
    metrics.observe_poll(0.2)
    metrics.observe_poll(None)
    metrics.submits.inc()
    metrics.submit_failures.inc()
    metrics.proxy_connections.inc()
    metrics.proxy_connections.inc()
    metrics.proxy_connections.dec()
    metrics.proxy_bytes_up(100)
    metrics.proxy_bytes_down(5000)
    metrics.proxy_bytes_down(1)
    samples = scrape(metrics)
    assert value(samples, "slurm_downstream_poll_seconds_count") == 2
    assert value(samples, "slurm_downstream_poll_seconds_bucket", le="0.05") == 1
    assert value(samples, "slurm_downstream_poll_failures_total") == 1
    assert value(samples, "slurm_downstream_submits_total") == 1
    assert value(samples, "slurm_downstream_submit_failures_total") == 1
    assert value(samples, "slurm_downstream_proxy_connections") == 1
    assert value(samples, "slurm_downstream_proxy_bytes_total", direction="up") == 100
    assert value(samples, "slurm_downstream_proxy_bytes_total", direction="down") == 5001


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.submits.inc()
    assert value(scrape(a), "slurm_downstream_submits_total") == 1
    assert value(scrape(b), "slurm_downstream_submits_total") == 0


async def test_http_requests_are_timed_by_route_rule_and_status(nursery: trio.Nursery) -> None:
    app = QuartTrio("t")

    @app.before_request
    async def authenticate() -> Response | None:  # registered before instrument(): its 401s are still timed
        return Response("no", status=401) if request.path == "/secret" else None

    metrics = Metrics()
    instrument(app, metrics)

    @app.get("/jobs/<name>")
    async def job(name: str) -> str:
        await trio.sleep(0.01)
        return name

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("bug")

    url = await serve_app(nursery, app)
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/jobs/a")).text == "a"
        assert (await client.get("/jobs/b%20c")).text == "b c"
        assert (await client.get("/no/such/page")).status_code == 404
        assert (await client.post("/jobs/a")).status_code == 405
        assert (await client.get("/secret")).status_code == 401
        assert (await client.get("/boom")).status_code == 500
    samples = scrape(metrics)
    count = "slurm_downstream_http_request_seconds_count"
    assert value(samples, count, endpoint="/jobs/<name>", status="200") == 2
    assert value(samples, "slurm_downstream_http_request_seconds_sum", endpoint="/jobs/<name>", status="200") >= 0.02
    assert value(samples, count, endpoint="unmatched", status="404") == 1
    assert value(samples, count, endpoint="unmatched", status="405") == 1
    assert value(samples, count, endpoint="unmatched", status="401") == 1  # auth answered before routing mattered
    assert value(samples, count, endpoint="/boom", status="500") == 1
    endpoints = {dict(labels).get("endpoint") for (name, labels) in samples if name == count}
    assert endpoints == {"/jobs/<name>", "unmatched", "/boom"}  # raw paths never become labels
    nursery.cancel_scope.cancel()


async def test_a_poll_with_unreadable_lines_counts_as_a_failed_poll_in_metrics_too() -> None:
    """The admin page and /metrics agree: such a snapshot is not fresh, so it is a failure in both."""
    twin = SimulatedSlurm()
    twin.populate(3, prefix="20261123-metrics-alice_m")
    downstream = Downstream(slurm=twin, script_env=ScriptEnvironment(scratch_dir="/tmp/twin"))
    await downstream.poll_once()
    twin.inject("squeue", Fault.GARBAGE)
    await downstream.poll_once()
    samples = scrape(downstream.metrics)
    assert downstream.status.failures == 1
    assert value(samples, "slurm_downstream_poll_failures_total") == 1


def test_the_process_itself_is_measured_for_admins() -> None:
    """Memory, CPU and garbage collections, read at scrape time (what bench/footprint.py measures, live)."""
    metrics = Metrics()
    first = scrape(metrics)
    before = value(first, "python_gc_collections_total", generation="2")
    hold = [bytearray(32 << 20)]  # 32 MiB more resident (zero-filled pages are touched by bytearray)
    gc.collect()
    samples = scrape(metrics)
    grown = samples[("process_resident_memory_bytes", ())] - first[("process_resident_memory_bytes", ())]
    assert grown >= 30 << 20, f"resident memory grew {grown} bytes, not the 32 MiB just allocated"
    assert samples[("process_cpu_seconds_total", ())] > 0
    assert value(samples, "python_gc_collections_total", generation="2") == before + 1
    del hold
