"""Benchmark 3: submit throughput, /submit to a Slurm job id, next to the cluster's raw sbatch rate.

Three ways to submit the same held one-task job (the sbatch options and batch
script the daemon renders for it), on the same cluster, in the same run:

* ``/submit`` through the daemon (validation, script rendering, one sbatch over
  its persistent SSH connection), from 1 client and from 8 concurrent clients;
* raw ``sbatch`` over one persistent SSH connection (plain asyncssh on asyncio,
  script on stdin as the daemon sends it): the limit the daemon is held to;
* raw ``sbatch`` run locally as root (no SSH at all): the cluster's own limit;
* raw ``sbatch`` written one after another into one kept ``sh`` over the same
  kind of connection (what the daemon does, minus HTTP and the daemon): the limit
  of that way of submitting. The target compares the daemon with the row above it,
  one SSH command per sbatch, as the issue asks.

All SSH traffic goes through counting sshds with the same ForceCommand wrapper,
so the wrapper's cost (one bash exec per command) is on both sides. The daemon's
jobs stay held and tracked: they are the 1,000-job population of the next
benchmarks. The raw jobs are cancelled at once.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import time
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path

import asyncssh
import trio

from adapters import jobscript
from adapters.slurm.parsers import parse_sbatch
from bench.cluster import cancel, local_env, on_login, shared_tmpdir
from bench.context import CONCURRENCY, Context, Live
from bench.stats import median_of, ms, show, summary
from config.settings import Settings, load
from daemon.server import script_environment
from tests.support.upstream import submit_args

RAW_SEQUENTIAL = 100
RAW_PARALLEL = 200
DAEMON_SEQUENTIAL = 150
DAEMON_TOTAL = 1000  # held jobs the daemon tracks afterwards
WARMUP = 5


def same_job(env: dict[str, str], name: str) -> tuple[list[str], str]:
    """The sbatch arguments and batch script the daemon renders for a held /submit, under a raw job name."""
    settings = load(env)
    args = submit_args("20261123-benchraw-alice_raw", 1, "true", held=True)
    submission = jobscript.build(args, settings.executor, script_environment(settings))
    sbatch_args = [f"--job-name={name}" if a.startswith("--job-name=") else a for a in submission.sbatch_args]
    return sbatch_args, submission.batch_script


def _raw_job(env: dict[str, str], name: str) -> tuple[Settings, str, str]:
    """The settings, the sbatch command line and the script of a raw submit under ``name``."""
    sbatch_args, script = same_job(env, name)
    return load(env), "sbatch " + shlex.join(sbatch_args), script


def _connect(settings: Settings) -> AbstractAsyncContextManager[asyncssh.SSHClientConnection]:
    """One plain asyncssh connection to the login node, as the daemon's settings describe it."""
    key = asyncssh.import_private_key(settings.ssh_pkey)
    return asyncssh.connect(settings.cluster_addr, settings.cluster_port, username=settings.ssh_user,
                            client_keys=[key], known_hosts=settings.ssh_known_hosts, agent_path=None, config=[])


def _raw_ssh(env: dict[str, str], count: int, parallel: int, name: str) -> tuple[float, list[str]]:
    """``count`` sbatch over one asyncssh connection, ``parallel`` at a time: (seconds, job ids)."""
    settings, command, script = _raw_job(env, name)

    async def go() -> tuple[float, list[str]]:
        ids: list[str] = []
        async with _connect(settings) as conn:
            gate = asyncio.Semaphore(parallel)

            async def one() -> None:
                async with gate:
                    result = await conn.run(command, input=script, check=True)
                    ids.append(parse_sbatch(str(result.stdout)))

            await asyncio.gather(*(one() for _ in range(WARMUP)))
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(count)))
            return time.perf_counter() - started, ids

    return asyncio.run(go())


def _raw_shell(env: dict[str, str], count: int, name: str) -> tuple[float, list[str]]:
    """``count`` sbatch one after another into one kept ``sh`` on one asyncssh connection: (seconds, job ids)."""
    settings, command, script = _raw_job(env, name)
    end = "@@bench-end@@"

    async def go() -> tuple[float, list[str]]:
        ids: list[str] = []
        async with _connect(settings) as conn:
            shell = await conn.create_process("sh", encoding="utf-8")

            async def one() -> None:
                shell.stdin.write(f"{command} 2>&1 <<'BENCH_EOF'\n{script}BENCH_EOF\necho '{end}'\n")
                ids.append(parse_sbatch((await shell.stdout.readuntil(end + "\n"))[: -len(end) - 1]))

            for _ in range(WARMUP):
                await one()
            started = time.perf_counter()
            for _ in range(count):
                await one()
            seconds = time.perf_counter() - started
            shell.close()
            return seconds, ids

    return asyncio.run(go())


async def _raw_local(env: dict[str, str], count: int, parallel: int, name: str, work: Path) -> tuple[float, list[str]]:
    """``count`` sbatch run as root on the login node (a shell loop, or xargs -P): (seconds, job ids)."""
    sbatch_args, script = same_job(env, name)
    script_file = shared_tmpdir("bench-raw.") / "raw-job.sh"  # where the login node sees it
    script_file.write_text(script)
    sbatch = "sbatch " + shlex.join([*sbatch_args, str(script_file)])
    if parallel == 1:
        loop = f"for i in $(seq {count}); do {sbatch}; done"
    else:
        loop = f"seq {count} | xargs -P {parallel} -I{{}} {sbatch}"
    await trio.run_process(on_login("bash", "-c", f"for i in $(seq {WARMUP}); do {sbatch}; done"), env=local_env(),
                           capture_stdout=True)
    started = time.perf_counter()
    done = await trio.run_process(on_login("bash", "-c", loop), env=local_env(), capture_stdout=True, capture_stderr=True)
    shutil.rmtree(script_file.parent, ignore_errors=True)
    seconds = time.perf_counter() - started
    return seconds, [parse_sbatch(line) for line in done.stdout.decode().split()]


