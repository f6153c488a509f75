"""VRRP version 3 over IPv6 (RFC 5798, `family ipv6`): adverts from a link-local address to ff02::12,
cross-checked with scapy's independent implementation both ways, their rejections, and an election."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vrrp import VRRPv3
from test_vrrp import Segment, run

from dsrlb.config.model import Vrrp
from dsrlb.vrrp import BACKUP, MASTER, BadAdvert, VrrpRouter, build, parse, source_of

ADDRS6 = [IPv6Address("2001:db8:1::10"), IPv6Address("2001:db8:1::253")]
LL1, LL2 = IPv6Address("fe80::1"), IPv6Address("fe80::2")
MAC = b"\x02\x00\x00\x00\x00\x01"


def scapy_advert(src: str = "fe80::2", hlim: int = 255, **fields: object) -> bytes:
    """An advert built by scapy, which fills in lengths and the checksum over the IPv6 pseudo-header."""
    vrrp = VRRPv3(vrid=62, priority=100, adv=10, ipcount=2, addrlist=[str(a) for a in ADDRS6])
    for key, value in fields.items():
        setattr(vrrp, key, value)
    pkt = Ether(src="02:00:00:00:00:02", dst="33:33:00:00:00:12") / IPv6(src=src, dst="ff02::12", hlim=hlim)
    return bytes(pkt / vrrp)


def test_ipv6_advert_is_valid_for_scapy() -> None:
    frame = build(3, 62, 200, 100, LL1, ADDRS6, MAC)
    pkt = Ether(frame)
    assert pkt.dst == "33:33:00:00:00:12" and pkt.type == 0x86DD
    ip = pkt[IPv6]
    assert (ip.src, ip.dst, ip.hlim, ip.nh, ip.plen) == ("fe80::1", "ff02::12", 255, 112, 8 + 2 * 16)
    v = pkt[VRRPv3]
    assert (v.version, v.type, v.vrid, v.priority, v.ipcount, v.adv) == (3, 1, 62, 200, 2, 10)
    assert v.addrlist == ["2001:db8:1::10", "2001:db8:1::253"]
    wire = v.chksum
    del pkt[VRRPv3].chksum  # scapy computes it again, over its own IPv6 pseudo-header
    assert Ether(bytes(pkt))[VRRPv3].chksum == wire
    assert bytes(Ether(bytes(pkt))) == frame


def test_scapy_ipv6_advert_parses() -> None:
    advert = parse(scapy_advert())
    assert (advert.version, advert.vrid, advert.priority, advert.interval_cs) == (3, 62, 100, 10)
    assert advert.source == LL2 and advert.addresses == tuple(ADDRS6)
    one = parse(scapy_advert(ipcount=1, addrlist=["2001:db8:1::10"], priority=0))
    assert one.priority == 0 and one.addresses == (ADDRS6[0],)


def test_round_trip_and_source_offset_per_family() -> None:
    frame = build(3, 62, 150, 250, LL1, ADDRS6, MAC)
    advert = parse(frame)
    assert (advert.vrid, advert.priority, advert.interval_cs, advert.source) == (62, 150, 25, LL1)
    assert advert.addresses == tuple(ADDRS6)
    assert source_of(frame) == LL1.packed  # frame[22:38]
    v4 = build(3, 62, 150, 250, IPv4Address("172.16.1.252"), [IPv4Address("172.16.1.10")], MAC)
    assert source_of(v4) == IPv4Address("172.16.1.252").packed  # frame[26:30]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (scapy_advert(hlim=64), "ttl"),
        (scapy_advert(chksum=0x1234), "checksum"),
        (scapy_advert()[:60], "short"),
        (scapy_advert(ipcount=3), "length"),  # three addresses announced, two present
        (scapy_advert(version=2), "version"),  # version 2 is IPv4 only
        (scapy_advert(type=2), "version"),
        (
            bytes(Ether(dst="33:33:00:00:00:12") / IPv6(src="fe80::2", dst="ff02::1", hlim=255) / VRRPv3()),
            "destination",
        ),
        (
            bytes(
                Ether(dst="33:33:00:00:00:12")
                / IPv6(src="fe80::2", dst="ff02::12", hlim=255, nh=17)
                / VRRPv3()
            ),
            "protocol",
        ),
    ],
    ids=["hop-limit", "checksum", "short", "count", "v2", "type", "destination", "next-header"],
)
def test_malformed_ipv6_adverts_are_dropped_with_reasons(frame: bytes, reason: str) -> None:
    with pytest.raises(BadAdvert, match=reason):
        parse(frame)


def test_truncated_payload_length_is_bad_ip() -> None:
    frame = bytearray(build(3, 62, 150, 100, LL1, ADDRS6, MAC))
    frame[18:20] = (200).to_bytes(2, "big")  # payload length beyond the frame
    with pytest.raises(BadAdvert, match="bad_ip"):
        parse(bytes(frame))


def test_build_refuses_mixed_families_and_version_2() -> None:
    with pytest.raises(ValueError, match="other family"):
        build(3, 62, 100, 100, LL1, [IPv4Address("172.16.1.10")], MAC)
    with pytest.raises(ValueError, match="version 3"):
        build(2, 62, 100, 1000, LL1, ADDRS6, MAC)


def _router(peers: tuple[IPv6Address, ...] = ()) -> VrrpRouter:
    cfg = Vrrp(vrid=62, priority=100, network=1, advert_ms=100, version=3, family="ipv6", peers=peers)
    return VrrpRouter(cfg, LL1, ADDRS6, MAC, lambda f: None, lambda s: None, lambda: None)


def test_peers_filter_reads_the_ipv6_source() -> None:
    router = _router(peers=(LL2,))
    assert router.from_peer(scapy_advert(src="fe80::2"))
    assert not router.from_peer(scapy_advert(src="fe80::3"))
    assert router.from_peer(build(3, 62, 100, 100, LL1, ADDRS6, MAC))  # our own, looped back


def test_ipv4_advert_to_an_ipv6_router_is_a_family_mismatch() -> None:
    router = _router()
    router.receive(build(3, 62, 100, 100, IPv4Address("172.16.1.251"), [IPv4Address("172.16.1.10")], MAC))
    assert router.counters.drops == {"family_mismatch": 1} and router.counters.received == 0


def test_ipv6_pair_elects_by_priority_then_by_link_local_address() -> None:
    async def scenario() -> tuple[str, str, str, str]:
        seg = Segment()
        low = seg.add("low", 100, "fe80::1", addresses=ADDRS6, family="ipv6")
        high = seg.add("high", 200, "fe80::2", addresses=ADDRS6, family="ipv6")
        for r in seg.routers:
            r.start()
        await asyncio.sleep(1)
        first = (high.state, low.state)
        high.shutdown()  # priority 0: low takes over within its skew time
        await asyncio.sleep(0.5)
        tie = Segment()
        a = tie.add("a", 100, "fe80::1", addresses=ADDRS6, family="ipv6")
        b = tie.add("b", 100, "fe80::1:0:0:1", addresses=ADDRS6, family="ipv6")
        a.start()
        b.start()
        await asyncio.sleep(1)
        assert (a.state, b.state) == (BACKUP, MASTER)  # equal priority: the higher source wins
        return (*first, low.state, str(low.master))

    assert run(scenario()) == (MASTER, BACKUP, MASTER, "fe80::1")


def test_failover_posts_ipv6_adverts_by_their_source_and_a_new_family_makes_a_new_router() -> None:
    from test_vrrp import _Host

    from dsrlb import failover

    async def scenario() -> None:
        fo = failover.Failover(_Host())
        fo.keep_resignation = lambda: None  # type: ignore[method-assign]
        v6 = Vrrp(vrid=62, priority=200, network=1, version=3, family="ipv6", peers=(LL2,))
        fo.configure(v6, LL1, ADDRS6)
        router = fo.router
        assert router is not None
        fo.post(scapy_advert(src="fe80::3"))  # a stranger: dropped on the packet thread
        fo.post(scapy_advert(src="fe80::2"))
        await asyncio.sleep(0)
        assert router.counters.drops == {"not_a_peer": 1} and router.counters.received == 1
        assert router.view()["family"] == "ipv6" and router.master is None  # INIT: receives only
        fo.configure(v6, LL1, ADDRS6[:1])  # same family and source: updated in place
        assert fo.router is router and router.addresses == (ADDRS6[0],)
        v4 = Vrrp(vrid=62, priority=200, network=1, version=3, peers=(IPv4Address("172.16.1.251"),))
        fo.configure(v4, IPv4Address("172.16.1.252"), [IPv4Address("172.16.1.10")])
        assert fo.router is not router and fo.router is not None and fo.router.view()["family"] == "ipv4"
        assert router.state == "init"

    run(scenario())


def test_link_local_is_read_from_the_kernel_table_once_it_is_not_tentative(tmp_path) -> None:
    from dsrlb.vrrp import link_local

    table = tmp_path / "if_inet6"
    lines = [
        "20010db8000100000000000000000252 02 40 00 80     eth0",  # global: not a link-local address
        "fe80000000000000505400fffe000001 02 40 20 c0     eth0",  # tentative (0x40)
        "fe80000000000000505400fffe000009 03 40 20 80     eth1",
    ]
    table.write_text("\n".join(lines) + "\n")
    assert link_local("eth0", str(table)) == (None, True)
    table.write_text("\n".join([lines[0], lines[1].replace(" c0 ", " 80 "), lines[2]]) + "\n")
    assert link_local("eth0", str(table)) == (IPv6Address("fe80::5054:ff:fe00:1"), False)
    assert link_local("eth2", str(table)) == (None, False)
    table.write_text(lines[1].replace(" c0 ", " 88 ") + "\n")  # duplicate address detection failed
    assert link_local("eth0", str(table)) == (None, False)
    assert link_local("eth0", str(tmp_path / "none")) == (None, False)  # no IPv6
