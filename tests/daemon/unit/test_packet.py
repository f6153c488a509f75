"""Checksum helpers of the frames the forwarder repairs, and the IPv6 frames it builds, checked against
scapy's own parsing and computation."""

from __future__ import annotations

import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether

from dsrlb.dataplane.packet import (
    ALL_NODES,
    ALL_NODES_MAC,
    checksum,
    fix_l4_checksum,
    icmp6_echo_reply,
    neighbor_advertisement,
    neighbor_discovery,
    neighbor_solicitation,
    pseudo_sum,
)

OWN = "02:00:00:00:00:01"


def udp_frame(payload: bytes) -> bytearray:
    return bytearray(
        bytes(Ether() / IP(src="198.18.0.10", dst="172.16.1.10") / UDP(sport=1000, dport=53) / payload)
    )


def udp_payload_summing_to_zero() -> bytes:
    """Two payload bytes that make the UDP checksum compute to 0 (the one's complement sum is 0xFFFF)."""
    frame = udp_frame(b"\0\0")
    ip, l4 = 14, 34
    frame[l4 + 6 : l4 + 8] = b"\0\0"
    pseudo = pseudo_sum(bytes(frame[ip + 12 : ip + 20]), 17, len(frame) - l4)
    rest = 0xFFFF - checksum(frame[l4:], pseudo)  # the sum so far; the payload word completes it to 0xFFFF
    return struct.pack("!H", 0xFFFF - rest)


def test_udp_checksum_zero_is_sent_as_ffff() -> None:
    """RFC 768: a computed UDP checksum of 0 goes on the wire as 0xFFFF; 0 there means "no checksum",
    so a receiver would skip verifying it."""
    payload = udp_payload_summing_to_zero()
    frame = udp_frame(payload)
    assert frame[40:42] == b"\xff\xff"  # scapy agrees that this datagram's checksum computes to zero
    frame[40:42] = b"\x12\x34"  # unfinished, as a veth peer leaves it
    assert fix_l4_checksum(frame, 14, 34, len(frame))
    assert frame[40:42] == b"\xff\xff"


@pytest.mark.parametrize("payload", [b"", b"x", b"checksum me" * 3, bytes(range(256))])
def test_udp_and_tcp_checksums_match_scapy(payload: bytes) -> None:
    for l4 in (UDP(sport=7, dport=53), TCP(sport=7, dport=80, flags="PA")):
        good = bytes(Ether() / IP(src="198.18.0.10", dst="172.16.1.10") / l4 / payload)
        at = 34 + (6 if isinstance(l4, UDP) else 16)
        frame = bytearray(good)
        frame[at : at + 2] = b"\xab\xcd"
        assert fix_l4_checksum(frame, 14, 34, len(frame))
        assert bytes(frame) == good


def test_other_protocols_are_left_alone() -> None:
    frame = bytearray(bytes(Ether() / IP(dst="172.16.1.10", proto=47) / (b"x" * 20)))
    before = bytes(frame)
    assert not fix_l4_checksum(frame, 14, 34, len(frame))
    assert bytes(frame) == before


def v6(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, address)


def icmp6_checksum_holds(frame: bytes) -> bool:
    """scapy recomputes the ICMPv6 checksum (pseudo-header included): the same bytes come out."""
    rebuilt = Ether(frame)
    del rebuilt[IPv6].payload.cksum
    return bytes(Ether(bytes(rebuilt))) == frame


@pytest.mark.parametrize("payload", [b"", b"x", b"checksum me" * 3])
def test_ipv6_udp_and_tcp_checksums_match_scapy(payload: bytes) -> None:
    for l4 in (UDP(sport=7, dport=53), TCP(sport=7, dport=80, flags="PA")):
        eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
        good = bytes(eth / IPv6(src="2001:db8:c::a", dst="2001:db8:1::10") / l4 / payload)
        at = 54 + (6 if isinstance(l4, UDP) else 16)
        frame = bytearray(good)
        frame[at : at + 2] = b"\xab\xcd"
        assert fix_l4_checksum(frame, 14, 54, len(frame))
        assert bytes(frame) == good


def test_neighbor_solicitation_goes_to_the_solicited_node_group() -> None:
    frame = neighbor_solicitation(
        bytes.fromhex("020000000001"), v6("2001:db8:1::fc"), v6("2001:db8:1::12:3456")
    )
    ns = Ether(frame)
    assert (ns.dst, ns.src) == ("33:33:ff:12:34:56", OWN)
    assert (ns[IPv6].src, ns[IPv6].dst, ns[IPv6].hlim) == ("2001:db8:1::fc", "ff02::1:ff12:3456", 255)
    assert ns[ICMPv6ND_NS].tgt == "2001:db8:1::12:3456" and ns[ICMPv6NDOptSrcLLAddr].lladdr == OWN
    assert icmp6_checksum_holds(frame)
    assert neighbor_discovery(frame, 14, len(frame)) == (
        135,
        0,
        v6("2001:db8:1::12:3456"),
        bytes.fromhex("020000000001"),
    )


