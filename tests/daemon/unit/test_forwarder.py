"""The forwarding loop on an in-memory ring: every frame in, every frame out, byte for byte."""

from __future__ import annotations

import collections
import dataclasses
import gc
import mmap
import os
import random
import socket
import struct
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Ether

from dsrlb import jhash
from dsrlb.dataplane import ring as R
from dsrlb.dataplane.forwarder import TX_HDR, Forwarder, ForwardingTable, Service, ServiceState
from dsrlb.selection import Candidate, Selector

OWN = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:99"
MAC = {1: "02:00:00:00:00:0a", 2: "02:00:00:00:00:0b", 3: "02:00:00:00:00:0c"}
VIP = "172.16.1.10"
VIRT = "172.16.1.253"
VIP6 = "2001:db8:1::10"
VIRT6 = "2001:db8:1::fd"


def v6(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, address)


def raw(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class MemoryRing:
    """A PacketRing stand-in backed by anonymous memory: tests write RX slots as the kernel would and
    read back what the loop queued for transmission."""

    def __init__(self, rx_frames: int = 64, tx_frames: int = 16) -> None:
        self.rx_frames, self.tx_frames = rx_frames, tx_frames
        self.tx_base = rx_frames * R.FRAME_SIZE
        self.map = mmap.mmap(-1, (rx_frames + tx_frames) * R.FRAME_SIZE)
        self.mac = raw(OWN)
        self.max_frame = 1514
        self.sent: list[bytes] = []
        self.next_rx = 0
        self.forwarder: Forwarder | None = None

    def put(self, frame: bytes, status: int = R.TP_STATUS_USER, snap: int | None = None) -> None:
        """Fill the next RX slot as the kernel does: header first, then the frame."""
        h = self.next_rx * R.FRAME_SIZE
        snap = len(frame) if snap is None else snap
        R.TPACKET2_HDR.pack_into(self.map, h, status, len(frame), snap, 66, 80, 0, 0, 0, 0)
        self.map[h + 66 : h + 66 + snap] = frame[:snap]
        self.next_rx = (self.next_rx + 1) % self.rx_frames

    def flush(self) -> None:
        for i in range(self.tx_frames):
            t = self.tx_base + i * R.FRAME_SIZE
            status, length = TX_HDR.unpack_from(self.map, t)
            if status == 1:
                d = t + R.TX_DATA_OFFSET
                self.sent.append(bytes(self.map[d : d + length]))
                self.map[t : t + 4] = b"\0\0\0\0"

    def wait(self, timeout_ms: int) -> None:  # the ring is empty: end this run of the loop
        assert self.forwarder is not None
        self.forwarder._stop.set()


class Harness:
    def __init__(
        self,
        method: str = "maglev",
        targets: tuple[int, ...] = (1, 2),
        timeout: float = 600.0,
        **limits: float,  # ForwardingTable's flows, sessions, embryonic
    ):
        self.limits = limits
        self.ring = MemoryRing()
        self.fwd = Forwarder(self.ring)  # type: ignore[arg-type]
        self.ring.forwarder = self.fwd
        self.state = ServiceState()  # UDP service
        self.tcp_state = ServiceState()
        self.state6 = ServiceState()  # the same two at VIP6
        self.tcp_state6 = ServiceState()
        self.method = method
        self.timeout = timeout
        self.learned: list[bytes] = []
        self.fwd.on_neighbor = self.learned.append
        self.set_targets(active=targets)

    def set_targets(self, active: tuple[int, ...], draining: tuple[int, ...] = ()) -> None:
        selector = Selector(self.method, [Candidate(t, f"t{t}") for t in active])
        forward = {t: raw(MAC[t]) + raw(OWN) for t in (*active, *draining)}
        services = {
            (socket.inet_aton(VIP), 17, 53): Service(
                selector, frozenset(active), forward, self.timeout, self.state
            ),
            (socket.inet_aton(VIP), 6, 80): Service(
                selector, frozenset(active), forward, self.timeout, self.tcp_state
            ),
            (v6(VIP6), 17, 53): Service(selector, frozenset(active), forward, self.timeout, self.state6),
            (v6(VIP6), 6, 80): Service(selector, frozenset(active), forward, self.timeout, self.tcp_state6),
        }
        answer = frozenset({socket.inet_aton(VIP), socket.inet_aton(VIRT), v6(VIP6), v6(VIRT6)})
        neighbors = frozenset(socket.inet_aton(f"172.16.1.{99 + t}") for t in MAC) | {
            v6(f"2001:db8:1::{99 + t:x}") for t in MAC
        }
        self.fwd.install(ForwardingTable(services, answer, neighbors, **self.limits))  # type: ignore[arg-type]

    def run(self, *frames: bytes, status: int = R.TP_STATUS_USER) -> list[bytes]:
        """Feed frames through one run of the loop; returns what it transmitted."""
        self.ring.next_rx = 0  # each run of the loop starts at slot 0
        for frame in frames:
            self.ring.put(frame, status)
        return self.loop()

    def loop(self) -> list[bytes]:
        self.ring.sent.clear()
        self.fwd._stop.clear()
        self.fwd._loop()
        return list(self.ring.sent)


def udp(src: str = "198.18.0.10", sport: int = 1000, dport: int = 53, payload: bytes = b"q" * 20) -> bytes:
    return bytes(
        Ether(src=CLIENT_MAC, dst=OWN) / IP(src=src, dst=VIP) / UDP(sport=sport, dport=dport) / payload
    )


def tcp(src: str = "198.18.0.10", sport: int = 1000, flags: str = "A") -> bytes:
    return bytes(
        Ether(src=CLIENT_MAC, dst=OWN) / IP(src=src, dst=VIP) / TCP(sport=sport, dport=80, flags=flags)
    )


def udp6(src: str = "2001:db8:c::a", sport: int = 1000, dport: int = 53, payload: bytes = b"q" * 20) -> bytes:
    return bytes(
        Ether(src=CLIENT_MAC, dst=OWN) / IPv6(src=src, dst=VIP6) / UDP(sport=sport, dport=dport) / payload
    )


def tcp6(src: str = "2001:db8:c::a", sport: int = 1000, flags: str = "A") -> bytes:
    return bytes(
        Ether(src=CLIENT_MAC, dst=OWN) / IPv6(src=src, dst=VIP6) / TCP(sport=sport, dport=80, flags=flags)
    )


def flow(src: str, sport: int, dport: int) -> bytes:
    """The forwarder's key of a flow to the VIP."""
    return socket.inet_aton(src) + socket.inet_aton(VIP) + struct.pack("!HH", sport, dport)


def target_of(frame: bytes) -> int:
    return next(t for t, mac in MAC.items() if frame[:6] == raw(mac))


def test_rewrites_only_ethernet_addresses() -> None:
    h = Harness()
    frame = udp()
    [out] = h.run(frame)
    assert out[6:12] == raw(OWN)
    assert out[:6] in {raw(MAC[1]), raw(MAC[2])}
    assert out[12:] == frame[12:]
    assert h.fwd.stats.forwarded == 1


def test_many_clients_reach_both_targets_and_keep_their_session() -> None:
    h = Harness()
    first = [target_of(f) for f in h.run(*[udp(src=f"198.18.1.{i}") for i in range(1, 41)])]
    assert set(first) == {1, 2}
    again = [target_of(f) for f in h.run(*[udp(src=f"198.18.1.{i}", sport=2000) for i in range(1, 41)])]
    assert again == first  # new flows of known clients follow the session
    assert len(h.state.sessions) == 40
    assert sum(h.state.load.values()) == 40


def test_down_target_loses_its_flows_and_sessions() -> None:
    h = Harness(method="rr")
    outs = h.run(*[udp(src=f"198.18.1.{i}") for i in range(1, 11)])
    on_two = [i for i, f in zip(range(1, 11), outs, strict=True) if target_of(f) == 2]
    assert on_two
    h.set_targets(active=(1,))
    outs = h.run(*[udp(src=f"198.18.1.{i}") for i in on_two])
    assert {target_of(f) for f in outs} == {1}
    assert all(h.state.sessions[socket.inet_aton(f"198.18.1.{i}")].target == 1 for i in on_two)


def test_drain_moves_new_connections_and_keeps_open_ones() -> None:
    h = Harness(method="first", targets=(1, 2))
    [out] = h.run(tcp(sport=1000, flags="S"))
    assert target_of(out) == 1
    h.set_targets(active=(2,), draining=(1,))
    # the open connection keeps its target
    assert [target_of(f) for f in h.run(tcp(sport=1000))] == [1]
    # a new connection from the same client goes elsewhere, and its session follows
    assert [target_of(f) for f in h.run(tcp(sport=1001, flags="S"))] == [2]
    assert h.tcp_state.sessions[socket.inet_aton("198.18.0.10")].target == 2
    # packets of both connections keep going where they started
    assert [target_of(f) for f in h.run(tcp(sport=1000), tcp(sport=1001))] == [1, 2]
    # a UDP packet of an unknown flow is a new flow too
    h2 = Harness(method="first", targets=(1, 2))
    h2.run(udp(sport=5))
    h2.set_targets(active=(2,), draining=(1,))
    assert [target_of(f) for f in h2.run(udp(sport=5), udp(sport=6))] == [1, 2]


def sessions_per_target(state: ServiceState) -> dict[int, int]:
    return dict(collections.Counter(session.target for session in state.sessions.values()))


def load_of(state: ServiceState) -> dict[int, int]:
    return {t: n for t, n in state.load.items() if n}  # zeros are fine, negative counts are not


def test_load_follows_sessions_that_move() -> None:
    """`leastsessions` trusts `state.load`: a session that moves off a draining or down target must
    leave its old target's count, or phantom sessions steer new clients away from it for good."""
    h = Harness(method="rr", targets=(1, 2))
    sources = [f"198.18.2.{i}" for i in range(1, 21)]
    h.run(*[tcp(src=s, sport=1000, flags="S") for s in sources], *[udp(src=s) for s in sources])
    assert load_of(h.tcp_state) == sessions_per_target(h.tcp_state) == {1: 10, 2: 10}
    # 1 drains: new TCP connections of its clients move to 2 and 3, open ones stay
    h.set_targets(active=(2, 3), draining=(1,))
    h.run(*[tcp(src=s, sport=2000, flags="S") for s in sources])
    assert 1 not in sessions_per_target(h.tcp_state)
    assert load_of(h.tcp_state) == sessions_per_target(h.tcp_state)
    # 2 goes down: UDP sessions on it move (a known flow, not a new connection)
    h.set_targets(active=(1, 3))
    h.run(*[udp(src=s) for s in sources])
    assert 2 not in sessions_per_target(h.state)
    assert load_of(h.state) == sessions_per_target(h.state)
    # and back and forth once more, then everything expires
    h.set_targets(active=(2,), draining=(1, 3))
    h.run(*[udp(src=s, sport=3000) for s in sources], *[tcp(src=s, sport=3000, flags="S") for s in sources])
    for state in (h.state, h.tcp_state):
        assert load_of(state) == sessions_per_target(state) == {2: 20}
    h.fwd._sweep(h.fwd.flows[flow(sources[0], 3000, 53)].seen + h.timeout + 1)
    assert load_of(h.state) == load_of(h.tcp_state) == {}


def test_leastsessions_balances_after_a_drain_ends() -> None:
    """With honest counts, clients that left a drained target do not keep it looking busy."""
    h = Harness(method="leastsessions", targets=(1, 2))
    sources = [f"198.18.3.{i}" for i in range(1, 11)]
    h.run(*[udp(src=s) for s in sources])
    assert sessions_per_target(h.state) == {1: 5, 2: 5}
    h.set_targets(active=(2,))
    h.run(*[udp(src=s) for s in sources])  # all move to 2
    h.set_targets(active=(1, 2))
    newcomers = [target_of(f) for f in h.run(*[udp(src=f"198.18.4.{i}") for i in range(1, 11)])]
    assert newcomers == [1] * 10  # 1 has 0 sessions, 2 has 10


def test_disabled_target_gets_nothing() -> None:
    h = Harness(method="first")
    h.run(tcp(sport=1, flags="S"))
    h.set_targets(active=(2,))
    assert [target_of(f) for f in h.run(tcp(sport=1))] == [2]


def test_unfinished_checksum_is_completed() -> None:
    h = Harness()
    good = udp(payload=b"checksum me" * 3)
    broken = bytearray(good)
    broken[40:42] = b"\x12\x34"  # what a veth peer leaves: not the real checksum
    [out] = h.run(bytes(broken), status=R.TP_STATUS_USER | R.TP_STATUS_CSUMNOTREADY)
    assert out[12:] == good[12:]
    raw_tcp = bytearray(
        bytes(
            Ether(src=CLIENT_MAC, dst=OWN)
            / IP(src="198.18.0.10", dst=VIP)
            / TCP(sport=7, dport=80, flags="PA")
            / b"GET / HTTP/1.0\r\n\r\n"
        )
    )
    want = bytes(raw_tcp)
    raw_tcp[50:52] = b"\x00\x00"
    [out] = h.run(bytes(raw_tcp), status=R.TP_STATUS_USER | R.TP_STATUS_CSUMNOTREADY)
    assert out[12:] == want[12:]
    assert h.fwd.stats.checksums_fixed == 2


def test_answers_arp_for_vip_and_virt_only() -> None:
    h = Harness()
    asks = [
        bytes(
            Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=CLIENT_MAC, psrc="172.16.1.254", pdst=addr)
        )
        for addr in (VIP, VIRT, "172.16.1.100")
    ]
    out = h.run(*asks)
    assert len(out) == 2
    for frame, addr in zip(out, (VIP, VIRT), strict=True):
        arp = Ether(frame)[ARP]
        assert (arp.op, arp.hwsrc, arp.psrc, arp.pdst, arp.hwdst) == (
            2,
            OWN,
            addr,
            "172.16.1.254",
            CLIENT_MAC,
        )


