"""The daemon over a simulated Slurm holding a large population (``python -m bench.simulated``).

Used where real jobs would take too long to create (10,000 jobs at ~66 sbatch/s
is minutes). Everything above the Slurm adapter is the real daemon: the
Downstream reactor adopts the twin's jobs through its normal poll, and the real
``create_app`` is served by hypercorn on a real socket. Only the Slurm backend
is the twin (``adapters/slurm/twin.py``), which answers in-process without SSH.

Environment: the daemon's JARVICE_* settings, plus BENCH_SIM_JOBS (population),
BENCH_SIM_FINISHED_FILE (where to write the finished jobs, for /exitstatus).
Mix: 50 % pending, 40 % running, 10 % finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from functools import partial
from pathlib import Path

import trio
from hypercorn.trio import serve as hypercorn_serve

from adapters.journal import Journal
from adapters.slurm.twin import SimulatedSlurm
from config.settings import Settings, load
from daemon.api import create_app
from daemon.heap import freeze_heap
from daemon.logs import configure_logging
from daemon.server import http_config, script_environment
from daemon.service import Downstream

log = logging.getLogger("bench.simulated")

RUNNING_SHARE = 0.5  # of which a fifth then finishes
FINISHED_SHARE = 0.1


async def serve_simulated(settings: Settings, host: str, port: int, jobs: int, finished_file: Path | None) -> None:
    twin = SimulatedSlurm(user=settings.ssh_user, scratch_dir=settings.scratch_dir, min_job_age=3600, view_in_thread=True)
    made = twin.populate(jobs, prefix="20261123-benchsim-alice_sim", running_share=RUNNING_SHARE)
    downstream = Downstream(slurm=twin, script_env=script_environment(settings), executor=settings.executor,
                            poll_interval=settings.poll_interval, command_timeout=settings.command_timeout,
                            journal=Journal(settings.journal))
    config = http_config(host, port)
    app = create_app(downstream, settings.server_key)
    # as serve() does before its first poll; the twin's population, which stands in for
    # slurmctld's memory rather than the daemon's, is set aside with the start-up heap
    freeze_heap()
    async with trio.open_nursery() as nursery:
        await nursery.start(downstream.run)
        while downstream.status.polls < 1:  # the first poll adopts the population
            await trio.sleep(0.05)
        ending = [j for j in made if j.code == "R"][: int(jobs * FINISHED_SHARE)]
        for job in ending:
            twin.finish(job.jobid)
        polls = downstream.status.polls
        downstream.wake()
        while downstream.status.polls <= polls:
            await trio.sleep(0.05)
        if finished_file is not None:
            finished = [[j.slurm_name.removeprefix("jarvice_"), int(j.comment.split(":")[1]), j.jobid] for j in ending]
            finished_file.write_text(json.dumps(finished))
        log.info("simulated Slurm: %d jobs adopted, %d of them finished; book %s", len(made), len(ending),
                 downstream.book.counts())
        await nursery.start(partial(hypercorn_serve, app, config))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulated")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load()
    configure_logging(settings.log_level, settings.log_format)
    jobs = int(os.environ.get("BENCH_SIM_JOBS", "10000"))
    finished = os.environ.get("BENCH_SIM_FINISHED_FILE")
    trio.run(serve_simulated, settings, args.host, args.port, jobs, Path(finished) if finished else None)


if __name__ == "__main__":
    main()
