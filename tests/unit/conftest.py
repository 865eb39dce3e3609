"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_slurm import fake_cluster
from tests.support.kube_api import KubeAPIStandIn


@pytest.fixture
def api() -> Iterator[KubeAPIStandIn]:
    """The local stand-in of the Kubernetes API (no real API server can run on these machines)."""
    with KubeAPIStandIn() as stand_in:
        yield stand_in


@pytest.fixture
def cluster(tmp_path: Path):  # noqa: ANN201 - see fake_cluster
    """Runs a rendered submission's batch script as Slurm would, with stand-ins for srun and scontrol."""
    return fake_cluster(tmp_path)
