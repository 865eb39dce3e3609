"""Interactive jobs' proxies as Kubernetes objects: the ProxyBackend for ``JARVICE_SLURM_PROXY_MODE=kubernetes``.

``start`` creates the job's Deployment, Service and Ingress (``proxy_objects``) and
answers at once with STARTING: a pod takes seconds to minutes to pull and start.
``status`` is synchronous in the backend protocol, so it answers from a cache that
``refresh`` fills with two list calls for all jobs at once (Deployments and pods
by label), never one call per job; ``run`` refreshes it every few seconds.

What a user would see, from the pod's state: STARTING until the pod is ready
(its readiness probe connects to the proxy's port), SERVING with the URL, FAILED
with the kubelet's reason when it will not get better by waiting
(ImagePullBackOff, a missing Secret, a crash loop, a Deployment past its progress
deadline).

Objects carry ``app.kubernetes.io/instance`` (default: the cluster address), so
several daemons can share the jobs namespace and ``keys`` (for /gc of orphans)
never returns another daemon's proxies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import trio

from adapters.errors import InvalidRequest
from adapters.kube import proxy_objects as objects
from adapters.kube.client import (
    DEPLOYMENTS,
    INGRESSES,
    PODS,
    SECRETS,
    SERVICES,
    KubeApiError,
    KubeClient,
    KubeConflict,
    KubeNotFound,
    KubeUnavailable,
)
from adapters.kube.domain import JobsDomain
from adapters.proxy.base import ProxyState, ProxyStatus, ProxyTarget
from config.settings import ConfigError, Settings, decode_private_key

log = logging.getLogger(__name__)

# kubelet reasons that waiting will not cure; others (ContainerCreating, ErrImagePull once) are still STARTING
_HOPELESS = {
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",  # e.g. the SSH Secret or its "pkey" key is missing
    "CrashLoopBackOff",
}


def default_instance(settings: Settings) -> str:
    """The login node's name when it is a valid label value, else a stable digest of it."""
    addr = settings.cluster_addr
    if objects.label_safe(addr):
        return addr
    return "cluster-" + hashlib.sha256(f"{addr}:{settings.cluster_port}".encode()).hexdigest()[:16]


def _known_hosts_text(settings: Settings) -> str:
    """Proxy pods do not have the daemon's files: pass the host keys themselves."""
    value = settings.ssh_known_hosts or ""
    if value and "\n" not in value:
        try:
            with open(value, encoding="utf-8") as handle:
                value = handle.read()
        except FileNotFoundError:  # trust on first use, and the login node has not been reached yet
            value = ""
    value = "\n".join(line for line in value.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not value and not settings.ssh_insecure_host_key:
        raise ConfigError(
            "JARVICE_SLURM_SSH_KNOWN_HOSTS", "proxy pods need the login node's host key; set it (file or lines)"
        )
    return value + "\n" if value else ""


def spec_from_settings(
    settings: Settings, *, instance: str = "", image_pull_secrets: tuple[str, ...] = ()
) -> objects.ProxyPodSpec:
    proxy = settings.proxy
    if not settings.jobs_domain:
        raise ConfigError("JARVICE_JOBS_DOMAIN", "is required when JARVICE_SLURM_PROXY_MODE=kubernetes")
    try:
        domain = JobsDomain.parse(settings.jobs_domain)
    except ValueError as exc:
        raise ConfigError("JARVICE_JOBS_DOMAIN", str(exc)) from None
    tolerations = json.loads(proxy.tolerations)
    if not all(isinstance(t, dict) for t in tolerations):
        raise ConfigError("JARVICE_JOBS_TOLERATIONS", "must be a JSON list of objects")
    return objects.ProxyPodSpec(
        namespace=proxy.namespace,
        image=proxy.image,
        ssh_secret=proxy.ssh_secret,
        domain=domain,
        instance=instance or default_instance(settings),
        cluster_addr=settings.cluster_addr,
        cluster_port=settings.cluster_port,
        ssh_user=settings.ssh_user,
        known_hosts=_known_hosts_text(settings),
        insecure_host_key=settings.ssh_insecure_host_key,
        keepalive=settings.ssh_keepalive,
        log_level=settings.log_level,
        log_format=settings.log_format,
        ingress_class=proxy.ingress_class,
        ingress_annotations=proxy.ingress_annotations,
        cert_issuer=proxy.cert_issuer,
        cert_cluster_issuer=proxy.cert_cluster_issuer,
        tolerations=tuple(tolerations),
        image_pull_secrets=image_pull_secrets,
    )


async def read_proxy_key(kube: KubeClient, namespace: str, secret: str) -> str:
    """The proxy pods' private key (PEM) as the kubelet hands it to them: the Secret's ``pkey``.

    Read only to check, at start, what the key may do on the login node (preflight); the
    pods themselves get it through ``secretKeyRef``. Raises the client's errors (KubeNotFound:
    no such Secret) and ValueError when the Secret holds no usable key.
    """
    body = await kube.get(SECRETS, namespace, secret)
    raw = (body.get("data") or {}).get("pkey")
    if raw is None:
        raise ValueError(f"Secret {namespace}/{secret} has no key \"pkey\" (the proxy pods' container cannot start)")
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8")
        return decode_private_key(text, f"Secret {namespace}/{secret} key pkey")
    except (binascii.Error, UnicodeDecodeError, ConfigError) as exc:
        raise ValueError(f"Secret {namespace}/{secret} key pkey is not a private key: {exc}") from None


def _waiting_problem(pod: Mapping[str, Any]) -> tuple[str, str, bool]:
    """(reason, message, hopeless) of the first container that is not running, if any."""
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return status.get("reason") or "Failed", status.get("message") or "the proxy pod failed", True
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            reason = waiting["reason"]
            message = waiting.get("message") or ""
            last = ((container.get("lastState") or {}).get("terminated") or {}).get("message")
            return reason, (message or last or "").strip(), reason in _HOPELESS
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("reason") or "Unschedulable", condition.get("message") or "", False
    return "", "", False


def _ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or []
    )


