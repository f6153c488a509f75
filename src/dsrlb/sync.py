"""bngsync: the session table travels from the forwarding node of a VRRP pair to the other one.

Why: `rr`, `random` and `leastsessions` pick a target per client, so a node that takes over without
the old master's sessions sends returning clients elsewhere (and `maglev` does too for clients whose
target changed meanwhile); drain state set on one node must hold on the other. BalanceNG does this
with bngsync (`network N syncpeer ADDR`); this is dsrlb's implementation of the same contract, its
own wire format (docs/sync.md), on BalanceNG's port.

Each node binds UDP port 10439 on its `real` address and accepts datagrams from `syncpeer` (that
address, that port) only, at a bounded rate and size. The forwarding node streams its new and moved
sessions in batches (`SESSIONS`), and once per refresh period its whole table, so that the peer's
copies, which expire after the server's `session` seconds, stay alive while the master's do. Admin
states (`ADMIN`) travel from whichever node changed them. Every node says `HELLO` each second with a
boot id; a new boot id means the peer (re)started, and with `sessionautoresync 1` it gets the whole
table at once. With `sessionsyncack 1` every batch is acknowledged and resent until it is (three
times at most). The peer's sessions are kept here, bounded by `set sessions` with an overflow
counter, until this node forwards: then they become hints the forwarder follows for those clients.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, cast

log = logging.getLogger("dsrlb.sync")

PORT = 10439  # BalanceNG's bngsync port
VERSION = 1
HEADER = struct.Struct("!4sBBBxII")  # magic, version, kind, flags, sequence number, sender's boot id
MAGIC = b"DSRS"
HELLO, ACK, SESSIONS, ADMIN, FLOWS = 1, 2, 3, 4, 5
KINDS = {HELLO: "hello", ACK: "ack", SESSIONS: "sessions", ADMIN: "admin", FLOWS: "flows"}
WANTS_ACK, FULL = 1, 2  # flags: acknowledge this datagram; part of a whole table
HELLO_BODY = struct.Struct("!B")  # the sender forwards: 0|1
ACK_BODY = struct.Struct("!I")
SESSION = struct.Struct("!BBHH")  # address length (4|16), IP protocol, port, ttl; then VIP, client, target
ADMIN_RECORD = struct.Struct("!BB")  # address length, admin state; then the target's address
FLOW = struct.Struct("!BxHHH")  # address length, client port, VIP port, ttl; then client, VIP, target
ADMIN_STATES = ("enabled", "draining", "disabled")
MAX_DATAGRAM = 1400  # below any Ethernet MTU: never fragmented
HELLO_INTERVAL = 1.0
PEER_TIMEOUT = 3.5  # seconds without a hello: the peer is down
ACK_TIMEOUT = 0.25  # seconds before an unacknowledged batch goes again
RETRIES = 3
UNACKED = 1024  # batches waiting for their acknowledgement; beyond, the oldest is given up (counted)
SEND_QUEUE = 8192  # batches waiting to be sent (a whole table of 262144 sessions is about 3800)
SEND_RATE = 4000.0  # batches per second at most (about 5.6 MB/s), with a burst of as many
RECEIVE_RATE = 8000.0  # datagrams per second accepted at most, with a burst of as many


class SyncError(ValueError):
    """A datagram that is not a well-formed bngsync message (message says what is wrong)."""


@dataclass(frozen=True)
class Session:
    """A client's target at one virtual server, in wire terms: addresses as packed bytes."""

    vip: bytes
    proto: int
    port: int
    client: bytes
    target: bytes
    ttl: int  # seconds the copy lives without being sent again


@dataclass(frozen=True)
class Admin:
    target: bytes
    state: str  # one of ADMIN_STATES


@dataclass(frozen=True)
class Flow:
    """A connection the kernel fast path (access nftables) follows, in wire terms."""

    client: bytes
    sport: int
    vip: bytes
    dport: int
    target: bytes
    ttl: int


@dataclass(frozen=True)
class Message:
    kind: int
    flags: int
    seq: int
    boot: int
    body: bytes


def encode_sessions(sessions: Iterable[Session]) -> Iterator[bytes]:
    """Records of SESSIONS datagrams, as many per datagram body as fit."""
    yield from _batches(
        SESSION.pack(len(s.vip), s.proto, s.port, min(s.ttl, 0xFFFF)) + s.vip + s.client + s.target
        for s in sessions
    )


