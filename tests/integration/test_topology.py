"""The test clusters are laid out as sites run theirs (tests/cluster/up), on every version.

The daemon (this process, the root network namespace) reaches the login node's SSH port
and nothing else of the cluster: compute nodes have their own addresses on a network only
the login node is on, and slurmctld listens on that network only. If a test passed only
because everything shared one host, these would fail first.
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.integration.conftest import cluster_env, slurm
from tests.support.cluster import current

pytestmark = pytest.mark.cluster


def reachable_from_here(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        return False
    return True


def reachable_from_login(host: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({host!r}, {port}), 5).close()"
    return slurm("python3", "-c", probe).returncode == 0


def node_addresses() -> dict[str, str]:
    out = slurm("scontrol", "-o", "show", "nodes").stdout
    return {m[1]: m[2] for m in re.finditer(r"NodeName=(\S+) .*?NodeAddr=(\S+)", out)}


def test_the_daemon_reaches_the_login_nodes_ssh_port() -> None:
    env = cluster_env()
    assert reachable_from_here(env["JARVICE_SLURM_CLUSTER_ADDR"], int(env["JARVICE_SLURM_CLUSTER_PORT"]))


def test_compute_nodes_are_hosts_of_their_own_reached_only_from_the_login_node() -> None:
    nodes = node_addresses()
    assert len(nodes) >= 2 and len(set(nodes.values())) == len(nodes), nodes
    port = int(re.search(r"SlurmdPort\s*=\s*(\d+)", slurm("scontrol", "show", "config").stdout)[1])
    for node, addr in nodes.items():
        assert addr != current().host
        assert reachable_from_login(addr, port), f"slurmd of {node} at {addr}:{port} from the login node"
        assert not reachable_from_here(addr, port), f"slurmd of {node} at {addr}:{port} from the daemon's namespace"


def test_slurmctld_is_not_on_the_login_nodes_front_address() -> None:
    port = int(re.search(r"SlurmctldPort\s*=\s*(\d+)", slurm("scontrol", "show", "config").stdout)[1])
    assert not reachable_from_here(current().host, port)


def test_each_node_knows_its_own_name() -> None:
    """Jobs see the node's host name (JARVICE's scripts print and use it), not the machine's."""
    out = slurm("srun", "-N2", "-n2", "--ntasks-per-node=1", "hostname")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == ["node1", "node2"]
