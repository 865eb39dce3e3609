"""Jobs on behalf of the JARVICE user (slurmrestd): upstream's bearer names who a job runs as.

Tokens here are real JWTs signed with a throw-away key (PyJWT): the daemon reads them without
verifying (Slurm verifies), so what matters is what it reads and what it refuses before asking
Slurm. On the simulated Slurm, a daemon in slurmrestd mode (``user_claim`` set) submits as the
user, shows the user, counts submits per identity kind, and keeps the token nowhere.
"""

from __future__ import annotations

import time

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.errors import InvalidRequest
from adapters.identity import user_identity
from tests.support.daemon_world import World
from tests.support.upstream import submit_args

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(**claims: object) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, KEY, algorithm="RS256")


def test_the_claim_names_the_user_and_an_empty_bearer_is_the_service_user() -> None:
    alice = token(preferred_username="alice")
    identity = user_identity(alice, "preferred_username", time.time())
    assert identity is not None and identity.user == "alice" and identity.token == alice
    assert alice not in repr(identity)
    assert user_identity("", "preferred_username", time.time()) is None
    assert user_identity(token(sub="x", uid="bob"), "uid", time.time()).user == "bob"


@pytest.mark.parametrize(("bearer", "why"), [
    ("upstream-bearer-token", "not a JWT"),
    ("a.b.c", "not a JWT"),
    (42, "not a JWT"),
    (token(sub="someone"), "no 'preferred_username' claim"),
    (token(preferred_username="alice; rm -rf /"), "not a user name"),
    (token(preferred_username="alice", exp=int(time.time()) - 60), "of alice has expired"),
])
def test_what_slurm_would_refuse_is_refused_first_naming_the_problem(bearer: object, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why) as info:
        user_identity(bearer, "preferred_username", time.time())
    assert not isinstance(bearer, str) or bearer not in str(info.value)


async def test_a_users_job_is_submitted_as_the_user_shown_and_counted() -> None:
    world = World(user_claim="preferred_username")
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        while not world.downstream.ready:
            await trio.sleep(0.01)
        alice = token(preferred_username="alice")
        jobid, _ = await world.downstream.submit({**submit_args("ident-a", 1, "true"), "bearer": alice})
        service, _ = await world.downstream.submit({**submit_args("ident-s", 2, "true"), "bearer": ""})
        assert world.twin.jobs[jobid].user == "alice" and world.twin.jobs[service].user == ""
        assert world.downstream.book.get(jobid).user == "alice"
        with pytest.raises(InvalidRequest, match="expired"):
            await world.downstream.submit({**submit_args("ident-x", 3, "true"),
                                           "bearer": token(preferred_username="bob", exp=1)})
        assert world.downstream.book.named("ident-x") is None and len(world.twin.jobs) == 2  # nothing submitted
        sample = world.downstream.metrics.registry.get_sample_value
        assert sample("slurm_downstream_submits_by_identity_total", {"identity": "user"}) == 1
        assert sample("slurm_downstream_submits_by_identity_total", {"identity": "service"}) == 1
        assert alice not in repr(world.downstream.book.get(jobid))
        nursery.cancel_scope.cancel()


async def test_over_ssh_the_bearer_is_not_read() -> None:
    world = World()  # user_claim None: every job runs as the SSH user, whatever upstream sends
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        while not world.downstream.ready:
            await trio.sleep(0.01)
        jobid, _ = await world.downstream.submit({**submit_args("ident-ssh", 1, "true"), "bearer": "not-a-jwt"})
        assert world.twin.jobs[jobid].user == ""
        nursery.cancel_scope.cancel()


async def test_a_users_job_that_becomes_invisible_is_not_reported_finished() -> None:
    """PrivateData=jobs without the coordinator role: the user's job vanishes from the service user's view.
    Nothing says it ended, so it keeps its state (a service job gone without a trace does end, UNKNOWN)."""
    world = World(user_claim="preferred_username")  # the twin's service user is jarvice
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        while not world.downstream.ready:
            await trio.sleep(0.01)
        alice, _ = await world.downstream.submit({**submit_args("vis-a", 1, "sleep 60"),
                                                  "bearer": token(preferred_username="alice")})
        mine, _ = await world.downstream.submit({**submit_args("vis-s", 2, "sleep 60"), "bearer": ""})
        world.twin.start(alice)
        world.twin.start(mine)
        await world.poll()
        del world.twin.jobs[alice], world.twin.jobs[mine]  # no longer listed, no record, no exit-code file
        await world.poll()
        await world.poll()
        job = world.downstream.book.get(alice)
        assert not job.final and str(job.state) == "running" and "coordinator" in job.last_error
        assert world.downstream.book.get(mine).final
        nursery.cancel_scope.cancel()
