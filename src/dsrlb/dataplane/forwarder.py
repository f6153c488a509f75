"""The forwarding loop: reads frames from the RX ring, answers ARP and ping for our addresses and
re-sends virtual-server traffic to the chosen target with only the Ethernet addresses rewritten.

The control plane never touches the loop's state directly: it installs a new immutable
`ForwardingTable` (a reference swap) and posts callables that run on the loop's thread between
frames, so sessions and counters are only ever mutated by one thread.
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


@dataclass
class ServiceState:
    """Per virtual server state that outlives table swaps: sessions (client -> [target, last seen]),
    flows ((client, source port) -> [target, last seen]) and sessions per target."""

    sessions: dict[bytes, list] = field(default_factory=dict)
    flows: dict[tuple[bytes, int], list] = field(default_factory=dict)
    load: collections.Counter = field(default_factory=collections.Counter)
    counters: list[int] = field(default_factory=lambda: [0, 0])  # packets, bytes


@dataclass(frozen=True)
class Service:
    server_id: int
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
    generation: int = 0
    recent: float = 5.0  # a flow with a packet this recent counts as an open connection


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


class Forwarder:
    def __init__(self, ring: PacketRing) -> None:
        self.ring = ring
        self.table = EMPTY
        self.stats = Stats()
        self.targets: collections.defaultdict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
        self.neighbors: dict[bytes, tuple[bytes, float]] = {}  # IPv4 -> (MAC, last heard)
        self.activity: dict[int, tuple[int, float]] = {}  # target -> (recent flows, last packet)
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
        status_of = STATUS.unpack_from
        ports_of = PORTS.unpack_from
        tx_header = TX_HDR.pack_into
        stats = self.stats
        drops = stats.drops
        tcount = self.targets
        pending = self._pending
        stop = self._stop.is_set
        monotonic = time.monotonic
        rx_slot = tx_slot = queued = 0
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

        while True:
            h = rx_slot * FRAME_SIZE
            status, length, snap, mac_off = rx_header(mm, h)
            if not status & 1:  # ring empty: flush, run control plane requests, sleep
                if queued:
                    ring.flush()
                    queued = 0
                while pending:
                    pending.popleft()()
                if stop():
                    return
                ring.wait(100)
                now = monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
                continue
            stats.rx += 1
            if stats.rx & 255 == 0:  # under load the ring never empties: do the idle work here too
                now = monotonic()
                while pending:
                    pending.popleft()()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
            table = self.table
            f = h + mac_off
            if snap < length or length > max_frame or length < 38:
                drops["truncated" if snap < length else "oversize" if length > max_frame else "runt"] += 1
            else:
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
                                # flows keep their target (also a draining one) unless a new TCP
                                # connection starts; anything else goes through the session table
                                key = (src, sport)
                                syn = proto == 6 and mm[l4 + 13] & 0x12 == 0x02
                                fl = svc.state.flows.get(key)
                                head = None
                                if fl is not None:
                                    t = fl[0]
                                    head = svc.forward.get(t)
                                    if head is not None and (not syn or t in svc.active):
                                        fl[1] = now
                                    else:
                                        head = None
                                if head is None:
                                    t = self._new_flow(svc, src, key, syn or proto == 17, now)
                                    head = svc.forward.get(t) if t is not None else None
                                if head is None:
                                    drops["no_target"] += 1
                                else:
                                    end = 14 + total
                                    x = tx_base + tx_slot * FRAME_SIZE
                                    if status_of(mm, x)[0] and (ring.flush() or status_of(mm, x)[0]):
                                        drops["tx_ring_full"] += 1
                                    else:
                                        d = x + TX_DATA_OFFSET
                                        mm[d : d + 12] = head  # the only change: Ethernet addresses
                                        mm[d + 12 : d + end] = mv[f + 12 : f + end]
                                        if status & TP_STATUS_CSUMNOTREADY:
                                            fix_l4_checksum(mv, d + 14, d + 14 + ihl, d + end)
                                            stats.checksums_fixed += 1
                                        tx_header(mm, x, 1, end)
                                        tx_slot = tx_slot + 1 if tx_slot + 1 < ntx else 0
                                        queued += 1
                                        if queued >= BATCH:
                                            ring.flush()
                                            queued = 0
                                        stats.tx += 1
                                        stats.forwarded += 1
                                        c = svc.state.counters
                                        c[0] += 1
                                        c[1] += end
                                        c = tcount[t]
                                        c[0] += 1
                                        c[1] += end
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
            mm[h : h + 4] = ZERO  # hand the slot back to the kernel
            rx_slot = rx_slot + 1 if rx_slot + 1 < nrx else 0

    def _new_flow(
        self, svc: Service, src: bytes, key: tuple[bytes, int], new_conn: bool, now: float
    ) -> int | None:
        """Target for a flow we have no (usable) record of: the client's session, unless its target
        may not take this flow, else a fresh pick; the session follows the pick."""
        state = svc.state
        session = state.sessions.get(src)
        t = session[0] if session is not None else None
        if t is None or not (t in svc.active or (not new_conn and t in svc.forward)):
            t = svc.selector.pick(src, state.load)
            if t is None:
                return None
            if session is None:
                session = state.sessions[src] = [t, now]
            else:
                state.load[session[0]] -= 1
                session[0] = t
            state.load[t] += 1
        session[1] = now
        state.flows[key] = [t, now]
        return t

    def _sweep(self, now: float) -> None:
        """Expire idle flows and sessions (a session lives as long as any of its flows) and count
        each target's open connections: flows with a packet in the last `recent` seconds."""
        activity: dict[int, list] = {}
        recent = now - self.table.recent
        for svc in self.table.services.values():
            state = svc.state
            limit = now - svc.timeout
            flows = state.flows
            sessions = state.sessions
            for key in [k for k, fl in flows.items() if fl[1] < limit]:
                del flows[key]
            for (src, _), (t, seen) in flows.items():
                s = sessions.get(src)
                if s is not None and s[1] < seen:
                    s[1] = seen
                a = activity.setdefault(t, [0, 0.0])
                if seen >= recent:
                    a[0] += 1
                if seen > a[1]:
                    a[1] = seen
            for src in [c for c, s in sessions.items() if s[1] < limit]:
                state.load[sessions.pop(src)[0]] -= 1
        self.activity = {t: (a[0], a[1]) for t, a in activity.items()}
