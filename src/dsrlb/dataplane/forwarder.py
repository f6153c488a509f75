"""The forwarding loop: reads frames from the RX ring, answers ARP, neighbour solicitations and ping
for our addresses and re-sends virtual-server traffic (IPv4 and IPv6) to the chosen target with only the
Ethernet addresses rewritten.

The control plane never touches the loop's state directly: it installs a new immutable
`ForwardingTable` (a reference swap) and posts callables that run on the loop's thread between
frames, so flows, sessions and counters are only ever mutated by one thread.

Per packet state is two small `__slots__` records: a `Flow` (one per address and port pair, what
the fast path follows) and a `Session` (one per client and virtual server, what its new flows follow).

Both tables are bounded (`set flows`, `set sessions`): beyond capacity a packet of a new flow is not
recorded and follows the stateless choice (its client's session, else the selector's pick on the
client address), so nothing is dropped because a table is full. A flow that has seen one packet only
(a TCP SYN, one UDP datagram) is embryonic and expires after `set embryonic` seconds; a session lives
as long as any of its flows, so a client that never completed anything leaves with its flow. Expiry
runs in small steps on a timer wheel (one bucket per second) with a budget per step, and the per-target
activity count is taken by a census in budgeted steps too: no step stalls the packet path for long.
"""

from __future__ import annotations

import collections
import errno
import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dsrlb.dataplane.packet import (
    ALL_NODES,
    ALL_NODES_MAC,
    NA,
    SOLICITED,
    UNSPECIFIED,
    arp_frame,
    fix_l4_checksum,
    icmp6_echo_reply,
    icmp_echo_reply,
    multicast_mac,
    neighbor_advertisement,
    neighbor_discovery,
    solicited_node,
)
from dsrlb.dataplane.ring import (
    FRAME_SIZE,
    LINK_ERRORS,
    TP_STATUS_CSUMNOTREADY,
    TX_DATA_OFFSET,
    Insn,
    PacketRing,
    link_up,
)

log = logging.getLogger("dsrlb.dataplane")

RX_HDR = struct.Struct("<IIIH")  # tpacket2_hdr: status, len, snaplen, mac offset
# Ethernet + IPv4 header without options + the first 4 bytes after it (ports when IHL is 5)
ETH_IPV4 = struct.Struct("!6s6sHBBHHHBBH4s4sHH")
# what the fast path checks: destination MAC, ethertype, version+IHL, total length, fragment, protocol
FAST = struct.Struct("!6s6xHBxH2xHxB")
ARP = struct.Struct("!H6s4s6s4s")  # op, sender MAC, sender IP, target MAC, target IP
# IPv6 header (version, class and flow label; payload length; next header; hop limit; addresses) + ports
IPV6 = struct.Struct("!IHBB16s16sHH")
# next headers that are extension headers (RFC 8200 4, IANA's list) other than the fragment header (44):
# the transport header is not where the loop looks for it, so such packets are dropped
IPV6_EXT_HEADERS = frozenset({0, 43, 51, 60, 135, 139, 140, 253, 254})
PORTS = struct.Struct("!HH")
STATUS = struct.Struct("<I")
TX_HDR = struct.Struct("<II")  # tp_status, tp_len
ZERO = b"\x00\x00\x00\x00"
SWEEP_INTERVAL = 1.0  # seconds between activity censuses
EXPIRE_BUDGET = 512  # wheel entries examined per expiry step (1-3 us each, with cache misses)
CENSUS_BUDGET = 8192  # flows counted per census step (about 0.2 us each)
BORN = 1e-6  # a new flow's `seen` is this much older than its `born`: a second packet makes it newer
MAC_HOLD = 1.0  # seconds a target's learned MAC stays before another change is taken
LINK_POLL = 0.1  # seconds between looks at a link that went down
BATCH = 64
SESSION_LOG = 65536  # new and moved sessions waiting for bngsync to send them; beyond, counted and dropped


class Selector(Protocol):
    """What the loop needs of `dsrlb.selection.Selector`. `stateless`: the pick depends on the client
    address only, so an existing session is not needed to keep a client on its target."""

    stateless: bool

    def pick(self, client: bytes, load: dict[int, int] | None = None) -> int | None: ...


