"""Who a job runs as with slurmrestd: the JARVICE user named by upstream's ``bearer`` token.

JARVICE submits each job on behalf of the user who launched it: upstream passes the user's
JWT (from JARVICE's identity provider) as ``bearer``; the daemon sends it to slurmrestd as
the job's credentials and Slurm verifies it (``AuthAltParameters=jwks=...``). The daemon
only reads it, unverified, to refuse early what Slurm would refuse anyway (not a JWT, no
user claim, expired) with a message naming the problem, and to know the user's name. The
token itself is never logged, journalled or shown: only the user name is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from adapters.errors import InvalidRequest
from adapters.tokens import claims_of

_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z")  # a login name Slurm can run a job as
_JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")
SKEW = 5.0  # seconds of clock difference tolerated before calling a token expired


@dataclass(frozen=True)
class UserIdentity:
    user: str  # the Slurm user the job runs as
    token: str = field(repr=False)  # the user's JWT, for slurmrestd only


def user_identity(bearer: object, claim: str, now: float) -> UserIdentity | None:
    """The user ``bearer`` names, or None for an empty one (the job runs as the service user).
    Raises InvalidRequest naming what is wrong; the message never contains the token."""
    if bearer is None or bearer == "":
        return None
    if not isinstance(bearer, str) or not _JWT_RE.match(bearer) or not (claims := claims_of(bearer)):
        raise InvalidRequest("'bearer' is not a JWT (the user's token from JARVICE's identity provider)")
    user = claims.get(claim)
    if not isinstance(user, str) or not user:
        raise InvalidRequest(f"the bearer token has no '{claim}' claim naming the Slurm user "
                             "(JARVICE_SLURM_USERNAME_CLAIM)")
    if not _USER_RE.match(user):
        raise InvalidRequest(f"the bearer token's '{claim}' claim is not a user name Slurm can run a job as")
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and exp + SKEW < now:
        raise InvalidRequest(f"the bearer token of {user} has expired")
    return UserIdentity(user=user, token=bearer)
