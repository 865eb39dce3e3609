"""Two deployments sharing one Slurm account (staging and production) never adopt each other's jobs.

Each signs its jobs' comments with its instance name (JARVICE_SLURM_INSTANCE; by default its pod's
namespace) and adopts only its own, plus unsigned jobs from before instances existed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from adapters.slurm.parsers import job_comment, parse_comment
from adapters.slurm.twin import SimJob
from config.settings import ConfigError, _instance
from tests.support.daemon_world import World


def slurm_job(jobid: str, name: str, comment: str) -> SimJob:
    return SimJob(jobid=jobid, slurm_name=f"jarvice_{name}", comment=comment, nodes_wanted=1, held=False,
                  submitted=0, code="R", nodes=("node1",))


async def test_a_daemon_adopts_its_own_and_unsigned_jobs_never_another_deployments(
        autojump_clock: trio.testing.MockClock) -> None:
    world = World()
    world.downstream.script_env = replace(world.downstream.script_env, instance="production")
    world.twin.jobs.update({
        "501": slurm_job("501", "staging-job", "jarvice:5;d=staging"),
        "502": slurm_job("502", "old-job", "jarvice:6"),
        "503": slurm_job("503", "own-job", "jarvice:7;i=1;p=3;d=production"),
    })
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        await world.poll()
        assert world.downstream.book.get("501") is None
        assert world.downstream.book.get("502") is not None
        own = world.downstream.book.get("503")
        assert own is not None and own.port_index == 3
        jobid = await world.submitted("new-job", 8, interactive=False)
        assert parse_comment(world.twin.jobs[jobid].comment).instance == "production"
        nursery.cancel_scope.cancel()


def test_comments_carry_the_instance_and_old_ones_read_as_unsigned() -> None:
    assert parse_comment(job_comment(5, 2, "staging")) == parse_comment("jarvice:5;i=1;p=2;d=staging")
    tag = parse_comment(job_comment(5, 2, "staging"))
    assert (tag.number, tag.port_index, tag.instance) == (5, 2, "staging")
    assert parse_comment("jarvice:5;i=1;p=2").instance == ""
    assert job_comment(5) == "jarvice:5"  # no instance: the comment older daemons wrote


def test_the_instance_defaults_to_the_pods_namespace(tmp_path: Path) -> None:
    namespace = tmp_path / "namespace"
    assert _instance({}, namespace) == ""  # not in Kubernetes: unsigned
    namespace.write_text("jarvice-staging\n")
    assert _instance({}, namespace) == "jarvice-staging"
    assert _instance({"JARVICE_SLURM_INSTANCE": "prod"}, namespace) == "prod"
    with pytest.raises(ConfigError, match="JARVICE_SLURM_INSTANCE"):
        _instance({"JARVICE_SLURM_INSTANCE": "a;b"}, namespace)
