"""Benchmark: the daemon through slurmrestd (``JARVICE_SLURM_CLIENT=slurmrestd_client``), on real jobs.

The real daemon runs as its own process in REST mode against the test cluster's real
slurmrestd (24.11 or 26.05; a cluster without slurmrestd, 22.05, is skipped with a note),
its service token fetched from the cluster's stand-in of Keycloak's token endpoint, as the
cluster's ``daemon.env`` configures it. Its cluster files still go over SSH, through a
counting sshd of its own (``bench.cluster.CountingSSHD``), which shows that it runs no
Slurm command there. Measured:

1. submit rate: ``/submit`` (held jobs, 1 client and 8) next to raw ``POST job/submit``
   with a token of the same client, built by ``rest_shapes.job_description`` from the very
   sbatch options and script the daemon renders (sequential and 8 in parallel);
2. requests to slurmrestd per minute: the daemon's own counter
   (``slurm_downstream_slurmrestd_requests_total``) and slurmrestd's log (``operations_router``
   lines, counted server side: every client of that slurmrestd, so other suites' too), at
   several populations and upstream call rates;
3. upstream latency with the daemon tracking the largest real population this run makes
   (held jobs submitted straight to slurmrestd, named ``jarvice_...`` so the daemon adopts
   them): flat-out windows as benchmark 1, and an upstream on a timer over more than one
   complete listing (one every 60 s);
4. the poll's cost: daemon CPU with upstream silent, the mean poll (``poll_seconds``), and
   the two kinds of listing measured straight with httpx: bytes and seconds of a complete
   ``GET jobs/``, of the same with ``update_time`` ("nothing changed"), the JSON parse and
   the conversion; and whether slurmctld keeps saying "nothing changed" while nothing does.

Every job this benchmark makes carries the run's tag in its name and is cancelled at the end.
"""

from __future__ import annotations

import json
import os
import re
import time
from functools import partial
from pathlib import Path

import httpx
import trio

from adapters import jobscript
from adapters.slurm import rest_shapes
from adapters.slurm.parsers import JOB_PREFIX
from bench import api_latency, upstream_load
from bench.cluster import STATE, OutageWatch, cancel_run, cluster_env, slurm
from bench.cluster_load import upstream_calls
from bench.context import CONCURRENCY, Context, JobRef, Live
from bench.daemon_proc import job_name
from bench.stats import median_of, ms, show, summary
from config.settings import load
from daemon.server import script_environment
from tests.support.upstream import submit_args

PARSER = "v0.0.42"  # what the daemon's ``auto`` chooses on 24.11; 26.05 serves it too
PATH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}  # what RestSlurm.submit gives a job
TARGET = int(os.environ.get("BENCH_REST_JOBS", "9500"))  # Slurm's default MaxJobCount is 10,000
POPULATIONS = tuple(int(n) for n in os.environ.get("BENCH_REST_POPULATIONS", "100,1000").split(","))
RAW_SEQUENTIAL = 100
RAW_PARALLEL = 200
DAEMON_SEQUENTIAL = 150
WARMUP = 5
WINDOW = 12.0  # seconds per load row (six polls at the default 2 s)
LONG_WINDOW = float(os.environ.get("BENCH_REST_LONG", "65"))  # spans a complete listing (one every 60 s)
LONG_RATE = 250.0  # /runstatus per second in it
TOKEN_FOR = 200.0  # seconds a raw token is used (the stand-in's live 300 s)
RESTD_LOG = STATE / "log" / "slurmrestd.log"
_ROUTED = re.compile(r"operations_router: \S+ (GET|POST|DELETE) (/\S+)")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ------------------------------------------------------------------ slurmrestd's outages
class RestdWatch(OutageWatch):
    """slurmrestd: a TCP connect. Another suite's fault tests kill and restart it; a measurement that
    overlaps such an outage (or a slurmctld one) is taken again (``Context.undisturbed``)."""

    TIMEOUT = 1.0

    def __init__(self, url: str) -> None:
        super().__init__()
        parsed = httpx.URL(url)
        self.host, self.port = parsed.host, parsed.port or 80

    async def up(self) -> bool:
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
        except OSError:
            return False
        await stream.aclose()
        return True


WATCH: RestdWatch | None = None  # while the stage runs (also in Context.watches)


