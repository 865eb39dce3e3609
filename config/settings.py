"""The daemon's settings, read once from the environment and validated.

Every variable the daemon reads is declared here, with its default and its
check, so an operator finds them all in one place and an invalid value stops the
start with one line that names the variable (exit code 2), never later, in the
middle of a job. Names follow the JARVICE seed document exactly; the few that
are ours are marked ``(ours)`` in ``config/example.env``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from config.jobs_domain import JobsDomain  # one parser for settings, proxies and job scripts


class ConfigError(ValueError):
    """An environment variable has a value the daemon cannot run with."""

    def __init__(self, variable: str, why: str) -> None:
        super().__init__(f"{variable}: {why}")
        self.variable = variable
        self.why = why


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "WARN": 30, "ERROR": 40, "CRITICAL": 50}
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\Z")
_SERVER_KEY_RE = re.compile(r"^[^:\s]+:\S+$")


@dataclass(frozen=True)
class Registry:
    """Where container images come from (the Helm chart's registry values)."""

    system_registry: str = "us-docker.pkg.dev"
    system_repo_base: str = "jarvice-system/images"
    omit_repo_base: bool = False  # JARVICE_SYSTEM_OMIT_REPO_BASE: system images at the registry's top level
    images_tag: str = "latest"
    local_registry: str = ""
    local_repo_base: str = ""
    proxy_port: int | None = None
    proxy_repos: tuple[str, ...] = ()
    # base64 values, as the chart stores them; secrets, never logged
    docker_username: str = field(default="", repr=False)
    docker_password: str = field(default="", repr=False)


@dataclass(frozen=True)
class ProxySettings:
    """Where interactive jobs' proxies run and how users reach them."""

    mode: str = "local"  # "local": a process per job, run by the daemon; "kubernetes": a pod, service and ingress per job
    bind: str = "0.0.0.0"  # local mode: address the per-job listeners bind
    public_host: str = "localhost"  # local mode: host name put in the URL users open
    ports: tuple[int, int] = (0, 0)  # local mode: listener port range; (0, 0) lets the OS choose
    namespace: str = "jarvice-system-jobs"
    ingress_class: str = ""
    ingress_annotations: tuple[tuple[str, str], ...] = ()
    cert_issuer: str = ""  # a namespaced cert-manager Issuer (cert-manager.io/issuer)
    cert_cluster_issuer: str = ""  # a cert-manager ClusterIssuer (cert-manager.io/cluster-issuer)
    image: str = ""  # kubernetes mode: image of the proxy pods (this daemon's image)
    ssh_secret: str = "jarvice-slurm-downstream-ssh"  # Secret holding the SSH key (key "pkey")
    tolerations: str = "[]"  # JSON list of Kubernetes tolerations for proxy pods
    kube_api: str = ""  # Kubernetes API URL; empty: in-cluster config, then KUBECONFIG
    leader_election: bool = False  # with several replicas: only the Lease holder polls
    identity: str = ""  # this replica's name in the Lease (the pod name)


@dataclass(frozen=True)
class Settings:
    cluster_addr: str
    cluster_port: int
    ssh_user: str
    ssh_pkey: str = field(repr=False)  # PEM text, decoded from base64 if needed
    ssh_known_hosts: str | None  # a path or known_hosts lines
    ssh_insecure_host_key: bool
    ssh_max_sessions: int
    ssh_keepalive: float
    command_timeout: float
    log_level: int
    https_proxy: str
    http_proxy: str
    no_proxy: str
    singularity_tmpdir: str
    overlay_size: int
    singularity_verbose: bool
    server_key: str | None = field(repr=False)  # "user:password"
    scratch_dir: str
    jobs_domain: str
    executor: str
    poll_interval: float
    service_port: int
    ssh_port: int
    registry: Registry
    port_count: int = 100  # interactive jobs: service/SSH ports base..base+count-1
    journal: str = ":memory:"  # SQLite file keeping what Slurm cannot (collected answers)
    log_format: str = "text"  # or "json" (one object per line)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    ssh_trust_on_first_use: bool = False  # no host key given: the first one seen is pinned in ssh_known_hosts
    global_scratch_dir: str = ""  # JARVICE_JOB_GLOBAL_SCRATCH_DIR, exported to jobs; "" when none
    global_registries: tuple[str, ...] = ()  # JARVICE_JOB_GLOBAL_REGISTRIES
    job_group: str = ""  # JARVICE_SLURM_SSH_USER_GROUP: the group that may read the jobs' files
    chown_wrapper: str = ""  # JARVICE_CHOWN_WRAPPER: used instead of chown when files change owner
    gc_age: float = 7 * 86400.0  # /gc removes files and outcomes nobody collected once this old (seconds)
    outbound: OutboundHTTP = field(default_factory=lambda: OutboundHTTP())
    deprecations: tuple[str, ...] = ()  # older variable names read, one log line each at start
    instance: str = ""  # JARVICE_SLURM_INSTANCE: this deployment's name in its jobs' Slurm comments
    slurm_client: str = "ssh_client"  # JARVICE_SLURM_CLIENT
    rest: RestSettings | None = None  # slurmrestd_client: where slurmrestd is, and the service identity

    @property
    def has_ssh(self) -> bool:
        """Whether the login node is reachable over SSH (always, unless slurmrestd_client without it)."""
        return bool(self.cluster_addr)

    @property
    def server_user(self) -> str | None:
        return self.server_key.split(":", 1)[0] if self.server_key else None


@dataclass(frozen=True)
class OutboundHTTP:
    """The daemon's own HTTP calls (the Kubernetes API): the pod's egress proxy and the site's root CA."""

    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""
    ca_bundle: str = ""  # REQUESTS_CA_BUNDLE: a PEM file of trusted roots


# Names the reference downstream (and older charts) used, and what they are called now. The old name is
# read when the new one is absent, with one deprecation line in the start-up log.
ALIASES = {
    "JARVICE_SINGULARITY_OVERLAY_SIZE": "JARVICE_SLURM_OVERLAY_SIZE",
    "JARVICE_BAREMETAL_HTTP_PROXY": "JARVICE_SLURM_HTTP_PROXY",
    "JARVICE_BAREMETAL_HTTPS_PROXY": "JARVICE_SLURM_HTTPS_PROXY",
    "JARVICE_BAREMETAL_NO_PROXY": "JARVICE_SLURM_NO_PROXY",
    "JARVICE_JOB_SCRATCH_DIR": "JARVICE_SLURM_SCRATCH_DIR",
}
SLURM_CLIENTS = ("ssh_client", "slurmrestd_client")
_GROUP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
_COMMAND_RE = re.compile(r"^[A-Za-z0-9_./+-]{1,255}\Z")


def resolve_aliases(env: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The environment with older names mapped to today's, and what to say about each one used."""
    resolved, notes = dict(env), []
    for old, new in ALIASES.items():
        if old not in env:
            continue
        if new in env:
            notes.append(f"{old} is ignored: {new} is set (and {old} is deprecated)")
        else:
            resolved[new] = env[old]
            notes.append(f"{old} is deprecated: read as {new}; rename it")
    return resolved, tuple(notes)


@dataclass(frozen=True)
class RestSettings:
    """``JARVICE_SLURM_CLIENT=slurmrestd_client``: where slurmrestd is and who the daemon is to it."""

    url: str
    sa_token: str = field(default="", repr=False)  # JARVICE_SLURM_SA_TOKEN: a static service token
    token_url: str = ""  # else OAuth2 client credentials (Keycloak) at this URL
    client_id: str = "nimbix-slurm-sched-client"
    client_secret: str = field(default="", repr=False)
    username_claim: str = "preferred_username"  # the JWT claim holding the Slurm user name
    parser: str = "auto"  # JARVICE_SLURM_DATA_PARSER_VERSION

    @property
    def token_source(self) -> str:
        """What the init report and the logs name as the token's origin (never the token)."""
        if self.sa_token:
            return "JARVICE_SLURM_SA_TOKEN (static)"
        return f"client credentials of {self.client_id} at {self.token_url}"


_URL_RE = re.compile(r"^https?://[^/\s?#]+(/[^\s?#]*)?\Z")
_PARSER_RE = re.compile(r"^v0\.0\.\d{2}\Z")
_CLAIM_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}\Z")


def _slurm_client(env: Mapping[str, str]) -> str:
    name = "JARVICE_SLURM_CLIENT"
    value = _get(env, name, "ssh_client") or "ssh_client"
    if value not in SLURM_CLIENTS:
        raise ConfigError(name, f"expected ssh_client or slurmrestd_client, got {value!r}")
    return value


def _url(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name)
    if value and not _URL_RE.match(value):
        raise ConfigError(name, f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _rest(env: Mapping[str, str]) -> RestSettings:
    """The slurmrestd client's variables (the JARVICE chart's names), checked together."""
    url = _url(env, "JARVICE_SLURMRESTD_URL")
    if not url:
        raise ConfigError("JARVICE_SLURMRESTD_URL", "is required when JARVICE_SLURM_CLIENT=slurmrestd_client")
    token = _get(env, "JARVICE_SLURM_SA_TOKEN")
    token_url = _url(env, "JARVICE_KEYCLOAK_TOKEN_URL")
    secret = _get(env, "JARVICE_KEYCLOAK_CLIENT_SECRET")
    if not token:
        if not token_url:
            raise ConfigError("JARVICE_SLURM_SA_TOKEN", "slurmrestd_client needs a service identity: set it, or "
                                                        "JARVICE_KEYCLOAK_TOKEN_URL and JARVICE_KEYCLOAK_CLIENT_SECRET")
        if not secret:
            raise ConfigError("JARVICE_KEYCLOAK_CLIENT_SECRET", "is required with JARVICE_KEYCLOAK_TOKEN_URL "
                                                                "(unless JARVICE_SLURM_SA_TOKEN is set)")
    elif token.count(".") != 2:
        raise ConfigError("JARVICE_SLURM_SA_TOKEN", "is not a JWT (three dot-separated parts)")
    parser = _get(env, "JARVICE_SLURM_DATA_PARSER_VERSION", "auto") or "auto"
    if parser != "auto" and not _PARSER_RE.match(parser):
        raise ConfigError("JARVICE_SLURM_DATA_PARSER_VERSION", f"expected auto or a version like v0.0.42, got {parser!r}")
    return RestSettings(
        url=url, sa_token=token, token_url=token_url,
        client_id=_get(env, "JARVICE_KEYCLOAK_CLIENT_ID", RestSettings.client_id) or RestSettings.client_id,
        client_secret=secret,
        username_claim=_matching(env, "JARVICE_SLURM_USERNAME_CLAIM", _CLAIM_RE, "a JWT claim name")
        or RestSettings.username_claim,
        parser=parser,
    )


def _outbound(env: Mapping[str, str]) -> OutboundHTTP:
    ca = _get(env, "REQUESTS_CA_BUNDLE")
    if ca:
        try:
            with open(ca, encoding="utf-8") as handle:
                if "-----BEGIN CERTIFICATE-----" not in handle.read():
                    raise ConfigError("REQUESTS_CA_BUNDLE", f"{ca} holds no PEM certificate")
        except OSError as exc:
            raise ConfigError("REQUESTS_CA_BUNDLE", f"cannot read {ca}: {exc.strerror}") from None
    return OutboundHTTP(http_proxy=_get(env, "http_proxy"), https_proxy=_get(env, "https_proxy"),
                        no_proxy=_get(env, "no_proxy"), ca_bundle=ca)


def _absolute_dir(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name)
    if value and not value.startswith("/"):
        raise ConfigError(name, f"must be an absolute path, got {value!r}")
    return value.rstrip("/") or ("/" if value else "")


def _matching(env: Mapping[str, str], name: str, pattern: re.Pattern[str], what: str) -> str:
    value = _get(env, name)
    if value and not pattern.match(value):
        raise ConfigError(name, f"not {what}: {value!r}")
    return value


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _get(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, default).strip()


def _bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"expected a number of seconds, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def _required(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name)
    if not value:
        raise ConfigError(name, "is required and not set")
    return value


def decode_private_key(raw: str, name: str = "JARVICE_SLURM_SSH_PKEY") -> str:
    """Accept PEM text or base64 of PEM (how Kubernetes secrets often carry it)."""
    text = raw.strip()
    if not text.startswith("-----BEGIN"):
        try:
            text = base64.b64decode("".join(text.split()), validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(name, "is neither a PEM private key nor base64 of one") from None
    if not (text.startswith("-----BEGIN") and "PRIVATE KEY-----" in text):
        raise ConfigError(name, "is neither a PEM private key nor base64 of one")
    return text + "\n"


def _log_level(env: Mapping[str, str]) -> int:
    name = "JARVICE_SLURM_SCHED_LOGLEVEL"
    raw = _get(env, name, "INFO").upper()
    if raw.isdigit():
        level = int(raw)
        if level in _LOG_LEVELS.values():
            return level
    elif raw in _LOG_LEVELS:
        return _LOG_LEVELS[raw]
    raise ConfigError(name, f"expected DEBUG, INFO, WARNING, ERROR, CRITICAL or 10..50, got {raw!r}")


def _registry(env: Mapping[str, str]) -> Registry:
    local = _get(env, "JARVICE_LOCAL_REGISTRY")
    local_base = _get(env, "JARVICE_LOCAL_REPO_BASE")
    if local and not local_base:
        raise ConfigError("JARVICE_LOCAL_REPO_BASE", "must be set when JARVICE_LOCAL_REGISTRY is")
    proxy_port = _int(env, "JARVICE_REGISTRY_PROXY_PORT", 0, 0, 65535) or None
    proxy_repos = tuple(r.strip() for r in _get(env, "JARVICE_REGISTRY_PROXY_REPOS").split(",") if r.strip())
    if proxy_port and not proxy_repos:
        raise ConfigError("JARVICE_REGISTRY_PROXY_REPOS", "must be set when JARVICE_REGISTRY_PROXY_PORT is")
    creds = {}
    for var in ("JARVICE_DOCKER_USERNAME", "JARVICE_DOCKER_PASSWORD"):
        value = _get(env, var)
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ConfigError(var, "must be base64 (as the Helm chart stores it)") from None
        creds[var] = value
    return Registry(
        system_registry=_get(env, "JARVICE_SYSTEM_REGISTRY", Registry.system_registry),
        system_repo_base=_get(env, "JARVICE_SYSTEM_REPO_BASE", Registry.system_repo_base),
        omit_repo_base=_bool(env, "JARVICE_SYSTEM_OMIT_REPO_BASE"),
        images_tag=_get(env, "JARVICE_IMAGES_TAG", "latest"),
        local_registry=local,
        local_repo_base=local_base,
        proxy_port=proxy_port,
        proxy_repos=proxy_repos,
        docker_username=creds["JARVICE_DOCKER_USERNAME"],
        docker_password=creds["JARVICE_DOCKER_PASSWORD"],
    )


def _known_hosts(env: Mapping[str, str]) -> str | None:
    """A known_hosts path or its lines. Unset: ``~/.ssh/known_hosts``, which the daemon writes itself
    on first use when it does not exist (``trust_on_first_use``): the JARVICE chart passes no host key."""
    name = "JARVICE_SLURM_SSH_KNOWN_HOSTS"
    raw = env.get(name, "").strip()
    if not raw:
        return str(Path(env.get("HOME") or Path.home()) / ".ssh" / "known_hosts")
    if "\n" in raw or " " in raw:
        return raw + "\n"  # inline known_hosts lines
    try:
        with open(raw, encoding="utf-8") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(name, f"cannot read {raw}: {exc.strerror}") from None
    return raw


def _port_range(env: Mapping[str, str], name: str) -> tuple[int, int]:
    raw = _get(env, name)
    if not raw or raw == "0":
        return (0, 0)
    m = re.fullmatch(r"(\d{1,5})-(\d{1,5})", raw)
    if not m or not 1 <= int(m[1]) <= int(m[2]) <= 65535:
        raise ConfigError(name, f"expected a port range like 30000-30999, or 0, got {raw!r}")
    return (int(m[1]), int(m[2]))


def _annotations(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """A JSON object, or ``key=value`` pairs separated by commas (the Helm chart's two habits)."""
    raw = _get(env, name)
    if not raw:
        return ()
    if raw.startswith("{"):
        try:
            value = json.loads(raw)
        except ValueError:
            raise ConfigError(name, "is not valid JSON") from None
        if not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(name, "values must be strings")
        return tuple(sorted(value.items()))
    pairs = []
    for item in raw.split(","):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(name, f"expected key=value,... or a JSON object, got {item!r}")
        pairs.append((key.strip(), val.strip()))
    return tuple(pairs)


def _proxy(env: Mapping[str, str]) -> ProxySettings:
    mode = _get(env, "JARVICE_SLURM_PROXY_MODE", "local").lower()
    if mode not in ("local", "kubernetes"):
        raise ConfigError("JARVICE_SLURM_PROXY_MODE", f"expected local or kubernetes, got {mode!r}")
    tolerations = _get(env, "JARVICE_JOBS_TOLERATIONS", "[]")
    try:
        if not isinstance(json.loads(tolerations), list):
            raise ValueError
    except ValueError:
        raise ConfigError("JARVICE_JOBS_TOLERATIONS", "must be a JSON list of tolerations") from None
    issuer, cluster_issuer = _get(env, "JARVICE_JOBS_INGRESS_CERT_ISSUER"), _get(env, "JARVICE_JOBS_INGRESS_CERT_CLUSTER_ISSUER")
    if issuer and cluster_issuer:
        raise ConfigError("JARVICE_JOBS_INGRESS_CERT_CLUSTER_ISSUER",
                          "set either it (a ClusterIssuer) or JARVICE_JOBS_INGRESS_CERT_ISSUER (an Issuer), not both")
    image = _get(env, "JARVICE_SLURM_PROXY_IMAGE")
    kube_api = _get(env, "JARVICE_SLURM_KUBE_API")
    if mode == "kubernetes":
        _kubernetes_mode(env, image, kube_api, tolerations)
    return ProxySettings(
        mode=mode,
        bind=_get(env, "JARVICE_SLURM_PROXY_BIND", "0.0.0.0"),
        public_host=_get(env, "JARVICE_SLURM_PROXY_PUBLIC_HOST") or socket.getfqdn(),
        ports=_port_range(env, "JARVICE_SLURM_PROXY_PORTS"),
        namespace=_get(env, "JARVICE_JOBS_NAMESPACE", "jarvice-system-jobs"),
        ingress_class=_get(env, "JARVICE_JOBS_INGRESS_CLASS"),
        ingress_annotations=_annotations(env, "JARVICE_JOBS_INGRESS_ANNOTATIONS"),
        cert_issuer=issuer,
        cert_cluster_issuer=cluster_issuer,
        image=image,
        ssh_secret=_get(env, "JARVICE_SLURM_PROXY_SSH_SECRET", "jarvice-slurm-downstream-ssh"),
        tolerations=tolerations,
        kube_api=kube_api,
        leader_election=_bool(env, "JARVICE_SLURM_LEADER_ELECTION"),
        identity=_get(env, "JARVICE_SLURM_POD_NAME") or socket.gethostname(),
    )


def _kubernetes_mode(env: Mapping[str, str], image: str, kube_api: str, tolerations: str) -> None:
    """What Kubernetes mode needs, checked here: found later, inside the running daemon and after
    connecting to the cluster, a mistake would surface as a traceback instead of one line and exit 2."""
    mode = "is required when JARVICE_SLURM_PROXY_MODE=kubernetes"
    if not image:
        raise ConfigError("JARVICE_SLURM_PROXY_IMAGE", mode)
    domain = _get(env, "JARVICE_JOBS_DOMAIN")
    if not domain:
        raise ConfigError("JARVICE_JOBS_DOMAIN", mode)
    try:
        JobsDomain.parse(domain)
    except ValueError as exc:
        raise ConfigError("JARVICE_JOBS_DOMAIN", str(exc)) from None
    if kube_api and not re.match(r"^https?://[^/\s]+", kube_api):
        raise ConfigError("JARVICE_SLURM_KUBE_API", f"expected an http:// or https:// URL, got {kube_api!r}")
    if not all(isinstance(t, dict) for t in json.loads(tolerations)):
        raise ConfigError("JARVICE_JOBS_TOLERATIONS", "must be a JSON list of objects")


def _port_ranges(service_port: int, ssh_port: int, count: int) -> None:
    """Interactive job *i* listens on service port ``service_port + i`` and SSH port ``ssh_port - i``:
    both ranges must fit in 1..65535 and never share a port (a job's SSH port must not be another's service)."""
    service = (service_port, service_port + count - 1)
    ssh = (ssh_port - count + 1, ssh_port)
    if service[1] > 65535:
        raise ConfigError("JARVICE_SLURM_PORT_COUNT", f"service ports {service[0]}-{service[1]} go past 65535")
    if ssh[0] < 1:
        raise ConfigError("JARVICE_SLURM_PORT_COUNT", f"SSH ports count down from {ssh_port} below 1 "
                          f"({count} interactive jobs)")
    if service[0] <= ssh[1] and ssh[0] <= service[1]:
        raise ConfigError("JARVICE_SLURM_JOB_SSH_PORT", f"SSH ports {ssh[0]}-{ssh[1]} overlap service ports "
                          f"{service[0]}-{service[1]} (JARVICE_SLURM_SERVICE_PORT, JARVICE_SLURM_PORT_COUNT)")


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


def _instance(env: Mapping[str, str], namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """This deployment's name in its jobs' comments: a daemon adopts only its own jobs (and unsigned ones,
    from before instances), so staging and production sharing one Slurm account never take each other's.

    Default: the Kubernetes namespace the daemon's pod runs in (stable across restarts and upgrades, and
    different for two deployments in one cluster); outside Kubernetes none (jobs go unsigned).
    """
    name = "JARVICE_SLURM_INSTANCE"
    value = _get(env, name)
    if not value:
        try:
            value = namespace_file.read_text(encoding="utf-8").strip()
        except OSError:
            return ""
    if not _INSTANCE_RE.match(value):
        raise ConfigError(name, f"expected letters, digits, '.', '_' or '-' (at most 63), got {value!r}")
    return value


def _journal(env: Mapping[str, str]) -> str:
    name = "JARVICE_SLURM_JOURNAL"
    raw = _get(env, name) or str(Path(env.get("HOME", "/tmp")) / ".local/state/slurm-downstream/journal.sqlite3")
    if raw != ":memory:" and not raw.startswith("/"):
        raise ConfigError(name, f"must be an absolute path or :memory:, got {raw!r}")
    return raw


@dataclass(frozen=True)
class SSHTarget:
    """How to log in to the login node (adapters.ssh connects with it)."""

    host: str
    port: int
    user: str
    private_key: str = field(repr=False)  # PEM
    known_hosts: str | None = None  # a file path, or known_hosts lines
    insecure_host_key: bool = False
    # known_hosts is the default file and did not exist at start: the first key seen is written there
    trust_on_first_use: bool = False
    keepalive: float = 15.0
    connect_timeout: float = 15.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def service_user(env: Mapping[str, str]) -> str:
    """JARVICE_SLURM_SSH_USER, checked: the SSH login, and slurmrestd's service user (in its URL paths) too."""
    user = _get(env, "JARVICE_SLURM_SSH_USER", "jarvice")
    if not _USER_RE.match(user):
        raise ConfigError("JARVICE_SLURM_SSH_USER", f"not a valid login name: {user!r}")
    return user


def ssh_login(env: Mapping[str, str]) -> SSHTarget:
    """The SSH variables, checked: read alike by the daemon and by its proxy pods."""
    addr = _required(env, "JARVICE_SLURM_CLUSTER_ADDR")
    if not (_HOST_RE.match(addr) or _is_ip(addr)):
        raise ConfigError("JARVICE_SLURM_CLUSTER_ADDR", f"not a host name or address: {addr!r}")
    user = service_user(env)
    known_hosts = _known_hosts(env)
    insecure = _bool(env, "JARVICE_SLURM_SSH_INSECURE_HOST_KEY")
    return SSHTarget(
        host=addr,
        port=_int(env, "JARVICE_SLURM_CLUSTER_PORT", 22, 1, 65535),
        user=user,
        private_key=decode_private_key(_required(env, "JARVICE_SLURM_SSH_PKEY")),
        known_hosts=known_hosts,
        insecure_host_key=insecure,
        trust_on_first_use=not insecure and not env.get("JARVICE_SLURM_SSH_KNOWN_HOSTS", "").strip()
        and not Path(known_hosts).is_file(),
        keepalive=_float(env, "JARVICE_SLURM_SSH_KEEPALIVE", 15.0, 1.0, 3600.0),
    )


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every variable; raise ConfigError on the first bad one."""
    env, deprecations = resolve_aliases(os.environ if env is None else env)
    client = _slurm_client(env)
    rest = _rest(env) if client == "slurmrestd_client" else None
    # slurmrestd controls Slurm; SSH, when configured, still reaches the jobs' files and their web services
    login = ssh_login(env) if rest is None or _get(env, "JARVICE_SLURM_CLUSTER_ADDR") else None
    server_key = _get(env, "JARVICE_SCHED_SERVER_KEY") or None
    if server_key and not _SERVER_KEY_RE.match(server_key):
        raise ConfigError("JARVICE_SCHED_SERVER_KEY", "must be user:password")
    if server_key is None and not _bool(env, "JARVICE_SLURM_INSECURE_NO_AUTH"):
        raise ConfigError(
            "JARVICE_SCHED_SERVER_KEY",
            "is not set; upstream calls would be unauthenticated "
            "(set JARVICE_SLURM_INSECURE_NO_AUTH=true only for development)",
        )
    scratch = _get(env, "JARVICE_SLURM_SCRATCH_DIR", "~")
    if scratch != "~" and not scratch.startswith("/"):
        raise ConfigError("JARVICE_SLURM_SCRATCH_DIR", f"must be an absolute path or ~, got {scratch!r}")
    if login is None and scratch == "~":
        raise ConfigError("JARVICE_SLURM_SCRATCH_DIR", "must be an absolute path with slurmrestd_client and no SSH "
                                                       "(JARVICE_SLURM_CLUSTER_ADDR unset): ~ is known only over SSH")
    jobs_domain = _get(env, "JARVICE_JOBS_DOMAIN")
    if jobs_domain and not re.match(r"^[A-Za-z0-9.-]+(:\d+)?(/[A-Za-z0-9._/-]*\$)?$", jobs_domain):
        raise ConfigError("JARVICE_JOBS_DOMAIN", f"expected my-domain.com or my-domain.com/job$, got {jobs_domain!r}")
    max_sessions = _int(env, "JARVICE_SLURM_SSH_MAX_SESSIONS", 8, 1, 1000)
    service_port = _int(env, "JARVICE_SLURM_SERVICE_PORT", 2228, 1, 65535)
    ssh_port = _int(env, "JARVICE_SLURM_JOB_SSH_PORT", 2227, 1, 65535)
    port_count = _int(env, "JARVICE_SLURM_PORT_COUNT", 100, 1, 10_000)
    _port_ranges(service_port, ssh_port, port_count)
    log_level, log_format = logging_settings(env)
    return Settings(
        cluster_addr=login.host if login else "",
        cluster_port=login.port if login else 22,
        ssh_user=login.user if login else service_user(env),
        ssh_pkey=login.private_key if login else "",
        ssh_known_hosts=login.known_hosts if login else None,
        ssh_insecure_host_key=login.insecure_host_key if login else False,
        ssh_trust_on_first_use=login.trust_on_first_use if login else False,
        ssh_max_sessions=max_sessions,
        ssh_keepalive=login.keepalive if login else 15.0,
        command_timeout=_float(env, "JARVICE_SLURM_COMMAND_TIMEOUT", 30.0, 1.0, 3600.0),
        log_level=log_level,
        https_proxy=_get(env, "JARVICE_SLURM_HTTPS_PROXY"),
        http_proxy=_get(env, "JARVICE_SLURM_HTTP_PROXY"),
        no_proxy=_get(env, "JARVICE_SLURM_NO_PROXY"),
        singularity_tmpdir=_get(env, "JARVICE_SINGULARITY_TMPDIR", "/tmp"),
        overlay_size=_int(env, "JARVICE_SLURM_OVERLAY_SIZE", 640, 0, 10_000_000),
        singularity_verbose=_bool(env, "JARVICE_SINGULARITY_VERBOSE"),
        server_key=server_key,
        scratch_dir=scratch.rstrip("/") or "/",
        jobs_domain=jobs_domain,
        executor=_get(env, "JARVICE_BAREMETAL_EXECUTOR", "singularity"),
        poll_interval=_float(env, "JARVICE_SLURM_POLL_INTERVAL", 2.0, 0.2, 600.0),
        service_port=service_port,
        ssh_port=ssh_port,
        registry=_registry(env),
        port_count=port_count,
        journal=_journal(env),
        log_format=log_format,
        proxy=_proxy(env),
        global_scratch_dir=_absolute_dir(env, "JARVICE_JOB_GLOBAL_SCRATCH_DIR"),
        global_registries=tuple(r.strip() for r in _get(env, "JARVICE_JOB_GLOBAL_REGISTRIES").split(",") if r.strip()),
        job_group=_matching(env, "JARVICE_SLURM_SSH_USER_GROUP", _GROUP_RE, "a group name"),
        chown_wrapper=_matching(env, "JARVICE_CHOWN_WRAPPER", _COMMAND_RE, "a command path without spaces"),
        gc_age=_float(env, "JARVICE_SLURM_GC_AGE", 7 * 86400.0, 60.0, 10 * 365 * 86400.0),
        outbound=_outbound(env),
        deprecations=deprecations,
        instance=_instance(env),
        slurm_client=client,
        rest=rest,
    )


def logging_settings(env: Mapping[str, str]) -> tuple[int, str]:
    """Log level and format (text or json), for the daemon and for the proxy pods' command alike."""
    return _log_level(env), _log_format(env)


def _log_format(env: Mapping[str, str]) -> str:
    value = _get(env, "JARVICE_SLURM_LOG_FORMAT", "text").lower()
    if value not in ("text", "json"):
        raise ConfigError("JARVICE_SLURM_LOG_FORMAT", f"expected text or json, got {value!r}")
    return value
