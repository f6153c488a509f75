"""Resignation of a VRRP master whose daemon died without a clean stop (kill -9, a crash).

A master that stops cleanly announces priority 0, so its backup takes over after the skew time
instead of three advert intervals. A daemon that is killed cannot. So while it is master, the daemon
keeps its priority-0 advert ready in a file next to its control socket, and two others send it if it
is still there once the daemon is gone: a sentinel process the daemon starts (`watch`: it wakes the
moment the daemon dies) and, should that one be gone too, `dsrlb resign`, which systemd runs after the
service has stopped for any reason (ExecStopPost). A clean stop, or leaving the master state, removes
the file, so a backup never resigns and a second sender finds nothing.

Both only send a frame: they keep CAP_NET_RAW and drop every other capability first (the unit gives
the daemon CAP_NET_ADMIN too, for its ingress filter, and both would inherit it).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPEAT = 3  # one lost frame must not cost the takeover


CAP_NET_RAW = 13
_CAPABILITY_VERSION_3 = 0x20080522  # capget/capset: two 32-bit words per set
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4


def keep_only_net_raw() -> str | None:
    """Reduce this process's capabilities to CAP_NET_RAW at most (effective, permitted, inheritable,
    ambient; a process may always drop its own). Returns why it could not, for the journal."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # [effective, permitted, inheritable] for bits 0-31, then 32-63
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 or libc.capget(header, data) != 0:
        return os.strerror(ctypes.get_errno())
    for i in range(6):
        data[i] &= (1 << CAP_NET_RAW) if i < 3 else 0
    if libc.capset(header, data) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def _drop_capabilities() -> None:
    if (why := keep_only_net_raw()) is not None:
        print(f"dsrlb resign: cannot drop capabilities ({why}); going on", file=sys.stderr)


def path_for(control_socket: str) -> Path:
    return Path(control_socket).with_name("vrrp-resign.json")


def arm(path: Path, interface: str, frame: bytes) -> None:
    """Leave the advert to send should this process die; written atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".resign-")
    with os.fdopen(fd, "w") as out:
        json.dump({"interface": interface, "frame": frame.hex()}, out)
    os.replace(tmp, path)


def disarm(path: Path) -> None:
    path.unlink(missing_ok=True)


def send(path: Path) -> str:
    """Send the advert left behind, if any, and remove it; returns what happened, for the journal."""
    try:
        left = json.loads(path.read_text())
        interface, frame = left["interface"], bytes.fromhex(left["frame"])
    except FileNotFoundError:
        return "nothing to resign (not master, or stopped cleanly)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path}: unreadable ({err}); nothing sent"
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((interface, 0))
        for _ in range(REPEAT):
            sock.send(frame)
    disarm(path)
    return f"resigned as VRRP master on {interface} (priority 0 advert sent)"


def start_sentinel(path: Path) -> subprocess.Popen:
    """A process that resigns for this one the moment it dies (started once, when first master)."""
    argv = [sys.executable, "-m", "dsrlb.resign", "--watch", str(os.getpid()), str(path)]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def watch(pid: int, path: Path) -> None:
    """Wait for process `pid` to end, then send what it left behind. Stop signals are ignored: when the
    daemon dies, systemd stops the rest of its service and that must not beat the resignation."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _drop_capabilities()
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None  # already gone
    if pidfd is not None:
        select.select([pidfd], [], [])  # readable once the process has exited
        os.close(pidfd)
    report(path)


def report(path: Path) -> int:
    try:
        print(f"dsrlb resign: {send(path)}", file=sys.stderr)
    except OSError as err:
        print(f"dsrlb resign: cannot send: {err}", file=sys.stderr)
        return 1
    return 0


def main(control_socket: str) -> int:
    """`dsrlb resign`: says what it did; a failure to send is the only failure."""
    _drop_capabilities()
    return report(path_for(control_socket))


if __name__ == "__main__":  # the sentinel: python -m dsrlb.resign --watch PID FILE
    parser = argparse.ArgumentParser(prog="python -m dsrlb.resign")
    parser.add_argument("--watch", type=int, required=True, metavar="PID")
    parser.add_argument("file", type=Path)
    args = parser.parse_args()
    watch(args.watch, args.file)
