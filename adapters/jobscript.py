"""From upstream's ``/submit`` arguments to an sbatch command line and a batch script.

Everything here is validation and text: nothing is run. Every value that comes
from upstream either matches a strict pattern or is quoted with ``shlex.quote``
before it is placed in a command line or a script; the upstream script itself is
carried in a quoted here-document whose delimiter it cannot contain.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from adapters.errors import InvalidRequest
from adapters.kube.domain import JobsDomain
from adapters.slurm.parsers import job_comment

PLACEHOLDER = "DOWNSTREAM_PARAMETERS"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
JOBID_RE = re.compile(r"^[0-9]{1,12}\Z")
# ASCII digits only ([0-9], not \d: "١٢" is a digit string to Python, not to Slurm), \Z not $ (which
# matches before a trailing newline), and lengths bounded: every one of these lands on a command line.
_INT_RE = re.compile(r"^[+-]?[0-9]{1,20}\Z")
_WALLTIME_RE = re.compile(r"^([0-9]{1,5}-)?[0-9]{1,9}(:[0-9]{1,2}){0,2}\Z")
_PARTITION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}(,[A-Za-z0-9_.-]{1,64}){0,63}\Z")
_LICENSES_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}(:[0-9]{1,9})?(,[A-Za-z0-9_.@-]{1,64}(:[0-9]{1,9})?){0,63}\Z")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}\Z")
MAX_OPTION_VALUE = 1024
# The sbatch command line travels as one SSH channel request: OpenSSH drops the whole
# connection (every command of the daemon) when a request packet is too large.
MAX_SBATCH_ARGS = 32 * 1024
# Options the downstream sets itself: letting a device override them would break
# tracking (names, comment, output path, parsable id) or the resource contract.
_RESERVED_OPTIONS = frozenset({
    "job-name", "comment", "output", "error", "input", "parsable", "hold", "wrap",
    "nodes", "ntasks", "chdir", "export", "export-file", "test-only", "wait", "array",
})
_SECRET_LINE_RE = re.compile(
    r"^\s*(export\s+)?(JARVICE_(INIT_)?DOCKER_(USERNAME|PASSWORD)|SINGULARITY_DOCKER_(USERNAME|PASSWORD)"
    r"|JOBOBJ_CTRSECRET|JOBOBJ_DOCKER_SECRET)="
    r"|^\s*export\s+SCHTTPS?_PROXY=.*@"  # a proxy URL carrying user:password (which may hold '/' or spaces)
)


def jobs_dir_of(scratch_dir: str) -> str:
    """Where job scripts leave their rc and output files: the script writes them, the Slurm client reads them."""
    return f"{scratch_dir.rstrip('/')}/.jarvice"


def job_tree_of(scratch_dir: str, jobid: str) -> str:
    """The per-job tree JARVICE's own script makes (``${JARVICE_JOB_SCRATCH_DIR}.jarvice/jobs/$JOB_JOBID``)."""
    return f"{jobs_dir_of(scratch_dir)}/jobs/{jobid}"


def as_dir(path: str) -> str:
    """A directory as JARVICE scripts join it: with its trailing ``/`` (they write ``${DIR}.jarvice``); "" stays ""."""
    return path.rstrip("/") + "/" if path else ""


