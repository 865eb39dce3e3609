"""The project keeps its own promises: the README's diagrams are the machines', and the
layers depend one way only (daemon -> statemachines, adapters; never back)."""

from __future__ import annotations

import ast
from pathlib import Path

from statemachines.diagram import mermaid, proxy_mermaid

ROOT = Path(__file__).resolve().parents[1]


def test_readme_diagrams_are_generated_from_the_machines() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in readme.split("```mermaid\n")[1:]]
    assert len(blocks) == 2, "the README shows the job machine, then the proxy machine"
    assert blocks[0] == mermaid(), "README job diagram is stale: paste `python -m statemachines.diagram`"
    assert blocks[1] == proxy_mermaid(), "README proxy diagram is stale: paste `python -m statemachines.diagram proxy`"


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


def test_layers_depend_one_way() -> None:
    forbidden = {
        "statemachines": {"adapters", "daemon", "trio", "asyncssh", "httpx", "quart", "quart_trio", "hypercorn"},
        "adapters": {"daemon"},
        "config": {"daemon", "adapters", "statemachines"},
    }
    for package, banned in forbidden.items():
        bad = {(f, m) for f, m in _imports(package) if m in banned}
        assert not bad, f"{package} imports {sorted(bad)}"


def test_init_report_never_shows_proxy_passwords() -> None:
    from daemon.report import redact

    assert redact("http://bob:S3cret@proxy:3128/") == "http://bob:***@proxy:3128/"
    assert redact("http://proxy:3128") == "http://proxy:3128"
