"""Benchmark 4: state freshness, from a job's state change in Slurm to the daemon showing it.

Real short jobs (``sleep`` 2-4 s) are submitted held through ``/submit``, then
released one by one at random moments with a local ``scontrol release`` (not
through the daemon, which would poll at once), so that their changes fall
anywhere in the daemon's poll cycle. They are watched from both sides at once:

* Slurm: ``squeue`` run locally as root in a tight loop; a change is dated at
  the middle of the first squeue call that shows it;
* the daemon: ``/queued`` then ``/running`` called in a tight loop (in that
  order, so a job moving on between the two calls is never missed); dated the same way.

Two changes per job: it starts (R) and it ends (a final state). The daemon's
poll interval bounds the delay, so it is part of the figure: measured with the
default 2 s and with 0.5 s.
"""

from __future__ import annotations

import random
import time
from functools import partial

import trio

from bench.cluster import STATE, local_env, on_login
from bench.context import Context, Live
from bench.daemon_proc import job_name, submit
from bench.stats import median_of, ms, show, summary_ms
from statemachines.slurm_states import Phase, phase_of, to_code

JOBS = 14
STAGGER = 0.6  # mean seconds between releases
WATCH_PAUSE = 0.015  # between two calls of a watcher, to leave the CPUs to the daemon
INTERVALS = (2.0, 0.5)


async def _watch_slurm(names: set[str], seen: dict[str, dict[str, float]], periods: list[float], done: trio.Event) -> None:
    command = on_login("squeue", "-h", "-t", "all", "-n", ",".join(f"jarvice_{n}" for n in sorted(names)), "-o", "%j %t")
    last = time.perf_counter()
    while not done.is_set():
        t0 = time.perf_counter()
        result = await trio.run_process(command, env=local_env(), capture_stdout=True, capture_stderr=True, check=False)
        t1 = time.perf_counter()
        at = (t0 + t1) / 2
        periods.append(t1 - last)
        last = t1
        for line in result.stdout.decode().splitlines():
            slurm_name, _, code = line.partition(" ")
            name = slurm_name.removeprefix("jarvice_")
            marks = seen.setdefault(name, {})
            phase = phase_of(to_code(code))
            if phase is Phase.RUNNING:
                marks.setdefault("start", at)
            elif phase is Phase.FINISHED:
                marks.setdefault("end", at)
        await trio.sleep(WATCH_PAUSE)


async def _watch_daemon(live: Live, names: set[str], seen: dict[str, dict[str, float]], done: trio.Event) -> None:
    upstream = live.proc.upstream
    while not done.is_set():
        t0 = time.perf_counter()
        queued = {n for n, _ in await upstream.call("/queued")}  # type: ignore[misc]
        running = {n for n, _ in await upstream.call("/running")}  # type: ignore[misc]
        at = (t0 + time.perf_counter()) / 2
        for name in names:
            marks = seen.setdefault(name, {})
            if name in running:
                marks.setdefault("start", at)
            if name in running or name in queued:
                marks["listed"] = at
            elif "listed" in marks:
                marks.setdefault("end", at)
        await trio.sleep(WATCH_PAUSE)


async def measure(ctx: Context, interval: float, seed: int) -> dict:
    live = await ctx.daemon(f"fresh-{interval:g}", poll_interval=interval)
    rng = random.Random(seed)
    names = {job_name(ctx.run, "f", ctx.next_number()) for _ in range(JOBS)}
    slurm_seen: dict[str, dict[str, float]] = {}
    daemon_seen: dict[str, dict[str, float]] = {}
    periods: list[float] = []
    done = trio.Event()

    jobids = []
    for name in sorted(names):
        number = int(name.rsplit("-", 1)[1])
        jobids.append(await submit(live.proc.upstream, name, number, held=True, body=f"sleep {rng.uniform(2, 4):.2f}"))

    async def release_all() -> None:
        for jobid in jobids:
            await trio.sleep(STAGGER * rng.uniform(0.5, 1.5))
            await trio.run_process(on_login("scontrol", "release", jobid), env=local_env(), capture_stdout=True)

    def finished() -> bool:
        return all("end" in daemon_seen.get(n, {}) and "end" in slurm_seen.get(n, {}) for n in names)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_slurm, names, slurm_seen, periods, done)
        nursery.start_soon(_watch_daemon, live, names, daemon_seen, done)
        await release_all()
        with trio.move_on_after(60):
            while not finished():
                await trio.sleep(0.1)
        done.set()
    await ctx.stop(live.key)

    delays: dict[str, list[float]] = {"start": [], "end": []}
    missed = 0
    for name in names:
        for event in delays:
            s, d = slurm_seen.get(name, {}).get(event), daemon_seen.get(name, {}).get(event)
            if s is not None and d is not None:
                delays[event].append(d - s)
            elif event == "start" and s is not None:
                missed += 1  # ran and ended between two of the daemon's polls (never listed as running)
    both = delays["start"] + delays["end"]
    return {
        "poll_interval_s": interval,
        "jobs": len(names),
        "start": summary_ms(delays["start"]),
        "end": summary_ms(delays["end"]),
        "all": summary_ms(both),
        "never_shown_running": missed,
        "slurm_watch_period_ms": ms(median_of(periods)),
    }


async def run(ctx: Context) -> dict:
    if not (STATE / "bin" / "login").is_file():
        raise RuntimeError("no test cluster login node (bin/login) to watch the cluster from")
    rows = [await ctx.undisturbed(f"freshness at a {interval:g} s poll", partial(measure, ctx, interval, seed))
            for seed, interval in enumerate(INTERVALS)]
    table = []
    for r in rows:
        for event in ("start", "end", "all"):
            s = r[event]
            table.append([f"{r['poll_interval_s']:g} s", {"start": "PD -> R", "end": "R -> finished",
                                                          "all": "both"}[event], s["n"], s["median"], s["p99"], s["max"]])
    show("4. state freshness: Slurm changes a job's state -> the daemon's lists show it",
         ["daemon poll interval", "change", "samples", "median ms", "p99 ms", "max ms"], table, [
             f"{JOBS} real jobs per interval (sleep 2-4 s, submitted held, released one by one about every {STAGGER:g}s "
             "by a local scontrol release, so that no /submit wakes the poller)",
             "Slurm side: local squeue in a loop (one call every "
             + ", ".join(f"{r['slurm_watch_period_ms']:.0f} ms" for r in rows)
             + "); daemon side: /queued + /running in a loop; each change dated at the middle of the first call showing it",
             ", ".join(f"{r['never_shown_running']} job(s) never shown running at {r['poll_interval_s']:g} s"
                         for r in rows)])
    result = {"intervals": rows}
    ctx.results["freshness"] = result
    return result