@dataclass(frozen=True)
class ScriptEnvironment:
    """The site's side of the job: where things go and which images and proxies to use."""

    scratch_dir: str  # absolute
    service_port: int = 2228
    ssh_port: int = 2227
    singularity_tmpdir: str = "/tmp"
    overlay_size: int = 640  # MiB; the JARVICE chart's default
    global_scratch_dir: str = ""  # shared across clusters (JARVICE_JOB_GLOBAL_SCRATCH_DIR); "" when none
    global_registries: tuple[str, ...] = ()  # registries whose images every cluster already has
    ingress: JobsDomain | None = None  # path-based Kubernetes ingress: apps must serve under job<N>
    job_group: str = ""  # group that may read the jobs' files (JARVICE_SLURM_SSH_USER_GROUP); "" keeps them private
    # slurmrestd's per-user jobs share the jobs dir and JARVICE's image cache: the group may also write (umask 007)
    users_write: bool = False
    singularity_verbose: bool = False
    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""
    system_registry: str = "us-docker.pkg.dev"
    system_repo_base: str = "jarvice-system/images"
    omit_repo_base: bool = False  # JARVICE_SYSTEM_OMIT_REPO_BASE: system images sit at the registry's top
    images_tag: str = "latest"
    local_registry: str = ""
    local_repo_base: str = ""
    registry_proxy_port: int | None = None
    registry_proxy_repos: tuple[str, ...] = ()
    init_username_b64: str = field(default="", repr=False)
    init_password_b64: str = field(default="", repr=False)
    instance: str = ""  # this deployment's name in its jobs' Slurm comments (JARVICE_SLURM_INSTANCE)

    @property
    def jobs_dir(self) -> str:
        return jobs_dir_of(self.scratch_dir)


@dataclass(frozen=True)
class JobRequest:
    """What upstream asked for, validated."""

    name: str
    number: int
    nodes: int
    cores: int  # per node
    interactive: bool
    gpus: int  # per node
    ram_gb: int
    walltime: str
    partition: str
    licenses: str
    exclusive: bool
    options: tuple[tuple[str, str], ...]
    held: bool
    appdefversion: int
    user: str
    repo: str
    nae: str
    command: str
    overlay_size: int | None


@dataclass(frozen=True)
class Submission:
    request: JobRequest
    sbatch_args: tuple[str, ...]
    batch_script: str = field(repr=False)
    fscript: str = field(repr=False)


