"""Benchmark 5: memory and CPU with 10,000 tracked jobs.

CPU per poll cycle is measured in a fresh child process (``python -m
bench.footprint --child``) that runs the daemon's own poll path,
``Downstream.poll_once`` over the real ``SlurmClient``, on a 10,000-line squeue
answer in the real format (``parsers.SQUEUE_FORMAT``, fields split by ``SEP``)
handed over by a runner that does no I/O. ``time.process_time`` is taken around
the parse alone and around the whole cycle (parse + adopt/apply), for the first
poll (10,000 adoptions), steady polls (nothing changed but the running jobs'
elapsed times, 2 s per poll), and a poll where a
tenth of the jobs start and another tenth end. Resident memory (VmRSS, VmHWM from /proc/self/status)
is read in the same child before and after the book holds the 10,000 jobs, and
so is the pause of a full garbage collection, with the start-up heap set aside
as ``serve()`` does (``daemon.heap``) and with nothing set aside.

The whole daemon's memory with 10,000 jobs (hypercorn, SSH, the twin's own
copy of the population) is read from the simulated-population daemon process
of benchmark 1.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from pathlib import Path

import trio

from bench.context import Context
from bench.daemon_proc import memory
from bench.stats import ms, show
from daemon.heap import freeze_heap

JOBS = 10_000
STEADY_POLLS = 10
IDLE_WINDOW = 6.0


def squeue_text(jobs: int, *, changed: bool = False, tick: int = 0) -> str:
    """``jobs`` lines as the daemon's squeue prints them: 60 % held, 10 % pending, 30 % running.

    ``changed``: a tenth of the jobs (held ones) have started and another tenth (running ones) completed.
    ``tick``: polls since the first; running jobs' elapsed times move on 2 s per poll, so their
    lines differ from one poll to the next as they do on a cluster.
    """
    from adapters.slurm.parsers import SEP

    lines = []
    for i in range(jobs):
        share = i / jobs
        jobid, name, comment = str(20_000_000 + i), f"jarvice_20261123-benchfp-alice_fp-{i:05d}", f"jarvice:{i}"
        elapsed = (f"{i % 3}-{i % 24:02d}:{i % 60:02d}:{(7 * i + 2 * tick) % 60:02d}" if i % 2
                   else f"{i % 60}:{(3 * i + 2 * tick) % 60:02d}")
        nodes = "node[1-2]" if i % 5 == 0 else f"node{1 + i % 2}"
        if changed and share < 0.1:
            fields = (jobid, name, "R", "0:01", nodes, "None", comment)
        elif changed and share >= 0.9:
            fields = (jobid, name, "CD", elapsed, nodes, "None", comment)
        elif share < 0.6:
            fields = (jobid, name, "PD", "0:00", "", "JobHeldUser", comment)
        elif share < 0.7:
            fields = (jobid, name, "PD", "0:00", "", "Resources", comment)
        else:
            fields = (jobid, name, "R", elapsed, nodes, "None", comment)
        lines.append(SEP.join(fields))
    return "\n".join(lines) + "\n"


def _full_collection_pause() -> float:
    """Wall seconds of a full collection (median of 3): how long every request in flight would wait."""
    pauses = []
    for _ in range(3):
        t0 = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - t0)
    return statistics.median(pauses)


async def _child(jobs: int) -> dict:
    """The measurements, in a process that holds nothing but the daemon's code and the book."""
    import daemon.api  # noqa: F401 - the daemon's whole import graph, as in production
    from adapters.jobscript import ScriptEnvironment
    from adapters.journal import Journal
    from adapters.slurm import parsers
    from adapters.slurm.client import ClusterInfo, SlurmClient
    from adapters.ssh import CommandResult
    from daemon.service import Downstream

    class StaticSqueue:
        """A CommandRunner whose cluster always prints ``text`` (only the poll is asked)."""

        text = ""

        async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
            return CommandResult(0, self.text, "")

    runner = StaticSqueue()
    slurm = SlurmClient(runner, user="jarvice", scratch_dir="/tmp/bench")
    downstream = Downstream(slurm=slurm, script_env=ScriptEnvironment(scratch_dir="/tmp/bench"), journal=Journal())
    downstream.cluster = ClusterInfo(version="bench", home="/tmp/bench")
    freeze_heap()  # as serve() does before its first poll
    base = memory()
    runner.text = squeue_text(jobs)

    async def cycle() -> float:
        t0 = time.process_time()
        await downstream.poll_once()
        return time.process_time() - t0

    first = await cycle()
    after_first = memory()
    steady = []
    for tick in range(1, STEADY_POLLS + 1):
        runner.text = squeue_text(jobs, tick=tick)
        steady.append(await cycle())
    parse = []
    for _ in range(STEADY_POLLS):
        t0 = time.process_time()
        parsers.parse_squeue(runner.text)
        parse.append(time.process_time() - t0)
    runner.text = squeue_text(jobs, changed=True, tick=STEADY_POLLS + 1)
    changed = await cycle()
    pause_frozen = _full_collection_pause()
    gc.unfreeze()
    pause_all = _full_collection_pause()
    return {
        "jobs_in_squeue": jobs,
        "tracked": len(downstream.book),
        "counts": downstream.book.counts(),
        "squeue_bytes": len(runner.text.encode()),
        "cpu_ms": {
            "first_poll_adopting_all": ms(first),
            "steady_poll_median": ms(statistics.median(steady)),
            "steady_poll_max": ms(max(steady)),
            "parse_only_median": ms(statistics.median(parse)),
            "poll_with_changes": ms(changed),
        },
        "full_gc_pause_ms": {"start_up_heap_set_aside": ms(pause_frozen), "nothing_set_aside": ms(pause_all)},
        "rss_kb": {"before_book": base["VmRSS"], "with_book": after_first["VmRSS"], "end": memory()["VmRSS"],
                   "hwm": memory()["VmHWM"]},
        "rejected_transitions": downstream.book.machine.rejected,
    }


