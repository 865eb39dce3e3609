"""An upstream that polls every job every ``period`` seconds, spread evenly (open loop).

JARVICE upstream asks for ``/queued`` and ``/running`` and for each job's
``/runstatus`` on a timer, whether or not the previous answers came back; so
calls are issued on schedule and queue up when the downstream is slower than
the schedule. The same driver runs the daemon and the reference baseline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from bench.stats import ms, summary
from daemon.heap import freeze_heap

Call = Callable[[], Awaitable[object]]


async def drive(calls: Sequence[Call], *, period: float, window: float, concurrency: int = 8) -> dict:
    """Issue every call once per ``period`` for ``window`` seconds through ``concurrency`` workers."""
    send, receive = trio.open_memory_channel[tuple[float, Call]](math.inf)
    service: list[float] = []  # call start to answer
    response: list[float] = []  # scheduled time to answer (includes waiting for a free worker)
    issued = 0
    errors: list[str] = []
    freeze_heap()  # the client's own collector pauses are not the server's latency
    started = time.perf_counter()

    async def producer() -> None:
        nonlocal issued
        step = period / len(calls)
        k = 0
        while True:
            due = started + k * step
            if due - started >= window:
                return
            await trio.sleep(max(0.0, due - time.perf_counter()))
            send.send_nowait((due, calls[k % len(calls)]))
            issued += 1
            k += 1

    async def worker() -> None:
        async for due, call in receive:
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
                errors.append(str(exc)[:200])
                continue
            done = time.perf_counter()
            service.append(done - t0)
            response.append(done - due)

    with trio.move_on_after(window):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            for _ in range(concurrency):
                nursery.start_soon(worker)
    elapsed = time.perf_counter() - started
    s, r = summary(service), summary(response)
    return {
        "period_s": period,
        "calls_per_cycle": len(calls),
        "window_s": elapsed,
        "demanded_per_s": len(calls) / period,
        "issued": issued,
        "completed": len(service),
        "achieved_per_s": len(service) / elapsed,
        "backlog": issued - len(service) - len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "service_median_ms": ms(s["median"]),
        "service_p99_ms": ms(s["p99"]),
        "response_median_ms": ms(r["median"]),
        "response_p99_ms": ms(r["p99"]),
    }