def test_bgp_mode_answers_no_arp_but_ping_and_forwards() -> None:
    """HA mode bgp: the router routes VIP traffic to every balancer; none may pull it by ARP."""
    h = Harness()
    h.fwd.install(dataclasses.replace(h.fwd.table, arp=frozenset()))
    ask = Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=CLIENT_MAC, psrc="172.16.1.254", pdst=VIP
    )
    ping = Ether(src=CLIENT_MAC, dst=OWN) / IP(src="198.18.0.10", dst=VIP) / ICMP(id=7, seq=3)
    out = h.run(bytes(ask), bytes(ping), udp())
    assert [Ether(f)[IP].proto if IP in Ether(f) else "arp" for f in out] == [1, 17]
    assert h.fwd.stats.arp_replies == 0 and h.fwd.stats.forwarded == 1


def test_learns_target_macs_from_arp() -> None:
    h = Harness()
    reply = bytes(
        Ether(src=MAC[1], dst=OWN)
        / ARP(op=2, hwsrc=MAC[1], psrc="172.16.1.100", hwdst=OWN, pdst="172.16.1.252")
    )
    stranger = bytes(
        Ether(src=MAC[3], dst=OWN) / ARP(op=2, hwsrc=MAC[3], psrc="172.16.1.77", pdst="172.16.1.252")
    )
    assert h.run(reply, stranger) == []
    assert h.fwd.neighbors[socket.inet_aton("172.16.1.100")][0] == raw(MAC[1])
    assert socket.inet_aton("172.16.1.77") not in h.fwd.neighbors
    assert h.learned == [socket.inet_aton("172.16.1.100")]


