"""A small trio front to the official, synchronous ``kubernetes`` client.

The official client blocks and takes 0.2-0.5 s to import, so it is imported on
first use, in a worker thread, and every call runs in a thread of our own
limiter with a request timeout: a slow API server can hold at most that many
threads for at most that long, and never the trio loop. Objects go in and come
out as plain dicts in the API's own camelCase JSON, the form operators read in
``kubectl get -o yaml`` and tests compare against.

Where the API lives, in order: ``JARVICE_SLURM_KUBE_API`` (a URL; plain http is
accepted for ``kubectl proxy`` and for the tests' stand-in), the pod's service
account (in-cluster), then ``KUBECONFIG`` / ``~/.kube/config``.

Errors become the adapters' types, so the daemon needs no Kubernetes knowledge to
decide: the API could not be asked (unreachable, timeout, 429, 5xx) is
``KubeUnavailable``, a ``ClusterUnavailable``, transient; the API refused
(403, 422 ...) is ``KubeApiError``, a ``CommandFailed``; 404 and 409 get their own
subclasses because callers treat them as answers, not failures.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from adapters.errors import ClusterUnavailable, CommandFailed
from config.settings import ConfigError, OutboundHTTP

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)


class KubeUnavailable(ClusterUnavailable):
    """The Kubernetes API could not be asked: unreachable, too slow, throttling (429) or failing (5xx)."""


class KubeApiError(CommandFailed):
    """The Kubernetes API answered and refused the request; ``status`` is the HTTP code."""

    def __init__(self, action: str, status: int, reason: str, message: str) -> None:
        super().__init__(action, status, message)
        self.status = status
        self.reason = reason
        # CommandFailed's text reads like a shell command; say what was asked instead
        Exception.__init__(self, f"Kubernetes API refused to {action}: {status} {reason}: {message}".rstrip(": "))


class KubeNotFound(KubeApiError):
    """404: the object (or its namespace) does not exist."""


class KubeConflict(KubeApiError):
    """409: the object already exists (create), or changed since it was read (replace)."""


@dataclass(frozen=True)
class Kind:
    """A namespaced resource as the official client names it: ``{verb}_namespaced_{singular}`` on ``api``."""

    api: str
    singular: str
    plural: str


DEPLOYMENTS = Kind("AppsV1Api", "deployment", "deployments")
SERVICES = Kind("CoreV1Api", "service", "services")
INGRESSES = Kind("NetworkingV1Api", "ingress", "ingresses")
PODS = Kind("CoreV1Api", "pod", "pods")
LEASES = Kind("CoordinationV1Api", "lease", "leases")
SECRETS = Kind("CoreV1Api", "secret", "secrets")

_TRANSIENT = {0, 408, 429, 500, 502, 503, 504}


def _configure(api_url: str, retries: int, outbound: OutboundHTTP | None = None) -> ApiClient:
    """Build the official client's configuration; runs in a thread (imports and file reads block).

    ``outbound``: the pod's egress proxy (lowercase ``https_proxy``/``http_proxy``, ``no_proxy``) and the
    site's root CA (``REQUESTS_CA_BUNDLE``), as the JARVICE chart passes them; an in-cluster configuration
    keeps its own service-account CA.
    """
    from kubernetes import client, config

    cfg = client.Configuration()
    if api_url:
        if not api_url.startswith(("http://", "https://")):
            raise ConfigError("JARVICE_SLURM_KUBE_API", f"expected an http:// or https:// URL, got {api_url!r}")
        cfg.host = api_url.rstrip("/")
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as not_a_pod:
            try:
                config.load_kube_config(client_configuration=cfg, persist_config=False)
            except (config.ConfigException, OSError, ValueError, TypeError) as no_kubeconfig:
                raise ConfigError(
                    "JARVICE_SLURM_KUBE_API",
                    f"is not set, this is not a pod ({not_a_pod}) and KUBECONFIG gives no cluster ({no_kubeconfig})",
                ) from None
    if outbound is not None:
        proxy = outbound.https_proxy if str(cfg.host).startswith("https:") else outbound.http_proxy
        if proxy:
            cfg.proxy, cfg.no_proxy = proxy, outbound.no_proxy or None
        if outbound.ca_bundle and not cfg.ssl_ca_cert:
            cfg.ssl_ca_cert = outbound.ca_bundle
    # connection errors only: urllib3 never retries a POST whose request was sent
    cfg.retries = retries
    return client.ApiClient(cfg)


def _status_message(body: str | bytes | None) -> tuple[str, str]:
    """The ``reason`` and ``message`` of a Kubernetes Status body, or the raw text."""
    if not body:
        return "", ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        status = json.loads(text)
    except ValueError:
        return "", text.strip()[:300]
    if not isinstance(status, dict):
        return "", text.strip()[:300]
    return str(status.get("reason", "")), str(status.get("message", ""))


def translate_error(exc: BaseException, action: str) -> Exception:
    """The adapters' exception for whatever the official client or urllib3 raised."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        reason, message = _status_message(exc.body)
        reason = reason or str(exc.reason or "")
        if status in _TRANSIENT:
            return KubeUnavailable(f"Kubernetes API: cannot {action}: {status} {reason} {message}".strip())
        cls = {404: KubeNotFound, 409: KubeConflict}.get(status, KubeApiError)
        return cls(action, status, reason, message)
    if isinstance(exc, HTTPError | OSError):
        return KubeUnavailable(f"Kubernetes API: cannot {action}: {exc}")
    if isinstance(exc, ValueError):  # the client's own model check refused the body before sending it
        return KubeApiError(action, 422, "Invalid", " ".join(str(exc).split())[:500])
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


