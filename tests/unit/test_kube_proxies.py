"""Interactive jobs' proxies on Kubernetes: the objects an operator finds in the jobs namespace, the URL a
user opens, and what the daemon learns of them.

Every test drives the REAL official ``kubernetes`` client over HTTP against
tests/support/kube_api.py, a local stand-in that replaces a real API server because
none can run on these machines; it checks bodies against the Kubernetes schema and
answers 404/409/422 as the API server does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncssh
import pytest

from adapters.errors import ClusterUnavailable, CommandFailed, InvalidRequest
from adapters.kube import proxy_objects
from adapters.kube.client import LEASES, PODS, KubeClient, KubeConflict, KubeNotFound, KubeUnavailable
from adapters.kube.domain import JobsDomain
from adapters.kube.proxies import KubernetesProxies
from adapters.proxy.base import ProxyState, ProxyTarget
from config.settings import ConfigError, Settings, load
from tests.support.kube_api import KubeAPIStandIn

NS = "jarvice-system-jobs"
KNOWN_HOSTS = "[login.example.org]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKeyForTestsOnly0000000000000000000"
TOLERATIONS = [{"key": "node-role.jarvice.io/jarvice-system", "operator": "Exists", "effect": "NoSchedule"}]


@pytest.fixture(scope="module")
def pem() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


@pytest.fixture
async def kube(api: KubeAPIStandIn) -> AsyncIterator[KubeClient]:
    client = await KubeClient.open(api.url, timeout=5)
    yield client
    client.close()


def make_settings(pem: str, api: KubeAPIStandIn, **extra: str) -> Settings:
    env = {
        "JARVICE_SLURM_CLUSTER_ADDR": "login.example.org",
        "JARVICE_SLURM_CLUSTER_PORT": "2222",
        "JARVICE_SLURM_SSH_USER": "jarvice",
        "JARVICE_SLURM_SSH_PKEY": pem,
        "JARVICE_SLURM_SSH_KNOWN_HOSTS": KNOWN_HOSTS + "\n",
        "JARVICE_SCHED_SERVER_KEY": "upstream:s3cret",
        "JARVICE_SLURM_JOURNAL": ":memory:",
        "JARVICE_SLURM_PROXY_MODE": "kubernetes",
        "JARVICE_SLURM_PROXY_IMAGE": "registry.example.org/jarvice/slurm-downstream:1.0",
        "JARVICE_SLURM_PROXY_SSH_SECRET": "slurm-ssh",
        "JARVICE_SLURM_KUBE_API": api.url,
        "JARVICE_JOBS_NAMESPACE": NS,
        "JARVICE_JOBS_DOMAIN": "jarvice.example.com/job$",
        "JARVICE_JOBS_INGRESS_CLASS": "traefik",
        "JARVICE_JOBS_INGRESS_ANNOTATIONS": '{"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"}',
        "JARVICE_JOBS_INGRESS_CERT_CLUSTER_ISSUER": "letsencrypt-prod",
        "JARVICE_JOBS_TOLERATIONS": json.dumps(TOLERATIONS),
    }
    env.update(extra)
    return load(env)


@pytest.fixture
def settings(pem: str, api: KubeAPIStandIn) -> Settings:
    return make_settings(pem, api)


@pytest.fixture
def proxies(kube: KubeClient, settings: Settings) -> KubernetesProxies:
    return KubernetesProxies.from_settings(kube, settings)


TARGET = ProxyTarget(key="1234", host="node7", port=5902)
NAME = "jarvice-job-proxy-1234"


async def test_start_creates_deployment_service_and_ingress_named_and_labelled_for_the_job(
    api: KubeAPIStandIn, proxies: KubernetesProxies
) -> None:
    """An operator finds jarvice-job-proxy-<N> three times in the jobs namespace, labelled for kubectl -l.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    status = await proxies.start(TARGET, job_name="20260101120000-ABCD-alice_jupyter")
    assert status.state is ProxyState.STARTING and status.url == ""
    for plural in ("deployments", "services", "ingresses"):
        assert api.names(plural, NS) == [NAME], plural
        obj = api.get(plural, NS, NAME)
        assert obj is not None
        assert obj["metadata"]["namespace"] == NS
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "jarvice-job-proxy"
        assert labels["app.kubernetes.io/managed-by"] == "slurm-downstream"
        assert labels["jarvice.job.number"] == "1234"
        assert labels["jarvice.job.name"] == "20260101120000-ABCD-alice_jupyter"
    # the real client made real requests to the real paths
    posts = [r.path for r in api.requests_to("POST")]
    assert posts == [
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        f"/api/v1/namespaces/{NS}/services",
        f"/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses",
    ]
    service = api.get("services", NS, NAME)
    assert service is not None
    assert service["spec"]["selector"]["jarvice.job.number"] == "1234"
    assert service["spec"]["ports"][0]["port"] == 8080