def test_answers_ping_to_vip() -> None:
    h = Harness()
    ping = bytes(Ether(src=CLIENT_MAC, dst=OWN) / IP(src="198.18.0.10", dst=VIP) / ICMP(id=7, seq=3) / b"abc")
    [out] = h.run(ping)
    reply = Ether(out)
    assert reply.dst == CLIENT_MAC and reply[IP].src == VIP and reply[IP].dst == "198.18.0.10"
    assert reply[ICMP].type == 0 and (reply[ICMP].id, reply[ICMP].seq) == (7, 3)
    rebuilt = Ether(out)
    del rebuilt[IP].chksum, rebuilt[ICMP].chksum
    assert bytes(Ether(bytes(rebuilt))) == out  # both checksums are right


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (udp()[:30], "runt"),
        (bytes(Ether(dst=OWN, type=0x88B5) / (b"\x00" * 50)), "ethertype"),
        (bytes(Ether(src=CLIENT_MAC, dst=MAC[3]) / IP(dst=VIP) / UDP(dport=53)), "not_for_us"),
        (udp()[:14] + b"\x43" + udp()[15:], "bad_ip_header"),
        (udp()[:16] + b"\x05\xdc" + udp()[18:], "bad_ip_length"),
        (bytes(Ether(dst=OWN) / IP(dst=VIP, flags="MF") / UDP(dport=53)), "fragment"),
        (bytes(Ether(dst=OWN) / IP(dst=VIP, proto=6) / (b"\x00" * 8)), "truncated_l4"),
        (bytes(Ether(dst=OWN) / IP(dst=VIP) / UDP(dport=54)), "no_service"),
        (bytes(Ether(dst=OWN) / IP(dst="172.16.1.99") / ICMP()), "icmp_not_ours"),
        (bytes(Ether(dst=OWN) / IP(dst=VIP, proto=47) / (b"x" * 20)), "ip_protocol"),
    ],
)
def test_malformed_frames_are_counted_and_do_not_stop_forwarding(frame: bytes, reason: str) -> None:
    h = Harness()
    out = h.run(frame, udp())
    assert len(out) == 1 and out[0][12:] == udp()[12:]
    assert h.fwd.stats.drops[reason] == 1


