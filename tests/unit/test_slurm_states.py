"""Slurm state codes -> JARVICE phases and exit codes (the contract's /running, /queued, /exitstatus)."""

from __future__ import annotations

import pytest

from statemachines.slurm_states import (
    LONG_NAMES,
    Phase,
    exit_code_of,
    long_name,
    phase_of,
    to_code,
)

CONTRACT_RUNNING = ["R", "RH", "RS", "SI", "ST", "S", "CG", "SO"]
CONTRACT_QUEUED = ["CF", "PD", "RD", "RF"]
FINISHED = ["CD", "F", "NF", "OOM", "CA", "DL", "PR", "TO", "BF", "RV"]


@pytest.mark.parametrize("code", CONTRACT_RUNNING)
def test_running_codes_are_running(code: str) -> None:
    assert phase_of(code) is Phase.RUNNING
    # a reason never turns a running job into a queued one
    assert phase_of(code, "JobHeldUser") is Phase.RUNNING


@pytest.mark.parametrize("code", CONTRACT_QUEUED)
def test_queued_codes_are_pending(code: str) -> None:
    assert phase_of(code) is Phase.PENDING
    assert phase_of(code, "Resources") is Phase.PENDING
    assert phase_of(code, "Priority") is Phase.PENDING


@pytest.mark.parametrize("reason", ["JobHeldUser", "JobHeldAdmin"])
def test_pending_job_held_by_a_human_is_held(reason: str) -> None:
    assert phase_of("PD", reason) is Phase.HELD


def test_requeued_job_goes_back_to_the_queue() -> None:
    assert phase_of("RQ") is Phase.PENDING


@pytest.mark.parametrize("code", FINISHED)
def test_terminal_codes_are_finished(code: str) -> None:
    assert phase_of(code) is Phase.FINISHED


@pytest.mark.parametrize("code", ["", "XX", "NEW_STATE"])
def test_unknown_codes_are_never_taken_for_finished(code: str) -> None:
    """A code from a newer Slurm must not end a job that may still run."""
    assert phase_of(code) is Phase.UNKNOWN


def test_special_exit_is_held_not_finished() -> None:
    assert phase_of("SE") is Phase.HELD


@pytest.mark.parametrize(
    ("code", "expected"),
    [("CD", 0), ("F", 1), ("NF", 1), ("OOM", 1), ("CA", -15), ("DL", -15), ("PR", -15),
     ("TO", -9), ("BF", -9), ("RV", -9), ("SE", -9), ("", -9), ("WHATEVER", -9)],
)
def test_exit_codes(code: str, expected: int) -> None:
    assert exit_code_of(code) == expected


@pytest.mark.parametrize(
    ("state", "code"),
    [
        ("COMPLETED", "CD"),
        ("CANCELLED", "CA"),
        ("CANCELLED by 1000", "CA"),
        ("CANCELLED+", "CA"),
        ("cancelled by 0", "CA"),
        ("  RUNNING  ", "R"),
        ("PENDING", "PD"),
        ("TIMEOUT", "TO"),
        ("OUT_OF_MEMORY", "OOM"),
        ("NODE_FAIL", "NF"),
        ("FAILED", "F"),
        ("COMPLETING", "CG"),
        ("REQUEUE_HOLD", "RH"),
        ("R", "R"),
        ("PD", "PD"),
        ("cd", "CD"),
    ],
)
def test_to_code_accepts_long_names_and_codes(state: str, code: str) -> None:
    assert to_code(state) == code


def test_every_long_name_round_trips() -> None:
    for code, long in LONG_NAMES.items():
        assert to_code(long) == code
        assert to_code(code) == code
        assert long_name(code) == long


def test_long_name_of_unknown_code() -> None:
    assert long_name("") == "UNKNOWN"
    assert long_name("ZZ") == "ZZ"


def test_cancelled_by_uid_finishes_with_minus_15() -> None:
    """What sacct prints for a scancel'ed job must end up as JARVICE's 'cancelled' exit code."""
    code = to_code("CANCELLED by 1001")
    assert phase_of(code) is Phase.FINISHED
    assert exit_code_of(code) == -15
