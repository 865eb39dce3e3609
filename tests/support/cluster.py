"""Reading the test cluster's ``daemon.env`` (written by tests/cluster/up), for tests and benchmarks."""

from __future__ import annotations

import shlex
from pathlib import Path


def read_exports(env_file: Path) -> dict[str, str]:
    """``export KEY='value'`` lines -> ``{KEY: value}`` (shell-quoted values unquoted)."""
    env: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env
