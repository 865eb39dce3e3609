"""The whole daemon against a simulated Slurm, under random interleavings, faults and restarts.

Hypothesis drives upstream calls (through the real Quart handlers, via the
test client), Slurm events (jobs start, finish, fail on a dead node, get
purged), faults (a command fails, hangs, answers garbage, or loses the link
before or after it took effect), time passing, and daemon restarts (a new
Downstream on the same journal, as after SIGKILL). After every step it checks
what upstream would notice: no 500, no job lost, none submitted twice, none
reported finished while Slurm still runs it, exit answers that never change,
and a state machine that never took an illegal transition.

One trio loop runs the daemon (its real nursery and poller); hypothesis runs
in a worker thread and calls into the loop with ``trio.from_thread.run``
(design.md). The daemon's and the twin's clock is a number that moves only when
a rule says so, and the poller polls only when a rule wakes it, so every run is
deterministic and failing examples shrink.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from adapters.errors import ClusterUnavailable
from adapters.jobscript import ScriptEnvironment
from adapters.journal import Journal
from adapters.proxy.base import ProxyState, ProxyStatus
from adapters.slurm.twin import COMMANDS, Fault, SimulatedSlurm
from daemon.api import create_app
from daemon.service import Downstream
from statemachines.proxy import ProxyPhase
from tests.support.fake_proxies import RecordingProxies
from tests.support.upstream import submit_args


class KubeError(Exception):
    """An error of the proxy backend that no adapter translated (a bug, or a raw Kubernetes client error)."""


# what the proxy backend may do to a start: a blip, an untranslated error, a proxy it gives up on
PROXY_FAULTS = {
    "blip": ClusterUnavailable("Kubernetes API: connection refused"),
    "bug": KubeError("(500) Internal Server Error"),
    "gave_up": ProxyStatus(ProxyState.FAILED, error="CrashLoopBackOff"),
}

KEY = "jarvice:stateful"
AUTH = {"Authorization": "Basic amFydmljZTpzdGF0ZWZ1bA=="}
NAMES = [f"20261123-job{i}-alice" for i in range(6)]
EXAMPLES = int(os.environ.get("STATEFUL_EXAMPLES", "200"))
STATS: dict[str, int] = {"examples": 0, "steps": 0, "faults": 0, "restarts": 0, "submits": 0, "urls": 0}


@dataclass
class World:
    """What upstream was told, to check later answers against."""

    jobids: dict[str, str] = field(default_factory=dict)  # name -> jobid, from /submit answers
    answers: dict[str, list] = field(default_factory=dict)  # name -> first /exitstatus answer
    collected: set[str] = field(default_factory=set)


class DaemonLife(RuleBasedStateMachine):
    nursery: trio.Nursery

    def __init__(self) -> None:
        super().__init__()
        STATS["examples"] += 1
        self.now = 1000.0
        self.twin = SimulatedSlurm(scratch_dir="/tmp/twin", min_job_age=60, command_timeout=0, clock=lambda: self.now)
        self.journal = Journal(":memory:")
        self.proxies = RecordingProxies()  # outlives restarts, as Kubernetes objects do
        self.world = World()
        self.scope: trio.CancelScope | None = None
        self.run(self._boot)

    # ------------------------------------------------------------ plumbing
    def run(self, fn, *args):  # noqa: ANN001, ANN201 - a thin bridge into the trio loop
        return trio.from_thread.run(fn, *args)

    async def _boot(self) -> None:
        self.downstream = Downstream(slurm=self.twin, script_env=ScriptEnvironment(scratch_dir="/tmp/twin"),
                                     poll_interval=10**6, staleness=30, command_timeout=5, min_poll_gap=0, journal=self.journal,
                                     wall=lambda: 1.8e9 + self.now, clock=lambda: self.now, proxies=self.proxies)
        self.client = create_app(self.downstream, KEY).test_client()
        self.scope = await self.nursery.start(self._host, self.downstream)
        await trio.testing.wait_all_tasks_blocked()

    @staticmethod
    async def _host(downstream: Downstream, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await downstream.run()

    async def _call(self, method: str, path: str, args: dict | None) -> tuple[int, object]:
        if method == "GET":
            response = await self.client.get(path, headers=AUTH)
        else:
            response = await self.client.post(path, form={"args": json.dumps(args or {})}, headers=AUTH)
        await trio.testing.wait_all_tasks_blocked()
        body = await response.get_data(as_text=True)
        assert response.status_code != 500, (path, body)
        assert "Traceback" not in body
        if response.mimetype == "application/json":
            return response.status_code, json.loads(body)
        return response.status_code, body

    def call(self, method: str, path: str, args: dict | None = None) -> tuple[int, object]:
        return self.run(self._call, method, path, args)

    def teardown(self) -> None:
        if self.scope is not None:
            trio.from_thread.run_sync(self.scope.cancel)

    def ids(self, name: str) -> dict:
        return {"name": name, "number": NAMES.index(name) + 1, "jobid": self.world.jobids[name]}

    def slurm_jobs(self, name: str) -> list:
        every = {**self.twin.accounted, **self.twin.jobs}
        return [j for j in every.values() if j.slurm_name == f"jarvice_{name}"]

    def tracked(self) -> list[str]:
        return [n for n in self.world.jobids if n not in self.world.collected]

    # ------------------------------------------------------------ upstream
    @rule(name=st.sampled_from(NAMES), held=st.booleans(), interactive=st.booleans())
    def submit(self, name: str, held: bool, interactive: bool) -> None:
        if name in self.world.collected:
            return  # upstream never reuses a name once it collected the job
        STATS["submits"] += 1
        args = submit_args(name, NAMES.index(name) + 1, "echo hi", held=held, interactive=interactive)
        status, body = self.call("POST", "/submit", args)
        assert status in (200, 503) or (status == 400 and "Slurm refused" in body["error"]), (status, body)
        if status == 200:
            jobid = body[0]
            assert self.world.jobids.setdefault(name, jobid) == jobid, "a repeated submit answered another job"

    @rule()
    def lists(self) -> None:
        self.check_lists()

    @precondition(lambda self: self.tracked())
    @rule(data=st.data())
    def runstatus(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.tracked()))
        status, body = self.call("POST", "/runstatus", self.ids(name))
        assert status in (200, 503), (status, body)

    @precondition(lambda self: self.world.jobids)
    @rule(data=st.data())
    def exitstatus(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.world.jobids)))
        status, body = self.call("POST", "/exitstatus", self.ids(name))
        assert status in (200, 409, 502, 503), (status, body)  # 502: Slurm answered with an error (a fault)
        if status == 200:
            active = self.twin.active()
            assert self.world.jobids[name] not in active, f"{name} answered finished while Slurm runs it"
            first = self.world.answers.setdefault(name, body)
            assert body == first, "an exit status changed once given"
            self.world.collected.add(name)

    @precondition(lambda self: self.tracked())
    @rule(data=st.data(), path=st.sampled_from(["/terminate", "/release", "/events"]))
    def act(self, data: st.DataObject, path: str) -> None:
        name = data.draw(st.sampled_from(self.tracked()))
        status, body = self.call("POST", path, self.ids(name))
        assert status in (200, 404, 409, 502, 503), (path, status, body)
        if status == 404:  # only for a job the daemon no longer tracks: it must be over in Slurm
            assert self.world.jobids[name] not in self.twin.active(), f"{path} of a job Slurm runs: 404"

    @precondition(lambda self: self.tracked())
    @rule(data=st.data(), what=st.sampled_from(["tail", "info"]))
    def request(self, data: st.DataObject, what: str) -> None:
        ids = self.ids(data.draw(st.sampled_from(self.tracked())))
        status, body = self.call("POST", f"/request/{ids['name']}/{ids['number']}/{ids['jobid']}/{what}", {"qs": {}})
        assert status in (200, 404, 502, 503), (what, status, body)

    # ------------------------------------------------------------ Slurm
    @precondition(lambda self: any(j.code == "PD" and not j.held for j in self.twin.jobs.values()))
    @rule(data=st.data())
    def slurm_starts(self, data: st.DataObject) -> None:
        pending = sorted(j.jobid for j in self.twin.jobs.values() if j.code == "PD" and not j.held)
        self.twin.start(data.draw(st.sampled_from(pending)), data.draw(st.sampled_from([("node1",), ("node2",)])))
        if data.draw(st.booleans()):  # and the daemon sees it at once (interactive jobs get their proxy)
            self.poll()

    @precondition(lambda self: any(j.code == "R" for j in self.twin.jobs.values()))
    @rule(data=st.data(), rc=st.sampled_from([0, 0, 1, 3]), node_dies=st.booleans())
    def slurm_ends(self, data: st.DataObject, rc: int, node_dies: bool) -> None:
        jobid = data.draw(st.sampled_from(sorted(j.jobid for j in self.twin.jobs.values() if j.code == "R")))
        if node_dies:
            self.twin.node_fail(jobid)
        else:
            self.twin.finish(jobid, rc)

    @precondition(lambda self: any(j.code == "R" for j in self.twin.jobs.values()))
    @rule(data=st.data())
    def slurm_requeues(self, data: st.DataObject) -> None:
        """A node failure or preemption puts a running job back in the queue; it may run elsewhere later."""
        self.twin.requeue(data.draw(st.sampled_from(sorted(j.jobid for j in self.twin.jobs.values() if j.code == "R"))))

    # ------------------------------------------------------------ the proxy backend and effects
    @rule(name=st.sampled_from(NAMES), what=st.sampled_from(sorted(PROXY_FAULTS)), on=st.sampled_from(["start", "stop"]))
    def proxy_fault(self, name: str, what: str, on: str) -> None:
        STATS["faults"] += 1
        key, fault = str(NAMES.index(name) + 1), PROXY_FAULTS[what]
        if on == "stop" and isinstance(fault, BaseException):
            self.proxies.stop_error[key] = fault
        elif isinstance(fault, ProxyStatus):
            self.proxies.gave_up[key] = fault
        else:
            self.proxies.start_error[key] = fault

    @rule(broken=st.booleans())
    def proxy_listing(self, broken: bool) -> None:
        self.proxies.keys_error = KubeError("(403) Forbidden") if broken else None

    @rule()
    def proxy_heals(self) -> None:
        self.proxies.start_error.clear()
        self.proxies.stop_error.clear()
        self.proxies.gave_up.clear()

    @rule()
    def a_bug_in_an_effect(self) -> None:
        """The next batch of vanished jobs meets an exception no adapter raises on purpose."""
        inspect_many = self.twin.inspect_many

        async def once(jobids):  # noqa: ANN001, ANN202 - the twin's own signature
            self.twin.inspect_many = inspect_many  # type: ignore[method-assign]
            raise KeyError("a bug while reading accounting")

        self.twin.inspect_many = once  # type: ignore[method-assign]

    @rule()
    def gc(self) -> None:
        """Upstream's /gc (its BAD is a 500 by contract, so it is called below the HTTP layer): never raises,
        and answers about the cluster whatever the proxy backend does."""
        async def gc() -> bool:
            ok = await self.downstream.gc()
            await trio.testing.wait_all_tasks_blocked()
            return ok

        assert self.run(gc) in (True, False)

    @rule(seconds=st.sampled_from([1, 5, 20, 61]))
    def time_passes(self, seconds: int) -> None:
        """Slurm's clock (purges after MinJobAge) and the daemon's (polls, staleness) move together."""
        self.twin.advance(seconds)
        self.now += seconds

    @rule()
    def poll(self) -> None:
        async def poll_now() -> None:
            self.downstream.wake()
            await trio.testing.wait_all_tasks_blocked()

        polls = self.downstream.status.polls
        self.run(poll_now)
        if self.downstream.status.polls > polls:  # a poll succeeded and its proxy tending is done: the daemon
            self.urls_only_for_running_services()  # knows what Slurm shows right now

    def urls_only_for_running_services(self) -> None:
        """A job upstream is given a URL for runs now: not pending again (requeued), not ended."""
        for name, jobid in self.world.jobids.items():
            if name in self.world.collected or not self.downstream.url_of(name, jobid):
                continue
            STATS["urls"] += 1
            job = self.twin.jobs.get(jobid)
            assert job is not None and job.code == "R", f"{name} has a URL while Slurm shows it {job and job.code}"

    @rule(command=st.sampled_from(COMMANDS), fault=st.sampled_from(list(Fault)), times=st.integers(1, 3))
    def fault(self, command: str, fault: Fault, times: int) -> None:
        STATS["faults"] += times
        self.twin.inject(command, fault, times)

    @rule(up=st.booleans())
    def link(self, up: bool) -> None:
        self.twin.link_up = up

    @rule()
    def restart(self) -> None:
        """SIGKILL and start again: only Slurm and the journal survive."""
        STATS["restarts"] += 1
        self.teardown()
        self.run(self._boot)

    # ------------------------------------------------------------ invariants
    @invariant()
    def check_lists(self) -> None:
        STATS["steps"] += 1
        status_q, queued = self.call("GET", "/queued")
        status_r, running = self.call("GET", "/running")
        assert status_q == status_r and status_q in (200, 503), (status_q, status_r)
        if status_q != 200:
            return
        shown = {name: jobid for name, jobid in queued} | {name: jobid for name, jobid in running}
        assert len(shown) == len(queued) + len(running), "a job is both queued and running"
        active = self.twin.active()
        for name, jobid in self.world.jobids.items():
            if name in self.world.collected:
                continue
            if jobid in active:
                assert shown.get(name) == jobid, f"{name} (job {jobid}) is {active[jobid].code} in Slurm; upstream sees it over"
        for name, jobid in shown.items():
            assert jobid in {j.jobid for j in self.slurm_jobs(name)}, f"upstream sees {name} as {jobid}, unknown to Slurm"

    @invariant()
    def nothing_lost_or_doubled(self) -> None:
        for name in NAMES:
            assert len(self.slurm_jobs(name)) <= 1, f"{name} was submitted to Slurm twice"
        every = {**self.twin.accounted, **self.twin.jobs}
        for name, jobid in self.world.jobids.items():
            assert jobid in every, f"upstream was given job {jobid} for {name}, which Slurm never had"
        assert self.downstream.book.machine.rejected == 0, "an illegal transition was attempted"
        assert self.downstream.interactive.machine.rejected == 0, "an illegal proxy transition was attempted"

    @invariant()
    def ended_jobs_never_proxy_again(self) -> None:
        for job in self.downstream.book:
            if job.final and job.proxy is not None:
                assert job.proxy.state == ProxyPhase.CLOSED, f"{job.name} ended with its proxy {job.proxy.state}"


async def test_the_daemon_never_loses_a_job(nursery: trio.Nursery) -> None:
    DaemonLife.nursery = nursery
    config = settings(max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    await trio.to_thread.run_sync(lambda: run_state_machine_as_test(DaemonLife, settings=config))
    print(f"\nstateful run: {STATS}")
    assert STATS["examples"] >= EXAMPLES
