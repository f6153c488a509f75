"""The forwarding loop: reads frames from the RX ring, answers ARP and ping for our addresses and
re-sends virtual-server traffic to the chosen target with only the Ethernet addresses rewritten.

The control plane never touches the loop's state directly: it installs a new immutable
`ForwardingTable` (a reference swap) and posts callables that run on the loop's thread between
frames, so flows, sessions and counters are only ever mutated by one thread.

Per packet state is two small `__slots__` records: a `Flow` (one per address and port pair, what
the fast path follows) and a `Session` (one per client and virtual server, what its new flows follow).
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dsrlb.dataplane.packet import arp_frame, fix_l4_checksum, icmp_echo_reply
from dsrlb.dataplane.ring import FRAME_SIZE, TP_STATUS_CSUMNOTREADY, TX_DATA_OFFSET, PacketRing

log = logging.getLogger("dsrlb.dataplane")

RX_HDR = struct.Struct("<IIIH")  # tpacket2_hdr: status, len, snaplen, mac offset
# Ethernet + IPv4 header without options + the first 4 bytes after it (ports when IHL is 5)
ETH_IPV4 = struct.Struct("!6s6sHBBHHHBBH4s4sHH")
# what the fast path checks: destination MAC, ethertype, version+IHL, total length, fragment, protocol
FAST = struct.Struct("!6s6xHBxH2xHxB")
ARP = struct.Struct("!H6s4s6x4s")  # op, sender MAC, sender IP, (target MAC), target IP
PORTS = struct.Struct("!HH")
STATUS = struct.Struct("<I")
TX_HDR = struct.Struct("<II")  # tp_status, tp_len
ZERO = b"\x00\x00\x00\x00"
SWEEP_INTERVAL = 1.0
BATCH = 64


class Selector(Protocol):
    """What the loop needs of `dsrlb.selection.Selector`."""

    def pick(self, client: bytes, load: dict[int, int] | None = None) -> int | None: ...


class Session:
    """A client's target at one virtual server."""

    __slots__ = ("target", "seen")

    def __init__(self, target: int, seen: float) -> None:
        self.target = target
        self.seen = seen  # monotonic time of its last packet, brought forward by the sweep


class Flow:
    """What the fast path needs to forward a packet of a known flow without looking anything up.

    Everything but `seen` is fixed when the slow path records the flow; a flow whose `table` is not
    the current one goes through the slow path again (which keeps its target where still allowed).
    No `__init__`: `Forwarder._target` sets the fields one by one (on Python 3.11 a class call through
    `__init__` made the slow path 7% slower than building the list this record replaced)."""

    __slots__ = (
        "target",
        "seen",
        "head",
        "counter",
        "proto",
        "state",
        "table",
        "draining",
        "timeout",
        "shortest",
    )
    target: int
    seen: float  # monotonic time of its last packet
    head: bytes  # the new Ethernet addresses: the target's MAC and ours
    counter: list[int]  # [packets, bytes] forwarded to the target for this virtual server
    proto: int  # IP protocol
    state: ServiceState  # of its virtual server
    table: ForwardingTable  # the table it was checked against
    draining: bool  # its target takes no new connection: a TCP SYN must not follow it
    timeout: float  # idle timeout
    shortest: int  # shortest IP packet with a whole transport header


@dataclass
class ServiceState:
    """Per virtual server state that outlives table swaps: sessions (client -> Session), sessions per
    target and counters."""

    sessions: dict[bytes, Session] = field(default_factory=dict)
    load: collections.Counter = field(default_factory=collections.Counter)
    counters: collections.defaultdict[int, list[int]] = field(
        default_factory=lambda: collections.defaultdict(lambda: [0, 0])
    )  # target -> [packets, bytes] forwarded for this server


@dataclass(frozen=True)
class Service:
    selector: Selector
    active: frozenset[int]  # may take new connections
    forward: dict[int, bytes]  # target -> new Ethernet addresses (its MAC + ours), active and draining
    timeout: float  # session idle timeout
    state: ServiceState


