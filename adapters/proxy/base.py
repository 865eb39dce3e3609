"""What the daemon needs of a proxy backend, whichever runs the proxies (the daemon itself, or Kubernetes).

The daemon asks for a proxy when an interactive job runs, reads its status
while the job runs (to tell upstream the URL, or why there is none), and stops
it when the job leaves ``running``. ``keys`` lets the garbage collector find
proxies whose job the daemon no longer tracks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import trio


class ProxyState(StrEnum):
    STARTING = "starting"  # asked for; not yet accepting users (pod pending, listener binding)
    SERVING = "serving"  # accepting user connections
    FAILED = "failed"  # gave up; ``error`` says why


@dataclass(frozen=True)
class ProxyTarget:
    """Where one job's web service listens: the compute node's address, as Slurm knows it."""

    key: str  # the job's upstream number, as a string: names Kubernetes objects jarvice-job-proxy-<key>
    host: str
    port: int


@dataclass(frozen=True)
class ProxyStatus:
    state: ProxyState
    url: str = ""  # what a user's browser opens; "" until serving
    error: str = ""
    connections: int = 0  # user connections open now
    connections_total: int = 0
    bytes_up: int = 0  # user -> job
    bytes_down: int = 0  # job -> user
    restarts: int = 0
    pid: int | None = None  # the proxy's own process, when it runs as one (local mode's children)


class ProxyBackend(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the proxies until cancelled; ready once ``start`` may be called."""
        ...

    async def start(self, target: ProxyTarget) -> ProxyStatus:
        """Start (or keep) the proxy for ``target.key``; idempotent."""
        ...

    async def stop(self, key: str) -> None:
        """Stop it and close its user connections; stopping an unknown key is not an error."""
        ...

    def status(self, key: str) -> ProxyStatus | None: ...

    async def keys(self) -> set[str]:
        """Every proxy this backend runs, including ones from before a restart."""
        ...
