"""Faults on the real cluster: the SSH server killed, slurmctld restarted, the daemon SIGKILLed, sbatch's answer lost.

Every fault is real and injected from outside the daemon: sshd processes are SIGKILLed, the
test cluster's slurmctld is stopped and started as ``tests/cluster/up`` starts it, the daemon
runs as ``slurm-downstream serve`` and is SIGKILLed. Each test checks what upstream would notice:

* every job upstream holds an id for is accounted for: listed where Slurm has it, or
  answered with its right exit status; none lost, none duplicated (one Slurm job per name),
  none reported finished while Slurm still runs it;
* during the outage every answer is either 503 or the last confirmed answer, never a 500
  and never something made up (an old snapshot passed off as news);
* the daemon recovers by itself; the recovery time, from the fault's end to the first good
  answer, is measured, printed (``pytest -s``), logged and appended as one JSON line per
  fault to ``$SLURM_DOWNSTREAM_FAULT_LOG`` (default /tmp/slurm-downstream-faults.jsonl).

The shared sshd on the login node's port 22 is never touched: SSH faults hit a private sshd set up like it
(same host key, same user). slurmctld is shared: it is held down only until the daemon's
snapshot has gone stale (about 10 s; 12 s at most), under the cluster lock so that a concurrent
``tests/cluster/up`` waits instead of rebuilding the cluster, and it is started again however
the test ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trio

from statemachines.slurm_states import PENDING_CODES, RUNNING_CODES, to_code
from tests.integration.conftest import cluster_env, settings, start_daemon, state, unique_name
from tests.support.cluster import current
from tests.support.processes import CLI, DaemonProcess, PrivateSSHD, Slurmctld, free_port, squeue, wait_until
from tests.support.upstream import Upstream, submit_args

FAULT_LOG = Path(os.environ.get("SLURM_DOWNSTREAM_FAULT_LOG", "/tmp/slurm-downstream-faults.jsonl"))
log = logging.getLogger("tests.faults")


# ---------------------------------------------------------------- jobs and what Slurm says of them
@dataclass
class Tracked:
    """A job upstream holds an id for, and the exit code it must end with."""

    name: str
    number: int
    jobid: str
    rc: int

    @property
    def ids(self) -> dict:
        return {"name": self.name, "number": self.number, "jobid": self.jobid}


async def submit(up: Upstream, tag: str, number: int, body: str, rc: int, **kw: object) -> Tracked:
    name = unique_name(tag)
    jobid, _ = await up.call("/submit", submit_args(name, number, body, **kw))
    return Tracked(name, number, jobid, rc)


async def slurm_jobs() -> dict[str, list[tuple[str, str]]]:
    """Upstream name -> [(job id, state code)] of every ``jarvice_`` job Slurm knows, by id.

    Root's ``squeue -t all`` for jobs it still shows, and the jobcomp log (22.05) or root's
    ``sacct -a`` (slurmdbd: 24.11, 26.05) for jobs it has already purged (the test cluster keeps
    finished jobs only MinJobAge = 10 s), so a duplicate is counted even after Slurm forgot it.
    """
    jobs: dict[str, dict[str, str]] = {}
    jobcomp = state() / "log" / "jobcomp.log"
    for line in jobcomp.read_text(errors="replace").splitlines() if jobcomp.exists() else []:
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("Name", "").startswith("jarvice_"):
            jobs.setdefault(fields["Name"][len("jarvice_"):], {})[fields["JobId"]] = to_code(fields["JobState"])
    if current().accounting == "slurmdbd":  # (slurmdbd answers while slurmctld is down, too)
        with trio.fail_after(30):
            acct = await trio.run_process(current().login("sacct", "-a", "-X", "-n", "-P", "-S", "2020-01-01",
                                                          "-o", "JobID,JobName,State"),
                                          capture_stdout=True, capture_stderr=True)
        for line in acct.stdout.decode(errors="replace").splitlines():
            jobid, name, st = line.split("|", 2)
            if name.startswith("jarvice_"):
                jobs.setdefault(name[len("jarvice_"):], {})[jobid] = to_code(st)
    for line in (await squeue(state(), "-t", "all", "-o", "%A|%j|%t")).splitlines():
        jobid, name, code = line.strip().split("|")
        if name.startswith("jarvice_"):
            jobs.setdefault(name[len("jarvice_"):], {})[jobid] = code
    return {name: sorted(ids.items(), key=lambda e: int(e[0])) for name, ids in jobs.items()}


def phase(code: str) -> str:
    return "queued" if code in PENDING_CODES else "running" if code in RUNNING_CODES else "finished"


async def lists(up: Upstream) -> tuple[int, list, list]:
    queued, running = await up.client.get("/queued"), await up.client.get("/running")
    if queued.status_code != 200 or running.status_code != 200:
        return max(queued.status_code, running.status_code), [], []
    return 200, queued.json(), running.json()


def told(name: str, queued: list, running: list) -> tuple[str, list[str]]:
    """Where upstream's lists put a job, and under which ids."""
    q = [jobid for n, jobid in queued if n == name]
    r = [jobid for n, jobid in running if n == name]
    return ("queued" if q else "running" if r else "finished"), q + r


