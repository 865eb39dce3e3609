"""The admin page, its JSON and /metrics, served by the daemon's real app on a real socket.

The app is ``daemon.api.create_app`` (so its own authentication hook guards the
blueprint) around a Downstream whose Slurm is the simulated twin, because only the
HTTP side is under test here. The state dict follows the schema in
``daemon/admin.py``; its job carries what an admin must be able to read even when
upstream sent hostile text: names and errors containing markup are shown as text.
"""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import asyncssh
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from adapters.jobscript import ScriptEnvironment
from adapters.slurm.twin import SimulatedSlurm
from config.settings import load
from daemon.admin import config_view, state_diagram_svg
from daemon.logs import add_secret
from daemon.server import admin_state
from daemon.service import Downstream
from statemachines.job import TRANSITIONS, JobState
from statemachines.proxy import PROXY_RETRIES
from tests.browser.sample import HOSTILE, KEY, SECRET, admin_app
from tests.browser.serving import serve_app


class Tags(HTMLParser):
    """Every element the browser would build from the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))


@pytest.fixture
async def admin(nursery: trio.Nursery) -> httpx.AsyncClient:
    add_secret(SECRET)
    url = await serve_app(nursery, admin_app())
    async with httpx.AsyncClient(base_url=url, auth=tuple(KEY.split(":", 1))) as client:
        yield client
    nursery.cancel_scope.cancel()


async def test_every_admin_route_needs_the_servers_credentials(admin: httpx.AsyncClient) -> None:
    for path in ("/admin", "/admin/state", "/metrics"):
        assert (await admin.get(path, auth=None)).status_code == 401
        assert (await admin.get(path, auth=("admin", "wrong"))).status_code == 401
        assert (await admin.get(path)).status_code == 200


async def test_state_json_is_the_dict_without_secrets(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/admin/state")
    assert response.headers["content-type"] == "application/json"
    state = response.json()
    assert state["jobs"][0]["name"] == HOSTILE and state["jobs"][0]["history"][2] == ["2026-11-23T20:30:03.500Z", "running"]
    assert state["poller"]["polls"] == 650 and state["ssh"]["connected"] is True
    assert state["config"]["ssh_pkey"] == "***"
    assert state["config"]["registry"]["docker_password"] == "***"
    assert state["config"]["http_proxy"] == "http://bob:***@proxy:3128"
    assert state["last_error"] == "docker login failed with ***"
    text = response.text
    for secret in (SECRET, "Pr0xy-pw", "b3Blbn", base64.b64encode(SECRET.encode()).decode()):
        assert secret not in text


async def test_page_shows_jobs_as_text_never_as_markup(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/admin")
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    tags = Tags()
    tags.feed(page)
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert len(scripts) == 1  # the page's own, and no other
    nonce = scripts[0]["nonce"]
    csp = response.headers["content-security-policy"]
    assert f"script-src 'nonce-{nonce}'" in csp and "default-src 'none'" in csp
    assert not [t for t, _ in tags.tags if t in ("img", "b", "link", "iframe")]
    assert "20261123-app-&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "sbatch: error: &lt;b&gt;Batch job submission failed&lt;/b&gt;" in page
    links = [attrs.get("href") for tag, attrs in tags.tags if tag == "a"]
    assert "https://1234.jobs.example.org/" in links
    assert not [h for h in links if h and h.startswith("javascript:")]
    assert "javascript:alert(3)" in page  # shown, not linked


async def test_page_shows_what_an_operator_looks_for(admin: httpx.AsyncClient) -> None:
    page = (await admin.get("/admin")).text
    assert "version 0.1.0" in page
    assert 'data-jobid="1234"' in page and '<span class="state state-proxying">proxying</span>' in page
    assert "<time>2026-11-23T20:30:03.500Z</time>" in page  # state history with its times
    assert "<time>2026-11-23T20:40:00Z</time>" in page  # the last poll (a Unix time) as ISO
    assert "12 ms" in page and "650 / 3" in page
    assert "node1, node2" in page and "FAILED (exit 1)" in page
    assert "2 conn, up 2.0 KiB, down 5.1 MiB" in page
    assert '<div class="small proxy-life">serving</div>' in page  # the proxy machine's word, counts only when any
    assert "closed, 3/3 permanent failures, 4 failed attempts in a row" in page
    assert "jarvice@login.example.org:22" in page and ">connected<" in page
    assert "socat is not on the login node&#x27;s PATH" in page and "hint: install it" in page
    assert "docker login failed with ***" in page and SECRET not in page
    assert "registry.docker_password</th><td>***" in page and "Pr0xy-pw" not in page
    svg = page[page.index("<svg"):page.index("</svg>") + 6]
    ET.fromstring(svg)  # well-formed
    assert 'data-state="proxying"' in svg


async def test_metrics_route_serves_a_scrape(admin: httpx.AsyncClient) -> None:
    await admin.get("/admin")
    response = await admin.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(response.text) for s in f.samples}
    assert samples[("slurm_downstream_jobs", (("state", "queued"),))] == 0
    assert samples[("slurm_downstream_http_request_seconds_count", (("endpoint", "/admin"), ("status", "200")))] == 1


def test_diagram_is_the_machines_own() -> None:
    svg = state_diagram_svg({"running": 3, "failed": 12})
    root = ET.fromstring(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    states = [g.get("data-state") for g in root.iterfind(".//s:g[@class='sd-state']", ns)]
    assert states == [s.value for s in JobState]
    labels = " | ".join(t.text or "" for t in root.iterfind(".//s:text[@class='sd-label']", ns))
    for trigger, _, _ in TRANSITIONS:
        assert trigger in labels, f"transition {trigger} is not drawn"
    badges = [t.text for t in root.iterfind(".//s:text[@class='sd-count']", ns)]
    assert badges == ["3", "12"]
    # complete/fail/cancel leave every active state: drawn once each from the "active" group
    assert labels.count("complete") == 1 and labels.count("cancel") == 1


def test_config_view_masks_what_settings_hide() -> None:
    pem = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    docker = base64.b64encode(b"d0cker-Secret").decode()
    s = load({"JARVICE_SLURM_CLUSTER_ADDR": "login", "JARVICE_SLURM_SSH_PKEY": pem, "JARVICE_SCHED_SERVER_KEY": KEY,
              "JARVICE_DOCKER_PASSWORD": docker, "JARVICE_SLURM_HTTP_PROXY": "http://u:prx-Secret@proxy:3128"})
    view = config_view(s)
    text = json.dumps(view)
    assert view["ssh_pkey"] == "***" and view["registry"]["docker_password"] == "***"
    assert "server_key" not in view and view["upstream_auth"] == "HTTP Basic, user admin"
    assert view["http_proxy"] == "http://u:***@proxy:3128"
    assert view["cluster_addr"] == "login" and view["proxy"]["mode"] == "local"
    assert view["proxy"]["ssh_secret"] == "jarvice-slurm-downstream-ssh"  # a Secret's name, not a secret
    for secret in (docker, "prx-Secret", "adm-Pa55word", pem.splitlines()[1]):
        assert secret not in text


def test_page_lists_at_most_500_jobs_active_first_then_newest() -> None:
    from daemon.admin import render_page, scrub
    from tests.browser.sample import realistic_state

    state = realistic_state()
    done, running = state["jobs"][1], state["jobs"][0]
    state["jobs"] = [dict(done, jobid=str(i)) for i in range(550)] + [dict(running, jobid="9999")]
    page = render_page(scrub(state), "n")
    assert page.count('<tr class="job"') == 500
    assert page.index('data-jobid="9999"') < page.index('data-jobid="549"')  # the running job comes first
    assert page.index('data-jobid="549"') < page.index('data-jobid="100"')  # then the newest
    assert 'data-jobid="0"' not in page  # the oldest finished jobs are left to /admin/state
    assert "showing 500 of 551 (active first)" in page and "Jobs (551)" in page


async def test_admin_state_shows_each_interactive_jobs_proxy_life() -> None:
    """What the proxy machine makes of a job's proxy (backing off, its counts, when it retries) reaches admins."""
    downstream = Downstream(slurm=SimulatedSlurm(), script_env=ScriptEnvironment(scratch_dir="/tmp/twin"))
    web = downstream.book.new("desktop", 1, interactive=True)
    downstream.book.new("batch", 2)
    assert web.proxy is not None
    downstream.interactive.machine.failed(web.proxy, permanent=True, now=trio.current_time(), backoff=lambda n: 60.0)
    settings = load({"JARVICE_SLURM_CLUSTER_ADDR": "login", "JARVICE_SCHED_SERVER_KEY": KEY,
                     "JARVICE_SLURM_SSH_PKEY": asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()})
    state = admin_state(downstream, None, settings, time.time(), [])
    jobs = {job["name"]: job for job in json.loads(json.dumps(state))["jobs"]}
    assert jobs["batch"]["proxy_life"] is None
    life = jobs["desktop"]["proxy_life"]
    assert life["state"] == "backing_off" and life["retry_at"] is not None
    assert (life["failures"], life["retries"], life["attempts"], life["probes"]) == (1, PROXY_RETRIES, 1, 0)