def test_neighbor_advertisements_solicited_and_unsolicited() -> None:
    mac = bytes.fromhex("020000000001")
    solicited = neighbor_advertisement(
        mac, v6("2001:db8:1::10"), v6("2001:db8:1::fe"), bytes.fromhex("020000000099"), True
    )
    na = Ether(solicited)
    assert (na.dst, na.src, na[IPv6].src, na[IPv6].dst, na[IPv6].hlim) == (
        "02:00:00:00:00:99",
        OWN,
        "2001:db8:1::10",
        "2001:db8:1::fe",
        255,
    )
    assert (na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O, na[ICMPv6ND_NA].tgt) == (
        0,
        1,
        1,
        "2001:db8:1::10",
    )
    assert na[ICMPv6NDOptDstLLAddr].lladdr == OWN and icmp6_checksum_holds(solicited)
    # IPv6's gratuitous ARP: to all nodes, not solicited, overriding what caches hold
    unsolicited = neighbor_advertisement(mac, v6("2001:db8:1::10"), ALL_NODES, ALL_NODES_MAC, False)
    na = Ether(unsolicited)
    assert (na.dst, na[IPv6].dst, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (
        "33:33:00:00:00:01",
        "ff02::1",
        0,
        1,
    )
    assert icmp6_checksum_holds(unsolicited)
    assert neighbor_discovery(unsolicited, 14, len(unsolicited)) == (136, 0x20, v6("2001:db8:1::10"), mac)


def nd(message, src: str = "2001:db8:1::fe", dst: str = "ff02::1:ff00:10", hlim: int = 255) -> bytes:
    return bytes(Ether(dst="33:33:ff:00:00:10") / IPv6(src=src, dst=dst, hlim=hlim) / message)


@pytest.mark.parametrize(
    "frame",
    [
        nd(ICMPv6ND_NS(tgt="2001:db8:1::10"), hlim=64),  # routed
        nd(ICMPv6ND_NS(tgt="2001:db8:1::10", code=1)),
        nd(ICMPv6ND_NS(tgt="ff02::1")),  # a multicast target
        nd(ICMPv6ND_NS(tgt="2001:db8:1::10") / ICMPv6NDOptSrcLLAddr(lladdr=OWN), src="::"),  # DAD with option
        nd(ICMPv6ND_NS(tgt="2001:db8:1::10"), src="::", dst="2001:db8:1::10"),  # DAD not to the group
        nd(ICMPv6ND_NA(tgt="2001:db8:1::10", S=1), dst="ff02::1"),  # solicited to a group
        nd(ICMPv6ND_NS(tgt="2001:db8:1::10") / (b"\x01\x00" + bytes(6))),  # an option of length 0
        nd(ICMPv6ND_NS(tgt="2001:db8:1::10") / (b"\x01\x02" + bytes(6))),  # an option beyond the packet
        nd(ICMPv6ND_NS(tgt="2001:db8:1::10", cksum=1)),
        nd(ICMPv6ND_NS(tgt="2001:db8:1::10"))[:70],  # shorter than a solicitation
        nd(ICMPv6EchoRequest()),  # not neighbour discovery
    ],
)
def test_invalid_neighbor_discovery_is_refused(frame: bytes) -> None:
    assert neighbor_discovery(frame, 14, len(frame)) is None


def test_valid_neighbor_discovery_without_link_layer_option() -> None:
    frame = nd(ICMPv6ND_NS(tgt="2001:db8:1::10"), src="::")  # duplicate address detection
    assert neighbor_discovery(frame, 14, len(frame)) == (135, 0, v6("2001:db8:1::10"), None)


def test_icmp6_echo_reply_is_checked_and_checksummed() -> None:
    request = bytes(
        Ether(src="02:00:00:00:00:99", dst=OWN)
        / IPv6(src="2001:db8:c::a", dst="2001:db8:1::10")
        / ICMPv6EchoRequest(id=7, seq=3, data=b"abc" * 10)
    )
    frame = icmp6_echo_reply(request, 14, len(request), bytes.fromhex("020000000001"))
    assert frame is not None
    reply = Ether(frame)
    assert (reply.dst, reply.src, reply[IPv6].src, reply[IPv6].dst) == (
        "02:00:00:00:00:99",
        OWN,
        "2001:db8:1::10",
        "2001:db8:c::a",
    )
    assert (reply[ICMPv6EchoReply].id, reply[ICMPv6EchoReply].seq, reply[ICMPv6EchoReply].data) == (
        7,
        3,
        b"abc" * 10,
    )
    assert icmp6_checksum_holds(frame)
    broken = bytearray(request)
    broken[-1] ^= 1
    assert icmp6_echo_reply(bytes(broken), 14, len(broken), bytes(6)) is None
    assert icmp6_echo_reply(frame, 14, len(frame), bytes(6)) is None  # a reply is no request
