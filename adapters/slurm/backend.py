"""What the daemon needs of Slurm: control of jobs, and the cluster's files.

Two interfaces, because slurmrestd can do only the first (design.md): ``SlurmControl``
(submit, poll, inspect, cancel, release, show, node addresses: SSH commands or REST) and
``ClusterFiles`` (output, exit-code files, clean-up, listing: SSH only). The daemon sees one
``SlurmBackend``: the SSH client is both at once (one login-node shell); ``SlurmCluster``
joins a REST control to SSH files, or to none.

The simulated twin (``SimulatedSlurm``) models the whole backend in-process, and one set of
contract tests (``tests/contract``) runs against the twin, the SSH client and the REST one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from adapters.identity import UserIdentity
from adapters.jobscript import Submission
from adapters.slurm.client import ClusterInfo, JobFacts, Poll
from adapters.slurm.parsers import SlurmJob


class SlurmControl(Protocol):
    accounting: str  # "sacct", "jobcomp", "controller" (slurmrestd: what slurmctld still holds) or "none"

    @property
    def service_user(self) -> str:
        """The Slurm user the daemon's own requests run as (the SSH user; slurmrestd: its token's)."""
        ...

    async def preflight(self) -> ClusterInfo: ...

    async def ping(self) -> None: ...

    async def submit(self, submission: Submission, as_user: UserIdentity | None = None) -> str:
        """sbatch; ``as_user``: the job runs as that user, with the user's own credentials (slurmrestd only)."""
        ...

    async def poll(self) -> Poll: ...

    async def find_by_name(self, name: str) -> list[SlurmJob]: ...

    async def inspect(self, jobid: str) -> JobFacts: ...

    async def inspect_many(self, jobids: Sequence[str]) -> dict[str, JobFacts]: ...

    async def cancel(self, jobid: str, name: str) -> None: ...

    async def release(self, jobid: str) -> None: ...

    async def node_address(self, node: str) -> str: ...

    async def show_job(self, jobid: str) -> str: ...


class ClusterFiles(Protocol):
    scratch_dir: str
    available: bool  # False: no way to the files (slurmrestd without SSH); answers say so

    async def prepare(self, home: str = "") -> None: ...

    async def rc_files(self, jobids: Sequence[str]) -> dict[str, int | None]: ...

    async def tail(self, jobid: str, lines: int = ...) -> str | None: ...

    async def cleanup(self, jobids: Sequence[str]) -> None: ...

    async def job_files(self) -> dict[str, float]: ...

    async def list_dir(self, path: str, details: bool) -> str: ...


class SlurmBackend(SlurmControl, ClusterFiles, Protocol):
    """Both interfaces, as the daemon uses them."""


class SlurmCluster:
    """A ``SlurmControl`` and the ``ClusterFiles`` of the same cluster, as one ``SlurmBackend``."""

    def __init__(self, control: SlurmControl, files: ClusterFiles) -> None:
        self.control = control
        self.files = files

    @property
    def accounting(self) -> str:
        return self.control.accounting

    @property
    def service_user(self) -> str:
        return self.control.service_user

    @property
    def scratch_dir(self) -> str:
        return self.files.scratch_dir

    @property
    def available(self) -> bool:
        return self.files.available

    async def preflight(self) -> ClusterInfo:
        info = await self.control.preflight()
        await self.files.prepare(info.home)
        return info

    async def ping(self) -> None:
        await self.control.ping()

    async def submit(self, submission: Submission, as_user: UserIdentity | None = None) -> str:
        return await self.control.submit(submission, as_user)

    async def poll(self) -> Poll:
        return await self.control.poll()

    async def find_by_name(self, name: str) -> list[SlurmJob]:
        return await self.control.find_by_name(name)

    async def inspect(self, jobid: str) -> JobFacts:
        return (await self.inspect_many([jobid]))[jobid]

    async def inspect_many(self, jobids: Sequence[str]) -> dict[str, JobFacts]:
        """The control's facts, and each job's exit-code file."""
        facts = await self.control.inspect_many(jobids)
        if not facts or not self.files.available:
            return facts
        rcs = await self.files.rc_files(list(facts))
        return {j: replace(f, rc_file=rcs.get(j)) for j, f in facts.items()}

    async def cancel(self, jobid: str, name: str) -> None:
        await self.control.cancel(jobid, name)

    async def release(self, jobid: str) -> None:
        await self.control.release(jobid)

    async def node_address(self, node: str) -> str:
        return await self.control.node_address(node)

    async def show_job(self, jobid: str) -> str:
        return await self.control.show_job(jobid)

    async def prepare(self, home: str = "") -> None:
        await self.files.prepare(home)

    async def rc_files(self, jobids: Sequence[str]) -> dict[str, int | None]:
        return await self.files.rc_files(jobids)

    async def tail(self, jobid: str, lines: int = 10_000) -> str | None:
        return await self.files.tail(jobid, lines)

    async def cleanup(self, jobids: Sequence[str]) -> None:
        await self.files.cleanup(jobids)

    async def job_files(self) -> dict[str, float]:
        return await self.files.job_files()

    async def list_dir(self, path: str, details: bool) -> str:
        return await self.files.list_dir(path, details)
