"""Keep the garbage collector's full walks short: what lives as long as the process is set aside.

A full (generation 2) collection walks every tracked object while the trio loop
waits, so every request in flight waits too. After start-up the daemon's heap is
~70,000 objects (trio, asyncssh, quart, hypercorn, prometheus_client and our own
modules), a walk of ~18 ms on these machines that never finds garbage: modules,
classes and functions live until exit. ``gc.freeze()`` moves them out of the
collector's generations; objects made afterwards (jobs, requests) are collected
as before. With 10,000 jobs this takes a full-collection pause from ~34 ms to
~3 ms (``bench/footprint.py`` prints both), and /runstatus's p99 at 1,000 calls/s
from ~21 ms to ~4 ms (``bench/api_latency.py``, open loop).
"""

from __future__ import annotations

import gc


def freeze_heap() -> int:
    """Collect what is already garbage, then set every surviving object aside; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
