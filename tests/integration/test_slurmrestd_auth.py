"""The test clusters' slurmrestd verifies the OIDC stand-in's tokens (24.11 and 26.05; 22.05 is SSH only).

What the REST client builds on, proven on real slurmrestd and slurmctld with ``AuthAltTypes=auth/jwt``
and ``jwks=`` the stand-in's public key (tests/cluster/up): a client-credentials token from the
Keycloak-shaped endpoint is accepted, in either header; forged, expired and claimless tokens are
refused; a job submitted with the service token runs as the service user (the SSH user, so the
daemon can read its files over SSH).

Facts measured here, which the REST client must know:

* slurmrestd checks nothing itself: it passes the token to slurmctld. A token slurmctld refuses
  gets **HTTP 511** with error 1007 ``Protocol authentication error`` (not 401); 401 comes only
  when no token is sent at all.
* ``GET .../ping/`` answers 200 whatever the token (a forged one too): it proves slurmrestd
  is up, not that a token is accepted. ``GET .../diag/`` does need an accepted token.
* ``Authorization: Bearer <token>`` works like ``X-SLURM-USER-TOKEN: <token>``.
* An expired token is refused from the second after its ``exp`` on (``exp`` + 1 s), not before.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import trio

from adapters.tokens import ClientCredentials, StaticToken, claims_of
from tests.integration.conftest import cluster_env
from tests.support.cluster import current

V = "v0.0.42"   # offered by both 24.11 (v0.0.40-42) and 26.05 (v0.0.42-45)


@pytest.fixture
def oidc_reset() -> object:
    """Tests that turn the stand-in's knobs leave it as they found it (it serves the whole cluster)."""
    current().oidc("reset")
    yield
    current().oidc("reset")


def get(path: str, token: str | None, header: str = "X-SLURM-USER-TOKEN") -> httpx.Response:
    headers = {}
    if token is not None:
        headers[header] = token if header == "X-SLURM-USER-TOKEN" else f"Bearer {token}"
    return httpx.get(f"{current().rest_url}/slurm/{V}/{path}", headers=headers, timeout=30)


def auth_errors(response: httpx.Response) -> list[tuple[int, str]]:
    return [(e.get("error_number"), e.get("error")) for e in response.json().get("errors", [])]


async def test_a_client_credentials_token_is_accepted_in_either_header() -> None:
    cluster = current()
    async with httpx.AsyncClient() as http:
        tokens = ClientCredentials(http, cluster.token_url, cluster.client_id, cluster.client_secret)
        token = await tokens.token()
    assert tokens.username == cluster_env()["JARVICE_SLURM_SSH_USER"]
    for header in ("X-SLURM-USER-TOKEN", "Authorization"):
        ping = get("ping/", token, header)
        assert ping.status_code == 200, ping.text
        assert ping.json()["pings"][0]["responding"] is True
        diag = get("diag/", token, header)   # unlike ping, this needs slurmctld to accept the token
        assert diag.status_code == 200, diag.text
        assert diag.json()["errors"] == []


def test_the_static_service_token_is_accepted() -> None:
    static = StaticToken(current().static_token, name="TESTCLUSTER_SLURM_SA_TOKEN")
    assert static.username == cluster_env()["JARVICE_SLURM_SSH_USER"]
    assert static.expires_at is not None and static.expires_at > time.time() + 7 * 86400
    assert get("diag/", current().static_token).status_code == 200


@pytest.mark.parametrize("kind", ["forged", "expired", "no claim"])
def test_a_bad_token_is_refused(kind: str) -> None:
    body = {"forged": {"forged": True}, "expired": {"lifetime": -30}, "no claim": {"claim": False}}[kind]
    token = current().oidc("token", **body)["access_token"]
    for header in ("X-SLURM-USER-TOKEN", "Authorization"):
        for path in ("diag/", "jobs/"):
            refused = get(path, token, header)
            assert refused.status_code == 511, f"{kind} token, {header}, {path}: HTTP {refused.status_code} {refused.text}"
            assert (1007, "Protocol authentication error") in auth_errors(refused)
    # the pitfall: ping does not ask slurmctld to verify the token
    assert get("ping/", token).status_code == 200


def test_no_token_is_401() -> None:
    assert get("diag/", None).status_code == 401


async def test_a_token_that_expires_is_refused_and_a_renewed_one_accepted(oidc_reset: object) -> None:
    cluster = current()
    cluster.oidc("config", lifetime=3)
    async with httpx.AsyncClient() as http:
        tokens = ClientCredentials(http, cluster.token_url, cluster.client_id, cluster.client_secret)
        first = await tokens.token()
        assert get("diag/", first).status_code == 200
        # slurmctld checks exp itself, in whole seconds: accepted until exp + 0.99 s (measured, both versions)
        await trio.sleep(claims_of(first)["exp"] + 1.5 - time.time())
        assert get("diag/", first).status_code == 511
        second = await tokens.token()              # the source renewed it ahead of expiry
        assert second != first
        assert get("diag/", second).status_code == 200


async def test_a_job_submitted_with_the_service_token_runs_as_the_service_user() -> None:
    cluster = current()
    env = cluster_env()
    user, scratch = env["JARVICE_SLURM_SSH_USER"], env["JARVICE_SLURM_SCRATCH_DIR"]
    name = f"rest_auth_{uuid.uuid4().hex[:8]}"
    out = f"{scratch}/{name}.out"
    async with httpx.AsyncClient(timeout=30) as http:
        tokens = ClientCredentials(http, cluster.token_url, cluster.client_id, cluster.client_secret)
        headers = {"X-SLURM-USER-TOKEN": await tokens.token()}
        submitted = await http.post(f"{cluster.rest_url}/slurm/{V}/job/submit", headers=headers, json={"job": {
            "name": name, "script": "#!/bin/sh\nid -un\n", "current_working_directory": scratch,
            "environment": ["PATH=/usr/bin:/bin"], "standard_output": out}})
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["job_id"]
        try:
            with trio.fail_after(60):
                while True:
                    job = await http.get(f"{cluster.rest_url}/slurm/{V}/job/{job_id}", headers=headers)
                    assert job.status_code == 200, job.text
                    info = job.json()["jobs"][0]
                    if "COMPLETED" in info["job_state"] or "FAILED" in info["job_state"]:
                        break
                    await trio.sleep(0.3)
            assert info["user_name"] == user and info["job_state"] == ["COMPLETED"], info["job_state"]
            with trio.fail_after(10):
                while not await trio.Path(out).exists():   # the scratch dir is shared: the host sees it
                    await trio.sleep(0.2)
            assert (await trio.Path(out).read_text()).strip() == user
            assert (await trio.Path(out).stat()).st_uid == (await trio.Path(scratch).stat()).st_uid
        finally:
            await trio.Path(out).unlink(missing_ok=True)
