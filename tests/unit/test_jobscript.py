"""adapters.jobscript: from upstream's /submit arguments to sbatch arguments and a batch script.

The last part of this file runs the rendered batch script with the real bash,
with stand-ins for srun and scontrol, so the wrapper is exercised as Slurm would run it.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import stat
import subprocess

import pytest

from adapters.errors import InvalidRequest
from adapters.jobscript import ScriptEnvironment, Submission, build, check_jobid, check_name
from adapters.slurm.client import SlurmClient
from adapters.ssh import CommandResult
from tests.support.upstream import job_script, submit_args

ENV = ScriptEnvironment(scratch_dir="/scratch/jarvice")


def make(body: str = "true", env: ScriptEnvironment = ENV, name: str = "20261123-x-alice_demo", number: int = 42,
         **kw: object) -> Submission:
    """The wrapper around a plain script: ``body`` follows the placeholder, with no container,
    so that the wrapper can run here without Slurm or Singularity."""
    return build(submit_args(name, number, body, plain=True, **kw), "singularity", env)


def raw_args(script: str | bytes, name: str = "job-1", executor: str = "singularity") -> dict:
    data = script.encode() if isinstance(script, str) else script
    return {"name": name, "number": 1, "nodes": 1, "hpc_script": {executor: base64.b64encode(data).decode()}}


def rejected(args: dict, env: ScriptEnvironment = ENV) -> str:
    with pytest.raises(InvalidRequest) as info:
        build(args, "singularity", env)
    return str(info.value)


def payload_of(sub: Submission) -> str:
    """The upstream script as the batch script writes it to disk (between the here-document markers)."""
    lines = sub.batch_script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("cat > \"$JARVICE_PAYLOAD\" <<'"))
    delimiter = lines[start].split("<<'", 1)[1].rstrip("'")
    end = lines.index(delimiter, start + 1)
    return "\n".join(lines[start + 1:end]) + "\n"


def exports_of(text: str) -> dict[str, str]:
    """``export K=V`` lines, V as the shell would read it."""
    out = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line and " " not in line.split("=", 1)[0][7:]:
            key, _, value = line[7:].partition("=")
            words = shlex.split(value)
            out[key] = words[0] if words else ""
    return out


# ------------------------------------------------------------------ sbatch arguments
def test_identity_and_tracking_args() -> None:
    args = make(name="20261123-x-alice_demo", number=42).sbatch_args
    assert args[0] == "--parsable"
    assert "--job-name=jarvice_20261123-x-alice_demo" in args
    assert "--comment=jarvice:42" in args
    assert "--output=/scratch/jarvice/.jarvice/%j.out" in args
    assert "--chdir=/scratch/jarvice" in args


@pytest.mark.parametrize(("cores", "nodes", "ntasks"), [(1, 1, 1), (4, 2, 8), (16, 3, 48)])
def test_cores_times_nodes_tasks(cores: int, nodes: int, ntasks: int) -> None:
    args = make(cores=cores, nodes=nodes).sbatch_args
    assert f"--nodes={nodes}" in args
    assert f"--ntasks={ntasks}" in args


def test_memory_in_gigabytes() -> None:
    assert "--mem=16G" in make(ram=16).sbatch_args
    assert not any(a.startswith("--mem") for a in make(ram=0).sbatch_args)


def test_gpus_per_node_and_forced_exclusive() -> None:
    sub = make(gpus=2, devices=["exclusive=False"])
    assert "--gpus-per-node=2" in sub.sbatch_args
    assert "--exclusive" in sub.sbatch_args
    assert "export JARVICE_GPU_JOB=1" in sub.batch_script
    cpu = make(gpus=0)
    assert not any(a.startswith("--gpus") for a in cpu.sbatch_args)
    assert "export JARVICE_GPU_JOB=0" in cpu.batch_script


def test_exclusive_is_the_default() -> None:
    assert "--exclusive" in make(devices=[]).sbatch_args
    assert "--exclusive" in make(devices=["exclusive=True"]).sbatch_args


def test_exclusive_false_is_honoured_for_cpu_batch_jobs() -> None:
    sub = make(devices=["exclusive=False"])
    assert "--exclusive" not in sub.sbatch_args
    assert sub.request.exclusive is False


def test_exclusive_false_is_overridden_for_interactive_jobs() -> None:
    assert "--exclusive" in make(interactive=True, devices=["exclusive=False"]).sbatch_args


def test_walltime_partition_licenses() -> None:
    args = make(walltime="2-00:00:00", devices=["partition=gpu,debug"], extra="JOBOBJ_LICENSES=matlab:2,ansys").sbatch_args
    assert "--time=2-00:00:00" in args
    assert "--partition=gpu,debug" in args
    assert "--licenses=matlab:2,ansys" in args
    plain = make().sbatch_args
    assert not any(a.startswith(("--time", "--partition", "--licenses")) for a in plain)


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"walltime": "1h"}, "JOBOBJ_WALLTIME"),
        ({"walltime": "1:00:00; rm -rf ~"}, "JOBOBJ_WALLTIME"),
        ({"devices": ["partition=a b"]}, "partition"),
        ({"devices": ["partition=$(id)"]}, "partition"),
        ({"extra": "JOBOBJ_LICENSES=matlab 2"}, "JOBOBJ_LICENSES"),
        ({"devices": ["exclusive=maybe"]}, "exclusive"),
        ({"devices": ["overlay=-1"]}, "overlay"),
        ({"gpus": 65}, "JOBOBJ_GPUS"),
        ({"cores": 0}, "JARVICE_CPU_CORES"),
        ({"ram": -1}, "JOBOBJ_RAM"),
    ],
)
def test_bad_resource_values_are_refused(kw: dict, word: str) -> None:
    assert word in rejected(submit_args("job-1", 1, "true", **kw))


def test_devices_not_json_is_refused() -> None:
    script = job_script("true").replace('JOBOBJ_DEVICES=["exclusive=False"]', "JOBOBJ_DEVICES=[exclusive")
    assert "JOBOBJ_DEVICES" in rejected(raw_args(script))


def test_sbatch_options_pass_through() -> None:
    args = make(devices=["sbatch_qos=high", "sbatch_account=proj-1", "sbatch_constraint=skylake&ib"]).sbatch_args
    assert "--qos=high" in args
    assert "--account=proj-1" in args
    assert "--constraint=skylake&ib" in args


async def test_sbatch_option_value_reaches_sbatch_as_one_argument() -> None:
    """The client quotes each argument: a hostile value stays one argv word, never shell code."""
    sub = make(devices=["sbatch_comment-x=a b; touch /tmp/pwned $(id)"], held=True)

    class Runner:
        seen: list[tuple[str, str | None]] = []

        async def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None) -> CommandResult:
            self.seen.append((command, stdin))
            return CommandResult(0, "77;cluster\n", "")

    runner = Runner()
    client = SlurmClient(runner, user="jarvice", scratch_dir="/scratch/jarvice")
    assert await client.submit(sub) == "77"
    command, stdin = runner.seen[0]
    assert shlex.split(command) == ["sbatch", *sub.sbatch_args]
    assert "--comment-x=a b; touch /tmp/pwned $(id)" in shlex.split(command)
    assert stdin == sub.batch_script


@pytest.mark.parametrize("option", ["output", "job-name", "comment", "hold", "parsable", "chdir", "export", "wrap"])
def test_reserved_sbatch_options_are_refused(option: str) -> None:
    message = rejected(submit_args("job-1", 1, "true", devices=[f"sbatch_{option}=/tmp/x"]))
    assert f"--{option}" in message


@pytest.mark.parametrize("option", ["job-na", "outp", "comm"])
def test_abbreviated_reserved_sbatch_options_are_refused(option: str) -> None:
    rejected(submit_args("job-1", 1, "true", devices=[f"sbatch_{option}=/tmp/x"]))


@pytest.mark.parametrize("option", ["QOS", "qos;id", "qos x", "-qos", ""])
def test_malformed_sbatch_option_names_are_refused(option: str) -> None:
    rejected(submit_args("job-1", 1, "true", devices=[f"sbatch_{option}=1"]))


def test_unknown_device_is_refused_by_name() -> None:
    message = rejected(submit_args("job-1", 1, "true", devices=["gpu_type=a100"]))
    assert "unknown (pseudo)device" in message
    assert "gpu_type" in message


def test_devices_as_object_are_accepted() -> None:
    script = job_script("true").replace('JOBOBJ_DEVICES=["exclusive=False"]', 'JOBOBJ_DEVICES={{"partition": "debug"}}')
    sub = build(raw_args(script), "singularity", ENV)
    assert "--partition=debug" in sub.sbatch_args


def test_held_job_is_submitted_with_hold() -> None:
    assert make(held=True).sbatch_args[-1] == "--hold"
    assert "--hold" not in make(held=False).sbatch_args


def test_held_must_be_a_bool() -> None:
    args = submit_args("job-1", 1, "true")
    args["held"] = "yes"
    assert "held" in rejected(args)


# ------------------------------------------------------------------ names and numbers
@pytest.mark.parametrize("name", ["20261123-x-alice_demo", "a", "A.b_c-9", "a..b", "x" * 128])
def test_good_names(name: str) -> None:
    assert check_name(name) == name
    assert f"--job-name=jarvice_{name}" in make(name=name).sbatch_args


@pytest.mark.parametrize(
    "name",
    ["", "x" * 129, "$(id)", "a$(id)", "a`id`", "a'b", 'a"b', "a b", "a;b", "jo\nb", "-a", ".a", "..", "../x",
     "a/b", "a|b", "a&b", "a\tb", 42, None],
)
def test_bad_names_are_refused(name: object) -> None:
    args = submit_args("placeholder", 1, "true")
    args["name"] = name
    assert "'name'" in rejected(args)


def test_name_with_trailing_newline_is_refused() -> None:
    args = submit_args("placeholder", 1, "true")
    args["name"] = "job\n"
    rejected(args)


def test_jobid_with_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        check_jobid("12\n")


@pytest.mark.parametrize(("value", "ok"), [("12", True), (12, True), ("0012", True), ("12a", False), ("", False),
                                           (True, False), ("1;2", False), (None, False), ("1" * 13, False)])
def test_check_jobid(value: object, ok: bool) -> None:
    if ok:
        assert check_jobid(value) == str(int(value))  # "0012" is job 12, as Slurm prints it
    else:
        with pytest.raises(InvalidRequest):
            check_jobid(value)


@pytest.mark.parametrize(("number", "nodes"), [("x", 1), (-1, 1), (1, 0), (1, "two"), (True, 1), (1.5, 1)])
def test_bad_number_or_nodes_are_refused(number: object, nodes: object) -> None:
    args = submit_args("job-1", 1, "true")
    args["number"], args["nodes"] = number, nodes
    rejected(args)


# ------------------------------------------------------------------ the script upstream sent
def test_appdef_v1_is_refused() -> None:
    assert "Appdef V2+" in rejected(submit_args("job-1", 1, "true", appdefversion=1))


def test_missing_appdef_is_refused() -> None:
    script = job_script("true").replace("JOBOBJ_APPDEFVERSION=2\n", "")
    assert "JOBOBJ_APPDEFVERSION" in rejected(raw_args(script))


def test_missing_cores_is_refused() -> None:
    script = job_script("true").replace("JARVICE_CPU_CORES=1\n", "")
    assert "JARVICE_CPU_CORES" in rejected(raw_args(script))


def test_invalid_base64_is_refused() -> None:
    args = raw_args("x")
    args["hpc_script"]["singularity"] = "not base64!!"
    assert "not valid base64" in rejected(args)


def test_non_utf8_script_is_refused() -> None:
    assert "not UTF-8" in rejected(raw_args(b"#!/bin/bash\n\xff\xfe\n"))


def test_nul_byte_is_refused() -> None:
    assert "NUL" in rejected(raw_args(job_script("echo a\0b")))


def test_missing_executor_key_is_refused() -> None:
    message = rejected(raw_args(job_script("true"), executor="docker"))
    assert "singularity" in message


@pytest.mark.parametrize("hpc_script", [None, "abc", ["x"], {}])
def test_hpc_script_must_be_an_object_with_the_executor(hpc_script: object) -> None:
    args = raw_args(job_script("true"))
    args["hpc_script"] = hpc_script
    assert "hpc_script" in rejected(args)


def test_doubled_braces_become_literal_braces() -> None:
    sub = make(body='echo "${{HOME}}" {{a,b}} }}{{')
    payload = payload_of(sub)
    assert 'echo "${HOME}" {a,b} }{\n' in payload
    assert "{{" not in payload and "}}" not in payload


def test_placeholder_is_replaced_by_the_exports() -> None:
    payload = payload_of(make())
    assert "{DOWNSTREAM_PARAMETERS}" not in payload
    exports = exports_of(payload)
    assert exports["JARVICE_JOB_SCRATCH_DIR"] == "/scratch/jarvice/"  # scripts write ${DIR}.jarvice/...
    assert exports["JARVICE_APP_IMAGE"] == "docker://docker.io/library/ubuntu:22.04"
    assert exports["JARVICE_INIT_IMAGE"] == "docker://us-docker.pkg.dev/jarvice-system/images/initv2:latest"
    assert exports["JARVICE_CMD"] == "/bin/true"
    assert exports["JARVICE_SINGULARITY_OVERLAY_SIZE"] == "640"  # the JARVICE chart's default


def test_overlay_device_overrides_the_site_default() -> None:
    assert exports_of(payload_of(make(devices=["overlay=0"])))["JARVICE_SINGULARITY_OVERLAY_SIZE"] == "0"


@pytest.mark.parametrize("body", ["echo {OTHER}", "echo {}", "echo {0}", "echo {DOWNSTREAM_PARAMETERS!r}",
                                  "echo {DOWNSTREAM_PARAMETERS:>9}"])
def test_other_fields_are_refused(body: str) -> None:
    message = rejected(submit_args("job-1", 1, body))
    assert "unknown field" in message
    assert "doubled" in message


def test_unknown_field_is_named() -> None:
    assert "{OTHER}" in rejected(submit_args("job-1", 1, "echo {OTHER}"))


@pytest.mark.parametrize("body", ["echo ${HOME", "echo {", "echo }", "awk '{print $1}'"])
def test_single_braces_are_refused(body: str) -> None:
    assert "brace" in rejected(submit_args("job-1", 1, body))


# ------------------------------------------------------------------ secrets and quoting
def _ctrsecret(user: str, password: str) -> str:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return base64.b64encode(json.dumps({"auths": {"docker.io": {"auth": auth}}}).encode()).decode()


SECRET_ENV = ScriptEnvironment(
    scratch_dir="/scratch/jarvice",
    init_username_b64=base64.b64encode(b"initbot").decode(),
    init_password_b64=base64.b64encode(b"init-pass-XYZ").decode(),
)


def test_fscript_has_no_registry_credentials() -> None:
    sub = make(env=SECRET_ENV, body="echo the body", extra=f"JOBOBJ_CTRSECRET={_ctrsecret('bob', 'app-pass-QRS')}")
    batch_exports = exports_of(sub.batch_script)
    # the job itself needs them
    assert base64.b64decode(batch_exports["JARVICE_DOCKER_USERNAME"]) == b"bob"
    assert base64.b64decode(batch_exports["JARVICE_DOCKER_PASSWORD"]) == b"app-pass-QRS"
    assert base64.b64decode(batch_exports["JARVICE_INIT_DOCKER_PASSWORD"]) == b"init-pass-XYZ"
    assert "JOBOBJ_CTRSECRET=" in sub.batch_script
    # what upstream shows users does not
    for secret in ("JARVICE_DOCKER_PASSWORD", "JARVICE_DOCKER_USERNAME", "JARVICE_INIT_DOCKER_USERNAME",
                   "JARVICE_INIT_DOCKER_PASSWORD", "JOBOBJ_CTRSECRET"):
        assert secret not in sub.fscript, secret
    for value in (batch_exports["JARVICE_DOCKER_PASSWORD"], batch_exports["JARVICE_INIT_DOCKER_PASSWORD"]):
        assert value not in sub.fscript
    # ... and keeps everything else
    kept = set(sub.batch_script.splitlines()) - set(sub.fscript.splitlines())
    assert all("DOCKER" in line or "CTRSECRET" in line for line in kept)
    assert "echo the body" in sub.fscript
    assert "JOBOBJ_REPO=docker.io/library/ubuntu:22.04" in sub.fscript
    assert "export JARVICE_APP_IMAGE=docker://docker.io/library/ubuntu:22.04" in sub.fscript
    assert "srun " in sub.fscript


def test_fscript_drops_docker_secret_json() -> None:
    script = job_script("true", extra='JOBOBJ_DOCKER_SECRET={{"username": "bob", "password": "pw-LMN"}}')
    sub = build(raw_args(script), "singularity", ENV)
    assert "pw-LMN" not in sub.fscript
    assert "pw-LMN" in sub.batch_script


def test_docker_secret_json_with_doubled_braces_gives_credentials() -> None:
    script = job_script("true", extra='JOBOBJ_DOCKER_SECRET={{"username": "bob", "password": "pw-LMN"}}')
    exports = exports_of(build(raw_args(script), "singularity", ENV).batch_script)
    assert base64.b64decode(exports["JARVICE_DOCKER_USERNAME"]) == b"bob"


def test_jarvice_cmd_braces_are_undoubled_in_the_export() -> None:
    script = job_script("true").replace("JARVICE_CMD=/bin/true", "JARVICE_CMD=echo ${{HOME}}")
    exports = exports_of(build(raw_args(script), "singularity", ENV).batch_script)
    assert exports["JARVICE_CMD"] == "echo ${HOME}"


def test_ctrsecret_garbage_is_refused() -> None:
    assert "JOBOBJ_CTRSECRET" in rejected(submit_args("job-1", 1, "true", extra="JOBOBJ_CTRSECRET=abc"))


def test_export_values_are_shell_quoted() -> None:
    env = ScriptEnvironment(scratch_dir="/scratch/jarvice", http_proxy="http://p:3128/$(touch /tmp/x)",
                            https_proxy="`id`", no_proxy="a b;c")
    batch = make(env=env).batch_script
    assert "export SCHTTP_PROXY='http://p:3128/$(touch /tmp/x)'" in batch
    assert "export SCHTTPS_PROXY='`id`'" in batch
    assert "export SCNO_PROXY='a b;c'" in batch


def test_jarvice_cmd_is_quoted() -> None:
    script = job_script("true").replace("JARVICE_CMD=/bin/true", "JARVICE_CMD=/bin/sh -c 'echo $(id)'; x")
    batch = build(raw_args(script), "singularity", ENV).batch_script
    assert exports_of(batch)["JARVICE_CMD"] == "/bin/sh -c 'echo $(id)'; x"


def test_local_registry_image() -> None:
    env = ScriptEnvironment(scratch_dir="/s", local_registry="reg.local:5000", local_repo_base="jarvice")
    assert exports_of(make(env=env).batch_script)["JARVICE_APP_IMAGE"] == "docker://reg.local:5000/jarvice/jarvice-demo:latest"


def test_registry_proxy_image() -> None:
    env = ScriptEnvironment(scratch_dir="/s", registry_proxy_port=5001, registry_proxy_repos=("docker.io",))
    assert exports_of(make(env=env).batch_script)["JARVICE_APP_IMAGE"] == "docker://localhost:5001/library/ubuntu:22.04"


def test_body_cannot_end_the_here_document() -> None:
    sub = make(body="echo a\nJARVICE_SCRIPT_\nEOF\necho b")
    payload = payload_of(sub)
    assert payload.endswith("echo a\nJARVICE_SCRIPT_\nEOF\necho b\n")


# ------------------------------------------------------------------ running the batch script
# (the `cluster` fixture, in conftest.py, runs it with stand-ins for srun and scontrol)

BODY = """\
out="$JARVICE_JOB_SCRATCH_DIR/ran.$PROCESS_PROCID"
{{
  echo "procid=$PROCESS_PROCID"
  echo "node=$PROCESS_NODENAME"
  echo "jobid=$JOB_JOBID"
  echo "nodelist=$JOB_JOB_FORMATED_NODELIST"
  echo "nnodes=${{JOB_NNODES}}"
  echo "gpus=$JOB_GPUS_PER_NODE"
  echo "site=$SITE_VAR"
  echo "cuda=$CUDA_MARK"
  echo "proxy=$SCHTTP_PROXY"
  echo "cmd=$JARVICE_CMD"
  echo 'literal=$(not run) `nor this`'
}} > "$out"
"""


@pytest.mark.parametrize("rc", [0, 3])
def test_batch_script_runs_the_body_and_reports_its_exit_code(cluster, rc: int) -> None:
    sentinel = cluster.tmp / "pwned"
    env = ScriptEnvironment(scratch_dir=str(cluster.scratch), http_proxy=f"http://proxy:3128/$(touch {sentinel})")
    sub = make(env=env, body=BODY + f"exit {rc}\n")
    proc = cluster(sub)
    assert proc.returncode == rc, proc.stderr
    rc_file = cluster.scratch / ".jarvice" / "4242.rc"
    assert rc_file.read_text() == f"{rc}\n"
    assert stat.S_IMODE(rc_file.stat().st_mode) == 0o600  # umask 077: job files are private
    ran = dict(line.split("=", 1) for line in (cluster.scratch / "ran.0").read_text().splitlines())
    assert ran["procid"] == "0"
    assert ran["node"] == "node1"
    assert ran["jobid"] == "4242"
    assert ran["nodelist"] == "node1"
    assert ran["nnodes"] == "1"
    assert ran["gpus"] == "0"
    assert ran["cmd"] == "/bin/true"
    assert ran["literal"] == "$(not run) `nor this`"
    assert ran["proxy"] == f"http://proxy:3128/$(touch {sentinel})"
    assert not sentinel.exists()
    # the payload is removed once the job is over; nothing is left but the rc file
    assert sorted(p.name for p in (cluster.scratch / ".jarvice").iterdir()) == ["4242.rc"]


def test_srun_gets_one_task_per_node(cluster) -> None:
    cluster(make(env=ScriptEnvironment(scratch_dir=str(cluster.scratch))), nnodes=2)
    args = (cluster.tmp / "srun.args").read_text().splitlines()
    assert args[:8] == ["--kill-on-bad-exit=1", "--export=ALL", "-N", "2", "-n", "2", "--ntasks-per-node=1", "/bin/bash"]


def test_two_nodes_task_zero_decides_the_exit_code(cluster) -> None:
    body = BODY + '[ "$PROCESS_PROCID" = 0 ] && exit 3\nexit 0\n'
    proc = cluster(make(env=ScriptEnvironment(scratch_dir=str(cluster.scratch)), body=body), nnodes=2)
    assert proc.returncode == 3, proc.stderr
    assert (cluster.scratch / ".jarvice" / "4242.rc").read_text() == "3\n"
    for procid, node in (("0", "node1"), ("1", "node2")):
        ran = dict(line.split("=", 1) for line in (cluster.scratch / f"ran.{procid}").read_text().splitlines())
        assert ran["node"] == node
        assert ran["nodelist"] == "node1 node2"
        assert ran["nnodes"] == "2"


def test_srun_failure_is_the_exit_code_when_no_task_ran(cluster) -> None:
    proc = cluster(make(env=ScriptEnvironment(scratch_dir=str(cluster.scratch)), body=BODY), FAKE_SRUN_FAIL="7")
    assert proc.returncode == 7
    assert (cluster.scratch / ".jarvice" / "4242.rc").read_text() == "7\n"
    assert not (cluster.scratch / "ran.0").exists()


def test_site_env_files_are_sourced(cluster) -> None:
    (cluster.scratch / ".jarvice_custom_env").write_text("export SITE_VAR=from-site\n")
    (cluster.scratch / ".jarvice_cuda_env").write_text("export CUDA_MARK=cuda-on\n")
    env = ScriptEnvironment(scratch_dir=str(cluster.scratch))
    assert cluster(make(env=env, body=BODY)).returncode == 0
    cpu = (cluster.scratch / "ran.0").read_text()
    assert "site=from-site\n" in cpu
    assert "cuda=\n" in cpu  # CPU jobs do not get the CUDA environment
    assert cluster(make(env=env, body=BODY, gpus=1), SLURM_GPUS_PER_NODE="1").returncode == 0
    gpu = (cluster.scratch / "ran.0").read_text()
    assert "cuda=cuda-on\n" in gpu
    assert "gpus=1\n" in gpu


def test_batch_script_with_bash_syntax_check() -> None:
    """bash -n on a rendered script with awkward content: the wrapper itself stays valid shell."""
    sub = make(body="echo \"it's\" '$x' \\\nEOF\n)\n", env=SECRET_ENV, devices=["partition=debug"])
    proc = subprocess.run(["/bin/bash", "-n"], input=sub.batch_script, capture_output=True, text=True,
                          env={"PATH": os.defpath}, timeout=30)
    assert proc.returncode == 0, proc.stderr
