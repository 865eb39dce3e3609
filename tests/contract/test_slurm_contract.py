"""One contract, three Slurms: the SSH client and the slurmrestd client on the real test clusters, and the twin.

Every test here runs once per backend, with the same assertions: "real" is the SSH client, or, on
the clusters that run slurmrestd (``[slurm-24.11-rest]``), the REST client with SSH for the files,
built as the daemon builds it (``daemon.server.build_slurm``). The
twin is only worth what this file checks: whatever the daemon's property tests
prove against the twin holds for the real cluster as far as these behaviours
go. A behaviour the daemon relies on and the twin models belongs here.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import trio

from adapters import jobscript
from adapters.errors import CommandFailed
from adapters.slurm.backend import SlurmBackend
from adapters.slurm.parsers import parse_comment
from adapters.slurm.twin import SimulatedSlurm
from daemon.metrics import Metrics
from daemon.server import build_slurm, open_ssh, rest_http, script_environment
from tests.integration.conftest import settings, unique_name
from tests.support.cluster import current
from tests.support.upstream import submit_args


class Harness:
    """Makes jobs happen: the real cluster runs their script; the twin is told to."""

    def __init__(self, slurm: SlurmBackend, twin: SimulatedSlurm | None, executor: str, env: jobscript.ScriptEnvironment):
        self.slurm = slurm
        self.twin = twin
        self.executor = executor
        self.env = env
        self.planned: dict[str, int] = {}

    async def submit(self, *, rc: int = 0, seconds: float = 1, held: bool = False, number: int = 7) -> tuple[str, str]:
        name = unique_name("contract")
        body = f'echo "contract job on $PROCESS_NODENAME"; sleep {seconds}; exit {rc}'
        # JARVICE's shape without the marker chain, so that the app's exit code is the job's on both backends
        args = submit_args(name, number, body, held=held, executor=self.executor, marker=False)
        submission = jobscript.build(args, self.executor, self.env)
        jobid = await self.slurm.submit(submission)
        self.planned[jobid] = rc
        return name, jobid

    async def _until(self, jobid: str, codes: set[str], timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while (job := (await self.slurm.poll()).jobs.get(jobid)) is None or job.code not in codes:
                await trio.sleep(0.3)

    async def running(self, jobid: str) -> None:
        if self.twin is not None:
            self.twin.start(jobid)
        await self._until(jobid, {"R"})

    async def finished(self, jobid: str) -> None:
        if self.twin is not None:
            if self.twin.jobs[jobid].code == "PD":
                self.twin.start(jobid)
            self.twin.finish(jobid, self.planned[jobid])
        await self._until(jobid, {"CD", "F"})

    async def purged(self, jobid: str) -> None:
        if self.twin is not None:
            self.twin.advance(self.twin.min_job_age)
        with trio.fail_after(60):
            while (await self.slurm.inspect(jobid)).squeue is not None:
                await trio.sleep(0.5)


@pytest.fixture(params=["real", "twin"])
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    conf = settings()
    env = script_environment(conf)
    if request.param == "twin":
        twin = SimulatedSlurm(scratch_dir="/tmp/twin", min_job_age=10)
        await twin.preflight()
        yield Harness(twin, twin, conf.executor, replace(env, scratch_dir=twin.scratch_dir))
        return
    async with open_ssh(conf) as ssh, rest_http(conf) as http:
        client, _ = build_slurm(conf, ssh, Metrics(version="contract"), http if conf.rest else None)  # as in production
        await client.preflight()
        yield Harness(client, None, conf.executor, replace(env, scratch_dir=client.scratch_dir))


pytestmark = pytest.mark.cluster


async def test_a_submitted_job_is_polled_under_its_name_and_number(h: Harness) -> None:
    name, jobid = await h.submit(number=4242, held=True)
    assert jobid.isdigit()
    job = (await h.slurm.poll()).jobs[jobid]
    assert job.name == name and job.code == "PD" and job.reason == "JobHeldUser"
    tag = parse_comment(job.comment)
    assert tag is not None and tag.number == 4242
    assert [j.jobid for j in await h.slurm.find_by_name(name)] == [jobid]
    await h.slurm.cancel(jobid, name)


async def test_release_lets_a_held_job_run(h: Harness) -> None:
    name, jobid = await h.submit(held=True, seconds=5)
    await h.slurm.release(jobid)
    await h.running(jobid)
    job = (await h.slurm.poll()).jobs[jobid]
    assert job.nodes and job.reason != "JobHeldUser"
    await h.slurm.cancel(jobid, name)


async def test_a_finished_job_leaves_its_code_output_and_rc_file(h: Harness) -> None:
    name, jobid = await h.submit(rc=0)
    await h.finished(jobid)
    facts = await h.slurm.inspect(jobid)
    assert facts.squeue is not None and facts.squeue.code == "CD" and facts.rc_file == 0
    assert (await h.slurm.tail(jobid)) not in (None, "")
    assert abs(time.time() - (await h.slurm.job_files())[jobid]) < 300  # what /gc's sweep ages it by
    await h.slurm.cleanup([jobid])
    assert await h.slurm.tail(jobid) is None
    assert (await h.slurm.inspect(jobid)).rc_file is None
    assert jobid not in await h.slurm.job_files()
    await h.slurm.cleanup([jobid])  # again: nothing left to remove is no error


async def test_a_failing_job_is_failed_with_its_rc(h: Harness) -> None:
    _, jobid = await h.submit(rc=3)
    await h.finished(jobid)
    facts = await h.slurm.inspect(jobid)
    assert facts.squeue is not None and facts.squeue.code == "F" and facts.rc_file == 3
    await h.slurm.cleanup([jobid])


async def test_scancel_by_name_spares_a_job_of_another_name(h: Harness) -> None:
    name, jobid = await h.submit(held=True)
    await h.slurm.cancel(jobid, name + "x")
    assert (await h.slurm.poll()).jobs[jobid].code == "PD"
    await h.slurm.cancel(jobid, name)
    assert (await h.slurm.poll()).jobs[jobid].code == "CA"
    with pytest.raises(CommandFailed):
        await h.slurm.cancel(jobid, name)
    with pytest.raises(CommandFailed):
        await h.slurm.release(jobid)


async def test_an_unknown_job_is_known_nowhere(h: Harness) -> None:
    facts = await h.slurm.inspect("987654321")
    assert facts.squeue is None and facts.rc_file is None and facts.accounting is None
    assert "Invalid job id" in await h.slurm.show_job("987654321")
    assert await h.slurm.tail("987654321") is None


async def test_a_purged_job_is_still_known_by_its_rc_file_and_accounting(h: Harness) -> None:
    name, jobid = await h.submit(rc=0, seconds=0)
    await h.finished(jobid)
    await h.purged(jobid)
    assert jobid not in (await h.slurm.poll()).jobs
    assert await h.slurm.find_by_name(name) == []
    facts = await h.slurm.inspect(jobid)
    assert facts.squeue is None and facts.rc_file == 0
    if h.slurm.accounting == "controller":  # slurmrestd without slurmdbd: slurmctld's memory only, now purged
        assert facts.accounting is None
        return await h.slurm.cleanup([jobid])
    assert facts.accounting is not None and facts.accounting.code == "CD" and facts.accounting.name == name
    await h.slurm.cleanup([jobid])


async def test_a_node_is_reached_at_the_address_slurm_knows(h: Harness) -> None:
    one, two = await h.slurm.node_address("node1"), await h.slurm.node_address("node2")
    assert ipaddress.ip_address(one) != ipaddress.ip_address(two)  # each node a host of its own
    if h.twin is None:  # the real one: the address tests/cluster/up gave node1 on the cluster's network
        hosts = dict(line.split()[::-1] for line in (current().state / "etc" / "hosts").read_text().splitlines())
        assert one == hosts["node1"] and one != current().host
    with pytest.raises(CommandFailed):
        await h.slurm.node_address("no-such-node")


async def test_concurrent_submits_each_get_their_own_job(h: Harness) -> None:
    """Submits that arrive together (the real client sends them as one batch) stay separate jobs."""
    results: dict[int, tuple[str, str]] = {}

    async def one(number: int) -> None:
        results[number] = await h.submit(number=number, held=True)

    async with trio.open_nursery() as nursery:
        for number in range(100, 108):
            nursery.start_soon(one, number)
    assert len({jobid for _, jobid in results.values()}) == 8
    jobs = (await h.slurm.poll()).jobs
    for number, (name, jobid) in results.items():
        assert jobs[jobid].name == name and parse_comment(jobs[jobid].comment).number == number
        await h.slurm.cancel(jobid, name)


async def test_many_jobs_are_inspected_in_one_command_as_one_by_one(h: Harness) -> None:
    """What the daemon asks of jobs that vanished during an outage: one command, the same facts."""
    _, ok = await h.submit(rc=0)
    _, failed = await h.submit(rc=3)
    await h.finished(ok)
    await h.finished(failed)
    many = await h.slurm.inspect_many([ok, failed, "987654321"])
    assert many == {j: await h.slurm.inspect(j) for j in (ok, failed, "987654321")}
    assert many[ok].rc_file == 0 and many[failed].rc_file == 3 and many["987654321"].squeue is None
    unknown = await h.slurm.inspect_many(["987654321", "987654322"])
    assert all(f.squeue is None and f.rc_file is None and f.accounting is None for f in unknown.values())
    await h.slurm.cleanup([ok, failed])
