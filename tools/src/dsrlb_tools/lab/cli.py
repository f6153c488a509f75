"""`dsrlb lab ...`: bring the embedded fleet up and down, look at it, reboot a host, run commands in it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from dsrlb_tools.lab.cgroup import CgroupError
from dsrlb_tools.lab.host import HostError
from dsrlb_tools.lab.lab import DEFAULT_STATE_DIR, STATE_ENV, HostStatus, Lab, LabError
from dsrlb_tools.lab.net import NetError
from dsrlb_tools.lab.topology import TopologyError


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        help=f"host disks, PIDs, consoles (default: ${STATE_ENV} or {DEFAULT_STATE_DIR})",
    )
    parser = argparse.ArgumentParser(prog="dsrlb lab", description="the embedded lab fleet")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", parents=[common], help="boot every host of the topology (idempotent)")
    p.add_argument(
        "--topology",
        help="topology YAML file, or the name of a packaged one: default (mirrors the seed network), "
        "ecmp (BGP balancers behind an ECMP router)",
    )
    p = sub.add_parser(
        "down", parents=[common], help="stop every host, remove namespaces, veths and cgroups (idempotent)"
    )
    p.add_argument("--purge", action="store_true", help="also delete the hosts' disks (the state directory)")
    p = sub.add_parser("status", parents=[common], help="hosts, PIDs and systemd states")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("reboot", parents=[common], help="restart a host's PID 1 on the same disk")
    p.add_argument("host")
    p = sub.add_parser(
        "exec", parents=[common], help="run a command inside a host: dsrlb lab exec HOST -- CMD..."
    )
    p.add_argument(
        "--net",
        action="store_true",
        help="enter only the host's network namespace (this machine's files, e.g. a checkout's venv)",
    )
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = sub.add_parser(
        "load",
        parents=[common],
        help="HTTP client load from a host: dsrlb lab load HOST VIP [--interval S] [--sources A,B] ...",
        add_help=False,
    )
    p.add_argument("host")
    p.add_argument("load_args", nargs=argparse.REMAINDER, help="arguments of python -m dsrlb_tools.lab.load")
    return parser


def _first_per_family(addresses: list[str]) -> str:
    """An interface's first IPv4 and first IPv6 address, and how many more it has."""
    shown = [a for a in addresses if ":" not in a][:1] + [a for a in addresses if ":" in a][:1]
    more = len(addresses) - len(shown)
    return ",".join(shown) + (f"(+{more})" if more else "")


def _print_status(hosts: list[HostStatus], as_json: bool, state_dir: str) -> None:
    if as_json:
        print(json.dumps({"state_dir": state_dir, "hosts": [h.as_dict() for h in hosts]}, indent=2))
        return
    print(f"{'HOST':<10} {'PID':>8}  {'STATE':<12} ADDRESSES")
    for h in hosts:
        addrs = " ".join(f"{i}:{_first_per_family(a)}" for i, a in h.addresses.items())
        print(f"{h.name:<10} {h.pid or '-':>8}  {h.state:<12} {addrs}")
        if h.failed_units:
            print(f"{'':<21}failed: {', '.join(h.failed_units)}")


def main(argv: list[str]) -> int:
    """Entry point of `dsrlb lab`; returns the exit status (of the command, for `exec`)."""
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("dsrlb lab: needs root (it creates namespaces, mounts and cgroups)", file=sys.stderr)
        return 1
    try:
        lab = Lab(args.state_dir)
        if args.command == "up":
            start = time.monotonic()
            hosts = lab.up(args.topology)
            _print_status(hosts, False, str(lab.state_dir))
            print(
                f"lab up in {time.monotonic() - start:.1f}s ({lab.state_dir}); stop it with: dsrlb lab down"
            )
            return 0 if all(h.state in ("running", "degraded") for h in hosts) else 1
        if args.command == "down":
            lab.down(purge=args.purge)
            return 0
        if args.command == "status":
            hosts = lab.status()
            _print_status(hosts, args.json, str(lab.state_dir))
            return 0 if all(h.state in ("running", "degraded") for h in hosts) else 3
        if args.command == "reboot":
            h = lab.reboot(args.host)
            _print_status([h], False, str(lab.state_dir))
            return 0
        if args.command == "load":  # the host's network, this machine's Python: it runs from any checkout
            argv = [sys.executable, "-m", "dsrlb_tools.lab.load", *args.load_args]
            return subprocess.run(lab.net_argv(args.host, argv)).returncode
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            print("dsrlb lab exec: missing command (dsrlb lab exec HOST -- CMD...)", file=sys.stderr)
            return 2
        argv = lab.net_argv(args.host, cmd) if args.net else lab.exec_argv(args.host, cmd)
        return subprocess.run(argv).returncode
    except (LabError, TopologyError, HostError, NetError, CgroupError) as err:
        print(f"dsrlb lab: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"dsrlb lab: {err.filename or ''}: {err.strerror}", file=sys.stderr)
        return 1
