# Copyright: (c) 2026, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who answers ARP for an address on this host's segment: sends ARP requests for ADDRESS from the
interface (given, else the one whose connected route holds ADDRESS) and prints one line per answer,
`reply from ADDRESS [MAC]`. Python's standard library only (a packet socket: needs root), so that
playbooks/verify.yml needs no arping on the prober. Exit 0 also without answers; 2 when it cannot probe.

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
SIOCGIFADDR = 0x8915


def route_interface(address: bytes) -> str | None:
    """The interface of the longest connected (gateway-less) route holding the address."""
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


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 4:
        print(__doc__, file=sys.stderr)
        return 2
    target = socket.inet_aton(argv[1])
    ifname = (argv[2] if len(argv) > 2 else "") or route_interface(target)
    count = int(argv[3]) if len(argv) > 3 else 3
    if not ifname:
        print(f"no interface of this host is on the segment of {argv[1]}: name one", file=sys.stderr)
        return 2
    try:
        with open(f"/sys/class/net/{ifname}/address", encoding="ascii") as handle:
            mac = bytes.fromhex(handle.read().strip().replace(":", ""))
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        sock.bind((ifname, ETH_P_ARP))
        own = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))[20:24]
    except OSError as err:
        print(f"cannot probe on {ifname}: {err}", file=sys.stderr)
        return 2
    request = (
        b"\xff" * 6
        + mac
        + struct.pack("!H", ETH_P_ARP)
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
        + mac
        + own
        + b"\x00" * 6
        + target
    )
    print(f"probing {argv[1]} on {ifname} from {socket.inet_ntoa(own)} ({mac.hex(':')})", flush=True)
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
        frame = sock.recv(2048)
        if len(frame) < 42 or frame[12:14] != b"\x08\x06":
            continue
        op, sender_mac, sender_ip = struct.unpack("!H", frame[20:22])[0], frame[22:28], frame[28:32]
        if op == 2 and sender_ip == target:
            line = f"reply from {argv[1]} [{sender_mac.hex(':')}]"
            if line not in answers:
                answers.add(line)
                print(line, flush=True)
    print(f"{sent} requests, {len(answers)} distinct answers", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