async def test_a_job_name_that_is_not_label_safe_is_left_out_of_the_labels(
    api: KubeAPIStandIn, proxies: KubernetesProxies
) -> None:
    """Upstream names may hold characters labels refuse; the job number still labels everything.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET, job_name="bad name/with spaces")
    deployment = api.get("deployments", NS, NAME)
    assert deployment is not None
    assert "jarvice.job.name" not in deployment["metadata"]["labels"]
    assert deployment["metadata"]["labels"]["jarvice.job.number"] == "1234"


async def test_the_proxy_pod_runs_the_proxy_command_with_the_key_only_from_the_secret(
    api: KubeAPIStandIn, proxies: KubernetesProxies, pem: str
) -> None:
    """The SSH key is never on a command line nor written into the Deployment: only a secretKeyRef.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    deployment = api.get("deployments", NS, NAME)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.org/jarvice/slurm-downstream:1.0"
    assert container["command"] + container["args"] == [
        "slurm-downstream", "proxy", "--listen", "0.0.0.0:8080", "--target", "node7:5902"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JARVICE_SLURM_SSH_PKEY"] == {
        "name": "JARVICE_SLURM_SSH_PKEY", "valueFrom": {"secretKeyRef": {"name": "slurm-ssh", "key": "pkey"}}}
    assert env["JARVICE_SLURM_CLUSTER_ADDR"]["value"] == "login.example.org"
    assert env["JARVICE_SLURM_CLUSTER_PORT"]["value"] == "2222"
    assert env["JARVICE_SLURM_SSH_USER"]["value"] == "jarvice"
    assert env["JARVICE_SLURM_SSH_KNOWN_HOSTS"]["value"].strip() == KNOWN_HOSTS
    # not a byte of the key anywhere in what was sent or stored
    key_body = pem.strip().splitlines()[1]
    sent = json.dumps([r.body for r in api.requests])
    assert "PRIVATE KEY" not in sent and key_body not in sent
    # scheduling, probe, and a pod that cannot become root
    assert pod["tolerations"] == TOLERATIONS
    assert container["readinessProbe"]["tcpSocket"]["port"] == 8080
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["automountServiceAccountToken"] is False


async def test_known_hosts_from_a_file_reach_the_pod_as_lines(
    api: KubeAPIStandIn, kube: KubeClient, pem: str, tmp_path
) -> None:
    """The daemon's known_hosts file is not in the proxy pod: its lines travel in the environment.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    path = tmp_path / "known_hosts"
    path.write_text("# a comment\n" + KNOWN_HOSTS + "\n")
    proxies = KubernetesProxies.from_settings(kube, make_settings(pem, api, JARVICE_SLURM_SSH_KNOWN_HOSTS=str(path)))
    await proxies.start(TARGET)
    deployment = api.get("deployments", NS, NAME)
    assert deployment is not None
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["JARVICE_SLURM_SSH_KNOWN_HOSTS"] == KNOWN_HOSTS + "\n"


async def test_path_based_domain_gives_one_host_a_path_per_job_and_tls_from_the_issuer(
    api: KubeAPIStandIn, proxies: KubernetesProxies
) -> None:
    """jarvice.example.com/job$ publishes job 1234 at https://jarvice.example.com/job1234/.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    ingress = api.get("ingresses", NS, NAME)
    assert ingress is not None
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert ingress["metadata"]["annotations"] == {
        "traefik.ingress.kubernetes.io/router.entrypoints": "websecure",
        "cert-manager.io/cluster-issuer": "letsencrypt-prod",
    }
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "jarvice.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/job1234" and path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": NAME, "port": {"number": 8080}}
    assert ingress["spec"]["tls"] == [{"hosts": ["jarvice.example.com"], "secretName": "jarvice-job-proxy-tls"}]
    api.rollout(NS, NAME)
    await proxies.refresh()
    status = proxies.status("1234")
    assert status is not None and status.url == "https://jarvice.example.com/job1234/"


