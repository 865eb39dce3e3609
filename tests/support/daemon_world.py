"""A daemon on the simulated Slurm with an in-memory proxy backend, for tests that drive it poll by poll.

Trio time autojumps only when the test function itself asks for ``autojump_clock`` (pytest-trio
reads the clock from the test's own arguments).
"""

from __future__ import annotations

import trio
import trio.testing

from adapters.errors import ClusterUnavailable
from adapters.jobscript import ScriptEnvironment
from adapters.slurm.twin import SimulatedSlurm
from adapters.ssh import ForwardingProhibited
from daemon.service import Downstream
from tests.support.fake_proxies import RecordingProxies
from tests.support.upstream import submit_args


class _Closed:
    async def aclose(self) -> None:
        return None


class FakeTunnels:
    """The login node's ``direct-tcpip``: answers when ``listening`` (by (host, port); None: everything)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.listening: set[tuple[str, int]] | None = None
        self.prohibited: set[str] = set()  # hosts sshd refuses to forward to (administratively prohibited)
        self.opened: list[tuple[str, int]] = []
        self.in_flight = self.most_in_flight = 0

    async def open_tunnel(self, host: str, port: int) -> _Closed:
        self.opened.append((host, port))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await trio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if host in self.prohibited:
            raise ForwardingProhibited(f"{host}:{port} is not reachable from login:22: open failed")
        if self.listening is not None and (host, port) not in self.listening:
            raise ClusterUnavailable(f"open failed: connect to {host} port {port}: Connection refused")
        return _Closed()


class World:
    def __init__(self, twin: SimulatedSlurm | None = None, **downstream: object) -> None:
        self.twin = twin or SimulatedSlurm(min_job_age=10)
        self.proxies = RecordingProxies()
        options: dict = {"poll_interval": 10**6, "min_poll_gap": 0, "proxies": self.proxies, **downstream}
        self.downstream = Downstream(slurm=self.twin, script_env=ScriptEnvironment(scratch_dir="/tmp/twin"), **options)

    async def poll(self) -> None:
        polls = self.downstream.status.polls
        self.downstream.wake()
        while self.downstream.status.polls == polls:
            await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()  # and the effects that the poll started

    async def submitted(self, name: str, number: int, *, interactive: bool = True) -> str:
        while not self.downstream.ready:
            await trio.sleep(0.01)
        jobid, _ = await self.downstream.submit(submit_args(name, number, "sleep 600", interactive=interactive))
        return jobid

    async def running_job(self, name: str, number: int, *, interactive: bool = True,
                          nodes: tuple[str, ...] = ()) -> str:
        jobid = await self.submitted(name, number, interactive=interactive)
        self.twin.start(jobid, nodes)
        await self.poll()
        return jobid

    def failures(self, effect: str, kind: str) -> float:
        value = self.downstream.metrics.registry.get_sample_value(
            "slurm_downstream_effect_failures_total", {"effect": effect, "kind": kind})
        return value or 0.0
