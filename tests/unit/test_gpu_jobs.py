"""GPU jobs, which the test cluster cannot run (it has no GPUs): the site's CUDA environment reaches the app.

A JARVICE-shaped script (``tests/support/upstream.py``) runs through the daemon's real wrapper,
with stand-ins for srun and scontrol (``cluster`` fixture) and the test cluster's singularity
stand-in (``tests/cluster/singularity``), which logs its arguments and maps
``SINGULARITYENV_X`` to ``X`` inside the "container" as Singularity does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapters.jobscript import ScriptEnvironment, build
from tests.support.upstream import submit_args

STANDIN = Path(__file__).resolve().parents[1] / "cluster" / "singularity"


@pytest.mark.parametrize("gpus", [0, 1])
def test_gpu_jobs_get_the_cuda_env_and_nv_cpu_jobs_neither(cluster, gpus: int) -> None:
    shutil.copy(STANDIN, cluster.tmp / "bin" / "singularity")
    (cluster.scratch / ".jarvice_cuda_env").write_text("export SINGULARITYENV_CUDA_MARK=cuda-on\n")
    env = ScriptEnvironment(scratch_dir=str(cluster.scratch))
    args = submit_args("20261204-gpu-alice_cuda", 7, 'echo "cuda=$CUDA_MARK"', gpus=gpus,
                       devices=["overlay=0"])  # no overlay image: resize2fs is not on this PATH
    proc = cluster(build(args, "singularity", env), SLURM_GPUS_PER_NODE=str(gpus))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("cuda=cuda-on\n" if gpus else "cuda=\n") in proc.stdout
    assert "JARVICE_CMD_SUCCESS" in proc.stdout
    [app] = [line for line in (cluster.tmp / ".singularity-standin.log").read_text().splitlines() if " exec " in line]
    assert (" --nv " in app) == bool(gpus)
    assert " --writable-tmpfs " in app
