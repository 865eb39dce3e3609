#!/usr/bin/python3
"""A local stand-in of Keycloak's OpenID Connect token endpoint, for the test clusters and the token tests.

Why a stand-in: JARVICE's slurmrestd mode gets its service identity from Keycloak (OAuth2 client
credentials), and Slurm verifies the tokens against Keycloak's public keys (``AuthAltParameters=
jwks=<file>``). No Keycloak can run on these machines (a JVM server with its own database and
distribution download), so this program answers the few requests JARVICE's scheduler and
slurmrestd's users make, in Keycloak's shapes, and signs real RS256 JWTs that slurmctld itself
verifies. It is a test tool: no TLS, no users, no persistence beyond its key.

It runs as a script on purpose (``tests/cluster/up`` starts it with Debian's python3,
python3-jwt and python3-cryptography, before any virtualenv exists; the unit tests start it with
the venv's interpreter), so it imports nothing from the project and works with PyJWT 2.6 to 2.x.

Commands::

    oidc.py init  --key KEY.pem --jwks JWKS.json     # the signing key (created once, 0600) and its public JWKS
    oidc.py mint  --config CONFIG.json [--username U] [--lifetime S]   # print one token (no server needed)
    oidc.py serve --config CONFIG.json               # the HTTP server; prints "listening on http://HOST:PORT"

CONFIG.json (0600; written by tests/cluster/up or a test)::

    {"bind": "10.214.N.1", "port": 8180,       # port 0: the kernel picks one (the printed line tells)
     "realm": "jarvice", "client_id": "nimbix-slurm-sched-client", "client_secret": "...",
     "username": "jarvice",                    # preferred_username of the client's tokens (the service user)
     "claim": "preferred_username", "lifetime": 300, "key": "/path/key.pem",
     "pidfile": "/path/oidc.pid", "log": "/path/oidc.log"}   # both optional (log: else stderr)

Keycloak's endpoints (``<realm>`` as configured; another realm answers 404 ``{"error": "Realm does not exist"}``):

``POST /realms/<realm>/protocol/openid-connect/token``
    form ``grant_type=client_credentials`` with ``client_id``/``client_secret`` as form fields or HTTP
    Basic. 200 ``{"access_token", "expires_in", "refresh_expires_in": 0, "token_type": "Bearer",
    "not-before-policy": 0, "scope"}``; the token's claims: ``exp``, ``iat``, ``jti``, ``iss``
    (``http://HOST:PORT/realms/<realm>``), ``aud``, ``sub``, ``typ``, ``azp`` (the client id) and the
    username claim (``preferred_username``) = the service user. Errors as Keycloak words them:
    unknown client 401 ``{"error": "invalid_client", ...}``; wrong secret 401
    ``{"error": "unauthorized_client", "error_description": "Invalid client or Invalid client
    credentials"}``; missing or other grant type 400 ``invalid_request``/``unsupported_grant_type``.
``GET /realms/<realm>/protocol/openid-connect/certs``
    the JWKS (the public key slurmctld is given as ``jwks=``).
``GET /realms/<realm>/.well-known/openid-configuration``
    issuer, token_endpoint, jwks_uri.

Test-only admin endpoints (no authentication: the server listens only on the host side of a test
cluster's private link, or on 127.0.0.1 in unit tests). Bodies and answers are JSON:

``POST /admin/token`` ``{"username": "alice", "lifetime": 60, "forged": false, "claim": true, "claims": {}}``
    -> 200 ``{"access_token", "expires_in", "token_type": "Bearer"}``: a token for any user (default:
    the service user) living ``lifetime`` seconds (default: the client tokens' lifetime; negative: already
    expired); ``forged``: signed by another key under the same ``kid`` (Slurm must refuse it);
    ``claim: false``: without the username claim (only ``sub``); ``claims``: extra or overriding claims.
``POST /admin/config`` ``{"lifetime": 5, "fail": true, "delay": 0.5}`` (any subset)
    -> 200 the settings now in force: ``lifetime`` of client-credential tokens; ``fail``: the token
    endpoint answers 503 (``true``) or works again (``false``); ``delay``: seconds it waits before
    answering (to hold concurrent callers on one fetch).
``POST /admin/reset`` -> 200: lifetime, fail and delay back to the configured values, counters zero.
``GET /admin/stats`` -> 200 ``{"token_requests", "issued", "refused", "failed", "lifetime", "fail", "delay"}``
    (``token_requests`` counts every POST to the token endpoint; ``issued`` the tokens it gave out).

Nothing here logs a token or a secret: the log (stderr) names the client, the user and the status.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

INVALID_CLIENT = "Invalid client or Invalid client credentials"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def kid_of(key: rsa.RSAPrivateKey) -> str:
    """A stable key id: the first 16 hex digits of the SHA-256 of the public modulus."""
    n = key.public_key().public_numbers().n
    return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).hexdigest()[:16]


def jwks_of(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid_of(key), alg="RS256", use="sig")
    return {"keys": [jwk]}


def init(key_path: Path, jwks_path: Path) -> None:
    """Create the signing key once (0600; kept when it exists) and write its public JWKS (0644)."""
    if not key_path.exists():
        pem = new_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    key_path.chmod(0o600)
    jwks_path.write_text(json.dumps(jwks_of(load_key(key_path)), indent=1) + "\n")
    jwks_path.chmod(0o644)


class Issuer:
    """The realm's state: the key, the client, the knobs tests turn, the counters."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.key = load_key(Path(config["key"]))
        self.kid = kid_of(self.key)
        self.other_key = new_key()   # for forged tokens: same kid, another key
        self.realm: str = config.get("realm", "jarvice")
        self.client_id: str = config.get("client_id", "nimbix-slurm-sched-client")
        self.secret: str = config["client_secret"]
        self.username: str = config.get("username", "jarvice")
        self.claim: str = config.get("claim", "preferred_username")
        self.issuer = ""   # set once the port is known
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.lifetime = int(self.config.get("lifetime", 300))
            self.fail = False
            self.delay = 0.0
            self.stats = {"token_requests": 0, "issued": 0, "refused": 0, "failed": 0}

    def settings(self) -> dict[str, Any]:
        return {"lifetime": self.lifetime, "fail": self.fail, "delay": self.delay}

    def mint(self, username: str | None = None, lifetime: int | None = None, *, forged: bool = False,
             claim: bool = True, extra: dict[str, Any] | None = None, azp: str | None = None) -> tuple[str, int]:
        now = int(time.time())
        life = self.lifetime if lifetime is None else int(lifetime)
        user = self.username if username is None else username
        claims: dict[str, Any] = {
            "exp": now + life, "iat": now, "jti": str(uuid.uuid4()), "iss": self.issuer, "aud": "account",
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.issuer}/users/{user}")), "typ": "Bearer",
            "azp": azp or self.client_id, "scope": "profile email",
        }
        if claim:
            claims[self.claim] = user
        claims.update(extra or {})
        token = jwt.encode(claims, self.other_key if forged else self.key, algorithm="RS256",
                           headers={"kid": self.kid, "typ": "JWT"})
        return (token if isinstance(token, str) else token.decode()), life


