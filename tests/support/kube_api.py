"""A local stand-in for the Kubernetes API server, for the Kubernetes adapter's tests.

No API server can run on these machines (no kind, k3s or etcd; no container
runtime for them), so the adapter's tests drive the REAL official client, over
real HTTP on 127.0.0.1, against this: the namespaced endpoints the adapter uses
(Deployments, Services, Ingresses, Pods, Leases, Secrets) with the API server's answers
that matter to it:

- create: 201, or 409 AlreadyExists; the server fills uid, resourceVersion,
  creationTimestamp and generation;
- get: 200 or 404 NotFound; list with ``labelSelector`` (``k=v``, ``k!=v``, ``k``, ``!k``);
- replace (PUT): 404 when absent, 409 Conflict when the body's resourceVersion is
  not the current one (optimistic concurrency, what leader election rests on);
- delete: 200 with a Status, or 404; deleting a Deployment removes its pods and
  the objects that name it in ``ownerReferences`` (the garbage collector);
- bodies are checked against the Kubernetes OpenAPI schema (kubernetes-validate,
  strict: unknown fields are errors), Lease times against RFC3339Micro as the API
  server parses them, and names against DNS rules: a bad body is a 422 Invalid.

What the controllers and the kubelet would do (run a Deployment's pod, make it
ready, fail to pull its image) is done by the tests through ``rollout`` and
``pod_waiting``: the adapter then reads it back over HTTP, as in a real cluster.
``container`` gives what the kubelet would start for a Deployment's pod (argv and
environment, Secret references resolved), so a test can run that very command.
Every request is recorded (method, path, query, body) for the tests to inspect.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate

KUBERNETES_VERSION = "1.30.0"
_PATH_RE = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[a-z0-9.]+)/(?P<version>v[0-9a-z]+))/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?$"
)
_KINDS = {  # plural -> (group/version, kind)
    "deployments": ("apps/v1", "Deployment"),
    "services": ("v1", "Service"),
    "ingresses": ("networking.k8s.io/v1", "Ingress"),
    "pods": ("v1", "Pod"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
    "secrets": ("v1", "Secret"),
}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.rstrip("=")) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class KubeAPIStandIn:
    """``with KubeAPIStandIn() as api:`` serves at ``api.url`` until the block ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name)
        self._version = 0
        self.requests: list[Request] = []
        self.fail_with: int | None = None  # answer every request with this status (e.g. 503)
        self.forbidden: set[tuple[str, str]] = set()  # (method, plural) that RBAC refuses with 403
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> KubeAPIStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                code, payload = stand_in.handle(self.command, self.path, raw)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="kube-api-stand-in", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    # ------------------------------------------------------------------ the API
    def handle(self, method: str, raw_path: str, raw_body: bytes) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = raw_body.decode("utf-8", "replace")
        with self._lock:
            self.requests.append(Request(method, parts.path, query, copy.deepcopy(body)))
            try:
                if self.fail_with:
                    raise ApiError(self.fail_with, "ServiceUnavailable", "the stand-in was told to fail")
                m = _PATH_RE.match(parts.path)
                if not m or m["plural"] not in _KINDS:
                    raise ApiError(404, "NotFound", f"the server could not find the requested resource {parts.path}")
                if (method, m["plural"]) in self.forbidden:
                    verb = {"POST": "create", "GET": "get", "PUT": "update", "DELETE": "delete"}.get(method, method)
                    raise ApiError(403, "Forbidden", f'{m["plural"]} is forbidden: User "system:serviceaccount:test:daemon" '
                                                     f'cannot {verb} resource "{m["plural"]}" in the namespace "{m["ns"]}"')
                expected = _KINDS[m["plural"]][0]
                got = f"{m['group']}/{m['version']}" if m["group"] else "v1"
                if got != expected:
                    raise ApiError(404, "NotFound", f"{m['plural']} are served at {expected}, not {got}")
                return self._dispatch(method, m["plural"], m["ns"], m["name"], query, body)
            except ApiError as exc:
                return exc.code, exc.status()

    def _dispatch(self, method: str, plural: str, ns: str, name: str | None, query: dict[str, list[str]],
                  body: Any) -> tuple[int, Any]:
        if method == "GET" and name is None:
            selector = (query.get("labelSelector") or [""])[0]
            items = [copy.deepcopy(o) for (p, n, _), o in sorted(self._objects.items())
                     if p == plural and n == ns and _matches(o["metadata"].get("labels") or {}, selector)]
            api_version, kind = _KINDS[plural]
            return 200, {"kind": f"{kind}List", "apiVersion": api_version,
                         "metadata": {"resourceVersion": str(self._version)}, "items": items}
        if method == "POST" and name is None:
            return 201, self._create(plural, ns, body)
        if name is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} needs an object name")
        if method == "GET":
            return 200, copy.deepcopy(self._get(plural, ns, name))
        if method == "PUT":
            return 200, self._replace(plural, ns, name, body)
        if method == "DELETE":
            self._get(plural, ns, name)
            self._delete(plural, ns, name)
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        raise ApiError(405, "MethodNotAllowed", f"{method} is not served by the stand-in")

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _get(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        obj = self._objects.get((plural, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return obj

    def _check(self, plural: str, ns: str, body: Any, name: str | None = None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body is not a JSON object")
        api_version, kind = _KINDS[plural]
        if body.get("apiVersion") != api_version or body.get("kind") != kind:
            raise ApiError(400, "BadRequest", f"expected {api_version} {kind}, got {body.get('apiVersion')} {body.get('kind')}")
        metadata = body.setdefault("metadata", {})
        obj_name = metadata.get("name") or ""
        rule = _DNS_LABEL if plural == "services" else _DNS_SUBDOMAIN
        if not rule.match(obj_name) or (plural == "services" and len(obj_name) > 63):
            raise ApiError(422, "Invalid", f"metadata.name: Invalid value: {obj_name!r}")
        if name is not None and obj_name != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if metadata.setdefault("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the namespace on the URL")
        try:
            kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            raise ApiError(422, "Invalid", f"{kind}.{where}: {exc.message}") from None
        if plural == "secrets" and "stringData" in body:  # write-only: the API server stores it base64'd in data
            data = body.setdefault("data", {})
            for key, value in body.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        if plural == "leases":
            for field in ("acquireTime", "renewTime"):
                value = (body.get("spec") or {}).get(field)
                if value is not None and not _MICRO_TIME.match(value):
                    raise ApiError(400, "BadRequest", f"spec.{field}: parsing time {value!r} as RFC3339Micro")
        return body

    def _create(self, plural: str, ns: str, body: Any) -> dict[str, Any]:
        body = self._check(plural, ns, body)
        metadata = body["metadata"]
        if (plural, ns, metadata["name"]) in self._objects:
            raise ApiError(409, "AlreadyExists", f'{plural} "{metadata["name"]}" already exists')
        metadata.pop("resourceVersion", None)
        metadata.update(uid=str(uuid.uuid4()), resourceVersion=self._next_version(), generation=1,
                        creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        body.setdefault("status", {}) if plural in ("deployments", "pods") else None
        self._objects[(plural, ns, metadata["name"])] = body
        return copy.deepcopy(body)

    def _replace(self, plural: str, ns: str, name: str, body: Any) -> dict[str, Any]:
        current = self._get(plural, ns, name)
        body = self._check(plural, ns, body, name)
        metadata = body["metadata"]
        sent = metadata.get("resourceVersion")
        if sent and sent != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": '
                                            "the object has been modified; please apply your changes to the latest version")
        for kept in ("uid", "creationTimestamp"):
            metadata[kept] = current["metadata"][kept]
        metadata["resourceVersion"] = self._next_version()
        metadata["generation"] = current["metadata"].get("generation", 1) + (body.get("spec") != current.get("spec"))
        if "status" in current:
            body["status"] = current["status"]  # PUT on the main resource never changes status
        self._objects[(plural, ns, name)] = body
        return copy.deepcopy(body)

    def _delete(self, plural: str, ns: str, name: str) -> None:
        obj = self._objects.pop((plural, ns, name))
        if plural != "deployments":
            return
        uid = obj["metadata"]["uid"]
        selector = ",".join(f"{k}={v}" for k, v in obj["spec"]["selector"]["matchLabels"].items())
        for key, other in list(self._objects.items()):
            owners = {ref.get("uid") for ref in other["metadata"].get("ownerReferences") or []}
            is_pod = key[0] == "pods" and key[1] == ns and _matches(other["metadata"].get("labels") or {}, selector)
            if uid in owners or is_pod:
                del self._objects[key]

    # ------------------------------------------------------------------ what controllers and kubelets do
    def get(self, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get((plural, ns, name))
            return copy.deepcopy(obj) if obj else None

    def names(self, plural: str, ns: str) -> list[str]:
        with self._lock:
            return sorted(n for p, s, n in self._objects if p == plural and s == ns)

    def remove(self, plural: str, ns: str, name: str) -> None:
        """Delete as ``kubectl delete`` would (owned objects and a Deployment's pods go too)."""
        with self._lock:
            self._delete(plural, ns, name)

    def put(self, obj: dict[str, Any]) -> None:
        """Store an object as another client would have made it (e.g. another daemon's proxy)."""
        plural = next(p for p, (_, kind) in _KINDS.items() if kind == obj["kind"])
        with self._lock:
            self._create(plural, obj["metadata"]["namespace"], copy.deepcopy(obj))

    def _pod_for(self, ns: str, deployment: str) -> dict[str, Any]:
        dep = self._get("deployments", ns, deployment)
        name = f"{deployment}-5d4f8b7c9-{uuid.uuid4().hex[:5]}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": dict(dep["spec"]["template"]["metadata"]["labels"]),
                            "uid": str(uuid.uuid4()), "resourceVersion": self._next_version()},
               "spec": copy.deepcopy(dep["spec"]["template"]["spec"]), "status": {}}
        for key in [k for k in self._objects if k[0] == "pods" and k[1] == ns and k[2].startswith(deployment + "-")]:
            del self._objects[key]
        self._objects[("pods", ns, name)] = pod
        return pod

    def rollout(self, ns: str, deployment: str, *, ready: bool = True, restarts: int = 0) -> None:
        """The Deployment controller made its pod and the kubelet ran it; ``ready``: the readiness probe passes."""
        with self._lock:
            pod = self._pod_for(ns, deployment)
            container = pod["spec"]["containers"][0]["name"]
            pod["status"] = {
                "phase": "Running",
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": str(ready)}],
                "containerStatuses": [{"name": container, "ready": ready, "restartCount": restarts,
                                       "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
            }
            self._objects[("deployments", ns, deployment)]["status"] = {
                "replicas": 1, "readyReplicas": 1 if ready else 0, "availableReplicas": 1 if ready else 0}

    def pod_waiting(self, ns: str, deployment: str, reason: str, message: str = "", restarts: int = 0) -> None:
        """The kubelet could not start the container (ImagePullBackOff, CreateContainerConfigError ...)."""
        with self._lock:
            pod = self._pod_for(ns, deployment)
            container = pod["spec"]["containers"][0]["name"]
            pod["status"] = {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
                "containerStatuses": [{"name": container, "ready": False, "restartCount": restarts,
                                       "state": {"waiting": {"reason": reason, "message": message}}}],
            }
            self._objects[("deployments", ns, deployment)]["status"] = {"replicas": 1, "unavailableReplicas": 1}

    def container(self, ns: str, deployment: str) -> tuple[list[str], dict[str, str]]:
        """The argv and environment the kubelet starts the pod's first container with: ``command`` + ``args``,
        ``env`` values, ``secretKeyRef`` read from the namespace's Secrets (base64 ``data``). A missing Secret
        or key raises LookupError with the kubelet's message (the pod would be CreateContainerConfigError)."""
        with self._lock:
            spec = self._get("deployments", ns, deployment)["spec"]["template"]["spec"]["containers"][0]
            env: dict[str, str] = {}
            for var in spec.get("env") or []:
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref is None:
                    env[var["name"]] = var.get("value", "")
                    continue
                secret = self._objects.get(("secrets", ns, ref["name"]))
                if secret is None:
                    raise LookupError(f'secret "{ref["name"]}" not found')
                if ref["key"] not in (secret.get("data") or {}):
                    raise LookupError(f"couldn't find key {ref['key']} in Secret {ns}/{ref['name']}")
                env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            return [*spec.get("command", []), *spec.get("args", [])], env

    def requests_to(self, method: str, fragment: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method and fragment in r.path]
