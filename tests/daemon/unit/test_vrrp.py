"""VRRP: adverts on the wire (checked with scapy's dissectors) and the state machine, with two or
three routers wired to each other through an in-process segment and real asyncio timers."""

from __future__ import annotations

import asyncio
import selectors
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.layers.vrrp import VRRP, VRRPv3

from dsrlb.config.model import Vrrp
from dsrlb.vrrp import BACKUP, INIT, MASTER, BadAdvert, VrrpRouter, build, parse

ADDRS = [IPv4Address("172.16.1.10"), IPv4Address("172.16.1.253")]
MAC = b"\x02\x00\x00\x00\x00\x01"


def test_v3_advert_is_valid_for_scapy() -> None:
    frame = build(3, 50, 200, 100, IPv4Address("172.16.1.252"), ADDRS, MAC)
    pkt = Ether(frame)
    assert pkt.dst == "01:00:5e:00:00:12" and pkt[IP].dst == "224.0.0.18"
    assert pkt[IP].ttl == 255 and pkt[IP].proto == 112 and pkt[IP].src == "172.16.1.252"
    v = pkt[VRRPv3]
    assert (v.version, v.type, v.vrid, v.priority, v.ipcount, v.adv) == (3, 1, 50, 200, 2, 10)
    assert v.addrlist == ["172.16.1.10", "172.16.1.253"]
    wire_ip, wire_vrrp = pkt[IP].chksum, v.chksum
    del pkt[IP].chksum, pkt[VRRPv3].chksum
    again = Ether(bytes(pkt))
    assert (again[IP].chksum, again[VRRPv3].chksum) == (wire_ip, wire_vrrp)


def test_v2_advert_is_valid_for_scapy() -> None:
    frame = build(2, 7, 100, 1000, IPv4Address("172.16.1.251"), ADDRS, MAC)
    pkt = Ether(frame)
    v = pkt[VRRP]
    assert (v.version, v.vrid, v.priority, v.ipcount, v.adv, v.authtype) == (2, 7, 100, 2, 1, 0)
    wire = v.chksum
    del pkt[VRRP].chksum
    assert Ether(bytes(pkt))[VRRP].chksum == wire


def test_parse_round_trip_and_rejections() -> None:
    frame = build(3, 50, 150, 250, IPv4Address("172.16.1.252"), ADDRS, MAC)
    advert = parse(frame)
    assert (advert.version, advert.vrid, advert.priority, advert.interval_cs) == (3, 50, 150, 25)
    assert advert.addresses == tuple(ADDRS)
    ttl = bytearray(frame)
    ttl[14 + 8] = 64
    with pytest.raises(BadAdvert, match="ttl"):
        parse(bytes(ttl))
    corrupt = bytearray(frame)
    corrupt[-1] ^= 0xFF
    with pytest.raises(BadAdvert, match="checksum"):
        parse(bytes(corrupt))
    with pytest.raises(BadAdvert, match="short"):
        parse(frame[:30])
    v2 = build(2, 50, 150, 2000, IPv4Address("172.16.1.252"), ADDRS, MAC)
    assert parse(v2).interval_cs == 200


class Segment:
    """Delivers every sent frame to every other router on it, except from senders that are cut off."""

    def __init__(self) -> None:
        self.routers: list[VrrpRouter] = []
        self.cut: set[str] = set()  # names whose adverts are lost
        self.masters_log: list[tuple[float, str, str]] = []

    def add(
        self,
        name: str,
        priority: int,
        source: str,
        preempt: bool = True,
        advert: int = 50,
        ready: bool = True,
        addresses: list[IPv4Address] | list[IPv6Address] = ADDRS,
        family: str = "ipv4",
    ) -> VrrpRouter:
        cfg = Vrrp(
            vrid=50, priority=priority, network=1, advert_ms=advert, preempt=preempt, version=3, family=family
        )
        router: VrrpRouter

        def send(frame: bytes) -> None:
            if name in self.cut:
                return
            for other in self.routers:
                if other is not router:
                    asyncio.get_running_loop().call_soon(other.receive, frame)

        def on_state(state: str) -> None:
            self.masters_log.append((asyncio.get_running_loop().time(), name, state))

        router = VrrpRouter(
            cfg, ip_address(source), addresses, MAC, send, on_state, lambda: None, lambda: ready
        )
        router.name = name  # type: ignore[attr-defined]
        self.routers.append(router)
        return router

    def masters(self) -> list[str]:
        return [r.name for r in self.routers if r.state == MASTER]  # type: ignore[attr-defined]


