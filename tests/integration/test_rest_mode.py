"""JARVICE_SLURM_CLIENT=slurmrestd_client where it differs from SSH: no SSH at all, and slurmrestd's own faults.

Runs only through the test clusters' real slurmrestd (Slurm 24.11 and 26.05, JWT from the
local stand-in of Keycloak's token endpoint, ``tests/support/oidc.py``: no Keycloak can run here).
"""

from __future__ import annotations

import httpx
import pytest
import trio

from config.settings import ConfigError
from daemon.server import serve
from tests.integration.conftest import settings, start_daemon, unique_name
from tests.support.upstream import submit_args


def ids(name: str, number: int, jobid: str) -> dict:
    return {"name": name, "number": number, "jobid": jobid}


async def test_without_ssh_batch_jobs_run_and_what_cannot_be_shown_says_why(nursery: trio.Nursery) -> None:
    conf = settings(JARVICE_SLURM_CLUSTER_ADDR="")  # slurmrestd only: no shell on the login node at all
    assert not conf.has_ssh and conf.rest is not None
    async for daemon in start_daemon(nursery, conf):
        name = unique_name("nossh")
        jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 31, "echo unseen; exit 3", marker=False))
        await daemon.wait_phase(name, "finished")
        rc, _, (log, termination) = await daemon.upstream.call("/exitstatus", ids(name, 31, jobid))
        assert rc == 1 and "FAILED" in termination  # from slurmctld, through slurmrestd
        assert "without SSH access to the login node" in log and "unseen" not in log

        web = submit_args(unique_name("nossh-web"), 32, "sleep 60", interactive=True)
        refused = await daemon.upstream.post("/submit", web)
        assert refused.status_code == 400 and "interactive jobs need SSH" in refused.json()["error"]
        assert await daemon.upstream.call("/queued") == [] or all(n != web["name"] for n, _ in
                                                                 await daemon.upstream.call("/queued"))

        async with httpx.AsyncClient(base_url=daemon.url) as anonymous:
            assert (await anonymous.get("/ready")).status_code == 200
        admin = (await daemon.upstream.client.get("/admin/state")).json()
        assert admin["ssh"]["target"] == "not configured"
        ssh_check = next(c for c in admin["preflight"] if c["name"] == "ssh")
        assert ssh_check["level"] == "warning" and "interactive jobs are refused" in ssh_check["detail"]
        assert any(c["name"] == "data parser" and c["level"] == "ok" for c in admin["preflight"])
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("parser", ["v0.0.42", "v0.0.39"])
async def test_a_fixed_data_parser_is_used_or_refused_at_start(nursery: trio.Nursery, parser: str) -> None:
    conf = settings(JARVICE_SLURM_DATA_PARSER_VERSION=parser)
    if parser == "v0.0.42":  # served by both 24.11 and 26.05
        async for daemon in start_daemon(nursery, conf):
            admin = (await daemon.upstream.client.get("/admin/state")).json()
            check = next(c for c in admin["preflight"] if c["name"] == "data parser")
            assert check["detail"].startswith("v0.0.42 ")
        nursery.cancel_scope.cancel()
        return
    # a version the server lacks stops the start in one line naming the variable and what is offered
    with trio.fail_after(30), pytest.raises(ConfigError, match="does not serve data parser v0.0.39 .*serves v0.0.4"):
        await nursery.start(lambda task_status: serve(conf, "127.0.0.1", 0, handle_signals=False,
                                                      task_status=task_status))
