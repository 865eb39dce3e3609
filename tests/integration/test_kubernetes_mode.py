"""The daemon in Kubernetes proxy mode, end to end: an interactive job's proxy becomes a Deployment, a Service and
an Ingress, its URL is given once the proxy pod is ready, and the objects go when the job does.

Real: the daemon (``JARVICE_SLURM_PROXY_MODE=kubernetes``) on a socket, SSH to the test cluster's sshd, Slurm
running ``tests/support/webjob.py`` on the port the daemon exported, the official ``kubernetes`` client over HTTP,
and the proxy pod's own command (``slurm-downstream proxy ...``, exactly the argv and environment of the
Deployment the daemon made) carrying a user's request to the job.

Replaced: the Kubernetes API server, by tests/support/kube_api.py, a local stand-in, because none can run on
these machines (no kind, k3s or etcd, no container runtime). It checks bodies against the Kubernetes schema and
answers as the API server does. What the controllers and the kubelet would do, the tests do through it: they
create the pod (``rollout``), start its container from the Deployment (``container``), and mark it ready once
its readiness probe (a TCP connect to the proxy's port) would pass. The one liberty taken: a pod has a network
namespace of its own, so the container's ``--listen 0.0.0.0:8080`` becomes a free port on 127.0.0.1.

The daemon adopts every downstream job on the shared test cluster, so the jobs namespace may also hold proxies
for other people's interactive jobs: assertions are about this test's job numbers only.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from adapters.kube import proxy_objects
from adapters.kube.proxies import spec_from_settings
from config.settings import Settings
from tests.integration.conftest import Daemon, settings, slurm, start_daemon, unique_name
from tests.support.cluster import current
from tests.support.kube_api import KubeAPIStandIn
from tests.support.processes import free_port, port_open
from tests.support.upstream import submit_args
from tests.support.webjob import upstream_body

NS = "jarvice-jobs-it"  # not the default namespace: the setting must be the one obeyed
IMAGE = "registry.example/slurm-downstream:test"
SSH_SECRET = "slurm-downstream-ssh-it"
INGRESS_CLASS = "traefik"
PATH_BASED = "jarvice.example.com/job$"
HOST_BASED = "example.com"
KINDS = ("deployments", "services", "ingresses")


def kube_settings(api: KubeAPIStandIn, jobs_domain: str) -> Settings:
    return settings(
        JARVICE_SLURM_PROXY_MODE="kubernetes",
        JARVICE_SLURM_KUBE_API=api.url,
        JARVICE_SLURM_PROXY_IMAGE=IMAGE,
        JARVICE_SLURM_PROXY_SSH_SECRET=SSH_SECRET,
        JARVICE_JOBS_NAMESPACE=NS,
        JARVICE_JOBS_DOMAIN=jobs_domain,
        JARVICE_JOBS_INGRESS_CLASS=INGRESS_CLASS,
    )


@pytest.fixture
def api() -> Iterator[KubeAPIStandIn]:
    with KubeAPIStandIn() as stand_in:
        # what the operator creates once (kubectl create secret generic ... --from-file=pkey=...): the proxy pods'
        # own SSH key, restricted on the login node as the README says (forwarding to the nodes only, any
        # session answered by /bin/false): the proxy must carry users' traffic with nothing more
        stand_in.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SSH_SECRET, "namespace": NS},
                      "type": "Opaque", "stringData": {"pkey": current().proxy_key("proxy")}})
        yield stand_in


@pytest.fixture
def jobs_domain() -> str:
    return PATH_BASED


@pytest.fixture
async def kube_daemon(nursery: trio.Nursery, api: KubeAPIStandIn, jobs_domain: str) -> AsyncIterator[Daemon]:
    async for d in start_daemon(nursery, kube_settings(api, jobs_domain)):
        yield d
    nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ helpers
async def submit_web_job(daemon: Daemon) -> tuple[dict[str, Any], int]:
    """An interactive job running webjob.py on the port the daemon exported; (ids, port)."""
    name = unique_name("kube")
    number = random.randrange(10**6, 10**9)  # other daemons on the shared cluster never use such a number
    jobid, fscript = await daemon.upstream.call("/submit", submit_args(name, number, upstream_body(), interactive=True))
    port = int(re.search(r"SINGULARITYENV_JARVICE_SERVICE_PORT=(\d+)", fscript)[1])
    return {"name": name, "number": number, "jobid": jobid}, port


async def info_url(daemon: Daemon, ids: dict[str, Any]) -> str:
    response = await daemon.upstream.post(f"/request/{ids['name']}/{ids['number']}/{ids['jobid']}/info", {"qs": {}})
    assert response.status_code == 200, response.text
    return response.json()["url"]


async def wait_until(check: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll ``check`` (sync or async) until it returns something true; fail naming ``what``."""
    try:
        with trio.fail_after(timeout):
            while True:
                value = check()
                if hasattr(value, "__await__"):
                    value = await value
                if value:
                    return value
                await trio.sleep(0.2)
    except trio.TooSlowError:
        pytest.fail(f"not within {timeout:g} s: {what}")


