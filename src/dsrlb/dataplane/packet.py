"""Byte-level helpers for the few frames the forwarder builds or repairs itself.

Checksums use the fact that 2**16 == 1 (mod 0xffff): the one's complement sum of 16-bit words is
the big integer of the bytes modulo 0xffff, computed in C by int.from_bytes.
"""

from __future__ import annotations

import struct

ETH_ARP = b"\x08\x06"
ETH_IP = b"\x08\x00"
ETH_IPV6 = b"\x86\xdd"
BROADCAST = b"\xff" * 6
ARP_HEADER = b"\x00\x01\x08\x00\x06\x04"  # Ethernet, IPv4, hlen 6, plen 4
ALL_NODES = b"\xff\x02" + b"\x00" * 13 + b"\x01"  # ff02::1, where unsolicited advertisements go
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
UNSPECIFIED = b"\x00" * 16  # ::, the source of a duplicate address detection probe
SOLICITED_NODE = b"\xff\x02" + b"\x00" * 9 + b"\x01\xff"  # ff02::1:ff00:0/104
NS, NA = 135, 136  # ICMPv6 types of neighbor discovery
SOLICITED, OVERRIDE = 0x40, 0x20  # flags of a neighbor advertisement (the first byte after its checksum)


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


def pseudo_sum(addresses: bytes, proto: int, length: int) -> int:
    """The one's complement sum of an upper-layer pseudo-header: source and destination `addresses`
    (IPv4 or IPv6, packed), protocol and length. Both families sum alike (RFC 768/793, RFC 8200 8.1):
    IPv6's 32-bit length and next-header fields only add zero words."""
    return ones_sum(addresses + struct.pack("!HH", proto, length))


def fix_l4_checksum(frame: bytearray | memoryview, ip: int, l4: int, end: int) -> bool:
    """Complete the TCP/UDP checksum of an IPv4 or IPv6 frame whose checksum the kernel left unfinished.

    `ip` and `l4` are offsets of the IP and transport headers, `end` the end of the IP packet.
    Returns False for protocols without a checksum we know how to finish.
    """
    if frame[ip] >> 4 == 6:
        proto, addresses = frame[ip + 6], bytes(frame[ip + 8 : ip + 40])
    else:
        proto, addresses = frame[ip + 9], bytes(frame[ip + 12 : ip + 20])
    if proto == 6:
        at = l4 + 16
    elif proto == 17:
        at = l4 + 6
    else:
        return False
    length = end - l4
    frame[at : at + 2] = b"\x00\x00"
    value = checksum(frame[l4:end], pseudo_sum(addresses, proto, length))
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


def icmp6_frame(
    src_mac: bytes, dst_mac: bytes, src: bytes, dst: bytes, hop_limit: int, message: bytes
) -> bytes:
    """An Ethernet frame with an IPv6 packet carrying an ICMPv6 message, its checksum filled in."""
    icmp = bytearray(message)
    icmp[2:4] = b"\x00\x00"
    icmp[2:4] = struct.pack("!H", checksum(icmp, pseudo_sum(src + dst, 58, len(icmp))))
    header = struct.pack("!IHBB", 0x60000000, len(icmp), 58, hop_limit)
    return dst_mac + src_mac + ETH_IPV6 + header + src + dst + bytes(icmp)


def multicast_mac(group: bytes) -> bytes:
    """The Ethernet address of an IPv6 multicast group (RFC 2464): 33:33 and its last 32 bits."""
    return b"\x33\x33" + group[12:]


def solicited_node(address: bytes) -> bytes:
    """The solicited-node multicast group of an IPv6 address, where solicitations for it go."""
    return SOLICITED_NODE + address[13:]


def neighbor_solicitation(own_mac: bytes, source_ip6: bytes, target_ip6: bytes) -> bytes:
    """A Neighbor Solicitation for `target_ip6`'s MAC, to its solicited-node group, with ours in a source
    link-layer address option so that the target can answer without asking back."""
    group = solicited_node(target_ip6)
    message = struct.pack("!BBHI", NS, 0, 0, 0) + target_ip6 + b"\x01\x01" + own_mac
    return icmp6_frame(own_mac, multicast_mac(group), source_ip6, group, 255, message)


def neighbor_advertisement(
    own_mac: bytes, source_ip6: bytes, dest_ip6: bytes, dest_mac: bytes, solicited: bool
) -> bytes:
    """A Neighbor Advertisement that `source_ip6` is at `own_mac` (override set): solicited, the answer
    to a solicitation; unsolicited to ALL_NODES / ALL_NODES_MAC, IPv6's gratuitous ARP."""
    flags = (SOLICITED if solicited else 0) | OVERRIDE
    message = struct.pack("!BBHB3x", NA, 0, 0, flags) + source_ip6 + b"\x02\x01" + own_mac
    return icmp6_frame(own_mac, dest_mac, source_ip6, dest_ip6, 255, message)


def neighbor_discovery(frame: bytes, ip: int, end: int) -> tuple[int, int, bytes, bytes | None] | None:
    """(type, flags, target, link-layer address option) of a Neighbor Solicitation or Advertisement that
    passes RFC 4861's validity checks (7.1.1, 7.1.2), else None. Hop limit 255 proves it was not routed:
    only a neighbour can make us answer, or re-point a target."""
    l4 = ip + 40
    if frame[ip + 7] != 255 or end - l4 < 24 or frame[l4 + 1] != 0:
        return None
    kind, flags, target = frame[l4], frame[l4 + 4], frame[l4 + 8 : l4 + 24]
    src, dst = frame[ip + 8 : ip + 24], frame[ip + 24 : ip + 40]
    if kind not in (NS, NA) or target[0] == 0xFF:
        return None
    if checksum(frame[l4:end], pseudo_sum(src + dst, 58, end - l4)) != 0:
        return None
    lladdr = None
    at = l4 + 24
    while at < end:  # options: type, length in units of 8 bytes (0 is invalid), data
        if end - at < 2 or not frame[at + 1] or at + 8 * frame[at + 1] > end:
            return None
        if frame[at] == kind - 134 and frame[at + 1] == 1:  # source (1, in NS) or target (2, in NA) MAC
            lladdr = frame[at + 2 : at + 8]
        at += 8 * frame[at + 1]
    if kind == NS and src == UNSPECIFIED and (dst[:13] != SOLICITED_NODE or lladdr is not None):
        return None
    if kind == NA and dst[0] == 0xFF and flags & SOLICITED:
        return None
    return kind, flags, target, lladdr


def icmp6_echo_reply(frame: bytes, ip: int, end: int, mac: bytes) -> bytes | None:
    """The echo reply for an ICMPv6 echo request frame, or None when it is not a well-formed request."""
    l4 = ip + 40
    if end - l4 < 8 or frame[l4] != 128:
        return None
    src, dst = frame[ip + 8 : ip + 24], frame[ip + 24 : ip + 40]
    if checksum(frame[l4:end], pseudo_sum(src + dst, 58, end - l4)) != 0:
        return None
    return icmp6_frame(mac, frame[6:12], dst, src, 64, b"\x81" + frame[l4 + 1 : end])