def proxy_status(deployment: Mapping[str, Any], pods: list[Mapping[str, Any]], url: str) -> ProxyStatus:
    """What the objects say about one proxy, in the backend's terms."""
    restarts = sum(
        int(c.get("restartCount") or 0) for pod in pods for c in (pod.get("status") or {}).get("containerStatuses") or []
    )
    ready_replicas = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    if ready_replicas > 0 or any(_ready(pod) for pod in pods):
        return ProxyStatus(ProxyState.SERVING, url=url, restarts=restarts)
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("reason") == "ProgressDeadlineExceeded":
            return ProxyStatus(ProxyState.FAILED, error=f"ProgressDeadlineExceeded: {condition.get('message', '')}".strip(),
                               restarts=restarts)
    for pod in pods:
        reason, message, hopeless = _waiting_problem(pod)
        if reason:
            error = f"{reason}: {message}" if message else reason
            return ProxyStatus(ProxyState.FAILED if hopeless else ProxyState.STARTING, error=error, restarts=restarts)
    return ProxyStatus(ProxyState.STARTING, restarts=restarts)


class KubernetesProxies:
    """ProxyBackend: one Deployment + Service + Ingress per interactive job."""

    def __init__(self, kube: KubeClient, spec: objects.ProxyPodSpec, *, refresh_interval: float = 3.0) -> None:
        self.kube = kube
        self.spec = spec
        self.refresh_interval = refresh_interval
        self._status: dict[str, ProxyStatus] = {}
        self._started_at: dict[str, float] = {}  # trio time each start() finished: a list begun earlier may miss it
        self._refused: set[str] = set()  # the API refused part of the start: FAILED until the next start or stop
        self._locks: dict[str, trio.Lock] = {}

    @classmethod
    def from_settings(
        cls,
        kube: KubeClient,
        settings: Settings,
        *,
        instance: str = "",
        image_pull_secrets: tuple[str, ...] = (),
        refresh_interval: float = 3.0,
    ) -> KubernetesProxies:
        spec = spec_from_settings(settings, instance=instance, image_pull_secrets=image_pull_secrets)
        return cls(kube, spec, refresh_interval=refresh_interval)

    def url(self, key: str) -> str:
        return self.spec.domain.url_for(key)

    def _lock(self, key: str) -> trio.Lock:
        return self._locks.setdefault(key, trio.Lock())

    def _busy(self, key: str) -> bool:
        lock = self._locks.get(key)
        return lock is not None and lock.locked()

    async def start(self, target: ProxyTarget, *, job_name: str = "") -> ProxyStatus:
        """Create (or keep) the job's three objects; a Deployment aimed elsewhere is re-aimed.

        Raises KubeUnavailable (a ClusterUnavailable) when the API cannot be asked, so
        the caller retries later; anything the API refuses is a FAILED status.
        """
        key = target.key
        if not objects.valid_key(key):
            raise InvalidRequest(f"job number {key!r} cannot name Kubernetes objects")
        async with self._lock(key):
            try:
                owner = await self._ensure_deployment(key, target, job_name)
                await self._ensure(SERVICES, objects.service(self.spec, key, job_name, owner))
                await self._ensure(INGRESSES, objects.ingress(self.spec, key, job_name, owner))
            except KubeApiError as exc:
                log.error("proxy for job %s: %s", key, exc)
                status = ProxyStatus(ProxyState.FAILED, error=str(exc))
                self._refused.add(key)
            else:
                self._refused.discard(key)
                current = self._status.get(key)
                status = current if current and current.state is not ProxyState.FAILED else ProxyStatus(ProxyState.STARTING)
                log.info("proxy for job %s: %s -> %s at %s", key, objects.object_name(key),
                         objects.target_address(target.host, target.port), self.url(key))
            self._status[key] = status
            self._started_at[key] = trio.current_time()
            return status

    async def _ensure_deployment(self, key: str, target: ProxyTarget, job_name: str) -> dict[str, Any]:
        body = objects.deployment(self.spec, key, target.host, target.port, job_name)
        try:
            return await self.kube.create(DEPLOYMENTS, self.spec.namespace, body)
        except KubeConflict:
            pass
        existing = await self.kube.get(DEPLOYMENTS, self.spec.namespace, objects.object_name(key))
        wanted = body["metadata"]["annotations"][objects.ANNOTATION_TARGET]
        if (existing.get("metadata", {}).get("annotations") or {}).get(objects.ANNOTATION_TARGET) == wanted:
            return existing
        log.info("proxy for job %s: re-aiming at %s", key, wanted)
        body["metadata"]["resourceVersion"] = existing["metadata"].get("resourceVersion")
        self._status.pop(key, None)
        return await self.kube.replace(DEPLOYMENTS, self.spec.namespace, objects.object_name(key), body)

    async def _ensure(self, kind: Any, body: dict[str, Any]) -> None:
        try:
            await self.kube.create(kind, self.spec.namespace, body)
        except KubeConflict:
            pass  # there already: a repeated start, or a daemon restart; its spec depends only on the key

    async def stop(self, key: str) -> None:
        """Delete the three objects (the Deployment's pods follow); already gone is fine."""
        if not objects.valid_key(key):
            return
        lock = self._lock(key)
        async with lock:
            name = objects.object_name(key)
            for kind in (INGRESSES, SERVICES, DEPLOYMENTS):
                try:
                    await self.kube.delete(kind, self.spec.namespace, name)
                except KubeNotFound:
                    pass
            self._status.pop(key, None)
            self._started_at.pop(key, None)
            self._refused.discard(key)
            log.info("proxy for job %s: stopped", key)
        if not lock.locked():  # trio hands a released lock straight to a waiter: locked() means one is queued
            self._locks.pop(key, None)

    def status(self, key: str) -> ProxyStatus | None:
        return self._status.get(key)

    async def keys(self) -> set[str]:
        """Every job with any of our objects left, also from before a restart (Services and Ingresses too,
        in case a stop was cut short)."""
        found: set[str] = set()
        for kind in (DEPLOYMENTS, SERVICES, INGRESSES):
            for obj in await self.kube.list(kind, self.spec.namespace, self.spec.list_selector()):
                key = ((obj.get("metadata") or {}).get("labels") or {}).get(objects.LABEL_NUMBER)
                if key:
                    found.add(key)
        return found

    async def refresh(self) -> None:
        """Re-read every proxy's state: two list calls, whatever the number of jobs."""
        begun = trio.current_time()
        selector = self.spec.list_selector()
        deployments = await self.kube.list(DEPLOYMENTS, self.spec.namespace, selector)
        pods = await self.kube.list(PODS, self.spec.namespace, selector)
        pods_by_key: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            key = ((pod.get("metadata") or {}).get("labels") or {}).get(objects.LABEL_NUMBER, "")
            if not (pod.get("metadata") or {}).get("deletionTimestamp"):
                pods_by_key.setdefault(key, []).append(pod)
        seen = set()
        for deployment in deployments:
            key = ((deployment.get("metadata") or {}).get("labels") or {}).get(objects.LABEL_NUMBER, "")
            if not key or self._busy(key) or key in self._refused:
                continue  # a start or stop is under way and sets the status itself, or a refusal must stay visible
            seen.add(key)
            self._status[key] = proxy_status(deployment, pods_by_key.get(key, []), self.url(key))
        for key in set(self._status) - seen:
            if self._busy(key) or key in self._refused:
                continue
            if key not in self._started_at:
                del self._status[key]  # known only from an earlier listing; nobody asked for it here
            elif self._started_at[key] < begun:
                self._status[key] = ProxyStatus(ProxyState.FAILED, error="the proxy's Deployment is gone")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep statuses current; ready after the first attempt (proxies from before a restart are then known)."""
        started = False
        while True:
            try:
                await self.refresh()
            except KubeUnavailable as exc:
                log.warning("proxy status refresh failed, keeping the last known: %s", exc)
            except KubeApiError as exc:  # e.g. 403: the Role lacks "list pods"; an operator must act
                log.error("proxy status refresh refused: %s", exc)
            if not started:
                task_status.started()
                started = True
            await trio.sleep(self.refresh_interval)
