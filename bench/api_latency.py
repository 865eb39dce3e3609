"""Benchmark 1: upstream API latency with 100, 1,000 and 10,000 tracked jobs.

A concurrent httpx client (8 connections, keep-alive, like an upstream with a
worker pool) calls the daemon's process over a real socket. Each endpoint gets
a warm-up, then three timed windows; median and p99 are taken over all their
calls together (each window's own figures are kept in ``reps``).

The 100- and 1,000-job tiers are real: held Slurm jobs on the test cluster,
polled by the real daemon over SSH. 10,000 real jobs would take minutes to
submit, so that tier runs the real daemon stack (Downstream, create_app,
hypercorn on a socket) over the simulated Slurm twin (``bench.simulated``).

Eight clients calling flat out is a saturation test: on two cores shared by the
client and the daemon, their latency is the queue of calls waiting for a core,
whatever the daemon does. So the 10,000-job tier also measures (a) the floor:
the same client against a bare hypercorn app that answers at once
(``bench.floor``), and (b) an upstream that polls every job on a timer, open
loop, through the same 8 connections (``bench.upstream_load``), at 250, 500 and
1,000 calls per second (every job every 40, 20 and 10 s).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import trio

from bench import upstream_load
from bench.context import CONCURRENCY, Context, JobRef, Live
from bench.stats import median_of, ms, show, summary, summary_ms
from daemon.heap import freeze_heap

REPS = 3
REP_SECONDS = {1: 0.8, CONCURRENCY: 1.0}  # per repetition: together they span more than one 2 s poll
MAX_CALLS = 5_000  # per repetition, whatever the speed
WARMUP = 40
FINISHED_REAL = 24  # jobs run to the end for /exitstatus in the real tiers
OPEN_LOOP_RATES = (250, 500, 1000)  # /runstatus calls per second asked by a timer-driven upstream
OPEN_LOOP_SECONDS = 5.0  # per rate: two and a half polls
FLOOR_ARGV = [sys.executable, "-m", "bench.floor"]

Call = Callable[[int], Awaitable[httpx.Response]]


async def measure(call: Call, *, concurrency: int = CONCURRENCY) -> dict:
    """Latency of ``call`` from ``concurrency`` clients over REPS timed windows (ms).

    Windows are timed, not counted, so that together they span at least one of
    the daemon's polls (a poll holds the trio loop while it applies the
    snapshot): the p99 is taken over all the windows' calls, so it includes
    what a poll does to requests; the per-window medians show the spread.
    """
    seconds = REP_SECONDS[concurrency]
    counter = iter(range(10**9))
    size = 0

    async def burst(count: int, deadline: float) -> list[float]:
        nonlocal size
        samples: list[float] = []
        issued = iter(range(count))

        async def worker() -> None:
            nonlocal size
            for _ in issued:
                if time.perf_counter() > deadline:
                    return
                i = next(counter)
                t0 = time.perf_counter()
                response = await call(i)
                samples.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.request.url.path}: {response.status_code} {response.text[:200]}")
                size = len(response.content)

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return samples

    freeze_heap()  # the client's own collector pauses are not the server's latency
    await burst(WARMUP, time.perf_counter() + seconds)
    pooled: list[float] = []
    runs = []
    for _ in range(REPS):
        started = time.perf_counter()
        samples = await burst(MAX_CALLS, started + seconds)
        wall = time.perf_counter() - started
        pooled += samples
        runs.append({**summary_ms(samples), "rps": len(samples) / wall})
    overall = summary(pooled)
    return {
        "requests": len(pooled),
        "median_ms": ms(overall["median"]),
        "p99_ms": ms(overall["p99"]),
        "max_ms": ms(overall["max"]),
        "rps": median_of(r["rps"] for r in runs),
        "answer_bytes": size,
        "reps": runs,
    }


async def measure_once_each(call: Call, count: int, concurrency: int = CONCURRENCY) -> dict:
    """Calls that only make sense once per job (the first /exitstatus): one sample each."""
    samples: list[float] = []
    todo = iter(range(count))

    async def worker() -> None:
        for i in todo:
            t0 = time.perf_counter()
            response = await call(i)
            samples.append(time.perf_counter() - t0)
            if response.status_code != 200:
                raise RuntimeError(f"{response.request.url.path}: {response.status_code} {response.text[:200]}")

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    wall = time.perf_counter() - started
    s = summary(samples)
    return {"requests": len(samples), "median_ms": ms(s["median"]), "p99_ms": ms(s["p99"]), "max_ms": ms(s["max"]),
            "rps": len(samples) / wall, "answer_bytes": None, "reps": [summary_ms(samples)]}


async def endpoints(ctx: Context, live: Live, active: list[JobRef], finished: list[JobRef]) -> dict[str, dict]:
    """Every read endpoint of the contract, one client at a time and then 8 at once."""
    upstream = live.proc.upstream
    client = live.proc.client
    rng = random.Random(6)
    picks = [rng.choice(active) for _ in range(20_000)]
    sample = (await upstream.post("/runstatus", picks[0].args)).json()
    if sample[2] is None:
        raise RuntimeError(f"/runstatus does not know job {picks[0]}: {sample}")
    calls: dict[str, Call] = {
        "GET /queued": lambda i: client.get("/queued"),
        "GET /running": lambda i: client.get("/running"),
        "POST /runstatus": lambda i: upstream.post("/runstatus", picks[i % len(picks)].args),
    }
    if finished:
        calls["POST /exitstatus (repeat)"] = lambda i: upstream.post("/exitstatus", finished[i % len(finished)].args)
    results: dict[str, dict] = {}
    if finished:  # collected first, so that the repeats find kept answers
        half = len(finished) // 2
        results["POST /exitstatus (first)"] = {
            "c1": await measure_once_each(lambda i: upstream.post("/exitstatus", finished[i].args), half, 1),
            "c8": await measure_once_each(lambda i: upstream.post("/exitstatus", finished[half + i].args),
                                          len(finished) - half, CONCURRENCY),
        }
    for name, call in calls.items():
        what = f"{name} with {len(active):,} jobs"
        results[name] = {
            "c1": await ctx.undisturbed(what, lambda call=call: measure(call, concurrency=1)),
            "c8": await ctx.undisturbed(what, lambda call=call: measure(call, concurrency=CONCURRENCY)),
        }
    return results


def _print(tier: dict) -> None:
    rows = [[name, r["c1"]["median_ms"], r["c1"]["p99_ms"], r["c8"]["median_ms"], r["c8"]["p99_ms"], r["c8"]["rps"],
             r["c8"]["answer_bytes"]] for name, r in tier["endpoints"].items()]
    notes = [tier["source"],
             f"client: httpx over a socket, 1 connection, then {CONCURRENCY} concurrent ones (keep-alive); median and p99 "
             f"of all calls in {REPS} windows of {REP_SECONDS[1]:g} s / {REP_SECONDS[CONCURRENCY]:g} s (so polls fall "
             f"inside them), after {WARMUP} warm-up calls",
             "/exitstatus (first): the call that collects a finished job (once per job, so one sample per job); "
             "(repeat): the kept answer",
             f"daemon process: VmRSS {tier['rss_kb'].get('VmRSS', 0) / 1024:.0f} MiB, "
             f"VmHWM {tier['rss_kb'].get('VmHWM', 0) / 1024:.0f} MiB"]
    show(f"1. upstream API latency, {tier['jobs']:,} tracked jobs ({tier['kind']})",
         ["endpoint", "1 client: median ms", "p99 ms", f"{CONCURRENCY} clients: median ms", "p99 ms", "calls/s",
          "answer bytes"], rows, notes)


def _print_open_loop(tier: dict) -> None:
    rows = [[r["demanded_per_s"], r["achieved_per_s"], r["response_median_ms"], r["response_p99_ms"],
             r["service_p99_ms"], r["backlog"], r["errors"]] for r in tier["open_loop"]]
    rows += [[f"floor: bare hypercorn app, {label}", r["rps"], r["median_ms"], r["p99_ms"], None, None, None]
             for label, r in tier["floor"].items()]
    show(f"1b. /runstatus at upstream's pace, {tier['jobs']:,} tracked jobs ({tier['kind']})",
         ["calls/s asked", "calls/s answered", "median ms", "p99 ms", "p99 ms once sent", "backlog", "errors"], rows, [
             f"open loop: every tracked job's /runstatus once per period, on a timer, through {CONCURRENCY} keep-alive "
             "connections; 'median/p99' run from the call's scheduled time to its answer (waiting for a free "
             f"connection included), over {OPEN_LOOP_SECONDS:g} s per rate, so two polls fall inside",
             "floor: the same client and concurrency flat out against a hypercorn app with no daemon behind it "
             "(bench/floor.py), to tell the daemon's share of the saturated 8-client figures from the client's and "
             "the server stack's on these two cores"])


async def open_loop(upstream, active: list[JobRef]) -> list[dict]:  # noqa: ANN001 - tests.support.upstream.Upstream
    """/runstatus for every active job, once per period, at each of OPEN_LOOP_RATES."""
    calls = [lambda job=job: upstream.post("/runstatus", job.args) for job in active]
    results = []
    for rate in OPEN_LOOP_RATES:
        await upstream_load.drive(calls[:200], period=200 / rate, window=0.5, concurrency=CONCURRENCY)  # warm-up
        results.append(await upstream_load.drive(calls, period=len(calls) / rate, window=OPEN_LOOP_SECONDS,
                                                 concurrency=CONCURRENCY))
    return results


async def floor(ctx: Context) -> dict[str, dict]:
    """The client's and the server stack's own latency: the same calls against bench.floor."""
    live = await ctx.daemon("floor", argv=FLOOR_ARGV)
    try:
        call = lambda i: live.proc.client.post("/runstatus", data={"args": "{}"})  # noqa: E731
        return {"1 client": await measure(call, concurrency=1), f"{CONCURRENCY} clients": await measure(call)}
    finally:
        await ctx.stop("floor")


def _record(ctx: Context, tier: dict) -> dict:
    ctx.results.setdefault("api_latency", {"tiers": []})["tiers"].append(tier)
    _print(tier)
    return tier


async def run(ctx: Context, jobs: int) -> dict:
    """A real tier: ``jobs`` active jobs in the real daemon (held ones submitted as needed)."""
    live = await ctx.daemon("main")
    finished = await ctx.finished(live, FINISHED_REAL)
    active = await ctx.ensure_active(live, jobs)
    tier = {"jobs": len(active), "kind": "real Slurm", "finished_for_exitstatus": len(finished),
            "source": f"{len(active)} real held/pending Slurm jobs on the test cluster, polled over SSH every "
                      f"{live.poll_interval:g}s; {len(finished)} more jobs ran to the end for /exitstatus",
            "endpoints": await endpoints(ctx, live, active, finished)}
    tier["rss_kb"] = live.proc.status()
    return _record(ctx, tier)


SIM_ARGV = [sys.executable, "-m", "bench.simulated"]


async def simulated(ctx: Context, jobs: int) -> Live:
    """The simulated-population daemon with ``jobs`` jobs (shared with the footprint benchmark)."""
    finished_file = ctx.work / f"sim-{jobs}-finished.json"
    return await ctx.daemon(f"sim{jobs}", argv=SIM_ARGV,
                            env={"BENCH_SIM_JOBS": str(jobs), "BENCH_SIM_FINISHED_FILE": str(finished_file)})


async def run_simulated(ctx: Context, jobs: int) -> dict:
    live = await simulated(ctx, jobs)
    active = await ctx.active(live)
    all_finished = [JobRef(*row) for row in json.loads((ctx.work / f"sim-{jobs}-finished.json").read_text())]
    finished = all_finished[:600]
    tier = {"jobs": len(active) + len(all_finished), "kind": "simulated Slurm", "finished_for_exitstatus": len(finished),
            "source": f"simulated Slurm (adapters/slurm/twin.py) in the daemon process: {len(active):,} pending or "
                      f"running + {len(all_finished):,} finished jobs, adopted by the real Downstream, served by the real "
                      "create_app on hypercorn; the twin answers without SSH, so /exitstatus (first) has no cluster "
                      "round trip here",
            "endpoints": await endpoints(ctx, live, active, finished)}
    tier["rss_kb"] = live.proc.status()
    tier["open_loop"] = await ctx.undisturbed("open loop", lambda: open_loop(live.proc.upstream, active))
    await ctx.stop(f"sim{jobs}")  # the floor has the two cores to itself, as it claims
    tier["floor"] = await floor(ctx)
    _record(ctx, tier)
    _print_open_loop(tier)
    return tier
