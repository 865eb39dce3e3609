"""Submits whose sbatch answer was lost (limbo), across restarts: the job is found, never duplicated, and
keeps what its Slurm comment says about it.

Driven on the simulated Slurm: the link drops right after sbatch took effect and the look-up by
name fails too, so the job is in doubt; the daemon may then restart with only its journal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from adapters.errors import ClusterUnavailable
from adapters.journal import Journal
from adapters.slurm.twin import Fault
from statemachines.book import JobBook
from statemachines.job import JobState
from tests.support.daemon_world import World
from tests.support.upstream import submit_args


async def submit_in_doubt(world: World, name: str, number: int) -> None:
    """sbatch takes effect and its answer is lost; looking the job up by name fails too."""
    while not world.downstream.ready:
        await trio.sleep(0.01)
    world.twin.inject("sbatch", Fault.DROP_AFTER)
    world.twin.inject("squeue", Fault.UNAVAILABLE)
    with pytest.raises(ClusterUnavailable):
        await world.downstream.submit(submit_args(name, number, "sleep 600", interactive=True))
    book = world.downstream.book
    assert book.named(name) in book.limbo()


async def test_an_interactive_job_settled_from_limbo_after_a_restart_keeps_its_ports(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sqlite3")
    first = World(journal=Journal(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(first.downstream.run)
        await first.running_job("other", 1)  # takes port index 0
        await submit_in_doubt(first, "desktop", 2)  # gets index 1, written in its Slurm comment
        nursery.cancel_scope.cancel()
    first.downstream.journal.close()
    [(jobid, sim)] = [(j, s) for j, s in first.twin.jobs.items() if s.slurm_name == "jarvice_desktop"]
    assert sim.comment.endswith("p=1")

    second = World(twin=first.twin, journal=Journal(path))  # restarted: the book knows only the journal
    async with trio.open_nursery() as nursery:
        await nursery.start(second.downstream.run)
        await second.poll()
        job = second.downstream.book.get(jobid)
        assert job is not None and job.port_index == 1
        second.twin.start(jobid)
        await second.poll()
        assert job.state is JobState.PROXYING
        assert second.proxies.serving["2"].port == second.downstream.script_env.service_port + 1
        newcomer = await second.submitted("newcomer", 3)
        assert second.downstream.book.get(newcomer).port_index not in (0, 1)  # "other" (adopted) and "desktop"
        nursery.cancel_scope.cancel()


async def test_a_job_in_limbo_keeps_its_ports_reserved_across_a_restart(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sqlite3")
    first = World(journal=Journal(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(first.downstream.run)
        await submit_in_doubt(first, "desktop", 4)  # port index 0
        nursery.cancel_scope.cancel()
    first.downstream.journal.close()
    first.twin.link_up = False  # the restarted daemon cannot see Slurm yet: the job stays in doubt
    second = World(twin=first.twin, journal=Journal(path))
    second.downstream.restore()
    assert second.downstream.book.named("desktop").port_index == 0
    assert second.downstream.interactive.free_port_index() == 1


def test_a_journal_from_before_port_indexes_opens_and_keeps_its_intents(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE intents (name TEXT PRIMARY KEY, number INTEGER NOT NULL, interactive INTEGER NOT NULL)")
    db.execute("INSERT INTO intents VALUES ('desktop', 5, 1)")
    db.commit()
    db.close()
    journal = Journal(str(path))
    assert [(i.name, i.port_index) for i in journal.intents()] == [("desktop", None)]
    journal.intend("web", 6, True, 3)
    assert [(i.name, i.port_index) for i in journal.intents()] == [("desktop", None), ("web", 3)]


async def test_a_lost_answer_then_not_found_stays_in_doubt_and_never_doubles_the_job(
        autojump_clock: trio.testing.MockClock) -> None:
    """slurmctld may apply a timed-out sbatch after the daemon looked for it: an immediate retry must not
    submit it again; a poll begun command_timeout later settles it either way."""
    world = World(command_timeout=30)
    late: list = []
    submit = world.twin.submit

    async def timed_out(submission, as_user=None):  # noqa: ANN001, ANN202 - the twin's own signature
        if not late:
            late.append(submission)  # applied by slurmctld later, after the look-up found nothing
            raise ClusterUnavailable("sbatch: timed out after 30s")
        return await submit(submission, as_user)

    world.twin.submit = timed_out  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        while not world.downstream.ready:
            await trio.sleep(0.01)
        args = submit_args("twice", 9, "sleep 600")
        with pytest.raises(ClusterUnavailable):
            await world.downstream.submit(args)
        with pytest.raises(ClusterUnavailable):  # upstream retries at once: still in doubt, nothing submitted
            await world.downstream.submit(args)
        first = await submit(late[0])  # the first sbatch takes effect after all
        await world.poll()
        assert (await world.downstream.submit(args))[0] == first  # the retry is answered with the one job
        names = [j for j in world.twin.jobs.values() if j.slurm_name == "jarvice_twice"]
        assert len(names) == 1
        nursery.cancel_scope.cancel()


async def test_a_poll_leaves_a_limbo_job_to_the_retried_submit_settling_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """Both settling one job at once fired 'accept' on a job already running (an illegal transition)."""
    world = World()
    async with trio.open_nursery() as nursery:
        await nursery.start(world.downstream.run)
        while not world.downstream.ready:
            await trio.sleep(0.01)
        world.twin.inject("sbatch", Fault.DROP_AFTER)
        world.twin.inject("squeue", Fault.UNAVAILABLE)
        args = submit_args("racing", 10, "sleep 600")
        with pytest.raises(ClusterUnavailable):
            await world.downstream.submit(args)
        [jobid] = [j for j, s in world.twin.jobs.items() if s.slurm_name == "jarvice_racing"]
        world.twin.start(jobid)
        find, looking, go = world.twin.find_by_name, trio.Event(), trio.Event()

        async def slow_find(name: str):  # noqa: ANN202 - the twin's own signature
            looking.set()
            await go.wait()
            return await find(name)

        world.twin.find_by_name = slow_find  # type: ignore[method-assign]
        async with trio.open_nursery() as retry:
            retry.start_soon(world.downstream.submit, args)
            await looking.wait()
            await world.poll()  # the poll sees the job while the retried submit looks it up
            go.set()
        job = world.downstream.book.get(jobid)
        assert job is not None and job.state is JobState.RUNNING
        assert world.downstream.book.machine.rejected == 0
        nursery.cancel_scope.cancel()


def test_only_the_book_moves_a_job_into_and_out_of_limbo() -> None:
    """In doubt, then proven absent (a look-up begun late enough did not find it): submitted anew, its name kept."""
    book = JobBook()
    job = book.new("desktop", 1)
    book.in_limbo(job, 5.0, "sbatch answer lost")
    assert book.limbo() == [job] and job.limbo_since == 5.0 and job.last_error == "sbatch answer lost"
    version = book.version
    book.proven_absent(job)
    assert book.limbo() == [] and job.limbo_since is None and book.version > version
    assert book.named("desktop") is job
