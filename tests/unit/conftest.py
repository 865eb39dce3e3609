"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kube_api import KubeAPIStandIn


@pytest.fixture
def api() -> Iterator[KubeAPIStandIn]:
    """The local stand-in of the Kubernetes API (no real API server can run on these machines)."""
    with KubeAPIStandIn() as stand_in:
        yield stand_in