async def disagreements(up: Upstream, jobs: list[Tracked]) -> list[str]:
    """How upstream's view differs from Slurm's for ``jobs`` (and whether a listed job exists at all); [] if none."""
    status, queued, running = await lists(up)
    if status != 200:
        return [f"/queued or /running answered {status}"]
    truth = await slurm_jobs()
    problems = []
    for job in jobs:
        entries = truth.get(job.name, [])
        if len(entries) != 1:
            problems.append(f"{job.name}: {len(entries)} Slurm jobs {entries} (want exactly 1)")
            continue
        jobid, code = entries[0]
        where, listed_ids = told(job.name, queued, running)
        if jobid != job.jobid or listed_ids not in ([], [jobid]):
            problems.append(f"{job.name}: upstream holds {job.jobid}, lists {listed_ids}, Slurm has {jobid}")
        elif where != phase(code):
            early = " (reported finished early)" if where == "finished" else ""
            problems.append(f"{job.name} ({jobid}): upstream sees {where}, Slurm {code}{early}")
    known = {(name, jobid) for name, entries in truth.items() for jobid, _ in entries}
    made_up = [entry for entry in queued + running if tuple(entry) not in known]
    if made_up:
        problems.append(f"listed but unknown to Slurm: {made_up}")
    return problems


async def agree(up: Upstream, jobs: list[Tracked], timeout: float) -> float:
    """Wait until upstream's view agrees with Slurm's; return how long that took."""
    start, problems = trio.current_time(), ["not asked yet"]
    with trio.move_on_after(timeout):
        while problems := await disagreements(up, jobs):
            await trio.sleep(0.1)
        return trio.current_time() - start
    raise AssertionError(f"upstream's view still differs from Slurm's after {timeout:g}s: {problems}")


async def where(up: Upstream, name: str) -> str:
    status, queued, running = await lists(up)
    return told(name, queued, running)[0] if status == 200 else f"unknown ({status})"


async def wait_where(up: Upstream, jobs: list[Tracked], phase_: str, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        for job in jobs:
            while await where(up, job.name) != phase_:
                await trio.sleep(0.1)


async def first_ok(fetch: Callable[[], Awaitable[httpx.Response]], timeout: float,
                   interval: float = 0.05) -> tuple[float, httpx.Response]:
    """Ask until the answer is 200; return when that was (trio time) and the answer."""
    with trio.fail_after(timeout):
        while True:
            try:
                response = await fetch()
            except httpx.TransportError:  # not listening yet
                response = None
            if response is not None and response.status_code == 200:
                return trio.current_time(), response
            await trio.sleep(interval)


async def settle_accounts(up: Upstream, jobs: list[Tracked], timeout: float = 60) -> tuple[int, int, list[str]]:
    """End every job and collect its exit status: (lost, duplicated, details).

    Held jobs are released and long ones terminated first (their ``rc`` says -15); a job is
    lost when its final answer is not the exit code it must end with.
    """
    details = []
    with trio.fail_after(timeout):
        for job in jobs:
            while await where(up, job.name) != "finished":
                await trio.sleep(0.2)
    truth = await slurm_jobs()
    duplicated = sum(1 for job in jobs if len(truth.get(job.name, [])) > 1)
    lost = 0
    for job in jobs:
        answer = await up.post("/exitstatus", job.ids)
        rc = answer.json()[0] if answer.status_code == 200 else None
        if rc != job.rc:
            lost += 1
            details.append(f"{job.name} ({job.jobid}): /exitstatus {answer.status_code} {answer.text[:200]}, want rc {job.rc}")
    return lost, duplicated, details


@contextlib.asynccontextmanager
async def early_finish_watch(up: Upstream, jobs: list[Tracked]) -> AsyncIterator[list[str]]:
    """For the block, keep asking upstream's lists; whenever one of ``jobs`` (the list may grow) is in neither,
    ask Slurm: if Slurm still has it queued or running, it was reported finished early. Yields the findings."""
    early: list[str] = []
    confirmed: set[str] = set()

    async def watch() -> None:
        while True:
            # the jobs as they were before asking: one appended while the lists were on their way (a submit
            # answered meanwhile) is not in them, and would look finished without having been asked about
            candidates = list(jobs)
            status, queued, running = await lists(up)
            gone = [j for j in candidates if status == 200 and j.name not in confirmed
                    and told(j.name, queued, running)[0] == "finished"]
            if gone:
                with contextlib.suppress(RuntimeError, trio.TooSlowError):  # squeue failed: ask again later
                    truth = await slurm_jobs()
                    for job in gone:
                        codes = [code for jobid, code in truth.get(job.name, []) if jobid == job.jobid]
                        if codes and phase(codes[0]) != "finished":
                            early.append(f"{job.name} ({job.jobid}) reported finished while Slurm has it {codes[0]}")
                        confirmed.add(job.name)
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        yield early
        nursery.cancel_scope.cancel()


def record(fault: str, **numbers: object) -> dict:
    entry = {"fault": fault, "at": datetime.now(UTC).isoformat(timespec="seconds"), **numbers}
    with FAULT_LOG.open("a") as out:
        out.write(json.dumps(entry) + "\n")
    summary = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()
                        if not isinstance(v, dict | list))
    log.warning("FAULT %s: %s", fault, summary)
    print(f"\nFAULT {fault}: {summary}")
    return entry