def test_truncated_capture_is_dropped() -> None:
    h = Harness()
    h.ring.put(udp(), snap=40)
    h.ring.put(udp())
    assert len(h.loop()) == 1 and h.fwd.stats.drops["truncated"] == 1


def test_idle_sessions_and_flows_expire() -> None:
    h = Harness(timeout=30.0)
    h.run(udp(src="198.18.0.1"), udp(src="198.18.0.2"))
    assert len(h.state.sessions) == 2
    now = h.fwd.flows[flow("198.18.0.1", 1000, 53)].seen
    h.fwd.flows[flow("198.18.0.2", 1000, 53)].seen = now + 25  # .2 stays busy
    h.fwd._sweep(now + 31)
    assert list(h.state.sessions) == [socket.inet_aton("198.18.0.2")]
    assert list(h.fwd.flows) == [flow("198.18.0.2", 1000, 53)]
    assert sum(h.state.load.values()) == 1


def test_recent_flows_count_as_open_connections() -> None:
    h = Harness(method="first")
    h.run(tcp(sport=1), tcp(sport=2), tcp(sport=1), tcp(sport=2))  # two packets each: not embryonic
    now = h.fwd.flows[flow("198.18.0.10", 1, 80)].seen
    h.fwd._sweep(now + 1)
    assert h.fwd.activity[1][0] == 2
    h.fwd._sweep(now + 6)
    assert h.fwd.activity[1][0] == 0


def test_known_flows_take_the_fast_path_with_the_same_checks() -> None:
    h = Harness(method="first")
    h.run(udp(sport=9), tcp(sport=9, flags="S"))
    assert len(h.fwd.flows) == 2
    # checksum completion on the fast path too
    good = udp(sport=9, payload=b"fast" * 5)
    broken = bytearray(good)
    broken[40:42] = b"\xab\xcd"
    [out] = h.run(bytes(broken), status=R.TP_STATUS_USER | R.TP_STATUS_CSUMNOTREADY)
    assert out[12:] == good[12:]
    # a fragment of a known flow is still a fragment
    frag = bytearray(udp(sport=9))
    frag[20] |= 0x20
    assert h.run(bytes(frag)) == [] and h.fwd.stats.drops["fragment"] == 1
    # a SYN that reuses the port of a flow whose target now drains starts a new connection elsewhere
    h.set_targets(active=(2,), draining=(1,))
    assert [target_of(f) for f in h.run(tcp(sport=9))] == [1]  # table changed: slow path, keeps target
    assert [target_of(f) for f in h.run(tcp(sport=9))] == [1]  # fast path
    assert [target_of(f) for f in h.run(tcp(sport=9, flags="S"))] == [2]
    assert h.fwd.stats.forwarded == 6


# --- bounded state -------------------------------------------------------------------------------


def test_full_tables_drop_nothing_and_overflow_follows_the_stateless_pick() -> None:
    h = Harness(flows=4, sessions=1_000)
    clients = [f"198.18.5.{i}" for i in range(1, 21)]
    selector = h.fwd.table.services[(socket.inet_aton(VIP), 17, 53)].selector
    picks = {c: selector.pick(socket.inet_aton(c)) for c in clients}
    out = h.run(*[udp(src=c) for c in clients])
    assert [target_of(f) for f in out] == [picks[c] for c in clients]  # all forwarded, by the hash
    assert len(h.fwd.flows) == 4 and len(h.state.sessions) == 4
    assert h.fwd.stats.flows_overflow == 16 and not h.fwd.stats.drops
    # the next packets of the unrecorded flows go the same way
    assert [target_of(f) for f in h.run(*[udp(src=c) for c in clients])] == [picks[c] for c in clients]
    # a session table that is full: new clients are not recorded, and not dropped either
    h = Harness(method="rr", sessions=3)
    out = h.run(*[tcp(src=c, flags="S") for c in clients])
    assert len(out) == 20 and h.fwd.session_count == 3 and len(h.fwd.flows) == 3
    assert h.fwd.stats.sessions_overflow == 17
    again = h.run(*[tcp(src=c) for c in clients])
    assert [target_of(f) for f in again] == [target_of(f) for f in out]  # rr: a hash when unrecorded
    # a client with a session still gets new flows recorded while there is room
    assert len(h.run(tcp(src=clients[0], sport=2, flags="S"))) == 1 and len(h.fwd.flows) == 4


