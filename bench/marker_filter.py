"""What JARVICE's success marker costs a chatty job: task 0's output through the marker filter.

Task 0's output passes an awk filter (adapters/jobscript.py, MARKER_FILTER) on its way to
Slurm's output file, flushed line by line so ``tail`` stays live. This runs the rendered
batch script with the real bash and the same stand-in srun as the unit tests, once with
an app printing MiB of 100-byte lines through the filter, and compares with the same
output written straight to a file (what a task without the filter would do).
"""

from __future__ import annotations

import base64
import subprocess
import tempfile
import time
from pathlib import Path

from adapters.jobscript import ScriptEnvironment, build
from bench.stats import show
from tests.support.fake_slurm import fake_cluster

SCRIPT = "#!/bin/bash\nJOBOBJ_APPDEFVERSION=2\nJARVICE_CPU_CORES=1\n{DOWNSTREAM_PARAMETERS}\n"
APP = "head -c {mib}M /dev/zero | tr '\\0' a | fold -w 99 && /bin/echo JARVICE_CMD_SUCCESS || /bin/echo JARVICE_CMD_FAILURE\n"


def run(mib: int = 64) -> dict:
    app = APP.format(mib=mib)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = fake_cluster(Path(tmp))
        encoded = base64.b64encode((SCRIPT + app).encode()).decode()
        submission = build({"name": "bench-marker", "number": 1, "nodes": 1, "hpc_script": {"singularity": encoded}},
                           "singularity", ScriptEnvironment(scratch_dir=str(cluster.scratch)))
        started = time.perf_counter()
        job = cluster(submission)
        filtered = time.perf_counter() - started
        started = time.perf_counter()
        with (Path(tmp) / "plain.out").open("wb") as out:
            subprocess.run(["/bin/bash", "-c", app], stdout=out, check=True)
        plain = time.perf_counter() - started
    result = {"mib": mib, "exit_code": job.returncode, "filtered_s": round(filtered, 3), "plain_s": round(plain, 3),
              "filtered_mib_s": round(mib / filtered, 1), "plain_mib_s": round(mib / plain, 1)}
    show("task 0's output through the marker filter", ["path", "MiB", "seconds", "MiB/s"], [
        [f"through the filter (job exit code {job.returncode})", mib, f"{filtered:.2f}", f"{mib / filtered:.1f}"],
        ["straight to a file", mib, f"{plain:.2f}", f"{mib / plain:.1f}"],
    ], notes=["100-byte lines; the filter flushes each line so the job's output stays live for tail"])
    return result


if __name__ == "__main__":
    run()
