"""Property tests of the job machine: whatever Slurm reports, in whatever order,
a job never takes an illegal transition, never goes back in rank, and a final
state stays final with a stable exit code."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from statemachines.book import JobBook
from statemachines.job import FINAL_STATES, TRANSITIONS, JobState, Observation, Outcome, Resolve
from statemachines.slurm_states import LONG_NAMES, exit_code_of

CODES = sorted(LONG_NAMES)
REASONS = ["", "Resources", "Priority", "JobHeldUser", "JobHeldAdmin"]
observations = st.builds(
    Observation,
    code=st.sampled_from(CODES),
    reason=st.sampled_from(REASONS),
    nodes=st.lists(st.sampled_from(["node1", "node2"]), max_size=2, unique=True).map(tuple),
    elapsed=st.integers(0, 10**6),
)
outcomes = st.builds(
    Outcome,
    code=st.sampled_from(["", *CODES]),
    elapsed=st.integers(0, 10**6),
    rc_file=st.none() | st.integers(-1, 255),
)


def test_transition_table_never_leaves_a_final_state() -> None:
    for trigger, sources, dest in TRANSITIONS:
        assert not set(sources) & FINAL_STATES, trigger
        for source in sources:
            assert dest.rank >= source.rank, (trigger, source, dest)


class JobLife(RuleBasedStateMachine):
    """One book, a few jobs, and a Slurm that may say anything at any time."""

    def __init__(self) -> None:
        super().__init__()
        self.book = JobBook()
        self.clock = 0.0
        self.jobs: list[str] = []
        self.final_answers: dict[str, tuple[JobState, int | None]] = {}
        self.ranks: dict[str, int] = {}

    @rule(held=st.booleans())
    def submit(self, held: bool) -> None:
        n = len(self.jobs) + 1
        job = self.book.new(f"job-{n}", n)
        self.clock += 1
        self.book.submitted(job, str(100 + n), held=held, now=self.clock)
        self.jobs.append(job.jobid)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), obs=observations)
    def poll_sees(self, data: st.DataObject, obs: Observation) -> None:
        jobid = data.draw(st.sampled_from(self.jobs))
        self.clock += 1
        self.book.apply_poll({jobid: obs}, started_at=self.clock, now=self.clock)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), outcome=outcomes)
    def poll_misses_then_resolves(self, data: st.DataObject, outcome: Outcome) -> None:
        jobid = data.draw(st.sampled_from(self.jobs))
        self.clock += 1
        job = self.book.get(jobid)
        effects = self.book.apply_poll({}, started_at=self.clock, now=self.clock)
        if not job.final:
            assert Resolve(jobid) in effects
            self.book.resolved(job, outcome)

    @invariant()
    def no_illegal_transition(self) -> None:
        assert self.book.machine.rejected == 0

    @invariant()
    def never_backwards_and_final_is_final(self) -> None:
        for jobid in self.jobs:
            job = self.book.get(jobid)
            state = JobState(job.state)
            assert state.rank >= self.ranks.get(jobid, 0)
            self.ranks[jobid] = state.rank
            if jobid in self.final_answers:
                assert (state, job.exit_code) == self.final_answers[jobid]
            elif state.final:
                self.final_answers[jobid] = (state, job.exit_code)
                assert job.exit_code in {0, 1, -15, -9}

    @invariant()
    def upstream_sees_each_job_once(self) -> None:
        queued = {j for _, j in self.book.queued()}
        running = {j for _, j in self.book.running()}
        assert not queued & running
        for jobid in self.jobs:
            job = self.book.get(jobid)
            assert (jobid in queued or jobid in running) != job.final


TestJobLife = JobLife.TestCase
TestJobLife.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)


@given(obs=observations)
def test_a_final_observation_sets_the_contracts_exit_code(obs: Observation) -> None:
    book = JobBook()
    job = book.new("j", 1)
    book.submitted(job, "1", held=False, now=0)
    book.apply_poll({"1": obs}, started_at=1, now=1)
    if job.final:
        assert job.exit_code == exit_code_of(obs.code)
        assert job.termination == LONG_NAMES.get(obs.code, obs.code)


def test_a_job_submitted_after_the_poll_began_is_not_declared_gone() -> None:
    book = JobBook()
    job = book.new("late", 1)
    book.submitted(job, "7", held=False, now=10.0)
    assert book.apply_poll({}, started_at=9.5, now=10.5) == []
    assert book.apply_poll({}, started_at=11.0, now=11.5) == [Resolve("7")]


def test_an_illegal_trigger_is_refused_counted_and_changes_nothing() -> None:
    book = JobBook()
    job = book.new("j", 1)
    book.submitted(job, "1", held=False, now=0)
    book.apply_poll({"1": Observation(code="CD")}, started_at=1, now=1)
    assert book.machine.fire(job, "start") == []
    assert JobState(job.state) is JobState.COMPLETED and book.machine.rejected == 1
