"""What JARVICE's own scripts rely on (the contract's *What JARVICE's own scripts and apps rely on*).

The scripts here are written from those conventions, not from what the daemon accepts:
``JOBOBJ_*`` lines, the placeholder, doubled braces (upstream fills the script with
``str.format``), the per-job tree under ``${JARVICE_JOB_SCRATCH_DIR}.jarvice/jobs/$JOB_JOBID``
and the marker chain, which exits 0 whether the app worked or not. They run with the real
bash and stand-ins for srun and scontrol (the ``cluster`` fixture); the integration tests
run the same conventions on the real cluster.
"""

from __future__ import annotations

import base64
import subprocess
import time

import pytest

from adapters.jobscript import ScriptEnvironment, Submission, build
from adapters.kube.domain import JobsDomain

HEAD = """\
#!/bin/bash
JOBOBJ_INTERACTIVE={interactive}
JOBOBJ_APPDEFVERSION=2
JOBOBJ_ARCH=amd64
JOBOBJ_NAE=jarvice-ubuntu
JOBOBJ_REPO={repo}
JOBOBJ_USER=alice
JOBOBJ_DEVICES=["exclusive=False"]
JOBOBJ_GPUS=0
JOBOBJ_RAM=0
JARVICE_CPU_CORES=1
JARVICE_CMD=/usr/bin/app
{{DOWNSTREAM_PARAMETERS}}
mkdir -p ${{{{JARVICE_JOB_SCRATCH_DIR}}}}.jarvice/jobs/$JOB_JOBID
"""
CHAIN = "{app} && /bin/echo JARVICE_CMD_SUCCESS || /bin/echo JARVICE_CMD_FAILURE\n"


def submission(body: str, env: ScriptEnvironment, *, number: int = 42, interactive: bool = False,
               repo: str = "docker.io/library/ubuntu:22.04", nodes: int = 1) -> Submission:
    script = HEAD.format(interactive=interactive, repo=repo) + body
    args = {"name": "20261204-ab12-alice_ubuntu-desktop", "number": number, "nodes": nodes,
            "hpc_script": {"singularity": base64.b64encode(script.encode()).decode()}, "bearer": ""}
    return build(args, "singularity", env)


def exports(sub: Submission) -> dict[str, str]:
    """The export block as bash sees it (values unquoted), read by bash itself."""
    block = sub.batch_script.split("export JARVICE_JOB_SCRATCH_DIR=", 1)[1].split("\nmkdir -p", 1)[0]
    out = subprocess.run(["/bin/bash", "-c", "export JARVICE_JOB_SCRATCH_DIR=" + block + "\nenv -0"],
                         capture_output=True, timeout=10, env={"USER": "alice"}).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


# ------------------------------------------------------------------ the export block
def test_scratch_dirs_end_with_a_slash_so_the_per_job_tree_lands_inside_scratch(cluster) -> None:
    env = ScriptEnvironment(scratch_dir=str(cluster.scratch))
    proc = cluster(submission(CHAIN.format(app="true"), env))
    assert proc.returncode == 0, proc.stderr
    assert (cluster.scratch / ".jarvice" / "jobs" / "4242").is_dir()
    assert not (cluster.tmp / "scratch.jarvice").exists()  # what the export without its slash made


def test_global_scratch_and_registries_as_the_reference_exports_them() -> None:
    env = ScriptEnvironment(scratch_dir="/scratch/jarvice/", global_scratch_dir="/global/scratch",
                            global_registries=("docker.io", "ghcr.io/nimbix"))
    values = exports(submission("true\n", env))
    assert values["JARVICE_JOB_SCRATCH_DIR"] == "/scratch/jarvice/"
    assert values["JARVICE_JOB_GLOBAL_SCRATCH_DIR"] == "/global/scratch/"
    assert values["JARVICE_JOB_APP_IS_IN_GLOBAL_REGISTRIES"] == "True"
    other = exports(submission("true\n", env, repo="quay.io/org/app:1"))
    assert other["JARVICE_JOB_APP_IS_IN_GLOBAL_REGISTRIES"] == "False"
    prefixed = exports(submission("true\n", env, repo="ghcr.io/nimbix/desktop:2"))
    assert prefixed["JARVICE_JOB_APP_IS_IN_GLOBAL_REGISTRIES"] == "True"