# ---------------------------------------------------------------- answers during an outage
@dataclass
class OutageProbe:
    """Asks upstream's questions during an outage and judges each answer.

    ``/queued`` and ``/running`` may repeat the last confirmed snapshot (for our jobs, exactly
    what they said before the fault) until it is stale, then must answer 503; ``/runstatus``
    of the job that runs on likewise. ``/exitstatus`` of ``ending``, a job last seen running
    that in fact ends during the outage, may say 409 (still running) while the snapshot is
    fresh; once ``/queued`` has called the snapshot stale, it must be 503 too: "still running"
    would then be made up. A 500, or any other answer, is a violation.
    """

    up: Upstream
    jobs: list[Tracked]
    running: Tracked
    ending: Tracked
    before_queued: list = field(default_factory=list)
    before_running: list = field(default_factory=list)
    before_runstatus: list = field(default_factory=list)
    answers: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    stale_at: float | None = None
    timeline: list[tuple[float, str, int]] = field(default_factory=list)  # (trio time, path, status) on change

    async def snapshot(self) -> None:
        status, queued, running = await lists(self.up)
        assert status == 200
        self.before_queued, self.before_running = self._ours(queued), self._ours(running)
        self.before_runstatus = await self.up.call("/runstatus", self.running.ids)  # type: ignore[assignment]

    def relative(self, since: float) -> list[tuple[float, str, int]]:
        """The timeline, in seconds since ``since`` (the fault)."""
        return [(round(t - since, 2), path, status) for t, path, status in self.timeline]

    def _ours(self, entries: list) -> list:
        names = {job.name for job in self.jobs}
        return sorted(e for e in entries if e[0] in names)

    def _bad(self, what: str, response: httpx.Response) -> None:
        self.violations.append(f"{what}: {response.status_code} {response.text[:200]}")

    def _unavailable(self, response: httpx.Response) -> bool:
        return response.status_code == 503 and "cluster unavailable" in response.json().get("error", "")

    async def once(self) -> None:
        for path, before in (("/queued", self.before_queued), ("/running", self.before_running)):
            response = await self.up.client.get(path)
            self.answers[f"{path} {response.status_code}"] += 1
            if [status for _, p, status in self.timeline if p == path][-1:] != [response.status_code]:
                self.timeline.append((trio.current_time(), path, response.status_code))
                log.info("during the outage: %s now answers %s", path, response.status_code)
            if self._unavailable(response):
                if path == "/queued" and self.stale_at is None:
                    self.stale_at = trio.current_time()
            elif response.status_code != 200 or self._ours(response.json()) != before:
                self._bad(f"GET {path} (before the fault: {before})", response)
        response = await self.up.post("/runstatus", self.running.ids)
        self.answers[f"/runstatus {response.status_code}"] += 1
        if not self._unavailable(response):
            same = response.status_code == 200 and [response.json()[i] for i in (0, 2)] == [
                self.before_runstatus[i] for i in (0, 2)]
            if not same:
                self._bad("/runstatus of a running job", response)
        response = await self.up.post("/exitstatus", self.ending.ids)
        self.answers[f"/exitstatus {response.status_code}"] += 1
        fresh_conflict = response.status_code == 409 and self.stale_at is None
        if not (self._unavailable(response) or fresh_conflict):
            self._bad("/exitstatus of a job last seen running" + (", snapshot stale" if self.stale_at else ""), response)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.once()
            await trio.sleep(0.25)


