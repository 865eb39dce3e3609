"""JARVICE's own job scripts on the real cluster: what upstream sees when they run.

The scripts are in the shape of JARVICE's (``tests/support/upstream.py``): they write a
per-job tree under ``${JARVICE_JOB_SCRATCH_DIR}.jarvice/jobs/$JOB_JOBID``, pull the app
image under ``flock``, run the app with ``singularity exec`` (the test cluster's is a
stand-in that logs its arguments and runs the command on the node) and print
``JARVICE_CMD_SUCCESS`` or ``JARVICE_CMD_FAILURE`` from a chain that exits 0 either way.
So the marker, not the exit code, must decide; the per-job tree must be gone after
``/exitstatus``; ``/gc`` must sweep trees nobody will ever collect, and only those.
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.integration.conftest import Daemon, settings, start_daemon, state, unique_name
from tests.support.upstream import ids, submit_args


def scratch() -> Path:
    """The running test's cluster's scratch dir, shared by its login and compute nodes."""
    return state() / "scratch"


def jobs_dir() -> Path:
    return scratch() / ".jarvice" / "jobs"
DAY = 86400


@pytest.fixture
def standin_log() -> Iterator[Path]:
    """This test's own log of the stand-in's calls, in the scratch dir the nodes share."""
    path = scratch() / f".singularity-standin-{uuid.uuid4().hex[:12]}.log"
    yield path
    path.unlink(missing_ok=True)


def calls(log: Path, jobid: str) -> list[str]:
    """The stand-in's log lines for one Slurm job: ``<time> node=<node> job=<id> argv: ...``."""
    text = log.read_text() if log.exists() else ""
    return [line for line in text.splitlines() if f" job={jobid} argv: " in line]


def execs(log: Path, jobid: str) -> list[str]:
    return [line for line in calls(log, jobid) if " exec " in line]


async def finish(daemon: Daemon, name: str, number: int, args: dict) -> tuple[str, list]:
    """Submit, wait until the job has finished, and ask /exitstatus as upstream would."""
    jobid, _ = await daemon.upstream.call("/submit", args)
    await daemon.wait_phase(name, "finished")
    return jobid, await daemon.upstream.call("/exitstatus", ids(name, number, jobid))


async def run_to_end(daemon: Daemon, number: int, body: str, log: Path | None = None, **kw: object) -> tuple[str, list]:
    """``finish`` for a JARVICE-shaped script running ``body``; ``log``: where the stand-in logs its calls."""
    name = unique_name("jsh")
    if log is not None:
        kw["extra"] = f"export SINGULARITY_STANDIN_LOG={log}"
    return await finish(daemon, name, number, submit_args(name, number, body, **kw))


async def test_an_app_that_succeeds_is_rc0(daemon: Daemon, standin_log: Path) -> None:
    jobid, (rc, _, (output, termination)) = await run_to_end(daemon, 101, 'echo "app ran in $PWD"', standin_log)
    assert rc == 0, output
    assert "app ran in" in output and "JARVICE_CMD_SUCCESS" in output
    assert "COMPLETED" in termination
    [app] = execs(standin_log, jobid)  # the app ran through Singularity, on a compute node
    assert " node=node" in app and "/bin/bash -c" in app


async def test_an_app_that_fails_is_rc1_although_the_script_exits_0(daemon: Daemon) -> None:
    """JARVICE's chain prints the failure marker and exits 0: Slurm must still say FAILED."""
    _, (rc, _, (output, termination)) = await run_to_end(daemon, 102, 'echo "app broke" >&2; exit 3')
    assert "app broke" in output and "JARVICE_CMD_FAILURE" in output
    assert rc == 1
    assert termination == "<< termination state: FAILED -- see STDOUT for job errors >>"


