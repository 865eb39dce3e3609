"""Leader election with a ``coordination.k8s.io/v1`` Lease: exactly one replica polls Slurm.

The algorithm is client-go's, which every Kubernetes controller uses:

- A candidate reads the Lease. Absent: it creates it, naming itself holder. Held
  by another and not expired: it waits. Its own, free (released) or expired: it
  writes itself in with the ``resourceVersion`` it read, so of two candidates that
  read the same version, the API lets exactly one write win (the other gets 409).
- "Expired" is judged on the local monotonic clock: a Lease whose holder or
  ``renewTime`` has not changed for ``leaseDurationSeconds`` since *this* replica
  first saw that value. Wall clocks of different nodes are never compared.
- The leader renews every ``renew_period``. It counts itself leader only until
  ``renew_deadline`` after the start of its last successful write, and
  ``renew_deadline < lease_duration``: another replica can only take over
  ``lease_duration`` after it saw that write, which is later, so two replicas never
  both believe they lead (given clocks that tick at the same rate).
- On a clean stop the leader releases the Lease (empties the holder), so a
  successor takes over at its next try instead of waiting for the expiry.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import trio

from adapters.errors import DownstreamError
from adapters.kube.client import LEASES, KubeClient, KubeConflict, KubeNotFound

log = logging.getLogger(__name__)

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,200}[a-z0-9])?$")


def lease_name(instance: str) -> str:
    """One Lease per daemon instance (see ``proxies.default_instance``): two schedulers for two Slurm
    clusters in one namespace must not elect one leader between them."""
    suffix = instance if _DNS_SUBDOMAIN.match(instance) else hashlib.sha256(instance.encode()).hexdigest()[:16]
    return f"slurm-downstream-{suffix}"


def micro_time(now: datetime | None = None) -> str:
    """A Kubernetes MicroTime. The official client re-serialises it with ``isoformat()``, which drops a
    fraction of exactly .000000 that the API server's RFC3339Micro parser insists on: never send one."""
    now = now or datetime.now(UTC)
    return now.replace(microsecond=now.microsecond or 1).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaign for one Lease; ``run`` in the daemon's nursery, then ``lead(poller)`` or watch ``is_leader``."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_period: float = 2.0,
        renew_deadline: float | None = None,
        release_on_stop: bool = True,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        renew_deadline = lease_duration * 2 / 3 if renew_deadline is None else renew_deadline
        if not 0 < renew_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < renew_period < renew_deadline < lease_duration")
        if not identity:
            raise ValueError("a candidate needs a non-empty identity (the pod name)")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_period = renew_period
        self.renew_deadline = renew_deadline
        self.release_on_stop = release_on_stop
        # Whether the leader's work goes well (the daemon: it polled Slurm lately). A leader that cannot
        # do it gives the Lease up and sits one lease out, so a replica that can takes over.
        self.healthy = healthy
        self._hold_off_until = -math.inf
        self.holder = ""  # who holds the Lease, as last read
        self.transitions = 0  # times this replica became leader
        self._leading = False
        self._valid_until = -math.inf  # trio time after which we no longer count ourselves leader
        self._observed: tuple[Any, ...] = ()
        self._observed_at = 0.0
        self._gained = trio.Event()
        self._lost = trio.Event()
        self._lost.set()

    @property
    def is_leader(self) -> bool:
        return self._leading and trio.current_time() < self._valid_until

    async def wait_leading(self) -> None:
        """Return once this replica leads (at once if it does)."""
        await self._gained.wait()

    async def wait_lost(self) -> None:
        """Return once the current term ends (at once if this replica does not lead)."""
        await self._lost.wait()

    async def lead(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` whenever this replica leads; cancel it the moment leadership is lost, and
        start it again on the next win. Returns when ``fn`` returns."""
        while True:
            await self.wait_leading()
            finished = False
            async with trio.open_nursery() as nursery:

                async def depose() -> None:
                    await self.wait_lost()
                    log.warning("leadership lost: stopping %s", getattr(fn, "__name__", "the leader's work"))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(depose)
                await fn()
                finished = True
                nursery.cancel_scope.cancel()
            if finished:
                return

    def _set_leading(self, leading: bool, valid_from: float = 0.0, why: str = "") -> None:
        if leading:
            self._valid_until = valid_from + self.renew_deadline
            if not self._leading:
                self._leading = True
                self.transitions += 1
                self._lost = trio.Event()
                self._gained.set()
                log.info("leader election: %s now leads (Lease %s/%s)", self.identity, self.namespace, self.name)
        elif self._leading:
            self._leading = False
            self._valid_until = -math.inf
            self._gained = trio.Event()
            self._lost.set()
            log.warning("leader election: %s no longer leads: %s", self.identity, why or f"the Lease names {self.holder!r}")

    def _body(self, spec: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    async def try_acquire_or_renew(self) -> bool:
        """One round: read, decide, maybe write. True when this replica holds the Lease afterwards."""
        begun = trio.current_time()  # before the write: others see it later, so our term ends first
        now = micro_time()
        duration = math.ceil(self.lease_duration)
        try:
            lease = await self.kube.get(LEASES, self.namespace, self.name)
        except KubeNotFound:
            spec = {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                    "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
            try:
                await self.kube.create(LEASES, self.namespace, self._body(spec, None))
            except KubeConflict:
                return False  # another candidate created it first
            self.holder = self.identity
            self._set_leading(True, begun)
            return True
        spec = dict(lease.get("spec") or {})
        metadata = lease.get("metadata") or {}
        holder = spec.get("holderIdentity") or ""
        self.holder = holder
        record = (holder, spec.get("renewTime"), metadata.get("resourceVersion"))
        if record != self._observed:
            self._observed, self._observed_at = record, begun
        held_for = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and begun < self._observed_at + held_for:
            self._set_leading(False)
            return False
        if holder != self.identity:
            spec["holderIdentity"] = self.identity
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        spec["renewTime"] = now
        spec["leaseDurationSeconds"] = duration
        try:
            await self.kube.replace(LEASES, self.namespace, self.name, self._body(spec, metadata.get("resourceVersion")))
        except (KubeConflict, KubeNotFound):
            return False  # someone wrote (or deleted) it since we read: next round decides
        if holder != self.identity:
            log.info("leader election: %s takes Lease %s/%s over from %r", self.identity, self.namespace, self.name,
                     holder or None)
        self.holder = self.identity
        self._set_leading(True, begun)
        return True

    async def step_down(self, why: str) -> None:
        """Stop leading, give the Lease up and stay out of the next lease, so another candidate wins it."""
        self._set_leading(False, why=why)
        self._hold_off_until = trio.current_time() + self.lease_duration
        with trio.move_on_after(self.kube.timeout):
            try:
                await self.release()
            except DownstreamError as exc:
                log.warning("leader election: could not release the Lease: %s", exc)

    async def release(self) -> None:
        """Give the Lease up now (only if still ours), so a successor need not wait for it to expire."""
        try:
            lease = await self.kube.get(LEASES, self.namespace, self.name)
        except KubeNotFound:
            return
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            return
        spec.pop("holderIdentity", None)
        spec["leaseDurationSeconds"] = 1
        spec["renewTime"] = micro_time()
        try:
            await self.kube.replace(
                LEASES, self.namespace, self.name, self._body(spec, (lease.get("metadata") or {}).get("resourceVersion"))
            )
            log.info("leader election: %s released Lease %s/%s", self.identity, self.namespace, self.name)
        except (KubeConflict, KubeNotFound):
            pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Campaign until cancelled; ready after the first round, so the caller knows at once whether it leads."""
        started = False
        try:
            while True:
                deadline = self._valid_until if self._leading else math.inf
                if self._leading or trio.current_time() >= self._hold_off_until:
                    with trio.move_on_at(deadline):  # a hung API call must not stretch a term
                        try:
                            await self.try_acquire_or_renew()
                        except DownstreamError as exc:
                            log.warning("leader election: cannot reach the Lease: %s", exc)
                if self._leading and self.healthy is not None and not self.healthy():
                    await self.step_down("this replica cannot do the leader's work (no successful poll lately)")
                if self._leading and trio.current_time() >= self._valid_until:
                    self._set_leading(False, why=f"no renewal for {self.renew_deadline:g} s")
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(self.renew_period)
        finally:
            was_leading = self._leading
            self._set_leading(False, why="stopping")
            if was_leading and self.release_on_stop:
                with trio.CancelScope(shield=True), trio.move_on_after(self.kube.timeout):
                    try:
                        await self.release()
                    except DownstreamError as exc:
                        log.warning("leader election: could not release the Lease: %s", exc)
