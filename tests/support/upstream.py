"""A stand-in for JARVICE upstream: builds ``/submit`` arguments the way upstream does.

Used by the integration tests, the demo and the benchmarks. ``job_script`` renders a
script in the shape of JARVICE's own (``upstream-api.md``, *What JARVICE's
own scripts and apps rely on*): the ``JOBOBJ_*`` lines, the ``{DOWNSTREAM_PARAMETERS}``
placeholder, literal braces doubled for upstream's ``str.format``, a per-job tree under
``${JARVICE_JOB_SCRATCH_DIR}.jarvice/jobs/$JOB_JOBID``, a ``flock``-guarded image pull into
a shared cache, ``singularity exec`` with an overlay image or a writable tmpfs, then the
marker chain that exits 0 whether the app succeeded or not. Real Singularity cannot run
on the test clusters; ``tests/cluster/singularity`` stands in for it on the nodes.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass

import httpx

# What every task runs before the app, after the downstream's exports. It sources nothing:
# the downstream's wrapper has sourced the site's .jarvice_custom_env (and for GPU jobs
# .jarvice_cuda_env) before the script starts, as the contract says. JARVICE's
# script writes its per-job tree right after the scratch dir's name, which therefore
# must end with "/"; without it the tree lands next to the scratch dir, where this
# mkdir fails (as the job's user) and the job fails before any marker.
# The image is pulled once into a cache shared by all jobs and nodes, under flock(1)
# (the Helm docs require a filer that supports it). An overlay image is created per
# task when JARVICE_SINGULARITY_OVERLAY_SIZE (MB) is above 0: a small ext3 image grown
# with resize2fs (which the Helm docs require on the SSH user's PATH), otherwise
# Singularity gets a writable tmpfs. GPU jobs get --nv.
CONTAINER_SETUP = """\
jobdir=${{JARVICE_JOB_SCRATCH_DIR}}.jarvice/jobs/$JOB_JOBID
cache=${{JARVICE_JOB_SCRATCH_DIR}}.jarvice/cache
mkdir -p "$jobdir/init/opt/JARVICE" "$cache" || exit 1
singularity $SV_FLAG build --force "$jobdir/init/init.$PROCESS_PROCID.sif" "$JARVICE_INIT_IMAGE" || exit 1
sif="$cache/$(printf '%s' "$JARVICE_APP_IMAGE" | sha256sum | cut -c1-32).sif"
(
  flock -w 600 9 || exit 1
  [ -s "$sif" ] || {{ singularity $SV_FLAG pull --force "$sif.part" "$JARVICE_APP_IMAGE" && mv -f "$sif.part" "$sif"; }}
) 9>"$sif.lock" || exit 1
opts=(-B "$jobdir:/opt/JARVICE/job")
if [ "${{JARVICE_SINGULARITY_OVERLAY_SIZE:-0}}" -gt 0 ]; then
  overlay="$jobdir/overlay.$PROCESS_PROCID.img"
  truncate -s 32M "$overlay" && /sbin/mkfs.ext3 -q -F -i 1048576 "$overlay" \\
    && resize2fs "$overlay" "${{JARVICE_SINGULARITY_OVERLAY_SIZE}}M" >/dev/null 2>&1 || exit 1
  opts+=(--overlay "$overlay")
else
  opts+=(--writable-tmpfs)