def encode_admin(states: Iterable[Admin]) -> Iterator[bytes]:
    yield from _batches(
        ADMIN_RECORD.pack(len(a.target), ADMIN_STATES.index(a.state)) + a.target for a in states
    )


def encode_flows(flows: Iterable[Flow]) -> Iterator[bytes]:
    yield from _batches(
        FLOW.pack(len(f.vip), f.sport, f.dport, min(f.ttl, 0xFFFF)) + f.client + f.vip + f.target
        for f in flows
    )


def _batches(records: Iterable[bytes]) -> Iterator[bytes]:
    room = MAX_DATAGRAM - HEADER.size
    body = b""
    for record in records:
        if len(body) + len(record) > room:
            yield body
            body = b""
        body += record
    if body:
        yield body


def pack(kind: int, flags: int, seq: int, boot: int, body: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, flags, seq, boot) + body


def unpack(data: bytes) -> Message:
    if len(data) < HEADER.size:
        raise SyncError("shorter than a header")
    magic, version, kind, flags, seq, boot = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise SyncError(f"not bngsync version {VERSION}")
    if kind not in KINDS:
        raise SyncError(f"unknown kind {kind}")
    return Message(kind, flags, seq, boot, data[HEADER.size :])


def _records(body: bytes, head: struct.Struct, what: str) -> Iterator[tuple[tuple[int, ...], list[bytes]]]:
    """(fields after the address length, three addresses) of each record: `head` starts with the length."""
    at = 0
    while at < len(body):
        if at + head.size > len(body):
            raise SyncError(f"truncated {what} record")
        size, *fields = head.unpack_from(body, at)
        at += head.size
        if size not in (4, 16) or at + 3 * size > len(body):
            raise SyncError(f"bad {what} record")
        yield tuple(fields), [body[at + i * size : at + (i + 1) * size] for i in range(3)]
        at += 3 * size


def decode_sessions(body: bytes) -> list[Session]:
    return [
        Session(vip, proto, port, client, target, ttl)
        for (proto, port, ttl), (vip, client, target) in _records(body, SESSION, "session")
    ]


def decode_flows(body: bytes) -> list[Flow]:
    return [
        Flow(client, sport, vip, dport, target, ttl)
        for (sport, dport, ttl), (client, vip, target) in _records(body, FLOW, "flow")
    ]


def decode_admin(body: bytes) -> list[Admin]:
    out, at = [], 0
    while at < len(body):
        if at + ADMIN_RECORD.size > len(body):
            raise SyncError("truncated admin record")
        size, state = ADMIN_RECORD.unpack_from(body, at)
        at += ADMIN_RECORD.size
        if size not in (4, 16) or state >= len(ADMIN_STATES) or at + size > len(body):
            raise SyncError("bad admin record")
        out.append(Admin(body[at : at + size], ADMIN_STATES[state]))
        at += size
    return out


def peer_mac(peer: IPv4Address, arp_table: str = "/proc/net/arp") -> str | None:
    """The syncpeer's MAC as this host's kernel knows it (it sends our datagrams), None if unknown."""
    try:
        with open(arp_table) as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return None
    for row in rows:
        if len(row) >= 4 and row[0] == str(peer) and row[3] != "00:00:00:00:00:00":
            return row[3]
    return None


@dataclass
class Counters:
    sent: int = 0  # datagrams
    received: int = 0  # datagrams accepted
    resent: int = 0
    lost: int = 0  # batches given up unacknowledged (or queued beyond SEND_QUEUE)
    sessions_sent: int = 0
    sessions_received: int = 0
    flows_sent: int = 0
    flows_received: int = 0
    overflow: int = 0  # peer sessions not kept: the table was full
    full_sent: int = 0  # whole tables sent
    drops: collections.Counter = field(default_factory=collections.Counter)  # datagrams, by reason


