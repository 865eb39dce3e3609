"""A stand-in for JARVICE upstream: builds ``/submit`` arguments the way upstream does.

Used by the integration tests and the demo. The script body is plain bash (no
Singularity here); like upstream's, it doubles literal braces for ``str.format``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import httpx


def job_script(body: str, *, cores: int = 1, interactive: bool = False, devices: list[str] | None = None,
               gpus: int = 0, ram: int = 0, walltime: str = "", appdefversion: int = 2,
               extra: str = "") -> str:
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
        body,
    ]
    return "\n".join(lines) + "\n"


def submit_args(name: str, number: int, body: str, *, nodes: int = 1, held: bool = False,
                executor: str = "singularity", **script: object) -> dict:
    encoded = base64.b64encode(job_script(body, **script).encode()).decode()  # type: ignore[arg-type]
    args = {"name": name, "number": number, "nodes": nodes, "hpc_script": {executor: encoded},
            "bearer": "upstream-bearer-token"}
    if held:
        args["held"] = True
    return args


@dataclass
class Upstream:
    """Speaks the legacy API: every POST carries one form field, ``args``, holding JSON."""

    client: httpx.AsyncClient

    async def post(self, path: str, args: dict) -> httpx.Response:
        return await self.client.post(path, data={"args": json.dumps(args)})

    async def call(self, path: str, args: dict | None = None) -> object:
        response = await (self.post(path, args) if args is not None else self.client.get(path))
        response.raise_for_status()
        return response.json()
