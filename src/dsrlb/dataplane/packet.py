"""Byte-level helpers for the few frames the forwarder builds or repairs itself.

Checksums use the fact that 2**16 == 1 (mod 0xffff): the one's complement sum of 16-bit words is
the big integer of the bytes modulo 0xffff, computed in C by int.from_bytes.
"""

from __future__ import annotations

import struct

ETH_ARP = b"\x08\x06"
ETH_IP = b"\x08\x00"
BROADCAST = b"\xff" * 6
ARP_HEADER = b"\x00\x01\x08\x00\x06\x04"  # Ethernet, IPv4, hlen 6, plen 4


def ones_sum(data: bytes | memoryview) -> int:
    """One's complement sum of `data` as 16-bit big-endian words (odd length padded with zero)."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF
    return total or (0xFFFF if any(data) else 0)


def checksum(data: bytes | memoryview, initial: int = 0) -> int:
    total = ones_sum(data) + initial
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def fix_l4_checksum(frame: bytearray | memoryview, ip: int, l4: int, end: int) -> bool:
    """Complete the TCP/UDP checksum of an IPv4 frame whose checksum the kernel left unfinished.

    `ip` and `l4` are offsets of the IP and transport headers, `end` the end of the IP packet.
    Returns False for protocols without a checksum we know how to finish.
    """
    proto = frame[ip + 9]
    if proto == 6:
        at = l4 + 16
    elif proto == 17:
        at = l4 + 6
    else:
        return False
    length = end - l4
    frame[at : at + 2] = b"\x00\x00"
    pseudo = ones_sum(bytes(frame[ip + 12 : ip + 20]) + struct.pack("!HH", proto, length))
    value = checksum(frame[l4:end], pseudo)
    if proto == 17 and value == 0:
        value = 0xFFFF
    frame[at : at + 2] = struct.pack("!H", value)
    return True


def arp_frame(op: int, src_mac: bytes, src_ip: bytes, dst_mac: bytes, dst_ip: bytes) -> bytes:
    """An ARP request (op 1, to broadcast) or reply (op 2)."""
    eth_dst = BROADCAST if op == 1 else dst_mac
    target_mac = b"\x00" * 6 if op == 1 else dst_mac
    return (
        eth_dst
        + src_mac
        + ETH_ARP
        + ARP_HEADER
        + struct.pack("!H", op)
        + src_mac
        + src_ip
        + target_mac
        + dst_ip
    )


def gratuitous_arp(mac: bytes, ip: bytes) -> bytes:
    """A gratuitous ARP request announcing that `ip` is at `mac` (what switches and routers learn from)."""
    return arp_frame(1, mac, ip, BROADCAST, ip)


def icmp_echo_reply(frame: bytes, ip: int, end: int, mac: bytes) -> bytes | None:
    """The echo reply for an ICMP echo request frame, or None when it is not a well-formed request."""
    ihl = (frame[ip] & 0x0F) * 4
    l4 = ip + ihl
    if end - l4 < 8 or frame[l4] != 8:
        return None
    if checksum(frame[l4:end]) != 0:
        return None
    header = bytearray(frame[ip : ip + 20])
    header[8] = 64  # TTL
    header[10:12] = b"\x00\x00"
    header[12:16], header[16:20] = frame[ip + 16 : ip + 20], frame[ip + 12 : ip + 16]
    header[0] = 0x45
    header[2:4] = struct.pack("!H", 20 + end - l4)
    header[10:12] = struct.pack("!H", checksum(header))
    icmp = bytearray(frame[l4:end])
    icmp[0] = 0
    icmp[2:4] = b"\x00\x00"
    icmp[2:4] = struct.pack("!H", checksum(icmp))
    return frame[6:12] + mac + ETH_IP + bytes(header) + bytes(icmp)