async def slurm_state(jobid: str) -> tuple[str, str]:
    """(state code, reason) of one job, ("", "") once Slurm has purged it."""
    try:
        out = await squeue(state(), "-t", "all", "-j", jobid, "-o", "%t|%r")
    except RuntimeError:
        return "", ""
    code, _, reason = out.strip().partition("|")
    return code, reason


@dataclass
class OutageActions:
    """Upstream's actions at the start of an outage: a new /submit, a /terminate and a /release.

    Each must answer 503, or do what it says: a submit may return a job id (one that reached
    Slurm, as the later checks for duplicates prove), /terminate and /release may answer true
    only if Slurm really did it (checked once the cluster is back). A submit refused with 400
    makes upstream give up a good job; "true" for an action that never happened is made up.
    """

    up: Upstream
    submit_args: dict
    terminate: Tracked
    release: Tracked
    answers: dict[str, httpx.Response] = field(default_factory=dict)

    async def run(self) -> None:
        async def one(path: str, args: dict) -> None:
            self.answers[path] = await self.up.post(path, args)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "/submit", self.submit_args)
            nursery.start_soon(one, "/terminate", self.terminate.ids)
            nursery.start_soon(one, "/release", self.release.ids)

    @property
    def done(self) -> bool:
        return len(self.answers) == 3

    def statuses(self) -> dict[str, int]:
        return {path: response.status_code for path, response in self.answers.items()}

    def did(self, path: str) -> bool:
        return self.answers[path].status_code == 200

    async def judge(self) -> list[str]:
        problems = []
        for path, response in self.answers.items():
            if response.status_code == 503 and "cluster unavailable" in response.json().get("error", ""):
                continue
            if path == "/submit" and response.status_code == 200:
                continue
            if path == "/terminate" and response.status_code == 200:
                code, _ = await slurm_state(self.terminate.jobid)
                if code not in ("CA", "CG", ""):
                    problems.append(f"/terminate during the outage answered true; Slurm still has the job {code}")
            elif path == "/release" and response.status_code == 200:
                _, reason = await slurm_state(self.release.jobid)
                if reason == "JobHeldUser":
                    problems.append("/release during the outage answered true; Slurm still holds the job")
            else:
                problems.append(f"{path} during the outage: {response.status_code} {response.text[:200]}")
        return problems


# ---------------------------------------------------------------- fixtures
@contextlib.contextmanager
def wrapper_dir() -> Iterator[Path]:
    """A directory the login node sees and the cluster's user can read (pytest's tmp_path is root-only and,
    for the versions in a Debian root, outside it), removed afterwards."""
    with current().workdir("faults-") as path:
        yield path


class SlowSbatch:
    """An ``sbatch`` first on the private sshd's PATH: the real one, then, while ``slow`` is on (at most 60 s),
    a pause before its answer, in which a test can cut the link (the job is in Slurm, the daemon has no id)."""

    def __init__(self, directory: Path) -> None:
        self.flag = directory / "slow"
        script = directory / "sbatch"
        script.write_text(f"#!/bin/sh\n/usr/bin/sbatch \"$@\"\nrc=$?\nn=0\n"
                          f"while [ -e {self.flag} ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done\n"
                          f"exit $rc\n")
        script.chmod(0o755)

    def slow(self, on: bool) -> None:
        if on:
            self.flag.touch()
        else:
            self.flag.unlink(missing_ok=True)


@dataclass
class SSHFault:
    sshd: PrivateSSHD
    sbatch: SlowSbatch


@pytest.fixture
async def ssh_fault() -> AsyncIterator[SSHFault]:
    """A private sshd (another port, the test cluster's config) whose sessions find a SlowSbatch first."""
    with wrapper_dir() as wrappers:
        sshd = PrivateSSHD(state(), wrappers / "sshd", path_prefix=wrappers)
        sbatch = SlowSbatch(wrappers)
        await sshd.start()
        try:
            yield SSHFault(sshd, sbatch)
        finally:
            sbatch.slow(False)
            sshd.stop()


