"""Headless Chromium driven over the DevTools protocol (CDP), from trio.

Why CDP and not ``--dump-dom``: the test must see what a user would (console
errors, uncaught exceptions, Content-Security-Policy refusals, the DOM after
scripts ran) and send HTTP Basic credentials without putting them in the URL.
CDP gives each as an event or a call; ``trio-websocket`` carries it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

BROWSER = "chromium"


class CDPError(Exception):
    pass


class Page:
    """One tab: commands in its session, and every event it sent, in order."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.events: list[dict] = []

    async def call(self, method: str, **params: Any) -> dict:
        return await self.browser.call(method, session=self.session, **params)

    async def wait_for(self, method: str, timeout: float = 20) -> dict:
        with trio.fail_after(timeout):
            while True:
                for event in self.events:
                    if event["method"] == method:
                        return event
                await self.browser.changed.wait()

    async def open(self, url: str, timeout: float = 20) -> None:
        """Navigate and wait for the load event (scripts have run)."""
        self.events.clear()
        answer = await self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {answer['errorText']}")
        await self.wait_for("Page.loadEventFired", timeout)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise CDPError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def problems(self) -> list[str]:
        """What a user with the console open would see as errors: exceptions, console.error, CSP refusals."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"uncaught: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"{entry['source']}: {entry['text']} ({entry.get('url', '')})")
        return found


class Browser:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._ids = 0
        self._answers: dict[int, dict] = {}
        self._pages: dict[str, Page] = {}
        self.changed = trio.Event()

    async def read(self) -> None:
        async for raw in _messages(self.ws):
            message = json.loads(raw)
            if "id" in message:
                self._answers[message["id"]] = message
            elif message.get("sessionId") in self._pages:
                self._pages[message["sessionId"]].events.append(message)
            self.changed.set()
            self.changed = trio.Event()

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        self._ids += 1
        call_id = self._ids
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.ws.send_message(json.dumps(message))
        with trio.fail_after(20):
            while call_id not in self._answers:
                await self.changed.wait()
        answer = self._answers.pop(call_id)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def new_page(self, headers: dict[str, str] | None = None) -> Page:
        target = (await self.call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await self.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        page = self._pages[session] = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.call(f"{domain}.enable")
        if headers:
            await page.call("Network.setExtraHTTPHeaders", headers=headers)
        return page


async def _messages(ws: WebSocketConnection) -> AsyncIterator[str]:
    from trio_websocket import ConnectionClosed

    while True:
        try:
            yield await ws.get_message()
        except ConnectionClosed:
            return


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium of our own (own profile, own process group), closed and reaped on exit."""
    if shutil.which(BROWSER) is None:
        pytest.fail("chromium is not installed; run tests/browser/install (make test does)")
    profile = tempfile.mkdtemp(prefix="sd-chromium-")
    log = open(Path(profile).parent / f"{Path(profile).name}.log", "wb")  # noqa: SIM115 - closed below
    process = await trio.lowlevel.open_process(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        with trio.fail_after(30):
            while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
                if process.poll() is not None:
                    pytest.fail(f"chromium exited with {process.returncode}: {Path(log.name).read_text()[-2000:]}")
                await trio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        async with open_websocket_url(f"ws://127.0.0.1:{port}{path}", max_message_size=16 << 20) as ws:
            browser = Browser(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(browser.read)
                try:
                    yield browser
                finally:
                    with trio.move_on_after(5):
                        await ws.send_message(json.dumps({"id": 0, "method": "Browser.close"}))
                    nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(10):
            await process.wait()
        with contextlib.suppress(ProcessLookupError):  # renderers left behind: our own group (start_new_session)
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
        os.unlink(log.name)
