"""The job machine's diagram, generated from the machine itself (mermaid; no graphviz).

``python -m statemachines.diagram`` prints it; the README embeds it, and a test
checks that the README's copy is the machine's current shape.
"""

from __future__ import annotations

from transitions.extensions import GraphMachine

from statemachines.job import TRANSITIONS, JobState


def mermaid() -> str:
    class _Model:
        pass

    model = _Model()
    GraphMachine(
        model=model,
        states=[s.value for s in JobState],
        transitions=[{"trigger": t, "source": [s.value for s in src], "dest": dst.value} for t, src, dst in TRANSITIONS],
        initial=JobState.QUEUED.value,
        graph_engine="mermaid",
        auto_transitions=False,
        title="JARVICE job",
    )
    lines = model.get_graph().draw(None).splitlines()  # type: ignore[attr-defined]
    # drop styling (classDef/Class lines): the README wants the shape only
    return "\n".join(line for line in lines if "classDef" not in line and "Class " not in line).strip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(mermaid(), end="")
