"""The HTTP stack's own floor: hypercorn on trio, configured as the daemon serves, a fixed answer, no daemon.

``python -m bench.floor --host H --port P`` serves a bare ASGI app (no Quart,
no Downstream) that reads each request's body and answers a fixed 72-byte JSON
list, the size of a /runstatus answer. Measured with the very client and
concurrency of benchmark 1, it shows how much of the latency is the daemon and
how much is the client and server stack on this machine. ``/ready`` answers 200
like the daemon, so the benchmark's process helper can start it.
"""

from __future__ import annotations

import argparse

import trio
from hypercorn.trio import serve

from daemon.server import http_config

ANSWER = b'[["node1"], "00:01:40", "20261123-benchsim-alice_s-01/1/20000001", null]'


async def app(scope: dict, receive, send) -> None:  # noqa: ANN001 - the ASGI callables
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    trio.run(serve, app, http_config(args.host, args.port))


if __name__ == "__main__":
    main()
