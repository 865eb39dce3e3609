"""Leader election by Lease: with several replicas, exactly one polls Slurm, and another takes over when it goes.

Every test drives the REAL official ``kubernetes`` client over HTTP against
tests/support/kube_api.py, a local stand-in that replaces a real API server because
none can run on these machines; it keeps the Lease with resourceVersions and answers
409 to a write based on a stale one, as the API server does. Times are short
(a 1 s lease) and real: the API calls run in threads, which trio's mock clock cannot see.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from adapters.kube.client import LEASES, KubeClient
from adapters.kube.lease import LeaderElector, micro_time
from tests.support.kube_api import KubeAPIStandIn

NS = "jarvice-system"
LEASE = "slurm-downstream-leader"
DURATION = 1.0
RENEW = 0.1


@pytest.fixture
async def kube(api: KubeAPIStandIn) -> AsyncIterator[KubeClient]:
    client = await KubeClient.open(api.url, timeout=2)
    yield client
    client.close()


async def a_leads_then_b_campaigns(nursery: trio.Nursery, a: LeaderElector, b: LeaderElector) -> trio.CancelScope:
    """``a`` takes the Lease, then ``b`` starts; the scope stops ``a``."""
    scope_a = trio.CancelScope()

    async def run_a() -> None:
        with scope_a:
            await a.run()

    nursery.start_soon(run_a)
    await wait_for(lambda: a.is_leader, 2)
    await nursery.start(b.run)
    return scope_a


def elector(kube: KubeClient, identity: str, **kwargs: object) -> LeaderElector:
    return LeaderElector(kube, NS, LEASE, identity, lease_duration=DURATION, renew_period=RENEW, **kwargs)  # type: ignore[arg-type]


def holder(api: KubeAPIStandIn) -> str | None:
    lease = api.get("leases", NS, LEASE)
    return None if lease is None else lease["spec"].get("holderIdentity")


async def wait_for(predicate, timeout: float) -> float:  # noqa: ANN001
    """Seconds until predicate() holds; fails the test after ``timeout``."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
    return trio.current_time() - start


async def test_the_first_candidate_creates_the_lease_and_leads(api: KubeAPIStandIn, kube: KubeClient) -> None:
    """A lone replica leads after one round and keeps renewing the Lease.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    a = elector(kube, "pod-a")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        assert a.is_leader
        lease = api.get("leases", NS, LEASE)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "pod-a"
        assert lease["spec"]["leaseDurationSeconds"] == 1
        first = lease["spec"]["renewTime"]
        await trio.sleep(RENEW * 3)
        assert api.get("leases", NS, LEASE)["spec"]["renewTime"] != first  # type: ignore[index]
        assert a.is_leader
        nursery.cancel_scope.cancel()


async def test_two_candidates_racing_for_one_lease_never_both_lead(api: KubeAPIStandIn, kube: KubeClient) -> None:
    """Started together, exactly one leads, the Lease names it, and the other never believes it leads.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    a, b = elector(kube, "pod-a"), elector(kube, "pod-b")
    samples = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        await wait_for(lambda: a.is_leader or b.is_leader, 2)
        with trio.move_on_after(DURATION * 1.5):
            while True:
                leaders = [e.identity for e in (a, b) if e.is_leader]
                assert len(leaders) == 1, leaders
                assert holder(api) == leaders[0]
                samples += 1
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert samples > 50
    assert a.transitions + b.transitions == 1


async def test_a_leader_that_stops_releases_and_the_other_takes_over_at_once(
    api: KubeAPIStandIn, kube: KubeClient
) -> None:
    """A clean shutdown (rolling update) hands over in about one retry period, not a lease duration.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    a, b = elector(kube, "pod-a"), elector(kube, "pod-b")
    async with trio.open_nursery() as nursery:
        scope_a = await a_leads_then_b_campaigns(nursery, a, b)
        assert not b.is_leader
        scope_a.cancel()
        took = await wait_for(lambda: b.is_leader, 2)
        assert not a.is_leader
        assert took < DURATION / 2, f"took over after {took:.2f} s: the release was not seen"
        lease = api.get("leases", NS, LEASE)
        assert lease is not None and lease["spec"]["holderIdentity"] == "pod-b"
        assert lease["spec"]["leaseTransitions"] == 0  # a free Lease is taken, not taken over
        nursery.cancel_scope.cancel()


async def test_a_crashed_leader_is_replaced_only_after_its_lease_expires(api: KubeAPIStandIn, kube: KubeClient) -> None:
    """A leader that dies without releasing keeps the Lease for its duration; then the other takes it over.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    a, b = elector(kube, "pod-a", release_on_stop=False), elector(kube, "pod-b")
    async with trio.open_nursery() as nursery:
        scope_a = await a_leads_then_b_campaigns(nursery, a, b)
        scope_a.cancel()  # "crash": no release
        took = await wait_for(lambda: b.is_leader, DURATION * 3)
        assert took >= DURATION - RENEW * 2, f"took over after {took:.2f} s, before the lease expired"
        lease = api.get("leases", NS, LEASE)
        assert lease is not None and lease["spec"]["holderIdentity"] == "pod-b"
        assert lease["spec"]["leaseTransitions"] == 1
        nursery.cancel_scope.cancel()


