"""What the login node can do for us, learnt in one SSH round trip.

Operators run ``slurm-downstream check`` on a cluster they do not control, often
through a jump host; one command keeps it fast and keeps the site's SSH budget.
The probe is a POSIX ``sh`` script sent on stdin (``sh -s``), so it works whatever
the service account's login shell is (csh sites exist), and every Slurm call in it
is bounded by ``timeout`` so a hung slurmdbd cannot hang the whole check.

This module only gathers and parses facts; judging them (what is an error, what
is a warning, what to do about it) is ``daemon/preflight.py``'s job.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from adapters.slurm import parsers
from adapters.ssh import CommandRunner

MARK = "@@slurm-downstream-probe@@"
STEP_TIMEOUT = 10  # seconds for one remote command inside the probe
PROBE_TIMEOUT = 90.0  # the whole round trip (every step may hit STEP_TIMEOUT)

# Each step prints "MARK <name> <exit status>" then its output. Steps are shell
# functions so the script stays one readable block; ``out=$(...)`` keeps a
# failing step from stopping the others.
_SCRIPT = r"""
M='{mark}'
scratch={scratch}
[ "$scratch" = '~' ] && scratch=$HOME
t() {{ if command -v timeout >/dev/null 2>&1; then timeout {step} "$@"; else "$@"; fi; }}
step() {{ name=$1; shift; out=$("$@" 2>&1); rc=$?; printf '%s %s %s\n%s\n' "$M" "$name" "$rc" "$out"; }}
whoami_() {{ id -un; printf '%s\n' "$HOME"; }}
sacct_() {{ t sacct -n -X -P -o JobID -S now -E now 2>&1 >/dev/null; }}
jobcomp_() {{ t sacct -c -n -X -P -o JobID -j 1 2>&1 >/dev/null; }}
squeue_() {{
  o=$(t squeue -h -t all -u "$(id -un)" -o %i 2>&1) || {{ r=$?; printf '%s\n' "$o"; return $r; }}
  printf '%s\n' "$o" | grep -c .; return 0
}}
singularity_() {{ command -v singularity || return 127; t singularity --version; }}
socat_() {{ command -v socat; }}
resize2fs_() {{ command -v resize2fs; }}
scratch_() {{
  printf '%s\n' "$scratch"
  [ -d "$scratch" ] || {{ echo missing; return 0; }}
  f=$(mktemp "$scratch/.slurm-downstream-probe.XXXXXX" 2>&1) || {{ echo "not-writable $f"; return 0; }}
  echo writable
  if ! command -v flock >/dev/null 2>&1; then echo 'flock missing'
  else
    # the lock must hold against a second process, not merely succeed
    r=$(flock -n "$f" sh -c 'flock -n "$1" true 2>/dev/null && echo shared || echo exclusive' sh "$f" 2>&1)
    echo "flock $r"
  fi
  rm -f "$f"
}}
step whoami whoami_
step version t sbatch --version
step config t scontrol show config
step squeue squeue_
step sacct sacct_
step jobcomp jobcomp_
step singularity singularity_
step socat socat_
step resize2fs resize2fs_
step scratch scratch_
printf '%s end 0\n' "$M"
"""


def probe_script(scratch_dir: str) -> str:
    """The probe, for a scratch dir that is an absolute path or ``~`` (the user's home)."""
    return _SCRIPT.format(mark=MARK, scratch=shlex.quote(scratch_dir), step=STEP_TIMEOUT)


@dataclass(frozen=True)
class Step:
    """One probe step: its exit status (124: timed out, 127: not found) and output."""

    rc: int
    output: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.output.splitlines() if line.strip()), "")


_MISSING = Step(rc=-1, output="(the probe printed nothing for this step)")


@dataclass(frozen=True)
class ScratchFacts:
    path: str
    exists: bool
    writable: bool
    error: str = ""  # why mktemp failed
    flock: str = ""  # "exclusive" (works), "shared" (does not exclude), "missing", or flock's error


