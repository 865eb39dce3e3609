"""Benchmark: the control plane at 1,000 jobs while four interactive jobs stream through their proxies.

The question (issue 13): do the proxies' bytes slow the control plane? (They shared
the daemon's process and GIL until each job's proxy became a process of its own.) Do upstream's
``/runstatus`` p99 and the poll's freshness stay within their targets while
interactive users download as fast as they can?

One real daemon process (the run's main ``slurm-downstream serve``, proxies in
local mode, as shipped) with a 2 s poll tracks 1,000 real Slurm jobs (held ones, submitted
through ``/submit``; it adopts any others of the run) plus four real interactive
jobs (tests/support/webjob.py submitted through ``/submit`` as upstream does; the
daemon asks for whole nodes for them, so root's scontrol makes them one-core jobs
before they start: the test cluster has two nodes, and freshness needs room);
the daemon itself starts their proxies (in local mode, a ``slurm-downstream proxy``
process per job, each with its own SSH connection). Then, twice (without, then with, the streaming load), one after the other:

* ``/runstatus`` for every tracked job on upstream's timer, 250 calls/s through 8
  keep-alive connections (``bench.upstream_load``, as the 1b table of api_latency);
* state freshness as ``bench.freshness`` defines it (real short jobs released one
  by one; Slurm's change vs the daemon's lists), at the daemon's 2 s poll (not
  during the paced calls: its watcher lists the 1,000 jobs in a tight loop, which
  no upstream does).

The streaming load: four load-generator processes (``bench.proxy_throughput``'s
client), one per interactive job's proxy URL, each downloading ``GET /blob`` of
STREAM_BYTES again and again for the whole window. MB/s = 10^6 bytes/s per
completed download. Targets: /runstatus p99 < 10 ms; freshness p99 < poll interval + 1 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

from bench import freshness, hosts, proxy_throughput, upstream_load
from bench.cluster import cancel, local_env, on_login
from bench.context import CONCURRENCY, Context, JobRef, Live
from bench.daemon_proc import job_name
from bench.stats import median_of, show
from tests.support.upstream import submit_args
from tests.support.webjob import upstream_body

JOBS = 1000
STREAMS = 4
POLL_INTERVAL = 2.0
RATE = 250  # /runstatus calls per second, every tracked job every JOBS / RATE seconds
WINDOW = 16.0  # seconds of paced /runstatus per phase (freshness follows, about as long)
STREAM_BYTES = 256 * proxy_throughput.MiB  # long downloads: the gaps between them (a process start) stay small
URL_TIMEOUT = 120.0
P99_TARGET_MS = 10.0
# BENCH_STREAM_NICE=19: the load generators (users' browsers, elsewhere in production) at that nice value, so that on
# a machine of 2 cores they do not take the daemon's CPU; 0 (default): as the runs before it
STREAM_NICE = int(os.environ.get("BENCH_STREAM_NICE", "0"))


class _Same:
    """``ctx`` for bench.freshness.measure, made to measure ``live`` (its daemon of any key) and leave it running."""

    def __init__(self, ctx: Context, live: Live) -> None:
        self._ctx = ctx
        self._live = live

    def __getattr__(self, name: str) -> object:
        return getattr(self._ctx, name)

    async def daemon(self, key: str, **_: object) -> Live:
        return self._live

    async def stop(self, key: str) -> None:
        pass


async def _interactive(ctx: Context, live: Live) -> list[tuple[JobRef, str]]:
    """STREAMS interactive jobs through /submit, and each one's proxy URL once the daemon serves it."""
    jobs = []
    for _ in range(STREAMS):
        number = ctx.next_number()
        name = job_name(ctx.run, "i", number)
        response = await live.proc.upstream.post(
            "/submit", submit_args(name, number, upstream_body(), interactive=True, held=True))
        if response.status_code != 200:
            raise RuntimeError(f"/submit {name}: {response.status_code} {response.text[:300]}")
        live.numbers[name] = number
        jobid = str(response.json()[0])
        # the daemon asks for whole nodes for interactive jobs; the test cluster has two, and the
        # freshness jobs need room too: one core each (root's scontrol, before the job starts)
        for command in (("scontrol", "update", f"jobid={jobid}", "OverSubscribe=yes"), ("scontrol", "release", jobid)):
            await trio.run_process(on_login(*command), env=local_env(), capture_stdout=True, capture_stderr=True)
        jobs.append(JobRef(name, number, jobid))
    urls = []
    with trio.fail_after(URL_TIMEOUT):
        for job in jobs:
            path = f"/request/{job.name}/{job.number}/{job.jobid}/info"
            while not (url := (await live.proc.upstream.post(path, {"qs": {}})).json()["url"]):
                await trio.sleep(0.3)
            urls.append(url)
    return list(zip(jobs, urls, strict=True))


