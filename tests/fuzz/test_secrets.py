"""No secret in any answer or any log line, over a realistic session on the real stack.

The daemon (real, on a real socket, SSH to the test cluster) runs with
JARVICE_SLURM_SCHED_LOGLEVEL=10 and logging set up as ``slurm-downstream serve``
sets it (daemon.logs.configure_logging); on top of that every logger is opened
to DEBUG, those the daemon keeps quiet too (asyncssh, hypercorn's error log,
quart...), and a handler on the root logger keeps every record, formatted as the
operator sees it, with its traceback and any extra fields. A session then does
what upstream does (submit with secrets in the environment and the script, repeat
the submit, queued, running, runstatus, events, tail, exitstatus) plus errors with
secrets in the input, and reads every argument-free GET route of the served app
(so /admin, /admin/state and /metrics are read, and any such route added later).
Every answer and every log line is then searched for every secret, raw and base64.

The session runs twice: over SSH (the first Slurm version), and through slurmrestd on the
first version whose test cluster runs it (JWT service tokens from the OIDC stand-in; the
client secret is one more secret, and no JWT of any kind may show anywhere).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from quart_trio import QuartTrio

from daemon.logs import configure_logging
from tests.fuzz.conftest import LiveDaemon, daemon_thread, post_args, wait_gone
from tests.fuzz.strategies import BASE_FIELDS, b64, render_script, script_line, submit_args
from tests.integration.conftest import cluster_env, settings, unique_name, user_token
from tests.support.cluster import REST_VERSIONS, VERSIONS, using

pytestmark = pytest.mark.cluster

TOKEN = uuid.uuid4().hex[:10]
# More paths to read at the end of the session, for dumps that are not argument-free GET routes of
# the app (those are found by themselves), e.g. "/admin/state?jobs=all".
STATE_DUMPS: tuple[str, ...] = ()


# The job proves the secrets reached it without showing them: it prints their SHA-256.
BODY = """\
for v in JARVICE_DOCKER_PASSWORD JARVICE_INIT_DOCKER_PASSWORD SCHTTP_PROXY SCHTTPS_PROXY; do
  printf '%s=' "$v"; printenv "$v" | tr -d '\\n' | sha256sum | cut -d' ' -f1
