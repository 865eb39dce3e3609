"""The service token sources (adapters/tokens.py) against the OIDC stand-in of Keycloak, over a real socket.

The stand-in (tests/support/oidc.py, the same program the test clusters run) is started once as a
subprocess on 127.0.0.1; each test resets it. Time-dependent cases use an injected clock where the
point is the renewal policy, and real seconds where the point is that a renewed token really
arrives before the old one expires.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
import trio

from adapters.errors import ClusterUnavailable, DownstreamError
from adapters.tokens import ClientCredentials, StaticToken, TokenRefused, TokenUnavailable, claims_of
from tests.support import oidc

CLIENT = "nimbix-slurm-sched-client"
SECRET = "s3cret-0f-the-client"   # noqa: S105 - a test value


@dataclass
class StandIn:
    url: str

    @property
    def token_url(self) -> str:
        return f"{self.url}/realms/jarvice/protocol/openid-connect/token"

    def admin(self, what: str, **body: object) -> dict:
        response = httpx.post(f"{self.url}/admin/{what}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/admin/stats", timeout=10).json()


@pytest.fixture(scope="module")
def standin_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    tmp = tmp_path_factory.mktemp("oidc")
    oidc.init(tmp / "key.pem", tmp / "jwks.json")
    config = tmp / "config.json"
    config.write_text(json.dumps({"bind": "127.0.0.1", "port": 0, "realm": "jarvice", "client_id": CLIENT,
                                  "client_secret": SECRET, "username": "jarvice", "lifetime": 300,
                                  "key": str(tmp / "key.pem")}))
    proc = subprocess.Popen([sys.executable, oidc.__file__, "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("listening on "), f"the stand-in did not start: {line!r}"
        yield StandIn(line.split()[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def standin(standin_process: StandIn) -> StandIn:
    standin_process.admin("reset")
    return standin_process


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def source(http: httpx.AsyncClient, standin: StandIn, secret: str = SECRET, **kwargs: object) -> ClientCredentials:
    return ClientCredentials(http, standin.token_url, CLIENT, secret, **kwargs)  # type: ignore[arg-type]


async def test_a_token_is_fetched_once_and_names_the_service_user(standin: StandIn) -> None:
    async with httpx.AsyncClient() as http:
        tokens = source(http, standin)
        assert tokens.username is None
        first = await tokens.token()
        assert await tokens.token() == first
        claims = claims_of(first)
        assert claims["preferred_username"] == "jarvice" and claims["azp"] == CLIENT
        assert {"exp", "iat", "iss", "sub"} <= set(claims)
        assert tokens.username == "jarvice"
        assert standin.stats()["token_requests"] == 1
        assert tokens.description == f"client credentials of {CLIENT} at {standin.token_url}"
        assert SECRET not in tokens.description


async def test_renewal_ahead_of_expiry_follows_the_lifetime(standin: StandIn) -> None:
    clock = Clock()
    async with httpx.AsyncClient() as http:
        tokens = source(http, standin, clock=clock)
        first = await tokens.token()            # lives 300 s: renewed when 30 s are left
        clock.now += 269
        assert await tokens.token() == first
        clock.now += 2                          # 29 s left
        second = await tokens.token()
        assert second != first
        assert standin.stats()["token_requests"] == 2

        standin.admin("config", lifetime=10)    # a short lifetime: renewed when 20 % (2 s) are left
        tokens.invalidate(second)
        third = await tokens.token()            # exp is in whole seconds: it lives 9 to 10 s
        clock.now += 7
        assert await tokens.token() == third
        clock.now += 1
        assert await tokens.token() != third


async def test_a_short_lived_token_is_renewed_before_it_expires(standin: StandIn) -> None:
    standin.admin("config", lifetime=3)
    async with httpx.AsyncClient() as http:
        tokens = source(http, standin)
        seen: list[str] = []
        deadline = time.time() + 5
        while time.time() < deadline:
            token = await tokens.token()
            # every token handed out still has at least a second to live (real clock, real expiry)
            assert claims_of(token)["exp"] - time.time() > 0.5
            if not seen or seen[-1] != token:
                seen.append(token)
            await trio.sleep(0.1)
        assert len(seen) >= 2, "a 3 s token was not renewed within 5 s"
        assert standin.stats()["token_requests"] == len(seen)


async def test_concurrent_callers_share_one_fetch(standin: StandIn) -> None:
    standin.admin("config", delay=0.5)
    async with httpx.AsyncClient() as http:
        tokens = source(http, standin)
        got: list[str] = []

        async def one() -> None:
            got.append(await tokens.token())

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        assert len(got) == 20 and len(set(got)) == 1
        assert standin.stats()["token_requests"] == 1


async def test_a_refused_token_is_replaced_once(standin: StandIn) -> None:
    async with httpx.AsyncClient() as http:
        tokens = source(http, standin)
        first = await tokens.token()
        tokens.invalidate(first)               # slurmrestd answered 401 to it
        second = await tokens.token()
        assert second != first
        tokens.invalidate(first)               # a late refusal of the old token changes nothing
        assert await tokens.token() == second
        assert standin.stats()["token_requests"] == 2


async def test_a_wrong_secret_is_refused_with_a_clear_message(standin: StandIn) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(TokenRefused) as refused:
            await source(http, standin, secret="not-the-secret").token()
    message = str(refused.value)
    assert standin.token_url in message and CLIENT in message
    assert "HTTP 401" in message and "unauthorized_client" in message
    assert "Invalid client or Invalid client credentials" in message
    assert "not-the-secret" not in message
    assert not isinstance(refused.value, ClusterUnavailable)


async def test_an_unknown_client_or_realm_is_refused(standin: StandIn) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(TokenRefused, match="invalid_client"):
            await ClientCredentials(http, standin.token_url, "other-client", SECRET).token()
        with pytest.raises(TokenRefused, match="HTTP 404.*Realm does not exist"):
            await ClientCredentials(http, standin.token_url.replace("/jarvice/", "/nope/"), CLIENT, SECRET).token()


async def test_an_endpoint_that_fails_is_unavailable_and_recovers(standin: StandIn) -> None:
    standin.admin("config", fail=True)
    async with httpx.AsyncClient() as http:
        tokens = source(http, standin)
        with pytest.raises(TokenUnavailable, match="HTTP 503") as unavailable:
            await tokens.token()
        assert isinstance(unavailable.value, ClusterUnavailable)
        standin.admin("config", fail=False)
        assert claims_of(await tokens.token())["preferred_username"] == "jarvice"


async def test_callers_waiting_on_a_failing_fetch_share_its_error(standin: StandIn) -> None:
    standin.admin("config", fail=True, delay=0.3)
    async with httpx.AsyncClient() as http:
        tokens = source(http, standin)
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await tokens.token()
            except DownstreamError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
        assert len(errors) == 10 and all(isinstance(e, TokenUnavailable) for e in errors)
        assert standin.stats()["token_requests"] == 1


async def test_an_unreachable_or_slow_endpoint_is_unavailable(standin: StandIn) -> None:
    async with httpx.AsyncClient() as http:
        with trio.socket.socket() as s:   # a port nothing listens on
            await s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(TokenUnavailable, match="cannot reach it"):
            await ClientCredentials(http, f"http://127.0.0.1:{port}/realms/jarvice/protocol/openid-connect/token",
                                    CLIENT, SECRET).token()
        standin.admin("config", delay=2)
        with pytest.raises(TokenUnavailable, match="no answer within 0.3 s"):
            await source(http, standin, timeout=0.3).token()


async def test_a_failed_renewal_keeps_the_live_token_until_it_expires(standin: StandIn) -> None:
    clock = Clock()
    async with httpx.AsyncClient() as http:
        tokens = source(http, standin, clock=clock)
        first = await tokens.token()
        standin.admin("config", fail=True)
        clock.now += 280                        # renewal due (20 s left), the endpoint fails
        assert await tokens.token() == first
        assert await tokens.token() == first    # retried only after a pause: no request now
        assert standin.stats()["token_requests"] == 2
        clock.now += 19.5                       # it has expired (for our purposes)
        with pytest.raises(TokenUnavailable):
            await tokens.token()
        standin.admin("config", fail=False)
        assert await tokens.token() != first


async def test_secrets_never_reach_the_log(standin: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    async with httpx.AsyncClient() as http:
        tokens = source(http, standin, clock=clock)
        handed = [await tokens.token()]
        tokens.invalidate(handed[0])
        handed.append(await tokens.token())
        standin.admin("config", fail=True)
        clock.now += 290
        handed.append(await tokens.token())
        standin.admin("config", fail=False)
        with pytest.raises(TokenRefused):
            await source(http, standin, secret="wrong-" + SECRET).token()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "renewing the slurmrestd token failed" in text
    for secret in [SECRET, *handed]:
        assert secret not in text


async def test_a_static_token_is_what_it_is(standin: StandIn) -> None:
    token = standin.admin("token", username="svc", lifetime=600)["access_token"]
    static = StaticToken(token)
    assert await static.token() == token
    static.invalidate(token)
    assert await static.token() == token
    assert static.username == "svc"
    assert static.description == "JARVICE_SLURM_SA_TOKEN (static)" and token not in static.description
    assert static.expires_at is not None and abs(static.expires_at - (time.time() + 600)) < 5
    opaque = StaticToken("not-a-jwt")
    assert opaque.username is None and opaque.expires_at is None


def test_the_stand_in_mints_what_the_tests_ask(standin_process: StandIn, tmp_path: Path) -> None:
    standin_process.admin("reset")
    jwks = jwt.PyJWKClient(f"{standin_process.url}/realms/jarvice/protocol/openid-connect/certs")
    good = standin_process.admin("token", username="alice", lifetime=60)["access_token"]
    key = jwks.get_signing_key_from_jwt(good).key
    claims = jwt.decode(good, key, algorithms=["RS256"], audience="account")
    assert claims["preferred_username"] == "alice" and claims["exp"] - claims["iat"] == 60
    forged = standin_process.admin("token", forged=True)["access_token"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key, algorithms=["RS256"], audience="account")
    expired = standin_process.admin("token", lifetime=-10)["access_token"]
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, key, algorithms=["RS256"], audience="account")
    bare = standin_process.admin("token", claim=False)["access_token"]
    assert "preferred_username" not in claims_of(bare)
    # HTTP Basic client authentication, as Keycloak also takes it
    basic = httpx.post(f"{standin_process.url}/realms/jarvice/protocol/openid-connect/token",
                       data={"grant_type": "client_credentials"}, auth=(CLIENT, SECRET), timeout=10)
    assert basic.status_code == 200 and basic.json()["token_type"] == "Bearer"
    missing = httpx.post(f"{standin_process.url}/realms/jarvice/protocol/openid-connect/token", data={}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