def test_embryonic_flows_expire_early_and_take_their_sessions() -> None:
    h = Harness(timeout=600.0, embryonic=5.0)
    h.run(udp(src="198.18.6.1"), tcp(src="198.18.6.2", flags="S"), udp(src="198.18.6.3"))
    h.run(udp(src="198.18.6.3"))  # a second packet: established
    born = h.fwd.flows[flow("198.18.6.1", 1000, 53)].born
    h.fwd._sweep(born + 4)
    assert len(h.fwd.flows) == 3
    h.fwd._sweep(born + 6)
    assert list(h.fwd.flows) == [flow("198.18.6.3", 1000, 53)]
    assert list(h.state.sessions) == [socket.inet_aton("198.18.6.3")] and not h.tcp_state.sessions
    assert h.fwd.stats.expired_embryonic == 2 and h.fwd.session_count == 1
    # an established client's session outlives a SYN of it that never completes
    h.run(udp(src="198.18.6.3", sport=7))
    h.fwd._sweep(born + 20)
    assert len(h.fwd.flows) == 1 and list(h.state.sessions) == [socket.inet_aton("198.18.6.3")]
    # and goes with its last flow, `session` seconds after its last packet
    seen = h.fwd.flows[flow("198.18.6.3", 1000, 53)].seen
    h.fwd._sweep(seen + 599)
    assert len(h.fwd.flows) == 1
    h.fwd._sweep(seen + 601)
    assert not h.fwd.flows and not h.state.sessions and h.fwd.session_count == 0
    assert load_of(h.state) == {} and h.fwd.stats.expired == 1


def test_flows_kept_busy_stay() -> None:
    h = Harness(timeout=30.0)
    h.run(udp(), udp())
    fl = h.fwd.flows[flow("198.18.0.10", 1000, 53)]
    for step in range(1, 200):  # a packet every 5 s for 1000 s: never expires
        fl.seen = fl.born + 5 * step
        h.fwd._sweep(fl.seen + 0.5)
        assert h.fwd.flows
    h.fwd._sweep(fl.seen + 31)
    assert not h.fwd.flows and not h.state.sessions


def test_expiry_and_census_steps_are_bounded_on_a_million_flows() -> None:
    """A million embryonic flows (a spoofed SYN flood's worth) expire in small steps: each examines at
    most EXPIRE_BUDGET wheel entries, and no step nears 10 ms (generous bound: a loaded CI machine).
    The cyclic garbage collector is off while steps are timed: a full collection over a million flows is
    a pause of its own (tens of ms), whatever the expiry does."""
    from dsrlb.dataplane import forwarder as F

    h = Harness(method="first", flows=1 << 21, sessions=1 << 21)
    table, fwd = h.fwd.table, h.fwd
    svc = table.services[(socket.inet_aton(VIP), 6, 80)]
    vip, now = socket.inet_aton(VIP), time.monotonic()
    n = 1 << 20
    for i in range(n):
        src = struct.pack("!I", 0x0A000000 + (i >> 8))  # 4096 clients, 256 flows each
        fwd._target(table, svc, src, src + vip + struct.pack("!HH", i & 0xFFFF, 80), True, 6, now)
    assert len(fwd.flows) == n
    gc.collect()
    gc.disable()
    try:
        census, steps = census_and_expiry(fwd, now)
    finally:
        gc.enable()
    assert fwd.activity[1][1] > 0 and len(census) <= n // F.CENSUS_BUDGET + 2
    assert fwd.session_count == 0 and not h.tcp_state.sessions
    assert len(steps) <= n // F.EXPIRE_BUDGET + 10
    worst = max(max(steps), max(census))
    assert sorted(steps)[len(steps) // 2] < 0.005 and worst < 0.05, worst


def census_and_expiry(fwd: Forwarder, now: float) -> tuple[list[float], list[float]]:
    """Seconds taken by each step of a census of every flow, then of expiring them all."""
    from dsrlb.dataplane import forwarder as F

    census: list[float] = []
    fwd._census_at = now + 3  # a census runs over the full table first
    while fwd._census or not census:
        start = time.perf_counter()
        fwd._sweep(now + 3)
        census.append(time.perf_counter() - start)
    steps: list[float] = []
    while fwd.flows:
        before = len(fwd.flows)
        start = time.perf_counter()
        fwd._sweep(now + 6)
        steps.append(time.perf_counter() - start)
        assert before - len(fwd.flows) <= F.EXPIRE_BUDGET
    return census, steps


def test_target_mac_changes_only_from_replies_and_at_most_once_a_second() -> None:
    h = Harness()
    ip = socket.inet_aton("172.16.1.100")

    def arp(mac: str, op: int = 2, to: str = OWN) -> bytes:
        return bytes(
            Ether(src=mac, dst=to) / ARP(op=op, hwsrc=mac, psrc="172.16.1.100", hwdst=to, pdst="172.16.1.252")
        )

    h.run(arp(MAC[1]))
    assert h.fwd.neighbors[ip][0] == raw(MAC[1]) and h.learned == [ip]
    # forged: not replies to us (a gratuitous ARP, a reply to someone else), or too soon after the last
    h.run(arp(MAC[3], op=1, to="ff:ff:ff:ff:ff:ff"), arp(MAC[3], to=CLIENT_MAC))
    for _ in range(2):
        h.run(*[arp(MAC[3]), arp(MAC[1])] * 25)
    assert h.fwd.neighbors[ip][0] == raw(MAC[1]) and h.learned == [ip]
    assert h.fwd.stats.arp_ignored == 52 and h.fwd.stats.arp_changed == 0
    h.fwd._mac_changed[ip] -= 1.5  # a second and a half later
    h.run(*[arp(MAC[3]), arp(MAC[1])] * 25)
    assert h.fwd.neighbors[ip][0] == raw(MAC[3]) and h.learned == [ip, ip]  # one rebuild, not 100
    assert h.fwd.stats.arp_changed == 1


FUZZ_FRAMES = int(os.environ.get("DSRLB_FUZZ_FRAMES", "200000"))


def test_fuzzed_frames_never_break_the_packet_path() -> None:
    """Random bytes and mutated valid frames (ARP, ICMP, TCP, UDP, VRRP, IP options; IPv6 TCP, UDP,
    neighbour discovery and ping) through the loop: no exception, and a valid frame after them is still
    forwarded. 200 k in the fast lane; set DSRLB_FUZZ_FRAMES=1000000 for the full run."""
    rng = random.Random(12)
    h = Harness(flows=5000, sessions=2000, embryonic=0.5)
    h.fwd.on_vrrp = lambda frame: None
    valid = [
        udp(),
        tcp(flags="S"),
        tcp(src="198.18.9.9", flags="PA"),
        bytes(
            Ether(src=CLIENT_MAC, dst=OWN)
            / IP(src="198.18.0.1", dst=VIP, options=b"\x01" * 8)
            / UDP(dport=53)
        ),
        bytes(Ether(src=CLIENT_MAC, dst=OWN) / IP(src="198.18.0.1", dst=VIP) / ICMP() / (b"x" * 30)),
        bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=CLIENT_MAC, psrc="172.16.1.254", pdst=VIP)),
        bytes(Ether(dst=OWN) / ARP(op=2, hwsrc=MAC[2], psrc="172.16.1.101", hwdst=OWN, pdst="172.16.1.252")),
        bytes(Ether(dst="01:00:5e:00:00:12") / IP(dst="224.0.0.18", proto=112, ttl=255) / (b"\x31" * 20)),
        udp6(),
        tcp6(flags="S"),
        solicit(VIP6),
        advert("2001:db8:1::64", MAC[1]),
        bytes(Ether(src=CLIENT_MAC, dst=OWN) / IPv6(src="2001:db8:c::a", dst=VIP6) / ICMPv6EchoRequest()),
    ]
    sent = 0
    while sent < FUZZ_FRAMES:
        frames = []
        for _ in range(h.ring.rx_frames):
            kind = rng.random()
            if kind < 0.2:
                frame = rng.randbytes(rng.randrange(0, 1600))
            else:
                frame = bytearray(rng.choice(valid))
                for _ in range(rng.randrange(1, 6)):
                    at = rng.randrange(len(frame))
                    frame[at] = rng.randrange(256) if rng.random() < 0.8 else frame[at] ^ 0xFF
                if kind > 0.9:
                    frame = frame[: rng.randrange(len(frame) + 1)] + rng.randbytes(rng.randrange(40))
                frame = bytes(frame)
            frames.append(frame)
        status = R.TP_STATUS_USER | (R.TP_STATUS_CSUMNOTREADY if rng.random() < 0.3 else 0)
        h.run(*frames, status=status)
        sent += len(frames)
        if sent % 8192 < len(frames):
            h.fwd._sweep(time.monotonic() + rng.random() * 2)
    assert len(h.fwd.flows) <= 5000 and h.fwd.session_count <= 2000
    out = h.run(udp(src="198.18.200.1"))
    assert len(out) == 1 and out[0][12:] == udp(src="198.18.200.1")[12:]


