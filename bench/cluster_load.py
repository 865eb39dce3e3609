"""Benchmark 2: load on the cluster, Slurm commands run on the login node per minute.

Counted on the server side: the daemon talks to a counting sshd of its own
(``bench.cluster.CountingSSHD``), whose ForceCommand wrapper logs every command
line before running it; SSH logins come from that sshd's log. Meanwhile an
upstream (``bench.upstream_load``) asks ``/queued``, ``/running`` and every
job's ``/runstatus`` once per period. Scenarios vary the number of jobs and
upstream's call rate, to show the count depends on neither.
"""

from __future__ import annotations

import trio

from bench.context import Context, JobRef, Live
from bench.stats import show
from bench.upstream_load import Call, drive

WINDOW = 12.0  # seconds per scenario (six polls at the default interval)


def upstream_calls(live: Live, jobs: list[JobRef]) -> list[Call]:
    """One polling cycle of upstream: both lists, then each job's /runstatus."""
    upstream = live.proc.upstream

    async def get(path: str) -> None:
        (await upstream.client.get(path)).raise_for_status()

    async def runstatus(job: JobRef) -> None:
        (await upstream.post("/runstatus", job.args)).raise_for_status()

    calls: list[Call] = [lambda: get("/queued"), lambda: get("/running")]
    calls += [lambda job=job: runstatus(job) for job in jobs]
    return calls


async def scenario(live: Live, jobs: list[JobRef], period: float | None, window: float = WINDOW) -> dict:
    """Count the login node's commands while upstream polls every ``period`` s (None: upstream silent)."""
    mark, cpu = live.sshd.mark(), live.proc.cpu_seconds()
    if period is None:
        await trio.sleep(window)
        load = {"period_s": None, "demanded_per_s": 0.0, "achieved_per_s": 0.0, "errors": 0}
    else:
        load = await drive(upstream_calls(live, jobs), period=period, window=window)
    tally = live.sshd.tally(mark)
    kinds = tally.by_kind()
    polls = [c.at for c in tally.commands if c.kinds == "squeue"]
    return {
        "jobs": len(jobs),
        "poll_interval_s": live.poll_interval,
        "upstream": load,
        "window_s": tally.seconds,
        "slurm_commands_per_min": tally.per_minute(tally.slurm_commands),
        "by_kind_per_min": {k: tally.per_minute(v) for k, v in sorted(kinds.items())},
        "ssh_logins_per_min": tally.per_minute(tally.logins),
        "daemon_cpu_percent": 100 * (live.proc.cpu_seconds() - cpu) / tally.seconds,
        "max_poll_gap_s": max((b - a for a, b in zip(polls, polls[1:], strict=False)), default=float("nan")),
    }


def print_rows(title: str, rows: list[dict], notes: list[str]) -> None:
    table = []
    for r in rows:
        up = r["upstream"]
        period = "silent" if up["period_s"] is None else f"every {up['period_s']:g}s"
        kinds = ", ".join(f"{k} {v:.0f}" for k, v in r["by_kind_per_min"].items()) or "-"
        table.append([r["jobs"], period, up["demanded_per_s"], up["achieved_per_s"], r["slurm_commands_per_min"],
                      kinds, r["ssh_logins_per_min"], r["daemon_cpu_percent"], r["max_poll_gap_s"]])
    show(title, ["jobs", "upstream polls", "calls/s asked", "calls/s served", "Slurm cmds/min", "by command (/min)",
                 "SSH logins/min", "daemon CPU %", "longest poll gap s"], table, notes)


async def run(ctx: Context, jobs: int, periods: tuple[float | None, ...] = (5.0,)) -> dict:
    live = await ctx.daemon("main")
    active = await ctx.ensure_active(live, jobs)
    rows = [await ctx.undisturbed(f"load with {len(active):,} jobs, upstream every {period}s",
                                  lambda period=period: scenario(live, active, period)) for period in periods]
    result = ctx.results.setdefault("cluster_load", {"scenarios": []})
    result["scenarios"] += rows
    print_rows(f"2. load on the login node, {len(active):,} jobs", rows, [
        f"counted by the login node's sshd (ForceCommand wrapper) over {WINDOW:g}s per row; daemon polls every "
        f"{live.poll_interval:g}s (the default); upstream: /queued + /running + /runstatus of every job once per period",
        "a Slurm command = one command line that runs sbatch/squeue/sacct/scancel/scontrol; 'other' = tail, rm, ..."])
    return result
