"""The daemon's service identity towards slurmrestd: a bearer token, static or fetched by OAuth2 client credentials.

JARVICE's chart gives the REST client one of two: ``JARVICE_SLURM_SA_TOKEN`` (a token made by
hand, e.g. ``scontrol token`` or the identity provider's), or a Keycloak client
(``JARVICE_KEYCLOAK_TOKEN_URL``, ``_CLIENT_ID``, ``_CLIENT_SECRET``) whose short-lived tokens
must be fetched and renewed. Both are a :class:`TokenSource`; the REST client asks it for a
token before each request and tells it when slurmrestd refused one.

Why no OAuth2 library for the fetch: Authlib's ``AsyncOAuth2Client`` does work under trio (its
lock is anyio's), but it *is* an ``httpx.AsyncClient`` (it would own a second connection pool
beside the REST client's), renews only at a fixed leeway (60 s: every request would refetch a
token living less than that), has no way to drop one refused token, and raises its own errors
that would be translated anyway. A client-credentials grant is one form POST; what matters is
the policy around it, which lives here: renew ahead of expiry, share one fetch among concurrent
callers, drop a refused token, and tell "refused" (configuration) from "unavailable" (transient).
PyJWT reads the token's ``exp`` and user claim; it does not verify the signature, on purpose:
Slurm verifies every token itself, the daemon only needs to know when to renew and who it is.

Secrets never leave this module: no token or client secret is logged, put into an exception
message or shown by ``description``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
import jwt
import trio

from adapters.errors import ClusterUnavailable, DownstreamError

log = logging.getLogger(__name__)

# Renew when less than this share of the token's lifetime remains, but never earlier than
# MAX_AHEAD before its expiry (a day-long token is not renewed hours ahead)...
AHEAD_FRACTION = 0.2
MAX_AHEAD = 30.0
# ...and, when a renewal ahead of time fails while the current token still lives, wait this
# long before asking the endpoint again (the current token keeps being used meanwhile).
RETRY_AFTER = 1.0
# a token that lives less than this is treated as expired (the request still has to reach Slurm)
MIN_LEFT = 1.0


class TokenRefused(DownstreamError):
    """The token endpoint refused the client (wrong id or secret, unknown realm): a configuration error."""


class TokenUnavailable(ClusterUnavailable):
    """The token endpoint could not be asked (unreachable, timeout, 5xx): transient, like a cluster that is down."""


class TokenSource(Protocol):
    """What the REST client needs of its service identity."""

    description: str   # names the source for logs and the init report; never a secret
    username: str | None   # the user claim of the current token, when known

    async def token(self) -> str:
        """A token to send now: fetched when missing, renewed ahead of its expiry."""
        ...

    def invalidate(self, token: str) -> None:
        """slurmrestd refused ``token``: the next :meth:`token` must not return it again."""
        ...


def claims_of(token: str) -> dict[str, Any]:
    """The token's claims, unverified (Slurm verifies); {} for a token that is not a JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _username(claims: dict[str, Any], claim: str) -> str | None:
    value = claims.get(claim)
    return value if isinstance(value, str) and value else None


class StaticToken:
    """``JARVICE_SLURM_SA_TOKEN``: one token for the life of the daemon; a refused one stays refused."""

    def __init__(self, token: str, claim: str = "preferred_username", name: str = "JARVICE_SLURM_SA_TOKEN") -> None:
        self._token = token
        self.description = f"{name} (static)"
        claims = claims_of(token)
        self.username: str | None = _username(claims, claim)
        exp = claims.get("exp")
        # wall-clock expiry (seconds since the epoch), for preflight's warning; None: unknown or never
        self.expires_at: float | None = float(exp) if isinstance(exp, int | float) else None

    async def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> None:
        """Nothing to renew: the daemon reports the refusal (503) and a person must replace the token."""