# --- IPv6 --------------------------------------------------------------------------------------------


def test_ipv6_rewrites_only_ethernet_addresses() -> None:
    h = Harness()
    frames = [udp6(), tcp6(flags="S")]
    out = h.run(*frames)
    assert len(out) == 2 and h.fwd.stats.forwarded == 2
    for frame, sent in zip(frames, out, strict=True):
        assert sent[6:12] == raw(OWN) and sent[:6] in {raw(MAC[1]), raw(MAC[2])}
        assert sent[12:] == frame[12:]
    client, vip = v6("2001:db8:c::a"), v6(VIP6)
    assert set(h.fwd.flows) == {client + vip + struct.pack("!HH", 1000, p) for p in (53, 80)}
    assert list(h.state6.sessions) == list(h.tcp_state6.sessions) == [client]
    assert not h.state.sessions and not h.tcp_state.sessions


def test_ipv6_clients_reach_both_targets_and_keep_their_session() -> None:
    h = Harness()
    clients = [f"2001:db8:c::{i:x}" for i in range(1, 41)]
    first = [target_of(f) for f in h.run(*[udp6(src=c) for c in clients])]
    assert set(first) == {1, 2}
    again = [target_of(f) for f in h.run(*[udp6(src=c, sport=2000) for c in clients])]
    assert again == first  # new flows of known clients follow the session
    # the same flows once more: the flow check, not the selection
    assert [target_of(f) for f in h.run(*[udp6(src=c, sport=2000) for c in clients])] == first
    assert len(h.state6.sessions) == 40 and sum(h.state6.load.values()) == 40
    assert h.fwd.stats.forwarded == 120


def test_ipv6_stateless_pick_hashes_the_whole_address() -> None:
    """maglev on a 16-byte client: the bucket of jhash over all 16 bytes, as `jhash ip6 saddr`."""
    h = Harness(flows=0)  # nothing recorded: every packet follows the stateless pick
    selector = h.fwd.table.services[(v6(VIP6), 17, 53)].selector
    clients = [f"2001:db8:c::{i:x}" for i in range(1, 41)]
    want = [selector.buckets()[jhash.bucket(v6(c), selector.seed, selector.size)] for c in clients]
    assert [target_of(f) for f in h.run(*[udp6(src=c) for c in clients])] == want
    assert h.fwd.stats.flows_overflow == 40


def test_ipv6_drain_moves_new_connections_and_keeps_open_ones() -> None:
    h = Harness(method="first", targets=(1, 2))
    assert [target_of(f) for f in h.run(tcp6(sport=1000, flags="S"))] == [1]
    h.set_targets(active=(2,), draining=(1,))
    assert [target_of(f) for f in h.run(tcp6(sport=1000))] == [1]  # table changed: selection, same target
    assert [target_of(f) for f in h.run(tcp6(sport=1000))] == [1]  # flow check
    assert [target_of(f) for f in h.run(tcp6(sport=1000, flags="S"))] == [2]  # a SYN reusing the port
    assert [target_of(f) for f in h.run(tcp6(sport=1001, flags="S"))] == [2]
    assert h.tcp_state6.sessions[v6("2001:db8:c::a")].target == 2


