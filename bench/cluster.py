"""The local test cluster as the benchmarks see it, and a command-counting sshd in front of it.

The shared test cluster (``tests/cluster/up``) is never reconfigured: to count
what runs on the login node we start a second OpenSSH server of our own, on a
free port, with the test sshd's own configuration (same host key, same user and
authorized key, same SLURM_CONF) plus a ``ForceCommand`` wrapper that logs one
line per command before running it. Whatever connects to that port (the daemon,
the reference baseline, the raw sbatch loop) is counted on the server side.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tests.support.cluster import read_exports
from tests.support.processes import free_port

STATE = Path(os.environ.get("SLURM_DOWNSTREAM_TESTCLUSTER", "/tmp/slurm-downstream-testcluster"))
SLURM_BINARIES = ("sbatch", "squeue", "sacct", "scancel", "scontrol")

_WRAPPER = r"""#!/bin/bash
# slurm-downstream bench: log each command run through this sshd, then run it as sshd would.
cmd=${SSH_ORIGINAL_COMMAND-}
kinds=
set -f
for word in $cmd; do
  case ${word##*/} in
    sbatch|squeue|sacct|scancel|scontrol) kinds+=${kinds:++}${word##*/} ;;
  esac
done
set -- $SSH_CONNECTION
set +f
printf '%s\t%s\t%s\t%s\n' "$EPOCHREALTIME" "${kinds:-other}" "${2:-?}" "${cmd//[$'\n\t']/ }" >> LOGFILE
exec bash -c "$cmd"
"""


class OutageWatch:
    """Whether a service of the shared test cluster answered during the run: ``up()`` every half second.

    The test cluster is shared: another suite's fault tests may stop slurmctld (or slurmrestd)
    for a while. A measurement that overlaps such an outage is not a figure of the daemon;
    the benchmarks measure it again (``Context.undisturbed``, ``rest_load.again``).
    """

    PERIOD = 0.5
    TIMEOUT = 2.0

    def __init__(self) -> None:
        self.outages: list[tuple[float, float]] = []  # perf_counter intervals
        self.down_since: float | None = None

    async def up(self) -> bool:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            up = False
            with trio.move_on_after(self.TIMEOUT):
                up = await self.up()
            if not up and self.down_since is None:
                self.down_since = t0
            elif up and self.down_since is not None:
                self.outages.append((self.down_since, time.perf_counter()))
                self.down_since = None
            await trio.sleep(self.PERIOD)

    def disturbed(self, start: float, end: float) -> bool:
        """Was the service down at any moment of [start, end] (one period of margin)?"""
        if self.down_since is not None and self.down_since <= end + self.PERIOD:
            return True
        return any(a <= end + self.PERIOD and b >= start - self.PERIOD for a, b in self.outages)

    async def wait_up(self, settle: float = 5.0) -> None:
        """Until the service answers again, then ``settle`` seconds more for the daemons' next polls."""
        while self.down_since is not None:
            await trio.sleep(self.PERIOD)
        await trio.sleep(settle)


class ControllerWatch(OutageWatch):
    """slurmctld: a ``scontrol ping`` on the login node."""

    async def up(self) -> bool:
        result = await trio.run_process(on_login("scontrol", "ping"), env=local_env(), capture_stdout=True,
                                        capture_stderr=True, check=False)
        return b"is UP" in result.stdout


class ClusterMissing(RuntimeError):
    """The test cluster is not up (run tests/cluster/up, or make bench)."""


def cluster_env() -> dict[str, str]:
    """The daemon's JARVICE_* settings for the test cluster (its daemon.env)."""
    env_file = STATE / "daemon.env"
    if not env_file.is_file():
        raise ClusterMissing(f"no test cluster: {env_file} is missing; run tests/cluster/up (make bench does)")
    return read_exports(env_file)


def local_env() -> dict[str, str]:
    return dict(os.environ, SLURM_TIME_FORMAT="standard")


def on_login(*args: str) -> list[str]:
    """argv running ``args`` as root on the test cluster's login node (its namespace, root and SLURM_CONF)."""
    return [str(STATE / "bin" / "login"), *args]


def cluster_netns_prefix() -> str:
    """The prefix of the test cluster's network namespaces (``sdtcN-``: ``-login``, ``-node1`` ...), from <state>/net."""
    ns = next(line.split("=", 1)[1] for line in (STATE / "net").read_text().splitlines() if line.startswith("NS="))
    return f"{ns}-"


def login_host() -> str:
    """The login node's address as the daemon reaches it."""
    return cluster_env()["JARVICE_SLURM_CLUSTER_ADDR"]


def shared_tmpdir(prefix: str) -> Path:
    """A directory the login node sees at the same path (in the state dir), readable by the cluster's user."""
    top = STATE / "tmp"
    top.mkdir(mode=0o755, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=top))
    path.chmod(0o755)
    return path


def slurm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A Slurm command run as root on the login node: the benchmark's own view of the cluster."""
    return subprocess.run(on_login(*args), capture_output=True, text=True, env=local_env(), timeout=timeout)


def cancel(jobids: list[str]) -> None:
    """scancel as root, in chunks (jobs of every benchmark, at the end)."""
    for i in range(0, len(jobids), 500):
        slurm("scancel", *jobids[i:i + 500])


def cancel_run(tag: str) -> int:
    """Cancel every unfinished job whose name carries the run's tag, whoever submitted it.

    Job ids are not enough: an attempt measured again after an outage, or an
    sbatch whose answer was lost, leaves jobs nobody got an id for.
    """
    listing = slurm("squeue", "-h", "-t", "PD,R,CG,S,CF", "-o", "%A %j").stdout
    ours = [jobid for jobid, _, name in (line.partition(" ") for line in listing.splitlines()) if tag in name]
    cancel(ours)
    return len(ours)


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    slurm_version = slurm("sbatch", "--version").stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu.group(1).strip() if cpu else "?",
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "debian": debian,
        "kernel": os.uname().release,
        "slurm": slurm_version,
        "min_job_age": _config_value("MinJobAge"),
    }


