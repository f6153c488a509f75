"""What operators see: the rows of `dsrlb show` and of the metrics, computed from the daemon's state.

Pure functions of their arguments, so the control socket and the metrics endpoint always agree. The
`Status` protocol is what both endpoints need of a daemon; they know it by that protocol only.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from dsrlb.config.model import Config
from dsrlb.dataplane.forwarder import ServiceState, Stats


class Status(Protocol):
    """The read side of a running daemon."""

    generation: int

    def show_servers(self) -> list[dict[str, Any]]: ...
    def show_targets(self) -> list[dict[str, Any]]: ...
    def show_sessions(self) -> list[dict[str, Any]]: ...
    def show_stats(self) -> dict[str, Any]: ...
    def show_vrrp(self) -> dict[str, Any]: ...


class TargetInfo(Protocol):
    """What the views read of a target's runtime state."""

    admin: str

    @property
    def up(self) -> bool: ...
    @property
    def last_ok(self) -> float | None: ...
    @property
    def detail(self) -> str: ...


def admin_state(admin: str, open_connections: int) -> str:
    """Admin state as operators see it: a draining target with no open connection is drained."""
    return "drained" if admin == "draining" and open_connections == 0 else admin


def targets(
    config: Config,
    runtime: Mapping[int, TargetInfo],
    states: Iterable[ServiceState],
    activity: Mapping[int, tuple[int, float]],
    macs: Mapping[bytes, bytes],
) -> list[dict[str, Any]]:
    states = list(states)
    sessions: dict[int, int] = {}
    for state in states:
        for tid, n in list(state.load.items()):
            sessions[tid] = sessions.get(tid, 0) + n
    out = []
    for tid, rt in sorted(runtime.items()):
        t = config.targets[tid]
        mac = macs.get(t.ipaddr.packed)
        last_ok = rt.last_ok
        connections = activity.get(tid, (0, 0.0))[0]
        counters = [st.counters[tid] for st in states if tid in st.counters]
        out.append(
            {
                "id": tid,
                "ipaddr": str(t.ipaddr),
                "port": t.port,
                "mac": mac.hex(":") if mac else None,
                "health": "up" if rt.up else "down",
                "last_ok": None if last_ok is None else round(last_ok, 1),
                "admin": admin_state(rt.admin, connections),
                "weight": t.weight,
                "backup": t.backup,
                "sessions": sessions.get(tid, 0),
                "connections": connections,
                "packets": sum(c[0] for c in counters),
                "bytes": sum(c[1] for c in counters),
                "detail": rt.detail,
            }
        )
    return out


def servers(config: Config, states: Mapping[int, ServiceState]) -> list[dict[str, Any]]:
    out = []
    for sid, s in sorted(config.servers.items()):
        state = states.get(sid)
        counts = list(state.counters.values()) if state else []
        out.append(
            {
                "id": sid,
                "vip": str(s.ipaddr),
                "port": s.port,
                "protocol": s.protocol,
                "method": s.method,
                "targets": list(s.targets),
                "serving": s.serving,
                "packets": sum(c[0] for c in counts),
                "bytes": sum(c[1] for c in counts),
                "sessions": len(state.sessions) if state else 0,
            }
        )
    return out


def sessions(states: Mapping[int, ServiceState], now: float) -> list[dict[str, Any]]:
    out = []
    for sid, state in sorted(states.items()):
        for client, session in list(state.sessions.items()):
            out.append(
                {
                    "server": sid,
                    "client": socket.inet_ntoa(client),
                    "target": session.target,
                    "idle": round(now - session.seen, 1),
                }
            )
    return out


def stats(st: Stats, ring_drops: int, generation: int, uptime: float) -> dict[str, Any]:
    return {
        "rx": st.rx,
        "tx": st.tx,
        "forwarded": st.forwarded,
        "arp_replies": st.arp_replies,
        "icmp_replies": st.icmp_replies,
        "checksums_fixed": st.checksums_fixed,
        "drops": {**st.drops, **({"ring_full": ring_drops} if ring_drops else {})},
        "generation": generation,
        "uptime": round(uptime, 1),
    }
