"""Log lines as an operator reads them: the seed's layout or JSON, job context, and no secret, ever."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator

import asyncssh
import pytest

from config.settings import load
from daemon.logs import JobLogger, Redactor, add_secret, configure_logging, job_extra, register_secrets, secrets_of


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """The root logger writes here for the test; pytest's own handlers come back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    yield stream
    for h in root.handlers[:]:
        root.removeHandler(h)
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    for name in ("asyncssh", "hypercorn.access", "transitions", "httpx"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_layout_is_the_seed_documents(output: io.StringIO) -> None:
    configure_logging(logging.INFO, stream=output)
    logging.getLogger("daemon.service").info("Init done. Entering main loop.")
    logging.getLogger("daemon.service").debug("not shown at INFO")
    (line,) = lines(output)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] INFO Init done\. Entering main loop\.", line)


def test_lines_about_a_job_carry_its_name_and_slurm_id(output: io.StringIO) -> None:
    configure_logging(logging.INFO, stream=output)
    log = logging.getLogger("daemon.service")
    log.info("submitted (%d node(s))", 2, extra=job_extra("20261123-app-alice", "1234"))
    JobLogger(log, "20261123-app-bob", "77").warning("proxy down")
    log.info("accepted", extra=job_extra("20261123-app-carol", ""))
    log.info("no job here")
    assert lines(output)[0].endswith("INFO submitted (2 node(s)) [job=20261123-app-alice id=1234]")
    assert lines(output)[1].endswith("WARNING proxy down [job=20261123-app-bob id=77]")
    assert lines(output)[2].endswith("INFO accepted [job=20261123-app-carol]")
    assert lines(output)[3].endswith("INFO no job here")


def test_json_lines(output: io.StringIO) -> None:
    configure_logging(logging.INFO, "json", stream=output)
    log = logging.getLogger("daemon.service")
    log.info("job finished: %s", "COMPLETED", extra=job_extra("20261123-app-alice", "1234"))
    try:
        raise RuntimeError("squeue went away")
    except RuntimeError:
        log.exception("poll crashed")
    log.warning("ünïcode stays readable")
    first, second, third = (json.loads(line) for line in lines(output))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.pop("time"))
    assert first == {"level": "INFO", "logger": "daemon.service", "message": "job finished: COMPLETED",
                     "job": "20261123-app-alice", "jobid": "1234"}
    assert second["level"] == "ERROR" and second["message"] == "poll crashed"
    assert second["exception"].startswith("Traceback") and "RuntimeError: squeue went away" in second["exception"]
    assert "job" not in second
    assert third["message"] == "ünïcode stays readable"


def test_chatty_libraries_are_quiet_unless_debugging(output: io.StringIO) -> None:
    configure_logging(logging.INFO, stream=output)
    logging.getLogger("asyncssh").info("Opening SSH channel")
    logging.getLogger("asyncssh").warning("connection lost")
    assert [line.split("] ", 1)[1] for line in lines(output)] == ["WARNING connection lost"]
    configure_logging(logging.DEBUG, stream=output)
    logging.getLogger("asyncssh").info("Opening SSH channel")
    assert lines(output)[-1].endswith("INFO Opening SSH channel")


