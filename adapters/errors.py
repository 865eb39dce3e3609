"""The adapters' one small exception hierarchy.

The daemon needs to tell three things apart, because each gets a different answer
upstream: the cluster could not be asked (503, keep the last known state), the
cluster answered "no" (an error the caller can read), and the request itself was
bad (400, nothing was run).
"""

from __future__ import annotations


class DownstreamError(Exception):
    """Base of everything the adapters raise on purpose."""


class InvalidRequest(DownstreamError):
    """Input from upstream that must not reach the cluster; the message names the problem."""


class ClusterUnavailable(DownstreamError):
    """The cluster could not be asked (SSH down, timeout, backoff). Transient by nature."""


class SlurmUnreachable(ClusterUnavailable):
    """A Slurm command ran on the login node but could not talk to slurmctld: nothing is known.

    For ``sbatch`` it is not even known whether the job was created (a timed-out
    RPC may have been applied), so callers treat it like a lost answer.
    """


class AnswerLost(ClusterUnavailable):
    """The command ran, may have taken effect, and its answer cannot be read (e.g. sbatch printed no id)."""


class HostKeyRejected(ClusterUnavailable):
    """The login node's host key is unknown or changed; no command is ever sent."""


class CommandFailed(DownstreamError):
    """The cluster was reached and a command answered with an error."""

    def __init__(self, command: str, exit_status: int | None, stderr: str) -> None:
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr.strip()
        super().__init__(f"{command.split(' ', 1)[0]} exited {exit_status}: {self.stderr[:500]}")


class Misconfigured(DownstreamError):
    """The cluster's answer proves a setting unusable, for good (e.g. a data parser slurmrestd does not serve).

    Unlike ``ClusterUnavailable`` waiting will not help: the daemon stops at start-up naming the variable.
    """

    def __init__(self, variable: str, why: str) -> None:
        super().__init__(f"{variable}: {why}")
        self.variable = variable
        self.why = why
