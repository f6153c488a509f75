"""Faults of the packet path and of reloads: link errors reopen the ring, anything else ends the
process, the watchdog is fed only while the loop makes progress, a config the daemon cannot run is
refused before anything changes."""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import select
import socket
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether

from dsrlb import daemon as D
from dsrlb import systemd
from dsrlb.config import parser
from dsrlb.config.parser import ConfigError, parse_file
from dsrlb.dataplane import bpf
from dsrlb.dataplane import forwarder as F
from dsrlb.dataplane import ring as R

REPO = Path(__file__).resolve().parents[3]
SEED = REPO / "examples" / "dsr-example.conf"
OWN = bytes.fromhex("020000000001")
VIP = "172.16.1.10"


class FakeRing:
    """Enough of a PacketRing for the loop: memory instead of a socket, and scripted errors."""

    def __init__(self, fwd_errors: list[int] | None = None, wait_errors: list[int] | None = None) -> None:
        self.ifname = "eth0"
        self.rx_frames, self.tx_frames = 8, 8
        self.tx_base = self.rx_frames * R.FRAME_SIZE
        self.map = mmap.mmap(-1, (self.rx_frames + self.tx_frames) * R.FRAME_SIZE)
        self.mac = OWN
        self.max_frame = 1514
        self.flush_errors = fwd_errors or []  # errno raised by the next flushes, in turn
        self.wait_errors = wait_errors or []
        self.sent = 0
        self.closed = False
        self.reopened: list[FakeRing] = []
        self.stop: threading.Event | None = None  # set on the first idle wait: ends a test's loop

    def put(self, slot: int, frame: bytes) -> None:
        h = slot * R.FRAME_SIZE
        R.TPACKET2_HDR.pack_into(self.map, h, R.TP_STATUS_USER, len(frame), len(frame), 66, 80, 0, 0, 0, 0)
        self.map[h + 66 : h + 66 + len(frame)] = frame

    def flush(self) -> None:
        if self.flush_errors:
            code = self.flush_errors.pop(0)
            raise OSError(code, os.strerror(code))
        for i in range(self.tx_frames):
            t = self.tx_base + i * R.FRAME_SIZE
            if self.map[t] == 1:
                self.map[t : t + 4] = b"\0\0\0\0"
                self.sent += 1

    def wait(self, timeout_ms: int) -> None:
        if self.wait_errors:
            code = self.wait_errors.pop(0)
            raise OSError(code, os.strerror(code))
        assert self.stop is not None
        self.stop.set()

    def reopen(self) -> FakeRing:
        ring = FakeRing()
        ring.stop = self.stop
        self.reopened.append(ring)
        return ring

    def close(self) -> None:
        self.closed = True


def arp_request() -> bytes:
    """Makes the loop queue a reply, so the next idle pass flushes."""
    return bytes(Ether(src="02:00:00:00:00:99", dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=VIP, psrc="172.16.1.254"))