# ------------------------------------------------------------------ raw slurmrestd, same client
class RawRest:
    """slurmrestd as a bare httpx client sees it, with a client-credentials token of the daemon's client."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.url = env["JARVICE_SLURMRESTD_URL"].rstrip("/")
        self.http = httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))
        self._token = ""
        self._at = -1e9
        self.fetches = 0
        self._lock = trio.Lock()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def token(self) -> str:
        async with self._lock:
            return await self._token_locked()

    async def _token_locked(self) -> str:
        if time.monotonic() - self._at > TOKEN_FOR:
            self.fetches += 1
            response = await self.http.post(self.env["JARVICE_KEYCLOAK_TOKEN_URL"], data={
                "grant_type": "client_credentials", "client_id": self.env.get("JARVICE_KEYCLOAK_CLIENT_ID",
                                                                               "nimbix-slurm-sched-client"),
                "client_secret": self.env["JARVICE_KEYCLOAK_CLIENT_SECRET"]})
            response.raise_for_status()
            self._token = response.json()["access_token"]
            self._at = time.monotonic()
        return self._token

    async def submit(self, body: dict) -> int:
        response = await self.http.post(f"{self.url}/slurm/{PARSER}/job/submit", json=body,
                                        headers={"X-SLURM-USER-TOKEN": await self.token()})
        answer = response.json()
        jobid = answer.get("job_id")
        if response.status_code != 200 or not isinstance(jobid, int):
            raise RuntimeError(f"job/submit: HTTP {response.status_code}: {rest_shapes.errors_text(answer)[:300]}")
        return jobid

    async def listing(self, since: int | None = None) -> dict:
        """One ``GET jobs/``: status, bytes, seconds to the last byte, JSON parse seconds, and the body."""
        params = {"update_time": str(since)} if since is not None else None
        headers = {"X-SLURM-USER-TOKEN": await self.token()}
        t0 = time.perf_counter()
        response = await self.http.get(f"{self.url}/slurm/{PARSER}/jobs/", params=params, headers=headers)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        body = json.loads(response.content)
        parse = time.perf_counter() - t1
        return {"status": response.status_code, "bytes": len(response.content), "seconds": seconds, "parse": parse,
                "body": body}


def unchanged(answer: dict) -> bool:
    warnings = " ".join(str(w.get("description", "")) for w in answer.get("warnings") or ())
    return not answer.get("jobs") and "No job changes" in warnings


def described_job(env: dict[str, str], name: str, number: int) -> dict:
    """``POST job/submit``'s body for the held job the daemon makes of a /submit, as the daemon builds it."""
    settings = load(env)
    submission = jobscript.build(submit_args(name, number, "true", held=True), settings.executor,
                                 script_environment(settings))
    return rest_shapes.job_description(submission.sbatch_args, submission.batch_script, PATH_ENV)


async def raw_submits(raw: RawRest, bodies: list[dict], parallel: int) -> tuple[float, list[int]]:
    """Submit every body, ``parallel`` at a time: (seconds, job ids). Stops at Slurm's first refusal."""
    ids: list[int] = []
    todo = iter(bodies)
    refused: list[str] = []

    async def worker() -> None:
        for body in todo:
            while not refused:
                try:
                    ids.append(await raw.submit(body))
                    break
                except httpx.TransportError:  # slurmrestd restarted (another suite's fault test): once it is back
                    if WATCH is None:
                        raise
                    await trio.sleep(WATCH.PERIOD * 2)
                    await WATCH.wait_up(0)
                except RuntimeError as exc:
                    refused.append(str(exc))
            if refused:
                return

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(parallel):
            nursery.start_soon(worker)
    seconds = time.perf_counter() - started
    if refused:
        print(f"   slurmrestd refused a submit after {len(ids):,}: {refused[0]}", flush=True)
    return seconds, ids


