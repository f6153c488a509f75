"""Health checks of targets: single probes and the per-target monitor that turns them into up/down.

A check is down when none of its probes has succeeded for `timeout` seconds and up again at its
first success; a target is up when all its checks are up. Probes go out from the network's `real`
address (`source`), because that is the address targets and their firewalls expect the balancer to
use.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from dsrlb.config.model import HealthCheck

Address = IPv4Address | IPv6Address  # a target's, and the `real` or `real6` probes come from

log = logging.getLogger("dsrlb.health")

KINDS = ("tcpopen", "ping", "http")
MAX_DEADLINE = 5.0
_ICMP_ECHO_REPLY, _ICMP_ECHO_REQUEST = 0, 8
_SOL_RAW, _ICMP_FILTER = 255, 1  # linux/icmp.h: let only echo replies reach the raw socket
_ICMP6_ECHO_REQUEST, _ICMP6_ECHO_REPLY, _ICMP6_FILTER = 128, 129, 1  # linux/icmpv6.h
_ping_sequence = itertools.count(random.getrandbits(16))


def describe(check: HealthCheck) -> str:
    """Short name of a check for details and logs, e.g. "tcpopen 80"."""
    if check.kind == "ping":
        return "ping"
    if check.kind == "http":
        return f"http {check.port} {check.path or '/'}"
    return f"{check.kind} {check.port}"


def deadline(check: HealthCheck) -> float:
    """A probe never outlives its interval or timeout, so probes of one check never overlap."""
    return min(check.interval, check.timeout, MAX_DEADLINE)


def _validate(check: HealthCheck) -> None:
    if check.kind not in KINDS:
        raise ValueError(f"unknown health check kind {check.kind!r} (one of {', '.join(KINDS)})")
    if check.kind != "ping" and not (check.port and 0 < check.port < 65536):
        raise ValueError(f"{check.kind} check needs a port in 1..65535, not {check.port!r}")
    if check.interval <= 0 or check.timeout <= 0:
        raise ValueError(f"{describe(check)}: interval and timeout must be > 0")
    path = check.path or "/"
    if check.kind == "http" and (not path.startswith("/") or not all(33 <= ord(ch) < 127 for ch in path)):
        raise ValueError(f"http check path must start with / and be printable ASCII, not {path!r}")


async def probe(check: HealthCheck, address: Address, source: Address | None) -> tuple[bool, str]:
    """One probe of `address`; (ok, detail) where detail says what happened, e.g. "tcpopen 80: connected"."""
    _validate(check)
    limit = deadline(check)
    name = describe(check)
    try:
        async with asyncio.timeout(limit):
            if check.kind == "ping":
                outcome = await _ping(address, source)
            elif check.kind == "http":
                outcome = await _http(address, check.port, check.path or "/", source)
            else:
                outcome = await _tcpopen(address, check.port, source)
    except TimeoutError:
        return False, f"{name}: timeout after {limit:g} s"
    except OSError as exc:
        return False, f"{name}: {_reason(exc)}"
    ok, what = outcome
    return ok, f"{name}: {what}"


def _reason(exc: OSError) -> str:
    """Say "connection refused" rather than asyncio's "Connect call failed ('10.0.0.1', 80)"."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _local(source: Address | None) -> tuple[str, int] | None:
    return (str(source), 0) if source is not None else None


async def _tcpopen(address: Address, port: int, source: Address | None) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(str(address), port, local_addr=_local(source))
    await _close(writer)
    return True, "connected"


async def _http(address: Address, port: int, path: str, source: Address | None) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(str(address), port, local_addr=_local(source))
    try:
        name = f"[{address}]" if address.version == 6 else str(address)
        host = name if port == 80 else f"{name}:{port}"
        request = (
            f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: dsrlb-health\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("ascii"))
        line = await reader.readline()
    except ValueError:  # no newline within the stream's 64 KiB limit
        return False, "no HTTP status line"
    finally:
        await _close(writer)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, "no HTTP status line" if not line else f"bad status line {line[:40]!r}"
    status = int(parts[1])
    return 200 <= status < 400, f"status {status}"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _ping(address: Address, source: Address | None) -> tuple[bool, str]:
    if address.version == 6:
        return await _ping6(address, source)
    loop = asyncio.get_running_loop()
    ident, sequence = random.getrandbits(16), next(_ping_sequence) & 0xFFFF
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.setblocking(False)
        sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~(1 << _ICMP_ECHO_REPLY) & 0xFFFFFFFF))
        if source is not None:
            sock.bind((str(source), 0))
        payload = struct.pack("!d", time.monotonic()) + b"dsrlb-health"
        header = struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, 0, ident, sequence)
        checksum = _checksum(header + payload)
        header = struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, checksum, ident, sequence)
        sent = time.monotonic()
        await loop.sock_sendto(sock, header + payload, (str(address), 0))
        while True:  # the raw socket sees every echo reply to this host: keep ours only
            packet, (sender, _) = await loop.sock_recvfrom(sock, 2048)
            ihl = (packet[0] & 0x0F) * 4
            if sender != str(address) or len(packet) < ihl + 8:
                continue
            kind, _, _, got_ident, got_sequence = struct.unpack_from("!BBHHH", packet, ihl)
            if kind == _ICMP_ECHO_REPLY and (got_ident, got_sequence) == (ident, sequence):
                return True, f"reply in {(time.monotonic() - sent) * 1000:.1f} ms"


