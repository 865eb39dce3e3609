"""The demo's upstream: a 2-node batch job followed to its end, then an interactive job's URL.

It speaks the legacy API as JARVICE upstream does (``upstream-api.md``): every
POST carries one form field, ``args``, holding JSON; HTTP Basic auth with
``JARVICE_SCHED_SERVER_KEY``. It prints each change of the job's state as it
sees it, Slurm's view of the job (``/events``) while it runs, then the exit
status, elapsed time and the job's output.

Run by ``tests/demo/up`` (``make demo``); by hand::

    .venv/bin/python tests/demo/sample.py        # DEMO_PORT=8080 by default

Exits 0 when the job finished with exit code 0 within 60 s, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.upstream import submit_args  # noqa: E402
from tests.support.webjob import upstream_body  # noqa: E402

STATE = Path(os.environ.get("SLURM_DOWNSTREAM_TESTCLUSTER", "/tmp/slurm-downstream-testcluster"))
PORT = int(os.environ.get("DEMO_PORT", "8080"))
URL = f"http://127.0.0.1:{PORT}"
POLL = 0.5  # seconds between looks at /queued, /running, /runstatus
TIMEOUT = 60.0  # the job must have finished by then
EVENTS_LINES = 8

# The job, as upstream would send it (tests/support/upstream.py): a script in the shape of
# JARVICE's own, which pulls the app image, runs the app below in Singularity on the first
# node (the test cluster's `singularity` is a stand-in that runs it on the node) and then
# prints JARVICE_CMD_SUCCESS or JARVICE_CMD_FAILURE: that marker, not the exit code, tells
# whether the app succeeded. The other node runs WORKER, JARVICE's worker part.
# Upstream fills the script with str.format, so literal braces are doubled:
# ${{JOB_NNODES}} reaches bash as ${JOB_NNODES}, awk's {{ }} as { }.
BODY = r"""
echo "task ${{PROCESS_PROCID}} of Slurm job ${{JOB_JOBID}} on ${{PROCESS_NODENAME}}:" \
     "one of ${{JOB_NNODES}} nodes (${{JOB_JOB_FORMATED_NODELIST}})"
sum=$(seq 1 100000 | awk '{{ s += $1 }} END {{ printf "%.0f", s }}')
echo "task ${{PROCESS_PROCID}} on ${{PROCESS_NODENAME}}: sum of 1..100000 = ${{sum}}"
sleep 3
echo "task ${{PROCESS_PROCID}} on ${{PROCESS_NODENAME}}: done"
exit 0
"""
WORKER = 'echo "task ${{PROCESS_PROCID}} on ${{PROCESS_NODENAME}}: worker, ready for the app on task 0"'


def server_key() -> tuple[str, str]:
    """``user:password`` from the environment, else from the test cluster's daemon.env."""
    key = os.environ.get("JARVICE_SCHED_SERVER_KEY", "")
    if not key:
        env_file = STATE / "daemon.env"
        if env_file.is_file():
            for line in env_file.read_text().splitlines():
                if line.startswith("export JARVICE_SCHED_SERVER_KEY="):
                    key = shlex.split(line.partition("=")[2])[0]
    if ":" not in key:
        sys.exit("sample: JARVICE_SCHED_SERVER_KEY (user:password) is not set; source the test cluster's daemon.env")
    user, _, password = key.partition(":")
    return user, password