@dataclass(frozen=True)
class ForwardingTable:
    """Everything the loop needs, built by the control plane and installed as a whole."""

    services: dict[tuple[bytes, int, int], Service]  # (VIP, IP protocol, port)
    answer: frozenset[bytes]  # addresses we answer ARP and ping for (empty while VRRP backup)
    neighbors: frozenset[bytes]  # addresses whose MAC we learn from ARP (the targets)
    # setting `drainidle`: a flow with a packet this recent counts as an open connection, and a draining
    # target without any as drained
    drainidle: float = 5.0


@dataclass
class Stats:
    rx: int = 0
    tx: int = 0
    forwarded: int = 0
    arp_replies: int = 0
    icmp_replies: int = 0
    checksums_fixed: int = 0
    drops: collections.Counter = field(default_factory=collections.Counter)


EMPTY = ForwardingTable({}, frozenset(), frozenset())
NEW_FLOW = object.__new__


class Forwarder:
    def __init__(self, ring: PacketRing) -> None:
        self.ring = ring
        self.table = EMPTY
        self.stats = Stats()
        self.neighbors: dict[bytes, tuple[bytes, float]] = {}  # IPv4 -> (MAC, last heard)
        # flow key: source and destination address and port, the 12 bytes at offset 26 of a frame whose
        # IPv4 header has no options
        self.flows: dict[bytes, Flow] = {}
        # target -> (flows with a packet in the last `drainidle` seconds, last packet)
        self.activity: dict[int, tuple[int, float]] = {}
        self.on_neighbor: Callable[[bytes], None] = lambda ip: None
        self.on_vrrp: Callable[[bytes], None] | None = None
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- control plane side -------------------------------------------------------------------
    def install(self, table: ForwardingTable) -> None:
        """Swap in a new table; the loop picks it up at its next frame."""
        self.table = table

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop's thread (between frames, or within 100 ms when idle)."""
        self._pending.append(fn)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dataplane", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)

    # --- loop side ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # the packet path must never die silently
            log.exception("forwarding loop failed")
            raise

    def _loop(self) -> None:
        """The packet path. Deliberately one flat function: in CPython every call, attribute lookup and
        mmap slice costs a measurable share of a frame's budget, so fields come from two struct
        unpacks, state lives in locals and the forwarding case is inlined."""
        ring = self.ring
        mm = ring.map
        mv = memoryview(mm)
        own = ring.mac
        max_frame = ring.max_frame
        nrx, ntx, tx_base = ring.rx_frames, ring.tx_frames, ring.tx_base
        rx_header = RX_HDR.unpack_from
        ipv4_header = ETH_IPV4.unpack_from
        fast_header = FAST.unpack_from
        ports = PORTS.pack
        status_of = STATUS.unpack_from
        ports_of = PORTS.unpack_from
        tx_header = TX_HDR.pack_into
        stats = self.stats
        drops = stats.drops
        pending = self._pending
        stop = self._stop.is_set
        monotonic = time.monotonic
        rx_slot = tx_slot = queued = 0
        rx = fwd = 0  # counted locally, added to stats every 256 frames and when idle
        now = monotonic()
        next_sweep = now + SWEEP_INTERVAL

        def send(frame: bytes) -> None:
            """Queue a frame we built ourselves (ARP and ICMP replies)."""
            nonlocal tx_slot, queued
            t = tx_base + tx_slot * FRAME_SIZE
            if status_of(mm, t)[0]:
                ring.flush()
                queued = 0
                if status_of(mm, t)[0]:
                    drops["tx_ring_full"] += 1
                    return
            mm[t + TX_DATA_OFFSET : t + TX_DATA_OFFSET + len(frame)] = frame
            tx_header(mm, t, 1, len(frame))
            tx_slot = tx_slot + 1 if tx_slot + 1 < ntx else 0
            queued += 1
            stats.tx += 1

        flows = self.flows
        frame_size, tx_data, csum_not_ready, batch, zero = (
            FRAME_SIZE,
            TX_DATA_OFFSET,
            TP_STATUS_CSUMNOTREADY,
            BATCH,
            ZERO,
        )
        table = self.table  # picked up again when idle and every 256 frames: a swap takes effect soon
        while True:
            h = rx_slot * frame_size
            status, length, snap, mac_off = rx_header(mm, h)
            if not status & 1:  # ring empty: flush, run control plane requests, sleep
                stats.rx += rx
                stats.tx += fwd
                stats.forwarded += fwd
                rx = fwd = 0
                if queued:
                    ring.flush()
                    queued = 0
                while pending:
                    pending.popleft()()
                if stop():
                    return
                ring.wait(100)
                now = monotonic()
                table = self.table
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
                continue
            rx += 1
            if rx == 256:  # under load the ring never empties: do the idle work here too
                stats.rx += rx
                stats.tx += fwd
                stats.forwarded += fwd
                rx = fwd = 0
                now = monotonic()
                while pending:
                    pending.popleft()()
                table = self.table
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
            f = h + mac_off
            head = None  # set when the frame is to be forwarded: the new Ethernet addresses
            # Fast path: a packet of a flow checked against the current table, in a well-formed frame.
            fl = flows.get(mm[f + 26 : f + 38]) if snap == length and 38 <= length <= max_frame else None
            if fl is not None and fl.table is table:
                dmac, etype, vihl, total, frag, proto = fast_header(mm, f)
                if (
                    dmac == own
                    and etype == 0x0800
                    and vihl == 0x45
                    and proto == fl.proto
                    and not frag & 0x3FFF
                    and fl.shortest <= total <= length - 14
                    # and not a TCP SYN to a draining target
                    and not (fl.draining and proto == 6 and mm[f + 47] & 0x12 == 0x02)
                ):
                    head, counter, ihl = fl.head, fl.counter, 20
                    fl.seen = now
            if head is None and (snap < length or length > max_frame or length < 38):
                drops["truncated" if snap < length else "oversize" if length > max_frame else "runt"] += 1
            elif head is None:  # slow path: parse, validate, select, record the flow
                (dmac, _, etype, vihl, _, total, _, frag, _, proto, _, src, dst, sport, dport) = ipv4_header(
                    mm, f
                )
                if etype == 0x0800:
                    n = f + 14
                    ihl = (vihl & 15) * 4
                    if proto == 112:  # VRRP adverts go to a multicast MAC; the control plane validates
                        if self.on_vrrp is None:
                            drops["vrrp_disabled"] += 1
                        else:
                            self.on_vrrp(mm[f : f + length])
                    elif dmac != own:
                        drops["not_for_us"] += 1
                    elif vihl >> 4 != 4 or ihl < 20:
                        drops["bad_ip_header"] += 1
                    elif total < ihl or 14 + total > length:
                        drops["bad_ip_length"] += 1
                    elif proto == 6 or proto == 17:
                        l4 = n + ihl
                        if ihl != 20:
                            sport, dport = ports_of(mm, l4)
                        if frag & 0x3FFF:
                            drops["fragment"] += 1
                        elif total - ihl < (20 if proto == 6 else 8):
                            drops["truncated_l4"] += 1
                        else:
                            svc = table.services.get((dst, proto, dport))
                            if svc is None:
                                drops["no_service"] += 1
                            else:
                                syn = proto == 6 and mm[l4 + 13] & 0x12 == 0x02
                                key = src + dst + ports(sport, dport)
                                t = self._target(table, svc, src, key, syn, proto, now)
                                if t is None:
                                    drops["no_target"] += 1
                                else:
                                    head, counter = svc.forward[t], svc.state.counters[t]
                    elif proto == 1:
                        if dst in table.answer:
                            reply = icmp_echo_reply(mm[f : f + 14 + total], 14, 14 + total, own)
                            if reply is None:
                                drops["icmp_not_echo"] += 1
                            else:
                                send(reply)
                                stats.icmp_replies += 1
                        else:
                            drops["icmp_not_ours"] += 1
                    else:
                        drops["ip_protocol"] += 1
                elif etype == 0x0806 and length >= 42:
                    op, sha, spa, tpa = ARP.unpack_from(mm, f + 20)
                    if spa in table.neighbors:
                        known = self.neighbors.get(spa)
                        self.neighbors[spa] = (sha, now)
                        if known is None or known[0] != sha:
                            self.on_neighbor(spa)
                    if op == 1 and tpa in table.answer and spa != tpa:
                        send(arp_frame(2, own, tpa, sha, spa))
                        stats.arp_replies += 1
                else:
                    drops["ethertype"] += 1
            if head is not None:  # forward: copy the frame to the TX ring with new Ethernet addresses
                end = 14 + total
                x = tx_base + tx_slot * frame_size
                if status_of(mm, x)[0] and (ring.flush() or status_of(mm, x)[0]):
                    drops["tx_ring_full"] += 1
                else:
                    d = x + tx_data
                    mm[d : d + 12] = head  # the only change
                    mm[d + 12 : d + end] = mv[f + 12 : f + end]
                    if status & csum_not_ready:
                        fix_l4_checksum(mv, d + 14, d + 14 + ihl, d + end)
                        stats.checksums_fixed += 1
                    tx_header(mm, x, 1, end)
                    tx_slot = tx_slot + 1 if tx_slot + 1 < ntx else 0
                    queued += 1
                    if queued >= batch:
                        ring.flush()
                        queued = 0
                    fwd += 1
                    counter[0] += 1
                    counter[1] += end
            mm[h : h + 4] = zero  # hand the slot back to the kernel
            rx_slot = rx_slot + 1 if rx_slot + 1 < nrx else 0

    def _target(
        self, table: ForwardingTable, svc: Service, src: bytes, key: bytes, syn: bool, proto: int, now: float
    ) -> int | None:
        """The slow path's choice for a packet, recorded as a flow the fast path can follow.

        A known flow keeps its target (also a draining one) unless a new TCP connection starts; a new
        flow follows the client's session unless the session's target may not take it."""
        fl = self.flows.get(key)
        state = svc.state
        t = None
        if fl is not None and fl.state is state:
            t = fl.target
            if t not in svc.forward or (syn and t not in svc.active):
                t = None
        if t is None:
            t = self._new_flow(svc, src, syn or proto == 17, now)
            if t is None:
                return None
        fl = self.flows[key] = NEW_FLOW(Flow)
        fl.target = t
        fl.seen = now
        fl.head = svc.forward[t]
        fl.counter = state.counters[t]
        fl.proto = proto
        fl.state = state
        fl.table = table
        fl.draining = t not in svc.active
        fl.timeout = svc.timeout
        fl.shortest = 40 if proto == 6 else 28  # IP header + TCP or UDP header
        return t

    def _new_flow(self, svc: Service, src: bytes, new_conn: bool, now: float) -> int | None:
        """Target for a flow we have no usable record of: the client's session, unless its target may
        not take this flow, else a fresh pick; the session follows the pick."""
        state = svc.state
        session = state.sessions.get(src)
        t = session.target if session is not None else None
        if t is None or not (t in svc.active or (not new_conn and t in svc.forward)):
            t = svc.selector.pick(src, state.load)
            if t is None:
                return None
            if session is None:
                session = state.sessions[src] = Session(t, now)
            else:
                state.load[session.target] -= 1
                session.target = t
            state.load[t] += 1
        session.seen = now
        return t

    def _sweep(self, now: float) -> None:
        """Expire idle flows and sessions (a session lives as long as any of its flows) and count
        each target's open connections: flows with a packet in the last `drainidle` seconds."""
        flows = self.flows
        for key in [k for k, fl in flows.items() if fl.seen < now - fl.timeout]:
            del flows[key]
        activity: dict[int, list] = {}
        recent = now - self.table.drainidle
        for key, fl in flows.items():
            t, seen = fl.target, fl.seen
            session = fl.state.sessions.get(key[:4])
            if session is not None and session.seen < seen:
                session.seen = seen
            a = activity.setdefault(t, [0, 0.0])
            if seen >= recent:
                a[0] += 1
            if seen > a[1]:
                a[1] = seen
        for svc in self.table.services.values():
            state = svc.state
            limit = now - svc.timeout
            for src in [c for c, s in state.sessions.items() if s.seen < limit]:
                state.load[state.sessions.pop(src).target] -= 1
        self.activity = {t: (a[0], a[1]) for t, a in activity.items()}