async def _stream(url: str, rates: list[float], moved: list[int]) -> None:
    """Download from ``url`` again and again (a separate process each time) until cancelled."""
    port = urlsplit(url).port
    assert port is not None
    while True:
        r = await proxy_throughput._load("127.0.0.1", port, None, "download", STREAM_BYTES,  # noqa: SLF001 - its load generator
                                         nice=STREAM_NICE)
        if r["bytes"] != STREAM_BYTES:
            raise RuntimeError(f"download through {url} moved {r['bytes']} bytes, not {STREAM_BYTES}")
        rates.append(r["bytes"] / r["seconds"] / 1e6)
        moved.append(r["bytes"])


def _busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat (idle and iowait are not busy)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


async def _phase(ctx: Context, live: Live, active: list[JobRef], urls: list[str], seed: int) -> dict:
    """Paced /runstatus, then freshness; with the streams running throughout when ``urls`` is not empty."""
    calls: list[Callable[[], Awaitable[httpx.Response]]] = [
        lambda job=job: live.proc.upstream.post("/runstatus", job.args) for job in active]
    out: dict = {}
    rates: list[float] = []
    moved: list[int] = []

    async def paced() -> None:
        await upstream_load.drive(calls[:200], period=200 / RATE, window=0.5, concurrency=CONCURRENCY)  # warm-up
        out["runstatus"] = await upstream_load.drive(calls, period=len(calls) / RATE, window=WINDOW,
                                                     concurrency=CONCURRENCY)

    async def fresh() -> None:
        out["freshness"] = await freshness.measure(_Same(ctx, live), live.poll_interval, seed)  # type: ignore[arg-type]

    cpu0, t0, busy0 = live.proc.cpu_seconds(), time.perf_counter(), _busy()
    kids0 = live.proc.children_cpu_seconds()
    async with trio.open_nursery() as outer:
        for url in urls:
            outer.start_soon(_stream, url, rates, moved)
        if urls:
            await trio.sleep(3.0)  # the streams under way before measuring
            cpu0, t0, busy0 = live.proc.cpu_seconds(), time.perf_counter(), _busy()
            kids0 = live.proc.children_cpu_seconds()
        await paced()  # one after the other: freshness's watcher calls /queued and /running in a tight loop
        await fresh()
        cpu1, t1, busy1 = live.proc.cpu_seconds(), time.perf_counter(), _busy()
        kids1 = live.proc.children_cpu_seconds()
        outer.cancel_scope.cancel()
    out["seconds"] = t1 - t0
    out["daemon_cpu_percent"] = 100 * (cpu1 - cpu0) / (t1 - t0)
    out["proxy_processes_cpu_percent"] = 100 * (kids1 - kids0) / (t1 - t0)
    out["machine_busy_percent"] = 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    out["streams"] = len(urls)
    out["downloads_completed"] = len(rates)
    out["downloaded_MB"] = sum(moved) / 1e6
    out["stream_median_MBps"] = median_of(rates) if rates else None
    out["streams_total_MBps"] = (median_of(rates) * len(urls)) if rates else None
    return out


