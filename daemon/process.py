"""What every process of the daemon shares (``serve``, and each ``proxy``): the key check and a clean stop.

Kept apart from daemon/server.py so that a proxy process, one per interactive job in local
mode, does not import the HTTP stack (hypercorn, quart) it never uses: it starts faster
and holds less memory.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

from adapters.ssh import load_private_key
from config.settings import ConfigError

log = logging.getLogger("slurm_downstream")


def describe_key(pem: str) -> str:
    """Type and fingerprint of the client key; raises ConfigError if it is unusable."""
    try:
        key = load_private_key(pem)
    except ValueError as exc:
        raise ConfigError("JARVICE_SLURM_SSH_PKEY", str(exc)) from None
    return f"{key.algorithm.decode()} {key.get_fingerprint()}"


async def stop_on_signal(scope: trio.CancelScope) -> None:
    """Cancel ``scope`` on the first SIGTERM or SIGINT (the orderly stop: children and connections closed)."""
    await on_signal(scope.cancel)


async def on_signal(stop: Callable[[], None]) -> None:
    """Call ``stop`` on the first SIGTERM or SIGINT, with one log line."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s, stopping", signal.Signals(signum).name)
            stop()
            return
