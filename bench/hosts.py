"""The machines of a site, on one benchmark machine: ``BENCH_HOSTS=split`` gives them CPUs of their own.

At a site the daemon runs on a host of its own (or a Kubernetes node); the login node's
sshd and socat, slurmctld, the jobs and the users' browsers are on other machines. On one
benchmark machine of two cores, everything the proxies keep busy (the login node's sshd
encrypting four streams, socat, the jobs' web servers, the downloading clients) competes
with the daemon for the same cores, and the daemon's latency then measures the test bed.

Split, CPU 0 is the daemon's host: the daemon, its own children (local mode's proxy
processes) and, to be conservative, this benchmark process, which plays upstream (its
calls and its timing compete with the daemon for that one CPU). The other CPUs are the
cluster's and the users': every process in the cluster's network namespaces (and those
they start later, which inherit it) and the download clients (``browser_argv``).
``BENCH_HOSTS=shared`` (the default) changes nothing: the runs before it.

Affinity only (``sched_setaffinity`` of every thread): priorities stay as they are.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

SPLIT = os.environ.get("BENCH_HOSTS", "shared") == "split"
ALL_CPUS = frozenset(os.sched_getaffinity(0))
DAEMON_CPUS = frozenset(sorted(ALL_CPUS)[:1])
OTHER_CPUS = ALL_CPUS - DAEMON_CPUS
_active = False  # inside split(): the download clients go to OTHER_CPUS


def browser_argv(argv: list[str]) -> list[str]:
    """A users' download client's command: on the cluster's and users' CPUs while the hosts are split."""
    if not _active:
        return argv
    return ["taskset", "-c", ",".join(map(str, sorted(OTHER_CPUS))), *argv]


def pin(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of ``pid`` to ``cpus``; a process that ended meanwhile is skipped."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(ProcessLookupError, OSError):
            os.sched_setaffinity(int(task.name), cpus)


def cluster_pids(state: Path) -> list[int]:
    """Every process in the test cluster's network namespaces (login node and compute nodes)."""
    net = dict(line.split("=", 1) for line in (state / "net").read_text().split() if "=" in line)
    prefix = net["NS"] + "-"
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split("\n")
    pids = []
    for ns in (line.split()[0] for line in names if line.startswith(prefix)):
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
        pids += [int(p) for p in out.split()]
    return pids


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children ... (from /proc; a snapshot)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def split(state: Path, daemon_pid: int) -> Iterator[str]:
    """With BENCH_HOSTS=split: the daemon, its children and this process on DAEMON_CPUS, the cluster on the others, for
    the block; everything back on every CPU after it. Yields how the run was placed, for its notes."""
    global _active
    if not SPLIT or not OTHER_CPUS:
        yield f"hosts shared: daemon, upstream, cluster and browsers on the same {len(ALL_CPUS)} CPUs"
        return
    try:
        for pid in (daemon_pid, *descendants(daemon_pid), os.getpid()):
            pin(pid, DAEMON_CPUS)
        for pid in cluster_pids(state):
            pin(pid, OTHER_CPUS)
        _active = True
        yield (f"hosts split (BENCH_HOSTS=split): the daemon, its proxy processes and upstream's calls on CPU "
               f"{','.join(map(str, sorted(DAEMON_CPUS)))}; the cluster and the users' downloads on CPU "
               f"{','.join(map(str, sorted(OTHER_CPUS)))}")
    finally:
        _active = False
        for pid in (daemon_pid, *descendants(daemon_pid), os.getpid(), *cluster_pids(state)):
            pin(pid, ALL_CPUS)
