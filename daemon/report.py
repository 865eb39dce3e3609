"""The start-up report, in the seed document's layout, so operators find what they know.

Secrets are never printed: the key shows as its type and fingerprint, the server
key as its user name only.
"""

from __future__ import annotations

import re

from config.settings import Settings

# ``//user:password@``: the password runs to the ``@``, since people write ``/`` and ``:``
# in them unescaped, and masking too much of an odd URL is better than showing any of one.
_URL_PASSWORD = re.compile(r"(//[^/:@\s]*):([^@\s]*)@")


def redact(url: str) -> str:
    """``http://user:secret@proxy:3128`` -> ``http://user:***@proxy:3128``."""
    return _URL_PASSWORD.sub(r"\1:***@", url)


def url_password(url: str) -> str | None:
    """The password a proxy URL carries, as ``redact`` masks it (for the log's redaction filter)."""
    match = _URL_PASSWORD.search(url)
    return match[2] if match and match[2] else None


def init_report(settings: Settings, key_description: str) -> list[str]:
    s = settings
    host_key = "NOT VERIFIED (JARVICE_SLURM_SSH_INSECURE_HOST_KEY=true)" if s.ssh_insecure_host_key else (
        f"trusted on first use, then pinned in {s.ssh_known_hosts}" if s.ssh_trust_on_first_use else
        "verified against " + ("inline known_hosts" if s.ssh_known_hosts and "\n" in s.ssh_known_hosts
                               else (s.ssh_known_hosts or "an empty known_hosts: every key will be refused"))
    )
    ssh = [
        "|-- SSH connection to target cluster:",
        f"|     host: {s.cluster_addr}",
        f"|     port: {s.cluster_port}",
        f"|     user: {s.ssh_user}",
        f"|     key: {key_description}",
        f"|     host key: {host_key}",
        f"|     max sessions: {s.ssh_max_sessions}, keepalive: {s.ssh_keepalive:g}s",
    ] if s.has_ssh else [
        "|-- SSH connection to target cluster: not configured (no job output, no interactive jobs)",
    ]
    rest = [
        "|-- Slurm client: slurmrestd_client",
        f"|     url: {redact(s.rest.url)}",
        f"|     data parser: {s.rest.parser}{' (the newest both sides know)' if s.rest.parser == 'auto' else ''}",
        f"|     service token: {s.rest.token_source}",
        f"|     user name claim: {s.rest.username_claim}",
    ] if s.rest is not None else ["|-- Slurm client: ssh_client"]
    return [
        "",
        "+----- Slurm Scheduler init report -----+",
        *rest,
        *ssh,
        "|-- Script environment:",
        f"|     scratch dir: {s.scratch_dir}",
        f"|     http_proxy: {redact(s.http_proxy)}",
        f"|     https_proxy: {redact(s.https_proxy)}",
        f"|     no_proxy: {s.no_proxy}",
        "|-- Singularity environment:",
        f"|     tmp work dir: {s.singularity_tmpdir}",
        f"|     verbose mode: {str(s.singularity_verbose).lower()}",
        f"|     overlay size: {s.overlay_size}",
        "|-- Downstream:",
        f"|     poll interval: {s.poll_interval:g}s",
        f"|     jobs domain: {s.jobs_domain}",
        f"|     upstream auth: {'HTTP Basic, user ' + str(s.server_user) if s.server_key else 'DISABLED'}",
        "+---------------------------------------+",
        "",
    ]