done
sleep 2
"""


@dataclass
class Secrets:
    env: dict[str, str]  # settings overrides
    fields: dict[str, str]  # job script lines
    forms: dict[str, str] = field(default_factory=dict)  # label -> text that must never be shown
    hashes: dict[str, str] = field(default_factory=dict)  # variable -> SHA-256 the job must print
    bearer: str = "b"  # what upstream sends as the user's token (slurmrestd: a real one, itself a secret)


def make_secrets() -> Secrets:
    reg_user, reg_password = f"sd-reguser-{TOKEN}", f"sd-regpw-{TOKEN}"
    app_user, app_password = f"sd-appuser-{TOKEN}", f"sd-apppw-{TOKEN}"
    ctr_user, ctr_password = f"sd-ctruser-{TOKEN}", f"sd-ctrpw-{TOKEN}"
    proxy_password, proxy_password2 = f"sd-proxypw-{TOKEN}", f"sd-proxy/pw2-{TOKEN}"  # '/' in a URL password
    http_proxy = f"http://proxyuser:{proxy_password}@proxy.example:3128"
    https_proxy = f"http://proxyuser:{proxy_password2}@proxy.example:3129"
    ctr = b64(json.dumps({"auths": {"docker.io": {"auth": b64(f"{ctr_user}:{ctr_password}")}}}))
    pkey = cluster_env()["JARVICE_SLURM_SSH_PKEY"]
    pem = pkey if pkey.startswith("-----") else base64.b64decode(pkey).decode()
    server_password = cluster_env()["JARVICE_SCHED_SERVER_KEY"].split(":", 1)[1]
    forms = {
        "server key password": server_password,
        "registry user": reg_user, "registry user (base64)": b64(reg_user),
        "registry password": reg_password, "registry password (base64)": b64(reg_password),
        "app registry user": app_user, "app registry user (base64)": b64(app_user),
        "app registry password": app_password, "app registry password (base64)": b64(app_password),
        "JOBOBJ_CTRSECRET": ctr, "JOBOBJ_CTRSECRET truncated": ctr[:-4],
        "ctr user": ctr_user, "ctr password": ctr_password, "ctr auth": b64(f"{ctr_user}:{ctr_password}"),
        "http proxy password": proxy_password, "https proxy password": proxy_password2,
    }
    forms.update({f"SSH key line {i}": line for i, line in enumerate(pem.splitlines())
                  if len(line) >= 16 and not line.startswith("-----")})
    if pkey != pem:
        forms["SSH key (base64) start"] = pkey[:40]
    return Secrets(
        env={
            "JARVICE_SLURM_SCHED_LOGLEVEL": "10",
            "JARVICE_DOCKER_USERNAME": b64(reg_user),
            "JARVICE_DOCKER_PASSWORD": b64(reg_password),
            "JARVICE_SLURM_HTTP_PROXY": http_proxy,
            "JARVICE_SLURM_HTTPS_PROXY": https_proxy,
        },
        fields={
            "JOBOBJ_DOCKER_SECRET": json.dumps({"username": app_user, "password": app_password}),
            "JOBOBJ_CTRSECRET": ctr,
        },
        forms=forms,
        hashes={
            "JARVICE_DOCKER_PASSWORD": hashlib.sha256(b64(app_password).encode()).hexdigest(),
            "JARVICE_INIT_DOCKER_PASSWORD": hashlib.sha256(b64(reg_password).encode()).hexdigest(),
            "SCHTTP_PROXY": hashlib.sha256(http_proxy.encode()).hexdigest(),
            "SCHTTPS_PROXY": hashlib.sha256(https_proxy.encode()).hexdigest(),
        },
    )


# ------------------------------------------------------------------ capturing every log record
_STANDARD_ATTRS = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class KeepAll(logging.Handler):
    """Every record, as text: formatted message, traceback, and any extra attributes."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.levels: Counter[str] = Counter()
        self.loggers: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a broken record is still searched
            text = f"{record.msg!r} % {record.args!r}"
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        self.lines.append(f"{text} {extra!r}" if extra else text)
        self.levels[record.levelname] += 1
        self.loggers[record.name.split(".")[0]] += 1


def _all_loggers() -> list[logging.Logger]:
    manager = logging.root.manager
    return [logging.root] + [logging.getLogger(name) for name in list(manager.loggerDict)]


@contextmanager
def every_log_record(level: int) -> Iterator[KeepAll]:
    """The daemon's logging set-up at ``level``, then every logger opened to DEBUG, all kept."""
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    saved_levels = {logger.name: logger.level for logger in _all_loggers()}
    configure_logging(level)  # as `slurm-downstream serve` does: its format, its quiet libraries
    keep = KeepAll()
    keep.setFormatter(root.handlers[0].formatter)
    root.handlers[:] = [keep]  # the stderr handler it added would only duplicate the lines
    for logger in _all_loggers():
        logger.setLevel(logging.DEBUG)  # at ANY level: also the libraries configure_logging quiets
    try:
        yield keep
    finally:
        root.handlers[:] = saved_handlers
        for logger in _all_loggers():  # loggers made meanwhile go back to NOTSET (inherit)
            logger.setLevel(saved_levels.get(logger.name, logging.NOTSET))


# ------------------------------------------------------------------ the session
@dataclass
class Session:
    secrets: Secrets
    answers: list[tuple[str, str]]  # (what was asked, status + headers + body)
    logs: KeepAll
    tail: str
    journal: bytes = b""  # the SQLite journal the daemon wrote, as bytes on disk


def script(secrets: Secrets, **changes: str) -> str:
    fields = {**BASE_FIELDS, **secrets.fields, **changes}
    return render_script(fields, body=BODY)


