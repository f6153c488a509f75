# Copyright: (c) 2026, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The frames of playbooks/files/dsrlb-arp-probe.py (verify.yml's ARP and NDP probe), built and parsed
without a network: the Neighbor Solicitation byte for byte against scapy's, and which answers count."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[2] / "playbooks" / "files" / "dsrlb-arp-probe.py"
MAC = bytes.fromhex("021122334455")
OTHER = bytes.fromhex("02aabbccddee")


def _load():
    spec = importlib.util.spec_from_file_location("dsrlb_arp_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load()


def a6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


@pytest.mark.parametrize("vip", ["2001:db8:1::10", "2001:db8:1::253", "fd00::ab:cdef:1234"])
def test_neighbor_solicitation_is_scapys(vip: str) -> None:
    scapy = pytest.importorskip("scapy.all")
    from scapy.utils6 import in6_getnsma, in6_getnsmac

    group = socket.inet_ntop(socket.AF_INET6, in6_getnsma(a6(vip)))
    expected = (
        scapy.Ether(src=MAC.hex(":"), dst=in6_getnsmac(a6(group)))
        / scapy.IPv6(src="2001:db8:1::254", dst=group, hlim=255)
        / scapy.ICMPv6ND_NS(tgt=vip)
        / scapy.ICMPv6NDOptSrcLLAddr(lladdr=MAC.hex(":"))
    )
    frame = probe.neighbor_solicitation(MAC, a6("2001:db8:1::254"), a6(vip))
    assert frame == bytes(expected)
    parsed = scapy.Ether(frame)
    del parsed[scapy.ICMPv6ND_NS].cksum  # scapy computes the checksum again: the same
    assert bytes(parsed) == frame


def test_solicited_node_group() -> None:
    assert probe.solicited_node(a6("2001:db8:1::ab:cdef:1234")) == a6("ff02::1:ffef:1234")


def _advert(target: str, sender: bytes = OTHER, hlim: int = 255, kind: int = 136) -> bytes:
    scapy = pytest.importorskip("scapy.all")
    advert = (
        scapy.Ether(src=sender.hex(":"), dst=MAC.hex(":"))
        / scapy.IPv6(src=target, dst="2001:db8:1::254", hlim=hlim)
        / (scapy.ICMPv6ND_NA(tgt=target, R=0, S=1, O=1) if kind == 136 else scapy.ICMPv6ND_NS(tgt=target))
        / scapy.ICMPv6NDOptDstLLAddr(lladdr=sender.hex(":"))
    )
    return bytes(advert)


def test_an_advert_for_the_target_names_its_sender() -> None:
    target = a6("2001:db8:1::10")
    assert probe.advert_sender(_advert("2001:db8:1::10"), target) == OTHER
    assert probe.advert_sender(_advert("2001:db8:1::11"), target) is None  # another address
    assert probe.advert_sender(_advert("2001:db8:1::10", hlim=64), target) is None  # forged: not on-link
    assert probe.advert_sender(_advert("2001:db8:1::10", kind=135), target) is None  # our own solicitation
    assert probe.advert_sender(probe.arp_request(MAC, bytes(4), bytes(4)), target) is None


def test_arp_request_and_reply() -> None:
    own, vip = socket.inet_aton("172.16.1.254"), socket.inet_aton("172.16.1.10")
    request = probe.arp_request(MAC, own, vip)
    assert len(request) == 42 and request[:6] == b"\xff" * 6 and request[38:42] == vip
    reply = OTHER + MAC + b"\x08\x06" + bytes.fromhex("0001080006040002") + OTHER + vip + MAC + own
    assert probe.arp_reply_sender(reply, vip) == OTHER
    assert probe.arp_reply_sender(request, vip) is None  # a request is no answer


def test_connected_route_and_source_address(tmp_path: Path) -> None:
    routes = tmp_path / "ipv6_route"
    routes.write_text(
        # connected 2001:db8:1::/64 on eth0, a gateway route, a more specific /128 on lo, the default
        "20010db8000100000000000000000000 40 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
        "20010db8000100000000000000000000 30 00000000000000000000000000000000 00 "
        "20010db8000100000000000000000001 00000400 00000001 00000000 00000003     eth1\n"
        "20010db8000100000000000000000010 80 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n"
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "20010db8000200000000000000000001 00000400 00000001 00000000 00000003     eth1\n"
    )
    assert probe.route_interface6(a6("2001:db8:1::10"), str(routes)) == "eth0"
    assert probe.route_interface6(a6("2001:db8:9::10"), str(routes)) is None
    addresses = tmp_path / "if_inet6"
    addresses.write_text(
        "fe800000000000000078542efffea9f1 02 40 20 80     eth0\n"
        "20010db8000900000000000000000001 02 40 00 80     eth0\n"
        "20010db8000100000000000000000254 02 40 00 c0     eth0\n"  # tentative: not yet usable
        "20010db8000100000000000000000252 02 40 00 80     eth0\n"
        "20010db8000100000000000000000010 01 80 00 80       lo\n"
    )
    assert probe.own_address6("eth0", a6("2001:db8:1::10"), str(addresses)) == a6("2001:db8:1::252")
    assert probe.own_address6("eth0", a6("2001:db8:7::10"), str(addresses)) == a6("2001:db8:9::1")
    assert probe.own_address6("eth1", a6("2001:db8:7::10"), str(addresses)) is None
