"""The image's command under the JARVICE Helm chart's environment, and nothing else.

The chart sets no command or arguments, passes the SSH key as the raw PEM of its Secret,
no known_hosts, and a dozen variables that mean nothing to an SSH downstream (the
slurmrestd client's, JARVICE's own). A drop-in downstream must start from exactly that,
reach the login node and answer ``/ready``; the chart's probes wait for nothing else.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

import httpx
import trio

from tests.integration.conftest import cluster_env, state
from tests.support.processes import CLI, DaemonProcess, free_port


def chart_environment(home: Path) -> dict[str, str]:
    """What jarvice-helm's jarvice-slurm-scheduler Deployment gives the container (values of a test install)."""
    cluster = cluster_env()
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),  # the pod's home: no ~/.ssh/known_hosts
        "JARVICE_SLURM_CLUSTER_ADDR": cluster["JARVICE_SLURM_CLUSTER_ADDR"],
        "JARVICE_SLURM_CLUSTER_PORT": cluster["JARVICE_SLURM_CLUSTER_PORT"],
        "JARVICE_SLURM_SSH_USER": cluster["JARVICE_SLURM_SSH_USER"],
        "JARVICE_SLURM_SSH_PKEY": base64.b64decode(cluster["JARVICE_SLURM_SSH_PKEY"]).decode(),  # raw PEM
        "JARVICE_SLURM_SSH_USER_GROUP": cluster["JARVICE_SLURM_SSH_USER"],
        "JARVICE_SLURM_SCHED_LOGLEVEL": "30",
        "JARVICE_SLURM_OVERLAY_SIZE": "640",
        "JARVICE_SYSTEM_K8S": "true",
        "JARVICE_EXPERIMENTAL": "false",
        "JARVICE_CLUSTER_TYPE": "downstream",
        "JARVICE_SCHED_SERVER_KEY": cluster["JARVICE_SCHED_SERVER_KEY"],
        "JARVICE_JOBS_NAMESPACE": "jarvice-system-jobs",
        "JARVICE_SYSTEM_NAMESPACE": "jarvice-system",
        "JARVICE_SYSTEM_REGISTRY": "us-docker.pkg.dev",
        "JARVICE_SYSTEM_REPO_BASE": "jarvice-system/images",
        "JARVICE_SYSTEM_OMIT_REPO_BASE": "false",
        "JARVICE_IMAGES_TAG": "jarvice-3.26.0",
        "JARVICE_LOCAL_REGISTRY": "",
        "JARVICE_LOCAL_REPO_BASE": "",
        "JARVICE_JOBS_DOMAIN": "jarvice.example.com/job$",
        "JARVICE_JOBS_INGRESS_CLASS": "traefik",
        "JARVICE_JOBS_INGRESS_ANNOTATIONS": "",
        "JARVICE_JOBS_INGRESS_CERT_CLUSTER_ISSUER": "letsencrypt-prod",
        "JARVICE_SLURM_HTTPS_PROXY": "",
        "JARVICE_SLURM_HTTP_PROXY": "",
        "JARVICE_SLURM_NO_PROXY": "",
        "JARVICE_SINGULARITY_VERBOSE": "false",
        "JARVICE_SINGULARITY_TMPDIR": "/tmp",
        "JARVICE_SLURM_SCRATCH_DIR": f"{cluster['JARVICE_SLURM_SCRATCH_DIR']}/chart-{uuid.uuid4().hex[:8]}",
        "JARVICE_SLURM_CLIENT": "ssh_client",
        "JARVICE_SLURMRESTD_URL": "",
        "JARVICE_SLURM_SA_TOKEN": "",
        "JARVICE_KEYCLOAK_TOKEN_URL": "",
        "JARVICE_KEYCLOAK_CLIENT_ID": "nimbix-slurm-sched-client",
        "JARVICE_KEYCLOAK_CLIENT_SECRET": "",
        "JARVICE_SLURM_USERNAME_CLAIM": "preferred_username",
        "JARVICE_SLURM_DATA_PARSER_VERSION": "auto",
        "JARVICE_CHOWN_WRAPPER": "",
        "JARVICE_IDMAPPER_URL": "",
        "http_proxy": "http://egress.example:3128",
        "https_proxy": "http://egress.example:3128",
        "no_proxy": "localhost,127.0.0.1,.svc,.cluster.local",
        "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
    }


async def test_the_image_command_starts_from_exactly_the_charts_environment(tmp_path: Path) -> None:
    env = chart_environment(tmp_path)
    daemon = DaemonProcess(CLI, env, free_port(), tmp_path / "daemon.log")
    await daemon.start()
    try:
        user, password = env["JARVICE_SCHED_SERVER_KEY"].split(":", 1)
        async with httpx.AsyncClient(base_url=daemon.url, auth=(user, password), timeout=10) as client:
            with trio.fail_after(60):
                while True:
                    try:
                        if (await client.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert daemon.process is not None and daemon.process.returncode is None, daemon.log_text()
                    await trio.sleep(0.2)
            assert (await client.get("/queued")).status_code == 200  # answers from a poll, as upstream expects
    finally:
        await daemon.kill()
    log = daemon.log_text()
    pinned = (tmp_path / ".ssh" / "known_hosts").read_text()
    host_key = (state() / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert host_key in pinned, "the login node's key was not the one pinned on first use"
    assert "trusted on first use" in log
    assert "deprecated" not in log  # the chart uses today's names
    assert "Traceback" not in log
    # the jobs' files are readable by the chart's group (JARVICE_SLURM_SSH_USER_GROUP): a setgid jobs dir
    jobs_dir = Path(env["JARVICE_SLURM_SCRATCH_DIR"]) / ".jarvice"
    mode = subprocess.run(["stat", "-c", "%a %G", str(jobs_dir)], capture_output=True, text=True, check=True).stdout
    assert mode.split() == ["2750", env["JARVICE_SLURM_SSH_USER"]]