@pytest.fixture(scope="module")
def pem() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_secret_reaches_a_log_line_at_any_level(output: io.StringIO, pem: str, fmt: str) -> None:
    password = f"pw-{uuid.uuid4().hex[:12]}"
    add_secret(password)
    configure_logging(logging.DEBUG, fmt, stream=output)
    basic = base64.b64encode(f"jarvice:{password}".encode()).decode()
    leaks = [
        ("key %s", pem),
        ("proxy %s", "http://bob:Pr0xy-S3cret@proxy.example.org:3128/"),
        ("registry login %s", password),
        ("its base64 %s", base64.b64encode(password.encode()).decode()),
        ("header %s", f"Authorization: Basic {basic}"),
        ("token %s", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig"),
        ("query %s", "https://api.example.org/x?access_token=abc123def&x=1"),
        ("json %s", '{"username": "bob", "password": "hunter2-json"}'),
    ]
    levels = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
    for i, (fmt_str, arg) in enumerate(leaks):
        logging.getLogger(["daemon.service", "asyncssh", "hypercorn.error", "httpx"][i % 4]).log(
            max(levels[i % 5], logging.WARNING), fmt_str, arg)
    try:
        raise ValueError(f"login failed for http://u:{password}@registry/ with key {pem}")
    except ValueError:
        logging.getLogger("daemon.api").exception("internal error", extra=job_extra(f"job-{password}", "9"))
    threading.Thread(target=lambda: logging.getLogger("asyncssh").error("from the asyncio thread: %s", password)).start()
    text = output.getvalue()
    for secret in [password, "Pr0xy-S3cret", basic, "eyJhbGciOiJIUzI1NiJ9", "abc123def", "hunter2-json",
                   "PRIVATE KEY-----\n", pem.splitlines()[1]]:
        assert secret not in text, f"{secret!r} leaked:\n{text}"
    assert text.count("[private key redacted]") == 2
    assert "http://bob:***@proxy.example.org:3128/" in text
    assert "Authorization: Basic ***" in text
    assert len(lines(output)) >= 9 if fmt == "json" else True  # one object per line, traceback inside


def test_bad_log_arguments_do_not_raise_and_do_not_leak(output: io.StringIO) -> None:
    add_secret("Sup3r-Secret-Value")
    configure_logging(logging.INFO, stream=output)
    logging.getLogger("x").info("two %s %s", "Sup3r-Secret-Value")  # one argument missing
    assert "Sup3r-Secret-Value" not in output.getvalue() and "two %s %s" in output.getvalue()


def test_short_values_are_not_registered() -> None:
    r = Redactor()
    r.add("abc")
    r.add("")
    r.add(None)
    assert r("abc is a word") == "abc is a word"
    r.add("abcd")
    assert r("abcd is a secret") == "*** is a secret"


def test_longer_secrets_win_over_shorter_ones_they_contain() -> None:
    r = Redactor()
    r.add("pass")
    r.add("passphrase-long")
    assert r("x passphrase-long y") == "x *** y"


def test_register_secrets_from_settings(pem: str) -> None:
    docker = base64.b64encode(b"d0cker-pw").decode()
    s = load({"JARVICE_SLURM_CLUSTER_ADDR": "login", "JARVICE_SLURM_SSH_PKEY": pem,
              "JARVICE_SCHED_SERVER_KEY": "upstream:srv-Key-123", "JARVICE_DOCKER_PASSWORD": docker,
              "JARVICE_SLURM_HTTPS_PROXY": "http://bob:prx-pw-9@proxy:3128"})
    assert {"upstream:srv-Key-123", "srv-Key-123", "d0cker-pw", "prx-pw-9"} <= set(secrets_of(s))
    r = Redactor()
    register_secrets(s, r)
    text = f"{docker} d0cker-pw srv-Key-123 prx-pw-9 {base64.b64encode(b'upstream:srv-Key-123').decode()}"
    assert r(text) == "*** *** *** *** ***"


def test_a_proxy_password_with_a_slash_is_masked_wherever_it_appears(pem: str) -> None:
    """The init report masks such a password in its URL; the log filter must know it too, for a bare copy."""
    s = load({"JARVICE_SLURM_CLUSTER_ADDR": "login", "JARVICE_SLURM_SSH_PKEY": pem,
              "JARVICE_SCHED_SERVER_KEY": "upstream:srv-Key-123",
              "JARVICE_SLURM_HTTP_PROXY": "http://bob:pa/ss:w0rd@proxy:3128"})
    assert "pa/ss:w0rd" in secrets_of(s)
    r = Redactor()
    register_secrets(s, r)
    assert r("proxy refused password pa/ss:w0rd") == "proxy refused password ***"
