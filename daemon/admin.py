"""The admin page: what the daemon knows, for the people who run it (GET /admin, /admin/state, /metrics).

One self-contained HTML page (no build step, no external asset, inline CSS, a few
lines of inline JS for auto-refresh), rendered on the server from the same dict
that ``/admin/state`` returns as JSON. Authentication is the app's own
``before_request`` hook, which covers blueprints; this module adds none.

Everything shown passes through ``daemon.logs.redact`` (the same redaction as
the logs: registered secrets, URL passwords, PEM keys) and configuration keys
that name a secret are masked, so the page and the JSON never show a secret
even if the state dict carries one. Every value is HTML-escaped: job names and
Slurm's messages are data, never markup. A Content-Security-Policy with a
per-response nonce refuses any script that is not the page's own.

The state dict (built by the daemon from Downstream; every key optional, shown
as "-" when missing)::

    {
      "version": "0.1.0",
      "started_at": "2026-11-23T20:18:26Z",            # ISO 8601, or a Unix time
      "config": {"JARVICE_SLURM_CLUSTER_ADDR": "login", ...},   # see config_view(settings)
      "ssh": {"target": "jarvice@login:22", "connected": true, "connected_since": ISO|null,
              "reconnects": 0, "last_error": str|null},
      "poller": {"last_poll_at": ISO|null, "last_duration": 0.012 (seconds), "polls": 10,
                 "failures": 0, "last_error": str|null, "min_job_age": 300|null, "interval": 2.0},
      "preflight": [{"name": "select type", "level": "ok|warning|error", "detail": str, "hint": str}],
      "last_error": str|null,                         # the daemon's latest error, if any
      "jobs": [{"name": str, "number": int, "jobid": str, "state": "running",   # JobState value
                "slurm_state": "R", "reason": str, "nodes": [str], "exit_code": int|null,
                "termination": str, "interactive": bool, "user": str (the Slurm user it runs as),
                "history": [[ISO, "queued"], [ISO, "submitted"], ...],
                "proxy": {"state": "serving", "url": str, "error": str, "connections": int,
                          "bytes_up": int, "bytes_down": int, "restarts": int,
                          "pid": int|null} | null,           # pid: local mode's proxy process
                "proxy_life": {"state": "backing_off",     # ProxyPhase value: what the daemon makes of it
                               "failures": 1, "retries": 3,   # permanent failures since it served, of retries
                               "attempts": 2, "probes": 0,    # failed attempts in a row, unanswered probes
                               "retry_at": ISO|null} | null,  # null: interactive jobs only
                "last_error": str|null}]
    }
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from quart import Blueprint, Response

from config.settings import Settings
from daemon.logs import MASK, redact
from daemon.metrics import Metrics
from statemachines.job import FINAL_STATES, TRANSITIONS, JobState

SECRET_WORDS = ("PKEY", "PASSWORD", "PASSWD", "TOKEN", "SERVER_KEY", "PRIVATE", "CREDENTIAL")  # in config key names
REFRESH_SECONDS = 5
MAX_ROWS = 500  # jobs shown on the page (active first); /admin/state has them all


def _newest(job: dict) -> int:
    """Slurm job ids grow with time; a job without one yet (in flight) is the newest of all."""
    jobid = str(job.get("jobid") or "")
    return int(jobid) if jobid.isdigit() else 1 << 62


# ------------------------------------------------------------------ redaction
def _secret_key(key: str) -> bool:
    upper = key.upper()
    return any(word in upper for word in SECRET_WORDS)


def scrub(value: Any, key: str = "") -> Any:
    """A deep copy of ``value`` fit to show: secret-named keys masked, every string redacted."""
    if isinstance(value, Mapping):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, key) for v in value]
    if _secret_key(key) and value not in (None, "", False):
        return MASK
    if isinstance(value, str):
        return redact(value)
    return value


def config_view(settings: Settings) -> dict[str, Any]:
    """The settings as the admin page shows them: fields hidden from repr (keys, passwords) masked."""
    def walk(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if not f.repr:
                out[f.name] = MASK if v else ""
            elif dataclasses.is_dataclass(v):
                out[f.name] = walk(v)
            else:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    view = walk(settings)
    del view["server_key"]
    view["upstream_auth"] = f"HTTP Basic, user {settings.server_user}" if settings.server_key else "DISABLED"
    return scrub(view)


# ------------------------------------------------------------------ the state diagram (SVG)
NODE_W, NODE_H = 112, 34
COL_STEP = 178  # left edge to left edge of active columns
ROW_STEP = 66
LANE_GAP = 26  # from the outermost nodes to the lanes that carry edges skipping a column
GROUP_PAD = 16
FINAL_GAP = 118  # from the active group's border to the final column (room for the labels)
MARGIN = 24
_FILL = {"completed": "#d8f0dd", "failed": "#f8d7d7", "cancelled": "#eee4cf", "running": "#d7eaf8",
         "proxying": "#d7eaf8"}
_STROKE = {"completed": "#2f7d46", "failed": "#b03a3a", "cancelled": "#8a6d2f"}


def _text(x: float, y: float, label: str, *, anchor: str = "middle", cls: str = "sd-label", size: int = 11) -> str:
    return (f'<text x="{x:.0f}" y="{y:.0f}" text-anchor="{anchor}" font-size="{size}" class="{cls}" '
            f'paint-order="stroke" stroke="#fff" stroke-width="3" stroke-linejoin="round" fill="#333">'
            f"{html.escape(label)}</text>")


def state_diagram_svg(counts: Mapping[str, int] | None = None) -> str:
    """The job machine, drawn from ``TRANSITIONS``: states in columns by rank, left to right.

    Triggers that leave every non-final state (complete, fail, cancel) are drawn
    once, from a dashed "active" box around those states, instead of as fifteen
    crossing arrows. Edges that skip a column run along a lane above or below
    the nodes; edges within a column (hold/release) run side by side.
    ``counts`` (state -> jobs) adds a badge to each state with jobs in it.
    """
    states = list(JobState)
    finals = [s for s in states if s in FINAL_STATES]
    actives = [s for s in states if s not in FINAL_STATES]
    active_ranks = sorted({s.rank for s in actives})
    final_ranks = sorted({s.rank for s in finals})
    columns = [[s for s in actives if s.rank == r] for r in active_ranks]
    final_columns = [[s for s in finals if s.rank == r] for r in final_ranks]
    tallest_active = max(len(c) for c in columns)
    tallest = max(tallest_active, *(len(c) for c in final_columns))

    group_half = (tallest_active - 1) / 2 * ROW_STEP + NODE_H / 2 + LANE_GAP + GROUP_PAD
    mid = MARGIN + 14 + max(group_half, (tallest - 1) / 2 * ROW_STEP + NODE_H / 2)
    x0 = MARGIN + 40  # room for the initial-state dot
    pos: dict[JobState, tuple[float, float]] = {}  # top-left corner
    column_of: dict[JobState, int] = {}
    for i, col in enumerate(columns):
        for j, s in enumerate(col):
            pos[s] = (x0 + i * COL_STEP, mid + (j - (len(col) - 1) / 2) * ROW_STEP - NODE_H / 2)
            column_of[s] = i
    group_left = x0 - GROUP_PAD
    group_right = x0 + (len(columns) - 1) * COL_STEP + NODE_W + GROUP_PAD + 18
    group_top, group_bottom = mid - group_half, mid + group_half
    lane_top, lane_bottom = group_top + GROUP_PAD, group_bottom - GROUP_PAD
    for k, col in enumerate(final_columns):
        for j, s in enumerate(col):
            pos[s] = (group_right + FINAL_GAP + k * COL_STEP, mid + (j - (len(col) - 1) / 2) * ROW_STEP - NODE_H / 2)
            column_of[s] = len(columns) + k
    width = max(x for x, _ in pos.values()) + NODE_W + MARGIN
    height = max(group_bottom, max(y for _, y in pos.values()) + NODE_H) + MARGIN

    def center(s: JobState) -> tuple[float, float]:
        x, y = pos[s]
        return x + NODE_W / 2, y + NODE_H / 2

    parts: list[str] = []
    edge = 'fill="none" stroke="#555" stroke-width="1.3" marker-end="url(#sd-arrow)"'

    # the "active" group and the triggers that leave all of it
    grouped = [(t, dst) for t, src, dst in TRANSITIONS if set(src) == set(actives) and dst in FINAL_STATES]
    if grouped:
        parts.append(f'<rect x="{group_left:.0f}" y="{group_top:.0f}" width="{group_right - group_left:.0f}" '
                     f'height="{group_bottom - group_top:.0f}" rx="12" fill="#fafafa" stroke="#999" '
                     'stroke-dasharray="5 4"/>')
        parts.append(_text(group_left + 10, group_top - 5, "active (not final)", anchor="start", size=11))
        by_dst: dict[JobState, list[str]] = {}
        for t, dst in grouped:
            by_dst.setdefault(dst, []).append(t)
        for dst, triggers in by_dst.items():
            _, cy = center(dst)
            parts.append(f'<path d="M{group_right:.0f},{cy:.0f} L{pos[dst][0]:.0f},{cy:.0f}" {edge}/>')
            parts.append(_text((group_right + pos[dst][0]) / 2, cy - 6, " | ".join(triggers)))
    covered = {(s, dst) for t, dst in grouped for s in actives}

    # every other edge, parallel triggers merged
    pairs: dict[tuple[JobState, JobState], list[str]] = {}
    for t, sources, dst in TRANSITIONS:
        for s in sources:
            if (t, dst) in grouped and (s, dst) in covered:
                continue
            pairs.setdefault((s, dst), []).append(t)
    # lanes: an edge to a state above the middle takes the top one, below the bottom one,
    # level with it whichever has fewer edges once the others are placed
    skips = [(s, d) for s, d in pairs if abs(column_of[d] - column_of[s]) > 1 or column_of[d] < column_of[s]]
    above = {p: center(p[1])[1] < mid for p in skips if center(p[1])[1] != mid}
    for p in skips:
        if p not in above:
            above[p] = sum(above.values()) < sum(not a for a in above.values())
    for (s, d), triggers in pairs.items():
        label = " | ".join(triggers)
        (sx, sy), (dx, dy) = pos[s], pos[d]
        (scx, scy), (dcx, dcy) = center(s), center(d)
        cs, cd = column_of[s], column_of[d]
        if cs == cd:  # same column: down on the left, up on the right
            down = sy < dy
            x = scx - 14 if down else scx + 14
            y1, y2 = (sy + NODE_H, dy) if down else (sy, dy + NODE_H)
            parts.append(f'<path d="M{x:.0f},{y1:.0f} L{x:.0f},{y2:.0f}" {edge}/>')
            parts.append(_text(x - 5 if down else x + 5, (y1 + y2) / 2 + 4, label, anchor="end" if down else "start"))
        elif cd == cs + 1:  # next column: a smooth S
            x1, x2 = sx + NODE_W, dx
            parts.append(f'<path d="M{x1:.0f},{scy:.0f} C{x1 + 40:.0f},{scy:.0f} {x2 - 40:.0f},{dcy:.0f} '
                         f'{x2:.0f},{dcy:.0f}" {edge}/>')
            parts.append(_text((x1 + x2) / 2, (scy + dcy) / 2 - 5, label))
        else:  # skips columns (or goes back): along a lane
            top = above[(s, d)]
            lane = lane_top if top else lane_bottom
            x1, x2 = (sx + NODE_W, dx) if cd > cs else (scx, dcx)
            parts.append(f'<path d="M{x1:.0f},{scy:.0f} C{x1 + 24:.0f},{scy:.0f} {x1 + 6:.0f},{lane:.0f} '
                         f'{x1 + 36:.0f},{lane:.0f} L{x2 - 36:.0f},{lane:.0f} C{x2 - 6:.0f},{lane:.0f} '
                         f'{x2 - 24:.0f},{dcy:.0f} {x2:.0f},{dcy:.0f}" {edge}/>')
            parts.append(_text((x1 + x2) / 2, lane + 14 if top else lane - 5, label))  # inside the group

    # the initial state
    initial = states[0]
    ix, iy = pos[initial][0], center(initial)[1]
    parts.append(f'<circle cx="{ix - 30:.0f}" cy="{iy:.0f}" r="6" fill="#333"/>')
    parts.append(f'<path d="M{ix - 24:.0f},{iy:.0f} L{ix:.0f},{iy:.0f}" {edge}/>')

    # the states, drawn last so they sit on top of the edges
    for s in states:
        x, y = pos[s]
        value = s.value
        final = s in FINAL_STATES
        parts.append(f'<g class="sd-state" data-state="{value}">')
        parts.append(f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="{6 if final else 17}" '
                     f'fill="{_FILL.get(value, "#eef1f6")}" stroke="{_STROKE.get(value, "#4a5a78")}" '
                     f'stroke-width="{2.2 if final else 1.4}"/>')
        parts.append(_text(x + NODE_W / 2, y + NODE_H / 2 + 4, value, cls="sd-name", size=13))
        n = (counts or {}).get(value, 0)
        if n:
            badge = str(n)
            w = 10 + 7 * len(badge)
            parts.append(f'<rect x="{x + NODE_W - w / 2:.0f}" y="{y - 9:.0f}" width="{w}" height="18" rx="9" '
                         'fill="#1f5fa8"/>')
            parts.append(f'<text x="{x + NODE_W:.0f}" y="{y + 4:.0f}" text-anchor="middle" font-size="11" '
                         f'fill="#fff" class="sd-count">{badge}</text>')
        parts.append("</g>")

    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sd-diagram" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-labelledby="sd-title" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">'
        '<title id="sd-title">JARVICE job state machine</title>'
        '<defs><marker id="sd-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>'
        + "".join(parts) + "</svg>"
    )


# ------------------------------------------------------------------ the page
def _e(value: Any) -> str:
    """A value as page text: None is "-", everything escaped."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return html.escape(", ".join(str(v) for v in value)) or "-"
    return html.escape(str(value))


