# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in for the dsrlb daemon's control socket, speaking the real protocol over a real Unix socket.

It keeps just enough state to act like the daemon for the modules: targets with an admin state, a
drain that completes after a number of polls, and a reload that can be told to fail.
"""

from __future__ import annotations

import json
import socketserver
import threading
import typing as t


def make_target(target_id: int, ipaddr: str, admin: str = "enabled", health: str = "up") -> dict[str, t.Any]:
    return {
        "id": target_id,
        "ipaddr": ipaddr,
        "port": 80,
        "mac": f"02:00:00:00:00:{target_id:02x}",
        "health": health,
        "admin": admin,
        "weight": 1,
        "backup": False,
        "sessions": 1,
        "connections": 1,
        "packets": 10,
        "bytes": 1000,
        "detail": "",
    }


class FakeControl:
    """Serve the control protocol on `path` in a background thread (use as a context manager)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[dict[str, t.Any]] = []
        self.targets = {1: make_target(1, "172.16.1.100"), 2: make_target(2, "172.16.1.101")}
        self.drain_polls = 2  # `show targets` answers until a draining target reports drained
        self.reload_errors: list[str] | None = None  # set to make the next reloads fail
        self.generation = 1
        self._polls: dict[int, int] = {}
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def __enter__(self) -> FakeControl:
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    answer = owner.answer(json.loads(line))
                except ValueError:
                    answer = {"ok": False, "error": "bad request"}
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        self._server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def answer(self, request: dict[str, t.Any]) -> dict[str, t.Any]:
        with self._lock:
            self.requests.append(request)
            cmd = request.get("cmd")
            if cmd == "show":
                return self._show(request.get("what"))
            if cmd == "target":
                return self._target(request.get("action"), request.get("id"))
            if cmd == "reload":
                if self.reload_errors is not None:
                    return {"ok": False, "error": "config has errors", "errors": self.reload_errors}
                self.generation += 1
                return {"ok": True, "data": {"generation": self.generation}}
            return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _show(self, what: str | None) -> dict[str, t.Any]:
        if what == "targets":
            for target in self.targets.values():
                if target["admin"] == "draining":
                    polls = self._polls[target["id"]] = self._polls.get(target["id"], 0) + 1
                    if polls >= self.drain_polls:
                        target.update(admin="drained", connections=0, sessions=0)
            return {"ok": True, "data": [dict(target) for target in self.targets.values()]}
        data = {
            "servers": [
                {
                    "id": 1,
                    "vip": "172.16.1.10",
                    "port": 80,
                    "protocol": "tcp",
                    "method": "maglev",
                    "targets": sorted(self.targets),
                    "packets": 20,
                    "bytes": 2000,
                    "sessions": 2,
                }
            ],
            "sessions": [
                {"server": 1, "client": "198.18.0.10", "target": 1, "idle": 0.5},
                {"server": 1, "client": "198.18.0.11", "target": 2, "idle": 1.5},
            ],
            "stats": {"rx": 30, "tx": 20, "forwarded": 20, "arp_replies": 3, "icmp_replies": 0, "drops": {}},
            "vrrp": {"state": "master"},
            "bgp": {"state": "disabled"},
            "bngsync": {"state": "disabled"},
        }
        if what not in data:
            return {"ok": False, "error": f"cannot show {what!r}"}
        return {"ok": True, "data": data[what]}

    def _target(self, action: str | None, target_id: t.Any) -> dict[str, t.Any]:
        target = self.targets.get(target_id)
        if target is None:
            return {"ok": False, "error": f"no target {target_id}"}
        admin = {"enable": "enabled", "disable": "disabled", "drain": "draining"}.get(action or "")
        if admin is None:
            return {"ok": False, "error": f"unknown action {action!r}"}
        target["admin"] = admin
        self._polls.pop(target_id, None)
        return {"ok": True, "data": dict(target)}
