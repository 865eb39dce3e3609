"""Serve a Quart app on a real socket (127.0.0.1, a free port) for tests, as daemon/server.py does."""

from __future__ import annotations

from functools import partial

import trio
from hypercorn.trio import serve as hypercorn_serve
from quart import Quart

from daemon.server import http_config


async def serve_app(nursery: trio.Nursery, app: Quart) -> str:
    """Start hypercorn in ``nursery``; return the base URL once it accepts connections."""
    config = http_config("127.0.0.1", 0)
    config.graceful_timeout = 1  # tests stop at once
    binds = await nursery.start(partial(hypercorn_serve, app, config))
    return binds[0]
