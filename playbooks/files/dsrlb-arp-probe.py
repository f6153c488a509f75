# Copyright: (c) 2026, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who answers ARP (IPv4) or Neighbor Discovery (IPv6) for an address on this host's segment.

For an IPv4 ADDRESS: ARP requests from the interface. For an IPv6 ADDRESS: Neighbor Solicitations to the
address's solicited-node multicast group, with this host's MAC as source link-layer address option,
like a router resolving the address; the Neighbor Advertisements for it are the answers. The interface
is the one given, else the one whose connected route holds ADDRESS. One line per answer,
`reply from ADDRESS [MAC]` (the sender's Ethernet address). Python's standard library only (a packet
socket: needs root; Python 3.9 and later), so that playbooks/verify.yml needs no arping or ndisc6 on the
prober. Exit 0 also without answers; 2 when it cannot probe.

    dsrlb-arp-probe.py ADDRESS [INTERFACE] [COUNT]
"""

from __future__ import annotations  # `str | None` on the probers' Python 3.9 (Debian 11) too

import fcntl
import select
import socket
import struct
import sys
import time

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
SIOCGIFADDR = 0x8915
ICMPV6 = 58
ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT = 135, 136
RTF_GATEWAY = 0x2
IFA_F_TENTATIVE, IFA_F_DADFAILED = 0x40, 0x08


def route_interface(address: bytes) -> str | None:
    """The interface of the longest connected (gateway-less) IPv4 route holding the address."""
    value = struct.unpack("<I", address)[0]
    best: tuple[int, str] | None = None
    with open("/proc/net/route", encoding="ascii") as routes:
        next(routes)
        for line in routes:
            fields = line.split()
            dest, gateway, mask = int(fields[1], 16), int(fields[2], 16), int(fields[7], 16)
            if gateway == 0 and mask and value & mask == dest:
                bits = bin(mask).count("1")
                if best is None or bits > best[0]:
                    best = (bits, fields[0])
    return best[1] if best else None


def _prefix(address: bytes, length: int) -> int:
    return int.from_bytes(address, "big") >> (128 - length) if length else 0


def route_interface6(address: bytes, routes: str = "/proc/net/ipv6_route") -> str | None:
    """The interface of the longest connected (gateway-less, not /128, not lo) IPv6 route holding it."""
    best: tuple[int, str] | None = None
    with open(routes, encoding="ascii") as table:
        for line in table:
            fields = line.split()
            dest, length = bytes.fromhex(fields[0]), int(fields[1], 16)
            gateway, flags, dev = int(fields[4], 16), int(fields[8], 16), fields[9]
            if gateway or flags & RTF_GATEWAY or not 0 < length < 128 or dev == "lo":
                continue
            if _prefix(address, length) == _prefix(dest, length) and (best is None or length > best[0]):
                best = (length, dev)
    return best[1] if best else None


def own_address6(ifname: str, target: bytes, table: str = "/proc/net/if_inet6") -> bytes | None:
    """This host's IPv6 source on the interface: a global address in the target's longest matching
    prefix first, else any global one, else the link-local one (not tentative, not failed DAD)."""
    best: tuple[int, bytes] | None = None
    with open(table, encoding="ascii") as addresses:
        for line in addresses:
            fields = line.split()
            address, length, scope, flags = (
                bytes.fromhex(fields[0]),
                int(fields[2], 16),
                int(fields[3], 16),
                int(fields[4], 16),
            )
            if fields[5] != ifname or flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                continue
            if scope == 0x00:  # global
                rank = 2 if _prefix(address, length) == _prefix(target, length) else 1
            elif scope == 0x20:  # link
                rank = 0
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, address)
    return best[1] if best else None


def arp_request(mac: bytes, own: bytes, target: bytes) -> bytes:
    """A broadcast ARP request for target (IPv4, 4 bytes) from own / mac."""
    return (
        b"\xff" * 6
        + mac
        + struct.pack("!H", ETH_P_ARP)
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
        + mac
        + own
        + b"\x00" * 6
        + target
    )


def arp_reply_sender(frame: bytes, target: bytes) -> bytes | None:
    """The sender MAC of an ARP reply for target, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    op, sender_mac, sender_ip = struct.unpack("!H", frame[20:22])[0], frame[22:28], frame[28:32]
    return sender_mac if op == 2 and sender_ip == target else None


def solicited_node(target: bytes) -> bytes:
    """ff02::1:ffXX:XXXX, the solicited-node multicast group of an IPv6 address (RFC 4291 2.7.1)."""
    return bytes.fromhex("ff0200000000000000000001ff") + target[13:]


def icmpv6_checksum(source: bytes, destination: bytes, message: bytes) -> int:
    """The ICMPv6 checksum (RFC 4443 2.3) of message (its checksum field zero) over the IPv6
    pseudo-header: source, destination, upper-layer length, next header 58."""
    data = source + destination + struct.pack("!I3xB", len(message), ICMPV6) + message
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def neighbor_solicitation(mac: bytes, source: bytes, target: bytes) -> bytes:
    """An Ethernet frame with a Neighbor Solicitation for target (RFC 4861 4.3) from source / mac to the
    target's solicited-node group (Ethernet 33:33 + its last 32 bits), hop limit 255, with the source
    link-layer address option."""
    group = solicited_node(target)
    message = struct.pack("!BBHI", ND_NEIGHBOR_SOLICIT, 0, 0, 0) + target + struct.pack("!BB", 1, 1) + mac
    checksum = icmpv6_checksum(source, group, message)
    message = message[:2] + struct.pack("!H", checksum) + message[4:]
    ipv6 = struct.pack("!IHBB", 6 << 28, len(message), ICMPV6, 255) + source + group
    return b"\x33\x33" + group[12:] + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + message


def advert_sender(frame: bytes, target: bytes) -> bytes | None:
    """The Ethernet source of a Neighbor Advertisement for target (no extension headers), else None."""
    if len(frame) < 14 + 40 + 24 or frame[12:14] != b"\x86\xdd" or frame[14] >> 4 != 6:
        return None
    if frame[20] != ICMPV6 or frame[21] != 255:  # an NA is ICMPv6 with hop limit 255 (RFC 4861 7.1.2)
        return None
    icmp = frame[54:]
    if icmp[0] != ND_NEIGHBOR_ADVERT or icmp[1] != 0 or icmp[8:24] != target:
        return None
    return frame[6:12]


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 4:
        print(__doc__, file=sys.stderr)
        return 2
    v6 = ":" in argv[1]
    try:
        target = socket.inet_pton(socket.AF_INET6, argv[1]) if v6 else socket.inet_aton(argv[1])
    except OSError:
        print(f"not an IPv4 or IPv6 address: {argv[1]}", file=sys.stderr)
        return 2
    ifname = (argv[2] if len(argv) > 2 else "") or (route_interface6 if v6 else route_interface)(target)
    count = int(argv[3]) if len(argv) > 3 else 3
    if not ifname:
        print(f"no interface of this host is on the segment of {argv[1]}: name one", file=sys.stderr)
        return 2
    proto = ETH_P_IPV6 if v6 else ETH_P_ARP
    try:
        with open(f"/sys/class/net/{ifname}/address", encoding="ascii") as handle:
            mac = bytes.fromhex(handle.read().strip().replace(":", ""))
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
        sock.bind((ifname, proto))
        if v6:
            own = own_address6(ifname, target)
            if own is None:
                raise OSError(f"no usable IPv6 address on {ifname}")
        else:
            own = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))[20:24]
    except OSError as err:
        print(f"cannot probe on {ifname}: {err.strerror or err}", file=sys.stderr)
        return 2
    if v6:
        request, answer, what = (
            neighbor_solicitation(mac, own, target),
            advert_sender,
            "neighbor solicitations",
        )
        source = socket.inet_ntop(socket.AF_INET6, own)
    else:
        request, answer, what = arp_request(mac, own, target), arp_reply_sender, "ARP requests"
        source = socket.inet_ntoa(own)
    print(f"probing {argv[1]} on {ifname} from {source} ({mac.hex(':')}) with {what}", flush=True)
    answers: set[str] = set()
    deadline = time.monotonic() + count + 1
    next_send = 0.0
    sent = 0
    while (now := time.monotonic()) < deadline:
        if sent < count and now >= next_send:
            sock.send(request)
            sent, next_send = sent + 1, now + 1
        ready = select.select([sock], [], [], 0.1)[0]
        if not ready:
            continue
        sender = answer(sock.recv(2048), target)
        if sender is not None:
            line = f"reply from {argv[1]} [{sender.hex(':')}]"
            if line not in answers:
                answers.add(line)
                print(line, flush=True)
    print(f"{sent} requests, {len(answers)} distinct answers", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
