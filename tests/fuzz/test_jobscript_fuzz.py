"""adapters.jobscript.build under the same hostile /submit arguments, without the cluster, many more examples.

The cluster tests (test_upstream_fuzz.py) send each example through the real daemon;
here build() alone takes thousands: it refuses with InvalidRequest naming the
problem, never with another exception, and what it accepts is safe to hand to sbatch.
"""

from __future__ import annotations

import json
import shlex

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.errors import InvalidRequest
from adapters.jobscript import MAX_SBATCH_ARGS, ScriptEnvironment, build
from tests.fuzz.strategies import EXECUTOR, invalid_submits

ENV = ScriptEnvironment(scratch_dir="/scratch/jarvice")


def args_of(body: bytes | None, content_type: str | None) -> object:
    """The ``args`` value the daemon would parse from a Call's body."""
    from urllib.parse import parse_qs

    assert body is not None
    raw = parse_qs(body.decode(), keep_blank_values=True)["args"][0] if content_type and "urlencoded" in content_type else body
    return json.loads(raw)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_build_refuses_hostile_submits_by_name(data: st.DataObject) -> None:
    call = data.draw(invalid_submits("20261123-x-alice_unit"))
    try:
        args = args_of(call.body, call.content_type)
    except (ValueError, RecursionError, KeyError):
        return  # the daemon refuses these before build() (tested on the real daemon)
    if not isinstance(args, dict):
        return
    try:
        submission = build(args, EXECUTOR, ENV)
    except InvalidRequest as exc:
        assert any(word.lower() in str(exc).lower() for word in call.words if word != "'args'") or "Slurm" in str(exc), (
            call.note, str(exc))
    else:
        # only a mutation Slurm itself must judge may pass build(): its sbatch line is still one safe command
        line = " ".join(shlex.quote(a) for a in submission.sbatch_args)
        assert len(line) <= MAX_SBATCH_ARGS
        assert not any(c in a for a in submission.sbatch_args for c in "\n\r\0"), submission.sbatch_args
        raise AssertionError(f"an invalid submit was accepted: {call.note}")