def proxy_objects_of(api: KubeAPIStandIn, number: int) -> dict[str, dict[str, Any] | None]:
    return {kind: api.get(kind, NS, f"jarvice-job-proxy-{number}") for kind in KINDS}


def node_addr(jobid: str) -> str:
    """NodeAddr of the node running the job, as Slurm knows it: the host the proxy must aim at."""
    node = slurm("squeue", "-h", "-j", jobid, "-o", "%N").stdout.strip()
    assert node, f"job {jobid} runs on no node"
    shown = slurm("scontrol", "-o", "show", "node", node).stdout
    return re.search(r"\bNodeAddr=(\S+)", shown)[1]


async def end_jobs(daemon: Daemon, *jobs: dict[str, Any]) -> None:
    for ids in jobs:
        with trio.move_on_after(30):
            await daemon.upstream.call("/terminate", ids)
        slurm("scancel", ids["jobid"])


class ProxyPod:
    """The kubelet's part for one proxy pod: start the Deployment's container as it is written, probe it, stop it."""

    def __init__(self, api: KubeAPIStandIn, name: str, log: Path) -> None:
        argv, env = api.container(NS, name)
        self.port = free_port()
        listen = argv.index("--listen") + 1
        assert argv[listen] == f"0.0.0.0:{proxy_objects.PROXY_PORT}", argv
        argv[listen] = f"127.0.0.1:{self.port}"  # the pod's own network namespace, here a free port
        image_path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # where the image has slurm-downstream
        self.argv, self.env = argv, env | {"PATH": image_path, "HOME": os.environ.get("HOME", "/root")}
        self.log = log
        self.process: trio.Process | None = None

    async def start(self) -> None:
        with self.log.open("w") as out:
            self.process = await trio.lowlevel.open_process(self.argv, env=self.env, stdout=out, stderr=out)

    def probe(self) -> bool:
        """The readinessProbe (tcpSocket on the proxy's port); a container that exited fails the test."""
        assert self.process is not None
        assert self.process.poll() is None, f"the proxy container exited: {self.log.read_text()}"
        return port_open(self.port)

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with trio.move_on_after(15):
                await self.process.wait()
            if self.process.poll() is None:
                self.process.kill()
                await self.process.wait()


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize(("jobs_domain", "host", "path", "url"), [
    (PATH_BASED, "jarvice.example.com", "/job{n}", "https://jarvice.example.com/job{n}/"),
    (HOST_BASED, "job{n}.example.com", "/", "https://job{n}.example.com/"),
], ids=["path-based", "host-based"])
async def test_an_interactive_job_gets_a_proxy_pod_and_its_url_once_the_pod_is_ready(
    kube_daemon: Daemon, api: KubeAPIStandIn, tmp_path: Path, jobs_domain: str, host: str, path: str, url: str
) -> None:
    daemon = kube_daemon
    # the daemon checked the proxy pods' key at start (its Secret, tried on the login node): fit for the job
    preflight = {c["name"]: c["level"] for c in (await daemon.upstream.client.get("/admin/state")).json()["preflight"]}
    assert (preflight["proxy key"], preflight["proxy forwarding"]) == ("ok", "ok"), preflight
    ids, port = await submit_web_job(daemon)
    number, name = ids["number"], f"jarvice-job-proxy-{ids['number']}"
    pod: ProxyPod | None = None
    try:
        found = await wait_until(lambda: all((objs := proxy_objects_of(api, number)).values()) and objs,
                                 f"the Deployment, Service and Ingress {name} in {NS}", 90)
        deployment, service, ingress = (found[kind] for kind in KINDS)

        # the pod would reach the job's web service, on its node, through the login node
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == IMAGE
        args = container["args"]
        assert args[args.index("--target") + 1] == f"{node_addr(ids['jobid'])}:{port}", args
        # the Service picks the Deployment's pod and its port; the Ingress publishes the Service under the domain
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
        assert ingress["spec"]["ingressClassName"] == INGRESS_CLASS
        [rule] = ingress["spec"]["rules"]
        [route] = rule["http"]["paths"]
        assert (rule["host"], route["path"]) == (host.format(n=number), path.format(n=number))
        assert route["backend"]["service"] == {"name": name, "port": {"number": service["spec"]["ports"][0]["port"]}}

        # no pod yet, then a pod that runs but is not ready: upstream gets no URL (a user would land on an error)
        assert await info_url(daemon, ids) == ""
        pod_lists = len(api.requests_to("GET", f"/namespaces/{NS}/pods"))
        api.rollout(NS, name, ready=False)
        await wait_until(lambda: len(api.requests_to("GET", f"/namespaces/{NS}/pods")) > pod_lists,
                         "the daemon reading the pods again", 20)
        with trio.move_on_after(2):  # several polls of the daemon, each tending the job's proxy
            while True:
                assert await info_url(daemon, ids) == "", "a URL while the proxy pod is not ready"
                await trio.sleep(0.25)

        # the kubelet starts the container the Deployment describes; its readiness probe passes; the pod is ready
        pod = ProxyPod(api, name, tmp_path / "proxy-pod.log")
        await pod.start()
        await wait_until(pod.probe, "the proxy container listening", 30)
        api.rollout(NS, name, ready=True)
        got = await wait_until(lambda: info_url(daemon, ids), "info's URL once the pod is ready", 30)
        assert got == url.format(n=number)
        # what the Ingress forwards to the Service (the path as the browser asked it: a path-based ingress does
        # not strip the prefix) reaches the user's job through the pod; the app serves under the path it was told
        served_at = urlsplit(got).path
        async with httpx.AsyncClient(timeout=10) as browser:
            page = await browser.get(f"http://127.0.0.1:{pod.port}{served_at}")
            outside = await browser.get(f"http://127.0.0.1:{pod.port}/elsewhere/")
        assert page.status_code == 200 and f"job {ids['jobid']}<" in page.text
        assert outside.status_code == 404  # the app serves under its ingress path only (at / when host based)

        # upstream terminates the job: its three objects (and the pod) go, the URL with them
        assert await daemon.upstream.call("/terminate", ids) is True
        await wait_until(lambda: not any(proxy_objects_of(api, number).values()),
                         f"the Deployment, Service and Ingress {name} deleted", 30)
        assert not [p for p in api.names("pods", NS) if p.startswith(name + "-")]
        assert await info_url(daemon, ids) == ""
    finally:
        if pod is not None:
            await pod.stop()
        await end_jobs(daemon, ids)


