"""dsrlb's adverts on the wire, as scapy's VRRPv3 dissector reads them."""

from __future__ import annotations

import pytest
from hafleet import ADVERT_MS, BALANCERS, DSRLB, VIP, VIRT, Fleet
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.layers.vrrp import VRRPv3

pytestmark = pytest.mark.root


def recomputed(frame: Ether) -> IP:
    """The frame's IP packet with both checksums computed anew by scapy."""
    ip = frame[IP].copy()
    del ip.chksum
    del ip[VRRPv3].chksum
    return IP(bytes(ip))


def test_adverts_of_the_master_are_valid_vrrpv3(fleet: Fleet) -> None:
    fleet.use(DSRLB, DSRLB)
    frames = [Ether(raw) for raw in fleet.capture_adverts(1.0)]
    # only the master advertises, every advert interval
    assert {f[IP].src for f in frames} == {BALANCERS["lb1"][0]}
    assert 1000 / ADVERT_MS * 0.7 <= len(frames) <= 1000 / ADVERT_MS * 1.5
    mac = fleet.mac("lb1")
    for frame in frames:
        assert frame.src == mac and frame.dst == "01:00:5e:00:00:12"
        ip, vrrp = frame[IP], frame[VRRPv3]
        assert (ip.dst, ip.ttl, ip.proto) == ("224.0.0.18", 255, 112)
        assert (vrrp.version, vrrp.type, vrrp.vrid, vrrp.priority) == (3, 1, fleet.vrid, BALANCERS["lb1"][1])
        assert vrrp.adv == ADVERT_MS // 10  # centiseconds
        assert vrrp.ipcount == 2 and set(vrrp.addrlist) == {VIP, VIRT}
        again = recomputed(frame)
        assert (again.chksum, again[VRRPv3].chksum) == (ip.chksum, vrrp.chksum)
