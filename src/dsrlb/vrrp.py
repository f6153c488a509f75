"""VRRP (RFC 5798 version 3, RFC 3768 version 2) for a pair of balancers sharing VIPs and `virt`.

Over IPv4 (the default) or, with `family ipv6` (version 3 only), over IPv6: adverts from the VRRP
interface's link-local address to ff02::12 (RFC 5798 5.1.2), listing the IPv6 addresses.

`VrrpRouter` is the protocol state machine; it does no I/O itself: it gets received frames, sends
frames through a callback and reports state changes, so the daemon wires it to its sockets and tests
can wire two of them to each other. Beyond the RFC, a master that hears a lower-priority master
re-asserts (gratuitous ARP, and an advert unless one just went out) at most once per advert interval,
so a healed split brain converges within an interval while a flood of forged adverts gets no more
adverts out of it than silence would;
a router that is not ready (targets not yet checked) does not preempt a working master; and with
`peers` set, adverts from any other source are dropped (counted as `not_a_peer`) before they are
parsed. Received adverts never add timers: the one timer is moved by its deadline.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from dsrlb.config.model import Vrrp
from dsrlb.dataplane.packet import checksum, pseudo_sum

log = logging.getLogger("dsrlb.vrrp")

PROTO = 112
GROUP = IPv4Address("224.0.0.18")
GROUP_MAC = bytes.fromhex("01005e000012")
TTL = 255  # also the IPv6 hop limit
GROUP6 = IPv6Address("ff02::12")
GROUP6_MAC = bytes.fromhex("333300000012")

INIT, BACKUP, MASTER = "init", "backup", "master"


@dataclass(frozen=True)
class Advert:
    version: int
    vrid: int
    priority: int
    interval_cs: int  # centiseconds (version 2: whole seconds converted)
    source: IPv4Address | IPv6Address
    addresses: tuple[IPv4Address | IPv6Address, ...]


IF_INET6 = "/proc/net/if_inet6"
_TENTATIVE, _DADFAILED = 0x40, 0x08  # IFA_F_* flags: duplicate address detection running, or failed


def link_local(interface: str, table: str = IF_INET6) -> tuple[IPv6Address | None, bool]:
    """The IPv6 link-local address of `interface` as the kernel has it (the source of IPv6 adverts,
    RFC 5798 5.1.2.1), and whether one exists that is still tentative: (None, True) means wait."""
    waiting = False
    try:
        with open(table) as lines:
            for line in lines:  # ADDRESS IFINDEX PREFIXLEN SCOPE FLAGS NAME, all hexadecimal but the name
                fields = line.split()
                if len(fields) != 6 or fields[5] != interface:
                    continue
                address = IPv6Address(bytes.fromhex(fields[0]))
                flags = int(fields[4], 16)
                if not address.is_link_local or flags & _DADFAILED:
                    continue
                if flags & _TENTATIVE:
                    waiting = True
                    continue
                return address, False
    except OSError:  # no IPv6 in this kernel
        pass
    return None, waiting


class BadAdvert(ValueError):
    """A frame that is not a valid advert; the message is the drop reason for the counters."""


def build(
    version: int,
    vrid: int,
    priority: int,
    advert_ms: int,
    source: IPv4Address | IPv6Address,
    addresses: Sequence[IPv4Address | IPv6Address],
    mac: bytes,
) -> bytes:
    """An advert as a complete Ethernet frame, sourced from `source` with our MAC. An IPv6 `source`
    (its link-local address) makes an IPv6 advert to ff02::12; only version 3 runs over IPv6."""
    if any(a.version != source.version for a in addresses):
        raise ValueError(f"an advert from {source} lists addresses of the other family")
    addrs = b"".join(a.packed for a in addresses)
    six = source.version == 6
    if six and version != 3:
        raise ValueError("VRRP over IPv6 is version 3")
    group = GROUP6 if six else GROUP
    if version == 3:
        body = struct.pack("!BBBBH", 0x31, vrid, priority, len(addresses), (advert_ms // 10) & 0x0FFF)
        vrrp = body + b"\0\0" + addrs
        csum = checksum(vrrp, pseudo_sum(source.packed + group.packed, PROTO, len(vrrp)))
    else:
        body = struct.pack("!BBBBBB", 0x21, vrid, priority, len(addresses), 0, max(1, advert_ms // 1000))
        vrrp = body + b"\0\0" + addrs + b"\0" * 8
        csum = checksum(vrrp)
    vrrp = vrrp[:6] + struct.pack("!H", csum) + vrrp[8:]
    if six:  # RFC 8200: version 6, traffic class 0xC0 (as IPv4's TOS), no flow label
        ip = struct.pack("!IHBB", 0x6C000000, len(vrrp), PROTO, TTL) + source.packed + group.packed
        return GROUP6_MAC + mac + b"\x86\xdd" + ip + vrrp
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(vrrp), 0, 0, TTL, PROTO, 0, source.packed, GROUP.packed
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return GROUP_MAC + mac + b"\x08\x00" + ip + vrrp


def source_of(frame: bytes | memoryview) -> bytes:
    """The packed IP source of an IPv4 or IPv6 frame, unchecked (b"" when too short)."""
    return bytes(frame[22:38] if frame[12:14] == b"\x86\xdd" else frame[26:30])


def parse(frame: bytes) -> Advert:
    """Validate and decode an advert frame (Ethernet + IPv4 or IPv6 + VRRP); raises BadAdvert."""
    if frame[12:14] == b"\x86\xdd":
        return _parse6(frame)
    if len(frame) < 14 + 20 + 8:
        raise BadAdvert("short")
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    total = struct.unpack_from("!H", ip, 2)[0]
    if ip[0] >> 4 != 4 or ihl < 20 or total > len(ip) or total < ihl + 8:
        raise BadAdvert("bad_ip")
    if ip[8] != TTL:
        raise BadAdvert("ttl")
    if ip[9] != PROTO:
        raise BadAdvert("protocol")
    return _decode(ip[12:20], ip[ihl:total], IPv4Address)


def _parse6(frame: bytes) -> Advert:
    """An IPv6 advert: no extension headers, to ff02::12, hop limit 255, version 3 (RFC 5798 7.1)."""
    if len(frame) < 14 + 40 + 8:
        raise BadAdvert("short")
    ip = frame[14:]
    total = 40 + struct.unpack_from("!H", ip, 4)[0]
    if ip[0] >> 4 != 6 or total > len(ip) or total < 40 + 8:
        raise BadAdvert("bad_ip")
    if ip[7] != TTL:
        raise BadAdvert("ttl")
    if ip[6] != PROTO:
        raise BadAdvert("protocol")
    if ip[24:40] != GROUP6.packed:
        raise BadAdvert("destination")
    if ip[40] >> 4 != 3:
        raise BadAdvert("version")
    return _decode(ip[8:40], ip[40:total], IPv6Address)


def _decode(addresses: bytes, vrrp: bytes, family: type[IPv4Address] | type[IPv6Address]) -> Advert:
    """The VRRP part; `addresses` are the packed source and destination of the IP header."""
    version, kind = vrrp[0] >> 4, vrrp[0] & 15
    if kind != 1 or version not in (2, 3):
        raise BadAdvert("version")
    size = 4 if family is IPv4Address else 16
    count = vrrp[3]
    need = 8 + size * count + (8 if version == 2 else 0)
    if len(vrrp) < need:
        raise BadAdvert("length")
    if version == 3:
        ok = checksum(vrrp, pseudo_sum(addresses, PROTO, len(vrrp))) == 0
        interval = struct.unpack_from("!H", vrrp, 4)[0] & 0x0FFF
    else:
        ok = checksum(vrrp) == 0
        interval = vrrp[5] * 100
    if not ok:
        raise BadAdvert("checksum")
    listed = tuple(family(vrrp[8 + size * i : 8 + size * (i + 1)]) for i in range(count))
    source = family(addresses[: len(addresses) // 2])
    return Advert(version, vrrp[1], vrrp[2], interval, source, listed)


@dataclass
class Counters:
    sent: int = 0
    received: int = 0
    transitions: int = 0
    reasserts: int = 0  # answers to a lower-priority or leaving master, at most one per advert interval
    drops: collections.Counter = field(default_factory=collections.Counter)


class VrrpRouter:
    """One virtual router instance (RFC 5798 section 6.4), driven by asyncio timers."""

    def __init__(
        self,
        config: Vrrp,
        source: IPv4Address | IPv6Address,
        addresses: Sequence[IPv4Address | IPv6Address],
        mac: bytes,
        send: Callable[[bytes], None],
        on_state: Callable[[str], None],
        announce: Callable[[], None],
        ready: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.source = source
        self.addresses = tuple(addresses)
        self.mac = mac
        self._send = send
        self._on_state = on_state
        self._announce = announce
        self._ready = ready
        self._clock = clock
        self.priority = config.priority
        self.state = INIT
        self.master: IPv4Address | IPv6Address | None = None  # last known master
        self.master_adver_cs = config.advert_ms // 10  # learned from the master (v3)
        self.counters = Counters()
        self.since = clock()
        self.peer_master_seen = 0.0  # when another router last advertised as master (priority > 0)
        self.reasserted = float("-inf")  # when we last answered a lower-priority or leaving master
        self._advertised = float("-inf")  # when we last sent an advert (loop time)
        self._timer: asyncio.TimerHandle | None = None  # at most one, due at self._when
        self._when = 0.0
        self._deadline = 0.0  # when self._due runs; later than self._when after a re-arm
        self._due: Callable[[], None] | None = None
        self.accepts = self._accepts(config)

    @staticmethod
    def _accepts(config: Vrrp) -> frozenset[bytes] | None:
        """The packed source addresses adverts may come from; None: any (no `peers`)."""
        return frozenset(peer.packed for peer in config.peers) if config.peers else None

    def reconfigure(self, config: Vrrp, addresses: Sequence[IPv4Address | IPv6Address]) -> None:
        """A reload that keeps vrid, version and source: new priority, timing, addresses and peers."""
        self.config, self.priority, self.addresses = config, config.priority, tuple(addresses)
        self.accepts = self._accepts(config)

    def from_peer(self, frame: bytes) -> bool:
        """Cheap pre-parse check, safe on any thread: the IP source is ours or a peer's (or no
        `peers` are configured). Our own looped-back adverts pass; `receive` ignores them."""
        accepts = self.accepts
        if accepts is None:
            return True
        source = source_of(frame)
        return source in accepts or source == self.source.packed

    # --- timing (RFC 5798 6.1) ---------------------------------------------------------------
    @property
    def advert_interval(self) -> float:
        return self.config.advert_ms / 1000

    def skew(self, priority: int | None = None) -> float:
        cs = self.master_adver_cs if self.config.version == 3 else self.config.advert_ms // 10
        return ((256 - (priority or self.priority)) * cs / 256) / 100

    def master_down_interval(self) -> float:
        cs = self.master_adver_cs if self.config.version == 3 else self.config.advert_ms // 10
        return 3 * cs / 100 + self.skew()

    # --- events -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.priority == 255:
            self._become_master("owner of the addresses")
        else:
            self._become_backup(None, "startup")

    def receive(self, frame: bytes) -> None:
        if not self.from_peer(frame):
            self.counters.drops["not_a_peer"] += 1
            return
        try:
            advert = parse(frame)
        except BadAdvert as err:
            self.counters.drops[str(err)] += 1
            return
        if advert.vrid != self.config.vrid:
            self.counters.drops["other_vrid"] += 1
            return
        if advert.source == self.source:
            return  # our own advert, looped back
        if advert.source.version != self.source.version:
            self.counters.drops["family_mismatch"] += 1
            return
        if advert.version != self.config.version:
            self.counters.drops["version_mismatch"] += 1
            return
        self.counters.received += 1
        if advert.priority:
            self.peer_master_seen = self._clock()
        if self.state == BACKUP:
            if advert.priority == 0:
                self._arm(
                    self.skew(), lambda: self._become_master(f"master {advert.source} left (priority 0)")
                )
            elif not self.config.preempt or advert.priority >= self.priority or not self._ready():
                self.master = advert.source
                if advert.version == 3 and advert.interval_cs:
                    self.master_adver_cs = advert.interval_cs
                self._arm(self.master_down_interval(), self._master_down)
            # else: a lower-priority master and we preempt: let the timer expire
        elif self.state == MASTER:
            if advert.priority == 0:
                self._reassert(advert, announce=False)  # RFC 5798 6.4.3: advertise at once
            elif self._wins(advert):
                self._become_backup(advert, f"higher priority master {advert.source} ({advert.priority})")
            else:
                # a lower-priority master: RFC 5798 discards it; we also re-assert, to heal a split brain
                self._reassert(advert, announce=True)

    def _reassert(self, advert: Advert, announce: bool) -> None:
        """Announce the addresses and advertise now, at most once per advert interval; the advert only
        when our last one is half an interval old or more (else the other master has just heard us, or
        will with the next periodic one). So a flood of adverts costs no more adverts than silence, one
        gratuitous-ARP burst per interval and no timers."""
        now = asyncio.get_running_loop().time()  # the clock of the advert timer
        if now - self.reasserted < self.advert_interval:
            self.counters.drops["reassert_limited"] += 1
            return
        self.reasserted = now
        self.counters.reasserts += 1
        log.info(
            "vrid %d: master %s with priority %d seen, re-asserting",
            self.config.vrid,
            advert.source,
            advert.priority,
        )
        if announce:
            self._announce()
        if now - self._advertised >= self.advert_interval / 2:
            self._advertise()  # also moves the periodic advert one interval on

    def _wins(self, advert: Advert) -> bool:
        """True when the advert's sender should be master instead of us."""
        if advert.priority != self.priority:
            return advert.priority > self.priority
        return int(advert.source) > int(self.source)

    def shutdown(self) -> None:
        """Leave: a master sends priority 0 so a backup takes over after skew time, not 3 intervals."""
        self._cancel()
        if self.state == MASTER:
            self.priority = 0
            self._send_advert()
        self._set_state(INIT, "shutdown")

    # --- transitions --------------------------------------------------------------------------
    def _master_down(self) -> None:
        self._become_master(f"no advert from a master for {self.master_down_interval():.2f} s")

    def _become_master(self, why: str) -> None:
        self.master = self.source
        self._set_state(MASTER, why)
        self._announce()  # tell the network first: the old master stops forwarding on our advert
        self._advertise()

    def _become_backup(self, advert: Advert | None, why: str) -> None:
        if advert is not None:
            self.master = advert.source
            if advert.version == 3 and advert.interval_cs:
                self.master_adver_cs = advert.interval_cs
        self._set_state(BACKUP, why)
        self._arm(self.master_down_interval(), self._master_down)

    def _set_state(self, state: str, why: str) -> None:
        if state == self.state:
            return
        log.info("vrid %d: %s -> %s: %s", self.config.vrid, self.state, state, why)
        self.state = state
        self.since = self._clock()
        self.counters.transitions += 1
        self._on_state(state)

    # --- adverts ------------------------------------------------------------------------------
    def _advertise(self) -> None:
        self._send_advert()
        self._arm(self.advert_interval, self._advertise)

    def advert(self, priority: int | None = None) -> bytes:
        """Our advert frame, at our priority or the one given (0: resigning)."""
        c = self.config
        prio = self.priority if priority is None else priority
        return build(c.version, c.vrid, prio, c.advert_ms, self.source, self.addresses, self.mac)

    def _send_advert(self) -> None:
        self._send(self.advert())
        self.counters.sent += 1
        try:
            self._advertised = asyncio.get_running_loop().time()
        except RuntimeError:  # shutdown outside the loop
            pass

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        """Run `callback` after `delay` instead of what was due. A later deadline keeps the pending
        timer, which moves itself on when it fires, so a stream of adverts adds no timer handles."""
        loop = asyncio.get_running_loop()
        self._deadline, self._due = loop.time() + delay, callback
        if self._timer is not None and self._when <= self._deadline:
            return
        self._cancel()
        self._due = callback
        self._when = self._deadline
        self._timer = loop.call_at(self._when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._deadline > self._when:  # re-armed for later meanwhile
            self._when = self._deadline
            self._timer = asyncio.get_running_loop().call_at(self._when, self._fire)
            return
        callback, self._due = self._due, None
        if callback is not None:
            callback()

    def _cancel(self) -> None:
        self._due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def view(self) -> dict:
        c = self.config
        return {
            "state": self.state,
            "vrid": c.vrid,
            "priority": self.priority,
            "version": c.version,
            "family": c.family,
            "advert_ms": c.advert_ms,
            "preempt": c.preempt,
            "ready": self._ready(),
            "source": str(self.source),
            "master": str(self.master) if self.master else None,
            "addresses": [str(a) for a in self.addresses],
            "since": round(self._clock() - self.since, 1),
            "transitions": self.counters.transitions,
            "adverts_sent": self.counters.sent,
            "adverts_received": self.counters.received,
            "reasserts": self.counters.reasserts,
            "peers": [str(p) for p in c.peers],
            "drops": dict(self.counters.drops),
        }
