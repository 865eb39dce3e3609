"""The cluster's files: each job's output, exit-code file and per-job tree in the jobs dir.

Slurm control (SSH commands, or slurmrestd) and these files are two interfaces because a
REST client can do only the first: over SSH one login-node shell serves both
(``SlurmClient`` is also an ``SshClusterFiles``); with slurmrestd, files still go over SSH
when it is configured (``SshClusterFiles``), and without it there are none to read
(``NoClusterFiles``, whose answers say so).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence

from adapters.errors import CommandFailed
from adapters.jobscript import JOBID_RE, job_tree_of, jobs_dir_of
from adapters.slurm import parsers
from adapters.ssh import CommandResult, CommandRunner

log = logging.getLogger(__name__)

TAIL_LINES = 10_000
TAIL_BYTES = 1 << 20
NO_FILES_NOTE = ("(slurm-downstream: this job's output is not available: JARVICE_SLURM_CLIENT=slurmrestd_client "
                 "without SSH access to the login node (JARVICE_SLURM_CLUSTER_ADDR) cannot read the cluster's files)\n")


def check_jobid(jobid: str) -> str:
    if not JOBID_RE.match(jobid):
        raise ValueError(f"not a job id: {jobid!r}")  # callers validate first; this is a last guard
    return jobid


class SshClusterFiles:
    """The jobs dir on the login node, over any CommandRunner."""

    available = True

    def __init__(self, runner: CommandRunner, *, scratch_dir: str, job_group: str = "", users_write: bool = False,
                 chown_wrapper: str = "", owner: str = "") -> None:
        self.runner = runner
        self.scratch_dir = scratch_dir.rstrip("/") or "/"
        self.job_group = job_group  # the jobs' files are readable by this group (setgid jobs dir, umask 027)
        # slurmrestd's per-user jobs write here too: the group may write, and the sticky bit keeps one user
        # from removing another's files (the directory's owner, the service user, still may)
        self.users_write = users_write
        self.chown_wrapper = chown_wrapper  # JARVICE_CHOWN_WRAPPER: takes other users' job trees back before removal
        self.owner = owner  # the service user, who removes the jobs' files

    @property
    def jobs_dir(self) -> str:
        return jobs_dir_of(self.scratch_dir)

    async def _run(self, command: str, *, stdin: str | None = None, check: bool = True,
                   timeout: float | None = None) -> CommandResult:
        # Command lines hold only validated, quoted values; the log's redaction filter still applies.
        log.debug("slurm: %s", command)
        result = await self.runner.run(command, stdin=stdin, timeout=timeout)
        if check and not result.ok:
            raise self.command_error(command, result)
        return result

    def command_error(self, command: str, result: CommandResult) -> Exception:
        return CommandFailed(command, result.exit_status, result.stderr)

    def _file(self, jobid: str, suffix: str) -> str:
        return shlex.quote(f"{self.jobs_dir}/{check_jobid(jobid)}.{suffix}")

    async def prepare(self, home: str = "") -> None:
        """The jobs dir exists and is writable (group-shared when configured); a ``~`` scratch dir is the home."""
        if self.scratch_dir == "~":
            if not home:
                home = (await self._run('printf %s "$HOME"')).stdout.strip()
            if not home:
                raise CommandFailed("sh -s", 0, "the login node did not say what the user's home directory is")
            self.scratch_dir = home
        # jobs/: JARVICE's per-job trees; cache/: JARVICE's image cache, shared by every job (and user)
        cache = shlex.quote(f"{self.jobs_dir}/cache")
        dirs = " ".join(shlex.quote(d) for d in (self.jobs_dir, f"{self.jobs_dir}/jobs", f"{self.jobs_dir}/cache"))
        # symbolic: what the jobs need is added, nothing an admin granted is taken (the dir may be shared
        # by a daemon of each client); others never read the jobs' files
        mode = "g+rwxs,o-rwx,+t" if self.users_write else "g+rxs,o-rwx"
        # only the directories this user owns (a job may have made jobs/ first, as another user)
        share = (f' && for d in {dirs}; do if [ -O "$d" ]; then chgrp {shlex.quote(self.job_group)} "$d" && '
                 f'chmod {mode} "$d" || exit 1; fi; done' if self.job_group else "")
        # images and their locks cached before per-user jobs existed: the users' jobs must be able to take the locks
        cached = (f' && {{ find {cache} -maxdepth 1 -user "$(id -un)" ! -perm -g+w -exec chmod g+w {{}} + 2>/dev/null; true; }}'
                  if self.users_write and self.job_group else "")
        await self._run(f"mkdir -p {dirs} && test -w {shlex.quote(self.jobs_dir)}{share}{cached}")

    async def rc_files(self, jobids: Sequence[str]) -> dict[str, int | None]:
        """Each job's exit-code file (``<jobid>.rc``), read in one command; None where there is none."""
        ids = [check_jobid(j) for j in jobids]
        if not ids:
            return {}
        result = await self._run(self.rc_command(ids))
        return parsers.parse_rc_lines(result.stdout, ids)

    def rc_command(self, jobids: Sequence[str]) -> str:
        """Prints ``<jobid> <its .rc file's first line>`` per job (``parsers.parse_rc_lines`` reads it)."""
        quoted = " ".join(shlex.quote(check_jobid(j)) for j in jobids)
        return (f"for j in {quoted}; do printf '%s ' \"$j\"; "
                f"head -c 32 {shlex.quote(self.jobs_dir)}/\"$j\".rc 2>/dev/null | tr -d '\\n'; echo; done")

    async def tail(self, jobid: str, lines: int = TAIL_LINES) -> str | None:
        """The last lines of the job's output, or None when it has none."""
        path = self._file(jobid, "out")
        result = await self._run(
            f"test -f {path} && tail -n {int(lines)} {path} | tail -c {TAIL_BYTES}", check=False
        )
        return result.stdout if result.ok else None

    async def cleanup(self, jobids: Sequence[str]) -> None:
        """Remove what each job left in the jobs dir: output, rc file, script, and the per-job tree its
        JARVICE script made (read-only directories inside it included). Removing nothing is success."""
        if not jobids:
            return
        jobs_dir = shlex.quote(self.jobs_dir)
        files = " ".join(f"{jobs_dir}/{check_jobid(j)}.*" for j in jobids)  # .out .rc .job.sh .rc.<node> ...
        trees = " ".join(shlex.quote(job_tree_of(self.scratch_dir, j)) for j in jobids)
        # another user's tree (slurmrestd's per-user jobs) is taken back first, where the site allows it
        take = (f"{shlex.quote(self.chown_wrapper)} -R {shlex.quote(self.owner)} -- {trees} 2>/dev/null; "
                if self.chown_wrapper and self.owner else "")
        await self._run(f"{take}chmod -R u+w -- {trees} 2>/dev/null; rm -rf -- {files} {trees}")

    async def job_files(self) -> dict[str, float]:
        """Job ids that have files in the jobs dir, each with its newest modification time (epoch seconds)."""
        jobs_dir = shlex.quote(self.jobs_dir)
        result = await self._run(f"cd {jobs_dir} 2>/dev/null || exit 0; find . -mindepth 1 -maxdepth 2 -printf '%P\\t%T@\\n'")
        return parsers.parse_job_files(result.stdout)

    async def list_dir(self, path: str, details: bool) -> str:
        """``pvcls``: one entry per line, prefixed ``/data``, directories with a trailing /."""
        quoted = shlex.quote(path)
        if details:
            fmt_d, fmt_f = shlex.quote("%Y %s /data%n/"), shlex.quote("%Y %s /data%n")
            command = (
                f"find {quoted} -mindepth 1 -maxdepth 1 -type d -exec stat -c {fmt_d} {{}} + ; "
                f"find {quoted} -mindepth 1 -maxdepth 1 -type f -exec stat -c {fmt_f} {{}} +"
            )
        else:
            command = (
                f"find {quoted} -mindepth 1 -maxdepth 1 -type d -printf '/data%p/\\n'; "
                f"find {quoted} -mindepth 1 -maxdepth 1 -type f -printf '/data%p\\n'"
            )
        return (await self._run(command)).stdout


class NoClusterFiles:
    """slurmrestd without SSH: the jobs' files exist on the cluster, but this daemon cannot reach them."""

    available = False

    def __init__(self, scratch_dir: str) -> None:
        self.scratch_dir = scratch_dir.rstrip("/") or "/"

    async def prepare(self, home: str = "") -> None:
        return None

    async def rc_files(self, jobids: Sequence[str]) -> dict[str, int | None]:
        return {}

    async def tail(self, jobid: str, lines: int = TAIL_LINES) -> str | None:
        check_jobid(jobid)
        return NO_FILES_NOTE

    async def cleanup(self, jobids: Sequence[str]) -> None:
        return None  # nothing this daemon can remove: the site's own scratch policy applies

    async def job_files(self) -> dict[str, float]:
        return {}

    async def list_dir(self, path: str, details: bool) -> str:
        raise CommandFailed("pvcls", None, "listing files needs SSH access to the login node (JARVICE_SLURM_CLUSTER_ADDR), "
                                           "which this slurmrestd_client deployment does not have")
