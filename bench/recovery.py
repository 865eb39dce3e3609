"""Recovery after a long partition (``python -m bench.recovery``): how soon answers are right again, and
whether polls stay on time meanwhile.

300 jobs run, the link to the login node goes for 10 minutes, every job ends meanwhile and Slurm
purges them (MinJobAge 300 s), then the link returns. The daemon must find each job's end from
its rc file or accounting. Measured on the simulated Slurm under trio's virtual clock, with the
login node modelled as SSH's limits make it: each command holds one of ``SESSIONS`` channels for
``LATENCY`` seconds (so this measures the design, not this machine's CPU). Two ways compared:

* ``batched``: today's daemon, vanished jobs resolved RESOLVE_BATCH at a time on upstream's
  channel budget (one channel kept for the poller);
* ``per job``: what the daemon did before, one inspect per vanished job, all started at once
  outside any budget (re-created here by overriding the executor).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from functools import partial

import trio
import trio.testing

from adapters.jobscript import ScriptEnvironment
from adapters.slurm.client import JobFacts
from adapters.slurm.twin import SimulatedSlurm
from bench.stats import show
from daemon.service import Downstream
from statemachines.job import Effect, Resolve
from tests.support.upstream import submit_args

JOBS = 300
PARTITION = 600.0
LATENCY = 0.3  # seconds one remote command holds its SSH channel
SESSIONS = 8  # JARVICE_SLURM_SSH_MAX_SESSIONS
POLL_INTERVAL = 2.0


class LoginNode:
    """The twin behind SSH's channel limit: every command waits for a free channel, holds it LATENCY s."""

    def __init__(self, twin: SimulatedSlurm, sessions: int) -> None:
        self.twin = twin
        self.channels = trio.Semaphore(sessions)

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.twin, name)
        if name not in {"preflight", "ping", "submit", "poll", "find_by_name", "inspect", "inspect_many", "cancel",
                        "release", "node_address", "show_job", "tail", "cleanup", "job_files", "list_dir"}:
            return attr

        async def over_ssh(*args: object) -> object:
            async with self.channels:
                return await attr(*args)

        return over_ssh


class PerJob(Downstream):
    """The old executor: each vanished job inspected on its own, at once, outside upstream's budget."""

    def execute(self, effects: list[Effect]) -> None:
        rest = []
        for effect in effects:
            if isinstance(effect, Resolve):
                self.supervisor.spawn("resolve", "", effect.jobid, partial(self._inspect_one, effect.jobid),
                                      key=f"resolve:{effect.jobid}", attempts=1)
            else:
                rest.append(effect)
        super().execute(rest)

    async def _inspect_one(self, jobid: str) -> None:
        facts: JobFacts = await self.slurm.inspect(jobid)
        self._resolved(jobid, facts)


@dataclass
class Outcome:
    way: str
    answers_right_after: float  # seconds from the link's return until every job's end is known
    inspect_commands: int
    late_polls: int  # polls that began more than 1 s after they were due, during recovery
    worst_poll_gap: float  # longest time between two successful polls during recovery


async def scenario(kind: type[Downstream], way: str) -> Outcome:
    twin = SimulatedSlurm(min_job_age=300, latency=LATENCY)
    node = LoginNode(twin, SESSIONS)
    downstream = kind(slurm=node, script_env=ScriptEnvironment(scratch_dir="/tmp/twin"),  # type: ignore[arg-type]
                      poll_interval=POLL_INTERVAL, min_poll_gap=0.5, upstream_sessions=SESSIONS - 1, staleness=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(downstream.run)
        while not downstream.ready:
            await trio.sleep(0.1)
        jobids = []
        for n in range(1, JOBS + 1):
            jobid, _ = await downstream.submit(submit_args(f"recovery-{n}", n, "true"))
            jobids.append(jobid)
        for jobid in jobids:
            twin.start(jobid)
        await trio.sleep(3 * POLL_INTERVAL)
        twin.link_up = False
        await trio.sleep(PARTITION / 2)
        for n, jobid in enumerate(jobids):
            twin.finish(jobid, n % 2)
        twin.advance(PARTITION)  # past MinJobAge: purged before any poll saw them end
        await trio.sleep(PARTITION / 2)
        before = twin.commands["inspect"]
        twin.link_up = True
        back = trio.current_time()
        oks = []
        while not all(downstream.book.get(j).final for j in jobids):
            polls = downstream.status.polls
            await trio.sleep(0.05)
            if downstream.status.polls != polls:
                oks.append(trio.current_time())
        done = trio.current_time() - back
        while trio.current_time() - back < done + 4 * POLL_INTERVAL:
            polls = downstream.status.polls
            await trio.sleep(0.05)
            if downstream.status.polls != polls:
                oks.append(trio.current_time())
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip([back, *oks], oks, strict=False)]
    return Outcome(way=way, answers_right_after=round(done, 2), inspect_commands=twin.commands["inspect"] - before,
                   late_polls=sum(g > POLL_INTERVAL + 1.0 for g in gaps), worst_poll_gap=round(max(gaps, default=0), 2))


def run() -> list[Outcome]:
    logging.disable(logging.WARNING)  # the partition's poll failures are the point, not news
    outcomes = []
    for kind, way in ((Downstream, "batched"), (PerJob, "per job (before)")):
        outcomes.append(trio.run(scenario, kind, way, clock=trio.testing.MockClock(autojump_threshold=0)))
    show(f"recovery after a {PARTITION / 60:g}-minute partition, {JOBS} jobs ended meanwhile "
         f"(virtual time; {SESSIONS} channels, {LATENCY:g} s a command, polls every {POLL_INTERVAL:g} s)",
         ["way", "all answers right after (s)", "inspect commands", "late polls", "worst gap between polls (s)"],
         [[o.way, o.answers_right_after, o.inspect_commands, o.late_polls, o.worst_poll_gap] for o in outcomes])
    return outcomes


async def stage(ctx: object) -> list[dict]:
    """``python -m bench recovery``: in a thread, under its own virtual clock; recorded with the rest."""
    outcomes = [o.__dict__ for o in await trio.to_thread.run_sync(run)]
    ctx.results["recovery"] = {"jobs": JOBS, "partition_s": PARTITION, "latency_s": LATENCY, "sessions": SESSIONS,  # type: ignore[attr-defined]
                               "poll_interval_s": POLL_INTERVAL, "outcomes": outcomes}
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery")
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON too")
    args = parser.parse_args()
    outcomes = run()
    if args.json:
        print(json.dumps([o.__dict__ for o in outcomes], indent=2))


if __name__ == "__main__":
    main()
