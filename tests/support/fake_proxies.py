"""An in-memory proxy backend at the ``ProxyBackend`` boundary: records what the daemon asks of it.

Faults are set per key by the tests: ``start_error[key]`` is raised by ``start`` (an exception,
e.g. an untranslated Kubernetes error) or returned (a ``ProxyStatus``, e.g. FAILED with a reason);
``stop_error`` and ``keys_error`` likewise for ``stop`` and ``keys``; ``gave_up[key]`` is the FAILED
status a started proxy shows (the backend gave up on it, as Kubernetes does on a crash loop).
"""

from __future__ import annotations

import trio

from adapters.proxy.base import ProxyState, ProxyStatus, ProxyTarget


class RecordingProxies:
    """Serves every proxy it is asked for, at once; keeps the order of starts and stops."""

    def __init__(self) -> None:
        self.serving: dict[str, ProxyTarget] = {}
        self.calls: list[tuple[str, str]] = []
        self.start_error: dict[str, BaseException | ProxyStatus] = {}
        self.stop_error: dict[str, BaseException] = {}
        self.keys_error: BaseException | None = None
        self.gave_up: dict[str, ProxyStatus] = {}  # started, then the backend gave up (crash loop, image pull)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def start(self, target: ProxyTarget) -> ProxyStatus:
        self.calls.append(("start", target.key))
        fault = self.start_error.get(target.key)
        if isinstance(fault, BaseException):
            raise fault
        if fault is not None:
            return fault
        self.serving[target.key] = target
        if target.key in self.gave_up:
            return ProxyStatus(ProxyState.STARTING)  # as Kubernetes: the objects exist, the pod fails later
        return self.status(target.key)

    async def stop(self, key: str) -> None:
        self.calls.append(("stop", key))
        if key in self.stop_error:
            raise self.stop_error[key]
        self.serving.pop(key, None)

    def status(self, key: str) -> ProxyStatus | None:
        target = self.serving.get(key)
        if target is not None and key in self.gave_up:
            return self.gave_up[key]
        return None if target is None else ProxyStatus(ProxyState.SERVING, url=f"http://proxy/{key}/")

    async def keys(self) -> set[str]:
        if self.keys_error is not None:
            raise self.keys_error
        return set(self.serving)
