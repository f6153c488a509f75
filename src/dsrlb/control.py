"""The control socket: one JSON request per connection, one JSON answer (see `handle`), and the
`dsrlb show|target|reload` client that talks to it."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import sys
from typing import Any, Protocol

from dsrlb.views import ENDPOINTS, SESSIONS_MAX, Endpoint, Status
from dsrlb.vocabulary import DEFAULT_CONTROL, RELOAD, SHOW, SHOW_VIEWS, TARGET, TARGET_ACTIONS

MAX_REQUEST = 65536  # bytes of one request line, newline included
DEADLINE = 2.0  # seconds to read a whole request, and again to hand over its answer
MAX_CONNECTIONS = 64  # open at once (see views.Endpoint)
BACKLOG = 1024  # connections the kernel queues for accept


class Controlled(Status, Protocol):
    """What the control socket needs of a daemon beyond its views."""

    async def reload(self) -> tuple[bool, list[str]]: ...
    def set_admin(self, target_id: int, action: str) -> dict[str, Any]: ...


async def handle(daemon: Controlled, request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request (the commands are vocabulary.COMMANDS): {"cmd": "show", "what": VIEW} |
    {"cmd": "target", "action": ACTION, "id": N} | {"cmd": "reload"} -> {"ok": true, "data": ...} or
    {"ok": false, "error": ..., "errors": [...]}."""
    cmd = request.get("cmd")
    if cmd == SHOW:
        what = request.get("what", "")
        if what not in SHOW_VIEWS:
            return _error(f"show what? one of {', '.join(SHOW_VIEWS)}")
        if what == "sessions":
            return await _sessions(daemon, request)
        if what == "bgp":  # asks BIRD, off the event loop
            return {"ok": True, "data": await daemon.show_bgp()}
        return {"ok": True, "data": getattr(daemon, f"show_{what}")()}
    if cmd == TARGET:
        action, tid = request.get("action"), request.get("id")
        if action not in TARGET_ACTIONS or not isinstance(tid, int):
            return _error(f"target needs action {'|'.join(TARGET_ACTIONS)} and an integer id")
        try:
            return {"ok": True, "data": daemon.set_admin(tid, action)}
        except KeyError as err:
            return _error(err.args[0])
    if cmd == RELOAD:
        ok, errors = await daemon.reload()
        if ok:
            return {"ok": True, "data": {"generation": daemon.generation}}
        return _error(f"reload rejected, still serving generation {daemon.generation}", errors)
    return _error(f"unknown command {cmd!r}")


async def _sessions(daemon: Controlled, request: dict[str, Any]) -> dict[str, Any]:
    """{"cmd": "show", "what": "sessions", optional "limit": N, "client": ADDRESS}: the first N rows in
    "data", "total" counts all and "truncated" says there are more (views.sessions)."""
    paging = {k: request[k] for k in ("limit", "client") if k in request}
    limit = paging.get("limit", 0)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= SESSIONS_MAX:
        return _error(f"sessions: limit must be an integer from 0 to {SESSIONS_MAX}")
    if "client" in paging:
        try:
            paging["client"] = str(ipaddress.ip_address(str(paging["client"])))
        except ValueError:
            return _error(f"sessions: client {paging['client']!r} is not an IP address")
    page = await asyncio.to_thread(daemon.show_sessions, **paging)  # nftables: nft lists the kernel's map
    await asyncio.sleep(0)  # the page and its JSON text each take the loop for a while: not both at once
    return {"ok": True, "data": page["sessions"], "total": page["total"], "truncated": page["truncated"]}


def _error(message: str, errors: list[str] | None = None) -> dict[str, Any]:
    return {"ok": False, "error": message, "errors": errors or []}


async def _converse(
    daemon: Controlled,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    endpoint: Endpoint,
    deadline: float,
) -> None:
    """Read one request within the deadline, answer it, hand over the answer within the deadline. The
    request itself (a reload) is not timed: cancelling it halfway would leave a half-applied config."""
    try:
        async with asyncio.timeout(deadline):
            line = await reader.readline()
    except ValueError:  # the line is longer than the reader's limit, MAX_REQUEST
        endpoint.oversize += 1
        answer = _error(f"request larger than {MAX_REQUEST} bytes")
    else:
        if not line or writer.transport not in endpoint.conns:
            return  # connected and went away (a liveness probe), or closed to make room
        endpoint.busy(writer.transport)
        try:
            request = json.loads(line)
            answer = await handle(daemon, request) if isinstance(request, dict) else _error("not an object")
        except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, nested too deep
            answer = _error(f"bad request: {err}")
    async with asyncio.timeout(deadline):
        writer.write(_line(answer))
        await writer.drain()


def _line(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer).encode() + b"\n"


def claim(path: str) -> None:
    """Make `path` ours to listen on: a stale socket file from a dead daemon is removed; a live one
    raises OSError, before a second daemon touches the interface or the kernel of the first."""
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


async def serve(
    daemon: Controlled, path: str, deadline: float = DEADLINE, max_connections: int = MAX_CONNECTIONS
) -> asyncio.AbstractServer:
    """Listen on `path` (mode 0660); a stale socket file from a dead daemon is replaced. At most
    `max_connections` at once (views.Endpoint), each closed `deadline` s after connecting unless its
    request is in."""
    claim(path)
    endpoint = ENDPOINTS["control"] = Endpoint(max_connections)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.transport
        if not endpoint.admit(conn):
            writer.write(_line(_error(f"busy: {max_connections} requests in progress, try again")))
            writer.close()
            return
        try:
            await _converse(daemon, reader, writer, endpoint, deadline)
        except (TimeoutError, ConnectionError):
            endpoint.expired += 1
            conn.abort()
        finally:
            endpoint.release(conn)
            writer.close()

    old = os.umask(0o117)
    try:
        server = await asyncio.start_unix_server(client, path, limit=MAX_REQUEST, backlog=BACKLOG)
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
    "bgp.vips": ["vip", "announced", "reason"],
    "bgp.protocols": ["name", "proto", "table", "state", "since", "info"],
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
    if what == "bgp" and data.get("state") != "disabled":
        head = {k: v for k, v in data.items() if k not in ("vips", "protocols")}
        parts = [render("", head), table(data["vips"], COLUMNS["bgp.vips"])]
        if data["protocols"]:
            parts.append(table(data["protocols"], COLUMNS["bgp.protocols"]))
        return "\n\n".join(parts)
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
    if args.what == TARGET:
        message: dict[str, Any] = {"cmd": TARGET, "action": args.action, "id": args.id}
    elif args.what == RELOAD:
        message = {"cmd": RELOAD}
    else:
        message = {"cmd": SHOW, "what": args.what}
        paging = {k: v for k in ("limit", "client") if (v := getattr(args, k, None)) is not None}
        if paging and args.what != "sessions":
            print("dsrlb: --limit and --client are for show sessions", file=sys.stderr)
            return 2
        message.update(paging)
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
    elif args.what == TARGET:
        print(table([data], COLUMNS["targets"]))
    elif args.what == RELOAD:
        print(f"reloaded: generation {data['generation']}")
    else:
        print(render(args.what, data))
    if answer.get("truncated"):
        more = answer["total"] - len(data)
        note = f"… {more} more (of {answer['total']}; --limit N up to {SESSIONS_MAX}, or --client ADDRESS)"
        print(note, file=sys.stderr if args.json else sys.stdout)
    return 0