async def test_a_leader_cut_off_from_the_api_steps_down_before_its_lease_expires(
    api: KubeAPIStandIn, kube: KubeClient
) -> None:
    """When renewals fail the leader stops polling within its renew deadline, before anyone may take over,
    and the work run under lead() is cancelled.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    a = elector(kube, "pod-a")
    work_cancelled = trio.Event()

    async def poller() -> None:
        try:
            await trio.sleep_forever()
        finally:
            work_cancelled.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        nursery.start_soon(a.lead, poller)
        await trio.sleep(RENEW * 2)
        api.fail_with = 503
        took = await wait_for(lambda: not a.is_leader, DURATION)
        assert took < DURATION
        with trio.fail_after(1):
            await a.wait_lost()
            await work_cancelled.wait()
        api.fail_with = None
        await wait_for(lambda: a.is_leader, DURATION * 3)  # back as soon as the API answers again
        nursery.cancel_scope.cancel()


async def test_lead_runs_the_work_only_while_leading_and_stops_it_when_deposed(
    api: KubeAPIStandIn, kube: KubeClient
) -> None:
    """Another holder in the Lease (an intruder's valid write) ends this replica's term and its polling.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    a = elector(kube, "pod-a")
    runs: list[str] = []

    async def poller() -> None:
        runs.append("start")
        try:
            await trio.sleep_forever()
        finally:
            runs.append("stop")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.lead, poller)
        await trio.sleep(RENEW)
        assert runs == []  # not leading: not polling
        await nursery.start(a.run)
        await wait_for(lambda: runs == ["start"], 1)
        lease = await kube.get(LEASES, NS, LEASE)
        now = micro_time()
        lease["spec"].update(holderIdentity="intruder", renewTime=now, acquireTime=now, leaseDurationSeconds=30)
        await kube.replace(LEASES, NS, LEASE, lease)
        await wait_for(lambda: runs == ["start", "stop"], 1)
        assert not a.is_leader and a.holder == "intruder"
        nursery.cancel_scope.cancel()


def test_times_must_leave_room_to_renew() -> None:
    """A renew period at or past the deadline, or a deadline past the lease, could let two replicas lead.
    (Kubernetes API: not contacted; the stand-in replaces a real API server, which cannot run here.)"""
    with pytest.raises(ValueError, match="renew_period"):
        LeaderElector(None, NS, LEASE, "a", lease_duration=10, renew_period=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaderElector(None, NS, LEASE, "a", lease_duration=10, renew_period=2, renew_deadline=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identity"):
        LeaderElector(None, NS, LEASE, "", lease_duration=10, renew_period=2)  # type: ignore[arg-type]


def test_micro_time_always_has_six_fraction_digits() -> None:
    """The API server parses Lease times as RFC3339Micro; a whole second must still carry .000001.
    (Kubernetes API: not contacted; the stand-in replaces a real API server, which cannot run here.)"""
    from datetime import UTC, datetime

    assert micro_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000001Z"
    assert micro_time(datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)) == "2026-01-02T03:04:05.250000Z"


def test_each_daemon_instance_campaigns_for_its_own_lease() -> None:
    """Two schedulers for two Slurm clusters in one namespace must not elect one leader between them.
    (Kubernetes API: not contacted; the stand-in replaces a real API server, which cannot run here.)"""
    from adapters.kube.lease import lease_name

    assert lease_name("login1.example.org") == "slurm-downstream-login1.example.org"
    assert lease_name("login1.example.org") != lease_name("login2.example.org")
    odd = lease_name("Login_1")  # a valid label value, not a valid object name: digested
    assert odd.startswith("slurm-downstream-") and odd == odd.lower() and "_" not in odd


async def test_a_leader_that_cannot_do_its_work_gives_the_lease_to_one_that_can(
    api: KubeAPIStandIn, kube: KubeClient
) -> None:
    """A leader whose polls of Slurm fail (its own network path is cut, the others' is not) used to keep
    the Lease for ever, so nobody answered. It now releases it and stays out one lease: the other leads.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    a_can_poll = True
    a = elector(kube, "pod-a", healthy=lambda: a_can_poll)
    b = elector(kube, "pod-b", healthy=lambda: True)
    async with trio.open_nursery() as nursery:
        await a_leads_then_b_campaigns(nursery, a, b)
        await trio.sleep(DURATION)
        assert a.is_leader and not b.is_leader  # healthy: it keeps leading
        a_can_poll = False
        await wait_for(lambda: b.is_leader, DURATION * 3)
        assert not a.is_leader and holder(api) == "pod-b"
        await trio.sleep(DURATION * 2)
        assert b.is_leader and not a.is_leader  # and a does not take it back while b renews
        nursery.cancel_scope.cancel()
