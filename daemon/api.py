"""The upstream ("legacy") HTTP API, exactly as ``upstream-api.md`` describes it.

Handlers are thin: parse ``args``, call the reactor, shape the answer. Errors
map in one place: bad input 400, bad credentials 401, unknown route 404, a job in
the wrong state 409, cluster unreachable 503; anything unexpected is logged with
its traceback and answered 500 with a JSON body that carries no detail.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import parse_qs

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from adapters.errors import ClusterUnavailable, CommandFailed, InvalidRequest
from daemon.service import TAIL_DEFAULT, Conflict, Downstream, NotFound, job_identity

log = logging.getLogger(__name__)

PROBES = frozenset({"/live", "/ready"})
MAX_BODY = 16 * 1024 * 1024
MAX_PATH = 4096  # PATH_MAX: a longer pvcls path cannot name a file, and a huge command drops the SSH link
MAX_TAIL_LINES = 100_000
_PATH_RE = re.compile(r"^/[^\0\n\r]*\Z")

try:
    VERSION = version("slurm-downstream")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0+unknown"


def _json(value: object, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    response = _json({"error": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="slurm-downstream"'
    return response


def credentials_ok(header: str | None, server_key: str) -> bool:
    """Constant-time check of HTTP Basic credentials against ``user:password``."""
    supplied = b""
    if header and header[:6].lower() == "basic ":
        try:
            supplied = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            supplied = b""
    return hmac.compare_digest(supplied, server_key.encode())


MAX_FORM_FIELDS = 1000  # as Werkzeug's max_form_parts


async def read_args() -> dict:
    """The ``args`` form field (JSON object); a JSON body is accepted too.

    Upstream posts a URL-encoded form (``requests.post(url, data={"args": ...})``): that is decoded
    here, on the request's own task, as Werkzeug would (UTF-8, ``+`` as space, the first ``args``).
    Quart-Trio parses forms in a worker thread, and that hop on every call is what a busy host
    makes wait (README: *Interactive load*); other encodings (multipart) still go through it.
    """
    if request.mimetype == "application/x-www-form-urlencoded":
        body = (await request.get_data(as_text=False)).decode("utf-8", "replace")
        try:
            fields = parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError:
            raise InvalidRequest(f"the form has more than {MAX_FORM_FIELDS} fields; upstream sends one, 'args'") from None
        raw = fields["args"][0] if "args" in fields else None
    else:
        raw = (await request.form).get("args")
    if raw is None:
        body = await request.get_data(as_text=False)
        if not body:
            return {}
        raw = body
    try:
        args = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("'args' is not valid JSON (or nested too deeply)") from None
    if not isinstance(args, dict):
        raise InvalidRequest("'args' must be a JSON object")
    return args


def _qs(args: Mapping[str, object]) -> dict[str, list]:
    qs = args.get("qs", {})
    if not isinstance(qs, dict):
        raise InvalidRequest("'qs' must be an object of lists")
    return {k: v if isinstance(v, list) else [v] for k, v in qs.items()}


def _first(qs: Mapping[str, list], key: str, default: str) -> str:
    """The first value of ``qs[key]``, as ``parse_qs`` gives it: a string (numbers and booleans are tolerated)."""
    value = (qs.get(key) or [default])[0]
    if value is None:
        return default
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    raise InvalidRequest(f"'qs.{key}' must be a list of strings")


def _tail_lines(raw: str) -> int:
    """``qs["lines"]``: a positive ASCII integer up to MAX_TAIL_LINES; anything else is the default."""
    if len(raw) > len(str(MAX_TAIL_LINES)) or not (raw.isascii() and raw.isdigit()):
        return TAIL_DEFAULT  # checked before int(): int() of a 5000-digit string raises
    return int(raw) if 0 < int(raw) <= MAX_TAIL_LINES else TAIL_DEFAULT


def create_app(downstream: Downstream, server_key: str | None) -> QuartTrio:
    app = QuartTrio("slurm_downstream")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["PROPAGATE_EXCEPTIONS"] = False
    # No 308 to a merged path: /request//1/2/tail is a request with an empty name (400),
    # not a redirect to the job path /request/1/2/tail with an HTML body.
    app.url_map.merge_slashes = False

    @app.before_request
    async def authenticate() -> Response | None:
        if request.path in PROBES or server_key is None:
            return None
        if not credentials_ok(request.headers.get("Authorization"), server_key):
            return _error(401, "missing or wrong credentials (HTTP Basic, JARVICE_SCHED_SERVER_KEY)")
        return None

    @app.after_request
    async def close_after_errors(response: Response) -> Response:
        # An error may be answered before the request body was read (401, 405, 413):
        # hypercorn would then keep the connection open with the rest of the body
        # unread, and the client's next request on it would hang. Closing is cheap.
        if response.status_code >= 400:
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(InvalidRequest)
    async def bad_request(exc: InvalidRequest) -> Response:
        return _error(400, str(exc))

    @app.errorhandler(ClusterUnavailable)
    async def unavailable(exc: ClusterUnavailable) -> Response:
        return _error(503, f"cluster unavailable: {exc}")

    @app.errorhandler(Conflict)
    async def conflict(exc: Conflict) -> Response:
        return _error(409, str(exc))

    @app.errorhandler(NotFound)
    async def not_found(exc: NotFound) -> Response:
        return _error(404, str(exc))

    @app.errorhandler(CommandFailed)
    async def command_failed(exc: CommandFailed) -> Response:
        return _error(502, f"the cluster answered with an error: {exc.stderr[:500] or exc}")

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return _error(413, f"the request body is larger than {MAX_BODY} bytes")
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def internal(exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, "internal error; see the daemon's log")

    # ---------------------------------------------------------------- probes
    @app.get("/live")
    async def live() -> Response:
        return _json({"status": "OK"})

    @app.get("/ready")
    async def ready() -> Response:
        if not downstream.ready:  # no error text: /ready is not authenticated (admins read it on /admin)
            return _json({"status": "NOT READY", "version": VERSION}, 503)
        if not downstream.slurm.available:  # slurmrestd without SSH: serving, with less (configuration, not an error)
            return _json({"status": "OK", "version": VERSION,
                          "limited": "no SSH to the login node: job output is not available, interactive jobs are refused"})
        return _json({"status": "OK", "version": VERSION})

    @app.get("/gc")
    async def gc() -> Response:
        if await downstream.gc():
            return _json({"status": "OK"})
        return _json({"status": "BAD"}, 500)

    # ---------------------------------------------------------------- constants
    @app.get("/nodes")
    async def nodes() -> Response:
        return _json(True)

    @app.post("/online")
    async def online() -> Response:
        await read_args()
        return _json(True)

    # ---------------------------------------------------------------- jobs
    @app.post("/submit")
    async def submit() -> Response:
        return _json(await downstream.submit(await read_args()))

    # The book hands out the same list object until something changes: encode each once
    # (at 10,000 jobs /queued is 231 KB of JSON, most of the request's cost).
    encoded: dict[str, tuple[list, str]] = {}

    def listing(kind: str, jobs: list) -> Response:
        cached = encoded.get(kind)
        if cached is None or cached[0] is not jobs:
            cached = encoded[kind] = (jobs, json.dumps(jobs))
        return Response(cached[1], mimetype="application/json")

    @app.get("/queued")
    async def queued() -> Response:
        return listing("queued", downstream.queued())

    @app.get("/running")
    async def running() -> Response:
        return listing("running", downstream.running())

    @app.post("/runstatus")
    async def runstatus() -> Response:
        return _json(downstream.runstatus(await read_args()))

    @app.post("/exitstatus")
    async def exitstatus() -> Response:
        return _json(await downstream.exitstatus(await read_args()))

    @app.post("/terminate")
    async def terminate() -> Response:
        return _json(await downstream.terminate(await read_args()))

    @app.post("/release")
    async def release() -> Response:
        return _json(await downstream.release(await read_args()))

    @app.post("/events")
    async def events() -> Response:
        return _json(await downstream.events(await read_args()))

    @app.post("/request/<path:path>")
    async def job_request(path: str) -> Response:
        args = await read_args()
        qs = _qs(args)
        if path == "pvcls":
            target = _first(qs, "path", "/")
            if len(target) > MAX_PATH or not _PATH_RE.match(target) or "/../" in f"{target}/":
                raise InvalidRequest(f"'path' must be an absolute path without '..', at most {MAX_PATH} characters")
            details = _first(qs, "details", "false").lower() == "true"
            return Response(await downstream.pvcls(target, details), mimetype="text/plain")
        parts = path.split("/")
        if len(parts) != 4:
            raise InvalidRequest("request path must be <name>/<number>/<jobid>/<method> or pvcls")
        name, number, jobid, method = parts
        name, _, jobid = job_identity({"name": name, "number": number, "jobid": jobid})  # as every job endpoint
        ids = {"name": name, "number": number, "jobid": jobid}
        if method in {"shutdown", "abort"}:
            await downstream.terminate(ids)
            return Response("", status=200)
        if method == "info":
            return _json({"about": "", "help": "", "url": downstream.url_of(name, jobid), "actions": {}})
        if method == "tail":
            lines = _tail_lines(_first(qs, "lines", str(TAIL_DEFAULT)))
            return Response(await downstream.tail(name, jobid, lines), mimetype="text/plain")
        if method == "screenshot":
            raise NotFound("screenshots are not supported")
        return Response("", status=200)  # ping, connect, and methods we do not implement

    return app
