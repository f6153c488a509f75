"""What operators see: the rows of `dsrlb show` and of the metrics, computed from the daemon's state.

Pure functions of their arguments, so the control socket and the metrics endpoint always agree. The
`Status` protocol is what both endpoints need of a daemon; they know it by that protocol only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import ip_address
from itertools import islice
from typing import Any, Protocol

from dsrlb.config.model import Config
from dsrlb.dataplane.forwarder import ServiceState, Stats
from dsrlb.dataplane.nftables import Ruleset, flow_client


class Status(Protocol):
    """The read side of a running daemon."""

    generation: int

    def show_servers(self) -> list[dict[str, Any]]: ...
    def show_targets(self) -> list[dict[str, Any]]: ...
    def show_sessions(
        self, limit: int = ..., client: str | None = None
    ) -> dict[str, Any]: ...  # views.sessions
    def show_stats(self) -> dict[str, Any]: ...
    def show_vrrp(self) -> dict[str, Any]: ...
    def bgp_status(self) -> dict[str, Any]: ...  # HA mode bgp: the announcements ({"state": "disabled"})
    async def show_bgp(self) -> dict[str, Any]: ...  # bgp_status and BIRD's protocol states
    def show_bngsync(self) -> dict[str, Any]: ...  # session sync with the VRRP peer ({"state": "disabled"})


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


SESSIONS_LIMIT = 1000  # rows of one `show sessions` answer unless it asks for another limit
SESSIONS_MAX = 2000  # the most one answer may have: about 10 ms of the event loop, whatever the table size


def sessions(
    states: Mapping[int, ServiceState], now: float, limit: int = SESSIONS_LIMIT, client: str | None = None
) -> dict[str, Any]:
    """The first `limit` (<= SESSIONS_MAX) sessions by server then age, or only `client`'s (dotted
    quad); `total` counts them all and `truncated` says the rows are not all of them.

    The tables are never copied (a million sessions took the event loop for 2 s) nor walked past the
    page (skipping to an offset would cost 25 ms per million): the page is a slice from the start of
    each dict, which the packet thread owns and may resize while it is taken.
    """
    limit = max(0, min(limit, SESSIONS_MAX))
    want = ip_address(client).packed if client is not None else None
    picked: list[tuple[int, bytes, Any]] = []
    total = 0
    for sid, state in sorted(states.items()):
        table = state.sessions
        if want is not None:
            found = table.get(want)
            table = {} if found is None else {want: found}
        total += len(table)
        if len(picked) < limit:
            picked += [(sid, c, session) for c, session in _first(table, limit - len(picked))]
    rows = [
        {
            "server": sid,
            "client": str(ip_address(c)),
            "target": session.target,
            "idle": round(now - session.seen, 1),
        }
        for sid, c, session in picked
    ]
    return {"sessions": rows, "total": total, "truncated": len(rows) < total}


def kernel_flows(
    flows: list[tuple[str, int, str, int, str, int]],
    config: Config,
    rules: Ruleset,
    limit: int = SESSIONS_LIMIT,
    client: str | None = None,
) -> dict[str, Any]:
    """`sessions` for access nftables: the kernel's flow map, one row per flow (client address and port),
    `idle` taken from its expiry (exact once it saw a second packet). An IPv6 client is shown and
    matched by the low 96 bits of its address, all the map keeps."""
    limit = max(0, min(limit, SESSIONS_MAX))
    targets = {(s.vip, s.port, mac): tid for s in rules.services for tid, mac in s.targets}
    timeouts = {(s.vip, s.port): s.timeout for s in rules.services}
    sids = {(str(s.ipaddr), s.port): sid for sid, s in config.servers.items() if s.serving}
    want = flow_client(client) if client is not None else None
    picked = [f for f in flows if want is None or f[0] == want]
    rows = [
        {
            "server": sids.get((vip, port)),
            "client": src,
            "port": sport,
            "target": targets.get((vip, port, mac)),
            "idle": max(0, timeouts.get((vip, port), 0) - expires)
            if expires > rules.embryonic
            else max(0, rules.embryonic - expires),
        }
        for src, sport, vip, port, mac, expires in sorted(picked, key=lambda f: f[:4])[:limit]
    ]
    return {"sessions": rows, "total": len(picked), "truncated": len(rows) < len(picked)}


def _first(table: Mapping[bytes, Any], n: int) -> list[tuple[bytes, Any]]:
    for _ in range(10):
        try:
            return list(islice(table.items(), n))
        except RuntimeError:  # "dictionary changed size during iteration": the packet thread; again
            continue
    return []


class Abortable(Protocol):
    def abort(self) -> None: ...  # close now (an asyncio transport)


class Endpoint:
    """The connections of a local endpoint (control socket, metrics), at most `cap` at once: at the cap
    a new one takes the place of the oldest that has not sent its request yet, or is closed at once
    when every one is being answered. The counters are shown in `show stats` and the metrics."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.conns: set[Abortable] = set()
        self.idle: dict[Abortable, None] = {}  # still reading their request, oldest first
        self.rejected = 0  # closed at once at the cap
        self.evicted = 0  # idle, closed at the cap for a new one
        self.expired = 0  # request not in, or answer not taken, within the deadline
        self.oversize = 0  # request larger than the endpoint takes: an error answer

    def admit(self, conn: Abortable) -> bool:
        if len(self.conns) >= self.cap:
            if not self.idle:
                self.rejected += 1
                return False
            oldest = next(iter(self.idle))
            self.release(oldest)
            oldest.abort()
            self.evicted += 1
        self.conns.add(conn)
        self.idle[conn] = None
        return True

    def busy(self, conn: Abortable) -> None:
        """Its request is in: it is no longer one to make room."""
        self.idle.pop(conn, None)

    def release(self, conn: Abortable) -> None:
        self.conns.discard(conn)
        self.idle.pop(conn, None)

    def counts(self) -> dict[str, int]:
        return {"open": len(self.conns), **{k: getattr(self, k) for k in COUNTED}}


COUNTED = ("rejected", "evicted", "expired", "oversize")
ENDPOINTS: dict[str, Endpoint] = {}  # by name: filled by control.serve and metrics.serve


def stats(
    st: Stats,
    ring_drops: int,
    generation: int,
    uptime: float,
    endpoints: Mapping[str, Endpoint] = ENDPOINTS,
    access: str = "raw",
    restored: int = 0,
) -> dict[str, Any]:
    """`restored`: times the kernel's table (access nftables) was found removed and put back."""
    return {
        "access": access,
        "rx": st.rx,
        "tx": st.tx,
        "forwarded": st.forwarded,
        "arp_replies": st.arp_replies,
        "icmp_replies": st.icmp_replies,
        "nd_replies": st.nd_replies,
        "checksums_fixed": st.checksums_fixed,
        "link_down": st.link_down,
        "tx_errors": st.tx_errors,
        "flows": st.flows,
        "sessions": st.sessions,
        "flows_overflow": st.flows_overflow,
        "sessions_overflow": st.sessions_overflow,
        "expired": st.expired,
        "expired_embryonic": st.expired_embryonic,
        "arp_changed": st.arp_changed,
        "arp_ignored": st.arp_ignored,
        "synced_followed": st.synced_followed,
        "session_log_overflow": st.session_log_overflow,
        "drops": {**st.drops, **({"ring_full": ring_drops} if ring_drops else {})},
        "ruleset_restored": restored,
        "generation": generation,
        "uptime": round(uptime, 1),
        "endpoints": {f"{name}_{k}": n for name, e in endpoints.items() for k, n in e.counts().items()},
    }