class Rate:
    """A token bucket: `take()` is False once more than `rate` a second (after a burst of as many)."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.at = rate, rate, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class SyncPeer(asyncio.DatagramProtocol):
    """One node's bngsync endpoint. The daemon feeds it (`send_sessions`, `send_admin`, `full`) and
    hears from it through the callbacks: `on_admin(records)` for the peer's admin changes, `on_resync()`
    when the peer is new or restarted and `sessionautoresync` is on (it is to get the whole table),
    `on_sessions(records)` when peer sessions arrived (so a forwarding node can use them at once)."""

    def __init__(
        self,
        local: IPv4Address,
        peer: IPv4Address,
        *,
        autoresync: bool,
        acks: bool,
        capacity: int,
        on_admin: Callable[[list[Admin]], None],
        on_resync: Callable[[], None],
        on_sessions: Callable[[list[Session]], None],
        on_flows: Callable[[list[Flow]], None],
        forwarding: Callable[[], bool],
        port: int = PORT,
    ) -> None:
        self.local, self.peer, self.port = local, peer, port
        self.autoresync, self.acks, self.capacity = autoresync, acks, capacity
        self.on_admin, self.on_resync, self.on_sessions, self.on_flows, self.forwarding = (
            on_admin,
            on_resync,
            on_sessions,
            on_flows,
            forwarding,
        )
        self.boot = int.from_bytes(os.urandom(4), "big") or 1
        self.seq = 0
        self.counters = Counters()
        # the peer's sessions: (vip, proto, port, client) -> (target, expiry), in order of arrival
        self.table: dict[tuple[bytes, int, int, bytes], tuple[bytes, float]] = {}
        self.peer_boot: int | None = None
        self.peer_seen = 0.0  # monotonic time of its last hello
        self.peer_forwarding = False
        self.last_full_sent: float | None = None  # wall-clock times, for show bngsync
        self.last_full_received: float | None = None
        self._queue: collections.deque[tuple[int, bytes, int]] = collections.deque()  # (kind, body, flags)
        self._unacked: dict[int, tuple[bytes, float, int]] = {}  # seq -> (datagram, sent at, tries)
        self._send_rate, self._receive_rate = Rate(SEND_RATE), Rate(RECEIVE_RATE)
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Bind `local`:PORT (OSError when the address is not this host's) and start sending."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(self.local), self.port))
        except OSError:
            sock.close()
            raise
        self._task = asyncio.create_task(self._run(sock))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self._transport:
            self._transport.close()

    # --- sending ----------------------------------------------------------------------------
    def send_sessions(self, sessions: list[Session], full: bool = False) -> None:
        for body in encode_sessions(sessions):
            self._enqueue(SESSIONS, body, FULL if full else 0)
        self.counters.sessions_sent += len(sessions)
        if full:
            self.counters.full_sent += 1
            self.last_full_sent = time.time()

    def send_flows(self, flows: list[Flow]) -> None:
        for body in encode_flows(flows):
            self._enqueue(FLOWS, body, 0)
        self.counters.flows_sent += len(flows)

    def send_admin(self, states: list[Admin]) -> None:
        for body in encode_admin(states):
            self._enqueue(ADMIN, body, 0)

    def hello(self) -> None:
        body = HELLO_BODY.pack(int(self.forwarding()))
        self._send(pack(HELLO, 0, 0, self.boot, body))

    def _enqueue(self, kind: int, body: bytes, flags: int) -> None:
        if len(self._queue) >= SEND_QUEUE:
            self.counters.lost += 1
            return
        self._queue.append((kind, body, flags))
        self._wake.set()

    def _send(self, datagram: bytes) -> None:
        if self._transport is not None:
            self._transport.sendto(datagram, (str(self.peer), self.port))
            self.counters.sent += 1

    async def _run(self, sock: socket.socket) -> None:
        """Send queued batches at a bounded rate, resend unacknowledged ones, say hello every second."""
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=sock)
        next_hello = time.monotonic()
        while True:
            now = time.monotonic()
            while self._queue and self._send_rate.take():
                kind, body, flags = self._queue.popleft()
                self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
                datagram = pack(kind, flags | (WANTS_ACK if self.acks else 0), self.seq, self.boot, body)
                if self.acks:
                    if len(self._unacked) >= UNACKED:
                        del self._unacked[next(iter(self._unacked))]
                        self.counters.lost += 1
                    self._unacked[self.seq] = (datagram, now, 1)
                self._send(datagram)
            for seq, (datagram, sent, tries) in list(self._unacked.items()):
                if now - sent < ACK_TIMEOUT:
                    continue
                if tries > RETRIES:
                    del self._unacked[seq]
                    self.counters.lost += 1
                    continue
                self._unacked[seq] = (datagram, now, tries + 1)
                self._send(datagram)
                self.counters.resent += 1
            if now >= next_hello:
                self.hello()
                next_hello = now + HELLO_INTERVAL
                self._prune(now)
            self._wake.clear()
            wait = 0.01 if self._queue else min(ACK_TIMEOUT / 2 if self._unacked else 1.0, next_hello - now)
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.001))
            except TimeoutError:
                pass

    # --- receiving --------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        drops = self.counters.drops
        if addr != (str(self.peer), self.port):
            drops["not_syncpeer"] += 1
            return
        if len(data) > MAX_DATAGRAM:
            drops["oversize"] += 1
            return
        if not self._receive_rate.take():
            drops["rate_limited"] += 1
            return
        try:
            message = unpack(data)
            self._handle(message)
        except SyncError as err:
            drops["malformed"] += 1
            log.debug("bngsync: datagram from %s dropped: %s", addr[0], err)
            return
        self.counters.received += 1

    def _handle(self, m: Message) -> None:
        if m.kind == HELLO:
            if len(m.body) != HELLO_BODY.size:
                raise SyncError("bad hello")
            (forwarding,) = HELLO_BODY.unpack(m.body)
            new = self.peer_boot != m.boot  # first heard of, or restarted
            if new and self.peer_boot is not None:
                log.info("bngsync: peer %s restarted", self.peer)
            self.peer_boot, self.peer_seen, self.peer_forwarding = m.boot, time.monotonic(), bool(forwarding)
            if new:
                self.hello()  # a peer that just started learns of us at once
                if self.autoresync:
                    self.on_resync()
            return
        if m.kind == ACK:
            if len(m.body) != ACK_BODY.size:
                raise SyncError("bad ack")
            self._unacked.pop(ACK_BODY.unpack(m.body)[0], None)
            return
        decode = {SESSIONS: decode_sessions, ADMIN: decode_admin, FLOWS: decode_flows}[m.kind]
        records: list[Any] = decode(m.body)
        if m.flags & WANTS_ACK:
            self._send(pack(ACK, 0, 0, self.boot, ACK_BODY.pack(m.seq)))
        if m.kind == ADMIN:
            self.on_admin(records)
            return
        if m.kind == FLOWS:
            self.counters.flows_received += len(records)
            self.on_flows(records)
            return
        if m.flags & FULL:
            self.last_full_received = time.time()
        self._keep(records)
        self.on_sessions(records)

    def _keep(self, sessions: list[Session]) -> None:
        now = time.monotonic()
        table = self.table
        for s in sessions:
            key = (s.vip, s.proto, s.port, s.client)
            if table.pop(key, None) is None and len(table) >= self.capacity:
                self.counters.overflow += 1
                continue
            table[key] = (s.target, now + s.ttl)  # re-inserted: the table stays in order of arrival
        self.counters.sessions_received += len(sessions)

    def _prune(self, now: float) -> None:
        """Forget expired peer sessions, oldest first, up to the first that is still alive."""
        table = self.table
        while table:
            key = next(iter(table))
            if table[key][1] > now:
                return
            del table[key]

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: the peer is not up yet
        self.counters.drops["icmp_error"] += 1

    # --- views --------------------------------------------------------------------------------
    def peer_up(self) -> bool:
        return self.peer_boot is not None and time.monotonic() - self.peer_seen < PEER_TIMEOUT

    def view(self) -> dict[str, Any]:
        c = self.counters
        return {
            "state": "active",
            "protocol": f"IPv4 UDP port {self.port}",
            "local": str(self.local),
            "syncpeer": str(self.peer),
            "syncpeer_mac": peer_mac(self.peer),
            "peer": ("forwarding" if self.peer_forwarding else "standby") if self.peer_up() else "down",
            "sessionautoresync": int(self.autoresync),
            "sessionsyncack": int(self.acks),
            "packets_sent": c.sent,
            "packets_received": c.received,
            "packets_resent": c.resent,
            "batches_lost": c.lost,
            "flows_sent": c.flows_sent,
            "flows_received": c.flows_received,
            "sessions_sent": c.sessions_sent,
            "sessions_received": c.sessions_received,
            "sessions_held": len(self.table),
            "sessions_capacity": self.capacity,
            "sessions_overflow": c.overflow,
            "full_resyncs_sent": c.full_sent,
            "last_full_resync_sent": self.last_full_sent,
            "last_full_resync_received": self.last_full_received,
            "unacknowledged": len(self._unacked),
            "queued": len(self._queue),
            "drops": dict(c.drops),
        }
