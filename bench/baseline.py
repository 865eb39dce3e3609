"""Benchmark 7: the reference downstream's way (``bench.reference``) against the daemon, same cluster, same run.

Three comparisons where one is meaningful, each as a ratio:

* ``/runstatus`` latency on the same 1,000-job population, one client and 8;
* load on the login node under the same upstream (every job polled every 5 s):
  Slurm commands and SSH logins per minute, counted by the reference's own sshd;
* submit throughput with the very sbatch options and script the daemon renders.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from bench import api_latency, cluster_load, submit_throughput
from bench.cluster import Tally
from bench.context import CONCURRENCY, Context
from bench.reference import ReferenceDownstream
from bench.stats import fmt, median_of, ms, show, summary
from bench.upstream_load import Call, drive

JOBS = 1000
RUNSTATUS_SERIAL = 30
RUNSTATUS_PARALLEL = 48
SUBMIT_SERIAL = 15
SUBMIT_PARALLEL = 40
LOAD_PERIOD = 5.0
LOAD_WINDOW = 10.0


async def _timed(calls: int, concurrency: int, call: Callable[[int], Awaitable[object]]) -> tuple[list[float], float]:
    """``calls`` calls from ``concurrency`` clients: each call's seconds, and the wall time."""
    samples: list[float] = []
    todo = iter(range(calls))

    async def worker() -> None:
        for i in todo:
            t0 = time.perf_counter()
            await call(i)
            samples.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return samples, time.perf_counter() - started


def _ratio(numerator: float, denominator: float) -> float:
    """How many times better the daemon is: reference/daemon for costs, daemon/reference for rates."""
    return numerator / denominator if denominator else float("nan")


