"""A realistic admin state dict (the schema in daemon/admin.py), with the hostile text upstream can send."""

from __future__ import annotations

import base64
from collections.abc import Callable

from quart_trio import QuartTrio

from adapters.jobscript import ScriptEnvironment
from adapters.slurm.twin import SimulatedSlurm
from daemon.admin import admin_blueprint
from daemon.api import create_app
from daemon.metrics import Metrics, instrument
from daemon.service import Downstream

KEY = "admin:adm-Pa55word"
SECRET = "reg-Pa55-xyzzy"  # a registry password the daemon registered with the log redactor
HOSTILE = "20261123-app-<script>alert(1)</script>"


def realistic_state() -> dict:
    return {
        "version": "0.1.0",
        "started_at": "2026-11-23T20:18:26Z",
        "config": {"cluster_addr": "login.example.org", "cluster_port": 22, "ssh_pkey": "-----BEGIN OPENSSH PRIVATE KEY"
                   "-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n", "http_proxy": "http://bob:Pr0xy-pw@proxy:3128",
                   "registry": {"docker_password": base64.b64encode(SECRET.encode()).decode(), "images_tag": "latest"}},
        "ssh": {"target": "jarvice@login.example.org:22", "connected": True, "connected_since": "2026-11-23T20:18:27Z",
                "reconnects": 2, "last_error": None},
        "poller": {"last_poll_at": 1795466400.5, "last_duration": 0.0123, "polls": 650, "failures": 3,
                   "last_error": "", "min_job_age": 300, "interval": 2.0},
        "preflight": [{"name": "socat", "level": "warning", "detail": "socat is not on the login node's PATH",
                       "hint": "install it"}],
        "last_error": f"docker login failed with {SECRET}",
        "jobs": [
            {"name": HOSTILE, "number": 42, "jobid": "1234", "state": "proxying", "slurm_state": "R", "reason": "None",
             "nodes": ["node1", "node2"], "exit_code": None, "termination": "", "interactive": True,
             "history": [["2026-11-23T20:30:00.120Z", "queued"], ["2026-11-23T20:30:01.002Z", "submitted"],
                         ["2026-11-23T20:30:03.500Z", "running"], ["2026-11-23T20:30:09.000Z", "proxying"]],
             "proxy": {"state": "serving", "url": "https://1234.jobs.example.org/", "error": "", "connections": 2,
                       "bytes_up": 2048, "bytes_down": 5_300_000},
             "proxy_life": {"state": "serving", "failures": 0, "retries": 3, "attempts": 0, "probes": 0,
                            "retry_at": None},
             "last_error": None},
            {"name": "20261123-batch-bob", "number": 43, "jobid": "1235", "state": "failed", "slurm_state": "F",
             "reason": "NonZeroExitCode", "nodes": ["node1"], "exit_code": 1, "termination": "FAILED",
             "interactive": True, "history": [["2026-11-23T20:31:00Z", "queued"], ["2026-11-23T20:31:20Z", "failed"]],
             "proxy": {"state": "failed", "url": "javascript:alert(3)", "error": "<img src=x onerror=alert(2)>",
                       "connections": 0, "bytes_up": 0, "bytes_down": 0},
             "proxy_life": {"state": "closed", "failures": 3, "retries": 3, "attempts": 4, "probes": 0,
                            "retry_at": None},
             "last_error": "sbatch: error: <b>Batch job submission failed</b>"},
        ],
    }


def admin_app(state: Callable[[], dict] = realistic_state) -> QuartTrio:
    """The daemon's own app (its authentication hook included) with the admin blueprint and metrics.

    The Downstream runs on the simulated Slurm twin: only the HTTP side is under test.
    """
    downstream = Downstream(slurm=SimulatedSlurm(), script_env=ScriptEnvironment(scratch_dir="/tmp/twin"))
    app = create_app(downstream, KEY)
    metrics = Metrics(version="0.1.0", jobs=downstream.book.counts)
    instrument(app, metrics)
    app.register_blueprint(admin_blueprint(state, metrics))
    return app
