"""HA mode bgp: the daemon's side of the announcement, and a reader of BIRD's protocol states.

The daemon does not speak BGP. It owns a non-persistent TUN device and puts a VIP's /32 address on it
while it can serve that VIP; BIRD on the same host (`protocol direct` on the device) announces those
addresses to the router, which spreads flows over every balancer that announces (ECMP). The kernel
destroys a non-persistent TUN device with its last file descriptor, so however the daemon dies (kill -9
included) the addresses vanish, BIRD sees the interface go and withdraws: no sentinel is needed.

Who may announce is a pure function (`decide`); the device and its addresses are plain ioctl and
rtnetlink from the standard library.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address
from typing import Any

# Why a VIP is not announced (None: it is).
NOT_READY = "not ready"
NO_TARGET = "no healthy target"
STOPPING = "stopping"


def decide(vips: Mapping[IPv4Address, bool], ready: bool, stopping: bool) -> dict[IPv4Address, str | None]:
    """Per VIP (-> whether some target could take a new connection now): None when it is announced, or
    the reason it is withdrawn. A node that is stopping or not ready yet announces nothing: the router
    would send it flows it cannot pick a target for the way the other balancers do."""
    if stopping:
        return dict.fromkeys(vips, STOPPING)
    if not ready:
        return dict.fromkeys(vips, NOT_READY)
    return {vip: None if usable else NO_TARGET for vip, usable in vips.items()}


# --- the TUN device and its addresses ------------------------------------------------------------------

TUNSETIFF, TUNSETPERSIST, TUNGETIFF = 0x400454CA, 0x400454CB, 0x800454D2
IFF_TUN, IFF_NO_PI, IFF_PERSIST, IFF_UP = 0x0001, 0x1000, 0x0800, 0x1
IFREQ = struct.Struct("16sH")
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
RTM_NEWADDR, RTM_DELADDR = 20, 21
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
IFA_ADDRESS, IFA_LOCAL = 1, 2
RT_SCOPE_UNIVERSE = 0
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
RTATTR = struct.Struct("=HH")
GONE = {99, 2}  # EADDRNOTAVAIL, ENOENT: the address was not there


def _attr(kind: int, data: bytes) -> bytes:
    return RTATTR.pack(RTATTR.size + len(data), kind) + data


def address_message(kind: int, seq: int, index: int, address: IPv4Address) -> bytes:
    """An rtnetlink request adding (RTM_NEWADDR) or deleting (RTM_DELADDR) `address`/32 on an interface."""
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_REPLACE if kind == RTM_NEWADDR else 0)
    body = IFADDRMSG.pack(socket.AF_INET, 32, 0, RT_SCOPE_UNIVERSE, index)
    body += _attr(IFA_LOCAL, address.packed) + _attr(IFA_ADDRESS, address.packed)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def ack_error(reply: bytes) -> int:
    """The errno of a netlink acknowledgement (0: done)."""
    _, kind, _, _, _ = NLMSGHDR.unpack_from(reply)
    if kind != NLMSG_ERROR:
        return 0
    return -struct.unpack_from("=i", reply, NLMSGHDR.size)[0]


class TunDevice:
    """The announcement device: open while the daemon lives, and the addresses it carries."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fd: int | None = None
        self.index = 0
        self.addresses: set[IPv4Address] = set()
        self._seq = 0

    def open(self) -> None:
        """Create the TUN device and bring it up; needs CAP_NET_ADMIN. A persistent device of that name
        (`ip tuntap add`) would outlive the daemon with its addresses, so it is made non-persistent and
        recreated: it must die with the process, and start empty."""
        fd = self._attach()
        try:
            if IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, IFREQ.pack(b"", 0)))[1] & IFF_PERSIST:
                fcntl.ioctl(fd, TUNSETPERSIST, 0)
                os.close(fd)
                fd = self._attach()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                flags = IFREQ.unpack(
                    fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, IFREQ.pack(self.name.encode(), 0))
                )[1]
                fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, IFREQ.pack(self.name.encode(), flags | IFF_UP))
            self.index = socket.if_nametoindex(self.name)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.addresses = set()

    def _attach(self) -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(self.name.encode(), IFF_TUN | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
        return fd

    def set(self, wanted: Iterable[IPv4Address]) -> int:
        """Make the device carry exactly `wanted` (withdrawals first); returns how many changed."""
        wanted = set(wanted)
        gone, new = sorted(self.addresses - wanted), sorted(wanted - self.addresses)
        if not gone and not new:
            return 0
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
            for kind, addresses in ((RTM_DELADDR, gone), (RTM_NEWADDR, new)):
                for address in addresses:
                    self._seq += 1
                    nl.send(address_message(kind, self._seq, self.index, address))
                    err = ack_error(nl.recv(65536))
                    if err and not (kind == RTM_DELADDR and err in GONE):
                        raise OSError(err, f"{os.strerror(err)} ({self.name} {address}/32)")
                    (self.addresses.discard if kind == RTM_DELADDR else self.addresses.add)(address)
        return len(gone) + len(new)

    def close(self) -> None:
        """Destroy the device and its addresses (the kernel does the same when the process dies)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.addresses = set()


# --- BIRD's control socket -----------------------------------------------------------------------------

BIRD_TIMEOUT = 1.0  # seconds for a whole `show protocols` exchange
BIRD_PROTOCOL_ROW = "1002"  # the code of a `show protocols` table row


def read_reply(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(code, text) of one BIRD CLI reply: lines `CODE-text` continue it, a line starting with a space
    continues the previous code, `CODE text` ends it."""
    out: list[tuple[str, str]] = []
    code = ""
    for line in lines:
        line = line.rstrip("\n")
        if line[:4].isdigit() and line[4:5] in ("-", " ", ""):
            code, text, last = line[:4], line[5:], line[4:5] != "-"
        else:
            text, last = line[1:], False
        out.append((code, text))
        if last:
            break
    return out


def parse_protocols(reply: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Rows of `show protocols`: name, proto, table, state, since, info (e.g. `Established`)."""
    rows = []
    for code, text in reply:
        words = text.split()
        if code != BIRD_PROTOCOL_ROW or len(words) < 4:
            continue
        name, proto, table, state, *rest = words
        since = rest[:2] if len(rest) > 1 and rest[1][:1].isdigit() and ":" in rest[1] else rest[:1]
        rows.append(
            {
                "name": name,
                "proto": proto,
                "table": table,
                "state": state,
                "since": " ".join(since),
                "info": " ".join(rest[len(since) :]),
            }
        )
    return rows


def bird_protocols(path: str, timeout: float = BIRD_TIMEOUT) -> list[dict[str, str]]:
    """Ask BIRD at `path` for its protocols (blocking; run it off the event loop). OSError when the socket
    cannot be reached or BIRD does not answer in time."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        with s.makefile("rw", encoding="utf-8", errors="replace", newline="\n") as f:
            read_reply(f)  # the greeting: 0001 BIRD 2.x ready.
            f.write("show protocols\n")
            f.flush()
            return parse_protocols(read_reply(f))


async def protocols(path: str) -> tuple[str, list[dict[str, str]]]:
    """("ok", rows) from BIRD at `path`, or (why not, []): an unreachable BIRD is a state to show."""
    try:
        return "ok", await asyncio.to_thread(bird_protocols, path)
    except OSError as err:
        return f"cannot reach BIRD at {path}: {err.strerror or err}", []


def view(device: str, reasons: Mapping[IPv4Address, str | None], changes: int) -> dict[str, Any]:
    """`show bgp` without BIRD's part: the device, each VIP announced or withdrawn and why."""
    return {
        "device": device,
        "changes": changes,
        "vips": [
            {"vip": str(vip), "announced": why is None, "reason": why or ""}
            for vip, why in sorted(reasons.items())
        ],
    }
