"""What the daemon needs of Slurm: the real client over SSH, or the simulated twin.

Two implementations keep each other honest: ``SlurmClient`` runs real commands,
``SimulatedSlurm`` models their observable behaviour in-process, and one set of
contract tests (``tests/contract``) runs against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from adapters.jobscript import Submission
from adapters.slurm.client import ClusterInfo, JobFacts, Poll
from adapters.slurm.parsers import SlurmJob


class SlurmBackend(Protocol):
    scratch_dir: str
    accounting: str  # "sacct", "jobcomp" or "none"

    async def preflight(self) -> ClusterInfo: ...

    async def ping(self) -> None: ...

    async def submit(self, submission: Submission) -> str: ...

    async def poll(self) -> Poll: ...

    async def find_by_name(self, name: str) -> list[SlurmJob]: ...

    async def inspect(self, jobid: str) -> JobFacts: ...

    async def cancel(self, jobid: str, name: str) -> None: ...

    async def release(self, jobid: str) -> None: ...

    async def node_address(self, node: str) -> str: ...

    async def show_job(self, jobid: str) -> str: ...

    async def tail(self, jobid: str, lines: int = ...) -> str | None: ...

    async def cleanup(self, jobids: Sequence[str]) -> None: ...

    async def job_files(self) -> dict[str, float]: ...

    async def list_dir(self, path: str, details: bool) -> str: ...