def daemon_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JARVICE_")}
    env.update(cluster_env(), JARVICE_SLURM_POLL_INTERVAL="1.0", **overrides)
    return env


@contextlib.asynccontextmanager
async def in_process(nursery: trio.Nursery, **env: str) -> AsyncIterator[Upstream]:
    """The daemon in this process (conftest's start_daemon), polling every 0.5 s."""
    async with contextlib.aclosing(start_daemon(nursery, settings(JARVICE_SLURM_POLL_INTERVAL="0.5", **env))) as daemons:
        async for daemon in daemons:
            yield daemon.upstream
            return


@contextlib.asynccontextmanager
async def http(url: str) -> AsyncIterator[Upstream]:
    user, password = cluster_env()["JARVICE_SCHED_SERVER_KEY"].split(":", 1)
    async with httpx.AsyncClient(base_url=url, auth=(user, password), timeout=30) as client:
        yield Upstream(client)


@pytest.fixture
async def daemon_processes() -> AsyncIterator[list[DaemonProcess]]:
    """Daemons started by a test as real processes; whatever still runs is killed afterwards."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        await daemon.kill()


# ---------------------------------------------------------------- the tests
async def test_sshd_killed_mid_run_and_started_again(nursery: trio.Nursery, ssh_fault: SSHFault,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """SIGKILL the login node's sshd (listener and every connection's processes), hold it down until the
    daemon's snapshot is stale, start it again: the daemon reconnects by itself and loses nothing."""
    caplog.set_level(logging.INFO, logger="adapters.ssh")
    sshd = ssh_fault.sshd
    with trio.fail_after(90):
        jobs: list[Tracked] = []
        async with in_process(nursery, **sshd.env()) as up, early_finish_watch(up, jobs) as early:
            long = await submit(up, "ssh-long", 41, "echo long-out; sleep 300", rc=-15)
            held = await submit(up, "ssh-held", 42, "echo held-out", rc=0, held=True)
            short = await submit(up, "ssh-short", 43, "echo short-out; sleep 3; exit 3", rc=1)  # ends in the outage
            jobs += [long, held, short]
            await wait_where(up, [long, short], "running")
            await wait_where(up, [held], "queued")
            probe = OutageProbe(up, [long, held, short], running=long, ending=short)
            await probe.snapshot()

            during_name = unique_name("ssh-during")
            actions = OutageActions(up, submit_args(during_name, 44, "echo during-out"), terminate=long, release=held)
            injected = trio.current_time()
            killed = sshd.kill()
            assert killed, "the private sshd was not running"
            async with trio.open_nursery() as outage:
                await outage.start(probe.run)
                outage.start_soon(actions.run)
                await wait_until(lambda: probe.stale_at is not None and actions.done, 20,
                                 "/queued to answer 503 and the actions to be answered while sshd is down")
                await trio.sleep(0.5)  # a few more probes on the stale side
                outage.cancel_scope.cancel()
            ended = await sshd.start()

            recovered_at, _ = await first_ok(lambda: up.client.get("/queued"), 60)
            consistent = await agree(up, [long, held, short], 10)
            misanswered = await actions.judge()
            _, retry = await first_ok(lambda: up.post("/submit", actions.submit_args), 30)
            later = Tracked(during_name, 44, retry.json()[0], rc=0)
            jobs.append(later)
            await agree(up, [long, held, short, later], 10)
            if not actions.did("/release"):
                assert await up.call("/release", held.ids) is True
            assert await up.call("/terminate", long.ids) is True
            lost, duplicated, details = await settle_accounts(up, [long, held, short, later])
            short_answer = await up.call("/exitstatus", short.ids)
            reconnected = [r.getMessage() for r in caplog.records if "re-established" in r.getMessage()]
            attempts = re.search(r"after (\d+) failed attempt", reconnected[-1]) if reconnected else None

            record("sshd killed and restarted", processes_killed=len(killed), outage_s=ended - injected,
                   stale_after_s=probe.stale_at - injected, recovery_s=recovered_at - ended,
                   consistent_after_s=consistent, jobs=4, jobs_lost=lost, jobs_duplicated=duplicated,
                   failed_connects=int(attempts.group(1)) if attempts else None,
                   actions_during_outage=actions.statuses(), logins=sshd.logins(), answers=dict(probe.answers),
                   timeline=probe.relative(injected), violations=probe.violations + misanswered)
            assert (lost, duplicated) == (0, 0), details
            assert "short-out" in short_answer[2][0] and "FAILED" in short_answer[2][1]
            assert reconnected and sshd.logins() >= 2
            assert early == []
            assert misanswered == []
            assert probe.violations == []


