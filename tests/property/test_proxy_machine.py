"""Property tests of the proxy machine: whatever the tending reports, in whatever order, a proxy
life never counts below zero, never leaves closed, and gives up exactly on the ``PROXY_RETRIES``-th
permanent failure since it last served."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from statemachines.proxy import PROXY_RETRIES, SILENT_PROBES, ProxyLife, ProxyMachine, ProxyPhase

EVENTS = ["unanswered", "started", "served", "transient", "permanent", "dropped", "close"]


@given(events=st.lists(st.tuples(st.sampled_from(EVENTS), st.floats(0, 1e6), st.floats(0, 600)), max_size=60))
def test_any_sequence_of_outcomes_keeps_the_life_sound(events: list[tuple[str, float, float]]) -> None:
    machine, life = ProxyMachine(), ProxyLife()
    permanent_since_served = 0
    closed = False
    silent_said = 0
    for event, now, delay in events:
        before = life.state
        if before == ProxyPhase.GIVEN_UP and event not in ("dropped", "close"):
            continue  # the daemon tries a given-up proxy no more (may_try); the machine would refuse it
        if event == "unanswered":
            silent_said += machine.unanswered(life)
        elif event == "started":
            machine.started(life)
        elif event == "served":
            if machine.served(life):
                permanent_since_served = 0
                silent_said = 0
        elif event in ("transient", "permanent"):
            if machine.failed(life, permanent=event == "permanent", now=now, backoff=lambda _, d=delay: d):
                permanent_since_served += event == "permanent"
                assert life.retry_at == now + delay
        elif event == "dropped":
            machine.dropped(life)
        else:
            machine.close(life)
            closed = True

        assert machine.rejected == 0
        assert min(life.failures, life.attempts, life.probes) >= 0 and life.retry_at >= 0
        assert life.failures == permanent_since_served
        if closed:
            assert life.state == ProxyPhase.CLOSED
        if life.state == ProxyPhase.GIVEN_UP or permanent_since_served == PROXY_RETRIES:
            assert life.failures == PROXY_RETRIES and life.state in (ProxyPhase.GIVEN_UP, ProxyPhase.CLOSED)
        elif life.state != ProxyPhase.CLOSED:
            assert life.failures < PROXY_RETRIES
        if life.state == ProxyPhase.SERVING:
            assert (life.failures, life.attempts, life.probes, life.retry_at) == (0, 0, 0, 0.0)
        if before == ProxyPhase.GIVEN_UP:
            assert life.state in (ProxyPhase.GIVEN_UP, ProxyPhase.CLOSED)
        assert silent_said == (life.probes >= SILENT_PROBES)  # said once, when it became true