fi
if [ "${{JOBOBJ_GPUS:-0}}" -gt 0 ]; then opts+=(--nv); fi
"""

# Tasks other than 0 (one per extra node) run this in the container and exit: in
# JARVICE they serve SSH for the app on task 0, which these test apps do not need.
WORKER = "true"


def job_script(body: str, *, cores: int = 1, interactive: bool = False, devices: list[str] | None = None,
               gpus: int = 0, ram: int = 0, walltime: str = "", appdefversion: int = 2,
               extra: str = "", worker: str = WORKER, marker: bool = True, plain: bool = False) -> str:
    """The script upstream would send; ``body`` is the app's command line (bash, braces doubled).

    Task 0 runs ``body`` in the container (``singularity exec ... /bin/bash -c body``) and
    then, unless ``marker`` is False, prints ``JARVICE_CMD_SUCCESS`` or ``JARVICE_CMD_FAILURE``
    from a chain that exits 0 either way, as JARVICE's scripts do: the marker, not the exit
    code, says whether the app succeeded. Without the marker the app's exit code is the
    script's. The other tasks run ``worker`` in the container. ``plain`` puts ``body`` right
    after the placeholder with no container at all, for unit tests of the daemon's wrapper
    that run it without Slurm. ``extra`` lines go before the placeholder.
    """
    lines = [
        "#!/bin/bash",
        f"JOBOBJ_INTERACTIVE={'True' if interactive else 'False'}",
        f"JOBOBJ_APPDEFVERSION={appdefversion}",
        "JOBOBJ_ARCH=amd64",
        "JOBOBJ_NAE=jarvice-demo",
        "JOBOBJ_REPO=docker.io/library/ubuntu:22.04",
        "JOBOBJ_USER=alice",
        f"JOBOBJ_DEVICES={json.dumps(devices if devices is not None else ['exclusive=False'])}",
        f"JOBOBJ_GPUS={gpus}",
        f"JOBOBJ_RAM={ram}",
        f"JOBOBJ_WALLTIME={walltime}",
        f"JARVICE_CPU_CORES={cores}",
        "JARVICE_CMD=/bin/true",
        extra,
        "{DOWNSTREAM_PARAMETERS}",
    ]
    if plain:
        return "\n".join([*lines, body]) + "\n"
    run = 'singularity $SV_FLAG exec "${{opts[@]}}" "$sif" /bin/bash -c'
    app = f"{run} {shlex.quote(body)}"
    if marker:
        app += " && /bin/echo JARVICE_CMD_SUCCESS || /bin/echo JARVICE_CMD_FAILURE"
    return "\n".join([
        *lines,
        CONTAINER_SETUP,
        'if [ "$PROCESS_PROCID" = 0 ]; then',
        f"  {app}",
        "else",
        f"  {run} {shlex.quote(worker)}",
        "fi",
    ]) + "\n"


PLACEHOLDER_BEARER = "upstream-bearer-token"  # stands for the user's JWT; Upstream(bearer=...) puts a real one


def ids(name: str, number: int, jobid: str) -> dict:
    """The ``args`` of a job-scoped call (/exitstatus, /runstatus, /terminate ...)."""
    return {"name": name, "number": number, "jobid": jobid}


def submit_args(name: str, number: int, body: str, *, nodes: int = 1, held: bool = False,
                executor: str = "singularity", **script: object) -> dict:
    encoded = base64.b64encode(job_script(body, **script).encode()).decode()  # type: ignore[arg-type]
    args = {"name": name, "number": number, "nodes": nodes, "hpc_script": {executor: encoded},
            "bearer": PLACEHOLDER_BEARER}
    if held:
        args["held"] = True
    return args


@dataclass
class Upstream:
    """Speaks the legacy API: every POST carries one form field, ``args``, holding JSON."""

    client: httpx.AsyncClient
    # the user's JWT upstream sends with each /submit (JARVICE's identity provider; with slurmrestd the job
    # runs as its user); None keeps what the args carry
    bearer: str | None = None

    async def post(self, path: str, args: dict) -> httpx.Response:
        if path == "/submit" and self.bearer is not None and args.get("bearer") == PLACEHOLDER_BEARER:
            args = {**args, "bearer": self.bearer}
        return await self.client.post(path, data={"args": json.dumps(args)})

    async def call(self, path: str, args: dict | None = None) -> object:
        response = await (self.post(path, args) if args is not None else self.client.get(path))
        response.raise_for_status()
        return response.json()
