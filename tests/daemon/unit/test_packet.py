"""Checksum helpers of the frames the forwarder repairs, checked against scapy's own computation."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from dsrlb.dataplane.packet import checksum, fix_l4_checksum, ones_sum


def udp_frame(payload: bytes) -> bytearray:
    return bytearray(
        bytes(Ether() / IP(src="198.18.0.10", dst="172.16.1.10") / UDP(sport=1000, dport=53) / payload)
    )


def udp_payload_summing_to_zero() -> bytes:
    """Two payload bytes that make the UDP checksum compute to 0 (the one's complement sum is 0xFFFF)."""
    frame = udp_frame(b"\0\0")
    ip, l4 = 14, 34
    frame[l4 + 6 : l4 + 8] = b"\0\0"
    pseudo = ones_sum(bytes(frame[ip + 12 : ip + 20]) + struct.pack("!HH", 17, len(frame) - l4))
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
