"""One real daemon per test module, served from its own thread.

The daemon is the real one (``daemon.server.serve``) on a real socket, speaking
SSH to the test cluster's OpenSSH; it runs its own trio loop in a thread so the
hypothesis tests can stay plain synchronous functions (``@given`` does not mix
with async tests) and one daemon serves every example of a module.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import httpx
import pytest
import trio
from quart_trio import QuartTrio

from config.settings import Settings
from daemon import server
from tests.fuzz.strategies import Call, canaries
from tests.integration.conftest import settings, slurm

pytestmark = pytest.mark.cluster


class LiveDaemon:
    """A running daemon: its URL, settings, the Quart app it serves, and a client authenticated as upstream."""

    def __init__(self, url: str, settings: Settings, app: QuartTrio, client: httpx.Client) -> None:
        self.url = url
        self.settings = settings
        self.app = app
        self.client = client

    def __repr__(self) -> str:
        # hypothesis prints fixtures of a failing example with its own pretty-printer, which
        # walks dataclass fields and ignores repr=False: Settings would show the SSH key.
        return f"LiveDaemon({self.url})"


@contextmanager
def daemon_thread(conf: Settings) -> Iterator[LiveDaemon]:
    """Serve ``conf`` on 127.0.0.1 (a free port) until the block ends; fail if it does not get ready."""
    started: queue.Queue = queue.Queue()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(server.serve, conf, "127.0.0.1", 0, handle_signals=False))
            started.put((binds[0], trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            started.put(exc)

    apps: list[QuartTrio] = []
    real_create_app = server.create_app

    def recording_create_app(*args: object, **kwargs: object) -> QuartTrio:
        apps.append(real_create_app(*args, **kwargs))  # type: ignore[arg-type]
        return apps[-1]

    thread = threading.Thread(target=run, name="daemon-under-test", daemon=True)
    with pytest.MonkeyPatch.context() as patch:  # record the app serve() builds, to enumerate its routes
        patch.setattr(server, "create_app", recording_create_app)
        thread.start()
        got = started.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    url, token, scope = got
    user, password = conf.server_key.split(":", 1)
    try:
        with httpx.Client(base_url=url, auth=(user, password), timeout=60) as client:
            for _ in range(300):
                if client.get("/ready").status_code == 200:
                    break
                threading.Event().wait(0.1)
            else:
                pytest.fail("the daemon did not get ready in 30 s")
            yield LiveDaemon(url, conf, apps[-1], client)
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=30)


def listed(client: httpx.Client) -> set[str]:
    """Names the daemon reports as queued or running."""
    names = set()
    for path in ("/queued", "/running"):
        response = client.get(path)
        assert response.status_code == 200, response.text
        names |= {name for name, _ in response.json()}
    return names


def slurm_job_names() -> list[str]:
    """Every job name the cluster knows (all users, all states), asked as root."""
    result = slurm("squeue", "-h", "-t", "all", "-o", "%j")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def wait_gone(client: httpx.Client, name: str, timeout: float = 90) -> None:
    """Until the daemon no longer lists the job as queued or running."""
    deadline = time.monotonic() + timeout
    while name in listed(client):
        assert time.monotonic() < deadline, f"job {name} still listed after {timeout}s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def live_daemon() -> Iterator[LiveDaemon]:
    with daemon_thread(settings()) as daemon:
        yield daemon


TRACEBACK_MARKS = ("Traceback", 'File "')


def send(client: httpx.Client, call: Call) -> httpx.Response:
    headers = {"content-type": call.content_type.encode("latin-1")} if call.content_type is not None else {}
    return client.request(call.method, call.path, content=call.body, headers=headers)


def post_args(client: httpx.Client, path: str, args: object) -> httpx.Response:
    """As upstream posts: one form field, ``args``, holding JSON."""
    return client.post(path, data={"args": json.dumps(args)})


def check_answer(call: Call, response: httpx.Response) -> None:
    """What every answer to hostile input must be, whatever the input."""
    text = response.text
    where = f"{call.method} {call.path[:300]} [{call.note[:300]}] -> {response.status_code} {text[:400]!r}"
    assert response.status_code in call.expect, where
    for mark in TRACEBACK_MARKS:
        assert mark not in text, where
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), where
        error = response.json().get("error")
        assert isinstance(error, str) and error, where
        if call.words:
            assert any(word.lower() in error.lower() for word in call.words), f"message names none of {call.words}: {where}"
    assert not canaries(), f"an injection ran: {canaries()} after {where}"