async def test_a_namespaced_issuer_is_annotated_as_an_issuer_not_a_cluster_issuer(
    api: KubeAPIStandIn, kube: KubeClient, pem: str
) -> None:
    """The JARVICE chart sets JARVICE_JOBS_INGRESS_CERT_ISSUER for an Issuer in the jobs' namespace, and
    _CERT_CLUSTER_ISSUER for a ClusterIssuer; cert-manager finds neither under the other's annotation.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    settings = make_settings(pem, api, JARVICE_JOBS_INGRESS_CERT_CLUSTER_ISSUER="",
                             JARVICE_JOBS_INGRESS_CERT_ISSUER="jobs-ca")
    await KubernetesProxies.from_settings(kube, settings).start(TARGET)
    ingress = api.get("ingresses", NS, NAME)
    assert ingress is not None
    assert ingress["metadata"]["annotations"]["cert-manager.io/issuer"] == "jobs-ca"
    assert "cert-manager.io/cluster-issuer" not in ingress["metadata"]["annotations"]
    assert ingress["spec"]["tls"] == [{"hosts": ["jarvice.example.com"], "secretName": "jarvice-job-proxy-tls"}]


async def test_host_based_domain_gives_each_job_a_host_and_a_certificate(
    api: KubeAPIStandIn, kube: KubeClient, pem: str
) -> None:
    """example.com publishes job 1234 at https://job1234.example.com/ with its own TLS secret.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    proxies = KubernetesProxies.from_settings(kube, make_settings(pem, api, JARVICE_JOBS_DOMAIN="example.com"))
    await proxies.start(TARGET)
    ingress = api.get("ingresses", NS, NAME)
    assert ingress is not None
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "job1234.example.com"
    assert rule["http"]["paths"][0]["path"] == "/"
    assert ingress["spec"]["tls"] == [{"hosts": ["job1234.example.com"], "secretName": "jarvice-job-proxy-1234-tls"}]
    api.rollout(NS, NAME)
    await proxies.refresh()
    status = proxies.status("1234")
    assert status is not None and status.url == "https://job1234.example.com/"


async def test_without_issuer_or_class_the_ingress_has_neither(api: KubeAPIStandIn, kube: KubeClient, pem: str) -> None:
    """Empty settings mean the cluster's defaults: no class, no cert-manager annotation, no tls section.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    settings = make_settings(pem, api, JARVICE_JOBS_INGRESS_CLASS="", JARVICE_JOBS_INGRESS_ANNOTATIONS="",
                             JARVICE_JOBS_INGRESS_CERT_CLUSTER_ISSUER="", JARVICE_JOBS_TOLERATIONS="[]")
    proxies = KubernetesProxies.from_settings(kube, settings)
    await proxies.start(TARGET)
    ingress = api.get("ingresses", NS, NAME)
    deployment = api.get("deployments", NS, NAME)
    assert ingress is not None and deployment is not None
    assert "ingressClassName" not in ingress["spec"] and "tls" not in ingress["spec"]
    assert "annotations" not in ingress["metadata"]
    assert "tolerations" not in deployment["spec"]["template"]["spec"]


async def test_status_is_starting_until_the_pod_is_ready_then_serving_with_the_url(
    api: KubeAPIStandIn, proxies: KubernetesProxies
) -> None:
    """What upstream's info call shows: no URL while the pod starts, the URL once it accepts connections.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    await proxies.refresh()  # no pod yet
    assert proxies.status("1234").state is ProxyState.STARTING  # type: ignore[union-attr]
    api.rollout(NS, NAME, ready=False)
    await proxies.refresh()
    assert proxies.status("1234").state is ProxyState.STARTING  # type: ignore[union-attr]
    api.rollout(NS, NAME, ready=True, restarts=2)
    await proxies.refresh()
    status = proxies.status("1234")
    assert status is not None
    assert status.state is ProxyState.SERVING
    assert status.url == "https://jarvice.example.com/job1234/"
    assert status.restarts == 2
    # the refresh read all proxies with two list calls, by label, not one call per job
    lists = [r for r in api.requests if r.method == "GET" and "labelSelector" in r.query]
    assert lists and all("app.kubernetes.io/instance=login.example.org" in r.query["labelSelector"][0] for r in lists)