def _when(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        value = datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f'<time>{_e(value)}</time>' if value else "-"


def _seconds(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return _e(value)


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return _e(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"  # pragma: no cover


def _rows(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _link(url: Any) -> str:
    """Only http(s) URLs become links; anything else is shown as text."""
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        return f'<a href="{html.escape(url, quote=True)}" rel="noreferrer noopener">{html.escape(url)}</a>'
    return _e(url)


def _state_badge(state: Any) -> str:
    value = str(state or "unknown")
    known = value if value in {s.value for s in JobState} else "unknown"
    return f'<span class="state state-{known}">{html.escape(value)}</span>'


def _proxy_life(life: Any) -> str:
    """The proxy machine's view of a job's proxy: its state, and only the counts that say something."""
    if not isinstance(life, Mapping):
        return ""
    parts = [_e(life.get("state"))]
    if life.get("failures"):
        parts.append(f'{_e(life.get("failures"))}/{_e(life.get("retries"))} permanent failures')
    if life.get("attempts"):
        parts.append(f'{_e(life.get("attempts"))} failed attempts in a row')
    if life.get("probes"):
        parts.append(f'{_e(life.get("probes"))} unanswered probes')
    if life.get("retry_at"):
        parts.append(f'retry at {_when(life.get("retry_at"))}')
    return f'<div class="small proxy-life">{", ".join(parts)}</div>'


def _job_rows(jobs: list[Mapping[str, Any]]) -> str:
    if not jobs:
        return '<tr><td colspan="9" class="empty">no jobs tracked</td></tr>'
    out = []
    for job in jobs:
        proxy = job.get("proxy") or None
        if proxy:
            proxy_cell = (f'{_e(proxy.get("state"))} {_link(proxy.get("url"))}'
                          f'<div class="small">{_e(proxy.get("connections", 0))} conn, '
                          f'up {_bytes(proxy.get("bytes_up", 0))}, down {_bytes(proxy.get("bytes_down", 0))}'
                          + (f', process {_e(proxy.get("pid"))}' if proxy.get("pid") else "")
                          + (f', {_e(proxy.get("restarts"))} restart(s)' if proxy.get("restarts") else "") + '</div>'
                          + (f'<div class="error">{_e(proxy.get("error"))}</div>' if proxy.get("error") else ""))
        else:
            proxy_cell = "-" if not job.get("interactive") else "none yet"
        proxy_cell += _proxy_life(job.get("proxy_life"))
        slurm = _e(job.get("slurm_state")) + (f'<div class="small">{_e(job.get("reason"))}</div>' if job.get("reason")
                                               else "")
        ended = _e(job.get("termination")) + (f' (exit {_e(job.get("exit_code"))})'
                                              if job.get("exit_code") is not None else "")
        history = "".join(f"<li>{_when(when)} {_state_badge(state)}</li>" for when, state in job.get("history") or [])
        out.append(
            f'<tr class="job" data-jobid="{html.escape(str(job.get("jobid", "")), quote=True)}">'
            f'<td class="name">{_e(job.get("name"))}<div class="small">#{_e(job.get("number"))}'
            f'{" interactive" if job.get("interactive") else ""}'
            f'{" as " + _e(job.get("user")) if job.get("user") else ""}</div></td>'
            f'<td>{_e(job.get("jobid"))}</td><td>{_state_badge(job.get("state"))}</td><td>{slurm}</td>'
            f'<td>{_e(job.get("nodes"))}</td><td>{ended}</td><td>{proxy_cell}</td>'
            f'<td class="error">{_e(job.get("last_error")) if job.get("last_error") else ""}</td>'
            f'<td><details><summary>{len(job.get("history") or [])} changes</summary><ol>{history}</ol></details></td>'
            "</tr>"
        )
    return "".join(out)


_CSS = """
body{font:14px/1.4 "DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;color:#222;background:#f4f5f7}
header{background:#23324d;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0} header .small{color:#c8d0de} header a{color:#c8e0ff}
main{padding:16px 20px;display:grid;gap:16px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px;overflow-x:auto}
section h2{font-size:15px;margin:0 0 8px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:16px}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;
vertical-align:top} th{font-weight:600;color:#445} .kv th{width:40%}
.small{font-size:12px;color:#667} .error{color:#a02828;white-space:pre-wrap} .empty{color:#889;text-align:center}
.ok{color:#2f7d46} .warning{color:#a36b00} .bad{color:#a02828;font-weight:600}
.state{display:inline-block;padding:1px 8px;border-radius:10px;background:#eef1f6;border:1px solid #c5cddb;font-size:12px}
.state-running,.state-proxying{background:#d7eaf8;border-color:#7aa7cf} .state-completed{background:#d8f0dd;
border-color:#7fbf91} .state-failed{background:#f8d7d7;border-color:#d88} .state-cancelled{background:#eee4cf;
border-color:#c9b07a}
details ol{margin:4px 0;padding-left:20px} td.name{word-break:break-all;max-width:320px}
"""

_JS = r"""
const box = document.getElementById('auto-refresh');
let timer = null;
function schedule() {
  clearTimeout(timer);
  if (box.checked) timer = setTimeout(() => location.reload(), REFRESH_MS);
}
box.checked = localStorage.getItem('sd-admin-refresh') !== 'off';
box.addEventListener('change', () => {
  localStorage.setItem('sd-admin-refresh', box.checked ? 'on' : 'off');
  schedule();
});
schedule();
const filter = document.getElementById('job-filter');
filter.addEventListener('input', () => {
  const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
  for (const row of document.querySelectorAll('#jobs tr.job')) {
    const text = row.textContent.toLowerCase();
    row.hidden = !words.every(w => text.includes(w));
  }
});
""".replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))


def render_page(state: Mapping[str, Any], nonce: str) -> str:
    """The page for one (already scrubbed) state dict; ``nonce`` marks the page's own style and script."""
    ssh = state.get("ssh") or {}
    poller = state.get("poller") or {}
    jobs = list(state.get("jobs") or [])
    finals = {s.value for s in FINAL_STATES}
    # active first, newest first within each group: what an admin looks for is usually recent
    shown = sorted(jobs, key=lambda j: (j.get("state") in finals, -_newest(j)))[:MAX_ROWS]
    shown_note = (f"showing {len(shown)} of {len(jobs)} (active first); all are in "
                  '<a href="admin/state">/admin/state</a>') if len(shown) < len(jobs) else ""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[str(job.get("state"))] = counts.get(str(job.get("state")), 0) + 1
    link = ('<span class="ok">connected</span>' if ssh.get("connected") else '<span class="bad">down</span>')
    ssh_rows = _rows([
        ("target", _e(ssh.get("target"))),
        ("link", link),
        ("connected since", _when(ssh.get("connected_since"))),
        ("reconnects", _e(ssh.get("reconnects"))),
        ("last error", f'<span class="error">{_e(ssh.get("last_error"))}</span>'),
    ])
    poll_rows = _rows([
        ("last poll", _when(poller.get("last_poll_at"))),
        ("duration", _seconds(poller.get("last_duration"))),
        ("interval", _seconds(poller.get("interval"))),
        ("polls / failures", f'{_e(poller.get("polls"))} / {_e(poller.get("failures"))}'),
        ("Slurm MinJobAge", f'{_e(poller.get("min_job_age"))} s' if poller.get("min_job_age") is not None else "-"),
        ("last error", f'<span class="error">{_e(poller.get("last_error"))}</span>'),
    ])
    count_rows = _rows([(s.value, str(counts.get(s.value, 0))) for s in JobState])
    preflight = state.get("preflight") or []
    preflight_html = "".join(
        f'<tr><td class="{"ok" if c.get("level") == "ok" else "warning" if c.get("level") == "warning" else "bad"}">'
        f'{_e(c.get("level"))}</td><th>{_e(c.get("name"))}</th><td>{_e(c.get("detail"))}'
        + (f'<div class="small">hint: {_e(c.get("hint"))}</div>' if c.get("hint") and c.get("level") != "ok" else "")
        + "</td></tr>" for c in preflight)
    config_rows = _rows((k, _e(v)) for k, v in _flatten(state.get("config") or {}))
    last_error = state.get("last_error")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>slurm-downstream admin</title><style nonce="{nonce}">{_CSS}</style></head>
<body><header><h1>slurm-downstream</h1><span>version {_e(state.get("version"))}</span>
<span class="small">started {_when(state.get("started_at"))}</span>
<span class="small">page built {_when(datetime.now(UTC).timestamp())}</span>
<label class="small"><input type="checkbox" id="auto-refresh"> refresh every {REFRESH_SECONDS} s</label>
<span class="small"><a href="admin/state">state (JSON)</a> · <a href="metrics">metrics</a></span></header>
<main>
{f'<section id="last-error"><h2>Last error</h2><div class="error">{_e(last_error)}</div></section>' if last_error else ""}
<div class="cards">
<section id="ssh"><h2>SSH link</h2><table class="kv">{ssh_rows}</table></section>
<section id="poller"><h2>Poller</h2><table class="kv">{poll_rows}</table></section>
<section id="counts"><h2>Jobs by state</h2><table class="kv">{count_rows}</table></section>
</div>
<section id="diagram"><h2>Job state machine</h2>{state_diagram_svg(counts)}</section>
<section id="jobs"><h2>Jobs ({len(jobs)})</h2>
<p class="small"><input type="search" id="job-filter" placeholder="filter by name, id, state, node"> {shown_note}</p>
<table><thead><tr><th>name</th><th>Slurm id</th><th>state</th>
<th>Slurm state</th><th>nodes</th><th>ended</th><th>proxy</th><th>last error</th><th>history</th></tr></thead>
<tbody>{_job_rows(shown)}</tbody></table></section>
{f'<section id="preflight"><h2>Preflight</h2><table>{preflight_html}</table></section>' if preflight else ""}
<section id="config"><h2>Configuration</h2><table class="kv">{config_rows}</table></section>
</main><script nonce="{nonce}">{_JS}</script></body></html>
"""


def _csp(nonce: str) -> str:
    return (f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def admin_blueprint(state: Callable[[], dict], metrics: Metrics) -> Blueprint:
    """GET /admin (HTML), /admin/state (JSON) and /metrics (Prometheus text) for ``app.register_blueprint``."""
    bp = Blueprint("admin", __name__)

    @bp.get("/admin")
    async def page() -> Response:
        nonce = secrets.token_urlsafe(16)
        body = render_page(scrub(state()), nonce)
        response = Response(body, mimetype="text/html")
        response.headers["Content-Security-Policy"] = _csp(nonce)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @bp.get("/admin/state")
    async def state_json() -> Response:
        response = Response(json.dumps(scrub(state()), default=str), mimetype="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/metrics")
    async def scrape() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    return bp
