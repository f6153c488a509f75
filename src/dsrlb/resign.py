"""Resignation of a VRRP master whose daemon died without a clean stop (kill -9, a crash).

A master that stops cleanly announces priority 0, so its backup takes over after the skew time
instead of three advert intervals. A daemon that is killed cannot. So while it is master, the daemon
keeps its priority-0 advert ready in a file next to its control socket; `dsrlb resign`, which systemd
runs after the service has stopped for any reason (ExecStopPost), sends it if it is still there. A
clean stop, or leaving the master state, removes the file, so nothing is sent twice or by a backup.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

REPEAT = 3  # one lost frame must not cost the takeover


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


def main(control_socket: str) -> int:
    """`dsrlb resign`: never fails the unit's stop; says what it did."""
    try:
        print(f"dsrlb resign: {send(path_for(control_socket))}", file=sys.stderr)
    except OSError as err:
        print(f"dsrlb resign: cannot send: {err}", file=sys.stderr)
        return 1
    return 0
