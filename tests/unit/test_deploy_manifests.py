"""config/deploy: manifests that a real cluster would accept, and that fit the daemon they deploy.

Validated offline against the Kubernetes OpenAPI schema of a fixed version
(kubernetes-validate, strict: an unknown or misspelt field is an error), because
no API server can run on these machines. The Role is compared with what the
adapter really asks of the API: its calls are recorded against the local API
stand-in (tests/support/kube_api.py), which replaces a real API server here.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import trio
import yaml

from adapters.kube.client import KubeClient
from adapters.kube.lease import LeaderElector
from adapters.kube.proxies import KubernetesProxies, read_proxy_key
from adapters.proxy.base import ProxyTarget
from config.settings import load
from tests.support.kube_api import KubeAPIStandIn

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "config" / "deploy"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest we claim, and the newest the validator knows


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
ALL = {p.name: documents(p) for p in MANIFESTS}


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for docs in ALL.values() for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


DEPLOYMENT = one("Deployment")
CONTAINER = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
ENV = {e["name"]: e for e in CONTAINER["env"]}


def settings_variables() -> set[str]:
    """Every JARVICE_* name config/settings.py reads: the string literals it passes to its getters."""
    tree = ast.parse((ROOT / "config" / "settings.py").read_text())
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value.startswith("JARVICE_") and n.value.isupper()}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    """kubectl apply would not refuse a field: each object validates against the API schema, strictly."""
    docs = ALL[path.name]
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata'].get('name')}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_kustomization_lists_files_that_exist_and_leaves_out_the_examples() -> None:
    """`kubectl apply -k config/deploy` applies the deployable files, never the placeholder Secrets."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert all((DEPLOY / r).is_file() for r in resources)
    assert "secrets.example.yaml" not in resources
    assert {"namespaces.yaml", "rbac.yaml", "deployment.yaml"} <= set(resources)


def test_every_variable_the_deployment_sets_is_one_the_daemon_reads() -> None:
    """A misspelt or foreign variable (the chart's JARVICE_CLUSTER_TYPE ...) would be silently ignored."""
    unknown = set(ENV) - settings_variables()
    assert not unknown, f"the daemon reads none of {sorted(unknown)}"


def test_the_deployment_loads_as_valid_settings(tmp_path: Path) -> None:
    """The env as written (secrets filled in) passes the daemon's own configuration check."""
    import asyncssh

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(one("ConfigMap")["data"]["known_hosts"])
    env = {name: e["value"] for name, e in ENV.items() if "value" in e}
    env.update(JARVICE_SLURM_SSH_USER="jarvice", JARVICE_SCHED_SERVER_KEY="upstream:s3cret",
               JARVICE_SLURM_SSH_PKEY=asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode(),
               JARVICE_SLURM_SSH_KNOWN_HOSTS=str(known_hosts), JARVICE_SLURM_POD_NAME="pod-a")
    settings = load(env)
    assert settings.proxy.mode == "kubernetes" and settings.proxy.leader_election
    assert settings.proxy.image == CONTAINER["image"], "proxy pods must run the daemon's own image"