async def test_slurmctld_restarted_under_running_jobs(nursery: trio.Nursery) -> None:
    """Stop slurmctld (state saved), keep it down until the daemon's snapshot is stale, start it as
    tests/cluster/up does: jobs run on across it, one that ended meanwhile gets its exit status,
    one submitted just before exists once, and a submit, terminate or release during the outage gets 503."""
    ctld = Slurmctld(state())
    with trio.fail_after(100):
        jobs: list[Tracked] = []
        async with in_process(nursery) as up, early_finish_watch(up, jobs) as early:
            across = await submit(up, "ctld-across", 51, "echo across-out; sleep 20; exit 0", rc=0)
            ends = await submit(up, "ctld-ends", 52, "echo ends-out; sleep 3; exit 3", rc=1)  # ends in the outage
            victim = await submit(up, "ctld-victim", 55, "echo victim-out; sleep 300", rc=-15)
            jobs += [across, ends, victim]
            await wait_where(up, [across, ends, victim], "running")
            just_before = await submit(up, "ctld-before", 53, "echo before-out", rc=0, held=True)
            jobs.append(just_before)
            probe = OutageProbe(up, [across, ends, victim, just_before], running=across, ending=ends)
            await probe.snapshot()
            during_name = unique_name("ctld-during")
            actions = OutageActions(up, submit_args(during_name, 54, "echo during-out"), terminate=victim,
                                    release=just_before)

            async with trio.open_nursery() as acting:  # actions outlive the outage if Slurm keeps them waiting
                injected = trio.current_time()
                async with ctld.down():
                    stopped = trio.current_time()
                    acting.start_soon(actions.run)
                    async with trio.open_nursery() as outage:
                        await outage.start(probe.run)
                        # down until the snapshot is stale and the actions are answered, at most ~12 s (shared cluster)
                        await wait_until(lambda: probe.stale_at is not None and (
                            actions.done or trio.current_time() > stopped + 12), 25, "/queued to answer 503")
                        outage.cancel_scope.cancel()
                ended = trio.current_time()  # slurmctld answers scontrol ping again
                recovered_at, _ = await first_ok(lambda: up.client.get("/queued"), 30)

            consistent = await agree(up, [across, ends, victim, just_before], 15)
            running_again = await where(up, across.name)
            misanswered = await actions.judge()
            _, retry = await first_ok(lambda: up.post("/submit", actions.submit_args), 30)
            later = Tracked(during_name, 54, retry.json()[0], rc=0)
            jobs.append(later)
            if not actions.did("/release"):
                assert await up.call("/release", just_before.ids) is True
            assert await up.call("/terminate", victim.ids) is True
            lost, duplicated, details = await settle_accounts(up, [across, ends, victim, just_before, later])
            across_answer = await up.call("/exitstatus", across.ids)
            ends_answer = await up.call("/exitstatus", ends.ids)

            record("slurmctld restarted", outage_s=ended - injected, stop_s=stopped - injected,
                   stale_after_s=probe.stale_at - injected, recovery_s=max(0.0, recovered_at - ended),
                   consistent_after_s=consistent, jobs=5, jobs_lost=lost, jobs_duplicated=duplicated,
                   actions_during_outage=actions.statuses(), answers=dict(probe.answers),
                   timeline=probe.relative(injected), violations=probe.violations + misanswered)
            assert running_again == "running"
            assert (lost, duplicated) == (0, 0), details
            assert "across-out" in across_answer[2][0] and "COMPLETED" in across_answer[2][1]
            assert "ends-out" in ends_answer[2][0] and "FAILED" in ends_answer[2][1]
            assert early == []
            assert misanswered == []
            assert probe.violations == []


