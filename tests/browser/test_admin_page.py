"""The admin page in a real browser: headless Chromium (Debian's, tests/browser/install) over CDP.

The page is served by the daemon's own app (create_app, with its HTTP Basic hook)
on a real hypercorn socket; Chromium sends the credentials as an Authorization
header (CDP ``Network.setExtraHTTPHeaders``), never in the URL. The state is the
realistic dict of tests/browser/sample.py, whose job name and errors carry markup
that must reach the screen as text.
"""

from __future__ import annotations

import base64

import pytest
import trio
from quart import Response

from daemon.logs import add_secret
from tests.browser.cdp import CDPError, chromium
from tests.browser.sample import HOSTILE, KEY, SECRET, admin_app
from tests.browser.serving import serve_app
from tests.integration.conftest import Daemon, unique_name
from tests.support.upstream import submit_args

AUTH = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}


async def test_admin_page_renders_jobs_and_the_diagram_without_errors(nursery: trio.Nursery) -> None:
    add_secret(SECRET)
    url = await serve_app(nursery, admin_app())
    async with chromium() as browser:
        page = await browser.new_page(headers=AUTH)
        await page.open(f"{url}/admin")
        assert page.problems() == []
        assert await page.evaluate("document.title") == "slurm-downstream admin"
        rows = await page.evaluate(
            "[...document.querySelectorAll('#jobs tr.job')].map(r => [r.dataset.jobid, r.querySelector('.name')"
            ".firstChild.textContent, r.querySelector('.state').textContent])")
        assert rows == [["1234", HOSTILE, "proxying"], ["1235", "20261123-batch-bob", "failed"]]
        assert await page.evaluate("typeof window.alert === 'function' && document.querySelectorAll('script').length") == 1
        assert await page.evaluate("document.querySelectorAll('#jobs img, #jobs b').length") == 0
        history = await page.evaluate(
            "[...document.querySelectorAll('#jobs tr.job')[0].querySelectorAll('li')].map(li => li.textContent)")
        assert history[2] == "2026-11-23T20:30:03.500Z running"
        svg = await page.evaluate(
            "(() => { const s = document.querySelector('#diagram svg'); const r = s.getBoundingClientRect();"
            " return [r.width, r.height, [...s.querySelectorAll('g.sd-state')].map(g => g.dataset.state)]; })()")
        width, height, states = svg
        assert width > 600 and height > 150
        assert states == ["queued", "submitted", "held", "running", "proxying", "completed", "failed", "cancelled"]
        assert await page.evaluate("document.getElementById('auto-refresh').checked") is True  # the page's script ran
        visible = ("(() => { const f = document.getElementById('job-filter'); f.value = %r;"
                   " f.dispatchEvent(new Event('input'));"
                   " return [...document.querySelectorAll('#jobs tr.job')].filter(r => !r.hidden)"
                   ".map(r => r.dataset.jobid); })()")
        assert await page.evaluate(visible % "failed node1") == ["1235"]
        assert await page.evaluate(visible % "") == ["1234", "1235"]
        text = await page.evaluate("document.body.innerText")
        assert SECRET not in text and "docker login failed with ***" in text
        # the JSON link from the page works with the same credentials
        await page.open(f"{url}/admin/state")
        assert HOSTILE in await page.evaluate("document.body.innerText")
    nursery.cancel_scope.cancel()


async def test_without_credentials_the_browser_is_asked_for_them(nursery: trio.Nursery) -> None:
    url = await serve_app(nursery, admin_app())
    async with chromium() as browser:
        page = await browser.new_page()
        with pytest.raises(CDPError, match="ERR_INVALID_AUTH_CREDENTIALS"):  # headless: no login dialog to show
            await page.open(f"{url}/admin")
        statuses = [e["params"]["response"]["status"] for e in page.events if e["method"] == "Network.responseReceived"]
        assert statuses == [401]
    nursery.cancel_scope.cancel()


async def test_the_error_detector_sees_what_a_console_would(nursery: trio.Nursery) -> None:
    """Control: a broken page must fail the check the admin page passes."""
    app = admin_app()

    @app.get("/broken")
    async def broken() -> Response:
        body = ("<!doctype html><title>broken</title>"
                "<script nonce='n1'>console.error('bad thing'); undefinedFunction();</script>"
                "<script>window.injected = 1</script>")
        response = Response(body, mimetype="text/html")
        response.headers["Content-Security-Policy"] = "default-src 'none'; script-src 'nonce-n1'"
        return response

    url = await serve_app(nursery, app)
    async with chromium() as browser:
        page = await browser.new_page(headers=AUTH)
        await page.open(f"{url}/broken")
        await trio.sleep(0.2)  # CSP reports are delivered just after load
        problems = page.problems()
        assert any("console.error: bad thing" in p for p in problems), problems
        assert any("undefinedFunction is not defined" in p for p in problems), problems
        assert any("Content Security Policy" in p for p in problems), problems
        assert await page.evaluate("window.injected === undefined")
    nursery.cancel_scope.cancel()


@pytest.mark.cluster
async def test_the_real_daemon_shows_a_real_job(daemon: Daemon, nursery: trio.Nursery) -> None:
    """The whole daemon on the real cluster: a job submitted through the upstream API, seen in the browser."""
    name = unique_name("admin")
    jobid, _ = await daemon.upstream.call("/submit", submit_args(name, 21, "echo admin-page; sleep 30"))
    try:
        await daemon.wait_phase(name, "running")
        headers = {"Authorization": "Basic " + base64.b64encode(daemon.settings.server_key.encode()).decode()}
        async with chromium() as browser:
            page = await browser.new_page(headers=headers)
            await page.open(f"{daemon.url}/admin")
            assert page.problems() == []
            row = await page.evaluate(
                f"(() => {{ const r = document.querySelector('#jobs tr.job[data-jobid=\"{jobid}\"]');"
                " return [r.querySelector('.name').firstChild.textContent, r.querySelector('.state').textContent,"
                " [...r.querySelectorAll('li .state')].map(s => s.textContent)]; })()")
            shown_name, state, history = row
            assert shown_name == name and state == "running"
            assert history[0] == "queued" and history[-1] == "running"
            badge = await page.evaluate(
                "document.querySelector('#diagram g[data-state=running] .sd-count')?.textContent")
            assert badge is not None and int(badge) >= 1
            assert "select/cons_tres" in await page.evaluate("document.getElementById('preflight').innerText")
    finally:
        await daemon.upstream.call("/terminate", {"name": name, "number": 21, "jobid": jobid})
