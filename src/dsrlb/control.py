"""The control socket: one JSON request per connection, one JSON answer (see `handle`), and the
`dsrlb show|target|reload` client that talks to it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from dsrlb.config.model import DEFAULT_CONTROL

if TYPE_CHECKING:
    from dsrlb.daemon import Daemon

MAX_REQUEST = 65536


async def handle(daemon: Daemon, request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request: {"cmd": "show", "what": ...} | {"cmd": "target", "action", "id"} |
    {"cmd": "reload"} -> {"ok": true, "data": ...} or {"ok": false, "error": ..., "errors": [...]}."""
    cmd = request.get("cmd")
    if cmd == "show":
        views = {
            "servers": daemon.show_servers,
            "targets": daemon.show_targets,
            "sessions": daemon.show_sessions,
            "stats": daemon.show_stats,
            "vrrp": daemon.show_vrrp,
        }
        view = views.get(request.get("what", ""))
        if view is None:
            return _error(f"show what? one of {', '.join(views)}")
        return {"ok": True, "data": view()}
    if cmd == "target":
        action, tid = request.get("action"), request.get("id")
        if action not in ("enable", "disable", "drain") or not isinstance(tid, int):
            return _error("target needs action enable|disable|drain and an integer id")
        try:
            return {"ok": True, "data": daemon.set_admin(tid, action)}
        except KeyError as err:
            return _error(err.args[0])
    if cmd == "reload":
        ok, errors = await daemon.reload()
        if ok:
            return {"ok": True, "data": {"generation": daemon.generation}}
        return _error(f"reload rejected, still serving generation {daemon.generation}", errors)
    return _error(f"unknown command {cmd!r}")


def _error(message: str, errors: list[str] | None = None) -> dict[str, Any]:
    return {"ok": False, "error": message, "errors": errors or []}


async def serve(daemon: Daemon, path: str) -> asyncio.AbstractServer:
    """Listen on `path` (mode 0660); a stale socket file from a dead daemon is replaced."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise OSError(f"{path}: another dsrlb is already listening")
        finally:
            probe.close()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line[:MAX_REQUEST])
                answer = (
                    await handle(daemon, request) if isinstance(request, dict) else _error("not an object")
                )
            except json.JSONDecodeError as err:
                answer = _error(f"bad request: {err}")
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    old = os.umask(0o117)
    try:
        server = await asyncio.start_unix_server(client, path)
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    return server


def request(path: str, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running daemon and return its answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


COLUMNS = {
    "servers": ["id", "vip", "port", "protocol", "method", "targets", "sessions", "packets", "bytes"],
    "targets": [
        "id",
        "ipaddr",
        "mac",
        "health",
        "last_ok",
        "admin",
        "weight",
        "sessions",
        "connections",
        "packets",
        "detail",
    ],
    "sessions": ["server", "client", "target", "idle"],
}


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Plain aligned text table, what operators read in a terminal."""
    cells = [columns] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def render(what: str, data: Any) -> str:
    if what in COLUMNS:
        return table(data, COLUMNS[what])
    if isinstance(data, dict):
        flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
        lines = [f"{k:16} {_cell(v)}" for k, v in flat.items()]
        for k, v in data.items():
            if isinstance(v, dict):
                lines += [f"{k}.{sub:11} {n}" for sub, n in sorted(v.items())] or [f"{k:16} -"]
        return "\n".join(lines)
    return json.dumps(data)


def cli(args: argparse.Namespace) -> int:
    """`dsrlb show|target|reload`: exit 0 when the daemon says ok, 1 with its errors otherwise."""
    if args.what == "target":
        message: dict[str, Any] = {"cmd": "target", "action": args.action, "id": args.id}
    elif args.what == "reload":
        message = {"cmd": "reload"}
    else:
        message = {"cmd": "show", "what": args.what}
    path = args.socket or DEFAULT_CONTROL
    try:
        answer = request(path, message)
    except OSError as err:
        print(f"dsrlb: cannot reach the daemon at {path}: {err.strerror or err}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"dsrlb: {answer.get('error')}", file=sys.stderr)
        for line in answer.get("errors", []):
            print(line, file=sys.stderr)
        return 1
    data = answer.get("data")
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.what in ("target",):
        print(table([data], COLUMNS["targets"]))
    elif args.what == "reload":
        print(f"reloaded: generation {data['generation']}")
    else:
        print(render(args.what, data))
    return 0