def argument_free_gets(app: QuartTrio) -> list[str]:
    return sorted(str(rule.rule) for rule in app.url_map.iter_rules()
                  if "GET" in (rule.methods or ()) and not rule.arguments and rule.endpoint != "static")


def drive(daemon: LiveDaemon, secrets: Secrets) -> tuple[list[tuple[str, str]], str]:
    client = daemon.client
    answers: list[tuple[str, str]] = []

    def keep(label: str, response: httpx.Response) -> httpx.Response:
        answers.append((label, f"{response.status_code} {dict(response.headers)}\n{response.text}"))
        return response

    name = unique_name("sec")
    ids = {"name": name, "number": 41, "jobid": ""}
    submitted = keep("submit", post_args(client, "/submit", submit_args(name, script(secrets), number=41, bearer=secrets.bearer)))
    assert submitted.status_code == 200, submitted.text
    ids["jobid"] = submitted.json()[0]
    keep("submit repeated", post_args(client, "/submit", submit_args(name, script(secrets), number=41, bearer=secrets.bearer)))
    for path in ("/queued", "/running"):
        keep(path, client.get(path))
    for path in ("/runstatus", "/events", "/exitstatus"):  # exitstatus while it runs: 409
        keep(path, post_args(client, path, ids))
    base = f"/request/{name}/41/{ids['jobid']}"
    keep("info", post_args(client, f"{base}/info", {"qs": {}}))
    wait_gone(client, name)
    tail = keep("tail", post_args(client, f"{base}/tail", {"qs": {"lines": ["50"]}}))
    assert tail.status_code == 200, tail.text
    for label in ("exitstatus", "exitstatus repeated"):
        keep(label, post_args(client, "/exitstatus", ids))
    keep("release of a finished job", post_args(client, "/release", ids))
    keep("exitstatus, other name", post_args(client, "/exitstatus", {**ids, "name": "other-name"}))
    # errors, with the secrets in the input
    for label, changes in {
        "bad walltime": {"JOBOBJ_WALLTIME": "1h"},
        "partition Slurm refuses": {"JOBOBJ_DEVICES": '["exclusive=False", "partition=no-such-partition"]'},
        "truncated JOBOBJ_CTRSECRET": {"JOBOBJ_DOCKER_SECRET": "", "JOBOBJ_CTRSECRET": secrets.fields["JOBOBJ_CTRSECRET"][:-4]},
    }.items():
        args = submit_args(unique_name("sec"), script(secrets, **changes), bearer=secrets.bearer)
        keep(label, post_args(client, "/submit", args))
    undoubled = script(secrets).replace(script_line("JOBOBJ_DOCKER_SECRET", secrets.fields["JOBOBJ_DOCKER_SECRET"]),
                                        "JOBOBJ_DOCKER_SECRET=" + secrets.fields["JOBOBJ_DOCKER_SECRET"])
    assert undoubled != script(secrets)
    args = submit_args(unique_name("sec"), undoubled, bearer=secrets.bearer)
    keep("secret JSON with single braces", post_args(client, "/submit", args))
    user = daemon.settings.server_key.split(":", 1)[0]
    with httpx.Client(base_url=daemon.url, timeout=30) as stranger:
        keep("wrong password", stranger.get("/queued", auth=(user, "wrong")))
    keep("bad job id", post_args(client, "/events", {**ids, "jobid": "x"}))
    keep("unknown path", client.get("/no-such-path"))
    keep("wrong method", client.get("/submit"))
    for path in (*argument_free_gets(daemon.app), *STATE_DUMPS):
        keep(f"GET {path}", client.get(path))
    return answers, tail.text


JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


