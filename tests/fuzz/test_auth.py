"""Authentication of the upstream API, on the real daemon: every endpoint but the probes wants the server key.

The endpoints are enumerated from the url_map of the very app the daemon serves
(recorded when daemon.server builds it, tests/fuzz/conftest.py), so an endpoint added later, such as an
admin blueprint, is covered without touching this file.
"""

from __future__ import annotations

import base64
import hmac
import json
from types import SimpleNamespace

import httpx
import pytest
from quart_trio import QuartTrio

from daemon import api
from tests.fuzz.conftest import LiveDaemon
from tests.fuzz.strategies import BASE_FIELDS, render_script, submit_args
from tests.integration.conftest import slurm, unique_name

pytestmark = pytest.mark.cluster

# Values for the variable parts of routes: a job-scoped request, or any word.
SAMPLE_ARGS = {"path": "20261123-x-alice_auth/1/900000001/ping"}


def endpoints(app: QuartTrio) -> list[tuple[str, str]]:
    """(method, URL) of every route of the app, variable parts filled in."""
    adapter = app.url_map.bind("localhost")
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        url = adapter.build(rule.endpoint, {arg: SAMPLE_ARGS.get(arg, "x") for arg in rule.arguments})
        found += [(method, url) for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})]
    return found


def protected(app: QuartTrio) -> list[tuple[str, str]]:
    return [(m, u) for m, u in endpoints(app) if u not in api.PROBES]


def basic(credentials: str | bytes) -> str:
    raw = credentials.encode() if isinstance(credentials, str) else credentials
    return "Basic " + base64.b64encode(raw).decode()


def bad_headers(server_key: str) -> dict[str, object]:
    """Authorization headers that must all be refused (None: no header at all)."""
    user, password = server_key.split(":", 1)
    return {
        "missing": None,
        "wrong user": basic(f"intruder:{password}"),
        "wrong password": basic(f"{user}:{password}x"),
        "password prefix": basic(f"{user}:{password[:-1]}"),
        "empty password": basic(f"{user}:"),
        "user only": basic(user),
        "password only": basic(password),
        "case changed": basic(server_key.upper()),
        "trailing NUL": basic(server_key + "\0"),
        "extra bytes after the key": basic(server_key.encode() + b"\n"),
        "scheme only": "Basic",
        "padding only": "Basic ==",
        "not base64": "Basic !!!not-base64!!!",
        "unpadded base64": basic(server_key).rstrip("="),
        "key in clear": f"Basic {server_key}",
        "bearer": f"Bearer {password}",
        "other scheme, right key": "Token " + basic(server_key).split(" ", 1)[1],
        "non-ASCII bytes": b"Basic \xff\xfe\xfd",
        "huge": "Basic " + "QUFB" * 2000,
    }


def test_the_route_list_is_complete(live_daemon: LiveDaemon) -> None:
    """The enumeration sees the contract's endpoints (else the tests below would prove little)."""
    app = live_daemon.app
    paths = {url for _, url in endpoints(app)}
    for path in ("/live", "/ready", "/gc", "/nodes", "/queued", "/running", "/submit", "/online", "/runstatus",
                 "/exitstatus", "/terminate", "/release", "/events"):
        assert path in paths, path
    assert any(url.startswith("/request/") for url in paths)
    assert api.PROBES == {"/live", "/ready"}


@pytest.mark.parametrize("variant", sorted(bad_headers("u:p")))
def test_every_protected_endpoint_refuses_bad_credentials(live_daemon: LiveDaemon, variant: str) -> None:
    daemon, app = live_daemon, live_daemon.app
    header = bad_headers(daemon.settings.server_key)[variant]
    headers = {} if header is None else {"Authorization": header}
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        for method, url in protected(app):
            response = client.request(method, url, headers=headers, data={"args": "{}"} if method == "POST" else None)
            where = f"{variant}: {method} {url} -> {response.status_code} {response.text[:200]!r}"
            assert response.status_code == 401, where
            assert response.headers["content-type"].startswith("application/json"), where
            assert "credentials" in response.json()["error"], where
            assert response.headers["WWW-Authenticate"].startswith("Basic"), where