def run(coro):  # noqa: ANN001, ANN201 - tiny helper for the async scenarios below
    """On simulated time (VirtualTimeLoop): timer races never depend on how busy the machine is."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)


class _NoWaitSelector(selectors.SelectSelector):
    """Instead of sleeping until the next timer, moves the loop's clock there."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list:
        ready = super().select(0)
        if not ready and timeout:
            self.loop.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on simulated time: seconds of VRRP timers run in milliseconds, in a fixed order."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_NoWaitSelector(self))

    def time(self) -> float:
        return self.now


def test_higher_priority_wins_and_backup_takes_over_when_master_dies() -> None:
    async def scenario() -> None:
        seg = Segment()
        a = seg.add("a", 200, "172.16.1.252")
        b = seg.add("b", 100, "172.16.1.251")
        a.start()
        b.start()
        await asyncio.sleep(0.5)
        assert seg.masters() == ["a"] and b.state == BACKUP
        seg.routers.remove(a)  # a dies silently (kill -9): no more adverts
        a._cancel()
        died = asyncio.get_running_loop().time()
        while b.state != MASTER:
            await asyncio.sleep(0.005)
        took = asyncio.get_running_loop().time() - died
        assert took <= b.master_down_interval() + 0.1

    run(scenario())


def test_priority_zero_hands_over_within_skew_time() -> None:
    async def scenario() -> None:
        seg = Segment()
        a = seg.add("a", 200, "172.16.1.252", advert=100)
        b = seg.add("b", 100, "172.16.1.251", advert=100)
        a.start()
        b.start()
        await asyncio.sleep(0.6)
        assert seg.masters() == ["a"]
        t = asyncio.get_running_loop().time()
        a.shutdown()
        assert a.state == INIT
        while b.state != MASTER:
            await asyncio.sleep(0.002)
        assert asyncio.get_running_loop().time() - t < b.skew() + 0.05 < b.master_down_interval()

    run(scenario())


@pytest.mark.parametrize("preempt", [True, False])
def test_preempt(preempt: bool) -> None:
    async def scenario() -> None:
        seg = Segment()
        b = seg.add("b", 100, "172.16.1.251", preempt=preempt)
        b.start()
        await asyncio.sleep(0.4)
        assert seg.masters() == ["b"]
        a = seg.add("a", 200, "172.16.1.252", preempt=preempt)
        a.start()
        await asyncio.sleep(0.5)
        assert seg.masters() == (["a"] if preempt else ["b"])

    run(scenario())


def test_not_ready_router_does_not_preempt_a_working_master() -> None:
    async def scenario() -> None:
        seg = Segment()
        b = seg.add("b", 100, "172.16.1.251")
        b.start()
        await asyncio.sleep(0.4)
        a = seg.add("a", 200, "172.16.1.252", ready=False)
        a.start()
        await asyncio.sleep(0.5)
        assert seg.masters() == ["b"]

    run(scenario())


def test_equal_priority_higher_address_wins() -> None:
    async def scenario() -> None:
        seg = Segment()
        a = seg.add("a", 100, "172.16.1.252")
        b = seg.add("b", 100, "172.16.1.251")
        b.start()
        a.start()
        await asyncio.sleep(0.6)
        assert seg.masters() == ["a"]

    run(scenario())