async def test_daemon_sigkilled_and_restarted(daemon_processes: list[DaemonProcess], tmp_path: Path) -> None:
    """SIGKILL ``slurm-downstream serve`` with jobs held, running and about to end, and start another on the
    same journal: within one poll it lists exactly what Slurm has, answers for the job that ended while it was
    dead, repeats an exit status it gave before the kill, and a repeated submit returns the existing job."""
    journal = tmp_path / "journal.sqlite3"
    env = daemon_env(JARVICE_SLURM_JOURNAL=str(journal))
    port = free_port()
    poll_interval = float(env["JARVICE_SLURM_POLL_INTERVAL"])
    first = DaemonProcess(CLI, env, port, tmp_path / "daemon-1.log")
    daemon_processes.append(first)
    with trio.fail_after(90):
        await first.start()
        async with http(first.url) as up:
            await first_ok(lambda: up.client.get("/ready"), 30)
            done = await submit(up, "kill-done", 61, "echo done-out", rc=0)
            await wait_where(up, [done], "finished")
            answered = await up.call("/exitstatus", done.ids)
            held = await submit(up, "kill-held", 62, "echo held-out", rc=0, held=True)
            run1 = await submit(up, "kill-run1", 63, "echo run1-out; sleep 300", rc=-15)
            run2 = await submit(up, "kill-run2", 64, "echo run2-out; sleep 300", rc=-15)
            ends = await submit(up, "kill-ends", 65, "echo ends-out; sleep 4; exit 3", rc=1)  # ends while it is dead
            await wait_where(up, [run1, run2, ends], "running")
            await wait_where(up, [held], "queued")
            injected = trio.current_time()
            await first.kill()
            assert (await slurm_jobs())[ends.name][0][1] == "R", "the job meant to end while the daemon is dead ended before"
        await wait_until_finished_in_slurm(ends, 30)

        second = DaemonProcess(CLI, env, port, tmp_path / "daemon-2.log")
        daemon_processes.append(second)
        spawned = await second.start()
        async with http(second.url) as up:
            live_at, _ = await first_ok(lambda: up.client.get("/live"), 30)
            recovered_at, _ = await first_ok(lambda: up.client.get("/queued"), 30)
            active = [held, run1, run2, ends]
            at_first_answer = await disagreements(up, active)
            runstatus = [await up.post("/runstatus", job.ids) for job in (run1, run2)]
            ends_answer = await up.call("/exitstatus", ends.ids)
            again = await up.call("/exitstatus", done.ids)
            resubmitted = await up.call("/submit", submit_args(run1.name, run1.number, "echo run1-out; sleep 300"))
            resubmitted_held = await up.call("/submit", submit_args(held.name, held.number, "echo held-out", held=True))
            truth = await slurm_jobs()
            counts = {job.name: len(truth.get(job.name, [])) for job in active}
            assert await up.call("/release", held.ids) is True
            for job in (run1, run2):
                assert await up.call("/terminate", job.ids) is True
            lost, duplicated, details = await settle_accounts(up, [done, held, run1, run2, ends])

        record("daemon SIGKILLed and restarted", outage_s=spawned - injected, startup_s=live_at - spawned,
               recovery_s=recovered_at - spawned, first_poll_after_live_s=recovered_at - live_at, jobs=5,
               jobs_lost=lost, jobs_duplicated=duplicated, disagreements_at_first_answer=at_first_answer)
        assert at_first_answer == []
        assert recovered_at - live_at <= poll_interval + 3.0
        for response, job in zip(runstatus, (run1, run2), strict=True):
            nodes, _, label, _ = response.json()
            assert response.status_code == 200 and nodes and label == f"{job.name}/{job.number}/{job.jobid}"
        assert ends_answer[0] == 1 and "ends-out" in ends_answer[2][0] and "FAILED" in ends_answer[2][1]
        assert again == answered, "an /exitstatus answer given before the kill changed after the restart"
        assert resubmitted[0] == run1.jobid and resubmitted_held[0] == held.jobid
        assert set(counts.values()) == {1}, counts
        assert (lost, duplicated) == (0, 0), details


async def wait_until_finished_in_slurm(job: Tracked, timeout: float) -> None:
    with trio.fail_after(timeout):
        while True:
            entries = (await slurm_jobs()).get(job.name, [])
            if entries and phase(entries[0][1]) == "finished":
                return
            await trio.sleep(0.2)


async def wait_in_slurm(name: str, timeout: float) -> str:
    with trio.fail_after(timeout):
        while not (entries := (await slurm_jobs()).get(name)):
            await trio.sleep(0.1)
    assert len(entries) == 1, entries
    return entries[0][0]


