#!/usr/bin/python3
"""A stand-in for an interactive job's web service (noVNC, gotty): HTTP plus WebSockets.

It runs inside a real Slurm job, as the job's user, under the node's /usr/bin/python3,
so the server part (everything above ``# ---- test side``) uses the standard library
only. It listens on 0.0.0.0 on the port given as argv[1] or $JARVICE_SERVICE_PORT and
answers:

* ``GET /``: an HTML page naming the Slurm job and node (so a test can tell which job
  a proxy reached);
* like JARVICE's web apps, it serves every path under ``/$JARVICE_INGRESSPATH/`` when that
  is set (behind a path-based ingress, which does not strip the prefix) and 404s the rest;
* ``GET /ws``: a WebSocket (RFC 6455) that echoes every text or binary message and
  answers pings; fragmented messages are refused with close code 1003;
* ``GET /blob?bytes=N``: N bytes of a fixed pattern (downloads, for the benchmark);
* ``GET /progress``: ``{"blob_bytes": N}``, what all ``/blob`` answers have written into
  their sockets so far (how far a download got when its reader stopped reading);
* ``POST /sink``: reads the body and answers ``{"bytes": N, "sha256": ...}`` (uploads);
* ``POST /stall``: never reads the body (a service that stops reading, for backpressure).

The test side at the bottom submits this file as a batch job through any ``run``
(``SSHClient.run``), shipping its own source in the job script, as a real login node
shares no file system with the daemon.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_MESSAGE = 64 * 2**20
_PATTERN = bytes(range(256)) * 256  # 64 KiB
_progress = {"blob_bytes": 0}  # one int updated under the GIL; read by /progress
# JARVICE_INGRESSPATH inside the container; outside one the job's environment has it as SINGULARITYENV_...
_PREFIX = (os.environ.get("JARVICE_INGRESSPATH") or os.environ.get("SINGULARITYENV_JARVICE_INGRESSPATH", "")).strip("/")

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")  # noqa: S324 - the RFC's hash, not a security use


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    if not data:
        return b""
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, *, mask_key: bytes | None = None) -> bytes:
    """One final frame; clients pass ``mask_key`` (their frames must be masked), servers do not."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask_key is not None else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 2**16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask_key is not None:
        return head + mask_key + mask(payload, mask_key)
    return head + payload


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def read_frame(read: Callable[[int], bytes]) -> tuple[bool, int, bytes]:
    """(fin, opcode, unmasked payload) of the next client frame; raises EOFError or ProtocolError."""

    def exactly(n: int) -> bytes:
        data = read(n)
        if len(data) != n:
            raise EOFError
        return data

    b0, b1 = exactly(2)
    fin, opcode = bool(b0 & 0x80), b0 & 0x0F
    if b0 & 0x70:
        raise ProtocolError(1002, "reserved bits set without an extension")
    if not b1 & 0x80:
        raise ProtocolError(1002, "client frames must be masked")
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", exactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", exactly(8))
        if n >> 63:
            raise ProtocolError(1002, "64-bit length with the high bit set")
    if opcode >= OP_CLOSE and (n > 125 or not fin):
        raise ProtocolError(1002, "control frames are short and never fragmented")
    if n > _MAX_MESSAGE:
        raise ProtocolError(1009, "message too big")
    key = exactly(4)
    return fin, opcode, mask(exactly(n), key)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as browsers use it
    server_version = "webjob/1"
    disable_nagle_algorithm = True  # headers and body are two writes: without this, each answer waits ~40 ms for an ACK

    def log_message(self, format: str, *args: object) -> None:
        pass  # the job's output stays quiet; the tests look at the client side

    def _path(self) -> str | None:
        """The request's path below the ingress prefix; None when it is outside it."""
        path = urlsplit(self.path).path
        if not _PREFIX:
            return path
        if path == f"/{_PREFIX}" or path.startswith(f"/{_PREFIX}/"):
            return path[len(_PREFIX) + 1:] or "/"
        return None

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = self._path()
        if path == "/":
            self._reply(200, "text/html; charset=utf-8", page().encode())
        elif path == "/ws":
            self._websocket()
        elif path == "/blob":
            self._blob(int(parse_qs(url.query).get("bytes", ["0"])[0]))
        elif path == "/progress":
            self._reply(200, "application/json", json.dumps(_progress).encode())
        else:
            self._reply(404, "text/plain", b"not found\n")

    def do_POST(self) -> None:
        if self._path() == "/stall":
            time.sleep(600)
            return
        if self._path() != "/sink":
            self._reply(404, "text/plain", b"not found\n")
            return
        left = int(self.headers.get("Content-Length", "0"))
        digest, total = hashlib.sha256(), 0
        while left:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
            left -= len(chunk)
        self._reply(200, "application/json", json.dumps({"bytes": total, "sha256": digest.hexdigest()}).encode())

    def _reply(self, status: int, ctype: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _blob(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        left = size
        while left:
            n = min(left, len(_PATTERN))
            self.wfile.write(_PATTERN[:n])
            left -= n
            _progress["blob_bytes"] += n

    def _websocket(self) -> None:
        h = self.headers
        key = h.get("Sec-WebSocket-Key", "")
        try:
            key_ok = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            key_ok = False
        if (h.get("Upgrade", "").lower() != "websocket"
                or "upgrade" not in [t.strip().lower() for t in h.get("Connection", "").split(",")]
                or not key_ok):
            self.close_connection = True
            self._reply(400, "text/plain", b"expected a WebSocket handshake\n")
            return
        if h.get("Sec-WebSocket-Version") != "13":
            self.close_connection = True
            self._reply(426, "text/plain", b"WebSocket version 13 only\n", {"Sec-WebSocket-Version": "13"})
            return
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(key))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True  # after the WebSocket, the TCP connection ends
        self._echo()

    def _send(self, opcode: int, payload: bytes) -> None:
        self.wfile.write(encode_frame(opcode, payload))
        self.wfile.flush()

    def _echo(self) -> None:
        while True:
            try:
                fin, opcode, payload = read_frame(self.rfile.read)
            except (EOFError, ConnectionError):
                return
            except ProtocolError as exc:
                self._send(OP_CLOSE, struct.pack("!H", exc.code) + str(exc).encode())
                return
            if opcode == OP_CLOSE:
                self._send(OP_CLOSE, payload[:2])  # echo the status code, as RFC 6455 5.5.1 asks
                return
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
            elif opcode == OP_PONG:
                continue
            elif opcode in (OP_TEXT, OP_BINARY) and fin:
                self._send(opcode, payload)
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                self._send(OP_CLOSE, struct.pack("!H", 1003) + b"fragmented messages are not supported")
                return
            else:
                self._send(OP_CLOSE, struct.pack("!H", 1002) + b"unknown opcode")
                return


def page() -> str:
    job = os.environ.get("SLURM_JOB_ID", "-")
    node = os.environ.get("SLURMD_NODENAME", socket.gethostname())
    return ("<!doctype html>\n<html><head><title>webjob</title></head>\n"
            f"<body><h1>webjob</h1><p id=job>job {job}</p><p id=node>node {node}</p></body></html>\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # bursts of connections (browsers, tests with 20 users)


def main(argv: list[str]) -> int:
    raw = argv[1] if len(argv) > 1 else os.environ.get("JARVICE_SERVICE_PORT", "")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        print("usage: webjob.py PORT (or set JARVICE_SERVICE_PORT)", file=sys.stderr)
        return 2
    server = Server(("0.0.0.0", int(raw)), Handler)  # noqa: S104 - the proxy reaches the node from the login node
    print(f"webjob: job {os.environ.get('SLURM_JOB_ID', '-')} serving on 0.0.0.0:{raw}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


# ---- test side: submitting this file as a Slurm job (runs in the test process, never on the node)

Runner = Callable[..., Awaitable[Any]]  # SSHClient.run: (command, stdin=...) -> CommandResult

def batch_script(port: int, name: str, *, minutes: int = 10, output: str = "/dev/null") -> str:
    """A job script that runs this very file, shipped inline, on ``port``."""
    with open(__file__, encoding="utf-8") as handle:
        source = handle.read()
    if "\nWEBJOB_PY\n" in source:  # pragma: no cover - the heredoc would end early
        raise RuntimeError("webjob.py must not contain the heredoc marker line")
    return (f"#!/bin/bash\n#SBATCH --job-name={name}\n#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=1\n"
            f"#SBATCH --time={minutes}\n#SBATCH --output={output}\n"
            f"exec /usr/bin/python3 - {port} <<'WEBJOB_PY'\n{source}\nWEBJOB_PY\n")


def upstream_body() -> str:
    """The app command of an upstream job script that serves this file on the port the daemon assigned.

    It runs inside the container, where Singularity has turned the downstream's
    ``SINGULARITYENV_JARVICE_SERVICE_PORT`` into ``JARVICE_SERVICE_PORT``. Upstream fills its
    scripts with ``str.format``, so the source's braces are doubled.
    """
    with open(__file__, encoding="utf-8") as handle:
        source = handle.read().replace("{", "{{").replace("}", "}}")
    return f'exec /usr/bin/python3 - "$JARVICE_SERVICE_PORT" <<\'WEBJOB_PY\'\n{source}\nWEBJOB_PY'


async def submit(run: Runner, port: int, name: str, *, minutes: int = 10) -> str:
    """Submit the job through ``run`` (commands on the login node); returns the Slurm job id."""
    result = await run("sbatch --parsable", stdin=batch_script(port, name, minutes=minutes))
    if result.exit_status != 0:
        raise RuntimeError(f"sbatch failed: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


async def node_address(run: Runner, job_id: str, *, timeout: float = 60) -> str:
    """Wait until the job runs; the address of its node as Slurm knows it (NodeAddr), what the daemon would use."""
    import trio  # the test process's, not the node's

    with trio.fail_after(timeout):
        while True:
            result = await run(f"squeue -h -j {int(job_id)} -o '%T %N'")
            state, _, node = result.stdout.strip().partition(" ")
            if state == "RUNNING" and node:
                break
            if result.exit_status != 0 or state in ("", "FAILED", "CANCELLED", "COMPLETED", "TIMEOUT"):
                raise RuntimeError(f"job {job_id} is not running: {result.stdout.strip() or result.stderr.strip()}")
            await trio.sleep(0.2)
        shown = await run(f"scontrol -o show node {node}")
    for field in shown.stdout.split():
        if field.startswith("NodeAddr="):
            return field.partition("=")[2]
    raise RuntimeError(f"no NodeAddr for {node}: {shown.stdout.strip()}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
