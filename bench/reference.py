"""A baseline that treats the cluster the way the reference downstream does (design.md).

Written for this benchmark from the behaviour design.md describes, not from the
reference's code: every upstream call opens a new SSH connection to the login
node (the ``ssh`` binary, no multiplexing; the reference pays 0.22-0.27 s per
connection) and runs one Slurm command there: ``squeue`` for the lists,
``squeue -j <id>`` for each ``/runstatus``, ``sbatch`` for each submit. It
keeps no state between calls. It has no HTTP layer: the few hundred
microseconds that would add are left out, in the baseline's favour.
"""

from __future__ import annotations

import shlex

import trio

from adapters.slurm.parsers import JOB_PREFIX, expand_nodes, parse_duration, parse_sbatch
from daemon.service import hms

QUEUED_STATES = "PENDING,CONFIGURING,REQUEUE_FED,REQUEUE_HOLD,REQUEUED"
RUNNING_STATES = "RUNNING,COMPLETING,SUSPENDED,STOPPED,SIGNALING,STAGE_OUT"


class ReferenceDownstream:
    def __init__(self, ssh_argv: list[str], user: str) -> None:
        self.ssh_argv = ssh_argv
        self.user = user

    async def _run(self, command: str, stdin: str | None = None) -> str:
        """One new SSH connection, one command, connection closed."""
        result = await trio.run_process([*self.ssh_argv, command], stdin=stdin.encode() if stdin else b"",
                                        capture_stdout=True, capture_stderr=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{command.split()[0]} failed ({result.returncode}): {result.stderr.decode()[:200]}")
        return result.stdout.decode()

    async def _list(self, states: str) -> list[list[str]]:
        out = await self._run(f"squeue -h -u {shlex.quote(self.user)} -t {states} -o '%j|%A'")
        jobs = []
        for line in out.splitlines():
            name, _, jobid = line.partition("|")
            if name.startswith(JOB_PREFIX):
                jobs.append([name[len(JOB_PREFIX):], jobid])
        return jobs

    async def queued(self) -> list[list[str]]:
        return await self._list(QUEUED_STATES)

    async def running(self) -> list[list[str]]:
        return await self._list(RUNNING_STATES)

    async def runstatus(self, name: str, number: int, jobid: str) -> list:
        out = await self._run(f"SLURM_TIME_FORMAT=standard squeue -h -j {int(jobid)} -o '%N|%M'")
        if not out.strip():
            return [None, None, None, None]
        nodes, _, elapsed = out.strip().splitlines()[0].partition("|")
        return [list(expand_nodes(nodes)), hms(parse_duration(elapsed)), f"{name}/{number}/{jobid}", None]

    async def submit(self, sbatch_args: list[str], script: str) -> str:
        return parse_sbatch(await self._run(f"sbatch {shlex.join(sbatch_args)}", stdin=script))