class Upstream:
    """A minimal JARVICE upstream: GETs, and POSTs of one form field ``args``."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def get(self, path: str) -> object:
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, args: dict) -> httpx.Response:
        return self.client.post(path, data={"args": json.dumps(args)})

    def call(self, path: str, args: dict) -> object:
        response = self.post(path, args)
        response.raise_for_status()
        return response.json()


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():5.1f}s] {text}", flush=True)


def indent(text: str, prefix: str = "    | ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def show_events(up: Upstream, ids: dict, clock: Clock) -> None:
    events = up.call("/events", ids)
    lines = str(events).strip().splitlines()
    clock.say(f"job {ids['jobid']}: Slurm's view (/events, scontrol show job; first {EVENTS_LINES} of {len(lines)} lines):")
    print(indent("\n".join(line.strip() for line in lines[:EVENTS_LINES])), flush=True)


def phase(up: Upstream, name: str, jobid: str) -> str:
    """queued, running or finished (the job is in neither list)."""
    if [name, jobid] in up.get("/queued"):
        return "queued"
    if [name, jobid] in up.get("/running"):
        return "running"
    return "finished"


def follow(up: Upstream, ids: dict, clock: Clock) -> bool:
    """Print each state change until the job has finished; False on timeout."""
    name, jobid = ids["name"], ids["jobid"]
    last: object = None
    events_shown = False
    while clock.elapsed() < TIMEOUT:
        try:
            now = phase(up, name, jobid)
            if now == "running":
                nodes, elapsed, _, _ = up.call("/runstatus", ids)
                state: object = ("running", tuple(nodes or ()))
                if state != last:
                    clock.say(f"job {jobid}: running on {','.join(nodes or []) or '?'} (elapsed {elapsed})")
                if not events_shown:
                    show_events(up, ids, clock)
                    events_shown = True
            else:
                state = now
                if state != last:
                    clock.say(f"job {jobid}: {now}")
                if now == "finished":
                    if not events_shown:  # it ran between two looks; Slurm still knows it
                        show_events(up, ids, clock)
                    return True
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503:
                raise
            state = "unknown"
            if state != last:
                clock.say(f"job {jobid}: the daemon cannot tell right now (503: {exc.response.text.strip()}); retrying")
        last = state
        time.sleep(POLL)
    return False


def exit_status(up: Upstream, ids: dict, clock: Clock) -> list | None:
    """/exitstatus; the daemon answers 409 while it is still settling the job's outcome."""
    while clock.elapsed() < TIMEOUT:
        response = up.post("/exitstatus", ids)
        if response.status_code != 409:
            response.raise_for_status()
            return response.json()
        time.sleep(POLL)
    return None


def main() -> int:
    user, password = server_key()
    stamp = int(time.time())
    name = f"{time.strftime('%Y%m%d')}-demo-alice_sample-{stamp}"
    number = stamp % 1_000_000
    with httpx.Client(base_url=URL, auth=(user, password), timeout=30) as client:
        try:
            ready = client.get("/ready")
        except httpx.TransportError as exc:
            print(f"sample: no daemon at {URL}: {exc}; start it with tests/demo/up (make demo)", file=sys.stderr)
            return 1
        if ready.status_code != 200:
            print(f"sample: {URL}/ready answers {ready.status_code} {ready.text.strip()}", file=sys.stderr)
            return 1
        up = Upstream(client)

        print(f"sample: submitting {name} (number {number}, 2 nodes) to {URL} as upstream user {user!r}")
        clock = Clock()
        jobid, fscript = up.call("/submit", submit_args(name, number, BODY, nodes=2, worker=WORKER))
        ids = {"name": name, "number": number, "jobid": jobid}
        clock.say(f"job {jobid}: submitted (Slurm job name jarvice_{name}; batch script {len(fscript)} bytes)")

        finished = follow(up, ids, clock)
        answer = exit_status(up, ids, clock) if finished else None
        if answer is None:
            clock.say(f"job {jobid}: did not finish within {TIMEOUT:.0f}s; cancelling it")
            up.call("/terminate", ids)
            return 1

        rc, elapsed, (output, termination) = answer
        clock.say(f"job {jobid}: exit status {rc}, elapsed {elapsed}")
        print(f"    output (the tail of the job's log, {len(output.splitlines())} lines):")
        print(indent(output) if output.strip() else "    | (empty)")
        print(f"    {termination}")
        if rc != 0:
            print(f"sample: job {jobid} finished with exit status {rc}, not 0", file=sys.stderr)
            return 1
        print(f"sample: OK, job {jobid} ran on 2 nodes and exited 0 in {clock.elapsed():.1f}s")
        return interactive(up, number + 1, clock)


def interactive(up: Upstream, number: int, clock: Clock) -> int:
    """An interactive job: a web service on its compute node, reached through the daemon's proxy."""
    name = f"{time.strftime('%Y%m%d')}-demo-alice_web-{number}"
    print(f"sample: submitting interactive job {name} (a web page and a WebSocket echo on its node)")
    jobid, _ = up.call("/submit", submit_args(name, number, upstream_body(), interactive=True, walltime="00:15:00"))
    ids = {"name": name, "number": number, "jobid": jobid}
    path = f"/request/{name}/{number}/{jobid}/info"
    while clock.elapsed() < TIMEOUT * 2:
        url = up.call(path, {"qs": {}})["url"]
        if url:
            break
        time.sleep(POLL)
    else:
        clock.say(f"job {jobid}: its web service did not become reachable; cancelling it")
        up.call("/terminate", ids)
        return 1
    page = httpx.get(url, timeout=10).text
    title = page.split("<h1>", 1)[-1].split("</h1>", 1)[0]
    clock.say(f"job {jobid}: interactive service reachable at {url} (its page says {title!r})")
    print(f"\n    Open {url} in a browser: the page is served by Slurm job {jobid} on its compute node,")
    print("    carried by the daemon's proxy over SSH. It runs for 15 minutes; make demo-stop ends it.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
