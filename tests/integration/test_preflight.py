"""Preflight against the real test cluster, over the real SSH connection the daemon uses.

The checks must agree with what Slurm itself says (``scontrol show config`` run on
the host), and the failures an operator meets must be reported for real: a
scratch dir the service user cannot write, one that does not exist, overlay size
0 with a Singularity too old to run without an overlay, and a poll interval too
long for the cluster's MinJobAge. The test cluster's ``singularity`` is the stand-in
``tests/cluster/singularity`` (SingularityCE cannot be installed here); its version
is what it says it is, and a private sshd makes it say an old one.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
import trio

from adapters.slurm.parsers import parse_config
from daemon.preflight import Check, exit_code, format_checks, run_preflight
from daemon.server import open_ssh
from tests.integration.conftest import settings, slurm
from tests.support.cluster import current
from tests.support.processes import PrivateSSHD

pytestmark = pytest.mark.cluster


async def preflight(poll_interval: float | None = None, **env: str) -> dict[str, Check]:
    conf = settings(**env)
    async with open_ssh(conf) as ssh:
        checks = await run_preflight(ssh, conf, poll_interval)
    print("\n".join(format_checks(checks)))
    return {c.name: c for c in checks}


def login_which(command: str) -> str:
    """Where ``command`` is on the login node's PATH ("" if nowhere)."""
    return slurm("sh", "-c", f"command -v {command}").stdout.strip()


def cluster_config() -> dict[str, str]:
    return parse_config(slurm("scontrol", "show", "config").stdout)


async def test_the_test_cluster_as_slurm_itself_describes_it() -> None:
    config = cluster_config()
    started = trio.current_time()
    checks = await preflight(poll_interval=0.5)
    took = trio.current_time() - started
    print(f"preflight took {took:.3f}s (connect + one round trip)")
    version = re.search(r"\d+\.\d+\.\d+", slurm("sbatch", "--version").stdout)[0]
    assert checks["slurm version"] == Check("slurm version", "ok", f"slurm {version}")
    assert version.startswith(current().version + ".")  # the cluster runs the version it was brought up with
    assert checks["tested range"] == Check("tested range", "ok", f"slurm {current().version} is tested (22.05, 24.11, 26.05)")
    assert checks["ssh"].level == "ok" and "host key verified" in checks["ssh"].detail
    # The seed requires cons_tres; the test cluster is configured with it.
    assert config["SelectType"] == "select/cons_tres"
    assert checks["select type"] == Check("select type", "ok", "select/cons_tres")
    age = int(config["MinJobAge"].split()[0])
    assert checks["MinJobAge"].level == "ok" and checks["MinJobAge"].detail.startswith(f"{age}s")
    if current().accounting == "slurmdbd":  # tests/cluster/up on 24.11, 26.05
        assert config["AccountingStorageType"] == "accounting_storage/slurmdbd"
        assert checks["accounting"].detail == "sacct works (slurmdbd)"
    else:  # 22.05: jobcomp/filetxt only
        assert config["AccountingStorageType"] == "accounting_storage/none"
        assert checks["accounting"].detail == "sacct -c works (jobcomp/filetxt)"
    assert checks["squeue"].level == "ok"
    assert checks["scratch dir"].level == "ok" and checks["flock"].level == "ok"
    assert checks["socat"] == Check("socat", "ok", shutil.which("socat"))
    assert login_which("singularity") == "/usr/local/bin/singularity"  # tests/cluster/up installs the stand-in
    assert checks["singularity"] == Check("singularity", "ok", "singularity-ce 4.1.0 (/usr/local/bin/singularity)")
    # tests/cluster/up puts Debian's /usr/sbin/resize2fs on the user's PATH, as the Helm docs ask
    assert checks["resize2fs"] == Check("resize2fs", "ok", "/usr/local/bin/resize2fs (overlay images of 640 MiB)")
    assert exit_code(list(checks.values())) == 0


async def test_scratch_dir_the_service_user_cannot_write_is_an_error() -> None:
    with current().workdir("preflight-readonly-") as readonly:  # the login node's view; root's, mode 0755
        checks = await preflight(JARVICE_SLURM_SCRATCH_DIR=str(readonly))
        assert checks["scratch dir"].level == "error"
        assert checks["scratch dir"].detail.startswith(f"{readonly} is not writable by jarvice: mktemp")
        assert "Permission denied" in checks["scratch dir"].detail
        assert "flock" not in checks
        assert exit_code(list(checks.values())) == 1
        assert os.listdir(readonly) == []  # nothing left behind


async def test_missing_scratch_dir_is_an_error() -> None:
    checks = await preflight(JARVICE_SLURM_SCRATCH_DIR="/tmp/preflight-no-such-dir/scratch")
    assert checks["scratch dir"].level == "error"
    assert checks["scratch dir"].detail.startswith("/tmp/preflight-no-such-dir/scratch does not exist")


async def test_probe_leaves_no_file_in_the_scratch_dir() -> None:
    scratch = settings().scratch_dir
    before = {f for f in os.listdir(scratch) if f.startswith(".slurm-downstream-probe")}
    await preflight()
    after = {f for f in os.listdir(scratch) if f.startswith(".slurm-downstream-probe")}
    assert after <= before


async def test_overlay_size_zero_needs_a_recent_singularity() -> None:
    checks = await preflight(JARVICE_SLURM_OVERLAY_SIZE="0")
    assert checks["singularity"] == Check(
        "singularity", "ok", "singularity-ce 4.1.0 (/usr/local/bin/singularity), runs without an overlay")
    with current().workdir("preflight-old-singularity-") as wrappers:  # the login node runs what is in it
        old = wrappers / "singularity"
        old.write_text("#!/bin/bash\nSINGULARITY_STANDIN_VERSION=3.9.0 exec /usr/local/bin/singularity \"$@\"\n")
        old.chmod(0o755)
        sshd = PrivateSSHD(current().state, wrappers / "sshd", path_prefix=wrappers)
        await sshd.start()
        try:
            checks = await preflight(JARVICE_SLURM_OVERLAY_SIZE="0", **sshd.env())
        finally:
            sshd.stop()
    assert checks["singularity"].level == "error"
    assert checks["singularity"].detail.startswith(f"singularity-ce 3.9.0 ({old})")
    assert "JARVICE_SLURM_OVERLAY_SIZE=0 needs SingularityCE >= 3.11.3" in checks["singularity"].detail
    assert exit_code(list(checks.values())) == 1


async def test_poll_interval_too_long_for_min_job_age_warns() -> None:
    age = int(cluster_config()["MinJobAge"].split()[0])
    checks = await preflight(poll_interval=age / 2)
    assert checks["MinJobAge"].level == "warning"
    assert checks["MinJobAge"].detail.startswith(f"{age}s < 3 x poll interval {age / 2:.3g}s")
    assert "JARVICE_SLURM_POLL_INTERVAL" in checks["MinJobAge"].hint
    assert exit_code(list(checks.values())) == 0  # a warning: the daemon copes (rc files, jobcomp)
    assert (await preflight(poll_interval=age / 3))["MinJobAge"].level == "ok"


async def test_unreachable_login_node_is_one_ssh_error() -> None:
    checks = await preflight(JARVICE_SLURM_CLUSTER_PORT="1")
    assert list(checks) == ["ssh"]
    assert checks["ssh"].level == "error" and f"{current().host}:1" in checks["ssh"].detail
