"""``slurm-downstream``: serve, check, proxy (later) and --help."""

from __future__ import annotations

import argparse
import sys

import trio

from config.settings import ConfigError, Settings, configure_logging, load

EXIT_CONFIG = 2


def _settings() -> Settings:
    try:
        return load()
    except ConfigError as exc:
        print(f"slurm-downstream: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from daemon.server import serve

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        trio.run(serve, settings, args.host, args.port)
    except ConfigError as exc:
        print(f"slurm-downstream: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from adapters.journal import Journal
    from daemon.report import init_report
    from daemon.server import build_downstream, connectivity_test, describe_key, open_ssh

    settings = _settings()
    configure_logging(settings.log_level)
    try:
        key = describe_key(settings)
    except ConfigError as exc:
        print(f"slurm-downstream: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for line in init_report(settings, key):
        print(line)

    async def check() -> bool:
        async with open_ssh(settings) as ssh:
            downstream = build_downstream(settings, ssh, Journal(":memory:"))
            if not await connectivity_test(downstream):
                return False
            info = downstream.cluster
            assert info is not None
            slurm = downstream.slurm
            checks = [
                ("ssh", f"{settings.ssh_user}@{settings.cluster_addr}:{settings.cluster_port}, host key "
                        f"{'NOT verified' if settings.ssh_insecure_host_key else 'verified'}", True),
                ("slurm", info.version, bool(info.version)),
                ("scratch", f"{slurm.jobs_dir} exists and is writable", True),
                ("MinJobAge", f"{info.min_job_age}s: finished jobs stay in squeue that long", True),
                ("finished-job lookup", {"sacct": "sacct (slurmdbd)", "jobcomp": "sacct -c (jobcomp/filetxt)",
                                         "none": "exit-code files only (no accounting, no jobcomp)"}[slurm.accounting],
                 True),
            ]
            try:
                poll = await slurm.poll()
                checks.append(("squeue", f"{len(poll.jobs)} JARVICE job(s) visible", True))
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                checks.append(("squeue", str(exc), False))
            for name, detail, ok in checks:
                print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")
            return all(ok for _, _, ok in checks)

    return 0 if trio.run(check) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slurm-downstream",
        description="Run JARVICE jobs on a Slurm cluster: the upstream HTTP API over SSH to a login node. "
                    "Configuration comes from JARVICE_* environment variables (see README).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon (upstream API, Slurm poller)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.set_defaults(func=_cmd_serve)
    check = sub.add_parser("check", help="connect, print the init report and preflight checks; exit 1 on failure")
    check.set_defaults(func=_cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
