"""RestSlurm's answers to what slurmrestd says, on a scripted transport (httpx.MockTransport).

The real slurmrestd runs in the contract and integration tests; here its recorded answers (and
the failures that cannot be made on demand: a lost answer, a 401 mid-run, slurmctld timing out
behind slurmrestd) are played back so each mapping to the daemon's errors is pinned down:
503-class (``ClusterUnavailable``) keeps jobs as they were, a refusal (``CommandFailed``) is a
400 naming Slurm's reason, and a lost submit answer (``AnswerLost``) makes the daemon look the
job up instead of submitting twice.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from adapters import jobscript
from adapters.errors import AnswerLost, ClusterUnavailable, CommandFailed, SlurmUnreachable
from adapters.slurm import rest as rest_module
from adapters.slurm import rest_shapes as shapes
from adapters.slurm.rest import RestSlurm
from adapters.tokens import TokenRefused
from tests.support.upstream import submit_args

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurmrestd"


def recorded(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


class Tokens:
    """A token source that hands out numbered tokens and records invalidations."""

    description = "the test's token source"
    username: str | None = None
    username = "jarvice"

    def __init__(self) -> None:
        self.issued = 0
        self.invalidated: list[str] = []

    async def token(self) -> str:
        if not self.issued or (self.invalidated and self.invalidated[-1] == f"t{self.issued}"):
            self.issued += 1
        return f"t{self.issued}"

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)


Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, tokens: Tokens | None = None) -> RestSlurm:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    rest = RestSlurm("http://slurmrestd:6820", tokens or Tokens(), user="jarvice", http=http)
    rest.parser = "v0.0.42"
    return rest


def submission() -> jobscript.Submission:
    args = submit_args("rest-unit", 3, "echo hi", marker=False)
    return jobscript.build(args, "singularity", jobscript.ScriptEnvironment(scratch_dir="/scratch"))


async def test_a_refused_token_is_retried_once_with_a_fresh_one() -> None:
    tokens = Tokens()
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["X-SLURM-USER-TOKEN"])
        if request.headers["X-SLURM-USER-TOKEN"] == "t1":  # as 24.11 and 26.05 refuse an expired token
            return httpx.Response(511, json={"errors": [{"error_number": 1007, "error": "Protocol authentication error"}]})
        return httpx.Response(200, json=recorded("held-24.11-v0.0.42.json"))

    poll = await client(handler, tokens).poll()
    assert seen == ["t1", "t2"] and tokens.invalidated == ["t1"]
    assert [j.code for j in poll.jobs.values()] == ["PD"]


async def test_a_token_refused_twice_is_unavailable_naming_its_source() -> None:
    rest = client(lambda request: httpx.Response(401))
    with pytest.raises(ClusterUnavailable, match="the test's token source"):
        await rest.poll()


async def test_slurmctld_not_answering_behind_slurmrestd_is_unreachable_not_a_refusal() -> None:
    body = {"jobs": [], "errors": [{"description": "Unable to contact slurm controller (connect failure)",
                                    "error_number": 1800, "error": "Unable to contact slurm controller"}]}
    rest = client(lambda request: httpx.Response(500, json=body))
    with pytest.raises(SlurmUnreachable):
        await rest.poll()
    with pytest.raises(SlurmUnreachable):  # sbatch's fate unknown: the caller looks the job up
        await rest.submit(submission())


async def test_slurmrestd_down_or_failing_is_unavailable() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ClusterUnavailable, match="unreachable"):
        await client(refused).poll()
    with pytest.raises(ClusterUnavailable, match="HTTP 502"):
        await client(lambda request: httpx.Response(502, text="Bad Gateway")).poll()


async def test_a_submit_whose_answer_is_lost_is_in_doubt() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    with pytest.raises(AnswerLost):
        await client(timeout).submit(submission())
    with pytest.raises(AnswerLost):
        await client(lambda request: httpx.Response(200, json={"errors": []})).submit(submission())


async def test_a_refused_job_is_a_refusal_with_slurms_words() -> None:
    rest = client(lambda request: httpx.Response(500, json=recorded("submit-refused-24.11-v0.0.42.json")))
    with pytest.raises(CommandFailed, match="Invalid partition name specified"):
        await rest.submit(submission())


async def test_a_submit_sends_the_script_and_returns_slurms_job_id() -> None:
    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"job_id": 41, "step_id": "batch", "errors": [], "warnings": []})

    assert await client(handler).submit(submission()) == "41"
    (body,) = sent
    assert body["job"]["name"] == "jarvice_rest-unit" and body["job"]["script"].startswith("#!/bin/bash")


async def test_nothing_changed_reuses_the_last_complete_listing() -> None:
    asked: list[str | None] = []
    answers = [recorded("running-24.11-v0.0.42.json"), recorded("nochange-24.11-v0.0.42.json")]

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("update_time"))
        return httpx.Response(200, json=answers[min(len(asked), 2) - 1])

    rest = client(handler)
    first = await rest.poll()
    second = await rest.poll()
    assert asked[0] is None and asked[1] == str(recorded("running-24.11-v0.0.42.json")["last_update"]["number"])
    assert second.complete and set(second.jobs) == set(first.jobs) == {"5", "6"}


async def test_a_large_listing_is_read_off_the_trio_thread_and_kept_slim(monkeypatch: pytest.MonkeyPatch) -> None:
    """A complete listing above LARGE_ANSWER is parsed in a worker thread; "nothing changed" answers from what was
    kept of it (only the fields a SlurmJob is made of) give the same jobs as the listing itself."""
    monkeypatch.setattr(rest_module, "LARGE_ANSWER", 0)
    answers = [recorded("running-24.11-v0.0.42.json"), recorded("nochange-24.11-v0.0.42.json")]
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json=answers[min(calls, 2) - 1])

    rest = client(handler)
    rest.wall = lambda: 1_800_000_000.0  # the same "now" for both polls: elapsed times compare equal
    first = await rest.poll()
    second = await rest.poll()
    assert set(first.jobs) == {"5", "6"} and second.jobs == first.jobs
    assert all(set(record) <= set(rest_module._KEPT) for record in rest._listed)  # noqa: SLF001
    assert gc.isenabled()  # the collector paused for the parse only


def test_parsing_pauses_the_collector_and_restores_it_even_when_nested_or_failing() -> None:
    with rest_module._collector_paused():  # noqa: SLF001
        assert not gc.isenabled()
        assert rest_module._loads(b'{"a": 1}') == {"a": 1}  # noqa: SLF001 - nested: still paused after
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError):
        rest_module._loads_ours(b"{not json")  # noqa: SLF001
    assert gc.isenabled()
    answer = rest_module._loads_ours(json.dumps(recorded("running-24.11-v0.0.42.json")).encode())  # noqa: SLF001
    assert {r["job_id"] for r in answer["jobs"]} == {5, 6} and all(len(r) <= len(rest_module._KEPT) for r in answer["jobs"])  # noqa: SLF001


@pytest.mark.parametrize("indent", [None, 2, "\t"])
@pytest.mark.parametrize("fixture", ["running-24.11-v0.0.42.json", "nochange-24.11-v0.0.42.json",
                                     "jobs-24.11-v0.0.40.json"])
def test_a_listing_read_job_by_job_is_the_listing_read_whole_and_cut(fixture: str, indent: object) -> None:
    document = recorded(fixture)
    document["jobs"] = [*document.get("jobs", []), {"name": "someone_else", "job_id": 9}]
    content = json.dumps(document, indent=indent, ensure_ascii=False).encode()  # type: ignore[arg-type]
    whole = json.loads(content)
    whole["jobs"] = rest_module._slim(whole["jobs"])  # noqa: SLF001
    assert rest_module._scan_listing(content.decode()) == whole  # noqa: SLF001
    assert rest_module._loads_ours(content) == whole  # noqa: SLF001


@pytest.mark.parametrize("content", [b"[1, 2]", b'{"jobs": [1,, 2]}', b'{"jobs": []} x', b'{"a" 1}'])
def test_what_is_not_a_listing_is_read_whole_or_refused(content: bytes) -> None:
    with pytest.raises(ValueError):
        rest_module._scan_listing(content.decode())  # noqa: SLF001
    try:
        assert rest_module._loads_ours(content) == json.loads(content)  # noqa: SLF001
    except ValueError:
        pass  # not JSON at all: _request reads it as {}
    assert gc.isenabled()


async def test_the_oldest_parsers_always_get_a_complete_listing() -> None:
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("update_time"))
        return httpx.Response(200, json=recorded("jobs-24.11-v0.0.40.json"))

    rest = client(handler)
    rest.parser = "v0.0.40"  # they answer 422 to a numeric update_time
    await rest.poll()
    await rest.poll()
    assert asked == [None, None]


async def test_an_unknown_job_is_known_nowhere_and_cannot_be_cancelled() -> None:
    rest = client(lambda request: httpx.Response(404, json=recorded("job-unknown-24.11-v0.0.42.json")))
    facts = await rest.inspect("987654321")
    assert facts.squeue is None and facts.accounting is None
    with pytest.raises(CommandFailed, match="Invalid job id"):
        await rest.cancel("987654321", "anything")


async def test_a_client_the_token_endpoint_refuses_is_unavailable_not_an_internal_error() -> None:
    class Refused(Tokens):
        async def token(self) -> str:
            raise TokenRefused("token endpoint https://kc/token refused client nimbix-slurm-sched-client: unauthorized_client")

    rest = client(lambda request: httpx.Response(200, json={}), Refused())
    with pytest.raises(ClusterUnavailable, match="unauthorized_client"):
        await rest.poll()


async def test_with_slurmdbd_a_purged_job_has_its_record_and_coordinators_are_read() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/slurm/v0.0.42/job/"):  # slurmctld purged it
            return httpx.Response(404, json=recorded("job-unknown-24.11-v0.0.42.json"))
        if path == "/slurmdb/v0.0.42/job/12":
            return httpx.Response(200, json=recorded("dbjob-failed-24.11-v0.0.42.json"))
        if path == "/slurmdb/v0.0.42/user/jarvice" and request.url.params.get("with_coords") == "true":
            return httpx.Response(200, json=recorded("user-coords-24.11-v0.0.42.json"))
        return httpx.Response(404, json={"errors": [{"error": "no such path"}]})

    rest = client(handler)
    rest.accounting = "slurmdbd"  # as preflight sets it when slurmrestd serves /slurmdb/...
    facts = await rest.inspect("12")
    assert facts.squeue is None and facts.accounting is not None and facts.accounting.exit_code == 3
    assert await rest.coordinated_accounts() == ["acct_alice", "acct_bob"]
    rest.accounting = "controller"
    assert (await rest.inspect("12")).accounting is None and await rest.coordinated_accounts() is None


async def test_slurmdbd_not_answering_is_unavailable_not_nothing_known() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/slurm/"):
            return httpx.Response(404, json=recorded("job-unknown-24.11-v0.0.42.json"))
        return httpx.Response(502, text="Bad Gateway")

    rest = client(handler)
    rest.accounting = "slurmdbd"
    with pytest.raises(ClusterUnavailable):  # else the job would end UNKNOWN while slurmdbd is merely down
        await rest.inspect("12")
    body = {"jobs": [], "errors": [{"error_number": 7000, "error": "Unable to connect to database"}]}
    rest = client(lambda request: httpx.Response(404, json=recorded("job-unknown-24.11-v0.0.42.json"))
                  if request.url.path.startswith("/slurm/") else httpx.Response(500, json=body))
    rest.accounting = "slurmdbd"
    with pytest.raises(ClusterUnavailable, match="Unable to connect to database"):
        await rest.inspect("12")


@pytest.mark.parametrize("fixture", ["running-24.11-v0.0.42.json", "running-26.05-v0.0.45.json",
                                     "held-24.11-v0.0.42.json", "jobs-24.11-v0.0.40.json"])
def test_the_fields_kept_of_a_listing_are_all_a_job_is_read_from(fixture: str) -> None:
    """The poll keeps a few fields per job: the jobs read from them are the jobs read from whole records
    (the Slurm user included: adoption takes it from there)."""
    whole = recorded(fixture)
    cut = rest_module._loads_ours(json.dumps(whole).encode())  # noqa: SLF001
    assert shapes.jobs_of(cut, now=1e10) == shapes.jobs_of(whole, now=1e10)
    assert all(job.user for job in shapes.jobs_of(cut, now=1e10)[0].values())