@pytest.mark.parametrize(
    ("reason", "message", "state"),
    [
        ("ImagePullBackOff", 'Back-off pulling image "registry.example.org/jarvice/slurm-downstream:1.0"', ProxyState.FAILED),
        ("CreateContainerConfigError", 'secret "slurm-ssh" not found', ProxyState.FAILED),
        ("CrashLoopBackOff", "back-off 40s restarting failed container=proxy", ProxyState.FAILED),
        ("ErrImagePull", "rpc error: i/o timeout", ProxyState.STARTING),
    ],
)
async def test_a_pod_that_cannot_start_says_why(
    api: KubeAPIStandIn, proxies: KubernetesProxies, reason: str, message: str, state: ProxyState
) -> None:
    """The kubelet's reason reaches the daemon: hopeless ones are FAILED, a first pull error is still STARTING.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    api.pod_waiting(NS, NAME, reason, message)
    await proxies.refresh()
    status = proxies.status("1234")
    assert status is not None
    assert status.state is state
    assert status.error == f"{reason}: {message}"
    assert status.url == ""


async def test_starting_twice_keeps_the_same_objects_and_status(api: KubeAPIStandIn, proxies: KubernetesProxies) -> None:
    """A repeated start (daemon retry, restart) answers 409 inside and changes nothing a user would see.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    uids = {p: api.get(p, NS, NAME)["metadata"]["uid"] for p in ("deployments", "services", "ingresses")}  # type: ignore[index]
    api.rollout(NS, NAME)
    await proxies.refresh()
    again = await proxies.start(TARGET)
    assert again.state is ProxyState.SERVING and again.url.endswith("/job1234/")
    assert {p: api.get(p, NS, NAME)["metadata"]["uid"] for p in uids} == uids  # type: ignore[index]
    assert len(api.requests_to("POST")) == 6  # three creates, three 409s
    assert api.requests_to("PUT") == []


async def test_a_new_target_re_aims_the_existing_deployment(api: KubeAPIStandIn, proxies: KubernetesProxies) -> None:
    """A job that moved to another node (requeued) gets its proxy pointed there, same objects.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    uid = api.get("deployments", NS, NAME)["metadata"]["uid"]  # type: ignore[index]
    status = await proxies.start(ProxyTarget(key="1234", host="node8", port=5903))
    assert status.state is ProxyState.STARTING
    deployment = api.get("deployments", NS, NAME)
    assert deployment is not None and deployment["metadata"]["uid"] == uid
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "node8:5903"
    assert [r.path for r in api.requests_to("PUT")] == [f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"]


async def test_stop_deletes_all_three_and_a_second_stop_is_fine(api: KubeAPIStandIn, proxies: KubernetesProxies) -> None:
    """After stop nothing of the job is left, its pod included; stopping again (or an unknown job) is not an error.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    api.rollout(NS, NAME)
    await proxies.stop("1234")
    for plural in ("deployments", "services", "ingresses", "pods"):
        assert api.names(plural, NS) == [], plural
    assert proxies.status("1234") is None
    await proxies.stop("1234")
    await proxies.stop("999")
    deletes = api.requests_to("DELETE")
    assert len(deletes) == 9
    assert all(r.query.get("propagationPolicy") == ["Background"] for r in deletes)