def test_right_credentials_pass_on_every_endpoint(live_daemon: LiveDaemon) -> None:
    """The control: with the server key no endpoint answers 401 (some answer 400 to empty args)."""
    daemon, app = live_daemon, live_daemon.app
    for method, url in endpoints(app):
        response = daemon.client.request(method, url, data={"args": "{}"} if method == "POST" else None)
        assert response.status_code != 401, f"{method} {url}: {response.text[:200]}"
        assert response.status_code < 500, f"{method} {url}: {response.text[:200]}"


@pytest.mark.parametrize("variant", ["missing", "wrong password", "not base64"])
def test_probes_answer_without_credentials(live_daemon: LiveDaemon, variant: str) -> None:
    daemon = live_daemon
    header = bad_headers(daemon.settings.server_key)[variant]
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        for path in sorted(api.PROBES):
            response = client.get(path, headers={} if header is None else {"Authorization": header})
            assert response.status_code == 200, f"{path}: {response.text}"
            assert response.json()["status"] == "OK"


def test_credentials_are_compared_whole_and_in_constant_time(live_daemon: LiveDaemon,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every protected request makes exactly one hmac.compare_digest of the whole decoded credential
    against the whole server key: no early exit on a missing header, no separate user check."""
    daemon = live_daemon
    key = daemon.settings.server_key.encode()
    calls: list[tuple[bytes, bytes]] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(api, "hmac", SimpleNamespace(compare_digest=compare_digest))
    user, password = daemon.settings.server_key.split(":", 1)
    cases = [  # (Authorization, the bytes compared, allowed)
        (None, b"", False),
        (basic(f"intruder:{password}"), f"intruder:{password}".encode(), False),
        (basic(f"{user}:wrong"), f"{user}:wrong".encode(), False),
        ("Basic !!!", b"", False),
        (basic(daemon.settings.server_key), key, True),
    ]
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        for header, supplied, allowed in cases:
            calls.clear()
            response = client.get("/nodes", headers={} if header is None else {"Authorization": header})
            assert response.status_code == (200 if allowed else 401), header
            assert calls == [(supplied, key)], header
        calls.clear()
        assert client.get("/live").status_code == 200
        assert calls == []  # probes do not look at credentials


def test_a_refused_upload_does_not_stall_the_connection(live_daemon: LiveDaemon) -> None:
    """A 401 (or 413) answered before the body was read must not leave the keep-alive connection
    holding the unread body: the client's next request on it would hang."""
    daemon = live_daemon
    user, password = daemon.settings.server_key.split(":", 1)
    with httpx.Client(base_url=daemon.url, timeout=5) as client:
        for size in (1 << 20, api.MAX_BODY + 1):
            refused = client.post("/submit", content=b"a" * size, auth=("intruder", "x"))
            assert refused.status_code == 401
            assert client.get("/nodes", auth=(user, password)).json() is True
        too_big = client.post("/submit", content=b"a" * (api.MAX_BODY + 1), auth=(user, password))
        assert too_big.status_code == 413 and str(api.MAX_BODY) in too_big.json()["error"]
        assert client.get("/nodes", auth=(user, password)).json() is True


def test_bad_credentials_never_reach_the_handlers(live_daemon: LiveDaemon) -> None:
    """An unauthenticated /submit with a valid job submits nothing."""
    daemon = live_daemon
    name = unique_name("auth")
    args = submit_args(name, render_script(dict(BASE_FIELDS)))
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        response = client.post("/submit", data={"args": json.dumps(args)}, auth=("intruder", "x"))
    assert response.status_code == 401
    names = slurm("squeue", "-h", "-t", "all", "-o", "%j")
    assert names.returncode == 0 and f"jarvice_{name}" not in names.stdout.splitlines()
