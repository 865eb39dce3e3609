"""A batch script run with the real bash and stand-ins for ``srun`` and ``scontrol``.

The stand-in srun runs the task command once per node, one after the other, with the
variables Slurm sets (SLURM_PROCID, SLURMD_NODENAME, ...), so the wrapper's shell is
exercised as Slurm would run it, without a cluster (the integration tests have one).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from adapters.jobscript import Submission

FAKE_SRUN = r"""#!/bin/bash
# stand-in for srun: record the arguments, then run the command once per node as Slurm would
printf '%s\n' "$@" > "$FAKE_LOG/srun.args"
if [ -n "$FAKE_SRUN_FAIL" ]; then echo "srun: error: fake failure" >&2; exit "$FAKE_SRUN_FAIL"; fi
while [ $# -gt 0 ] && [ "$1" != /bin/bash ]; do shift; done
worst=0
for ((i = 0; i < SLURM_NNODES; i++)); do
  SLURM_PROCID=$i SLURMD_NODENAME=node$((i + 1)) SLURM_NTASKS=$SLURM_NNODES "$@"
  rc=$?
  [ "$rc" -gt "$worst" ] && worst=$rc
done
exit "$worst"
"""

FAKE_SCONTROL = r"""#!/bin/bash
# stand-in for 'scontrol show hostnames LIST'
[ "$1 $2" = "show hostnames" ] || exit 1
case "$3" in
  "node[1-2]") printf 'node1\nnode2\n' ;;
  *) printf '%s\n' "$3" ;;
esac
"""


def fake_cluster(tmp_path: Path):  # noqa: ANN201 - a function with two attributes
    """A scratch dir and a PATH with fake srun and scontrol; returns a function running a submission."""
    scratch = tmp_path / "scratch"
    (scratch / ".jarvice").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)

    def run(sub: Submission, nnodes: int = 1, **extra_env: str) -> subprocess.CompletedProcess:
        script = tmp_path / "batch.sh"
        script.write_text(sub.batch_script)
        environ = {
            "PATH": f"{bindir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "USER": "jarvice",
            "LANG": "C",
            "SLURM_JOB_ID": "4242",
            "SLURM_NNODES": str(nnodes),
            "SLURM_JOB_NODELIST": "node[1-2]" if nnodes == 2 else "node1",
            "SLURM_SUBMIT_DIR": str(scratch),
            "FAKE_LOG": str(tmp_path),
            **extra_env,
        }
        # Output to files, as Slurm writes it; what the script left running is killed when it ends, as
        # slurmstepd kills what is left of a step (a pipe would wait for every holder of its write end).
        out, err = tmp_path / "job.out", tmp_path / "job.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(["/bin/bash", str(script)], cwd=scratch, env=environ, stdout=stdout,
                                    stderr=stderr, start_new_session=True)
            try:
                rc = proc.wait(timeout=30)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(proc.args, rc, out.read_text(), err.read_text())

    run.scratch = scratch  # type: ignore[attr-defined]
    run.tmp = tmp_path  # type: ignore[attr-defined]
    return run