def forwarder(ring: FakeRing) -> tuple[F.Forwarder, list[str]]:
    fwd = F.Forwarder(ring)  # type: ignore[arg-type]
    ring.stop = fwd._stop
    events: list[str] = []
    fwd.on_reopen = lambda: events.append("reopen")
    fwd.on_failure = lambda: events.append("failure")
    fwd.install(F.ForwardingTable({}, frozenset({socket.inet_aton(VIP)}), frozenset()))
    return fwd, events


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The link state the forwarder polls while waiting to reopen: pops one value per look."""
    states: list[bool] = []
    monkeypatch.setattr(F, "link_up", lambda ifname: states.pop(0) if states else True)
    monkeypatch.setattr(F, "LINK_POLL", 0.001)
    return states


@pytest.mark.parametrize("code", sorted(R.LINK_ERRORS), ids=errno.errorcode.get)
def test_send_error_of_a_link_going_away_reopens_the_ring(link: list[bool], code: int) -> None:
    ring = FakeRing(fwd_errors=[code])
    ring.put(0, arp_request())
    fwd, events = forwarder(ring)
    link += [False, False, True]  # down for two looks
    fwd._run()
    assert events == ["reopen"]
    assert fwd.stats.link_down == 1
    assert ring.closed and fwd.ring is ring.reopened[0]
    assert link == [], "waited for the link before reopening"


def test_link_down_seen_while_idle_reopens_the_ring(link: list[bool]) -> None:
    ring = FakeRing(wait_errors=[errno.ENETDOWN])
    fwd, events = forwarder(ring)
    fwd._run()
    assert events == ["reopen"] and fwd.stats.link_down == 1 and fwd.ring is ring.reopened[0]


def test_failed_reopen_is_retried(link: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    ring = FakeRing(wait_errors=[errno.ENXIO])
    attempts: list[int] = []
    good = ring.reopen

    def reopen() -> FakeRing:  # the interface is gone the first time
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return good()

    monkeypatch.setattr(ring, "reopen", reopen)
    fwd, events = forwarder(ring)
    fwd._run()
    assert len(attempts) == 2 and events == ["reopen"] and fwd.ring is ring.reopened[0]


def test_busy_device_is_counted_and_the_frames_go_out_with_the_next_flush(link: list[bool]) -> None:
    ring = FakeRing(fwd_errors=[errno.ENOBUFS])
    ring.put(0, arp_request())
    ring.put(1, arp_request())
    fwd, events = forwarder(ring)
    fwd._run()
    assert events == [] and fwd.stats.tx_errors == 1 and fwd.stats.link_down == 0
    assert ring.sent == 2 and not ring.closed


@pytest.mark.parametrize("error", [OSError(errno.EINVAL, "Invalid argument"), RuntimeError("bug")])
def test_any_other_error_ends_the_loop_through_on_failure(error: Exception) -> None:
    fwd, events = forwarder(FakeRing())

    def bug() -> None:
        raise error

    fwd.call(bug)
    fwd.start()
    assert fwd._thread is not None
    fwd._thread.join(2)
    assert not fwd._thread.is_alive() and events == ["failure"]


def test_heartbeat_advances_while_idle() -> None:
    ring = FakeRing()
    fwd, _ = forwarder(ring)
    ring.wait = lambda timeout_ms: time.sleep(0.005)  # type: ignore[method-assign]
    fwd.start()
    try:
        before = fwd.heartbeat
        time.sleep(0.1)
        assert fwd.heartbeat - before >= 5
    finally:
        fwd.stop()


def test_wait_raises_the_pending_socket_error() -> None:
    """ENETDOWN arrives as a pending socket error; here ECONNREFUSED stands in for it (no root needed)."""
    ring = object.__new__(R.PacketRing)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    ring.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ring.sock.connect(("127.0.0.1", port))
        ring.sock.send(b"x")  # answered by ICMP port unreachable: a pending error
        ring.poller = select.poll()
        ring.poller.register(ring.sock.fileno(), select.POLLIN | select.POLLERR)
        time.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            ring.wait(100)
        ring.wait(10)  # read once, the error no longer wakes the poll
    finally:
        ring.sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="a packet socket needs CAP_NET_RAW")
def test_reopened_ring_keeps_filter_and_multicast_groups() -> None:
    ring = R.PacketRing("lo", 1, 1)  # opening one on lo configures nothing
    program = bpf.program([IPv4Address("127.0.0.9")])
    ring.attach_filter(program)
    ring.join(bytes.fromhex("01005e000012"))
    new = ring.reopen()
    try:
        assert (new.program, new.groups, new.rx_frames, new.tx_frames) == (
            program,
            ring.groups,
            ring.rx_frames,
            ring.tx_frames,
        )
        assert new.sock.fileno() != ring.sock.fileno()
    finally:
        ring.close()
        new.close()


def test_packet_filter_limit_is_the_one_the_config_check_uses() -> None:
    assert parser.MAX_ADDRESSES == bpf.MAX_ADDRESSES
    R.check_filter(bpf.program(IPv4Address(0x0A000001 + i) for i in range(bpf.MAX_ADDRESSES)))
    with pytest.raises(ValueError, match="at most 250"):
        bpf.program(IPv4Address(0x0A000001 + i) for i in range(bpf.MAX_ADDRESSES + 1))
    with pytest.raises(OSError):
        R.check_filter([(bpf.JEQ_K, 5, 0, 0), (bpf.RET_K, 0, 0, 0)])  # jumps beyond the program


def with_servers(count: int) -> str:
    """The seed with servers 2..count+1 added, each on its own VIP."""
    extra = "".join(
        f"server    {i} {{\n          ipaddr 10.1.{i // 200}.{i % 200 + 1}\n          port 80\n"
        f"          protocol tcp\n          targets 1,2\n}}\nregister  server {i}\nenable    server {i}\n"
        for i in range(2, count + 2)
    )
    return SEED.read_text() + extra


def test_check_rejects_more_addresses_than_the_filter_holds(tmp_path: Path) -> None:
    path = tmp_path / "many.conf"
    path.write_text(with_servers(bpf.MAX_ADDRESSES - 2))  # the seed's VIP and virt: exactly full
    parse_file(str(path))
    path.write_text(with_servers(bpf.MAX_ADDRESSES - 1))
    with pytest.raises(ConfigError) as err:
        parse_file(str(path))
    line = path.read_text().splitlines().index("          ipaddr 10.1.1.51") + 1
    assert err.value.errors == [
        f"{path}:{line}:18: server 250: 251 addresses to answer for (VIPs and virt), "
        "the packet filter holds at most 250"
    ]


def test_check_counts_only_serving_servers(tmp_path: Path) -> None:
    path = tmp_path / "many.conf"
    path.write_text(with_servers(bpf.MAX_ADDRESSES) + "disable   server 5\nunregister server 6\n")
    parse_file(str(path))


def test_reload_the_daemon_cannot_run_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dsrlb check` cannot know everything the daemon builds: here the filter builder is stricter."""
    path = tmp_path / "dsrlb.conf"
    path.write_text(SEED.read_text())
    d = D.Daemon(str(path))
    d.config = parse_file(str(path))
    d.interface, d.network = D.data_plane_of(d.config)
    d.forwarder = F.Forwarder(FakeRing())  # type: ignore[arg-type]
    d.generation = 1
    path.write_text(with_servers(3))
    monkeypatch.setattr(bpf, "MAX_ADDRESSES", 4)
    ok, errors = asyncio.run(d.reload())
    assert not ok
    assert errors == [
        f"{path}: this daemon cannot run it: 5 addresses (VIPs and virt): at most 4 fit in the packet filter"
    ]
    assert d.generation == 1 and len(d.config.servers) == 1


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], interval: float | None
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert systemd.watchdog_interval() == interval


def test_watchdog_is_fed_only_while_the_loop_makes_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[int] = []
    d = D.Daemon("unused.conf")
    d.forwarder = F.Forwarder(FakeRing())  # type: ignore[arg-type]
    beats = iter([1, 2, 2, 2, 3])  # the heartbeat at each next look: stuck at 2 for two looks

    async def sleep(seconds: float) -> None:
        try:
            d.forwarder.heartbeat = next(beats)
        except StopIteration:
            raise asyncio.CancelledError from None

    monkeypatch.setattr(systemd, "notify", lambda message: fed.append(d.forwarder.heartbeat) or True)
    monkeypatch.setattr(D.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(d._feed_watchdog(5.0))
    assert fed == [0, 1, 2, 3]
