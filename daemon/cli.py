"""``slurm-downstream``: serve, check, proxy and --help."""

from __future__ import annotations

import argparse
import os
import sys

import trio

from config.settings import ConfigError, Settings, load
from daemon import proxy_cmd
from daemon.logs import configure_logging, register_secrets

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
    configure_logging(settings.log_level, settings.log_format)
    register_secrets(settings)
    try:
        trio.run(serve, settings, args.host, args.port)
    except ConfigError as exc:
        print(f"slurm-downstream: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BaseExceptionGroup as group:
        # what only the running daemon can find (the proxy pods' host key after trust on first use,
        # no Kubernetes configuration): raised inside its nursery, still one line and exit 2
        config, rest = group.split(ConfigError)
        if config is None or rest is not None:
            raise
        print(f"slurm-downstream: configuration error: {_first(config)}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
    return 0


def _first(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _cmd_check(args: argparse.Namespace) -> int:
    from daemon.preflight import exit_code, format_checks, run_preflight
    from daemon.preflight_proxy import proxy_key_checks
    from daemon.report import init_report
    from daemon.server import describe_key, open_kube, open_ssh

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    register_secrets(settings)
    try:
        key = describe_key(settings.ssh_pkey)
    except ConfigError as exc:
        print(f"slurm-downstream: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for line in init_report(settings, key):
        print(line)

    async def check() -> list:
        kube = await open_kube(settings)
        try:
            async with open_ssh(settings) as ssh:
                return await run_preflight(ssh, settings) + await proxy_key_checks(ssh, settings, kube)
        finally:
            if kube is not None:
                kube.close()

    try:
        checks = trio.run(check)
    except ConfigError as exc:  # e.g. Kubernetes mode and no API to ask
        print(f"slurm-downstream: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for line in format_checks(checks):
        print(line)
    return exit_code(checks)


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
    proxy = sub.add_parser("proxy", help="one interactive job's proxy on its own (what Kubernetes proxy pods run)")
    proxy_cmd.add_arguments(proxy)
    proxy.set_defaults(func=lambda a: proxy_cmd.main(a, os.environ))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