async def test_keys_after_a_restart_lists_this_daemons_proxies_only(
    api: KubeAPIStandIn, kube: KubeClient, settings: Settings, proxies: KubernetesProxies
) -> None:
    """/gc finds our orphans, even from before a restart, and never another daemon's proxies.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    await proxies.start(ProxyTarget(key="77", host="node2", port=5902))
    other = KubernetesProxies.from_settings(kube, settings, instance="other-cluster")
    await other.start(ProxyTarget(key="555", host="gpu1", port=5902))
    # an Ingress left behind alone (a stop cut short before the owner reference existed)
    api.put(proxy_objects.ingress(proxies.spec, "31"))
    restarted = KubernetesProxies.from_settings(kube, settings)
    assert await restarted.keys() == {"1234", "77", "31"}
    assert await other.keys() == {"555"}
    api.rollout(NS, NAME)
    await restarted.refresh()
    status = restarted.status("1234")
    assert status is not None and status.state is ProxyState.SERVING
    await restarted.stop("31")
    assert await restarted.keys() == {"1234", "77"}


async def test_a_deployment_deleted_behind_our_back_is_reported(api: KubeAPIStandIn, proxies: KubernetesProxies) -> None:
    """Someone ran kubectl delete: the daemon learns the proxy is gone instead of showing a dead URL.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    api.remove("deployments", NS, NAME)
    await proxies.refresh()
    status = proxies.status("1234")
    assert status is not None and status.state is ProxyState.FAILED
    assert "gone" in status.error


async def test_an_unreachable_api_is_a_cluster_unavailable_error_and_statuses_survive_it(
    api: KubeAPIStandIn, proxies: KubernetesProxies
) -> None:
    """503 from the API: start raises the transient error the daemon retries; the last statuses are kept.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    await proxies.start(TARGET)
    api.rollout(NS, NAME)
    await proxies.refresh()
    api.fail_with = 503
    with pytest.raises(ClusterUnavailable):
        await proxies.start(ProxyTarget(key="9", host="node1", port=5902))
    with pytest.raises(KubeUnavailable):
        await proxies.refresh()
    assert proxies.status("1234").state is ProxyState.SERVING  # type: ignore[union-attr]


async def test_a_closed_port_is_unavailable_not_a_crash(kube: KubeClient, settings: Settings) -> None:
    """Nothing listening where the API should be: a quick ClusterUnavailable naming the call.
    (Kubernetes API: none at all here, which is the point: the stand-in replaces a real API server elsewhere.)"""
    client = await KubeClient.open("http://127.0.0.1:9", timeout=2, retries=0)
    try:
        with pytest.raises(KubeUnavailable, match="list deployments"):
            await KubernetesProxies(client, KubernetesProxies.from_settings(kube, settings).spec).refresh()
    finally:
        client.close()


async def test_an_api_refusal_is_a_failed_status_naming_it(api: KubeAPIStandIn, proxies: KubernetesProxies) -> None:
    """A Role without "create ingresses" (403) becomes FAILED with the API's words, not an exception in the daemon.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    api.forbidden.add(("POST", "ingresses"))
    status = await proxies.start(TARGET)
    assert status.state is ProxyState.FAILED
    assert "403" in status.error and 'cannot create resource "ingresses"' in status.error
    assert proxies.status("1234") == status
    # its Deployment was made and its pod gets ready, but without an Ingress no user can reach it: still FAILED
    api.rollout(NS, NAME)
    await proxies.refresh()
    assert proxies.status("1234") == status
    api.forbidden.clear()  # the operator fixed the Role; the daemon's next start succeeds
    again = await proxies.start(TARGET)
    assert again.state is ProxyState.STARTING
    await proxies.refresh()
    assert proxies.status("1234").state is ProxyState.SERVING  # type: ignore[union-attr]