@pytest.mark.parametrize(("flag", "app", "rc", "echoed"), [
    ("set -v", "exit 3", 1, "&& /bin/echo JARVICE_CMD_SUCCESS || /bin/echo JARVICE_CMD_FAILURE"),
    ("set -v", "true", 0, "&& /bin/echo JARVICE_CMD_SUCCESS || /bin/echo JARVICE_CMD_FAILURE"),
    ("set -x", "exit 3", 1, "+ /bin/echo JARVICE_CMD_FAILURE"),
])
async def test_a_script_that_echoes_its_commands_is_judged_by_the_marker_it_printed(
        daemon: Daemon, flag: str, app: str, rc: int, echoed: str) -> None:
    """Under ``set -v`` bash prints the chain's text (both markers) before it runs it; ``set -x`` the command."""
    _, (got, _, (output, _)) = await run_to_end(daemon, 110, app, extra=flag)
    assert echoed in output
    assert got == rc


@pytest.mark.parametrize(("code", "rc", "state"), [(3, 1, "FAILED"), (0, 0, "COMPLETED")])
async def test_a_script_without_marker_is_judged_by_its_exit_code(daemon: Daemon, code: int, rc: int,
                                                                  state: str) -> None:
    _, (got, _, (output, termination)) = await run_to_end(daemon, 103, f"echo no-marker; exit {code}", marker=False)
    assert "no-marker" in output and "JARVICE_CMD_" not in output
    assert got == rc
    assert f"termination state: {state} " in termination


@pytest.mark.parametrize(("body", "rc", "marker"), [("echo app-on-task-0", 0, "JARVICE_CMD_SUCCESS"),
                                                    ("echo app-on-task-0; exit 3", 1, "JARVICE_CMD_FAILURE")])
async def test_two_nodes_only_task_0_prints_the_marker(daemon: Daemon, standin_log: Path, body: str, rc: int,
                                                       marker: str) -> None:
    """Task 0 runs the app and the chain; the other node's worker part exits 0 and prints nothing."""
    jobid, (got, _, (output, _)) = await run_to_end(daemon, 104, body, standin_log, nodes=2)
    assert "app-on-task-0" in output and output.count("JARVICE_CMD_") == 1 and marker in output
    assert got == rc
    nodes = sorted(line.split(" node=", 1)[1].split(" ", 1)[0] for line in execs(standin_log, jobid))
    assert nodes == ["node1", "node2"]  # both nodes ran their part in the container


@pytest.mark.parametrize(("device", "option"), [("overlay=0", "--writable-tmpfs"), ("overlay=640", "--overlay")])
async def test_the_jobs_overlay_size_reaches_singularity(daemon: Daemon, standin_log: Path, device: str,
                                                         option: str) -> None:
    jobid, (rc, _, (output, _)) = await run_to_end(daemon, 105, "echo overlay-job", standin_log,
                                                  devices=["exclusive=False", device])
    assert rc == 0, output
    [app] = execs(standin_log, jobid)
    overlay = jobs_dir() / jobid / "overlay.0.img"
    if option == "--overlay":
        assert f" --overlay {overlay} " in app and "--writable-tmpfs" not in app
    else:
        assert " --writable-tmpfs " in app and "--overlay" not in app


async def test_overlay_size_defaults_to_the_helm_charts_640_mb(standin_log: Path) -> None:
    """Without an ``overlay=N`` device, JARVICE_SLURM_OVERLAY_SIZE decides (the chart's default: 640)."""
    extra = f"export SINGULARITY_STANDIN_LOG={standin_log}"
    for setting, number in (({}, 106), ({"JARVICE_SLURM_OVERLAY_SIZE": "0"}, 107)):
        name = unique_name("ovl")
        async with trio.open_nursery() as nursery:
            async for d in start_daemon(nursery, settings(**setting)):
                jobid, _ = await d.upstream.call("/submit", submit_args(name, number, "echo overlay", extra=extra))
                await d.wait_phase(name, "finished")
                [app] = execs(standin_log, jobid)
                overlay = jobs_dir() / jobid / "overlay.0.img"
                if setting:
                    assert " --writable-tmpfs " in app and "--overlay" not in app
                else:
                    assert f" --overlay {overlay} " in app
                    assert overlay.stat().st_size == 640 * 2**20  # an ext3 image grown by resize2fs
                assert (await d.upstream.call("/exitstatus", ids(name, number, jobid)))[0] == 0
            nursery.cancel_scope.cancel()


