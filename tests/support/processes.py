"""Processes the fault tests break on purpose: a private OpenSSH server, the test cluster's slurmctld, the daemon.

Nothing is found by its name: every process comes from a pid file, or is a descendant of
one (read from /proc), as ``tests/cluster/down`` does, so other people's processes on this
shared machine are never touched. Waits are trio sleeps, so a test's probes keep running
while a fault is being injected or lifted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tests.support.cluster import read_exports

# the console command as installed in the venv (pyproject's [project.scripts])
CLI = str(Path(sys.executable).with_name("slurm-downstream"))

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick, so not a guess)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def alive(pid: int) -> bool:
    """Running and not a zombie (an exited, unreaped process still has /proc/PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def descendants(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        found.append(child)
        found += descendants(child)
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and everything below it; SIGSTOP first, so nothing forks away meanwhile."""
    killed: list[int] = []
    for _ in range(5):
        tree = [p for p in [pid, *descendants(pid)] if alive(p)]
        if not tree:
            break
        for p in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        tree = [p for p in [pid, *descendants(pid)] if alive(p)]
        for p in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        killed += [p for p in tree if p not in killed]
    return killed


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``predicate()`` until true; return how long it took (raise TooSlowError naming ``what``)."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while True:
            if predicate():
                return trio.current_time() - start
            await trio.sleep(interval)
    raise trio.TooSlowError(f"{what}: not within {timeout:g}s")


# ---------------------------------------------------------------- a private sshd
@dataclass
class PrivateSSHD:
    """An OpenSSH server of our own, set up like the test cluster's (same host key, same user), on another port
    of the login node (started there, in its namespace and root, through the cluster's ``bin/login``).

    ``path_prefix`` puts a directory first on the sessions' PATH (sshd's ``SetEnv``), so a
    test can wrap a Slurm command on the login node without touching the shared cluster.
    ``workdir`` and ``path_prefix`` must be seen by the login node: under the state dir
    (``Cluster.workdir``).
    """

    cluster_state: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    path_prefix: Path | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "sshd_config"
        self.pid_file = self.workdir / "sshd.pid"
        self.log = self.workdir / "sshd.log"
        self.known_hosts = self.workdir / "known_hosts"
        self.host = read_exports(self.cluster_state / "daemon.env")["JARVICE_SLURM_CLUSTER_ADDR"]
        host_key = (self.cluster_state / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_key[0]} {host_key[1]}\n")
        self.config.write_text(self._config_text())

    def _config_text(self) -> str:
        lines = []
        for line in (self.cluster_state / "ssh" / "sshd_config").read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key == "Port":
                line = f"Port {self.port}"
            elif key == "PidFile":
                line = f"PidFile {self.pid_file}"
            elif key == "SetEnv" and self.path_prefix is not None:
                # sshd honours only the first SetEnv line: extend it
                line += f" PATH={self.path_prefix}:/usr/local/bin:/usr/bin:/bin"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def env(self) -> dict[str, str]:
        """Settings overrides that point a daemon at this server."""
        return {"JARVICE_SLURM_CLUSTER_ADDR": self.host, "JARVICE_SLURM_CLUSTER_PORT": str(self.port),
                "JARVICE_SLURM_SSH_KNOWN_HOSTS": str(self.known_hosts)}

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) and comm(pid) == "sshd" else None

    def logins(self) -> int:
        """How many connections the server has let in (its log's "Accepted publickey" lines)."""
        try:
            return self.log.read_text(errors="replace").count("Accepted publickey")
        except OSError:
            return 0

    async def start(self, timeout: float = 10.0) -> float:
        """Start the server and wait until it listens; return when that happened (trio time)."""
        if self.pid is not None:
            raise RuntimeError(f"sshd on port {self.port} already runs (pid {self.pid})")
        with self.log.open("a") as log:
            await trio.run_process([str(self.cluster_state / "bin" / "login"), SSHD, "-f", str(self.config),
                                    "-E", str(self.log)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        await wait_until(lambda: self.pid is not None and port_open(self.port, self.host), timeout,
                         f"sshd on {self.host}:{self.port}")
        return trio.current_time()

    def kill(self) -> list[int]:
        """SIGKILL the listener and every connection's processes (and their commands): live links drop at once."""
        pid = self.pid
        if pid is None:
            return []
        return kill_tree(pid)

    def stop(self) -> None:
        self.kill()
        self.pid_file.unlink(missing_ok=True)


# ---------------------------------------------------------------- the shared slurmctld
@dataclass
class Slurmctld:
    """The test cluster's controller, stopped and started exactly as ``tests/cluster/up`` starts it (on the login node)."""

    cluster_state: Path

    @property
    def conf(self) -> Path:
        return self.cluster_state / "etc" / "slurm.conf"

    def login(self, *args: str) -> list[str]:
        return [str(self.cluster_state / "bin" / "login"), *args]

    @property
    def pid(self) -> int | None:
        try:
            pid = int((self.cluster_state / "slurmctld.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) and comm(pid) == "slurmctld" else None

    @contextlib.asynccontextmanager
    async def cluster_lock(self, timeout: float = 60.0) -> AsyncIterator[None]:
        """The lock ``tests/cluster/up`` and ``down`` take: while we hold it, a concurrent ``make test`` waits
        instead of finding slurmctld down and rebuilding everybody's cluster."""
        with open(f"{self.cluster_state}.lock", "a") as lock:
            with trio.fail_after(timeout):
                while True:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await trio.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.asynccontextmanager
    async def down(self) -> AsyncIterator[None]:
        """slurmctld stopped for the block, under the cluster lock, and started again however the block ends
        (a failing or cancelled test must not leave the shared cluster without its controller)."""
        async with self.cluster_lock():
            await self.stop()
            try:
                yield
            finally:
                with trio.CancelScope(shield=True):
                    await self.start()

    async def ping_up(self) -> bool:
        result = await trio.run_process(self.login("scontrol", "ping"), capture_stdout=True, capture_stderr=True,
                                        check=False)
        return b"is UP" in result.stdout

    async def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (slurmctld saves its state and exits) and wait until it is gone."""
        pid = self.pid
        if pid is None:
            raise RuntimeError("slurmctld is not running")
        os.kill(pid, signal.SIGTERM)
        await wait_until(lambda: not alive(pid), timeout, f"slurmctld {pid} to exit")

    async def start(self, timeout: float = 30.0) -> None:
        """As ``tests/cluster/up``: ``slurmctld -f CONF``, stdio on the start-up log, then ``scontrol ping`` UP."""
        with (self.cluster_state / "log" / "startup.log").open("a") as log:
            await trio.run_process(self.login("slurmctld", "-f", str(self.conf)),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        with trio.fail_after(timeout):
            while not await self.ping_up():
                await trio.sleep(0.1)


async def squeue(cluster_state: Path, *args: str, timeout: float = 30.0) -> str:
    """``squeue -h`` as root on the login node, without blocking trio (while slurmctld is down, squeue retries for ~9 s)."""
    env = dict(os.environ, SLURM_TIME_FORMAT="standard")
    with trio.fail_after(timeout):
        result = await trio.run_process([str(cluster_state / "bin" / "login"), "squeue", "-h", *args], env=env,
                                        capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"squeue {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode()


# ---------------------------------------------------------------- the daemon as operators run it
@dataclass
class DaemonProcess:
    """``slurm-downstream serve`` as a real process, so a test can SIGKILL it and start another."""

    cli: str
    env: Mapping[str, str]
    port: int
    log: Path
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> float:
        """Spawn it; return the trio time of the spawn (a restart's fault end)."""
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [self.cli, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=dict(self.env), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return trio.current_time()

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(sig)
        with trio.fail_after(15):
            await self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