def test_no_global_scratch_or_registries_by_default() -> None:
    values = exports(submission("true\n", ScriptEnvironment(scratch_dir="/s")))
    assert values["JARVICE_JOB_GLOBAL_SCRATCH_DIR"] == ""
    # the reference's substring test made every image "global" when no registry was set
    assert values["JARVICE_JOB_APP_IS_IN_GLOBAL_REGISTRIES"] == "False"


def test_path_based_ingress_tells_interactive_apps_their_path() -> None:
    domain = JobsDomain.parse("jarvice.example.com/job$")
    values = exports(submission("true\n", ScriptEnvironment(scratch_dir="/s", ingress=domain), number=57,
                                interactive=True))
    assert values["SINGULARITYENV_JARVICE_INGRESSPATH"] == "job57"
    assert domain.url_for("57") == "https://jarvice.example.com/job57/"  # the info URL serves under the same path


def test_host_based_ingress_and_batch_jobs_get_no_ingress_path() -> None:
    host_based = ScriptEnvironment(scratch_dir="/s", ingress=JobsDomain.parse("example.com"))
    assert exports(submission("true\n", host_based, interactive=True))["SINGULARITYENV_JARVICE_INGRESSPATH"] == ""
    path_based = ScriptEnvironment(scratch_dir="/s", ingress=JobsDomain.parse("jarvice.example.com/job$"))
    assert "SINGULARITYENV_JARVICE_INGRESSPATH" not in exports(submission("true\n", path_based))


def test_init_image_without_repo_base() -> None:
    env = ScriptEnvironment(scratch_dir="/s", system_registry="registry.site", omit_repo_base=True, images_tag="3.26")
    assert exports(submission("true\n", env))["JARVICE_INIT_IMAGE"] == "docker://registry.site/initv2:3.26"


# ------------------------------------------------------------------ the success marker
@pytest.mark.parametrize(("body", "code"), [
    (CHAIN.format(app="true"), 0),
    (CHAIN.format(app="false"), 1),  # the chain exits 0: only the marker says the app failed
    (CHAIN.format(app="true") + "exit 3\n", 0),  # the marker wins over a later exit code
    ("set -x\n" + CHAIN.format(app="false"), 1),  # the trace's '+ /bin/echo JARVICE_CMD_SUCCESS' is no marker
    ("echo 'GoTTY is starting with command: /bin/sh -c app && echo JARVICE_CMD_SUCCESS'\n"
     + CHAIN.format(app="false"), 1),
    ("echo working\nexit 3\n", 3),  # no marker at all: the script's exit code, as before
    ("echo working\n", 0),
])
def test_the_marker_decides_the_exit_code(cluster, body: str, code: int) -> None:
    proc = cluster(submission(body, ScriptEnvironment(scratch_dir=str(cluster.scratch))))
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert (cluster.scratch / ".jarvice" / "4242.rc").read_text() == f"{code}\n"
    assert "JARVICE_CMD" in proc.stdout or code in (3, 0)  # the output is passed through untouched
    assert not list((cluster.scratch / ".jarvice").glob("*.marker"))


def test_task_zero_decides_a_two_node_job(cluster) -> None:
    env = ScriptEnvironment(scratch_dir=str(cluster.scratch))
    worker_fails = 'if [ "$PROCESS_PROCID" != 0 ]; then /bin/echo JARVICE_CMD_FAILURE; exit 0; fi\n'
    proc = cluster(submission(worker_fails + CHAIN.format(app="true"), env, nodes=2), nnodes=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    app_fails = 'if [ "$PROCESS_PROCID" != 0 ]; then echo worker done; exit 0; fi\n' + CHAIN.format(app="false")
    proc = cluster(submission(app_fails, env, nodes=2), nnodes=2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (cluster.scratch / ".jarvice" / "4242.rc").read_text() == "1\n"


def test_a_background_process_holding_the_output_does_not_hold_the_job(cluster) -> None:
    """An app that leaves a daemon with its stdout open: the task ends with the script, as it did before."""
    body = "sleep 60 &\n" + CHAIN.format(app="true")
    started = time.monotonic()
    proc = cluster(submission(body, ScriptEnvironment(scratch_dir=str(cluster.scratch))))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 30
    assert "JARVICE_CMD_SUCCESS" in proc.stdout
