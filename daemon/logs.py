"""Log lines operators can read, grep and ship, with no secret in any of them.

Two layouts: the seed document's text (``2023-09-12 09:08:04,204 [1] INFO msg``,
what JARVICE operators already grep) and JSON, one object per line, for log
pipelines (``JARVICE_SLURM_LOG_FORMAT=json``).

Job context: a line about a job carries ``extra=job_extra(name, jobid)`` (or is
logged through ``JobLogger``). Text lines then end in ``[job=NAME id=ID]``, JSON
lines get ``job`` and ``jobid`` fields, so ``grep 'id=1234'`` or a ``jobid``
filter finds a job's whole story.

Redaction: one filter on the root handler rewrites every record before any
formatter sees it, at every level and from every library (asyncssh, hypercorn,
httpx): private key PEM blocks, ``user:password@`` in URLs, ``Basic``/``Bearer``
credentials, ``password=...`` style pairs, and every value registered with
``add_secret`` (the server key, registry and proxy passwords; see
``register_secrets``), in plain and base64 form.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

from config.settings import Settings
from daemon.report import redact as redact_url
from daemon.report import url_password

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(message)s"
# libraries that are chatty at INFO (asyncssh logs every channel)
QUIET_LOGGERS = ("asyncssh", "hypercorn.access", "transitions", "httpx")  # WARNING and up, except at DEBUG
MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary words all over the log
MASK = "***"

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL)
_AUTH = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_PAIR = re.compile(r"\b(\w*(?:password|passwd|secret|token)\w*)=([^\s&'\",;]+)", re.IGNORECASE)
_JSON_PAIR = re.compile(r"(\"[\w-]*(?:password|passwd|secret|token)[\w-]*\"\s*:\s*)\"(?:[^\"\\]|\\.)*\"", re.IGNORECASE)


class Redactor:
    """Removes secrets from text: known shapes always, registered values once added."""

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str | None) -> None:
        """Never show ``value`` (nor its base64) again. Values under 4 characters are ignored."""
        if not value or len(value) < MIN_SECRET_LENGTH:
            return
        encoded = base64.b64encode(value.encode()).decode()
        values = self._values | {value, encoded, encoded.rstrip("=")}
        # longest first, so a secret is never half-replaced by a shorter one it contains
        pattern = re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))
        self._values, self._pattern = values, pattern  # swapped together: logging threads read them

    def __call__(self, text: str) -> str:
        text = _PEM.sub("[private key redacted]", text)
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        text = redact_url(text)
        text = _AUTH.sub(lambda m: f"{m[1]} {MASK}", text)
        text = _PAIR.sub(lambda m: f"{m[1]}={MASK}", text)
        return _JSON_PAIR.sub(lambda m: f'{m[1]}"{MASK}"', text)


REDACTOR = Redactor()


def add_secret(value: str | None) -> None:
    REDACTOR.add(value)


def redact(text: str) -> str:
    return REDACTOR(text)


def secrets_of(settings: Settings) -> list[str]:
    """The configured values no log line may show."""
    found: list[str] = []
    if settings.server_key:
        found += [settings.server_key, settings.server_key.split(":", 1)[1]]
    for b64 in (settings.registry.docker_password,):
        if b64:
            try:
                found.append(base64.b64decode(b64, validate=True).decode("utf-8"))  # its base64 is added with it
            except (binascii.Error, UnicodeDecodeError):
                found.append(b64)
    found += [password for url in (settings.http_proxy, settings.https_proxy) if (password := url_password(url))]
    found.append(settings.ssh_pkey.strip())
    if settings.rest is not None:  # the service identity: its static token, or the client's secret
        found += [settings.rest.sa_token, settings.rest.client_secret]
    return [value for value in found if value]


def register_secrets(settings: Settings, redactor: Redactor = REDACTOR) -> None:
    for value in secrets_of(settings):
        redactor.add(value)


class RedactFilter(logging.Filter):
    """Rewrites each record's message, arguments, traceback and job fields through the redactor."""

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line (nor leak its args raw)
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redactor(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        for key in ("job", "jobid"):
            value = getattr(record, key, None)
            if isinstance(value, str):
                setattr(record, key, self.redactor(value))
        return True


# ------------------------------------------------------------------ job context
def job_extra(name: str, jobid: str | None = "") -> dict[str, str]:
    """``log.info("...", extra=job_extra(job.name, job.jobid))``."""
    return {"job": name, "jobid": jobid or ""}


class JobLogger(logging.LoggerAdapter):
    """A logger for one job: every line carries its name and Slurm id."""

    def __init__(self, logger: logging.Logger, name: str, jobid: str | None = "") -> None:
        super().__init__(logger, job_extra(name, jobid))

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def _job_fields(record: logging.LogRecord) -> Iterable[tuple[str, str]]:
    for key in ("job", "jobid"):
        value = getattr(record, key, None)
        if value:
            yield key, str(value)


class TextFormatter(logging.Formatter):
    """The seed's layout, with `` [job=NAME id=ID]`` after the message when the line is about a job."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        fields = dict(_job_fields(record))
        parts = [f"job={fields['job']}"] if "job" in fields else []
        parts += [f"id={fields['jobid']}"] if "jobid" in fields else []
        suffix = f" [{' '.join(parts)}]" if parts else ""
        return super().formatMessage(record) + suffix


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, job, jobid, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_job_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: int, fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Replace the root handler: ``fmt`` is "text" or "json"; returns the handler (tests read it)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    return handler