async def test_gc_removes_orphan_proxies_only_and_a_job_ending_in_slurm_takes_its_proxy_along(
    kube_daemon: Daemon, api: KubeAPIStandIn
) -> None:
    daemon = kube_daemon
    ids, _ = await submit_web_job(daemon)
    number = ids["number"]
    try:
        await wait_until(lambda: all(proxy_objects_of(api, number).values()), f"the proxy objects of job {number}", 90)

        # left in the namespace by an earlier run of this daemon, for a job it does not track any more
        orphan = number + 1
        ours = spec_from_settings(daemon.settings)
        api.put(proxy_objects.deployment(ours, str(orphan), "10.0.0.7", 5902))
        api.put(proxy_objects.service(ours, str(orphan)))
        api.put(proxy_objects.ingress(ours, str(orphan)))
        # another daemon's proxy in the same namespace (another Slurm cluster): not ours to collect
        theirs = spec_from_settings(daemon.settings, instance="other-login.example.org")
        api.put(proxy_objects.deployment(theirs, str(orphan + 1), "10.0.0.8", 5902))
        assert all(proxy_objects_of(api, orphan).values())

        assert await daemon.upstream.call("/gc") == {"status": "OK"}
        assert not any(proxy_objects_of(api, orphan).values()), "the orphan proxy is still there after /gc"
        assert all(proxy_objects_of(api, number).values()), "/gc removed the proxy of a running job"
        assert api.get("deployments", NS, f"jarvice-job-proxy-{orphan + 1}") is not None, "/gc removed another daemon's"

        # the job ends in Slurm without upstream asking (here: cancelled by an administrator)
        cancelled = slurm("scancel", ids["jobid"])
        assert cancelled.returncode == 0, cancelled.stderr
        await wait_until(lambda: not any(proxy_objects_of(api, number).values()),
                         f"the proxy objects of job {number} deleted once it ended", 30)
        assert await info_url(daemon, ids) == ""
    finally:
        await end_jobs(daemon, ids)