def test_secrets_come_from_secret_refs_and_exist_where_the_pods_read_them() -> None:
    """The key and the upstream password never sit in the Deployment; the proxy pods' Secret is in the jobs namespace."""
    for name in ("JARVICE_SLURM_SSH_PKEY", "JARVICE_SCHED_SERVER_KEY", "JARVICE_SLURM_SSH_USER"):
        assert "value" not in ENV[name] and "secretKeyRef" in ENV[name]["valueFrom"], name
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in ALL["secrets.example.yaml"]}
    jobs_ns = ENV["JARVICE_JOBS_NAMESPACE"]["value"]
    daemon_ns = DEPLOYMENT["metadata"]["namespace"]
    assert "pkey" in secrets[(jobs_ns, ENV["JARVICE_SLURM_PROXY_SSH_SECRET"]["value"])]["stringData"]
    for name in ("JARVICE_SLURM_SSH_PKEY", "JARVICE_SCHED_SERVER_KEY"):
        ref = ENV[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[(daemon_ns, ref["name"])]["stringData"], name


def test_probes_non_root_and_disruption_budget() -> None:
    """Kubernetes restarts a hung daemon (/live), routes only to a connected one (/ready), never runs it as root,
    and a node drain keeps one replica up."""
    assert CONTAINER["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert CONTAINER["livenessProbe"]["httpGet"]["path"] == "/live"
    port_names = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert port_names[CONTAINER["readinessProbe"]["httpGet"]["port"]] == 8080
    pod = DEPLOYMENT["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert CONTAINER["securityContext"]["allowPrivilegeEscalation"] is False
    assert CONTAINER["securityContext"]["readOnlyRootFilesystem"] is True
    journal = ENV["JARVICE_SLURM_JOURNAL"]["value"]
    assert any(journal.startswith(m["mountPath"] + "/") for m in CONTAINER["volumeMounts"]), "journal on a read-only path"
    assert DEPLOYMENT["spec"]["replicas"] >= 2 and ENV["JARVICE_SLURM_LEADER_ELECTION"]["value"] == "true"
    pdb = one("PodDisruptionBudget")
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 0 < pdb["spec"]["minAvailable"] < DEPLOYMENT["spec"]["replicas"]
    service = one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in port_names


def _verbs_the_adapter_uses(env: dict[str, str]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, name) of every call a daemon's proxies, its preflight of their key and leader
    election make, recorded by the stand-in; the name only for Secrets (a Role names the one it may read)."""
    groups = {"deployments": "apps", "services": "", "pods": "", "ingresses": "networking.k8s.io",
              "leases": "coordination.k8s.io", "secrets": ""}

    async def exercise(api: KubeAPIStandIn) -> None:
        import asyncssh

        settings = load({**env, "JARVICE_SLURM_KUBE_API": api.url, "JARVICE_SLURM_SSH_USER": "jarvice",
                         "JARVICE_SCHED_SERVER_KEY": "u:p", "JARVICE_SLURM_SSH_KNOWN_HOSTS": "login ssh-ed25519 AAAA",
                         "JARVICE_SLURM_SSH_PKEY": asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()})
        kube = await KubeClient.open(api.url, timeout=5)
        try:
            await read_proxy_key(kube, settings.proxy.namespace, settings.proxy.ssh_secret)  # preflight
            proxies = KubernetesProxies.from_settings(kube, settings)
            await proxies.start(ProxyTarget("7", "node1", 5902))
            await proxies.start(ProxyTarget("7", "node2", 5902))  # exists: read it, re-aim it
            await proxies.refresh()
            await proxies.keys()
            await proxies.stop("7")
            elector = LeaderElector(kube, settings.proxy.namespace, "lease", "pod-a", lease_duration=3, renew_period=1)
            await elector.try_acquire_or_renew()  # create
            await elector.try_acquire_or_renew()  # renew
            await elector.release()
        finally:
            kube.close()

    import asyncssh

    with KubeAPIStandIn() as api:
        proxy_key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
        api.put({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                 "metadata": {"name": env["JARVICE_SLURM_PROXY_SSH_SECRET"], "namespace": env["JARVICE_JOBS_NAMESPACE"]},
                 "stringData": {"pkey": proxy_key}})
        trio.run(exercise, api)
        verbs = {"POST": "create", "PUT": "update", "DELETE": "delete"}
        used = set()
        for r in api.requests:
            namespace, resource, *name = r.path.split("/namespaces/", 1)[1].split("/")
            assert namespace == env["JARVICE_JOBS_NAMESPACE"], r.path
            verb = ("get" if name else "list") if r.method == "GET" else verbs[r.method]
            used.add((groups[resource], resource, verb, name[0] if resource == "secrets" else ""))
        return used


def test_the_role_grants_exactly_what_the_adapter_uses_in_the_jobs_namespace() -> None:
    """Least privilege that still works: every call the proxies, the preflight of their key and the Lease make is
    allowed, nothing more (of Secrets, only the proxy pods' one), and only in JARVICE_JOBS_NAMESPACE, for the
    daemon's own ServiceAccount."""
    env = {name: e["value"] for name, e in ENV.items() if "value" in e}
    used = _verbs_the_adapter_uses(env)
    role = one("Role")
    granted = {(group, resource, verb, name) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"] for name in rule.get("resourceNames", [""])}
    assert used <= granted, f"the Role lacks {sorted(used - granted)}"
    assert granted <= used, f"the Role grants unused {sorted(granted - used)}"
    assert role["metadata"]["namespace"] == env["JARVICE_JOBS_NAMESPACE"]
    binding = one("RoleBinding")
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = one("ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    assert DEPLOYMENT["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["namespace"] == DEPLOYMENT["metadata"]["namespace"]


def test_only_the_ingress_controller_reaches_the_proxy_pods() -> None:
    """A proxy pod hands a user's traffic to the job's service: the policy selects exactly the pods the
    daemon labels as proxies, and lets in only the ingress controller's namespace, on the proxy's port."""
    from adapters.kube.proxy_objects import APP, LABEL_APP, LABEL_MANAGED_BY, MANAGER, PROXY_PORT

    policy = one("NetworkPolicy")
    assert policy["metadata"]["namespace"] == ENV["JARVICE_JOBS_NAMESPACE"]["value"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {LABEL_APP: APP, LABEL_MANAGED_BY: MANAGER}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [PROXY_PORT]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])  # no ipBlock, no open peer
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert "networkpolicy.yaml" in kustomization["resources"]