async def run(ctx: Context) -> dict:
    live = await ctx.daemon("main")
    active = await ctx.ensure_active(live, JOBS)
    sshd = ctx.sshd()
    ref = ReferenceDownstream(sshd.ssh_argv(), user=sshd.env().get("JARVICE_SLURM_SSH_USER", "jarvice"))
    rng = random.Random(7)
    picks = [rng.choice(active) for _ in range(1000)]
    rows: list[list[object]] = []
    result: dict[str, dict] = {}

    # ---- /runstatus latency
    probe = await ref.runstatus(picks[0].name, picks[0].number, picks[0].jobid)
    if probe[2] is None:
        raise RuntimeError(f"the reference baseline does not find job {picks[0]}")
    for label, calls, clients in (("1 client", RUNSTATUS_SERIAL, 1), (f"{CONCURRENCY} clients", RUNSTATUS_PARALLEL,
                                                                       CONCURRENCY)):
        samples, wall = await ctx.undisturbed(f"reference /runstatus, {label}", partial(
            _timed, calls, clients, lambda i: ref.runstatus(picks[i].name, picks[i].number, picks[i].jobid)))
        s = summary(samples)
        daemon = await ctx.undisturbed(f"daemon /runstatus, {label}", partial(
            api_latency.measure, lambda i: live.proc.upstream.post("/runstatus", picks[i % len(picks)].args),
            concurrency=clients))
        entry = {"reference_median_ms": ms(s["median"]), "reference_p99_ms": ms(s["p99"]),
                 "reference_per_s": len(samples) / wall, "daemon_median_ms": daemon["median_ms"],
                 "daemon_p99_ms": daemon["p99_ms"], "daemon_per_s": daemon["rps"]}
        result[f"runstatus {label}"] = entry
        rows += [[f"/runstatus median ms, {label}", entry["reference_median_ms"], entry["daemon_median_ms"],
                  _ratio(entry["reference_median_ms"], entry["daemon_median_ms"])],
                 [f"/runstatus p99 ms, {label}", entry["reference_p99_ms"], entry["daemon_p99_ms"],
                  _ratio(entry["reference_p99_ms"], entry["daemon_p99_ms"])],
                 [f"/runstatus calls/s, {label}", entry["reference_per_s"], entry["daemon_per_s"],
                  _ratio(entry["daemon_per_s"], entry["reference_per_s"])]]

    # ---- load on the login node under the same upstream
    ref_calls: list[Call] = [ref.queued, ref.running]
    ref_calls += [lambda job=job: ref.runstatus(job.name, job.number, job.jobid) for job in active]
    async def reference_load() -> tuple[dict, Tally]:
        mark = sshd.mark()
        load = await drive(ref_calls, period=LOAD_PERIOD, window=LOAD_WINDOW, concurrency=CONCURRENCY)
        return load, sshd.tally(mark)

    load, tally = await ctx.undisturbed("reference under upstream load", reference_load)
    daemon_load = next((s for s in ctx.results.get("cluster_load", {}).get("scenarios", [])
                        if s["upstream"]["period_s"] == LOAD_PERIOD and s["jobs"] >= JOBS * 0.9), None)
    if daemon_load is None:
        daemon_load = await ctx.undisturbed("daemon under upstream load", partial(
            cluster_load.scenario, live, active, LOAD_PERIOD))
    entry = {"jobs": len(active), "upstream": load, "reference_slurm_commands_per_min": tally.per_minute(tally.slurm_commands),
             "reference_ssh_logins_per_min": tally.per_minute(tally.logins),
             "daemon_slurm_commands_per_min": daemon_load["slurm_commands_per_min"],
             "daemon_ssh_logins_per_min": daemon_load["ssh_logins_per_min"],
             "daemon_upstream": daemon_load["upstream"]}
    result["load"] = entry
    rows += [[f"Slurm commands/min, {len(active):,} jobs polled every {LOAD_PERIOD:g}s",
              entry["reference_slurm_commands_per_min"], entry["daemon_slurm_commands_per_min"],
              _ratio(entry["reference_slurm_commands_per_min"], entry["daemon_slurm_commands_per_min"])],
             ["SSH logins/min, same load", entry["reference_ssh_logins_per_min"], entry["daemon_ssh_logins_per_min"],
              None],
             ["upstream calls/s served (asked: " + fmt(load["demanded_per_s"]) + ")", load["achieved_per_s"],
              daemon_load["upstream"]["achieved_per_s"],
              _ratio(daemon_load["upstream"]["achieved_per_s"], load["achieved_per_s"])],
             ["/runstatus p99 ms as upstream sees it (incl. waiting)", load["response_p99_ms"],
              daemon_load["upstream"]["response_p99_ms"],
              _ratio(load["response_p99_ms"], daemon_load["upstream"]["response_p99_ms"])]]

    # ---- submit throughput
    sbatch_args, script = submit_throughput.same_job(sshd.env(), f"bench_ref_{ctx.run}")
    submits = ctx.results.get("submit_throughput", {}).get("rows", {})
    for label, calls, clients, daemon_row in (
            ("1 client", SUBMIT_SERIAL, 1, "daemon /submit, 1 client"),
            (f"{CONCURRENCY} clients", SUBMIT_PARALLEL, CONCURRENCY, f"daemon /submit, {CONCURRENCY} clients")):
        async def ref_submit(i: int) -> None:
            await ref.submit(sbatch_args, script)

        samples, wall = await ctx.undisturbed(f"reference submits, {label}", partial(_timed, calls, clients,
                                                                                    ref_submit))
        per_s = len(samples) / wall
        daemon_per_s = submits.get(daemon_row, {}).get("jobs_per_s", float("nan"))
        result[f"submit {label}"] = {"reference_per_s": per_s, "daemon_per_s": daemon_per_s,
                                     "reference_median_ms": ms(median_of(samples))}
        rows.append([f"submits/s, {label}", per_s, daemon_per_s, _ratio(daemon_per_s, per_s)])

    show("7. the reference downstream's way vs the daemon (same cluster, same run)",
         ["measure", "reference way", "daemon", "daemon better by (x)"], rows, [
             "reference way: a new SSH connection (ssh binary) and one Slurm command per upstream call, "
             "squeue -j per /runstatus (bench/reference.py, written from design.md)",
             f"/runstatus: {len(active):,} real held jobs; load: upstream asks /queued, /running and every job's "
             f"/runstatus every {LOAD_PERIOD:g}s through {CONCURRENCY} workers for {LOAD_WINDOW:g}s "
             f"(the reference falls behind: backlog {load['backlog']:,} calls at the end)",
             "daemon figures: measured in this run (load and submits: benchmarks 2 and 3)"])
    ctx.results["baseline"] = result
    return result
