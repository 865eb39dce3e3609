"""The SSH adapter against the test cluster's real OpenSSH server."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest
import trio

from adapters.errors import AnswerLost, ClusterUnavailable, HostKeyRejected
from adapters.ssh import ShellEnded, SSHClient
from daemon.server import ssh_target
from tests.integration.conftest import settings, state


def target(**changes: object):
    return replace(ssh_target(settings()), **changes)


async def test_one_connection_carries_many_concurrent_commands() -> None:
    results = []
    async with SSHClient(target(), max_sessions=8) as ssh:

        async def one(i: int) -> None:
            results.append(await ssh.run(f"echo {i}; echo err{i} >&2; exit {i % 3}"))

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(one, i)
        assert ssh.connects == 1
    assert len(results) == 60
    assert sorted(int(r.stdout) for r in results) == list(range(60))
    assert all(r.exit_status == int(r.stdout) % 3 and r.stderr == f"err{r.stdout.strip()}\n" for r in results)


async def test_stdin_reaches_the_remote_command_intact() -> None:
    payload = "".join(f"line {i} with 'quotes' and $dollars and `ticks`\n" for i in range(5000))
    async with SSHClient(target()) as ssh:
        result = await ssh.run("cat", stdin=payload)
    assert result.stdout == payload


async def test_unknown_host_key_is_refused_with_a_clear_log_line(caplog: pytest.LogCaptureFixture) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    known_hosts = f"{settings().cluster_addr} {other[0]} {other[1]}\n"  # the login node's port 22
    with caplog.at_level(logging.ERROR):
        async with SSHClient(target(known_hosts=known_hosts)) as ssh:
            with pytest.raises(HostKeyRejected):
                await ssh.run("touch /tmp/should-not-exist")
    assert any("host key" in r.message and "JARVICE_SLURM_SSH_KNOWN_HOSTS" in r.message for r in caplog.records)


async def test_insecure_flag_skips_the_host_key_check() -> None:
    async with SSHClient(target(known_hosts=None, insecure_host_key=True)) as ssh:
        assert (await ssh.run("whoami")).stdout.strip() == "jarvice"


async def test_unreachable_cluster_fails_fast_and_backs_off() -> None:
    async with SSHClient(target(port=1), backoff_base=5.0, jitter=lambda: 0.0) as ssh:
        with pytest.raises(ClusterUnavailable):
            await ssh.run("true")
        with trio.fail_after(0.5):  # within the backoff: no new connection attempt, an immediate answer
            with pytest.raises(ClusterUnavailable, match="next attempt in"):
                await ssh.run("true")


async def test_a_cancelled_command_returns_at_once_and_the_link_stays_usable() -> None:
    async with SSHClient(target()) as ssh:
        with trio.move_on_after(0.5) as scope:
            await ssh.run("sleep 31.7")
        assert scope.cancelled_caught
        await trio.sleep(0.3)
        assert subprocess.run(["pgrep", "-f", "sleep 31.7"], capture_output=True).returncode == 1, "remote command survived"
        assert (await ssh.run("echo still-here")).stdout == "still-here\n"
        with pytest.raises(ClusterUnavailable, match="timed out"):
            await ssh.run("sleep 30", timeout=0.5)


END = "@@test-end@@"


async def test_a_kept_shell_runs_programs_one_after_another_in_one_session() -> None:
    payload = "".join(f"line {i} with 'quotes', $dollars, `ticks` and a \\backslash\n" for i in range(2000))
    async with SSHClient(target(), max_sessions=2) as ssh:
        shell = await ssh.open_shell()
        pids = [await shell.exchange(f"echo $$; echo oops >&2; echo '{END}'", end=END) for _ in range(3)]
        echoed = await shell.exchange(f"cat <<'X_EOF'\n{payload}X_EOF\necho '{END}'", end=END)
        commands = ssh.commands
        await shell.aclose()
        assert (await ssh.run("echo after")).stdout == "after\n"
    assert len(set(pids)) == 1 and pids[0].split("\n")[0].isdigit(), pids  # the same sh answered each time
    assert pids[0] == f"{pids[0].split()[0]}\noops\n"  # its stderr comes back in order, never blocks
    assert echoed == payload
    assert commands == 0  # no session opened per program


async def test_a_shell_killed_on_the_login_node_is_reported_unsent_and_frees_its_session() -> None:
    async with SSHClient(target(), max_sessions=1) as ssh:
        shell = await ssh.open_shell()
        pid = (await shell.exchange(f"echo $$; echo '{END}'", end=END)).strip()
        subprocess.run(["kill", "-KILL", pid], check=True)
        await trio.sleep(0.3)
        with pytest.raises(ShellEnded):  # nothing reached a shell: safe to run elsewhere (not AnswerLost)
            await shell.exchange(f"echo never; echo '{END}'", end=END)
        with trio.fail_after(5):  # its one session slot is free again
            assert (await ssh.run("echo next")).stdout == "next\n"
        assert ssh.connects == 1  # the connection itself never broke


async def test_a_shell_that_dies_mid_program_says_the_program_was_sent() -> None:
    async with SSHClient(target()) as ssh:
        shell = await ssh.open_shell()
        with pytest.raises(AnswerLost):  # it may have run: not a ShellEnded, which would be retried elsewhere
            await shell.exchange(f"echo started; kill -KILL $$; echo '{END}'", end=END)


async def test_a_program_past_its_timeout_is_killed_with_its_shell() -> None:
    async with SSHClient(target(), max_sessions=1) as ssh:
        shell = await ssh.open_shell()
        with pytest.raises(ClusterUnavailable, match="timed out"):
            await shell.exchange(f"sleep 31.3; echo '{END}'", end=END, timeout=0.5)
        await trio.sleep(0.3)
        assert subprocess.run(["pgrep", "-f", "sleep 31.3"], capture_output=True).returncode == 1, "remote program survived"
        with pytest.raises(ShellEnded):
            await shell.exchange(f"echo '{END}'", end=END)  # never used again
        with trio.fail_after(5):
            assert (await ssh.run("echo next")).stdout == "next\n"


async def test_an_open_shell_holds_a_session_slot_until_closed() -> None:
    async with SSHClient(target(), max_sessions=1) as ssh:
        shell = await ssh.open_shell()
        with trio.move_on_after(0.5) as waited:
            await ssh.run("true")
        assert waited.cancelled_caught  # MaxSessions is never exceeded: the command waits for the slot
        await shell.aclose()
        with trio.fail_after(5):
            await ssh.run("true")


async def test_with_no_host_key_given_the_first_one_is_pinned_and_then_required(tmp_path: Path) -> None:
    """Trust on first use: the JARVICE chart passes no known_hosts. The key seen first is written, and a
    login node showing another key later is refused as with any known_hosts file."""
    pin = tmp_path / ".ssh" / "known_hosts"
    async with SSHClient(target(known_hosts=str(pin), trust_on_first_use=True)) as ssh:
        assert (await ssh.run("whoami")).stdout.strip() == "jarvice"
    host_key = (state() / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[1]
    addr, port = settings().cluster_addr, settings().cluster_port
    where = addr if port == 22 else f"[{addr}]:{port}"  # OpenSSH's known_hosts forms
    assert pin.read_text() == f"{where} ssh-ed25519 {host_key}\n"
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    pin.write_text(f"{where} {other[0]} {other[1]}\n")
    async with SSHClient(target(known_hosts=str(pin), trust_on_first_use=True)) as ssh:
        with pytest.raises(HostKeyRejected):
            await ssh.run("true")