async def _daemon_rate(ctx: Context, live: Live, count: int, clients: int) -> dict:
    """``count`` held /submit calls from ``clients`` clients, with what the daemon ran meanwhile."""
    mark, cpu = live.sshd.mark(), live.proc.cpu_seconds()
    started = time.perf_counter()
    _, seconds = await ctx.submit_many(live, count, tag="s", held=True, concurrency=clients)
    wall = time.perf_counter() - started
    s = summary(seconds)
    kinds = live.sshd.tally(mark).by_kind()
    return {"jobs": count, "seconds": wall, "jobs_per_s": count / wall, "median_ms": ms(s["median"]),
            "p99_ms": ms(s["p99"]), "squeue": kinds["squeue"], "sbatch": kinds["sbatch"],
            "daemon_cpu_ms_per_job": ms((live.proc.cpu_seconds() - cpu) / count)}


async def run(ctx: Context) -> dict:
    live = await ctx.daemon("main")
    raw_sshd = ctx.sshd()
    name = f"bench_raw_{ctx.run}"
    rows: dict[str, dict] = {}

    async def raw(label: str, runner: str, count: int, parallel: int) -> None:
        async def once() -> tuple[float, list[str]]:
            if runner == "ssh":
                return await trio.to_thread.run_sync(_raw_ssh, raw_sshd.env(), count, parallel, name)
            if runner == "shell":
                return await trio.to_thread.run_sync(_raw_shell, raw_sshd.env(), count, name)
            return await _raw_local(raw_sshd.env(), count, parallel, name, ctx.work)

        seconds, ids = await ctx.undisturbed(label, once)
        await trio.to_thread.run_sync(cancel, ids)
        rows[label] = {"jobs": count, "seconds": seconds, "jobs_per_s": count / seconds}

    await raw("raw sbatch, local as root, sequential", "local", RAW_SEQUENTIAL, 1)
    await raw(f"raw sbatch, local as root, {CONCURRENCY} parallel", "local", RAW_PARALLEL, CONCURRENCY)
    await raw("raw sbatch, one SSH connection, sequential", "ssh", RAW_SEQUENTIAL, 1)
    await raw(f"raw sbatch, one SSH connection, {CONCURRENCY} parallel", "ssh", RAW_PARALLEL, CONCURRENCY)
    await raw("raw sbatch, one kept shell on one SSH connection, sequential", "shell", RAW_SEQUENTIAL, 1)

    await ctx.submit_many(live, WARMUP, tag="w", held=True, concurrency=1)
    for label, count, clients in (("daemon /submit, 1 client", DAEMON_SEQUENTIAL, 1),
                                  (f"daemon /submit, {CONCURRENCY} clients", None, CONCURRENCY)):
        if count is None:
            count = max(CONCURRENCY * 20, DAEMON_TOTAL - len(await ctx.active(live)))
        rows[label] = await ctx.undisturbed(label, partial(_daemon_rate, ctx, live, count, clients))

    # the same raw sequence once more, now that Slurm holds as many jobs as during the daemon's run
    await raw(f"raw sbatch, one SSH connection, {CONCURRENCY} parallel (after)", "ssh", RAW_PARALLEL, CONCURRENCY)

    ssh_seq = rows["raw sbatch, one SSH connection, sequential"]["jobs_per_s"]
    ssh_par = median_of([rows[f"raw sbatch, one SSH connection, {CONCURRENCY} parallel"]["jobs_per_s"],
                         rows[f"raw sbatch, one SSH connection, {CONCURRENCY} parallel (after)"]["jobs_per_s"]])
    result = {
        "rows": rows,
        "daemon_vs_raw_ssh_sequential": rows["daemon /submit, 1 client"]["jobs_per_s"] / ssh_seq,
        "daemon_vs_raw_ssh_parallel": rows[f"daemon /submit, {CONCURRENCY} clients"]["jobs_per_s"] / ssh_par,
        "tracked_after": len(await ctx.active(live)),
    }
    table_rows = [[label, r["jobs"], r["jobs_per_s"], r.get("median_ms"), r.get("p99_ms"), r.get("squeue"),
                   r.get("daemon_cpu_ms_per_job")] for label, r in rows.items()]
    show("3. submit throughput (held 1-task jobs)",
         ["how", "jobs", "jobs/s", "median ms per submit", "p99 ms", "squeue meanwhile", "daemon CPU ms/job"],
         table_rows, [
             f"daemon / raw over one SSH connection: {result['daemon_vs_raw_ssh_sequential']:.0%} sequential, "
             f"{result['daemon_vs_raw_ssh_parallel']:.0%} with {CONCURRENCY} in parallel (target: at least 80%)",
             "raw: the very sbatch options and script the daemon renders for these jobs; over SSH: plain asyncssh, "
             "script on stdin, through a counting sshd like the daemon's; "
             "'(after)': measured again once Slurm holds the daemon's jobs too; 'one kept shell': sbatch after sbatch "
             "written into one long-lived sh, as the daemon submits (its SSH sessions hold no sbatch count, "
             "so 'squeue meanwhile' counts polls only)",
             f"the daemon also polls (every {live.poll_interval:g}s, and after each submit) on the same connection "
             f"while submitting; {result['tracked_after']:,} jobs tracked afterwards"])
    ctx.results["submit_throughput"] = result
    return result
