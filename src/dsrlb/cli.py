"""The `dsrlb` command: one entry point, each subcommand implemented in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from dsrlb import release
from dsrlb.vocabulary import DEFAULT_CONTROL, RELOAD, SHOW, SHOW_VIEWS, TARGET, TARGET_ACTIONS


def _check(args: argparse.Namespace) -> int:
    from dsrlb.config.parser import ConfigError, parse_file, render

    status = 0
    for path in args.files:
        try:
            config = parse_file(path)
        except ConfigError as err:
            print(err, file=sys.stderr)
            status = 1
            continue
        for warning in config.warnings:
            print(warning, file=sys.stderr)
        if args.strict and config.warnings:
            status = 1
        elif args.canonical:
            print(render(config), end="")
        elif not args.quiet:
            count = len(config.warnings)
            print(f"{path}: ok" + (f" ({count} warning{'s' * (count > 1)})" if count else ""))
    return status


def _run(args: argparse.Namespace) -> int:
    from dsrlb.daemon import run

    return run(args.config, control=args.socket)


def _client(args: argparse.Namespace) -> int:
    from dsrlb import control

    return control.cli(args)


def _resign(args: argparse.Namespace) -> int:
    from dsrlb import resign

    return resign.main(args.socket or DEFAULT_CONTROL)


TOOLS_HINT = "pip install ./tools from a dsrlb checkout (the dsrlb-tools package)"


def _tool(module: str, verb: str) -> Callable[[list[str]], int]:
    """A subcommand that lives in dsrlb-tools, which balancers do not install: say how to get it."""

    def run(argv: list[str]) -> int:
        try:
            main = importlib.import_module(module).main
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith("dsrlb_tools"):
                raise
            print(f"dsrlb {verb}: not installed here: {TOOLS_HINT}", file=sys.stderr)
            return 1
        return main(argv)

    return run


# Subcommands with their own argument parsers: everything after the name is theirs.
DELEGATED = {
    verb: _tool(f"dsrlb_tools.{module}", verb)
    for verb, module in (("lab", "lab.cli"), ("bench", "bench"), ("deploy", "deploy"))
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsrlb", description="Direct Server Return load balancer")
    parser.add_argument("--version", action="version", version=release.describe())
    parser.add_argument(
        "-s",
        "--socket",
        help=f"control socket; overrides `set control` for run (default: {DEFAULT_CONTROL})",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate config files")
    p.add_argument("files", nargs="+")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    p.add_argument("--canonical", action="store_true", help="print the config in canonical form")
    p.add_argument("--strict", action="store_true", help="warnings fail the check too (exit status 1)")
    p.set_defaults(func=_check)

    p = sub.add_parser("run", help="run the balancer in the foreground")
    p.add_argument("-c", "--config", default="/etc/dsrlb/dsrlb.conf")
    p.set_defaults(func=_run)

    p = sub.add_parser(SHOW, help="show state of a running daemon")
    p.add_argument("what", choices=SHOW_VIEWS)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--limit", type=int, metavar="N", help="sessions: the first N (default 1000, at most 2000)"
    )
    p.add_argument("--client", metavar="ADDRESS", help="sessions: only this client's")
    p.set_defaults(func=_client)

    p = sub.add_parser(TARGET, help="change a target of a running daemon")
    p.add_argument("action", choices=TARGET_ACTIONS)
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_client, what=TARGET)

    p = sub.add_parser(RELOAD, help="reload the config of a running daemon")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_client, what=RELOAD)

    p = sub.add_parser(
        "resign", help="after a daemon died as VRRP master: send its priority-0 advert (systemd ExecStopPost)"
    )
    p.set_defaults(func=_resign)

    sub.add_parser("lab", help="the embedded lab fleet: dsrlb lab --help")
    sub.add_parser("bench", help="forwarding benchmark against the kernel, side by side: dsrlb bench --help")
    sub.add_parser(
        "deploy", help="run site.yml, the rollout or verify through ansible-runner: dsrlb deploy --help"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in DELEGATED:
            return DELEGATED[argv[0]](argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