def _print(r: dict) -> None:
    target_fresh = (POLL_INTERVAL + 1) * 1000
    rows = []
    for label, p in (("no streams", r["quiet"]), (f"{STREAMS} streams flat out", r["loaded"])):
        rs, fr = p["runstatus"], p["freshness"]
        rows.append([label, rs["demanded_per_s"], rs["achieved_per_s"], rs["response_median_ms"], rs["response_p99_ms"],
                     rs["errors"], fr["all"]["median"], fr["all"]["p99"], fr["all"]["n"], p["stream_median_MBps"],
                     p["streams_total_MBps"], p["daemon_cpu_percent"], p.get("proxy_processes_cpu_percent", 0.0),
                     p["machine_busy_percent"]])
    show(f"interactive load: the control plane at {r['jobs']:,} jobs while {STREAMS} proxies stream",
         ["load", "/runstatus asked/s", "answered/s", "median ms", "p99 ms", "errors", "freshness median ms",
          "freshness p99 ms", "changes", "MB/s per stream", "MB/s all streams", "daemon CPU %", "proxy processes CPU %",
          "machine busy %"], rows, [
             f"{r['source']}",
             r["placement"],
             f"/runstatus: every tracked job on upstream's timer, {RATE}/s through {CONCURRENCY} keep-alive connections "
             f"for {WINDOW:g} s, from the call's scheduled time to its answer (target p99 < {P99_TARGET_MS:g} ms)",
             f"freshness: bench/freshness.py at the daemon's {POLL_INTERVAL:g} s poll (target p99 < {target_fresh:.0f} ms), "
             "measured after the paced calls, the streams still running",
             f"streams: {STREAMS} load-generator processes (bench/proxy_throughput.py's client, nice {STREAM_NICE}), "
             "each downloading "
             f"GET /blob of {STREAM_BYTES // proxy_throughput.MiB} MiB again and again through one interactive job's "
             "proxy URL (the daemon's proxy processes); MB/s = 10^6 bytes/s, median of the completed downloads",
             "daemon CPU %: user + system CPU of the daemon process over both measurements (100 = one core); proxy processes "
             "CPU %: of its children, the same way (local mode's proxies; 0 when they ran in the daemon); machine busy %: "
             "all CPUs (100 = every core busy), from /proc/stat, same span",
             f"targets met: {'yes' if r['met'] else 'NO'}"])


async def run(ctx: Context) -> dict:
    # the run's main daemon (default 2 s poll): in a whole run it already tracks the 1,000 jobs of the stages before
    live = await ctx.daemon("main")
    if live.poll_interval != POLL_INTERVAL:
        raise RuntimeError(f"the main daemon polls every {live.poll_interval:g} s, not {POLL_INTERVAL:g} s")
    interactive: list[tuple[JobRef, str]] = []
    measured: dict[str, dict] = {}
    try:
        interactive = await _interactive(ctx, live)
        active = await ctx.ensure_active(live, JOBS)
        source = (f"{len(active):,} real Slurm jobs tracked by a real daemon process ({len(active) - STREAMS:,} "
                  f"held/pending, {STREAMS} running interactive jobs with their proxies), polled over SSH every "
                  f"{POLL_INTERVAL:g} s")
        print(f"   {source}; proxy URLs {', '.join(u for _, u in interactive)}", flush=True)
        for name in hosts.PLACEMENTS:
            with hosts.placed(name, live.proc.pid) as placement:
                print(f"   {placement}", flush=True)
                quiet = await ctx.undisturbed(f"interactive load ({name}), no streams",
                                              lambda: _phase(ctx, live, active, [], 11))
                loaded = await ctx.undisturbed(f"interactive load ({name}), streaming",
                                               lambda: _phase(ctx, live, active, [u for _, u in interactive], 12))
            measured[name] = {"placement": placement, "quiet": quiet, "loaded": loaded}
    finally:
        if interactive:
            await trio.to_thread.run_sync(cancel, [j.jobid for j, _ in interactive])  # the main daemon stays

    def ok(p: dict) -> bool:
        return (p["runstatus"]["response_p99_ms"] < P99_TARGET_MS and not p["runstatus"]["errors"]
                and p["freshness"]["all"]["p99"] < (POLL_INTERVAL + 1) * 1000)

    common = {"jobs": len(active), "kind": "real Slurm", "source": source, "streams": STREAMS,
              "poll_interval_s": POLL_INTERVAL, "rate_per_s": RATE, "stream_bytes": STREAM_BYTES}
    for m in measured.values():
        m.update(common, met=ok(m["quiet"]) and ok(m["loaded"]), met_quiet=ok(m["quiet"]), met_loaded=ok(m["loaded"]))
        _print(m)
    result = {**common, "placements": measured}  # each placement is judged against the targets (bench summary)
    ctx.results["interactive_load"] = result
    return result