class KubeClient:
    """Namespaced create/get/list/replace/delete, as dicts, from trio.

    Open with ``await KubeClient.open(url)``; ``close()`` when done (the
    connection pool holds sockets).
    """

    def __init__(self, api: ApiClient, *, timeout: float = 10.0, threads: int = 8) -> None:
        self._api = api
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(threads)
        self._apis: dict[str, Any] = {}

    @classmethod
    async def open(cls, api_url: str = "", *, timeout: float = 10.0, threads: int = 8, retries: int = 1,
                   outbound: OutboundHTTP | None = None) -> KubeClient:
        api = await trio.to_thread.run_sync(_configure, api_url, retries, outbound)
        return cls(api, timeout=timeout, threads=threads)

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    def close(self) -> None:
        self._api.close()

    def _typed(self, kind: Kind) -> Any:
        api = self._apis.get(kind.api)
        if api is None:
            from kubernetes import client

            api = self._apis[kind.api] = getattr(client, kind.api)(self._api)
        return api

    async def _call(self, action: str, kind: Kind, verb: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._typed(kind), f"{verb}_namespaced_{kind.singular}")
        connect = min(5.0, self.timeout)

        def call() -> Any:
            response = method(*args, _preload_content=False, _request_timeout=(connect, self.timeout), **kwargs)
            try:
                data = response.data
            finally:
                response.release_conn()
            return json.loads(data) if data else None

        # the request timeout bounds the thread; this bounds retries of the connection on top of it
        try:
            with trio.fail_after(self.timeout * 3 + connect):
                return await trio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=self._limiter)
        except trio.TooSlowError:
            raise KubeUnavailable(f"Kubernetes API: cannot {action}: no answer in {self.timeout * 3 + connect:g} s") from None
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            translated = translate_error(exc, action)
            if translated is exc:
                raise
            raise translated from exc

    async def create(self, kind: Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("metadata", {}).get("name", "?")
        return await self._call(f"create {kind.singular} {namespace}/{name}", kind, "create", namespace, body)

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(f"read {kind.singular} {namespace}/{name}", kind, "read", name, namespace)

    async def list(self, kind: Kind, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        result = await self._call(
            f"list {kind.plural} in {namespace}", kind, "list", namespace, label_selector=label_selector or None
        )
        return list(result.get("items") or [])

    async def replace(self, kind: Kind, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT: with ``metadata.resourceVersion`` set, the API answers 409 if the object changed since."""
        return await self._call(f"replace {kind.singular} {namespace}/{name}", kind, "replace", name, namespace, body)

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        """Delete, and let the garbage collector remove what the object owns (a Deployment's pods)."""
        await self._call(
            f"delete {kind.singular} {namespace}/{name}", kind, "delete", name, namespace, propagation_policy="Background"
        )
