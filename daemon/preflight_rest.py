"""Preflight in slurmrestd mode: the REST side's checks, judged like the SSH probe's.

What an operator must know before trusting the daemon with jobs: slurmrestd answers at
the URL, the service token is accepted (and where it comes from), which data parser was
chosen among those offered, whether the service user sees other users' jobs (with
``PrivateData=jobs`` it must be their accounts' coordinator), and what is lost without SSH.
"""

from __future__ import annotations

from adapters.errors import DownstreamError
from adapters.slurm.rest import RestSlurm
from config.settings import Settings
from daemon.preflight import Check

# The SSH probe's checks that are about running Slurm's commands: in slurmrestd mode they say
# nothing of how jobs are controlled (the login node may have no Slurm commands at all).
SSH_SLURM_CHECKS = frozenset({"slurm version", "slurmctld", "squeue", "accounting"})


async def rest_checks(control: RestSlurm, settings: Settings) -> list[Check]:
    """Never raises: each finding is a Check with a hint."""
    rest = settings.rest
    assert rest is not None
    checks: list[Check] = []
    try:
        await control.tokens.token()
    except DownstreamError as exc:
        return [Check("slurmrestd", "error", f"no service token: {exc}",
                      "check JARVICE_KEYCLOAK_TOKEN_URL/_CLIENT_ID/_CLIENT_SECRET or JARVICE_SLURM_SA_TOKEN")]
    try:  # chosen already by the daemon's own preflight, unless that failed
        parser = control.parser if control.offered else await control.choose_parser()
    except DownstreamError as exc:
        hint = ("set JARVICE_SLURM_DATA_PARSER_VERSION=auto, or to one the server offers"
                if control.offered else "check JARVICE_SLURMRESTD_URL, that slurmrestd runs there and accepts the token")
        return [Check("slurmrestd", "error", f"{rest.url}: {exc}", hint)]
    offered = ", ".join(control.offered)
    checks.append(Check("data parser", "ok", f"{parser} (offered: {offered}; asked: {rest.parser})"))
    try:
        await control.ping()
    except DownstreamError as exc:
        checks.append(Check("slurmrestd", "error", f"{rest.url}: {exc}",
                            "check that slurmctld accepts the token (AuthAltTypes=auth/jwt, AuthAltParameters=jwks=...) "
                            "and slurmctld's and slurmrestd's logs"))
        return checks
    checks.insert(0, Check("slurmrestd", "ok", f"{rest.url}: slurmctld answers and accepts the token from "
                                               f"{rest.token_source}"))
    checks.append(await _visibility(control))
    if control.accounting == "controller":
        checks.append(Check("accounting", "warning", "slurmrestd serves no accounting (openapi/slurmdbd): exit codes "
                                                     "of finished jobs from slurmctld until MinJobAge, then from the "
                                                     "jobs' exit-code files",
                            "run slurmrestd with -s openapi/slurmctld,openapi/slurmdbd; keep MinJobAge at least a few "
                            "poll intervals"))
    else:
        checks.append(Check("accounting", "ok", "slurmdbd through slurmrestd (jobs slurmctld has purged)"))
    if not settings.has_ssh:
        checks.append(Check("ssh", "warning", "not configured: job output (tail, exitstatus logs) is not available and "
                                              "interactive jobs are refused",
                            "set JARVICE_SLURM_CLUSTER_ADDR and JARVICE_SLURM_SSH_PKEY to reach the login node"))
    return checks


async def _visibility(control: RestSlurm) -> Check:
    """Whether the service user sees JARVICE users' jobs: its coordinator roles when slurmrestd serves
    accounting, else (a complete listing, costly on a big cluster) whose jobs it sees."""
    user = control.service_user or "<service user>"
    add = f"sacctmgr add coordinator account=<the JARVICE users' accounts> names={user}"
    try:
        coordinates = await control.coordinated_accounts()
        if coordinates is None:
            others = sorted(u for u in await control.visible_users() if u != control.service_user)
    except DownstreamError as exc:
        return Check("job visibility", "warning", f"could not be checked through slurmrestd: {exc}")
    if coordinates:
        return Check("job visibility", "ok", f"the service user {user} coordinates {', '.join(coordinates)}")
    if coordinates == []:
        return Check("job visibility", "warning",
                     f"the service user {user} coordinates no account: with PrivateData=jobs it sees only its own "
                     "jobs, and a JARVICE user's job would look gone (it is kept, not ended)",
                     f"make it a coordinator of the accounts JARVICE users submit under: {add}")
    if others:
        return Check("job visibility", "ok", f"the service user sees jobs of {len(others)} other user(s)")
    return Check("job visibility", "warning",
                 f"the service user ({user}) sees no other user's job: none runs, or PrivateData=jobs hides them",
                 f"with PrivateData=jobs, make it a coordinator of the JARVICE users' accounts: {add}")
