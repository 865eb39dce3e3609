"""The machines of a site, on one benchmark machine: the ``split`` placement gives them CPUs of their own.

At a site the daemon runs on a host of its own (or a Kubernetes node); upstream (JARVICE's
control plane) on others; the login node's sshd and socat, slurmctld and the jobs on the
cluster's machines, and the users' browsers elsewhere again. On one benchmark machine of two
cores, everything the proxies keep busy (the login node's sshd encrypting four streams, socat,
the jobs' web servers, the downloading clients) competes with the daemon and with the
benchmark's own timing for the same cores, and the daemon's latency then measures the test bed.

Split, CPU 0 is the daemon's host: the daemon and its own children (local mode's proxy
processes). The other CPUs are everybody else's: every process in the cluster's network
namespaces (and those they start later, which inherit it), the download clients
(``browser_argv``: a session of their own, at nice 0) and this benchmark process, which
plays upstream and times its calls; it runs there at nice -10 (the process and its
autogroup), standing for a machine of its own: a client that waits for a CPU behind the
cluster's sshd would add that wait to every answer it times. ``shared`` changes nothing: every
process on every CPU, as the runs before it. A run measures both, unless ``BENCH_HOSTS`` names one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bench.cluster import cluster_netns_prefix
from tests.support.processes import descendants

# BENCH_HOSTS=shared or split measures in that placement only; unset: both, shared first
PLACEMENTS = ("shared", "split")
if os.environ.get("BENCH_HOSTS"):
    if os.environ["BENCH_HOSTS"] not in PLACEMENTS:
        raise SystemExit(f"BENCH_HOSTS={os.environ['BENCH_HOSTS']}: expected one of {', '.join(PLACEMENTS)}")
    PLACEMENTS = (os.environ["BENCH_HOSTS"],)
ALL_CPUS = frozenset(os.sched_getaffinity(0))
DAEMON_CPUS = frozenset(sorted(ALL_CPUS)[:1])
OTHER_CPUS = ALL_CPUS - DAEMON_CPUS
UPSTREAM_NICE = -10  # this process while split: upstream's machine (see the module's docstring)
_active = False  # inside split(): the download clients go to OTHER_CPUS, in sessions of their own at nice 0


def browser_argv(argv: list[str]) -> list[str]:
    """A users' download client's command: on the cluster's and users' CPUs, as its own session at nice 0 (not
    upstream's -10, which it would inherit) while the hosts are split."""
    if not _active:
        return argv
    return ["setsid", "nice", "-n", str(-UPSTREAM_NICE), "taskset", "-c", ",".join(map(str, sorted(OTHER_CPUS))),
            *argv]


def _prioritise(nice: int) -> None:
    """This process's every thread, and its autogroup (Linux shares the CPU between autogroups first), at ``nice``."""
    for task in Path("/proc/self/task").glob("*"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(nice))


def pin(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of ``pid`` to ``cpus``; a process that ended meanwhile is skipped."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(ProcessLookupError, OSError):
            os.sched_setaffinity(int(task.name), cpus)


def cluster_pids() -> list[int]:
    """Every process in the test cluster's network namespaces (login node and compute nodes)."""
    prefix = cluster_netns_prefix()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split("\n")
    pids = []
    for ns in (line.split()[0] for line in names if line.startswith(prefix)):
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
        pids += [int(p) for p in out.split()]
    return pids


@contextlib.contextmanager
def placed(placement: str, daemon_pid: int) -> Iterator[str]:
    """``split``: the daemon and its children on DAEMON_CPUS; the cluster, the browsers and this process (at
    UPSTREAM_NICE) on the others, for the block; everything back after it. ``shared``: as they are. Yields how the
    run was placed, for its notes."""
    global _active
    if placement != "split" or not OTHER_CPUS:
        yield f"hosts shared: daemon, upstream, cluster and browsers on the same {len(ALL_CPUS)} CPUs"
        return
    try:
        for pid in (daemon_pid, *descendants(daemon_pid)):
            pin(pid, DAEMON_CPUS)
        for pid in (os.getpid(), *cluster_pids()):
            pin(pid, OTHER_CPUS)
        _prioritise(UPSTREAM_NICE)
        _active = True
        cpu0, others = (",".join(map(str, sorted(c))) for c in (DAEMON_CPUS, OTHER_CPUS))
        yield (f"hosts split: the daemon and its proxy processes on CPU {cpu0}; the cluster, the "
               f"users' downloads and upstream's calls (at nice {UPSTREAM_NICE}: a machine of its own) on CPU {others}")
    finally:
        _active = False
        _prioritise(0)
        for pid in (daemon_pid, *descendants(daemon_pid), os.getpid(), *cluster_pids()):
            pin(pid, ALL_CPUS)