def _config_value(key: str) -> str:
    for line in slurm("scontrol", "show", "config").stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() == key:
            return v.strip()
    return "?"


@dataclass(frozen=True)
class Command:
    at: float  # epoch seconds
    kinds: str  # "squeue", "squeue+sacct", "other"...
    client_port: str
    line: str


@dataclass
class Tally:
    """What the login node ran between two marks."""

    seconds: float
    commands: list[Command] = field(default_factory=list)
    logins: int = 0

    def by_kind(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for c in self.commands:
            for kind in c.kinds.split("+"):
                counts[kind] += 1
        return counts

    @property
    def slurm_commands(self) -> int:
        """Command lines that ran at least one Slurm binary."""
        return sum(1 for c in self.commands if c.kinds != "other")

    def per_minute(self, count: float) -> float:
        return count * 60.0 / self.seconds if self.seconds > 0 else float("nan")


class CountingSSHD:
    """Our own sshd on a free port, counting every command (see module docstring).

    ``with CountingSSHD() as sshd:``; ``sshd.env()`` is the daemon's settings
    pointed at it; ``mark()`` / ``tally(mark)`` count what ran in between.
    """

    def __init__(self) -> None:
        self.port = 0
        self.dir: Path | None = None
        self.pid: int | None = None

    def __enter__(self) -> CountingSSHD:
        base = STATE / "ssh" / "sshd_config"
        if not base.is_file():
            raise ClusterMissing(f"{base} is missing; run tests/cluster/up")
        user = cluster_env().get("JARVICE_SLURM_SSH_USER", "jarvice")
        account = pwd.getpwnam(user)
        # on the login node, which sees the state dir; the wrapper runs as the cluster user and appends to the log here
        self.dir = shared_tmpdir("bench-sshd.")
        self.commands_log = self.dir / "commands.log"
        self.commands_log.touch()
        os.chown(self.commands_log, account.pw_uid, account.pw_gid)
        wrapper = self.dir / "count-commands"
        wrapper.write_text(_WRAPPER.replace("LOGFILE", shlex.quote(str(self.commands_log))))
        wrapper.chmod(0o755)
        self.port = free_port()
        lines = [ln for ln in base.read_text().splitlines() if not re.match(r"(?i)\s*(port|pidfile|forcecommand)\s", ln)]
        lines = [f"# slurm-downstream bench: {base} on another port, counting commands",
                 f"Port {self.port}", f"PidFile {self.dir / 'sshd.pid'}", *lines, f"ForceCommand {wrapper}"]
        config = self.dir / "sshd_config"
        config.write_text("\n".join(lines) + "\n")
        self.sshd_log = self.dir / "sshd.log"
        host_key = (STATE / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts = self.dir / "known_hosts"
        self.host = login_host()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_key[0]} {host_key[1]}\n")
        self.known_hosts.chmod(0o644)
        subprocess.run(on_login("/usr/sbin/sshd", "-t", "-f", str(config)), check=True, capture_output=True, text=True)
        subprocess.run(on_login("/usr/sbin/sshd", "-f", str(config), "-E", str(self.sshd_log)), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid_file = self.dir / "sshd.pid"
            if pid_file.is_file() and pid_file.read_text().strip():
                self.pid = int(pid_file.read_text())
                try:
                    socket.create_connection((self.host, self.port), timeout=1).close()
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"bench sshd did not start on port {self.port}; see {self.sshd_log}")

    def __exit__(self, *exc: object) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, 15)
            except ProcessLookupError:
                pass
            self.pid = None

    # ------------------------------------------------------------------ use
    def env(self, **overrides: str) -> dict[str, str]:
        """The daemon's environment: the test cluster's, pointed at this sshd."""
        env = cluster_env()
        env.update(JARVICE_SLURM_CLUSTER_ADDR=self.host, JARVICE_SLURM_CLUSTER_PORT=str(self.port),
                   JARVICE_SLURM_SSH_KNOWN_HOSTS=str(self.known_hosts))
        env.update(overrides)
        return env

    def ssh_argv(self) -> list[str]:
        """``ssh`` options for one fresh connection to this sshd (no multiplexing)."""
        key = STATE / "ssh" / f"id_{self._key_type()}"
        return ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none",
                f"{cluster_env().get('JARVICE_SLURM_SSH_USER', 'jarvice')}@{self.host}"]

    @staticmethod
    def _key_type() -> str:
        return "rsa" if (STATE / "ssh" / "id_rsa").is_file() and not (STATE / "ssh" / "id_ed25519").is_file() else "ed25519"

    def mark(self) -> tuple[float, int, int]:
        """Now, and the sizes of both logs: the start of a counting window."""
        return time.time(), self.commands_log.stat().st_size, self._size(self.sshd_log)

    @staticmethod
    def _size(path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    def tally(self, since: tuple[float, int, int]) -> Tally:
        started, cmd_offset, log_offset = since
        with self.commands_log.open("rb") as f:
            f.seek(cmd_offset)
            raw = f.read().decode(errors="replace")
        commands = []
        for line in raw.splitlines():
            parts = line.split("\t", 3)
            if len(parts) == 4:
                commands.append(Command(float(parts[0]), parts[1], parts[2], parts[3]))
        logins = 0
        if self.sshd_log.exists():
            with self.sshd_log.open("rb") as f:
                f.seek(log_offset)
                logins = f.read().decode(errors="replace").count("Accepted publickey")
        return Tally(seconds=time.time() - started, commands=commands, logins=logins)