def test_ipv6_flows_and_sessions_expire() -> None:
    h = Harness(timeout=30.0)
    h.run(udp6(src="2001:db8:c::1"), udp6(src="2001:db8:c::2"), udp6(src="2001:db8:c::2"))
    key = v6("2001:db8:c::2") + v6(VIP6) + struct.pack("!HH", 1000, 53)
    h.fwd._sweep(h.fwd.flows[key].born + 6)  # the embryonic one goes, with its session
    assert list(h.fwd.flows) == [key] and list(h.state6.sessions) == [v6("2001:db8:c::2")]
    h.fwd._sweep(h.fwd.flows[key].seen + 31)
    assert not h.fwd.flows and not h.state6.sessions and h.fwd.session_count == 0
    assert load_of(h.state6) == {}


def test_ipv6_unfinished_checksums_are_completed() -> None:
    h = Harness()
    good = [
        udp6(payload=b"checksum me" * 3),
        bytes(
            Ether(src=CLIENT_MAC, dst=OWN)
            / IPv6(src="2001:db8:c::a", dst=VIP6)
            / TCP(sport=7, dport=80, flags="PA")
            / b"GET / HTTP/1.0\r\n\r\n"
        ),
    ]
    broken = [bytearray(good[0]), bytearray(good[1])]
    broken[0][60:62] = b"\x12\x34"  # UDP checksum at 54 + 6
    broken[1][70:72] = b"\x00\x00"  # TCP checksum at 54 + 16
    for _ in range(2):  # selection, then the flow check
        out = h.run(*map(bytes, broken), status=R.TP_STATUS_USER | R.TP_STATUS_CSUMNOTREADY)
        assert [f[12:] for f in out] == [g[12:] for g in good]
    assert h.fwd.stats.checksums_fixed == 4


def solicit(target: str, hlim: int = 255, src: str = "2001:db8:1::fe", option: bool = True) -> bytes:
    """A neighbour solicitation as a host sends it: to the target's solicited-node group."""
    group = "ff02::1:ff" + v6(target)[13:].hex()[:2] + ":" + v6(target)[14:].hex()
    ns = IPv6(src=src, dst=group, hlim=hlim) / ICMPv6ND_NS(tgt=target)
    if option:
        ns /= ICMPv6NDOptSrcLLAddr(lladdr=CLIENT_MAC)
    return bytes(Ether(src=CLIENT_MAC, dst="33:33:ff:" + v6(target)[13:].hex(":")) / ns)


def checksums_hold(frame: bytes) -> bool:
    """scapy recomputes the ICMPv6 checksum of the parsed frame: the same bytes come out."""
    rebuilt = Ether(frame)
    layer = rebuilt[IPv6].payload
    del layer.cksum
    return bytes(Ether(bytes(rebuilt))) == frame