async def test_a_job_number_that_cannot_name_objects_is_refused(proxies: KubernetesProxies, api: KubeAPIStandIn) -> None:
    """Nothing is sent for a key that is not a DNS-safe job number.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    with pytest.raises(InvalidRequest):
        await proxies.start(ProxyTarget(key="../etc", host="node1", port=1))
    assert api.requests == []


async def test_the_client_maps_404_and_409_and_replace_conflicts(api: KubeAPIStandIn, kube: KubeClient) -> None:
    """The adapters' error types for the API's answers: 404 NotFound, 409 AlreadyExists and stale resourceVersion.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
             "spec": {"holderIdentity": "a"}}
    with pytest.raises(KubeNotFound):
        await kube.get(LEASES, NS, "l")
    created = await kube.create(LEASES, NS, lease)
    with pytest.raises(KubeConflict) as conflict:
        await kube.create(LEASES, NS, lease)
    assert isinstance(conflict.value, CommandFailed) and conflict.value.status == 409
    stale = {**lease, "metadata": {"name": "l", "resourceVersion": created["metadata"]["resourceVersion"]}}
    await kube.replace(LEASES, NS, "l", stale)
    with pytest.raises(KubeConflict, match="modified"):
        await kube.replace(LEASES, NS, "l", stale)


async def test_kubeconfig_is_used_when_no_url_is_set_and_this_is_not_a_pod(
    api: KubeAPIStandIn, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a cluster the operator's KUBECONFIG is the way in; without one, a config error names the variable.
    (Kubernetes API: the local stand-in, because no real API server can run on these machines.)"""
    from kubernetes.config import kube_config

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="JARVICE_SLURM_KUBE_API"):
        await KubeClient.open("")
    config = tmp_path / "config"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "stand-in", "cluster": {"server": api.url}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "test", "context": {"cluster": "stand-in", "user": "u"}}],
    }))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
    client = await KubeClient.open("")
    try:
        assert await client.list(PODS, NS) == []
        assert api.requests[-1].path == f"/api/v1/namespaces/{NS}/pods"
    finally:
        client.close()
    with pytest.raises(ConfigError, match="http"):
        await KubeClient.open("ftp://example.org")


def test_missing_domain_or_host_keys_stop_the_start(pem: str, api: KubeAPIStandIn) -> None:
    """Kubernetes mode without a jobs domain, or without the login node's host key, is a config error at start.
    (Kubernetes API: not contacted; the stand-in replaces a real API server, which cannot run here.)"""
    from adapters.kube.proxies import spec_from_settings

    with pytest.raises(ConfigError, match="JARVICE_JOBS_DOMAIN"):
        spec_from_settings(make_settings(pem, api, JARVICE_JOBS_DOMAIN=""))
    with pytest.raises(ConfigError, match="JARVICE_SLURM_SSH_KNOWN_HOSTS"):
        spec_from_settings(make_settings(pem, api, JARVICE_SLURM_SSH_KNOWN_HOSTS="/dev/null"))
    with pytest.raises(ConfigError, match="lookup"):
        spec_from_settings(make_settings(pem, api, JARVICE_JOBS_DOMAIN="lookup/job$"))


@pytest.mark.parametrize(
    ("value", "url", "ingress_path"),
    [
        ("jarvice.my-domain.com/job$", "https://jarvice.my-domain.com/job42/", "job42"),
        ("Jarvice.My-Domain.com/apps/job$/", "https://jarvice.my-domain.com/apps/job42/", "apps/job42"),
        ("my-domain.com", "https://job42.my-domain.com/", ""),
        ("my-domain.com:8443", "https://job42.my-domain.com:8443/", ""),
    ],
)
def test_jobs_domain_forms(value: str, url: str, ingress_path: str) -> None:
    """Both JARVICE_JOBS_DOMAIN forms give the URL users open and the JARVICE_INGRESSPATH their app serves under.
    (Kubernetes API: not needed; the stand-in replaces a real API server elsewhere, as none can run here.)"""
    domain = JobsDomain.parse(value)
    assert domain.url_for("42") == url
    assert domain.ingress_path("42") == ingress_path