@pytest.mark.parametrize(
    ("first", "second"),
    [("a", "b"), ("b", "a"), ("both", "")],
    ids=["backup-lower-address", "backup-higher-address", "start-together"],
)
def test_equal_priority_is_stable_over_time(first: str, second: str) -> None:
    """RFC 5798 6.4.2: a backup resets its Master_Down_Timer on adverts of priority >= its own. If it
    only did so on higher priority, an equal-priority backup would time out, become master and be
    pushed back, over and over: sampling the master once does not see that, counting transitions does."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        seg = Segment()
        routers = {"a": seg.add("a", 100, "172.16.1.252"), "b": seg.add("b", 100, "172.16.1.251")}
        for router in routers.values():
            router._clock = loop.time
        if first == "both":
            routers["b"].start()
            routers["a"].start()
            expected = "a"  # two masters meet: the higher address wins
        else:
            routers[first].start()
            await asyncio.sleep(0.5)
            assert seg.masters() == [first]
            routers[second].start()
            expected = first  # an equal-priority backup does not preempt
        settled = loop.time() + 1.0
        await asyncio.sleep(10)
        late = [entry for entry in seg.masters_log if entry[0] > settled]
        assert late == [], f"{len(late)} state changes after the first second: {late[:4]}"
        assert seg.masters() == [expected]
        # init -> backup (-> master); starting together both may time out at once, the loser steps back
        limit = 3 if first == "both" else 2
        assert all(router.counters.transitions <= limit for router in routers.values()), seg.masters_log
        master = routers[expected]  # advertises every interval from the end of its first Master_Down_Interval
        assert master.counters.sent >= (10 - master.master_down_interval()) / master.advert_interval - 1

    run(scenario())


def test_split_brain_heals_to_one_master_and_reasserts() -> None:
    async def scenario() -> None:
        seg = Segment()
        announced: list[str] = []
        a = seg.add("a", 200, "172.16.1.252")
        b = seg.add("b", 100, "172.16.1.251")
        a._announce = lambda: announced.append("a")
        a.start()
        b.start()
        await asyncio.sleep(0.4)
        seg.cut = {"a", "b"}
        await asyncio.sleep(0.5)
        assert sorted(seg.masters()) == ["a", "b"]  # both think they are master while cut off
        before = len(announced)
        seg.cut = {"a"}  # a hears b's adverts first
        await asyncio.sleep(0.1)
        assert len(announced) > before  # a re-announced the addresses on seeing b as master
        seg.cut = set()
        await asyncio.sleep(0.3)
        assert seg.masters() == ["a"]

    run(scenario())


def test_bad_adverts_are_counted_not_obeyed() -> None:
    async def scenario() -> None:
        seg = Segment()
        b = seg.add("b", 100, "172.16.1.251")
        b.start()
        await asyncio.sleep(0.3)
        assert b.state == MASTER
        good = build(3, 50, 250, 50, IPv4Address("172.16.1.99"), ADDRS, MAC)
        ttl = bytearray(good)
        ttl[22] = 1
        other_vrid = build(3, 51, 250, 50, IPv4Address("172.16.1.99"), ADDRS, MAC)
        for frame in (bytes(ttl), other_vrid, good[:-3] + b"\0\0\0"):
            b.receive(frame)
        assert b.state == MASTER
        assert b.counters.drops == {"ttl": 1, "other_vrid": 1, "checksum": 1}
        b.receive(good)
        assert b.state == BACKUP

    run(scenario())


# --- peers and floods (issue 12) ---------------------------------------------------------------------

PEER, ME, STRANGER = IPv4Address("172.16.1.251"), IPv4Address("172.16.1.252"), IPv4Address("172.16.1.99")


def lone_router(
    advert: int = 1000, peers: tuple[IPv4Address, ...] = (PEER,)
) -> tuple[VrrpRouter, list, list]:
    """A router of priority 200 alone on its segment, on the loop's clock: (router, sent, announced)."""
    loop = asyncio.get_running_loop()
    sent: list[bytes] = []
    announced: list[float] = []
    cfg = Vrrp(vrid=50, priority=200, network=1, advert_ms=advert, version=3, peers=peers)
    router = VrrpRouter(
        cfg,
        ME,
        ADDRS,
        MAC,
        sent.append,
        lambda state: None,
        lambda: announced.append(loop.time()),
        clock=loop.time,
    )
    return router, sent, announced


@pytest.mark.parametrize("state", [MASTER, BACKUP])
def test_a_strangers_priority_255_advert_is_dropped_and_counted(state: str) -> None:
    async def scenario() -> None:
        router, _, _ = lone_router()
        router.start()
        if state == MASTER:
            await asyncio.sleep(router.master_down_interval() + 0.1)
        assert router.state == state
        transitions = router.counters.transitions
        for priority in (255, 254, 0):
            router.receive(build(3, 50, priority, 1000, STRANGER, ADDRS, MAC))
        await asyncio.sleep(5)
        assert router.state == MASTER  # a backup became master all the same: the stranger is no master
        assert router.counters.transitions == transitions + (state == BACKUP)
        assert router.counters.drops == {"not_a_peer": 3}
        assert router.counters.received == 0
        router.receive(build(3, 50, 255, 1000, PEER, ADDRS, MAC))  # a peer is obeyed
        assert router.state == BACKUP and router.master == PEER
        assert router.view()["peers"] == ["172.16.1.251"]

    run(scenario())


def test_without_peers_any_valid_advert_counts_as_before() -> None:
    async def scenario() -> None:
        router, _, _ = lone_router(peers=())
        router.start()
        await asyncio.sleep(router.master_down_interval() + 0.1)
        assert router.state == MASTER
        router.receive(build(3, 50, 255, 1000, STRANGER, ADDRS, MAC))
        assert router.state == BACKUP and router.master == STRANGER

    run(scenario())


