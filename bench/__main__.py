"""``python -m bench [name ...] [--out FILE] [--keep]``: run the benchmarks, print tables, write JSON.

Runs every benchmark in turn against the real local test cluster (``make
bench`` brings it up), printing each table as it completes, then a summary
against the targets, and writes everything to ``bench/results.json`` (or
``--out`` / ``$BENCH_OUT``). Names select a subset: freshness, api_latency,
cluster_load, submit_throughput, interactive_load, baseline, footprint, proxy_throughput,
marker_filter, rest (the daemon through slurmrestd; 24.11 and 26.05 clusters only).

The order matters because the daemon adopts every job it finds in Slurm: the
100-job measurements come first, then the submit benchmark brings the real
population to 1,000, then everything measured at 1,000 jobs; the simulated
10,000-job population comes last, once the real jobs are cancelled.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from bench import (
    api_latency,
    baseline,
    cluster_load,
    footprint,
    freshness,
    interactive_load,
    marker_filter,
    proxy_throughput,
    recovery,
    rest_load,
    submit_throughput,
)
from bench.cluster import ClusterMissing, cluster_env, machine
from bench.context import Context
from bench.stats import show

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"

Stage = tuple[str, str, bool, Callable[[Context], Awaitable[object]]]

# name, title, needs the real jobs of the stages before it, the benchmark
STAGES: list[Stage] = [
    ("freshness", "state freshness", True, freshness.run),
    ("api_latency", "API latency, 100 jobs", True, lambda ctx: api_latency.run(ctx, 100)),
    ("cluster_load", "cluster load, 100 jobs", True, lambda ctx: cluster_load.run(ctx, 100, (5.0,))),
    ("submit_throughput", "submit throughput", True, submit_throughput.run),
    ("api_latency", "API latency, 1,000 jobs", True, lambda ctx: api_latency.run(ctx, 1000)),
    ("cluster_load", "cluster load, 1,000 jobs", True, lambda ctx: cluster_load.run(ctx, 1000, (5.0, 1.0, None))),
    ("interactive_load", "1,000 jobs while 4 interactive jobs stream through their proxies", True, interactive_load.run),
    ("baseline", "the reference's way", True, baseline.run),
    ("footprint", "memory and CPU", False, footprint.run),
    ("api_latency", "API latency, 10,000 jobs", False, lambda ctx: api_latency.run_simulated(ctx, 10_000)),
    ("recovery", "recovery after a partition (simulated)", False, recovery.stage),
    # its own daemon in REST mode and its own jobs (up to ~9,500), all cancelled at the end; skipped without slurmrestd
    ("rest", "slurmrestd mode: submit rate, requests/min, latency at ~9,500 real jobs, poll cost", False, rest_load.run),
]
NAMES = sorted({s[0] for s in STAGES} | {"proxy_throughput", "marker_filter"})


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def run_stages(ctx: Context, wanted: set[str], errors: dict[str, str]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctx.watch.run)
        await _stages(ctx, wanted, errors)
        nursery.cancel_scope.cancel()


async def _stages(ctx: Context, wanted: set[str], errors: dict[str, str]) -> None:
    released = False
    for name, title, real, stage in STAGES:
        if name not in wanted:
            continue
        if not real and not released:
            released = True
            await ctx.release_cluster()  # the rest needs no real jobs: stop the real daemons, cancel their jobs
        print(f"\n-- {title} ... (load average {loadavg():.2f})", flush=True)
        started = time.perf_counter()
        try:
            await stage(ctx)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            errors[title] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            print(f"!! {title} failed: {exc}", flush=True)
        print(f"   ({time.perf_counter() - started:.0f}s)", flush=True)


def run_proxy(results: dict, errors: dict[str, str]) -> None:
    """Benchmark 6 (bench/proxy_throughput.py) runs its own real job and daemon, outside the trio stages."""
    print("\n-- interactive proxy throughput ...", flush=True)
    started = time.perf_counter()
    try:
        results["proxy_throughput"] = proxy_throughput.run()
    except Exception as exc:  # noqa: BLE001 - reported like the others
        errors["interactive proxy"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        return
    print(f"   ({time.perf_counter() - started:.0f}s)", flush=True)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else "yes" if ok else "NO"


def summarize(results: dict) -> list[dict]:
    """The headline figures, each next to its target."""
    lines: list[dict] = []

    def add(what: str, value: str, target: str, ok: bool | None) -> None:
        lines.append({"what": what, "value": value, "target": target, "met": ok})

    tiers = {t["jobs"]: t for t in results.get("api_latency", {}).get("tiers", [])}
    if tiers:
        jobs = max(tiers)
        tier = tiers[jobs]
        floor = tier.get("floor", {})
        saturated = f"; floor {floor['8 clients']['p99_ms']:.1f} ms" if floor else ""
        for endpoint in ("GET /queued", "GET /running", "POST /runstatus", "POST /exitstatus (repeat)",
                         "POST /exitstatus (first)"):
            r = tier["endpoints"].get(endpoint)
            if r:
                add(f"{endpoint} p99, {jobs:,} jobs ({tier['kind']}), 1 client", f"{r['c1']['p99_ms']:.1f} ms",
                    "p99 < 10 ms", r["c1"]["p99_ms"] < 10)
                add(f"{endpoint} p99, {jobs:,} jobs, 8 clients flat out", f"{r['c8']['p99_ms']:.1f} ms at "
                    f"{r['c8']['rps']:.0f} calls/s{saturated}", "(saturation, reported)", None)
        paced = tier.get("open_loop", [])
        if paced:
            add(f"POST /runstatus p99, {jobs:,} jobs, 8 connections at upstream's pace",
                ", ".join(f"{r['response_p99_ms']:.1f} ms at {r['demanded_per_s']:.0f}/s" for r in paced),
                "p99 < 10 ms", all(r["response_p99_ms"] < 10 and not r["errors"] for r in paced))
    load = results.get("cluster_load", {}).get("scenarios", [])
    if load:
        values = [s["slurm_commands_per_min"] for s in load]

        def calls(s: dict) -> str:
            return "silent" if s["upstream"]["period_s"] is None else f"{s['upstream']['achieved_per_s']:.0f} calls/s"

        spread = ", ".join(f"{s['slurm_commands_per_min']:.0f} ({s['jobs']:,} jobs, {calls(s)})" for s in load)
        # a window holds a whole number of polls: allow one command per window, plus 10 %
        slack = max(60.0 / s["window_s"] for s in load) + 0.1 * max(values)
        flat = max(values) - min(values) <= slack
        add("Slurm commands/min on the login node", spread, "independent of jobs and call rate", flat)
    inter = results.get("interactive_load")
    for where, placed in (inter or {}).get("placements", {}).items():
        for key, label in (("quiet", "no streams"), ("loaded", f"{placed['streams']} proxies streaming")):
            p = placed[key]
            streaming = f" ({p['streams_total_MBps']:.0f} MB/s through the proxies)" if p["streams_total_MBps"] else ""
            add(f"POST /runstatus p99 at {p['runstatus']['demanded_per_s']:.0f}/s, {placed['jobs']:,} jobs, {label}, "
                f"hosts {where}", f"{p['runstatus']['response_p99_ms']:.1f} ms{streaming}", "p99 < 10 ms",
                p["runstatus"]["response_p99_ms"] < 10 and not p["runstatus"]["errors"])
            limit = (placed["poll_interval_s"] + 1) * 1000
            add(f"freshness p99 at a {placed['poll_interval_s']:g} s poll, {placed['jobs']:,} jobs, {label}, hosts {where}",
                f"{p['freshness']['all']['p99']:.0f} ms", f"p99 < {limit:.0f} ms", p["freshness"]["all"]["p99"] < limit)
    proxied = results.get("proxy_throughput", {}).get("throughput_MBps", {})
    if proxied:
        add("interactive proxy / ssh -L throughput", ", ".join(
            f"{mode} {t['proxy'] / t['ssh -L']:.2f}x ({t['proxy']:.0f} vs {t['ssh -L']:.0f} MB/s)"
            for mode, t in proxied.items()), "(ratio, reported)", None)
    submit = results.get("submit_throughput")
    if submit:
        seq, par = submit["daemon_vs_raw_ssh_sequential"], submit["daemon_vs_raw_ssh_parallel"]
        add("/submit rate vs raw sbatch over one SSH connection", f"{seq:.0%} sequential, {par:.0%} with 8 clients",
            ">= 80%", min(seq, par) >= 0.8)
    fresh = results.get("freshness", {}).get("intervals", [])
    for r in fresh:
        add(f"freshness at a {r['poll_interval_s']:g} s poll", f"median {r['all']['median']:.0f} ms, "
            f"p99 {r['all']['p99']:.0f} ms", "(reported)", None)
    fp = results.get("footprint")
    if fp:
        rss = fp["child"]["rss_kb"]["with_book"] / 1024
        parse = fp["child"]["cpu_ms"]["parse_only_median"]
        cycle = fp["child"]["cpu_ms"]["steady_poll_median"]
        add("RSS with 10,000 tracked jobs", f"{rss:.0f} MiB", "< 150 MB", rss * 1.048576 < 150)
        add("CPU parsing a 10,000-line squeue", f"{parse:.0f} ms from scratch (steady poll cycle {cycle:.0f} ms, "
            "unchanged lines reused)", "< 50 ms", parse < 50)
    ref = results.get("baseline")
    if ref:
        r1 = ref.get("runstatus 1 client", {})
        if r1:
            add("reference way / daemon, /runstatus median", f"{r1['reference_median_ms'] / r1['daemon_median_ms']:.0f}x "
                f"({r1['reference_median_ms']:.0f} ms vs {r1['daemon_median_ms']:.1f} ms)", "(ratio)", None)
        ld = ref.get("load", {})
        if ld and ld.get("daemon_slurm_commands_per_min"):
            add("reference way / daemon, Slurm commands/min",
                f"{ld['reference_slurm_commands_per_min'] / ld['daemon_slurm_commands_per_min']:.0f}x "
                f"({ld['reference_slurm_commands_per_min']:.0f} vs {ld['daemon_slurm_commands_per_min']:.0f}; and "
                f"{ld['reference_ssh_logins_per_min']:.0f} SSH logins/min vs {ld['daemon_ssh_logins_per_min']:.0f}; "
                f"the reference served {ld['upstream']['achieved_per_s']:.0f} of {ld['upstream']['demanded_per_s']:.0f} "
                "calls/s asked, the daemon all)", "(ratio)", None)
        for label in ("1 client", "8 clients"):
            s = ref.get(f"submit {label}")
            if s and not math.isnan(s["daemon_per_s"]):
                add(f"daemon / reference way, submits/s, {label}", f"{s['daemon_per_s'] / s['reference_per_s']:.0f}x "
                    f"({s['daemon_per_s']:.0f}/s vs {s['reference_per_s']:.1f}/s)", "(ratio)", None)
    rest = results.get("rest", {})
    if rest.get("submit"):
        sub = rest["submit"]
        seq, par = sub["daemon_vs_raw_rest_sequential"], sub["daemon_vs_raw_rest_parallel"]
        add("REST: /submit rate vs raw POST job/submit, same token", f"{seq:.0%} sequential, {par:.0%} with 8 clients",
            ">= 80%", min(seq, par) >= 0.8)
    if rest.get("load"):
        load = rest["load"]

        def asked(r: dict) -> str:
            return "silent" if r["upstream"]["period_s"] is None else f"{r['upstream']['achieved_per_s']:.0f} calls/s"

        values = [r["daemon_requests_per_min"] for r in load]
        add("REST: requests to slurmrestd per minute", ", ".join(
            f"{r['daemon_requests_per_min']:.0f} ({r['jobs']:,} jobs, {asked(r)})" for r in load),
            "independent of jobs and call rate", max(values) - min(values) <= 60.0 / WINDOW_MIN + 0.1 * max(values))
        for r in load:
            if r["upstream"]["period_s"] is None:
                add(f"REST: daemon CPU, upstream silent, {r['jobs']:,} jobs", f"{r['daemon_cpu_percent']:.1f} % "
                    f"(mean poll {r['poll_mean_ms']:.0f} ms)", "(reported)", None)
    paced = rest.get("latency", {}).get("open_loop")
    if paced:
        jobs = rest["latency"]["jobs"]
        add(f"REST: POST /runstatus p99, {jobs:,} real jobs, {paced['demanded_per_s']:.0f}/s over a complete listing",
            f"{paced['response_p99_ms']:.1f} ms ({paced['errors']} errors)", "p99 < 10 ms",
            paced["response_p99_ms"] < 10 and not paced["errors"])
        rss = rest["latency"].get("rss_kb", {})
        if rss:
            add(f"REST: RSS with {jobs:,} tracked jobs", f"{rss.get('VmRSS', 0) / 1024:.0f} MiB (peak "
                f"{rss.get('VmHWM', 0) / 1024:.0f})", "< 150 MB", rss.get("VmRSS", 0) * 1.024 / 1000 < 150)
    return lines


WINDOW_MIN = 12.0  # seconds of bench.rest_load's load rows: one request per window of slack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="name", help="benchmarks to run (default: all): " + ", ".join(NAMES))
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT", str(DEFAULT_OUT)), help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' logs and the sshds' command logs")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(NAMES)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(NAMES)}")
    wanted = set(args.names or NAMES)
    try:
        cluster_env()
    except ClusterMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    host = machine()
    print(f"slurm-downstream benchmarks on {host['nproc']} CPUs ({host['cpu']}), {host['ram_gib']} GiB RAM, "
          f"Debian {host['debian']}, {host['slurm']}, MinJobAge {host['min_job_age']}", flush=True)
    if loadavg() > 0.5:
        print(f"note: load average {loadavg():.2f} before starting: other work on this machine makes the figures noisy",
              flush=True)
    errors: dict[str, str] = {}
    ctx = Context(keep=args.keep)

    async def stages() -> None:
        failed = True
        try:
            await run_stages(ctx, wanted, errors)
            failed = bool(errors)
        finally:
            await ctx.aclose(failed)

    try:
        trio.run(stages)
    except KeyboardInterrupt:
        print("\ninterrupted: partial results follow", file=sys.stderr)
        errors["run"] = "interrupted"
    results = ctx.results
    if "proxy_throughput" in wanted:
        run_proxy(results, errors)
    if "marker_filter" in wanted:
        print("\n-- the success marker's filter ...", flush=True)
        results["marker_filter"] = marker_filter.run()

    headline = summarize(results)
    show("summary against the targets", ["measure", "value", "target", "met"],
         [[h["what"], h["value"], h["target"], _verdict(h["met"])] for h in headline])
    for what in ctx.disturbed:
        print(f"!! {what}: slurmctld was down during every attempt; that figure is not the daemon's")
    for title, message in errors.items():
        print(f"!! {title}: {message}")
    document = {
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]) + "  (make bench runs it)",
        "started_at": started_at,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": host,
        "summary": headline,
        "benchmarks": results,
        "disturbed": ctx.disturbed,
        "slurmctld_outages_s": [round(b - a, 1) for a, b in ctx.watch.outages],
        "errors": errors,
    }
    out = Path(args.out)
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nresults written to {out} ({document['seconds']:.0f}s in all)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