async def test_link_lost_after_sbatch_took_effect(nursery: trio.Nursery, ssh_fault: SSHFault) -> None:
    """sbatch has queued the job but its answer is still on the way when the SSH link dies (the private
    sshd is SIGKILLed while a slow sbatch wrapper holds the answer): upstream gets 503, not a refusal, and
    the submit retried once sshd is back returns the job that did reach Slurm, never a second one."""
    sshd = ssh_fault.sshd
    with trio.fail_after(60):
        async with in_process(nursery, **sshd.env()) as up:
            name = unique_name("lost-answer")
            args = submit_args(name, 71, "echo lost-answer-out")
            first: dict[str, httpx.Response] = {}

            async def submit_once() -> None:
                first["response"] = await up.post("/submit", args)

            ssh_fault.sbatch.slow(True)
            async with trio.open_nursery() as n:
                n.start_soon(submit_once)
                slurm_id = await wait_in_slurm(name, 20)
                injected = trio.current_time()
                sshd.kill()
                ssh_fault.sbatch.slow(False)
                await wait_until(lambda: "response" in first, 20, "the cut-off submit to be answered")
            while_down = await up.post("/submit", args)  # retried at once: still no login node
            await trio.sleep(1.0)  # a short outage: upstream retries once the login node is back
            ended = await sshd.start()
            recovered_at, retry = await first_ok(lambda: up.post("/submit", args), 45)
            job = Tracked(name, 71, retry.json()[0], rc=0)
            lost, duplicated, details = await settle_accounts(up, [job])
            in_slurm = (await slurm_jobs()).get(name, [])

            record("ssh link lost after sbatch took effect", outage_s=ended - injected, recovery_s=recovered_at - ended,
                   jobs=1, jobs_lost=lost, jobs_duplicated=duplicated, first_submit=first["response"].status_code)
            assert len(in_slurm) == 1, f"one submit, {len(in_slurm)} Slurm jobs: {in_slurm}"
            assert retry.json()[0] == slurm_id
            assert (lost, duplicated) == (0, 0), details
            assert first["response"].status_code == 503, first["response"].text
            assert while_down.status_code == 503, while_down.text  # unavailable, not refused: the name is not lost


async def test_daemon_sigkilled_while_its_sbatch_is_in_flight(daemon_processes: list[DaemonProcess],
                                                              ssh_fault: SSHFault, tmp_path: Path) -> None:
    """The daemon dies after sbatch took effect but before it learnt the job id: its journal keeps the
    name reserved, so the new daemon answers the retried submit with the job Slurm has, at once."""
    journal = tmp_path / "journal.sqlite3"
    env = daemon_env(JARVICE_SLURM_JOURNAL=str(journal), **ssh_fault.sshd.env())
    port = free_port()
    first = DaemonProcess(CLI, env, port, tmp_path / "daemon-1.log")
    daemon_processes.append(first)
    name = unique_name("kill-sbatch")
    args = submit_args(name, 81, "echo in-flight-out")
    with trio.fail_after(60):
        await first.start()
        async with http(first.url) as up:
            await first_ok(lambda: up.client.get("/ready"), 30)
            ssh_fault.sbatch.slow(True)
            async with trio.open_nursery() as n:
                n.start_soon(_post_ignoring_hangup, up, args)
                slurm_id = await wait_in_slurm(name, 20)
                injected = trio.current_time()
                await first.kill()
                ssh_fault.sbatch.slow(False)
        second = DaemonProcess(CLI, env, port, tmp_path / "daemon-2.log")
        daemon_processes.append(second)
        spawned = await second.start()
        async with http(second.url) as up:
            # as soon as it listens, before its first poll may have shown the job
            recovered_at, retry = await first_ok(lambda: up.post("/submit", args), 30, interval=0.02)
            job = Tracked(name, 81, retry.json()[0], rc=0)
            lost, duplicated, details = await settle_accounts(up, [job])
        count = len((await slurm_jobs()).get(name, []))
        doubt = re.search(r"(\d+) submit\(s\) in doubt", second.log_text())

        record("daemon SIGKILLed while its sbatch was in flight", outage_s=spawned - injected,
               recovery_s=recovered_at - spawned, jobs=1, jobs_lost=lost, jobs_duplicated=duplicated)
        assert retry.json()[0] == slurm_id
        assert count == 1
        assert doubt and int(doubt.group(1)) >= 1, "the journal did not keep the submit in doubt"
        assert (lost, duplicated) == (0, 0), details


async def _post_ignoring_hangup(up: Upstream, args: dict) -> None:
    with contextlib.suppress(httpx.TransportError):
        await up.post("/submit", args)