@dataclass(frozen=True)
class ProbeFacts:
    """The login node's answers, parsed but not judged."""

    steps: dict[str, Step]
    complete: bool  # the probe ran to its end (not cut short)
    user: str = ""
    home: str = ""
    config: dict[str, str] = field(default_factory=dict)

    def step(self, name: str) -> Step:
        return self.steps.get(name, _MISSING)

    @property
    def slurm_version(self) -> str:
        """``22.05.8`` from ``slurm 22.05.8`` or Debian's ``slurm-wlm 22.05.8``; "" if unknown."""
        m = re.search(r"(\d+\.\d+\.\d+\S*)", self.step("version").output) if self.step("version").ok else None
        return m[1] if m else self.config.get("SLURM_VERSION", "")

    @property
    def select_type(self) -> str:
        return self.config.get("SelectType", "")

    @property
    def min_job_age(self) -> int | None:
        return parsers.min_job_age(self.config)

    @property
    def squeue_jobs(self) -> int | None:
        s = self.step("squeue")
        return int(s.first_line) if s.ok and s.first_line.isdigit() else None

    @property
    def accounting(self) -> str:
        """How finished jobs can be looked up: "sacct", "jobcomp" (``sacct -c``) or "none"."""
        if self.step("sacct").ok:
            return "sacct"
        if self.step("jobcomp").ok and self.config.get("JobCompType", "").endswith("filetxt"):
            return "jobcomp"
        return "none"

    @property
    def singularity(self) -> tuple[str, str, tuple[int, ...]] | None:
        """(path, flavour, version) of ``singularity`` on PATH; None when absent.

        The flavour is what ``--version`` calls itself: ``singularity``,
        ``singularity-ce`` or ``apptainer`` (Apptainer installs a ``singularity``
        link); the version is () when it could not be read.
        """
        s = self.step("singularity")
        lines = [line.strip() for line in s.output.splitlines() if line.strip()]
        if s.rc == 127 or not lines or not lines[0].startswith("/"):
            return None
        m = re.search(r"(singularity-ce|singularity|apptainer)\s+version\s+v?(\d+)\.(\d+)(?:\.(\d+))?", s.output)
        if not m:
            return (lines[0], "", ())
        return (lines[0], m[1], tuple(int(x or 0) for x in m.group(2, 3, 4)))

    @property
    def socat(self) -> str:
        s = self.step("socat")
        return s.first_line if s.ok else ""

    @property
    def resize2fs(self) -> str:
        """Where ``resize2fs`` is on the service user's PATH; "" when it is not (Debian keeps it in /usr/sbin)."""
        s = self.step("resize2fs")
        return s.first_line if s.ok else ""

    @property
    def scratch(self) -> ScratchFacts:
        lines = self.step("scratch").output.splitlines()
        path = lines[0] if lines else ""
        status = lines[1] if len(lines) > 1 else ""
        flock = lines[2] if len(lines) > 2 else ""
        if status == "missing" or not status:
            return ScratchFacts(path=path, exists=False, writable=False)
        if status.startswith("not-writable"):
            return ScratchFacts(path=path, exists=True, writable=False, error=status[len("not-writable"):].strip())
        return ScratchFacts(path=path, exists=True, writable=True, flock=flock.removeprefix("flock").strip())

def parse_probe(output: str) -> ProbeFacts:
    steps: dict[str, Step] = {}
    name, rc, lines = None, 0, []
    for line in output.splitlines():
        if line.startswith(MARK + " "):
            if name is not None:
                steps[name] = Step(rc, "\n".join(lines).strip("\n"))
            parts = line.split()
            name, rc, lines = parts[1], int(parts[2]) if len(parts) > 2 and parts[2].lstrip("-").isdigit() else -1, []
        elif name is not None:
            lines.append(line)
    if name is not None:
        steps[name] = Step(rc, "\n".join(lines).strip("\n"))
    complete = "end" in steps
    who = steps.get("whoami", _MISSING).output.splitlines()
    config = parsers.parse_config(steps["config"].output) if "config" in steps and steps["config"].ok else {}
    return ProbeFacts(
        steps=steps,
        complete=complete,
        user=who[0].strip() if who else "",
        home=who[1].strip() if len(who) > 1 else "",
        config=config,
    )


async def probe(runner: CommandRunner, scratch_dir: str, timeout: float = PROBE_TIMEOUT) -> ProbeFacts:
    """Run the probe once; raises what the runner raises when the node cannot be reached."""
    result = await runner.run("sh -s", stdin=probe_script(scratch_dir), timeout=timeout)
    return parse_probe(result.stdout)
