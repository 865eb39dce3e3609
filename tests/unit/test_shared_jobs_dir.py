"""The jobs dir shared by the service user and JARVICE users (slurmrestd's per-user jobs), on a real shell.

``SshClusterFiles`` runs its commands here through ``sh -c`` on this machine, as the login node's
shell would: what is checked is what the commands do to real directories (modes, the chown
wrapper being asked to take a user's tree back before removal), not their text.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import trio

from adapters.slurm.files import SshClusterFiles
from adapters.ssh import CommandResult


class LocalShell:
    """A CommandRunner that runs each command with this machine's /bin/sh."""

    async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
        done = await trio.run_process(["/bin/sh", "-c", command], stdin=(stdin or "").encode(), capture_stdout=True,
                                      capture_stderr=True, check=False)
        return CommandResult(done.returncode, done.stdout.decode(), done.stderr.decode())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_per_user_jobs_get_a_group_writable_sticky_dir_and_nothing_is_taken_away(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    jobs = tmp_path / ".jarvice"
    jobs.mkdir(mode=0o775)
    jobs.chmod(0o775)  # an admin's choice: the daemon adds what it needs, takes nothing
    await SshClusterFiles(LocalShell(), scratch_dir=str(tmp_path), job_group=group, users_write=True).prepare()
    for d in (jobs, jobs / "jobs", jobs / "cache"):
        assert mode(d) & 0o3070 == 0o3070 and mode(d) & 0o007 == 0, (d, oct(mode(d)))  # g+rwxs, +t, o-rwx
    private = tmp_path / "private"
    await SshClusterFiles(LocalShell(), scratch_dir=str(private), job_group=group).prepare()
    assert mode(private / ".jarvice") == 0o2750  # over SSH only: the group reads, nobody else


async def test_cleanup_asks_the_chown_wrapper_to_take_a_users_tree_back_first(tmp_path: Path) -> None:
    calls = tmp_path / "wrapper.calls"
    wrapper = tmp_path / "chown-wrapper"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
    wrapper.chmod(0o755)
    tree = tmp_path / ".jarvice" / "jobs" / "41"
    (tree / "data").mkdir(parents=True)
    (tree / "data" / "out.txt").write_text("x")
    (tmp_path / ".jarvice" / "41.out").write_text("output")
    files = SshClusterFiles(LocalShell(), scratch_dir=str(tmp_path), chown_wrapper=str(wrapper), owner="jarvice")
    await files.cleanup(["41"])
    assert calls.read_text().split() == ["-R", "jarvice", "--", str(tree)]
    assert not tree.exists() and not (tmp_path / ".jarvice" / "41.out").exists()
    calls.unlink()
    await SshClusterFiles(LocalShell(), scratch_dir=str(tmp_path)).cleanup(["42"])  # no wrapper: never called
    assert not calls.exists()
