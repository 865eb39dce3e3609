"""The proxy machine on its own: pure, clock-free, and the only thing that moves a job's proxy life.

The daemon's side (daemon/interactive.py) is driven on the simulated Slurm in test_proxy_retries.py
and test_proxy_tending.py; here each rule of the life is checked without any I/O.
"""

from __future__ import annotations

from dataclasses import astuple

from statemachines.job import Job
from statemachines.proxy import PROXY_RETRIES, SILENT_PROBES, TRANSITIONS, ProxyLife, ProxyMachine, ProxyPhase


def backoff(attempt: int) -> float:
    return 10.0 * attempt


def test_interactive_jobs_alone_have_a_proxy_life_however_they_are_made() -> None:
    life = Job(name="web", number=1, interactive=True).proxy
    assert life is not None and astuple(life) == astuple(ProxyLife())
    assert Job(name="batch", number=2).proxy is None


def test_transient_failures_back_off_without_limit_and_are_never_counted() -> None:
    machine, life = ProxyMachine(), ProxyLife()
    for attempt in range(1, 4 * PROXY_RETRIES):
        assert machine.failed(life, permanent=False, now=100.0, backoff=backoff)
        assert (life.state, life.failures, life.attempts) == (ProxyPhase.BACKING_OFF, 0, attempt)
        assert life.retry_at == 100.0 + backoff(attempt)  # the delay grows with the failures in a row
        assert not machine.may_try(life, life.retry_at - 1) and machine.may_try(life, life.retry_at)


def test_the_last_permanent_failure_since_it_served_gives_up_for_good() -> None:
    machine, life = ProxyMachine(), ProxyLife()
    for _ in range(PROXY_RETRIES - 1):
        machine.failed(life, permanent=True, now=0.0, backoff=backoff)
        machine.failed(life, permanent=False, now=0.0, backoff=backoff)  # transients in between do not reset it
        assert life.state == ProxyPhase.BACKING_OFF
    assert machine.failed(life, permanent=True, now=0.0, backoff=backoff)
    assert life.state == ProxyPhase.GIVEN_UP and life.failures == PROXY_RETRIES
    assert not machine.may_try(life, 10**9)


def test_serving_forgives_failures_and_probes() -> None:
    machine, life = ProxyMachine(), ProxyLife()
    machine.unanswered(life)
    machine.failed(life, permanent=True, now=5.0, backoff=backoff)
    machine.started(life)
    assert life.state == ProxyPhase.STARTING
    assert machine.served(life)
    assert astuple(life) == astuple(ProxyLife(state=ProxyPhase.SERVING))
    assert machine.served(life)  # still serving: said again, nothing changes
    assert machine.rejected == 0


def test_a_silent_service_is_reported_once() -> None:
    machine, life = ProxyMachine(), ProxyLife()
    said = [machine.unanswered(life) for _ in range(2 * SILENT_PROBES)]
    assert said.index(True) == SILENT_PROBES - 1 and said.count(True) == 1
    assert life.state == ProxyPhase.WAITING and life.probes == 2 * SILENT_PROBES


def test_a_requeue_idles_what_was_up_and_keeps_the_counts_backoff_and_giving_up() -> None:
    machine = ProxyMachine()
    serving = ProxyLife(state=ProxyPhase.SERVING)
    machine.dropped(serving)
    assert serving.state == ProxyPhase.IDLE
    waiting = ProxyLife()
    for _ in range(3):
        machine.unanswered(waiting)
    machine.dropped(waiting)
    assert waiting.state == ProxyPhase.IDLE and waiting.probes == 3
    backing_off = ProxyLife()
    machine.failed(backing_off, permanent=True, now=0.0, backoff=backoff)
    machine.dropped(backing_off)
    assert backing_off.state == ProxyPhase.BACKING_OFF and backing_off.retry_at == backoff(1)
    machine.dropped(ProxyLife())  # idle already: nothing to undo
    assert machine.rejected == 0


def test_closed_is_final_and_late_outcomes_are_ignored_not_refused() -> None:
    machine, life = ProxyMachine(), ProxyLife()
    machine.failed(life, permanent=True, now=0.0, backoff=backoff)
    machine.close(life)
    machine.close(life)  # terminated, then it ended: closed once
    before = astuple(life)
    # outcomes of an attempt begun before upstream terminated the job
    assert not machine.unanswered(life) and not machine.started(life) and not machine.served(life)
    assert not machine.failed(life, permanent=True, now=1.0, backoff=backoff)
    machine.dropped(life)
    assert astuple(life) == before and life.state == ProxyPhase.CLOSED and machine.rejected == 0
    assert not machine.may_try(life, 10**9)


def test_an_illegal_transition_is_refused_counted_and_not_applied() -> None:
    machine = ProxyMachine()
    given_up = ProxyLife(state=ProxyPhase.GIVEN_UP, failures=PROXY_RETRIES, attempts=PROXY_RETRIES)
    assert not machine.served(given_up)
    assert given_up.state == ProxyPhase.GIVEN_UP and given_up.failures == PROXY_RETRIES
    assert not machine.fire(given_up, "no such trigger")
    assert machine.rejected == 2


def test_transition_table_never_leaves_closed_and_given_up_only_closes() -> None:
    for trigger, sources, dest in TRANSITIONS:
        assert ProxyPhase.CLOSED not in sources, trigger
        if ProxyPhase.GIVEN_UP in sources:
            assert dest == ProxyPhase.CLOSED, trigger