class Session:
    """A client's target at one virtual server; it lives as long as any of its flows."""

    __slots__ = ("target", "seen", "flows")

    def __init__(self, target: int, seen: float) -> None:
        self.target = target
        self.seen = seen  # monotonic time of its last packet, brought forward by the census
        self.flows = 0  # recorded flows that follow it: the last one to expire takes it along


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
        "key",
        "born",
        "session",
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
    key: bytes  # its key in `Forwarder.flows`
    born: float  # monotonic time of its first packet; embryonic while `seen` is older (see BORN)
    session: Session  # the session it counts for


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
    # the peer's sessions that bngsync handed over when this node took over (client -> (target, expiry)):
    # a client without a session here follows its entry once, while that target may take the flow. It
    # comes with the table, so no packet is forwarded by a table without it; only the loop changes it.
    synced: dict[bytes, tuple[int, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ForwardingTable:
    """Everything the loop needs, built by the control plane and installed as a whole."""

    # addresses are packed: 4 bytes IPv4, 16 bytes IPv6
    services: dict[tuple[bytes, int, int], Service]  # (VIP, IP protocol, port)
    # addresses we answer ARP, neighbour solicitations and ping for (empty while VRRP backup)
    answer: frozenset[bytes]
    # addresses whose MAC we learn from ARP and neighbour advertisements (the targets)
    neighbors: frozenset[bytes]
    # setting `drainidle`: a flow with a packet this recent counts as an open connection, and a draining
    # target without any as drained
    drainidle: float = 5.0
    # settings `flows`, `sessions`, `embryonic` (defaults as in dsrlb.vocabulary, which this layer
    # does not import): capacity of the flow table and of the sessions of all virtual servers together,
    # idle timeout of a flow that has seen one packet
    flows: int = 262144
    sessions: int = 262144
    embryonic: float = 5.0
    # addresses we answer ARP and neighbour solicitations for, None: those of `answer`. HA mode bgp
    # answers none: the router reaches the VIPs by routes to the balancers, and an answer would pull
    # traffic past ECMP.
    arp: frozenset[bytes] | None = None


@dataclass
class Stats:
    rx: int = 0
    tx: int = 0
    forwarded: int = 0
    arp_replies: int = 0
    nd_replies: int = 0  # neighbour advertisements answering solicitations for our IPv6 addresses
    icmp_replies: int = 0  # ICMP and ICMPv6 echo replies
    checksums_fixed: int = 0
    link_down: int = 0  # times the link went down or away (or its MTU changed) and the ring was reopened
    tx_errors: int = 0  # sends refused by a busy device (ENOBUFS); the frames stay queued for the next
    flows: int = 0  # flow table size (updated by the expiry steps)
    sessions: int = 0  # sessions of all virtual servers (updated by the expiry steps)
    flows_overflow: int = 0  # packets of new flows not recorded because the flow table was full
    sessions_overflow: int = 0  # packets of new clients not recorded because the session table was full
    expired_embryonic: int = 0  # flows that expired after their first packet
    expired: int = 0  # flows that expired idle after more than one packet
    # learned target MACs that changed (ARP replies, solicited neighbour advertisements to us)
    arp_changed: int = 0
    arp_ignored: int = 0  # target MAC changes not taken: not a reply to us, or within MAC_HOLD of the last
    synced_followed: int = 0  # new sessions that took the target the peer's session had (bngsync)
    session_log_overflow: int = 0  # new or moved sessions bngsync did not get: its log was full
    drops: collections.Counter = field(default_factory=collections.Counter)


EMPTY = ForwardingTable({}, frozenset(), frozenset())
NEW_FLOW = object.__new__


class Forwarder:
    def __init__(self, ring: PacketRing) -> None:
        self.ring = ring
        self.table = EMPTY
        self.stats = Stats()
        self.neighbors: dict[bytes, tuple[bytes, float]] = {}  # IPv4 or IPv6 -> (MAC, last heard)
        # flow key: source and destination address and port, the 12 bytes at offset 26 of a frame whose
        # IPv4 header has no options, the 36 bytes at offset 22 of an IPv6 frame
        self.flows: dict[bytes, Flow] = {}
        # target -> (flows with a packet in the last `drainidle` seconds, last packet), from the census
        self.activity: dict[int, tuple[int, float]] = {}
        self.session_count = 0  # sessions of all virtual servers
        # expiry: second -> flows to look at once monotonic time reaches it; every recorded flow is in
        # exactly one bucket, at its earliest possible expiry (rounded up)
        self._wheel: dict[int, list[Flow]] = {}
        self._cursor = int(time.monotonic())  # the next bucket to empty
        self._census: list[int] = []  # wheel buckets still to count in the running census, last first
        self._census_pos = 0  # how far the census got in the last of them
        self._counts: dict[int, list] = {}  # target -> [recent flows, last packet] of the running census
        self._census_at = 0.0  # when the next census starts
        self._mac_changed: dict[bytes, float] = {}  # target address -> when its MAC was last learned
        self.on_neighbor: Callable[[bytes], None] = lambda ip: None
        self.on_vrrp: Callable[[bytes], None] | None = None
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ring_lock = threading.Lock()  # the loop thread replaces `ring` while the control plane uses it
        self.heartbeat = 0  # bumped by the loop at least every 100 ms while it runs: the watchdog reads it
        self.on_reopen: Callable[[], None] = lambda: None  # the ring was reopened after the link came back
        self.on_failure: Callable[[], None] = lambda: None  # the loop died: the process must end
        # bngsync on: (state, client, target) of every new or moved session, for the control plane to send
        self.session_log: collections.deque[tuple[ServiceState, bytes, int]] | None = None

    # --- control plane side -------------------------------------------------------------------
    def install(self, table: ForwardingTable) -> None:
        """Swap in a new table; the loop picks it up at its next frame."""
        self.table = table

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop's thread (between frames, or within 100 ms when idle)."""
        self._pending.append(fn)

    def attach_filter(self, program: list[Insn]) -> None:
        """Install a BPF filter on the current ring; a ring opened later gets it too."""
        with self._ring_lock:
            self.ring.attach_filter(program)

    def kernel_drops(self) -> int:
        """Frames the kernel dropped on a full RX ring since the last call."""
        with self._ring_lock:
            return self.ring.kernel_drops()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dataplane", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)

    # --- loop side ----------------------------------------------------------------------------
    def _run(self) -> None:
        """The loop thread. A link that goes away is waited for and the ring reopened; any other error
        is a bug and ends the process through `on_failure` (systemd restarts it, `dsrlb resign` runs):
        a master whose packet path is dead must not keep advertising."""
        try:
            while True:
                try:
                    self._loop()
                    return
                except OSError as err:
                    if err.errno not in LINK_ERRORS:
                        raise
                    self.stats.link_down += 1
                    log.warning("%s: %s: reopening when the link is up", self.ring.ifname, err.strerror)
                # out of the except block: the failed loop's frame, and its view of the old ring, are gone
                if not self._reopen():
                    return
        except Exception:  # the packet path must never die silently
            log.exception("forwarding loop failed")
            self.on_failure()

    def _reopen(self) -> bool:
        """Wait until the link is up, then replace the ring; False when stopped meanwhile. Control plane
        requests still run, and the heartbeat goes on: a link that is down is no reason to restart."""
        delay = LINK_POLL
        while not self._stop.wait(delay):
            self.heartbeat += 1
            while self._pending:
                self._pending.popleft()()
            if not link_up(self.ring.ifname):
                continue
            try:
                with self._ring_lock:
                    old, self.ring = self.ring, self.ring.reopen()
            except OSError as err:  # gone again, or renamed meanwhile: try again, less often
                log.warning("%s: cannot reopen: %s", self.ring.ifname, err.strerror or err)
                delay = min(2 * delay, 1.0)
                continue
            old.close()
            log.info("%s: link up, packet ring reopened", self.ring.ifname)
            self.on_reopen()
            return True
        return False

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
        ipv6_header = IPV6.unpack_from
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

        def flush() -> None:
            """Send the queued TX slots; a busy device leaves them queued for the next try."""
            nonlocal queued
            try:
                ring.flush()
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                stats.tx_errors += 1
            else:
                queued = 0

        def send(frame: bytes) -> None:
            """Queue a frame we built ourselves (ARP, neighbour advertisements and ICMP replies)."""
            nonlocal tx_slot, queued
            t = tx_base + tx_slot * FRAME_SIZE
            if status_of(mm, t)[0]:
                flush()
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
                    flush()
                while pending:
                    pending.popleft()()
                if stop():
                    return
                self.heartbeat += 1
                ring.wait(100 if next_sweep > now else 0)  # expiry work left: only a look
                now = monotonic()
                table = self.table
                if now >= next_sweep:
                    next_sweep = self._sweep(now)
                continue
            rx += 1
            if rx == 256:  # under load the ring never empties: do the idle work here too
                stats.rx += rx
                stats.tx += fwd
                stats.forwarded += fwd
                rx = fwd = 0
                self.heartbeat += 1
                now = monotonic()
                while pending:
                    pending.popleft()()
                table = self.table
                if now >= next_sweep:
                    next_sweep = self._sweep(now)
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
                    op, sha, spa, tha, tpa = ARP.unpack_from(mm, f + 20)
                    if spa in table.neighbors:
                        self._heard(spa, sha, op == 2 and tha == own, now)
                    if op == 1 and tpa in (table.answer if table.arp is None else table.arp) and spa != tpa:
                        send(arp_frame(2, own, tpa, sha, spa))
                        stats.arp_replies += 1
                elif etype == 0x86DD and length < 58:  # IPv6 header and ports
                    drops["runt"] += 1
                elif etype == 0x86DD:  # IPv6: no fast path of its own, a flow check once the header is valid
                    vtf, plen, nh, _, src, dst, _, dport = ipv6_header(mm, f + 14)
                    total = 40 + plen
                    if nh == 112:  # VRRP adverts for IPv6 go to ff02::12, the control plane validates
                        if self.on_vrrp is None:
                            drops["vrrp_disabled"] += 1
                        else:
                            self.on_vrrp(mm[f : f + length])
                    elif vtf >> 28 != 6:
                        drops["bad_ip_header"] += 1
                    elif 14 + total > length:
                        drops["bad_ip_length"] += 1
                    elif nh == 58:  # neighbour solicitations come to a multicast MAC: no check of ours yet
                        reply = self._icmp6(mm[f : f + 14 + total], table, own, now)
                        if reply is not None:
                            send(reply)
                    elif dmac != own:
                        drops["not_for_us"] += 1
                    elif nh == 6 or nh == 17:
                        if plen < (20 if nh == 6 else 8):
                            drops["truncated_l4"] += 1
                        else:
                            ihl = 40
                            syn = nh == 6 and mm[f + 67] & 0x12 == 0x02
                            key = mm[f + 22 : f + 58]
                            fl = flows.get(key)
                            # what the fast path checks beyond the header: a flow of the current table
                            if (
                                fl is not None
                                and fl.table is table
                                and fl.proto == nh
                                and not (fl.draining and syn)
                            ):
                                head, counter = fl.head, fl.counter
                                fl.seen = now
                            else:
                                svc = table.services.get((dst, nh, dport))
                                if svc is None:
                                    drops["no_service"] += 1
                                else:
                                    t = self._target(table, svc, src, key, syn, nh, now)
                                    if t is None:
                                        drops["no_target"] += 1
                                    else:
                                        head, counter = svc.forward[t], svc.state.counters[t]
                    elif nh == 44:
                        drops["fragment"] += 1
                    elif nh in IPV6_EXT_HEADERS:
                        drops["ipv6_ext_header"] += 1
                    else:
                        drops["ip_protocol"] += 1
                else:
                    drops["ethertype"] += 1
            if head is not None:  # forward: copy the frame to the TX ring with new Ethernet addresses
                end = 14 + total
                x = tx_base + tx_slot * frame_size
                if status_of(mm, x)[0] and (flush() or status_of(mm, x)[0]):
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
                        flush()
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
        flow follows the client's session unless the session's target may not take it. When the flow
        or the session table is full, a new flow is not recorded and follows the stateless choice."""
        flows = self.flows
        fl = flows.get(key)
        state = svc.state
        if fl is not None and fl.state is state:  # a further packet: the flow is no longer embryonic
            t = fl.target
            if t not in svc.forward or (syn and t not in svc.active):
                t = self._follow(svc, fl.session, src, syn or proto == 17)
                if t is None:
                    return None
            fl.seen = now
        else:
            if fl is not None:  # recorded for another virtual server (same addresses and ports)
                self._forget_flow(fl)
            session = state.sessions.get(src)
            if session is None:
                if len(flows) >= table.flows or self.session_count >= table.sessions:
                    return self._overflow(table, svc, None, src, syn or proto == 17)
                t = self._synced(svc, src, syn or proto == 17, now) if svc.synced else None
                if t is None:
                    t = svc.selector.pick(src, state.load)
                    if t is None:
                        return None
                session = state.sessions[src] = Session(t, now)
                state.load[t] += 1
                self.session_count += 1
                if self.session_log is not None:
                    self._log(state, src, t)
            else:
                if len(flows) >= table.flows:
                    return self._overflow(table, svc, session, src, syn or proto == 17)
                t = session.target
                if not (t in svc.active or (not (syn or proto == 17) and t in svc.forward)):
                    t = self._follow(svc, session, src, True)
                    if t is None:
                        return None
                session.seen = now
            fl = flows[key] = NEW_FLOW(Flow)
            fl.key = key
            fl.born = now
            fl.seen = now - BORN
            fl.session = session
            session.flows += 1
            due = max(int(now + table.embryonic) + 1, self._cursor)  # tests move time on by leaps
            bucket = self._wheel.get(due)
            if bucket is None:
                bucket = self._wheel[due] = []
            bucket.append(fl)
        fl.target = t
        fl.head = svc.forward[t]
        fl.counter = state.counters[t]
        fl.proto = proto
        fl.state = state
        fl.table = table
        fl.draining = t not in svc.active
        fl.timeout = svc.timeout
        fl.shortest = 40 if proto == 6 else 28  # IPv4 header + TCP or UDP header (IPv6: not looked at)
        return t

    def _follow(self, svc: Service, session: Session, src: bytes, new_conn: bool) -> int | None:
        """Target of a client's session for a flow, unless it may not take this flow; then a fresh
        pick, and the session follows it."""
        t = session.target
        if t in svc.active or (not new_conn and t in svc.forward):
            return t
        state = svc.state
        t = svc.selector.pick(src, state.load)
        if t is None:
            return None
        state.load[session.target] -= 1
        session.target = t
        state.load[t] += 1
        if self.session_log is not None:
            self._log(state, src, t)
        return t

    def _synced(self, svc: Service, src: bytes, new_conn: bool, now: float) -> int | None:
        """The target of the peer's session for a client new here, if it may take this flow (used once)."""
        hint = svc.synced.pop(src, None)
        if hint is None or hint[1] < now:
            return None
        t = hint[0]
        if t in svc.active or (not new_conn and t in svc.forward):
            self.stats.synced_followed += 1
            return t
        return None

    def _log(self, state: ServiceState, src: bytes, t: int) -> None:
        log = self.session_log
        assert log is not None
        if len(log) >= SESSION_LOG:
            self.stats.session_log_overflow += 1
        else:
            log.append((state, src, t))

    def _overflow(
        self, table: ForwardingTable, svc: Service, session: Session | None, src: bytes, new_conn: bool
    ) -> int | None:
        """Target of a new flow that cannot be recorded (a table is full): the client's session where it
        may take the flow, else the selector's pick on the client address (a hash over the active targets
        for methods whose pick depends on more than the client), so every packet of it goes the same way."""
        if len(self.flows) >= table.flows:
            self.stats.flows_overflow += 1
        else:
            self.stats.sessions_overflow += 1
        if session is not None:
            t = session.target
            if t in svc.active or (not new_conn and t in svc.forward):
                return t
        selector = svc.selector
        if selector.stateless:
            return selector.pick(src)
        active = sorted(svc.active)
        return active[zlib.crc32(src) % len(active)] if active else None

    def _forget_flow(self, fl: Flow) -> None:
        """Remove a flow; its session goes with the last of its flows. Its wheel entry goes stale."""
        del self.flows[fl.key]
        session = fl.session
        session.flows -= 1
        if not session.flows:
            state = fl.state
            src = fl.key[: (len(fl.key) - 4) // 2]  # the key: source, destination, ports
            if state.sessions.get(src) is session:
                del state.sessions[src]
                state.load[session.target] -= 1
            self.session_count -= 1

    def _sweep(self, now: float) -> float:
        """One expiry step and one census step, each within a budget; returns when to call again (now,
        when work is left). Expiry empties the wheel's due buckets: a flow that has seen one packet
        expires `embryonic` seconds after it, others `timeout` after their last packet, and a flow that
        is not due yet moves to the bucket of its new deadline. The census counts each target's open
        connections (flows with a packet in the last `drainidle` seconds) and brings session times
        forward, bucket by bucket (at most once a second): every flow is in one bucket, so none is missed,
        and one that moves to a later bucket meanwhile may count twice."""
        table = self.table
        flows, wheel, embryonic = self.flows, self._wheel, table.embryonic
        budget = EXPIRE_BUDGET
        cursor = self._cursor
        stats = self.stats
        while cursor <= now and budget:
            bucket = wheel.get(cursor)
            while bucket and budget:
                budget -= 1
                fl = bucket.pop()
                if flows.get(fl.key) is not fl:
                    continue  # forgotten meanwhile
                if fl.seen < fl.born:  # embryonic
                    due = fl.born + embryonic
                    if due <= now:
                        stats.expired_embryonic += 1
                        self._forget_flow(fl)
                        continue
                else:
                    due = fl.seen + fl.timeout
                    if due <= now:
                        stats.expired += 1
                        self._forget_flow(fl)
                        continue
                wheel.setdefault(int(due) + 1, []).append(fl)
            if not bucket:
                wheel.pop(cursor, None)
                cursor += 1
        self._cursor = cursor
        stats.flows, stats.sessions = len(flows), self.session_count
        if not self._census and now >= self._census_at:
            self._census = sorted(wheel, reverse=True)
            self._census_pos, self._counts = 0, {}
            self._census_at = now + SWEEP_INTERVAL
        census = self._census
        if census:
            counts, recent, budget = self._counts, now - table.drainidle, CENSUS_BUDGET
            while census and budget:
                bucket = wheel.get(census[-1], ())
                start = self._census_pos
                chunk = bucket[start : start + budget]
                for fl in chunk:
                    seen = fl.seen
                    session = fl.session
                    if session.seen < seen:
                        session.seen = seen
                    a = counts.get(fl.target)
                    if a is None:
                        a = counts[fl.target] = [0, 0.0]
                    if seen >= recent:
                        a[0] += 1
                    if seen > a[1]:
                        a[1] = seen
                budget -= len(chunk)
                if start + len(chunk) >= len(bucket):
                    census.pop()
                    self._census_pos = 0
                else:
                    self._census_pos = start + len(chunk)
            if not census:
                self.activity = {t: (a[0], a[1]) for t, a in counts.items()}
        if self._census or (cursor <= now and wheel.get(cursor)):
            return now  # more to do: at the next chance
        return min(self._census_at, cursor)

    def _icmp6(self, frame: bytes, table: ForwardingTable, own: bytes, now: float) -> bytes | None:
        """The answer to an ICMPv6 packet, if any: a solicited neighbour advertisement for a solicitation of
        an address we answer for, an echo reply to a ping of one. Target MACs are learned from neighbour
        advertisements. Out of the loop's body: these frames are few, and neighbour discovery has many
        checks (RFC 4861 7.1)."""
        drops = self.stats.drops
        if len(frame) < 62:  # an ICMPv6 header
            drops["truncated_l4"] += 1
        elif frame[54] == 135 or frame[54] == 136:
            nd = neighbor_discovery(frame, 14, len(frame))
            if nd is None:
                drops["nd_invalid"] += 1
                return None
            kind, flags, target, mac = nd
            if kind == NA:
                if target in table.neighbors and mac is not None:
                    self._heard(target, mac, bool(flags & SOLICITED) and frame[:6] == own, now)
                return None
            if target not in (table.answer if table.arp is None else table.arp):
                return None  # as an ARP request for another address: not ours to answer
            if frame[:6] != own and frame[:6] != multicast_mac(solicited_node(target)):
                drops["not_for_us"] += 1
                return None
            self.stats.nd_replies += 1
            if frame[22:38] == UNSPECIFIED:  # duplicate address detection: defend to all nodes (7.2.4)
                return neighbor_advertisement(own, target, ALL_NODES, ALL_NODES_MAC, False)
            return neighbor_advertisement(own, target, frame[22:38], frame[6:12], True)
        elif frame[:6] != own:
            drops["not_for_us"] += 1
        elif frame[38:54] not in table.answer:
            drops["icmp_not_ours"] += 1
        else:
            reply = icmp6_echo_reply(frame, 14, len(frame), own)
            if reply is not None:
                self.stats.icmp_replies += 1
                return reply
            drops["icmp_not_echo"] += 1
        return None

    def _heard(self, ip: bytes, mac: bytes, reply: bool, now: float) -> None:
        """An ARP frame or neighbour advertisement from a target's address. Its MAC is learned and
        refreshed only from replies to us, and a known MAC changes at most once per MAC_HOLD: forged
        frames can neither re-point a target at will nor have the forwarding table rebuilt once per
        frame."""
        known = self.neighbors.get(ip)
        if known is not None and known[0] == mac:
            if reply:
                self.neighbors[ip] = (mac, now)
            return
        if not reply or now - self._mac_changed.get(ip, now - MAC_HOLD) < MAC_HOLD:
            self.stats.arp_ignored += 1
            return
        self._mac_changed[ip] = now
        self.neighbors[ip] = (mac, now)
        if known is not None:
            self.stats.arp_changed += 1
        self.on_neighbor(ip)
