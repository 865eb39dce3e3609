"""The proxy machine: the life of one interactive job's proxy, as an explicit state machine.

What can go wrong with a proxy is told apart by whether waiting fixes it (daemon/interactive.py
carries the proxies out; this module only decides):

* transient (the Kubernetes API or SSH could not be asked): backed off, without limit, and
  never held against the job;
* permanent (the backend gave up): counted too; the ``PROXY_RETRIES``-th since it last served gives
  up for good (``given_up``), at no further cost per poll.

Both counts, and the probes its service ignored, reset once the proxy serves. A job upstream
terminated, or that ended, is ``closed``: never a proxy again, though Slurm may show it
running a while (KillWait). Like the job machine, all lives share one ``Machine`` and are not
registered with it; an event that would need an illegal transition is refused and counted,
never applied. The machine holds no clock: events are given ``now`` and the backoff policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from transitions import EventData, Machine, MachineError

log = logging.getLogger(__name__)

PROXY_RETRIES = 3  # permanent proxy failures for one job before its info says why and it stops trying
SILENT_PROBES = 10  # probes a service may ignore before the job's last_error says so (shown on /admin)


class ProxyPhase(StrEnum):
    IDLE = "idle"  # no proxy wanted yet (the job is not running), or it pends again, or its proxy stopped
    WAITING = "waiting"  # the job runs; its service did not answer the last probe
    STARTING = "starting"  # the backend took the proxy; not serving yet
    SERVING = "serving"
    BACKING_OFF = "backing_off"  # a failure: no new attempt before ``retry_at``
    GIVEN_UP = "given_up"  # PROXY_RETRIES permanent failures: the job's last_error says why
    CLOSED = "closed"  # terminated or ended: never a proxy again


_TRYING = [ProxyPhase.IDLE, ProxyPhase.WAITING, ProxyPhase.STARTING, ProxyPhase.SERVING, ProxyPhase.BACKING_OFF]
_UP = [ProxyPhase.WAITING, ProxyPhase.STARTING, ProxyPhase.SERVING]  # what a requeue or a stopped proxy undoes
_OPEN = [*_TRYING, ProxyPhase.GIVEN_UP]

# trigger, sources, destination. Nothing leaves closed; given_up leaves only for closed.
TRANSITIONS: list[tuple[str, list[ProxyPhase], ProxyPhase]] = [
    ("wait", _TRYING, ProxyPhase.WAITING),  # a probe went unanswered
    ("start", _TRYING, ProxyPhase.STARTING),
    ("serve", _TRYING, ProxyPhase.SERVING),
    ("back_off", _TRYING, ProxyPhase.BACKING_OFF),
    # the last of PROXY_RETRIES permanent failures since it served: a serving proxy has none behind it
    ("give_up", [s for s in _TRYING if s is not ProxyPhase.SERVING], ProxyPhase.GIVEN_UP),
    ("drop", _UP, ProxyPhase.IDLE),  # requeued (pending again), or its proxy stopped serving
    ("close", _OPEN, ProxyPhase.CLOSED),
]


@dataclass(eq=False)
class ProxyLife:
    """One interactive job's proxy life; changed by ProxyMachine only (``Job.proxy``)."""

    state: ProxyPhase = ProxyPhase.IDLE
    failures: int = 0  # permanent failures (the backend gave up) since it last served
    attempts: int = 0  # failed attempts in a row, of any kind (sets the backoff)
    retry_at: float = 0.0  # no new attempt before this (the caller's clock)
    probes: int = 0  # probes its service did not answer since it last served


# ------------------------------------------------------------------ transition callbacks (send_event=True)
def _count_probe(event: EventData) -> None:
    event.model.probes += 1


def _count_failure(event: EventData) -> None:
    life: ProxyLife = event.model
    life.attempts += 1
    life.failures += bool(event.kwargs["permanent"])
    life.retry_at = event.kwargs["now"] + event.kwargs["backoff"](life.attempts)


def _forgive(event: EventData) -> None:
    life: ProxyLife = event.model
    life.failures = life.attempts = life.probes = 0
    life.retry_at = 0.0


_AFTER: dict[str, Callable[[EventData], None]] = {
    "wait": _count_probe, "back_off": _count_failure, "give_up": _count_failure, "serve": _forgive}


def build_machine() -> Machine:
    return Machine(
        model=None,
        states=[s for s in ProxyPhase],
        transitions=[{"trigger": t, "source": src, "dest": dst, "after": [_AFTER[t]] if t in _AFTER else []}
                     for t, src, dst in TRANSITIONS],
        initial=ProxyPhase.IDLE,
        send_event=True,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        model_override=False,
    )


class ProxyMachine:
    """Applies events to proxy lives through one shared transitions Machine.

    An outcome that arrives for a closed life (an attempt begun before upstream terminated the
    job) is ignored, not refused: closing is the one event that may overtake a tending.
    """

    def __init__(self) -> None:
        self.machine = build_machine()
        self.rejected = 0  # illegal transitions refused (tests assert it stays 0)

    def fire(self, life: ProxyLife, trigger: str, **kwargs: Any) -> bool:
        """Apply ``trigger``; False when refused, or ignored because the life is closed already."""
        if life.state == ProxyPhase.CLOSED:
            return False  # an attempt's outcome after upstream terminated the job, or a second close
        event = self.machine.events.get(trigger)
        try:
            if event is None:
                raise AttributeError(f"no trigger {trigger!r}")
            event.trigger(life, **kwargs)
        except (MachineError, AttributeError) as exc:
            self.rejected += 1
            log.error("proxy: illegal transition %r from %s refused: %s", trigger, ProxyPhase(life.state).value, exc)
            return False
        return True

    @staticmethod
    def may_try(life: ProxyLife, now: float) -> bool:
        """Whether a tending may probe or start the proxy now: not closed, not given up, no backoff to wait out."""
        return life.state not in (ProxyPhase.CLOSED, ProxyPhase.GIVEN_UP) and now >= life.retry_at

    # ------------------------------------------------------------ events
    def unanswered(self, life: ProxyLife) -> bool:
        """A probe went unanswered. True once: when this one makes ``SILENT_PROBES`` (the caller says so)."""
        return self.fire(life, "wait") and life.probes == SILENT_PROBES

    def started(self, life: ProxyLife) -> bool:
        """The backend took the proxy and it does not serve yet."""
        return self.fire(life, "start")

    def served(self, life: ProxyLife) -> bool:
        """The proxy serves: every earlier failure and probe is forgiven."""
        return self.fire(life, "serve")

    def failed(self, life: ProxyLife, *, permanent: bool, now: float, backoff: Callable[[int], float]) -> bool:
        """An attempt failed: back off for ``backoff(attempts in a row)``; the last permanent strike gives up.

        ``backoff`` is the daemon's policy (the supervisor's delay), passed in with ``now`` so that
        this machine holds neither a clock nor a policy of its own.
        """
        last = permanent and life.failures + 1 >= PROXY_RETRIES
        return self.fire(life, "give_up" if last else "back_off", permanent=permanent, now=now, backoff=backoff)

    def dropped(self, life: ProxyLife) -> None:
        """The job pends again (requeued), or its proxy stopped serving: nothing up to tend until it runs.

        Counters stay (a requeue forgives nothing), and so does a backoff or a given-up life.
        """
        if life.state in _UP:
            self.fire(life, "drop")

    def close(self, life: ProxyLife) -> None:
        """Upstream terminated the job, or it ended: never a proxy again (closing twice is closing once)."""
        self.fire(life, "close")