class ClientCredentials:
    """OAuth2 client credentials (Keycloak's token endpoint): fetched on demand, renewed ahead of expiry.

    ``clock`` is monotonic seconds (expiry is kept as "fetched at + expires_in", so the two
    machines' wall clocks need not agree).
    """

    def __init__(self, http: httpx.AsyncClient, url: str, client_id: str, secret: str,
                 claim: str = "preferred_username", *, clock: Callable[[], float] = time.monotonic,
                 timeout: float = 10.0) -> None:
        self._http = http
        self._url = url
        self._client_id = client_id
        self._secret = secret
        self._claim = claim
        self._clock = clock
        self._timeout = timeout
        self.description = f"client credentials of {client_id} at {url}"
        self.username: str | None = None
        self._token: str | None = None
        self._fetched_at = 0.0
        self._expires_at = 0.0
        self._retry_at = 0.0
        self._lock = trio.Lock()
        self._done = 0   # fetches finished; a waiter that sees it move knows another caller fetched meanwhile
        self._last_error: DownstreamError | None = None
        self.fetch_count = 0   # for metrics and tests: requests sent to the token endpoint

    def _left(self) -> float:
        return self._expires_at - self._clock()

    def _fresh(self) -> bool:
        """The current token needs no renewal yet."""
        if self._token is None:
            return False
        ahead = min(AHEAD_FRACTION * (self._expires_at - self._fetched_at), MAX_AHEAD)
        return self._left() > max(ahead, MIN_LEFT)

    def _usable(self) -> bool:
        """The current token may still be sent (renewal is due but failed, or waits for its retry time)."""
        return self._token is not None and self._left() > MIN_LEFT

    async def token(self) -> str:
        if self._fresh():
            assert self._token is not None
            return self._token
        seen = self._done
        async with self._lock:
            if self._fresh():   # another caller fetched while we waited: share its token
                assert self._token is not None
                return self._token
            if self._usable() and self._clock() < self._retry_at:
                assert self._token is not None
                return self._token
            if self._done != seen and self._last_error is not None and not self._usable():
                # the fetch we waited for failed just now: share its error rather than ask again at once
                raise type(self._last_error)(*self._last_error.args)
            self._last_error = None   # (a cancelled fetch leaves none for the waiters: they fetch themselves)
            try:
                await self._fetch()
            except DownstreamError as exc:
                self._last_error = exc
                if self._usable():
                    # renewing ahead of time failed; the current token still lives: use it, retry soon
                    self._retry_at = self._clock() + RETRY_AFTER
                    log.warning("renewing the slurmrestd token failed (%s); the current one is valid %.0f s more",
                                exc, self._left())
                    assert self._token is not None
                    return self._token
                raise
            finally:
                self._done += 1
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        if token == self._token:
            log.info("slurmrestd refused the token of %s: the next request fetches a new one", self.description)
            self._token = None
            self._expires_at = self._fetched_at = self._retry_at = 0.0

    async def _fetch(self) -> None:
        """One client-credentials request; sets the token or raises TokenRefused/TokenUnavailable."""
        who = f"token endpoint {self._url} (client {self._client_id})"
        sent_at = self._clock()
        self.fetch_count += 1
        try:
            response = await self._http.post(
                self._url, timeout=self._timeout,
                data={"grant_type": "client_credentials", "client_id": self._client_id, "client_secret": self._secret},
                headers={"Accept": "application/json"})
        except httpx.TimeoutException as exc:
            raise TokenUnavailable(f"{who}: no answer within {self._timeout:g} s ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise TokenUnavailable(f"{who}: cannot reach it: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if status >= 500 or status in (408, 429):
            raise TokenUnavailable(f"{who}: HTTP {status}{_oauth_error(body)}")
        if status >= 400:
            raise TokenRefused(f"{who} refused the client: HTTP {status}{_oauth_error(body)}")
        token = body.get("access_token")
        if status != 200 or not isinstance(token, str) or not token:
            raise TokenUnavailable(f"{who}: HTTP {status} without an access_token")
        claims = claims_of(token)
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            exp, iat = claims.get("exp"), claims.get("iat")
            if isinstance(exp, int | float):
                lifetime = exp - (iat if isinstance(iat, int | float) else time.time())
            else:
                lifetime = 60.0   # neither expires_in nor exp: renew every minute
        exp = claims.get("exp")
        if isinstance(exp, int | float) and 0 < exp - time.time() < lifetime:
            # exp is in whole seconds (Keycloak's too): the token may end up to 1 s before "now + expires_in".
            # (A negative value means skewed clocks: expires_in is trusted then.)
            lifetime = exp - time.time()
        self._token = token
        self._fetched_at = sent_at
        self._expires_at = sent_at + float(lifetime)
        self._retry_at = 0.0
        self.username = _username(claims, self._claim)
        log.debug("slurmrestd token from %s: valid %.0f s, %s=%s", who, lifetime, self._claim, self.username)


def _oauth_error(body: dict[str, Any]) -> str:
    """``: <error>: <error_description>`` of an OAuth2 error answer (RFC 6749 5.2), or nothing."""
    parts = [str(body[k])[:200] for k in ("error", "error_description") if body.get(k)]
    return f": {': '.join(parts)}" if parts else ""
