"""The test clusters (written by tests/cluster/up), for tests and benchmarks: which versions, where, how to ask them.

``make test`` brings up one cluster per Slurm version in ``SLURM_VERSIONS`` (default: the
three tested ones; ``make test SLURM_VERSIONS=22.05`` for a quicker local run). Their state
directories follow one rule, shared with the Makefile and ``tests/cluster/up``:
``$SLURM_DOWNSTREAM_TESTCLUSTER`` (default ``/tmp/slurm-downstream-testcluster``) for 22.05,
that name with ``-24.11`` or ``-26.05`` appended for the others.

Tests that run on every version are parametrised by ``pytest_generate_tests`` below (used by
the integration and contract conftests); those of slurmrestd on every version that has it
(24.11, 26.05); the rest run on the first version listed. Either way ``current()`` is the
cluster the running test is about.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

TESTED = ("22.05", "24.11", "26.05")
VERSIONS: tuple[str, ...] = tuple(os.environ.get("SLURM_VERSIONS", "22.05").split()) or ("22.05",)
BASE = os.environ.get("SLURM_DOWNSTREAM_TESTCLUSTER", "/tmp/slurm-downstream-testcluster")

# the versions whose test clusters run slurmrestd (tests/cluster/up), and the modules that also run
# through it (JARVICE_SLURM_CLIENT=slurmrestd_client) on those: their ids say ``[slurm-24.11-rest]``
REST_VERSIONS = ("24.11", "26.05")
REST_MODULES = {"test_slurm_contract", "test_batch_jobs"}
# modules about slurmrestd itself: only ``[slurm-<v>-rest]`` (with SLURM_VERSIONS=22.05 alone: skipped, empty set)
REST_ONLY = {"test_rest_mode", "test_slurmrestd_auth", "test_cluster_identities", "test_user_identities"}
# test modules that run on every version in SLURM_VERSIONS (the others run once)
EVERY_VERSION = {"test_slurm_contract", "test_batch_jobs", "test_jarvice_scripts", "test_interactive", "test_faults",
                 "test_preflight", "test_topology", "test_proxy_key"}


def read_exports(env_file: Path) -> dict[str, str]:
    """``export KEY='value'`` lines -> ``{KEY: value}`` (shell-quoted values unquoted)."""
    env: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def state_dir(version: str) -> Path:
    return Path(BASE if version == "22.05" else f"{BASE}-{version}")


@dataclass(frozen=True)
class Cluster:
    """One test cluster: its Slurm version and state directory."""

    version: str
    state: Path
    client: str = "ssh_client"  # how tests' daemons and clients control Slurm: ssh_client or slurmrestd_client

    @property
    def rest(self) -> bool:
        return self.client == "slurmrestd_client"

    @property
    def env_file(self) -> Path:
        return self.state / "daemon.env"

    def login(self, *args: str) -> list[str]:
        """argv running ``args`` as root on the login node (its namespace and root, the cluster's SLURM_CONF)."""
        return [str(self.state / "bin" / "login"), *args]

    def node(self, node: str, *args: str) -> list[str]:
        """argv running ``args`` as root on compute node ``node``."""
        return [str(self.state / "bin" / "enter"), node, *args]

    @property
    def host(self) -> str:
        """The login node's address as the daemon reaches it (the front of its namespace)."""
        return read_exports(self.env_file)["JARVICE_SLURM_CLUSTER_ADDR"]

    # slurmrestd and the OIDC stand-in of Keycloak (24.11, 26.05; tests/cluster/up, tests/support/oidc.py)

    def _exported(self, key: str, file: str = "daemon.env", what: str = "slurmrestd") -> str:
        """``key`` from the cluster's ``file`` (daemon.env or env.sh); a cluster without it has no ``what``."""
        env = read_exports(self.state / file)
        if key not in env:
            raise LookupError(f"the Slurm {self.version} test cluster in {self.state} has no {what} ({key} unset)")
        return env[key]

    @property
    def rest_url(self) -> str:
        """slurmrestd on the login node (``http://10.214.N.2:6820``)."""
        return self._exported("JARVICE_SLURMRESTD_URL")

    @property
    def token_url(self) -> str:
        """The stand-in's Keycloak token endpoint (``.../realms/jarvice/protocol/openid-connect/token``)."""
        return self._exported("JARVICE_KEYCLOAK_TOKEN_URL")

    @property
    def client_id(self) -> str:
        return self._exported("JARVICE_KEYCLOAK_CLIENT_ID")

    @property
    def client_secret(self) -> str:
        return self._exported("JARVICE_KEYCLOAK_CLIENT_SECRET")

    @property
    def static_token(self) -> str:
        """A 30-day service token (``TESTCLUSTER_SLURM_SA_TOKEN``; pass it as JARVICE_SLURM_SA_TOKEN)."""
        return self._exported("TESTCLUSTER_SLURM_SA_TOKEN")

    @property
    def oidc_admin(self) -> str:
        """The stand-in's test-only admin endpoints (``http://10.214.N.1:8180/admin``)."""
        return self._exported("TESTCLUSTER_OIDC_ADMIN", "env.sh")

    def oidc(self, what: str, **body: object) -> dict:
        """POST ``body`` to the stand-in's admin endpoint ``what`` (token, config, reset): its JSON answer.

        ``oidc("token", username="alice", lifetime=60, forged=False, claim=True)`` mints a token;
        ``oidc("config", lifetime=5, fail=True, delay=0.5)`` turns the token endpoint's knobs;
        ``oidc("reset")`` puts them back (tests that turn them must reset: the stand-in is the cluster's).
        """
        response = httpx.post(f"{self.oidc_admin}/{what}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    # accounting, job users and accounts (24.11, 26.05: slurmdbd, PrivateData=jobs; tests/cluster/up)

    def _params(self) -> dict[str, str]:
        """The settings the cluster was brought up with (``<state>/up.params``: ``KEY=value ...``)."""
        return dict(p.partition("=")[::2] for p in (self.state / "up.params").read_text().split())

    @property
    def accounting(self) -> str:
        """``slurmdbd`` (24.11, 26.05: sacct, accounts, PrivateData=jobs), ``jobcomp`` (22.05: ``sacct -c``) or ``none``."""
        return self._params().get("ACCOUNTING", "jobcomp")

    @property
    def service_user(self) -> str:
        """The SSH user, also the service token's user (``jarvice``)."""
        return read_exports(self.env_file)["JARVICE_SLURM_SSH_USER"]

    @property
    def job_users(self) -> tuple[str, ...]:
        """Users that submit their own jobs through slurmrestd (``("alice", "bob")``), each in an account of its own."""
        return tuple(self._exported("TESTCLUSTER_JOB_USERS", "env.sh", "job users").split())

    @property
    def user_group(self) -> str:
        """The group of the service user and the job users (``jarvice``; JARVICE_SLURM_SSH_USER_GROUP)."""
        return self._exported("TESTCLUSTER_USER_GROUP", "env.sh", "job users")

    def account_of(self, user: str) -> str:
        """A user's Slurm account, its default (``acct_alice``); the service user has one too."""
        return dict(e.split(":", 1) for e in self._exported("TESTCLUSTER_ACCOUNTS", "env.sh", "job users").split())[user]

    @property
    def coordinated_accounts(self) -> tuple[str, ...]:
        """The accounts the service user is coordinator of (the job users'): with PrivateData=jobs, what it sees."""
        return tuple(self._exported("TESTCLUSTER_COORDINATES", "env.sh", "job users").split())

    @contextlib.contextmanager
    def coordinator_removed(self) -> Iterator[None]:
        """The service user without its coordinator role for the job users' accounts (with PrivateData=jobs: their
        jobs hide from it); restored after, whatever happens."""
        role = (f"account={','.join(self.coordinated_accounts)}", f"names={self.service_user}")
        subprocess.run(self.login("sacctmgr", "-i", "remove", "coordinator", *role), check=True, capture_output=True,
                       timeout=60)
        try:
            yield
        finally:
            subprocess.run(self.login("sacctmgr", "-i", "add", "coordinator", *role), check=True, capture_output=True,
                           timeout=60)

    @property
    def jobs_dir(self) -> Path:
        """``<scratch>/.jarvice``: the jobs' shared dir, owner the service user, group user_group, mode 3770."""
        return Path(self._exported("TESTCLUSTER_JOBS_DIR", "env.sh", "job users"))

    def proxy_key(self, kind: str = "proxy") -> str:
        """A Kubernetes proxy pod's private key (PEM), restricted in the service user's authorized_keys as a site
        would: ``proxy`` (forwarding to the nodes only, sessions answered by /bin/false), ``proxy_shell``
        (``restrict,port-forwarding``: runs commands), ``proxy_no_forwarding`` (no forwarding at all)."""
        keys = dict(e.split(":", 1) for e in self._exported("TESTCLUSTER_PROXY_KEYS", "env.sh", "proxy keys").split())
        return Path(keys[kind]).read_text()

    def user_token(self, user: str, lifetime: int = 600, **kw: object) -> str:
        """A token the OIDC stand-in signs for ``user`` (``preferred_username``), as JARVICE's identity provider would."""
        return str(self.oidc("token", username=user, lifetime=lifetime, **kw)["access_token"])

    def is_up(self) -> bool:
        """tests/cluster/status: every daemon of the cluster runs and answers (not merely: daemon.env exists)."""
        status = Path(__file__).resolve().parents[1] / "cluster" / "status"
        env = dict(os.environ, SLURM_DOWNSTREAM_TESTCLUSTER=str(self.state))
        return subprocess.run([str(status)], env=env, capture_output=True, timeout=60).returncode == 0

    @contextlib.contextmanager
    def workdir(self, prefix: str) -> Iterator[Path]:
        """A directory every node sees at the same path (in the shared state dir) and the cluster's user can read."""
        top = self.state / "tmp"
        top.mkdir(mode=0o755, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=top))
        path.chmod(0o755)
        try:
            yield path
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


_current: list[Cluster] = [Cluster(VERSIONS[0], state_dir(VERSIONS[0]))]


def current() -> Cluster:
    return _current[-1]


@contextlib.contextmanager
def using(version: str) -> Iterator[Cluster]:
    """``24.11`` or ``24.11-rest`` (the same cluster, through slurmrestd)."""
    version, _, rest = version.partition("-")
    _current.append(Cluster(version, state_dir(version), "slurmrestd_client" if rest else "ssh_client"))
    try:
        yield _current[-1]
    finally:
        _current.pop()


def generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the modules of EVERY_VERSION once per version, each test's id naming it (``[slurm-24.11]``)."""
    module = metafunc.module.__name__.rpartition(".")[2]
    if "slurm_cluster" in metafunc.fixturenames and module in REST_ONLY:
        params = [f"{v}-rest" for v in VERSIONS if v in REST_VERSIONS]
        metafunc.parametrize("slurm_cluster", params, ids=[f"slurm-{v}" for v in params], indirect=True, scope="module")
    elif "slurm_cluster" in metafunc.fixturenames and module in EVERY_VERSION:
        params = [*VERSIONS, *(f"{v}-rest" for v in VERSIONS if v in REST_VERSIONS and module in REST_MODULES)]
        metafunc.parametrize("slurm_cluster", params, ids=[f"slurm-{v}" for v in params], indirect=True,
                             scope="module")


_seen_up: set[str] = set()


@pytest.fixture(autouse=True)
def slurm_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster this test is about (the first version for tests that run once).

    Whether it is up is asked once per run and version (tests/cluster/status), not guessed from
    its daemon.env, which outlives ``make cluster-down``; a cluster that is down is a failure.
    """
    with using(getattr(request, "param", VERSIONS[0])) as cluster:
        if cluster.version not in _seen_up:  # (one check covers both of its clients)
            if not cluster.is_up():
                pytest.fail(f"the Slurm {cluster.version} test cluster in {cluster.state} is down; "
                            f"run SLURM_VERSION={cluster.version} SLURM_DOWNSTREAM_TESTCLUSTER={cluster.state} "
                            "tests/cluster/up (make test does)")
            _seen_up.add(cluster.version)
        yield cluster