async def run(ctx: Context) -> dict:
    from bench import api_latency

    child = await trio.run_process([sys.executable, "-m", "bench.footprint", "--child", str(JOBS)],
                                   capture_stdout=True, capture_stderr=True, cwd=str(Path(__file__).resolve().parents[1]))
    measured = json.loads(child.stdout.decode().strip().splitlines()[-1])
    live = await api_latency.simulated(ctx, JOBS)
    cpu0 = live.proc.cpu_seconds()
    await trio.sleep(IDLE_WINDOW)
    idle_cpu = live.proc.cpu_seconds() - cpu0
    daemon_vm = live.proc.status()
    result = {"child": measured, "simulated_daemon": {
        "rss_kb": daemon_vm, "idle_cpu_ms_per_poll": ms(idle_cpu / (IDLE_WINDOW / live.poll_interval)),
        "poll_interval_s": live.poll_interval}}
    cpu, rss = measured["cpu_ms"], measured["rss_kb"]
    book_mib = (rss["with_book"] - rss["before_book"]) / 1024
    rows = [
        ["CPU, poll that adopts all 10,000 jobs (ms)", cpu["first_poll_adopting_all"]],
        ["CPU, steady poll: parse + apply, median (ms)", cpu["steady_poll_median"]],
        ["CPU, steady poll: parse + apply, max (ms)", cpu["steady_poll_max"]],
        ["CPU, parsing the squeue from scratch (no line reused, as a first poll), median (ms)",
         cpu["parse_only_median"]],
        ["CPU, poll where 1,000 jobs start and 1,000 end (ms)", cpu["poll_with_changes"]],
        ["full garbage collection pause, start-up heap set aside as serve() does (ms)",
         measured["full_gc_pause_ms"]["start_up_heap_set_aside"]],
        ["full garbage collection pause, nothing set aside (ms)", measured["full_gc_pause_ms"]["nothing_set_aside"]],
        ["RSS, daemon code loaded, no jobs (MiB)", rss["before_book"] / 1024],
        ["RSS, with the 10,000-job book (MiB)", rss["with_book"] / 1024],
        ["RSS growth per tracked job (KiB)", (rss["with_book"] - rss["before_book"]) / max(1, measured["tracked"])],
        ["peak RSS, VmHWM (MiB)", rss["hwm"] / 1024],
        ["whole daemon + simulated Slurm, VmRSS (MiB)", daemon_vm.get("VmRSS", 0) / 1024],
        ["whole daemon + simulated Slurm, VmHWM (MiB)", daemon_vm.get("VmHWM", 0) / 1024],
        ["whole daemon, idle CPU per poll cycle (ms)", result["simulated_daemon"]["idle_cpu_ms_per_poll"]],
    ]
    show(f"5. memory and CPU with {JOBS:,} tracked jobs", ["measure", "value"], rows, [
        f"child process: the daemon's poll path on a {measured['squeue_bytes'] / 1024:.0f} KiB squeue answer "
        f"({JOBS:,} lines: 60% held, 10% pending, 30% running; {measured['tracked']:,} tracked), "
        f"time.process_time, {STEADY_POLLS} steady polls; the book took {book_mib:.1f} MiB",
        "targets: under 150 MB resident; a poll cycle's parsing under 50 ms of CPU",
        "whole daemon: the benchmark-1 process (real Downstream, create_app, hypercorn) over the simulated Slurm, "
        "whose own 10,000 simulated jobs count in its RSS; its idle CPU over "
        f"{IDLE_WINDOW:g}s / polls (no squeue parsing there: the twin hands over parsed jobs)"])
    ctx.results["footprint"] = result
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(trio.run(_child, int(sys.argv[2]))))