async def test_the_per_job_tree_lives_until_exitstatus(daemon: Daemon) -> None:
    """The script writes under <scratch>/.jarvice/jobs/<jobid> (so the scratch dir reached it with its
    trailing slash); /exitstatus removes that tree with the job's output, exit code and script."""
    name = unique_name("tree")
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 108, "echo in-tree; sleep 3"))
    tree = jobs_dir() / jobid
    with trio.fail_after(60):
        while not (tree / "init" / "opt" / "JARVICE").is_dir():  # the init image's subfolders
            await trio.sleep(0.2)
    assert not Path(f"{scratch()}.jarvice").exists()  # nothing lands next to the scratch dir
    await daemon.wait_phase(name, "finished")
    assert tree.is_dir() and (tree / "overlay.0.img").is_file()
    rc, _, (output, _) = await daemon.upstream.call("/exitstatus", ids(name, 108, jobid))
    assert rc == 0 and "in-tree" in output
    assert not tree.exists()
    assert not list((scratch() / ".jarvice").glob(f"{jobid}.*"))  # .out, .rc, .job.sh


def as_cluster_user(*paths: Path) -> None:
    user = pwd.getpwnam(settings().ssh_user)
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)


def age_tree(tree: Path, age: float) -> None:
    """Make every file of ``tree`` ``age`` seconds old (as ``touch -d``), children first."""
    when = time.time() - age
    for path in sorted([tree, *tree.rglob("*")], key=lambda p: len(p.parts), reverse=True):
        os.utime(path, (when, when))


def plant_tree(jobid: str, age: float) -> Path:
    """A per-job tree as a job would have left it, owned by the cluster's user, ``age`` seconds old."""
    for parent in (scratch() / ".jarvice", jobs_dir()):
        if not parent.exists():  # as the daemon and the jobs would create it
            parent.mkdir(mode=0o700)
            as_cluster_user(parent)
    tree = jobs_dir() / jobid
    (tree / "init" / "opt" / "JARVICE").mkdir(parents=True)
    (tree / "init" / "init.0.sif").write_text("planted\n")
    as_cluster_user(tree, *tree.rglob("*"))
    age_tree(tree, age)
    return tree


async def test_gc_sweeps_only_orphaned_trees_older_than_the_age(daemon: Daemon) -> None:
    """The default JARVICE_SLURM_GC_AGE is 7 days. A tree of a job Slurm still runs is kept however old;
    orphans (ids neither the daemon nor Slurm knows: above Slurm's default MaxJobId) go once old enough."""
    name = unique_name("gc")
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 109, "echo long-runner; sleep 120"))
    running = jobs_dir() / jobid
    await daemon.wait_phase(name, "running")
    with trio.fail_after(60):
        while not (running / "init" / "opt" / "JARVICE").is_dir():
            await trio.sleep(0.2)
    age_tree(running, 30 * DAY)
    base = 90_000_000 + uuid.uuid4().int % 9_000_000
    old, young = plant_tree(str(base), 8 * DAY), plant_tree(str(base + 1), 6 * DAY)
    try:
        assert await daemon.upstream.call("/gc") == {"status": "OK"}
        with trio.fail_after(30):
            while old.exists():
                await trio.sleep(0.3)
        assert (young / "init" / "init.0.sif").is_file()
        assert (running / "init" / "opt" / "JARVICE").is_dir()
        assert [name, jobid] in await daemon.upstream.call("/running")
    finally:
        await daemon.upstream.call("/terminate", ids(name, 109, jobid))
        await daemon.wait_phase(name, "finished", timeout=30)
        await daemon.upstream.call("/exitstatus", ids(name, 109, jobid))
        for tree in (old, young):
            shutil.rmtree(tree, ignore_errors=True)