@pytest.mark.parametrize("source", [PEER, STRANGER], ids=["forged-peer-address", "no-peers"])
def test_forged_lower_priority_flood_gets_at_most_one_reassert_per_interval(source: IPv4Address) -> None:
    """1000 lower-priority adverts in 2 s to a master: RFC 5798 discards them; our re-assert (advert and
    gratuitous ARP) comes at most once per advert interval, and the adverts add no timers."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        router, sent, announced = lone_router(peers=(PEER,) if source == PEER else ())
        adverts: list[float] = []
        router._send = lambda frame: (sent.append(frame), adverts.append(loop.time()))
        router.start()
        await asyncio.sleep(router.master_down_interval() + 0.5)
        assert router.state == MASTER
        sent.clear()
        adverts.clear()
        announced.clear()
        transitions = router.counters.transitions
        forged = build(3, 50, 100, 1000, source, ADDRS, MAC)
        start, timers = loop.time(), 0
        for _ in range(1000):
            router.receive(forged)
            timers = max(timers, len(loop._scheduled))  # type: ignore[attr-defined]
            await asyncio.sleep(0.002)
        duration = loop.time() - start
        assert router.state == MASTER and router.counters.transitions == transitions
        assert router.counters.received >= 1000
        # no more adverts than without the flood: one per interval (a re-assert moves the periodic one on)
        assert len(sent) <= duration / router.advert_interval + 1.01, (len(sent), duration)
        assert all(b - a >= router.advert_interval - 1e-6 for a, b in zip(adverts, adverts[1:], strict=False))
        assert 1 <= router.counters.reasserts <= duration / router.advert_interval + 1.01
        assert len(announced) == router.counters.reasserts
        assert all(b - a >= router.advert_interval for a, b in zip(announced, announced[1:], strict=False))
        assert router.counters.drops["reassert_limited"] == 1000 - router.counters.reasserts
        assert timers <= 2, timers  # the router's one timer and this test's sleep

    run(scenario())


def test_backup_rearms_one_timer_however_many_adverts() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        router, _, _ = lone_router()
        router.start()
        advert = build(3, 50, 250, 1000, PEER, ADDRS, MAC)
        timers = 0
        for _ in range(2000):
            router.receive(advert)
            timers = max(timers, len(loop._scheduled))  # type: ignore[attr-defined]
            await asyncio.sleep(0.001)
        assert router.state == BACKUP and timers <= 2, timers
        died = loop.time()  # the master falls silent: the one timer still fires in time
        while router.state != MASTER:
            await asyncio.sleep(0.01)
        assert loop.time() - died <= router.master_down_interval() + 0.02

    run(scenario())


class _Host:
    """What Failover needs of the daemon, without sockets."""

    mac = MAC
    interface_name = "lo"
    control_path = "/nonexistent/dsrlb.sock"

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def rebuild(self) -> None:
        pass

    def announce_burst(self) -> None:
        pass

    def ready(self) -> bool:
        return True


def test_failover_inbox_is_bounded_rate_limited_and_drops_strangers_early() -> None:
    """The packet thread posts every VRRP frame; the loop sees at most INBOX of a burst, with one
    wake-up per batch, whatever the flood."""
    import threading
    import time

    from dsrlb import failover

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fo = failover.Failover(_Host())
        fo.keep_resignation = lambda: None  # type: ignore[method-assign]
        cfg = Vrrp(vrid=50, priority=200, network=1, version=3, peers=(PEER,))
        fo.configure(cfg, ME, ADDRS)
        router = fo.router
        assert router is not None and router.state == INIT  # not started: receives, never answers
        stranger = build(3, 50, 255, 1000, STRANGER, ADDRS, MAC)
        peer = build(3, 50, 100, 1000, PEER, ADDRS, MAC)
        ready_before = len(loop._ready)  # type: ignore[attr-defined]
        longest, wakeups = 0, 0

        def flood() -> None:
            nonlocal longest, wakeups
            for _ in range(5000):
                fo.post(stranger)
                fo.post(peer)
                longest = max(longest, len(fo._inbox))
            wakeups = len(loop._ready) - ready_before  # type: ignore[attr-defined]

        began = time.monotonic()
        thread = threading.Thread(target=flood)
        thread.start()
        thread.join()
        took = time.monotonic() - began
        assert longest <= failover.INBOX and wakeups <= 1
        await asyncio.sleep(0)
        assert not fo._inbox
        drops = router.counters.drops
        assert drops["not_a_peer"] == 5000
        assert router.counters.received + drops["rate_limited"] == 5000
        assert router.counters.received <= failover.INBOX + failover.INBOX_RATE * took + 1
        await asyncio.sleep(0.2)  # tokens come back with time
        fo.post(peer)
        await asyncio.sleep(0)
        assert router.view()["adverts_received"] == router.counters.received and drops["rate_limited"] < 5000

    run(scenario())