@pytest.fixture(scope="module", params=["ssh_client", "slurmrestd_client"])
def session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    rest = [v for v in VERSIONS if v in REST_VERSIONS]
    if request.param == "ssh_client":
        version = VERSIONS[0]
    elif rest:
        version = f"{rest[0]}-rest"
    else:
        pytest.skip("no test cluster with slurmrestd in SLURM_VERSIONS (24.11 or 26.05)")
    with using(version):
        secrets = make_secrets()
        if request.param == "slurmrestd_client":
            secrets.forms["Keycloak client secret"] = cluster_env()["JARVICE_KEYCLOAK_CLIENT_SECRET"]
            secrets.bearer = user_token() or ""
            secrets.forms["the user's bearer token"] = secrets.bearer
        journal = tmp_path_factory.mktemp("journal") / "journal.sqlite3"
        with every_log_record(logging.DEBUG) as logs:
            conf = settings(**secrets.env, JARVICE_SLURM_JOURNAL=str(journal))
            assert conf.log_level == logging.DEBUG and conf.slurm_client == request.param
            with daemon_thread(conf) as daemon:
                answers, tail = drive(daemon, secrets)
    yield Session(secrets, answers, logs, tail, journal.read_bytes() if journal.exists() else b"")


def leaks(secrets: Secrets, surfaces: list[tuple[str, str]]) -> list[str]:
    found = []
    for where, text in surfaces:
        if jwt := JWT_RE.search(text):  # the service token (fetched, never configured here) or any other
            found.append(f"a JWT in {where}: ...{text[max(0, jwt.start() - 80):jwt.start() + 20]!r}...")
        for label, secret in secrets.forms.items():
            at = text.find(secret)
            if at >= 0:
                found.append(f"{label} in {where}: ...{text[max(0, at - 80):at + len(secret) + 40]!r}...")
    return found


# ------------------------------------------------------------------ the checks
def test_the_secrets_reached_the_job(session: Session) -> None:
    """The control: the job had every secret (it printed their hashes), so they were there to leak."""
    printed = dict(line.split("=", 1) for line in session.tail.splitlines() if "=" in line)
    assert printed == session.secrets.hashes


def test_every_log_level_was_captured(session: Session) -> None:
    """The control: the capture saw DEBUG records, the daemon's own lines and the libraries'."""
    assert session.logs.levels["DEBUG"] > 0, session.logs.levels
    assert session.logs.levels["INFO"] > 0, session.logs.levels
    assert {"daemon", "slurm_downstream", "asyncssh"} <= set(session.logs.loggers), session.logs.loggers
    assert any("submitted" in line for line in session.logs.lines)


def answer_leaks(session: Session) -> list[str]:
    return leaks(session.secrets, session.answers)


def log_leaks(session: Session) -> list[str]:
    return leaks(session.secrets, [(f"log line {i}", line) for i, line in enumerate(session.logs.lines)])


def test_no_secret_in_any_answer(session: Session) -> None:
    assert len(session.answers) >= 25
    assert not answer_leaks(session), "\n".join(answer_leaks(session))


def test_no_secret_in_any_log_line(session: Session) -> None:
    assert not log_leaks(session), "\n".join(log_leaks(session))


def test_no_secret_in_the_journal(session: Session) -> None:
    """What the daemon keeps on disk (submits in doubt, outcomes, answers) holds no secret: the users'
    tokens above all (with slurmrestd only the user's name is kept)."""
    assert session.journal, "the session wrote no journal"
    text = session.journal.decode("utf-8", errors="replace")
    found = leaks(session.secrets, [("the journal", text)])
    assert not found, "\n".join(found)


def test_the_refused_secret_inputs_were_refused_by_name(session: Session) -> None:
    """The error answers searched above are the errors meant (not, say, a 401 that says nothing)."""
    answers = dict(session.answers)
    for label, words in {
        "bad walltime": "JOBOBJ_WALLTIME",
        "partition Slurm refuses": "Slurm refused",
        "truncated JOBOBJ_CTRSECRET": "JOBOBJ_CTRSECRET",
        "secret JSON with single braces": "unknown field",
    }.items():
        assert answers[label].startswith("400 ") and words in answers[label], answers[label]
