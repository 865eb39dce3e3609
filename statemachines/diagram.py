"""The machines' diagrams, generated from the machines themselves (mermaid; no graphviz).

``python -m statemachines.diagram`` prints the job machine's, ``python -m statemachines.diagram
proxy`` the proxy machine's; the README embeds both, and a test checks that its copies are the
machines' current shapes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum

from transitions.extensions import GraphMachine

from statemachines import job, proxy


def _mermaid(states: type[StrEnum], transitions: Sequence[tuple[str, Sequence[StrEnum], StrEnum]],
             initial: StrEnum, title: str) -> str:
    class _Model:
        pass

    model = _Model()
    GraphMachine(
        model=model,
        states=[s.value for s in states],
        transitions=[{"trigger": t, "source": [s.value for s in src], "dest": dst.value} for t, src, dst in transitions],
        initial=initial.value,
        graph_engine="mermaid",
        auto_transitions=False,
        title=title,
    )
    lines = model.get_graph().draw(None).splitlines()  # type: ignore[attr-defined]
    # drop styling (classDef/Class lines): the README wants the shape only
    return "\n".join(line for line in lines if "classDef" not in line and "Class " not in line).strip() + "\n"


def mermaid() -> str:
    """The job machine."""
    return _mermaid(job.JobState, job.TRANSITIONS, job.JobState.QUEUED, "JARVICE job")


def proxy_mermaid() -> str:
    """The proxy machine (one per interactive job)."""
    return _mermaid(proxy.ProxyPhase, proxy.TRANSITIONS, proxy.ProxyPhase.IDLE, "interactive job proxy")


if __name__ == "__main__":  # pragma: no cover
    print(proxy_mermaid() if sys.argv[1:] == ["proxy"] else mermaid(), end="")