def test_answers_neighbor_solicitations_for_vip6_and_virt6_only() -> None:
    h = Harness()
    out = h.run(*[solicit(a) for a in (VIP6, VIRT6, "2001:db8:1::77")])
    assert len(out) == 2 and h.fwd.stats.nd_replies == 2
    for frame, address in zip(out, (VIP6, VIRT6), strict=True):
        na = Ether(frame)
        assert (na.src, na.dst) == (OWN, CLIENT_MAC)
        assert (na[IPv6].src, na[IPv6].dst, na[IPv6].hlim) == (address, "2001:db8:1::fe", 255)
        adv = na[ICMPv6ND_NA]
        assert (adv.tgt, adv.R, adv.S, adv.O) == (address, 0, 1, 1)
        assert na[ICMPv6NDOptDstLLAddr].lladdr == OWN
        assert checksums_hold(frame)
    # duplicate address detection for a VIP: defended to all nodes, not solicited
    dad = bytes(
        Ether(src=CLIENT_MAC, dst="33:33:ff:00:00:10")
        / IPv6(src="::", dst="ff02::1:ff00:10", hlim=255)
        / ICMPv6ND_NS(tgt=VIP6)
    )
    [na] = [Ether(f) for f in h.run(dad)]
    assert (na.dst, na[IPv6].dst, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (
        "33:33:00:00:00:01",
        "ff02::1",
        0,
        1,
    )


def test_neighbor_solicitations_must_come_from_a_neighbour_and_be_valid() -> None:
    h = Harness()
    routed = solicit(VIP6, hlim=254)  # hop limit below 255: it crossed a router
    bad_sum = bytearray(solicit(VIP6))
    bad_sum[56] ^= 1
    empty_option = bytearray(solicit(VIP6))
    empty_option[79] = 0  # the source link-layer option's length
    dad_with_option = solicit(VIP6, src="::")  # RFC 4861 7.1.1: no source link-layer option from ::
    elsewhere = bytearray(solicit(VIP6))
    elsewhere[:6] = raw(MAC[3])  # a unicast MAC not ours
    assert h.run(routed, bytes(bad_sum), bytes(empty_option), dad_with_option, bytes(elsewhere)) == []
    assert h.fwd.stats.drops["nd_invalid"] == 4 and h.fwd.stats.drops["not_for_us"] == 1
    assert h.fwd.stats.nd_replies == 0
    # the same solicitation, unicast to us (neighbour unreachability detection), is answered
    unicast = bytearray(solicit(VIP6))
    unicast[:6] = raw(OWN)
    assert len(h.run(bytes(unicast))) == 1


def test_bgp_mode_answers_no_neighbor_solicitation_but_ping_and_forwards() -> None:
    h = Harness()
    h.fwd.install(dataclasses.replace(h.fwd.table, arp=frozenset()))
    ping = Ether(src=CLIENT_MAC, dst=OWN) / IPv6(src="2001:db8:c::a", dst=VIP6) / ICMPv6EchoRequest()
    out = h.run(solicit(VIP6), bytes(ping), udp6())
    assert [Ether(f)[IPv6].nh for f in out] == [58, 17]
    assert ICMPv6EchoReply in Ether(out[0])
    assert h.fwd.stats.nd_replies == 0 and h.fwd.stats.forwarded == 1


def advert(target: str, mac: str, to: str = OWN, solicited: bool = True, hlim: int = 255) -> bytes:
    dst = "2001:db8:1::fe" if solicited else "ff02::1"
    return bytes(
        Ether(src=mac, dst=to)
        / IPv6(src=target, dst=dst, hlim=hlim)
        / ICMPv6ND_NA(tgt=target, S=int(solicited), O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=mac)
    )


def test_learns_target_macs_from_neighbor_advertisements() -> None:
    h = Harness()
    target, stranger = "2001:db8:1::64", "2001:db8:1::77"  # target 1, and an address not in `neighbors`
    unsolicited = advert(target, MAC[1], to="33:33:00:00:00:01", solicited=False)
    assert h.run(unsolicited, advert(target, MAC[1], hlim=64), advert(stranger, MAC[3])) == []
    assert v6(target) not in h.fwd.neighbors and h.learned == []
    assert h.fwd.stats.arp_ignored == 1 and h.fwd.stats.drops["nd_invalid"] == 1
    h.run(advert(target, MAC[1]))
    assert h.fwd.neighbors[v6(target)][0] == raw(MAC[1]) and h.learned == [v6(target)]
    # a change within MAC_HOLD is not taken, one after it is
    h.run(advert(target, MAC[3]))
    assert h.fwd.neighbors[v6(target)][0] == raw(MAC[1]) and h.fwd.stats.arp_ignored == 2
    h.fwd._mac_changed[v6(target)] -= 1.5
    h.run(advert(target, MAC[3]), advert(target, MAC[1]))
    assert h.fwd.neighbors[v6(target)][0] == raw(MAC[3]) and h.learned == [v6(target)] * 2
    assert h.fwd.stats.arp_changed == 1


def test_answers_ping6_to_vip6() -> None:
    h = Harness()
    ping = bytes(
        Ether(src=CLIENT_MAC, dst=OWN)
        / IPv6(src="2001:db8:c::a", dst=VIP6)
        / ICMPv6EchoRequest(id=7, seq=3, data=b"abc")
    )
    other = bytes(
        Ether(src=CLIENT_MAC, dst=OWN) / IPv6(src="2001:db8:c::a", dst="2001:db8:1::77") / ICMPv6EchoRequest()
    )
    bad_sum = bytearray(ping)
    bad_sum[-1] ^= 1
    [out] = h.run(ping, other, bytes(bad_sum))
    reply = Ether(out)
    assert reply.dst == CLIENT_MAC and reply.src == OWN
    assert (reply[IPv6].src, reply[IPv6].dst) == (VIP6, "2001:db8:c::a")
    assert (reply[ICMPv6EchoReply].id, reply[ICMPv6EchoReply].seq, reply[ICMPv6EchoReply].data) == (
        7,
        3,
        b"abc",
    )
    assert checksums_hold(out)
    assert h.fwd.stats.icmp_replies == 1
    assert h.fwd.stats.drops["icmp_not_ours"] == 1 and h.fwd.stats.drops["icmp_not_echo"] == 1


def test_ipv6_vrrp_goes_to_the_control_plane() -> None:
    h = Harness()
    seen: list[bytes] = []
    h.fwd.on_vrrp = seen.append
    advert = bytes(
        Ether(dst="33:33:00:00:00:12")
        / IPv6(src="fe80::1", dst="ff02::12", nh=112, hlim=255)
        / (b"\x31" * 20)
    )
    assert h.run(advert) == [] and seen == [advert]


ether6 = Ether(src=CLIENT_MAC, dst=OWN)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (udp6()[:57], "runt"),
        (bytes(ether6 / IPv6(dst=VIP6) / IPv6ExtHdrHopByHop() / UDP(dport=53)), "ipv6_ext_header"),
        (bytes(ether6 / IPv6(dst=VIP6) / IPv6ExtHdrRouting() / UDP(dport=53)), "ipv6_ext_header"),
        (bytes(ether6 / IPv6(dst=VIP6) / IPv6ExtHdrDestOpt() / TCP(dport=80)), "ipv6_ext_header"),
        (bytes(ether6 / IPv6(dst=VIP6) / IPv6ExtHdrFragment() / UDP(dport=53)), "fragment"),
        (udp6()[:18] + b"\x05\xdc" + udp6()[20:], "bad_ip_length"),
        (udp6()[:14] + b"\x50" + udp6()[15:], "bad_ip_header"),
        (bytes(Ether(src=CLIENT_MAC, dst=MAC[3]) / IPv6(dst=VIP6) / UDP(dport=53)), "not_for_us"),
        (bytes(ether6 / IPv6(dst=VIP6, nh=6) / (b"\x00" * 8)), "truncated_l4"),
        (bytes(ether6 / IPv6(dst=VIP6, nh=58) / (b"\x80" * 4)), "truncated_l4"),
        (bytes(ether6 / IPv6(dst=VIP6) / UDP(dport=54)), "no_service"),
        (bytes(ether6 / IPv6(dst=VIP6, nh=47) / (b"x" * 20)), "ip_protocol"),
    ],
)
def test_malformed_ipv6_frames_are_counted_and_do_not_stop_forwarding(frame: bytes, reason: str) -> None:
    h = Harness()
    out = h.run(frame, udp6())
    assert len(out) == 1 and out[0][12:] == udp6()[12:]
    assert h.fwd.stats.drops == {reason: 1}