def client_credentials(headers: Any, form: dict[str, list[str]]) -> tuple[str | None, str | None]:
    """client_id and client_secret from HTTP Basic (preferred, as Keycloak) or the form."""
    auth = headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            user, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
            return unquote(user), unquote(secret)
        except (binascii.Error, UnicodeDecodeError):
            return None, None
    return (form.get("client_id") or [None])[0], (form.get("client_secret") or [None])[0]


class Handler(BaseHTTPRequestHandler):
    server_version = "oidc-standin/1"
    issuer: Issuer   # set on the subclass made by serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass   # request lines go through note(), which never carries a token

    def note(self, text: str) -> None:
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.command} {self.path.split('?')[0]} {text}\n")
        sys.stderr.flush()

    def answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def json_body(self) -> dict[str, Any]:
        raw = self.body()
        return json.loads(raw) if raw.strip() else {}

    def realm_path(self) -> str | None:
        """The path under /realms/<realm>/, or None (after answering 404) for another realm."""
        parts = self.path.split("?")[0].split("/", 3)   # "", "realms", realm, rest
        if len(parts) < 4 or parts[2] != self.issuer.realm:
            self.answer(404, {"error": "Realm does not exist"})
            return None
        return parts[3]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        iss = self.issuer
        path = self.path.split("?")[0]
        if path == "/admin/stats":
            with iss.lock:
                self.answer(200, {**iss.stats, **iss.settings()})
            return
        if not path.startswith("/realms/"):
            self.answer(404, {"error": "Unable to find matching target resource method"})
            return
        rest = self.realm_path()
        if rest is None:
            return
        if rest == "protocol/openid-connect/certs":
            self.answer(200, jwks_of(iss.key))
        elif rest == ".well-known/openid-configuration":
            base = f"{iss.issuer}/protocol/openid-connect"
            self.answer(200, {"issuer": iss.issuer, "token_endpoint": f"{base}/token", "jwks_uri": f"{base}/certs",
                              "grant_types_supported": ["client_credentials"],
                              "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                              "id_token_signing_alg_values_supported": ["RS256"]})
        else:
            self.answer(404, {"error": "Unable to find matching target resource method"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path.startswith("/admin/"):
            self.admin(path)
        elif path.startswith("/realms/"):
            rest = self.realm_path()
            if rest == "protocol/openid-connect/token":
                self.token()
            elif rest is not None:
                self.answer(404, {"error": "Unable to find matching target resource method"})
        else:
            self.answer(404, {"error": "Unable to find matching target resource method"})

    def token(self) -> None:
        iss = self.issuer
        with iss.lock:
            iss.stats["token_requests"] += 1
            fail, delay = iss.fail, iss.delay
        form = parse_qs(self.body().decode(errors="replace"))
        if delay:
            time.sleep(delay)
        if fail:
            with iss.lock:
                iss.stats["failed"] += 1
            self.note("503 (failing on request of a test)")
            self.answer(503, "<html><body><h1>503 Service Unavailable</h1></body></html>", "text/html")
            return
        grant = (form.get("grant_type") or [None])[0]
        if grant is None:
            self.answer(400, {"error": "invalid_request", "error_description": "Missing form parameter: grant_type"})
            return
        if grant != "client_credentials":
            self.answer(400, {"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"})
            return
        client, secret = client_credentials(self.headers, form)
        if client != iss.client_id:
            self.refuse(401, "invalid_client", client)
            return
        if secret is None or not hmac.compare_digest(secret.encode(), iss.secret.encode()):
            self.refuse(401, "unauthorized_client", client)
            return
        token, life = iss.mint()
        with iss.lock:
            iss.stats["issued"] += 1
        self.note(f"200 client {client}: token for {iss.username}, {life} s")
        self.answer(200, {"access_token": token, "expires_in": life, "refresh_expires_in": 0, "token_type": "Bearer",
                          "not-before-policy": 0, "scope": "profile email"})

    def refuse(self, status: int, error: str, client: str | None) -> None:
        with self.issuer.lock:
            self.issuer.stats["refused"] += 1
        self.note(f"{status} {error} (client {client!r})")
        self.answer(status, {"error": error, "error_description": INVALID_CLIENT})

    def admin(self, path: str) -> None:
        iss = self.issuer
        try:
            req = self.json_body()
        except ValueError:
            self.answer(400, {"error": "body must be JSON"})
            return
        if path == "/admin/token":
            token, life = iss.mint(req.get("username"), req.get("lifetime"), forged=bool(req.get("forged")),
                                   claim=req.get("claim", True) is not False, extra=req.get("claims"))
            self.note(f"200 admin token for {req.get('username') or iss.username}, {life} s"
                      f"{' forged' if req.get('forged') else ''}{' without claim' if req.get('claim') is False else ''}")
            self.answer(200, {"access_token": token, "expires_in": life, "token_type": "Bearer"})
        elif path == "/admin/config":
            with iss.lock:
                if "lifetime" in req:
                    iss.lifetime = int(req["lifetime"])
                if "fail" in req:
                    iss.fail = bool(req["fail"])
                if "delay" in req:
                    iss.delay = float(req["delay"])
                now = iss.settings()
            self.note(f"200 admin config {now}")
            self.answer(200, now)
        elif path == "/admin/reset":
            iss.reset()
            self.answer(200, iss.settings())
        else:
            self.answer(404, {"error": "no such admin endpoint"})


def serve(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    if config.get("log"):   # a daemon started by tests/cluster/up: its log file in the state dir
        sys.stderr = open(config["log"], "a", buffering=1)  # noqa: SIM115 - for the life of the process
    issuer = Issuer(config)
    handler = type("BoundHandler", (Handler,), {"issuer": issuer})
    server = ThreadingHTTPServer((config.get("bind", "127.0.0.1"), int(config.get("port", 0))), handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    issuer.issuer = f"http://{host}:{port}/realms/{issuer.realm}"
    if config.get("pidfile"):
        Path(config["pidfile"]).write_text(f"{os.getpid()}\n")
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create the signing key (once) and write its JWKS")
    p_init.add_argument("--key", type=Path, required=True)
    p_init.add_argument("--jwks", type=Path, required=True)
    p_mint = sub.add_parser("mint", help="print a token of the configured realm")
    p_mint.add_argument("--config", type=Path, required=True)
    p_mint.add_argument("--username")
    p_mint.add_argument("--lifetime", type=int)
    p_mint.add_argument("--issuer", help="the iss claim (default: from bind and port of the config)")
    p_serve = sub.add_parser("serve", help="run the token endpoint")
    p_serve.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "init":
        init(args.key, args.jwks)
    elif args.command == "mint":
        config = json.loads(args.config.read_text())
        issuer = Issuer(config)
        issuer.issuer = args.issuer or f"http://{config.get('bind', '127.0.0.1')}:{config.get('port', 0)}/realms/{issuer.realm}"
        print(issuer.mint(args.username, args.lifetime)[0])
    else:
        serve(args.config)


if __name__ == "__main__":
    main()