async def _ping6(address: Address, source: Address | None) -> tuple[bool, str]:
    """ICMPv6 echo (`ping6`): the kernel fills in the checksum and hands over no IP header."""
    loop = asyncio.get_running_loop()
    ident, sequence = random.getrandbits(16), next(_ping_sequence) & 0xFFFF
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        sock.setblocking(False)
        # ICMP6_FILTER: block every type but echo reply (a bit set blocks its type)
        blocked = [0xFFFFFFFF] * 8
        blocked[_ICMP6_ECHO_REPLY >> 5] &= ~(1 << (_ICMP6_ECHO_REPLY & 31)) & 0xFFFFFFFF
        sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *blocked))
        if source is not None:
            sock.bind((str(source), 0))
        payload = struct.pack("!d", time.monotonic()) + b"dsrlb-health"
        sent = time.monotonic()
        request = struct.pack("!BBHHH", _ICMP6_ECHO_REQUEST, 0, 0, ident, sequence) + payload
        await loop.sock_sendto(sock, request, (str(address), 0))
        while True:
            packet, peer = await loop.sock_recvfrom(sock, 2048)
            if IPv6Address(peer[0].split("%")[0]) != address or len(packet) < 8:
                continue
            kind, _, _, got_ident, got_sequence = struct.unpack_from("!BBHHH", packet)
            if kind == _ICMP6_ECHO_REPLY and (got_ident, got_sequence) == (ident, sequence):
                return True, f"reply in {(time.monotonic() - sent) * 1000:.1f} ms"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass
class _CheckState:
    check: HealthCheck
    up: bool = False
    last_success: float | None = None
    detail: str = "not probed yet"
    expiry: asyncio.TimerHandle | None = None
    probed: bool = False


class HealthMonitor:
    """Runs the checks of one target and reports transitions."""

    def __init__(
        self,
        target_id: int,
        address: Address,
        checks: Sequence[HealthCheck],
        source: Address | None,
        on_change: Callable[[int, bool, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for check in checks:
            _validate(check)
        self.target_id = target_id
        self.address = address
        self.source = source
        self._on_change = on_change
        self._clock = clock
        self._states = [_CheckState(check) for check in checks]
        # targets start down until their checks succeed; one without checks is always up
        self.up: bool = not self._states
        self.detail: str = "no checks" if not self._states else "not probed yet"

    def inherit(self, previous: HealthMonitor) -> None:
        """Take over from the monitor a reload replaced (the checks changed): a target that was up stays
        up, rather than down until the new checks answer (a gap for its clients), and goes down when a
        new check has no success for its timeout."""
        if previous.up and previous.address == self.address and self._states:
            now = self._clock()
            for state in self._states:
                state.up, state.last_success = True, now
            self.up, self.detail = True, f"{previous.detail} (checks changed)"

    async def run(self) -> None:
        """Probe until cancelled; cancelling waits for the probes to close their sockets."""
        loop = asyncio.get_running_loop()
        for state in self._states:  # inherited as up: down unless the new check succeeds in time
            if state.up and state.expiry is None:
                state.expiry = loop.call_later(state.check.timeout, self._expire, state)
        try:
            async with asyncio.TaskGroup() as group:
                for state in self._states:
                    group.create_task(self._probe_loop(state))
                if not self._states:
                    await asyncio.get_running_loop().create_future()
        finally:
            for state in self._states:
                if state.expiry is not None:
                    state.expiry.cancel()
                    state.expiry = None

    async def _probe_loop(self, state: _CheckState) -> None:
        interval = state.check.interval
        await asyncio.sleep(random.uniform(0, interval))  # spread the probes of many targets
        while True:
            started = self._clock()
            ok, detail = await probe(state.check, self.address, self.source)
            self._record(state, ok, detail)
            await asyncio.sleep(max(0.0, started + interval - self._clock()))

    @property
    def settled(self) -> bool:
        """Every check has answered at least once: `up` is a finding, not the starting assumption."""
        return all(state.probed for state in self._states)

    def since_success(self) -> float | None:
        """Seconds since every check last succeeded (the oldest of their last successes); None while
        one has never succeeded. Lets a rollout wait for a check newer than its update."""
        if not all(state.last_success is not None for state in self._states):
            return None
        return self._clock() - min((state.last_success for state in self._states), default=self._clock())

    def _record(self, state: _CheckState, ok: bool, detail: str) -> None:
        state.detail = detail
        state.probed = True
        if ok:
            state.last_success = self._clock()
            if state.expiry is not None:
                state.expiry.cancel()
            state.expiry = asyncio.get_running_loop().call_later(state.check.timeout, self._expire, state)
            if not state.up:
                state.up = True
                self._evaluate(detail)
        # while a check keeps the target down, operators want to see that check, not a passing one
        self.detail = next((other.detail for other in self._states if not other.up), detail)

    def _expire(self, state: _CheckState) -> None:
        """Called `timeout` after the last success: the check is down unless one came in meanwhile."""
        loop = asyncio.get_running_loop()
        quiet = self._clock() - state.last_success
        if quiet < state.check.timeout:  # clock and loop time disagree slightly: wait for the rest
            state.expiry = loop.call_later(state.check.timeout - quiet, self._expire, state)
            return
        state.expiry = None
        state.up = False
        self.detail = state.detail
        self._evaluate(f"{state.detail} (no success for {quiet:.1f} s)")

    def _evaluate(self, why: str) -> None:
        up = all(state.up for state in self._states)
        if up == self.up:
            return
        self.up = up
        log.info("target %s %s %s: %s", self.target_id, self.address, "up" if up else "down", why)
        self._on_change(self.target_id, up, why)