# ------------------------------------------------------------------ what the daemon and slurmrestd say
async def daemon_metrics(live: Live) -> dict[str, float]:
    text = (await live.proc.client.get("/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("slurm_downstream_") and " " in line:
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                pass
    return values


def _metric(values: dict[str, float], name: str) -> float:
    return values.get(f"slurm_downstream_{name}", 0.0)


def log_mark() -> int:
    return RESTD_LOG.stat().st_size if RESTD_LOG.exists() else 0


def log_requests(since: int) -> dict[str, int]:
    """slurmrestd's routed requests since ``since`` (bytes into its log), by method and endpoint."""
    if not RESTD_LOG.exists():
        return {}
    with RESTD_LOG.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    counts: dict[str, int] = {}
    for method, path in _ROUTED.findall(text):
        parts = path.split("/")
        # /slurm/v0.0.42/jobs/ -> "GET jobs/"; /slurm/v0.0.42/job/123 -> "GET job/<id>"
        what = parts[3] + ("/" if path.endswith("/") else "/<id>" if len(parts) > 4 and parts[4] else "") \
            if len(parts) > 3 and parts[1] == "slurm" else path
        key = f"{method} {what}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# ------------------------------------------------------------------ populations
async def populate(ctx: Context, live: Live, raw: RawRest, env: dict[str, str], count: int) -> list[JobRef]:
    """At least ``count`` jobs in the daemon's lists: held jobs submitted straight to slurmrestd make up."""
    active = await ctx.active(live)
    missing = count - len(active)
    if missing > 0:
        template = described_job(env, job_name(ctx.run, "r", 0), 0)
        bodies = []
        for _ in range(missing):
            number = ctx.next_number()
            name = job_name(ctx.run, "r", number)
            live.numbers[name] = number
            job = dict(template["job"], name=JOB_PREFIX + name, comment=f"jarvice:{number}")
            bodies.append({"job": job})
        print(f"   submitting {missing:,} held jobs straight to slurmrestd ({CONCURRENCY} in parallel; load average "
              f"{loadavg():.2f})", flush=True)
        seconds, ids = await raw_submits(raw, bodies, CONCURRENCY)
        print(f"   {len(ids):,} submitted in {seconds:.0f}s ({len(ids) / seconds:.0f}/s)", flush=True)
        want = len(active) + len(ids)
        unavailable = 0
        t0 = time.perf_counter()
        with trio.fail_after(300):
            while True:
                try:
                    active = await ctx.active(live)
                except httpx.HTTPStatusError as exc:  # 503: no poll finished within the staleness limit
                    if exc.response.status_code != 503:
                        raise
                    unavailable += 1
                    await trio.sleep(1)
                    continue
                if len(active) >= want:
                    break
                await trio.sleep(1)
        print(f"   the daemon lists {len(active):,} jobs {time.perf_counter() - t0:.0f}s later"
              + (f" ({unavailable} answers 503 meanwhile)" if unavailable else ""), flush=True)
    return active


# ------------------------------------------------------------------ 1. submit rate
async def _daemon_rate(ctx: Context, live: Live, count: int, clients: int) -> dict:
    m0, cpu = await daemon_metrics(live), live.proc.cpu_seconds()
    started = time.perf_counter()
    _, seconds = await ctx.submit_many(live, count, tag="s", held=True, concurrency=clients)
    wall = time.perf_counter() - started
    m1 = await daemon_metrics(live)
    s = summary(seconds)
    return {"jobs": count, "seconds": wall, "jobs_per_s": count / wall, "median_ms": ms(s["median"]),
            "p99_ms": ms(s["p99"]),
            "restd_requests": _metric(m1, "slurmrestd_requests_total") - _metric(m0, "slurmrestd_requests_total"),
            "daemon_cpu_ms_per_job": ms((live.proc.cpu_seconds() - cpu) / count)}


async def submit_rate(ctx: Context, live: Live, raw: RawRest, env: dict[str, str], total: int) -> dict:
    body = described_job(env, f"bench_raw{ctx.tag}", 1)
    body["job"]["name"] = f"bench_raw{ctx.tag}"  # not ours: the daemon does not adopt them
    rows: dict[str, dict] = {}

    async def rawrow(label: str, count: int, parallel: int) -> None:
        async def once() -> tuple[float, list[int]]:
            await raw_submits(raw, [body] * WARMUP, parallel)
            return await raw_submits(raw, [body] * count, parallel)

        seconds, ids = await ctx.undisturbed(label, once)
        rows[label] = {"jobs": len(ids), "seconds": seconds, "jobs_per_s": len(ids) / seconds}
        await trio.to_thread.run_sync(cancel_run, f"bench_raw{ctx.tag}")

    await rawrow("raw POST job/submit, sequential", RAW_SEQUENTIAL, 1)
    await rawrow(f"raw POST job/submit, {CONCURRENCY} parallel", RAW_PARALLEL, CONCURRENCY)
    await ctx.submit_many(live, WARMUP, tag="w", held=True, concurrency=1)
    rows["daemon /submit, 1 client"] = await ctx.undisturbed(
        "daemon /submit, 1 client", lambda: _daemon_rate(ctx, live, DAEMON_SEQUENTIAL, 1))
    count = max(CONCURRENCY * 20, total - len(await ctx.active(live)))
    rows[f"daemon /submit, {CONCURRENCY} clients"] = await ctx.undisturbed(
        "daemon /submit, 8 clients", lambda: _daemon_rate(ctx, live, count, CONCURRENCY))
    await rawrow(f"raw POST job/submit, {CONCURRENCY} parallel (after)", RAW_PARALLEL, CONCURRENCY)
    seq = rows["raw POST job/submit, sequential"]["jobs_per_s"]
    par = median_of([rows[f"raw POST job/submit, {CONCURRENCY} parallel"]["jobs_per_s"],
                     rows[f"raw POST job/submit, {CONCURRENCY} parallel (after)"]["jobs_per_s"]])
    result = {"rows": rows,
              "daemon_vs_raw_rest_sequential": rows["daemon /submit, 1 client"]["jobs_per_s"] / seq,
              "daemon_vs_raw_rest_parallel": rows[f"daemon /submit, {CONCURRENCY} clients"]["jobs_per_s"] / par}
    show("R1. submit rate through slurmrestd (held 1-task jobs)",
         ["how", "jobs", "jobs/s", "median ms per submit", "p99 ms", "slurmrestd requests", "daemon CPU ms/job"],
         [[label, r["jobs"], r["jobs_per_s"], r.get("median_ms"), r.get("p99_ms"), r.get("restd_requests"),
           r.get("daemon_cpu_ms_per_job")] for label, r in rows.items()], [
             f"daemon / raw: {result['daemon_vs_raw_rest_sequential']:.0%} sequential, "
             f"{result['daemon_vs_raw_rest_parallel']:.0%} with {CONCURRENCY} in parallel (raw parallel: median of "
             "before and after)",
             f"raw: httpx straight to slurmrestd, a client-credentials token of the daemon's client, the job description "
             f"rest_shapes.job_description makes of the daemon's own sbatch options and script; '(after)': once Slurm "
             f"holds the daemon's jobs too; the daemon polls (every {live.poll_interval:g}s) meanwhile"])
    return result


# ------------------------------------------------------------------ 2 and 4. load and poll cost
async def load_row(live: Live, jobs: list[JobRef], period: float | None, window: float = WINDOW) -> dict:
    m0, cpu, mark, ssh = await daemon_metrics(live), live.proc.cpu_seconds(), log_mark(), live.sshd.mark()
    t0 = time.perf_counter()
    if period is None:
        await trio.sleep(window)
        up = {"period_s": None, "demanded_per_s": 0.0, "achieved_per_s": 0.0, "errors": 0}
    else:
        up = await upstream_load.drive(upstream_calls(live, jobs), period=period, window=window)
    seconds = time.perf_counter() - t0
    m1 = await daemon_metrics(live)
    served = log_requests(mark)
    polls = _metric(m1, "poll_seconds_count") - _metric(m0, "poll_seconds_count")
    poll_s = _metric(m1, "poll_seconds_sum") - _metric(m0, "poll_seconds_sum")
    per_min = 60.0 / seconds
    return {
        "jobs": len(jobs), "upstream": up, "window_s": seconds,
        "daemon_requests_per_min": (_metric(m1, "slurmrestd_requests_total")
                                    - _metric(m0, "slurmrestd_requests_total")) * per_min,
        "slurmrestd_log_per_min": {k: v * per_min for k, v in sorted(served.items())},
        "polls_per_min": polls * per_min,
        "poll_mean_ms": ms(poll_s / polls) if polls else float("nan"),
        "daemon_cpu_percent": 100 * (live.proc.cpu_seconds() - cpu) / seconds,
        "ssh_slurm_commands": live.sshd.tally(ssh).slurm_commands,
    }


async def load_rows(ctx: Context, live: Live, jobs: list[JobRef], periods: tuple[float | None, ...]) -> list[dict]:
    rows = []
    for period in periods:
        print(f"   load with {len(jobs):,} jobs, upstream {'silent' if period is None else f'every {period:g}s'} "
              f"(load average {loadavg():.2f})", flush=True)
        rows.append(await ctx.undisturbed(f"REST load, {len(jobs):,} jobs, {period}",
                                          lambda period=period: load_row(live, jobs, period)))
    return rows


async def listing_cost(raw: RawRest, jobs: int) -> dict:
    """Both kinds of listing, straight: 3 complete ones, 3 "since", then whether "nothing changed" lasts 10 s."""
    full = [await raw.listing() for _ in range(3)]
    body = full[-1]["body"]
    records = [r for r in body.get("jobs") or () if str(r.get("name", "")).startswith(JOB_PREFIX)]
    t0 = time.perf_counter()
    rest_shapes.jobs_of({"jobs": records})
    convert = time.perf_counter() - t0
    last = rest_shapes.number(body.get("last_update"))
    since = [await raw.listing(last) for _ in range(3)]
    kept = 0
    asked = 0
    for _ in range(10):
        await trio.sleep(1)
        asked += 1
        kept += unchanged((await raw.listing(last))["body"])
    moved = rest_shapes.number((await raw.listing())["body"].get("last_update"))
    return {
        "jobs": jobs, "listed": len(body.get("jobs") or ()),
        "full_bytes": full[-1]["bytes"], "full_ms": median_of(ms(f["seconds"]) for f in full),
        "full_parse_ms": median_of(ms(f["parse"]) for f in full), "convert_ms": ms(convert),
        "since_bytes": since[-1]["bytes"], "since_ms": median_of(ms(s["seconds"]) for s in since),
        "since_unchanged": all(unchanged(s["body"]) for s in since),
        "unchanged_after_1_to_10s": f"{kept}/{asked}", "last_update_moved_s": (moved or 0) - (last or 0),
    }


def print_load(rows: list[dict]) -> None:
    table = []
    for r in rows:
        up = r["upstream"]
        table.append([r["jobs"], "silent" if up["period_s"] is None else f"every {up['period_s']:g}s",
                      up["demanded_per_s"], up["achieved_per_s"], r["daemon_requests_per_min"],
                      ", ".join(f"{k} {v:.0f}" for k, v in r["slurmrestd_log_per_min"].items()) or "-",
                      r["polls_per_min"], r["poll_mean_ms"], r["daemon_cpu_percent"], r["ssh_slurm_commands"]])
    show("R2. requests to slurmrestd per minute, and the poll's cost",
         ["jobs", "upstream polls", "calls/s asked", "calls/s served", "daemon requests/min",
          "slurmrestd log /min (all clients)", "polls/min", "mean poll ms", "daemon CPU %", "Slurm cmds over SSH"],
         table, [f"{WINDOW:g}s per row; daemon polls every 2s; 'daemon requests': its slurmrestd_requests_total counter; "
                 "'slurmrestd log': operations_router lines in slurmrestd's log, every client of it (other suites too)",
                 "upstream: /queued + /running + every job's /runstatus once per period (bench/upstream_load.py)"])


def print_listings(rows: list[dict]) -> None:
    show("R4. one poll's listing, straight from slurmrestd (httpx, same token)",
         ["jobs", "complete: KB", "ms", "JSON parse ms", "to SlurmJobs ms", "since update_time: KB", "ms",
          "'no change'", "still 'no change' 1-10s later", "last_update moved s"],
         [[r["jobs"], r["full_bytes"] / 1024, r["full_ms"], r["full_parse_ms"], r["convert_ms"], r["since_bytes"] / 1024,
           r["since_ms"], "yes" if r["since_unchanged"] else "NO", r["unchanged_after_1_to_10s"],
           r["last_update_moved_s"]] for r in rows],
         ["complete: GET jobs/ (every job slurmctld holds, median of 3, to the last byte); parse: json.loads of it; "
          "to SlurmJobs: rest_shapes.jobs_of on our records (the daemon reads its listing job by job in a worker "
          "thread instead, adapters/slurm/rest.py _loads_ours); "
          "since: GET jobs/?update_time=<its last_update>"])


# ------------------------------------------------------------------ 3. upstream latency at the largest population
async def latency(ctx: Context, live: Live, active: list[JobRef]) -> dict:
    tier = {"jobs": len(active), "kind": "real Slurm through slurmrestd",
            "source": f"{len(active):,} real held Slurm jobs, polled through slurmrestd every {live.poll_interval:g}s",
            "endpoints": {}}
    try:
        tier["endpoints"] = await ctx.undisturbed("latency", lambda: api_latency.endpoints(ctx, live, active, []))
    except Exception as exc:  # noqa: BLE001 - a 503 (stale snapshot) ends benchmark 1's windows: say so, go on
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        tier["endpoints_failed"] = str(exc)[:300]
        print(f"   !! flat-out windows stopped: {tier['endpoints_failed']}", flush=True)
    tier["rss_kb"] = live.proc.status()
    if tier["endpoints"]:
        api_latency._print(tier)  # noqa: SLF001 - the same table as benchmark 1
    calls = [lambda job=job: live.proc.upstream.post("/runstatus", job.args) for job in active]
    m0 = await daemon_metrics(live)
    print(f"   /runstatus on a timer at {LONG_RATE:g}/s for {LONG_WINDOW:g}s (load average {loadavg():.2f})", flush=True)
    paced = await ctx.undisturbed("paced /runstatus",
                        lambda: upstream_load.drive(calls, period=len(calls) / LONG_RATE, window=LONG_WINDOW))
    m1 = await daemon_metrics(live)
    paced["polls"] = _metric(m1, "poll_seconds_count") - _metric(m0, "poll_seconds_count")
    paced["poll_mean_ms"] = ms((_metric(m1, "poll_seconds_sum") - _metric(m0, "poll_seconds_sum")) / paced["polls"]) \
        if paced["polls"] else float("nan")
    tier["open_loop"] = paced
    show(f"R3b. /runstatus at upstream's pace, {len(active):,} jobs, over a complete listing",
         ["calls/s asked", "answered", "median ms", "p99 ms", "p99 ms once sent", "backlog", "errors", "polls",
          "mean poll ms"],
         [[paced["demanded_per_s"], paced["achieved_per_s"], paced["response_median_ms"], paced["response_p99_ms"],
           paced["service_p99_ms"], paced["backlog"], paced["errors"], paced["polls"], paced["poll_mean_ms"]]],
         [f"{LONG_WINDOW:g}s: at least one complete listing (every 60 s) falls inside; from each call's scheduled time "
          f"to its answer, {CONCURRENCY} keep-alive connections"])
    return tier


# ------------------------------------------------------------------ the stage
async def run(ctx: Context) -> dict:
    env = cluster_env()
    if "JARVICE_SLURMRESTD_URL" not in env or "JARVICE_KEYCLOAK_TOKEN_URL" not in env:
        print(f"   skipped: the test cluster at {STATE} runs no slurmrestd (24.11 and 26.05 do: "
              "make bench SLURM_VERSION=24.11)", flush=True)
        ctx.results["rest"] = {"skipped": "no slurmrestd on this test cluster"}
        return ctx.results["rest"]
    global WATCH
    WATCH = RestdWatch(env["JARVICE_SLURMRESTD_URL"])
    ctx.watches.append(WATCH)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(WATCH.run)
        try:
            return await _run(ctx, env)
        finally:
            ctx.watches.remove(WATCH)
            nursery.cancel_scope.cancel()


async def _run(ctx: Context, env: dict[str, str]) -> dict:
    result: dict = {"target_jobs": TARGET, "parser": PARSER}
    ctx.results["rest"] = result
    raw = RawRest(env)
    try:
        live = await ctx.daemon("rest", env={"JARVICE_SLURM_CLIENT": "slurmrestd_client"})
        result["load"], result["listings"] = [], []
        for count in POPULATIONS:
            if count == POPULATIONS[-1]:
                result["submit"] = await submit_rate(ctx, live, raw, env, count)
            active = await populate(ctx, live, raw, env, count)
            periods: tuple[float | None, ...] = (None, 5.0) if count < 1000 else (None, 5.0, 1.0)
            rows = await load_rows(ctx, live, active, periods)
            print_load(rows)
            result["load"] += rows
            result["listings"].append(await ctx.undisturbed("listings", partial(listing_cost, raw, len(active))))
            print_listings(result["listings"][-1:])
        active = await populate(ctx, live, raw, env, TARGET)
        result["reached"] = len(active)
        result["slurm_jobs"] = len(slurm("squeue", "-h", "-o", "%i").stdout.split())
        print(f"   the daemon tracks {len(active):,} jobs; slurmctld holds {result['slurm_jobs']:,} in all", flush=True)
        rows = await load_rows(ctx, live, active, (None, 10.0))
        print_load(rows)
        result["load"] += rows
        result["listings"].append(await ctx.undisturbed("listings", partial(listing_cost, raw, len(active))))
        print_listings(result["listings"][-1:])
        result["latency"] = await latency(ctx, live, active)
        print_load(result["load"])
        print_listings(result["listings"])
    finally:
        with trio.CancelScope(shield=True):
            await raw.aclose()
            await ctx.stop("rest")
            cancelled = await trio.to_thread.run_sync(cancel_run, ctx.tag)
            print(f"   cancelled {cancelled:,} jobs of this run", flush=True)
            assert WATCH is not None
            result["slurmrestd_outages_s"] = [round(b - a, 1) for a, b in WATCH.outages]
    return result

