"""The three objects behind one job's proxy on Kubernetes, as API bodies (pure: no I/O).

``jarvice-job-proxy-<N>`` names a Deployment (one pod running
``slurm-downstream proxy --listen 0.0.0.0:8080 --target HOST:PORT``), a Service in
front of it and an Ingress that publishes it under ``JARVICE_JOBS_DOMAIN``. A
Deployment rather than a bare pod so that a node drain or an evicted pod brings the
proxy back by itself. The SSH key reaches the pod only through a ``secretKeyRef``
(never a command-line argument, never a literal in the Deployment, where
``kubectl describe`` and the API's audit log would show it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapters.kube.domain import JobsDomain

NAME_PREFIX = "jarvice-job-proxy-"
PROXY_PORT = 8080
LABEL_APP = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_NUMBER = "jarvice.job.number"
LABEL_JOB_NAME = "jarvice.job.name"
ANNOTATION_TARGET = "jarvice.job.target"  # HOST:PORT the pod proxies to; a change means a new pod
APP = "jarvice-job-proxy"
MANAGER = "slurm-downstream"
RUN_AS = 10001  # the image's user; numeric so that runAsNonRoot can check it

# the key becomes part of DNS names (Service: a DNS-1035 label of at most 63 characters)
_KEY_RE = re.compile(r"^[0-9a-z]([-0-9a-z]{0,43}[0-9a-z])?$")
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def valid_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))


def label_safe(value: str) -> bool:
    return bool(_LABEL_VALUE_RE.match(value))


def object_name(key: str) -> str:
    return NAME_PREFIX + key


@dataclass(frozen=True)
class ProxyPodSpec:
    """Everything the objects need that does not change from job to job (from Settings, once)."""

    namespace: str
    image: str
    ssh_secret: str  # Secret with the private key under "pkey"
    domain: JobsDomain
    instance: str  # which daemon the objects belong to; several may share a namespace
    cluster_addr: str
    cluster_port: int
    ssh_user: str
    known_hosts: str  # known_hosts lines (public data), passed as an environment value
    insecure_host_key: bool = False
    keepalive: float = 15.0
    log_level: int = 20
    log_format: str = "text"
    ingress_class: str = ""
    ingress_annotations: tuple[tuple[str, str], ...] = ()
    cert_issuer: str = ""  # a namespaced cert-manager Issuer
    cert_cluster_issuer: str = ""  # a cert-manager ClusterIssuer (the JARVICE chart sets one or the other)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    image_pull_secrets: tuple[str, ...] = ()

    def selector(self, key: str) -> dict[str, str]:
        """The labels that pick one job's pods; a Deployment's selector is immutable, so this never grows."""
        return {LABEL_APP: APP, LABEL_INSTANCE: self.instance, LABEL_NUMBER: key}

    def labels(self, key: str, job_name: str = "") -> dict[str, str]:
        labels = {**self.selector(key), LABEL_MANAGED_BY: MANAGER}
        if job_name and label_safe(job_name):
            labels[LABEL_JOB_NAME] = job_name
        return labels

    def list_selector(self) -> str:
        """``labelSelector`` for every proxy object of this daemon (and no other daemon's)."""
        return f"{LABEL_APP}={APP},{LABEL_MANAGED_BY}={MANAGER},{LABEL_INSTANCE}={self.instance}"

    def tls_secret(self, key: str) -> str:
        # path based: one host, so one certificate that every job's Ingress shares
        return f"{APP}-tls" if self.domain.path_based else f"{object_name(key)}-tls"


def target_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _env(spec: ProxyPodSpec) -> list[dict[str, Any]]:
    return [
        {"name": "JARVICE_SLURM_CLUSTER_ADDR", "value": spec.cluster_addr},
        {"name": "JARVICE_SLURM_CLUSTER_PORT", "value": str(spec.cluster_port)},
        {"name": "JARVICE_SLURM_SSH_USER", "value": spec.ssh_user},
        {"name": "JARVICE_SLURM_SSH_PKEY", "valueFrom": {"secretKeyRef": {"name": spec.ssh_secret, "key": "pkey"}}},
        {"name": "JARVICE_SLURM_SSH_KNOWN_HOSTS", "value": spec.known_hosts},
        {"name": "JARVICE_SLURM_SSH_INSECURE_HOST_KEY", "value": "true" if spec.insecure_host_key else "false"},
        {"name": "JARVICE_SLURM_SSH_KEEPALIVE", "value": f"{spec.keepalive:g}"},
        {"name": "JARVICE_SLURM_SCHED_LOGLEVEL", "value": str(spec.log_level)},
        {"name": "JARVICE_SLURM_LOG_FORMAT", "value": spec.log_format},
    ]


def deployment(spec: ProxyPodSpec, key: str, host: str, port: int, job_name: str = "") -> dict[str, Any]:
    target = target_address(host, port)
    pod: dict[str, Any] = {
        # the proxy talks to nothing in the cluster: no API token in the pod, no service env vars
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "proxy",
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["slurm-downstream"],
                "args": ["proxy", "--listen", f"0.0.0.0:{PROXY_PORT}", "--target", target],
                "env": _env(spec),
                "ports": [{"name": "http", "containerPort": PROXY_PORT, "protocol": "TCP"}],
                "readinessProbe": {"tcpSocket": {"port": PROXY_PORT}, "periodSeconds": 2, "failureThreshold": 3},
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
    }
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    labels = spec.labels(key, job_name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": object_name(key),
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_TARGET: target},
        },
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 1,
            "progressDeadlineSeconds": 300,
            # a new target makes the old pod useless: replace it, never run both
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": spec.selector(key)},
            "template": {"metadata": {"labels": labels, "annotations": {ANNOTATION_TARGET: target}}, "spec": pod},
        },
    }


def _owned_by(owner: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """An owner reference to the Deployment, so Kubernetes removes the rest if a stop was cut short."""
    meta = (owner or {}).get("metadata") or {}
    if not meta.get("uid"):
        return []
    return [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"], "uid": meta["uid"]}]


def service(spec: ProxyPodSpec, key: str, job_name: str = "", owner: Mapping[str, Any] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": object_name(key), "namespace": spec.namespace, "labels": spec.labels(key, job_name)}
    if refs := _owned_by(owner):
        metadata["ownerReferences"] = refs
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": spec.selector(key),
            "ports": [{"name": "http", "port": PROXY_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def ingress(spec: ProxyPodSpec, key: str, job_name: str = "", owner: Mapping[str, Any] | None = None) -> dict[str, Any]:
    host = spec.domain.host_for(key)
    annotations = dict(spec.ingress_annotations)
    if spec.cert_issuer:
        annotations["cert-manager.io/issuer"] = spec.cert_issuer
    if spec.cert_cluster_issuer:
        annotations["cert-manager.io/cluster-issuer"] = spec.cert_cluster_issuer
    metadata: dict[str, Any] = {"name": object_name(key), "namespace": spec.namespace, "labels": spec.labels(key, job_name)}
    if annotations:
        metadata["annotations"] = annotations
    if refs := _owned_by(owner):
        metadata["ownerReferences"] = refs
    body: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": {
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": spec.domain.path_for(key),
                                "pathType": "Prefix",
                                "backend": {"service": {"name": object_name(key), "port": {"number": PROXY_PORT}}},
                            }
                        ]
                    },
                }
            ]
        },
    }
    if spec.ingress_class:
        body["spec"]["ingressClassName"] = spec.ingress_class
    if spec.cert_issuer or spec.cert_cluster_issuer:
        body["spec"]["tls"] = [{"hosts": [host], "secretName": spec.tls_secret(key)}]
    return body