# ------------------------------------------------------------------ validation
def check_name(value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidRequest(
            "'name' must be 1-128 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return value


def check_jobid(value: object) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not JOBID_RE.match(text):
        raise InvalidRequest("'jobid' must be a Slurm job id (digits only)")
    return str(int(text))  # "042" is job 42, as Slurm prints it


def _bounded(value: object, label: str, lo: int, hi: int) -> int:
    """An integer (or a string of ASCII digits) within bounds; the error names ``label``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"{label} must be an integer")
    if isinstance(value, str) and not _INT_RE.match(value.strip(" \t")):
        raise InvalidRequest(f"{label} must be an integer, got {value[:40]!r}")
    number = int(value)
    if not lo <= number <= hi:
        raise InvalidRequest(f"{label} must be between {lo} and {hi}, got {str(number)[:40]}")
    return number


def check_int(args: Mapping[str, object], key: str, lo: int, hi: int) -> int:
    return _bounded(args.get(key), f"'{key}'", lo, hi)


def job_values(script: str) -> dict[str, str]:
    """``KEY=value`` lines (first occurrence wins, as in the reference); quotes stripped."""
    values: dict[str, str] = {}
    for line in script.split("\n"):  # bash's lines: str.splitlines() also splits on \x0b, \x85, \u2028 ...
        key, sep, value = line.strip().partition("=")
        if not sep or not re.fullmatch(r"(JOBOBJ|JARVICE)_[A-Z_]+", key) or key in values:
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _int_value(values: Mapping[str, str], key: str, default: int | None, lo: int, hi: int) -> int:
    raw = values.get(key, "")
    if raw != "":
        return _bounded(raw, key, lo, hi)
    if default is None:
        raise InvalidRequest(f"the script has no {key} line")
    return default


def _devices(raw: str) -> tuple[str, bool | None, int | None, tuple[tuple[str, str], ...]]:
    """``JOBOBJ_DEVICES``: a JSON list of ``key=value``; unknown keys are an error."""
    if not raw.strip():
        return "", None, None, ()
    try:
        items = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("JOBOBJ_DEVICES is not valid JSON") from None
    if isinstance(items, dict) and all(isinstance(v, str | int | float) for v in items.values()):
        items = [f"{k}={v}" for k, v in items.items()]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidRequest("JOBOBJ_DEVICES must be a JSON list of 'key=value' strings")
    partition, exclusive, overlay, options = "", None, None, []
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise InvalidRequest(f"malformed (pseudo)device: {item[:60]!r}")
        if key == "partition":
            if not _PARTITION_RE.match(value):
                raise InvalidRequest(f"invalid partition: {value[:60]!r}")
            partition = value
        elif key == "exclusive":
            if value.lower() not in {"true", "false"}:
                raise InvalidRequest(f"exclusive must be True or False, got {value[:20]!r}")
            exclusive = value.lower() == "true"
        elif key == "overlay":
            if not (value.isascii() and value.isdigit()) or len(value) > 9:
                raise InvalidRequest(f"invalid overlay setting {value[:20]!r}: must be an integer >= 0")
            overlay = int(value)
        elif key.startswith("sbatch_"):
            option = key[len("sbatch_"):]
            if not _OPTION_RE.match(option):
                raise InvalidRequest(f"invalid sbatch option name: {option[:40]!r}")
            # sbatch takes any unambiguous prefix of a long option: --job-na=x renames the job
            if any(reserved.startswith(option) for reserved in _RESERVED_OPTIONS):
                raise InvalidRequest(f"sbatch option --{option} is set by the downstream and cannot be overridden")
            if _CONTROL_RE.search(value):
                raise InvalidRequest(f"sbatch option --{option} has a control character in its value")
            if len(value) > MAX_OPTION_VALUE:
                raise InvalidRequest(f"sbatch option --{option} has a value longer than {MAX_OPTION_VALUE} characters")
            options.append((option, value))
        else:
            raise InvalidRequest(f"unknown (pseudo)device specified: {key[:40]!r}")
    return partition, exclusive, overlay, tuple(options)


def decode_script(hpc_script: object, executor: str) -> str:
    if not isinstance(hpc_script, dict):
        raise InvalidRequest("'hpc_script' must be an object {executor: base64 script}")
    encoded = hpc_script.get(executor)
    if not isinstance(encoded, str) or not encoded:
        raise InvalidRequest(f"'hpc_script' has no '{executor}' entry")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"'hpc_script.{executor}' is not valid base64") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"'hpc_script.{executor}' is not UTF-8 text") from None
    if "\0" in text:
        raise InvalidRequest(f"'hpc_script.{executor}' contains a NUL byte")
    return text


def parse_request(args: Mapping[str, object], values: Mapping[str, str]) -> JobRequest:
    """``values``: the script's ``KEY=value`` lines, read with literal braces undoubled."""
    name = check_name(args.get("name"))
    number = check_int(args, "number", 0, 10**15)
    nodes = check_int(args, "nodes", 1, 100_000)
    held = args.get("held", False)
    if not isinstance(held, bool):
        raise InvalidRequest("'held' must be true or false")
    appdef = _int_value(values, "JOBOBJ_APPDEFVERSION", None, 0, 1000)
    if appdef < 2:
        raise InvalidRequest("Appdef V2+ is required for this downstream")
    interactive_raw = values.get("JOBOBJ_INTERACTIVE", "False").lower()
    if interactive_raw not in {"true", "false"}:
        raise InvalidRequest(f"JOBOBJ_INTERACTIVE must be True or False, got {interactive_raw[:20]!r}")
    walltime = values.get("JOBOBJ_WALLTIME", "")
    if walltime and not _WALLTIME_RE.match(walltime):
        raise InvalidRequest(f"JOBOBJ_WALLTIME is not a Slurm time ([D-]HH:MM:SS or minutes): {walltime[:40]!r}")
    licenses = values.get("JOBOBJ_LICENSES", "")
    if licenses and not _LICENSES_RE.match(licenses):
        raise InvalidRequest(f"JOBOBJ_LICENSES is not a Slurm license list: {licenses[:60]!r}")
    partition, exclusive, overlay, options = _devices(values.get("JOBOBJ_DEVICES", ""))
    gpus = _int_value(values, "JOBOBJ_GPUS", 0, 0, 64)
    interactive = interactive_raw == "true"
    return JobRequest(
        name=name,
        number=number,
        nodes=nodes,
        cores=_int_value(values, "JARVICE_CPU_CORES", None, 1, 100_000),
        interactive=interactive,
        gpus=gpus,
        ram_gb=_int_value(values, "JOBOBJ_RAM", 0, 0, 1_000_000),
        walltime=walltime,
        partition=partition,
        licenses=licenses,
        # exclusive unless asked otherwise; always for GPU and interactive jobs
        exclusive=True if (gpus or interactive) else (exclusive is not False),
        options=options,
        held=held,
        appdefversion=appdef,
        user=values.get("JOBOBJ_USER", ""),
        repo=values.get("JOBOBJ_REPO", ""),
        nae=values.get("JOBOBJ_NAE", ""),
        command=values.get("JARVICE_CMD", ""),
        overlay_size=overlay,
    )


# ------------------------------------------------------------------ rendering
def fill_placeholder(script: str, block: str) -> str:
    """``str.format`` semantics with one allowed field: ``{{``/``}}`` are braces."""
    out: list[str] = []
    try:
        parsed = list(string.Formatter().parse(script))
    except ValueError as exc:
        raise InvalidRequest(f"the script has an unmatched brace ({exc}); literal braces must be doubled") from None
    line = 1
    for literal, field_name, spec, conversion in parsed:
        out.append(literal)
        line += literal.count("\n")
        if field_name is None:
            continue
        if field_name != PLACEHOLDER or spec or conversion:
            # Only a plain name is echoed: between undoubled braces may sit a secret
            # (a JOBOBJ_DOCKER_SECRET JSON object whose braces upstream did not double).
            shown = f" {{{field_name}}}" if _FIELD_NAME_RE.match(field_name) else ""
            raise InvalidRequest(
                f"the script has an unknown field{shown} on line {line}; only {{{PLACEHOLDER}}} is allowed "
                "and literal braces must be doubled"
            )
        out.append(block)
    return "".join(out)


def _registry_of(repo: str) -> tuple[str, str]:
    """``reg.io/a/b:tag`` -> (``reg.io``, ``a/b:tag``); Docker Hub when there is no host part."""
    parts = repo.split("/")
    if len(parts) > 2 or (len(parts) == 2 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost")):
        return parts[0], "/".join(parts[1:])
    return "index.docker.io", repo


def _app_credentials(values: Mapping[str, str], registry: str) -> tuple[str, str]:
    """Registry user and password for the app image, from the job's secrets."""
    try:
        secret = json.loads(values.get("JOBOBJ_DOCKER_SECRET") or "{}")
    except (ValueError, RecursionError):
        secret = {}
    if (isinstance(secret, dict) and isinstance(secret.get("username"), str) and secret["username"]
            and isinstance(secret.get("password", ""), str) and secret.get("server", registry) == registry):
        return secret["username"], secret.get("password", "")
    ctr = values.get("JOBOBJ_CTRSECRET", "")
    if ctr:
        try:
            config = json.loads(base64.b64decode(ctr))
            for auth in (config.get("auths") or {}).values():
                user, _, password = base64.b64decode(auth["auth"]).decode().partition(":")
                return user, password
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError):
            raise InvalidRequest("JOBOBJ_CTRSECRET is not base64 of a docker config JSON") from None
    return "", ""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _images(req: JobRequest, env: ScriptEnvironment) -> tuple[str, str]:
    if env.local_registry and req.nae:
        app = f"{env.local_registry}/{env.local_repo_base}/{req.nae}:latest"
    else:
        registry, path = _registry_of(req.repo)
        if env.registry_proxy_port and registry in env.registry_proxy_repos:
            app = f"localhost:{env.registry_proxy_port}/{path}"
        else:
            app = req.repo
    base = "" if env.omit_repo_base or not env.system_repo_base else f"{env.system_repo_base}/"
    init = f"{env.system_registry}/{base}initv{req.appdefversion}:{env.images_tag}"
    return f"docker://{app}", f"docker://{init}"


def in_global_registries(image: str, registries: tuple[str, ...]) -> bool:
    """Whether the app image comes from a registry every cluster mirrors (``reg.io`` or ``reg.io/path``).

    The reference tests each entry as a substring of the image, so an unset list matched every image;
    here an entry must be the image's registry or a path prefix of it.
    """
    ref = image.removeprefix("docker://")
    return any(ref == r or ref.startswith(r.rstrip("/") + "/") for r in registries if r)


def export_block(req: JobRequest, values: Mapping[str, str], env: ScriptEnvironment) -> str:
    """What replaces ``{DOWNSTREAM_PARAMETERS}``: our side of the job, as exports."""
    q = shlex.quote
    registry, _ = _registry_of(req.repo)
    app_user, app_password = _app_credentials(values, registry)
    init_user = base64.b64decode(env.init_username_b64).decode(errors="replace") if env.init_username_b64 else ""
    init_password = base64.b64decode(env.init_password_b64).decode(errors="replace") if env.init_password_b64 else ""
    app_image, init_image = _images(req, env)
    overlay = req.overlay_size if req.overlay_size is not None else env.overlay_size
    in_global = in_global_registries(app_image, env.global_registries)
    lines = [
        f"export JARVICE_JOB_SCRATCH_DIR={q(as_dir(env.scratch_dir))}",
        f"export JARVICE_JOB_GLOBAL_SCRATCH_DIR={q(as_dir(env.global_scratch_dir))}",
        f'export JARVICE_JOB_APP_IS_IN_GLOBAL_REGISTRIES="{in_global}"',
        f"export SINGULARITYENV_JARVICE_SERVICE_PORT={env.service_port}",
        f"export SINGULARITYENV_JARVICE_SSH_PORT={env.ssh_port}",
        f"export JARVICE_SINGULARITY_TMPDIR={q(env.singularity_tmpdir)}",
        'export JOB_LOCAL_USER="$USER"',
        f"export JARVICE_SINGULARITY_OVERLAY_SIZE={overlay}",
        f'export JARVICE_INIT_DOCKER_USERNAME="{_b64(init_user)}"',
        f'export JARVICE_INIT_DOCKER_PASSWORD="{_b64(init_password)}"',
        f'export JARVICE_DOCKER_USERNAME="{_b64(app_user)}"',
        f'export JARVICE_DOCKER_PASSWORD="{_b64(app_password)}"',
        f"export JARVICE_APP_IMAGE={q(app_image)}",
        f"export JARVICE_INIT_IMAGE={q(init_image)}",
        f"export JARVICE_CMD={q(req.command)}",
        'export SV_FLAG="-s"',
        f"export SV={'true' if env.singularity_verbose else 'false'}",
        '[ "$SV" = "true" ] && export SV_FLAG="-v"',
        f"export SCHTTP_PROXY={q(env.http_proxy)}",
        f"export SCHTTPS_PROXY={q(env.https_proxy)}",
        f"export SCNO_PROXY={q(env.no_proxy)}",
    ]
    if env.ingress is not None and req.interactive:
        lines.append(f"export SINGULARITYENV_JARVICE_INGRESSPATH={q(env.ingress.ingress_path(str(req.number)))}")
    return "\n".join(lines)


# JARVICE's scripts end with `app && /bin/echo JARVICE_CMD_SUCCESS || /bin/echo JARVICE_CMD_FAILURE`, a chain
# that exits 0 either way: the marker, not the exit code, says whether the app worked. This filter passes task
# 0's output through unchanged and writes the first marker's verdict (0 or 1) to the file ``verdict`` as soon as
# it sees it. The literal command texts (a shell trace, `set -x`) and gotty's start line, which quotes the
# command it runs, are not markers (the reference removes them too).
MARKER_FILTER = r"""{ print; fflush() }
decided || index($0, "GoTTY is starting with command") { next }
{ line = $0; gsub("/bin/echo JARVICE_CMD_(SUCCESS|FAILURE)", "", line) }
index(line, "JARVICE_CMD_SUCCESS") { decided = 1; print 0 > verdict; close(verdict); next }
index(line, "JARVICE_CMD_FAILURE") { decided = 1; print 1 > verdict; close(verdict) }
"""

# What each srun task runs before the JARVICE script: the Slurm -> JOB_* mapping of the reference, the site's
# env files, then the script. Task 0 decides the job's exit code: its marker if it printed one, else the
# script's exit code; the code is written atomically (write + rename) to the rc file, for when Slurm has
# forgotten the job, and is the task's (so the job's) exit code, so squeue and sacct agree with it.
# The filter reads a process substitution, not a pipe: a background process the app left holding its stdout
# would keep a pipe open for ever, while here the task waits for the filter at most 10 s once the script ends.
TASK_PROLOGUE = r"""export PROCESS_PROCID="$SLURM_PROCID" PROCESS_NODENAME="$SLURMD_NODENAME"
export JOB_JOBID="$SLURM_JOB_ID" JOB_JOB_NODELIST="$SLURM_JOB_NODELIST"
export JOB_JOB_FORMATED_NODELIST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | tr '\n' ' ' | sed 's/ $//')"
export JOB_NNODES="$SLURM_NNODES" JOB_NTASKS="$SLURM_NTASKS" JOB_SUBMIT_DIR="$SLURM_SUBMIT_DIR"
export JOB_GPUS_PER_NODE="${SLURM_GPUS_PER_NODE:-0}"
if [ -r "$JARVICE_SCRATCH/.jarvice_custom_env" ]; then . "$JARVICE_SCRATCH/.jarvice_custom_env"; fi
if [ "$JARVICE_GPU_JOB" = 1 ] && [ -r "$JARVICE_SCRATCH/.jarvice_cuda_env" ]; then . "$JARVICE_SCRATCH/.jarvice_cuda_env"; fi
if [ "$SLURM_PROCID" != 0 ]; then exec /bin/bash "$JARVICE_PAYLOAD"; fi
verdict="$JARVICE_RC_FILE.marker"
rm -f "$verdict"
awk=awk  # mawk (Debian's) fills its input buffer before it reads a line; -W interactive stops that
case "$(awk -W version 2>&1)" in mawk*) awk="awk -W interactive" ;; esac
/bin/bash "$JARVICE_PAYLOAD" > >(exec $awk -v verdict="$verdict" @MARKER_FILTER@) 2>&1
rc=$?
filter=$!
for _ in $(seq 100); do kill -0 "$filter" 2>/dev/null || break; sleep 0.1; done
marker=$(cat "$verdict" 2>/dev/null)
rm -f "$verdict"
case "$marker" in 0|1) rc=$marker ;; esac
echo "$rc" > "$JARVICE_RC_FILE.$SLURMD_NODENAME" && mv -f "$JARVICE_RC_FILE.$SLURMD_NODENAME" "$JARVICE_RC_FILE"
exit "$rc"
""".replace("@MARKER_FILTER@", shlex.quote(MARKER_FILTER))


def wrap(filled: str, req: JobRequest, env: ScriptEnvironment) -> str:
    """The batch script Slurm runs: one srun task per node running the JARVICE script."""
    delimiter = f"JARVICE_SCRIPT_{secrets.token_hex(8)}"
    while delimiter in filled:  # pragma: no cover - 64 random bits
        delimiter = f"JARVICE_SCRIPT_{secrets.token_hex(8)}"
    q = shlex.quote
    body = filled if filled.endswith("\n") else filled + "\n"
    return (
        "#!/bin/bash\n"
        f"# slurm-downstream: JARVICE job {req.name} (number {req.number})\n"
        f"umask {'007' if env.users_write and env.job_group else '027' if env.job_group else '077'}\n"
        f"export JARVICE_SCRATCH={q(env.scratch_dir)}\n"
        f"export JARVICE_PAYLOAD={q(env.jobs_dir)}/\"$SLURM_JOB_ID.job.sh\"\n"
        f"export JARVICE_RC_FILE={q(env.jobs_dir)}/\"$SLURM_JOB_ID.rc\"\n"
        f"export JARVICE_GPU_JOB={1 if req.gpus else 0}\n"
        f"cat > \"$JARVICE_PAYLOAD\" <<'{delimiter}'\n"
        f"{body}"
        f"{delimiter}\n"
        'srun --kill-on-bad-exit=1 --export=ALL -N "$SLURM_NNODES" -n "$SLURM_NNODES" --ntasks-per-node=1 '
        f"/bin/bash -c {q(TASK_PROLOGUE)}\n"
        "srun_rc=$?\n"
        '[ -s "$JARVICE_RC_FILE" ] || echo "$srun_rc" > "$JARVICE_RC_FILE"\n'
        'rm -f "$JARVICE_PAYLOAD"\n'
        'exit "$(cat "$JARVICE_RC_FILE")"\n'
    )


def sbatch_args(req: JobRequest, env: ScriptEnvironment, port_index: int | None = None) -> tuple[str, ...]:
    args = [
        "--parsable",
        f"--job-name=jarvice_{req.name}",
        f"--comment={job_comment(req.number, port_index, env.instance)}",
        f"--output={env.jobs_dir}/%j.out",
        f"--chdir={env.scratch_dir}",
        f"--nodes={req.nodes}",
        f"--ntasks={req.cores * req.nodes}",
    ]
    if req.ram_gb:
        args.append(f"--mem={req.ram_gb}G")
    if req.gpus:
        args.append(f"--gpus-per-node={req.gpus}")
    if req.exclusive:
        args.append("--exclusive")
    if req.walltime:
        args.append(f"--time={req.walltime}")
    if req.partition:
        args.append(f"--partition={req.partition}")
    if req.licenses:
        args.append(f"--licenses={req.licenses}")
    args.extend(f"--{option}={value}" for option, value in req.options)
    if req.held:
        args.append("--hold")
    if len(shlex.join(args)) > MAX_SBATCH_ARGS:  # as SlurmClient.submit sends it
        raise InvalidRequest(f"the sbatch options (JOBOBJ_DEVICES sbatch_*) are longer than {MAX_SBATCH_ARGS} characters")
    return tuple(args)


def strip_secrets(script: str) -> str:
    return "".join(line for line in script.splitlines(keepends=True) if not _SECRET_LINE_RE.match(line))


def build(args: Mapping[str, object], executor: str, env: ScriptEnvironment,
          port_index: int | None = None) -> Submission:
    """Validate ``/submit`` args and render the job; raises InvalidRequest naming the problem.

    ``port_index``: an interactive job's slot; its service port is the site's plus this and its SSH
    port the site's minus this (the two ranges grow apart, so no job's SSH port is another's service
    port), written into its script and its Slurm comment (so a restarted daemon finds them).
    """
    if port_index is not None:
        env = replace(env, service_port=env.service_port + port_index, ssh_port=env.ssh_port - port_index)
    script = decode_script(args.get("hpc_script"), executor)
    values = job_values(fill_placeholder(script, ""))  # as the job will see them: {{ }} undoubled
    req = parse_request(args, values)
    filled = fill_placeholder(script, export_block(req, values, env))
    batch = wrap(filled, req, env)
    return Submission(request=req, sbatch_args=sbatch_args(req, env, port_index), batch_script=batch,
                      fscript=strip_secrets(batch))
