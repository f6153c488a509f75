# Copyright: (c) 2026, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.dsrlb.fleet.plugins.filter.ha_errors import FilterModule, ha_errors

GOOD = {"local_asn": 65001, "peers": [{"address": "172.16.1.254", "asn": 65000}], "hold": 3, "keepalive": 1}


def test_sound_settings_give_no_message():
    assert ha_errors("vrrp") == []
    assert ha_errors("bgp", bgp=GOOD) == []
    assert ha_errors("bgp", bgp=dict(GOOD, local_asn=4294967295, hold=0, keepalive=30, device="vips0")) == []
    assert FilterModule().filters()["ha_errors"] is ha_errors


@pytest.mark.parametrize(
    "bgp, message",
    [
        (dict(GOOD, local_asn=0), "dsrlb_bgp.local_asn: 0 is out of range 1..4294967295"),
        (dict(GOOD, local_asn=4294967296), "dsrlb_bgp.local_asn: 4294967296 is out of range 1..4294967295"),
        (dict(GOOD, local_asn="as65001"), "dsrlb_bgp.local_asn: 'as65001' is not an AS number"),
        (dict(GOOD, local_asn=True), "dsrlb_bgp.local_asn: True is not an AS number"),
        ({"peers": GOOD["peers"]}, "dsrlb_bgp.local_asn: missing"),
        (dict(GOOD, peers=[]), "dsrlb_bgp.peers: a non-empty list"),
        (
            dict(
                GOOD, peers=[{"address": "172.16.1.254", "asn": 65000}, {"address": "172.16.1.300", "asn": 1}]
            ),
            "dsrlb_bgp.peers[1].address: '172.16.1.300' is not an IPv4 address",
        ),
        (dict(GOOD, peers=[{"address": "fe80::1", "asn": 65000}]), "dsrlb_bgp.peers[0].address: 'fe80::1'"),
        (
            dict(GOOD, peers=[{"address": "10.0.0.1", "asn": -1}]),
            "dsrlb_bgp.peers[0].asn: -1 is out of range",
        ),
        (dict(GOOD, peers=[{"address": "10.0.0.1"}]), "dsrlb_bgp.peers[0].asn: missing"),
        (dict(GOOD, peers=["10.0.0.1"]), "dsrlb_bgp.peers[0]: must be a mapping"),
        (
            dict(GOOD, peers=GOOD["peers"] * 2),
            "dsrlb_bgp.peers[1].address: 172.16.1.254 is also dsrlb_bgp.peers[0]",
        ),
        (dict(GOOD, hold=2), "dsrlb_bgp.hold: 2 must be 0 or 3..65535"),
        (dict(GOOD, hold=9, keepalive=9), "dsrlb_bgp.keepalive: 9 must be less than dsrlb_bgp.hold (9)"),
        (dict(GOOD, keepalive=0), "dsrlb_bgp.keepalive: 0 must be at least 1"),
        (
            dict(GOOD, device="a very long device name"),
            "dsrlb_bgp.device: 'a very long device name' is not an",
        ),
        (None, "dsrlb_bgp: dsrlb_ha is bgp, so dsrlb_bgp must give local_asn and peers"),
    ],
)
def test_bgp_mistakes_name_the_inventory_key(bgp, message):
    errors = ha_errors("bgp", bgp=bgp)
    assert any(e.startswith(message) for e in errors), errors


def test_an_unknown_mode_and_vrrp_settings_in_bgp_mode_are_named():
    assert ha_errors("ecmp") == ["dsrlb_ha: 'ecmp' is not one of vrrp, bgp"]
    assert ha_errors("bgp", bgp=GOOD, vrrp={"vrid": 1}) == [
        "dsrlb_vrrp: set while dsrlb_ha is bgp; a balancer runs one HA mode (set it to null)"
    ]


def test_mixed_modes_in_one_group_are_named_with_the_hosts():
    hostvars = {
        "lb1": {"dsrlb_ha": "bgp"},
        "lb2": {"dsrlb_ha": "bgp"},
        "lb3": {},
        "lb4": {"dsrlb_ha": "vrrp"},
    }
    hosts = ["lb1", "lb2", "lb3", "lb4"]
    errors = ha_errors("bgp", bgp=GOOD, host="lb1", balancer_hosts=hosts, hostvars=hostvars)
    assert errors == [
        "dsrlb_ha: bgp here, but other balancers of the group run another HA mode (vrrp: lb3, lb4); "
        "every balancer of dsrlb_balancer_group must use the same dsrlb_ha"
    ]
    same = {name: {"dsrlb_ha": "bgp"} for name in hosts}
    assert ha_errors("bgp", bgp=GOOD, host="lb1", balancer_hosts=hosts, hostvars=same) == []


def test_bgp_mode_refuses_ipv6_vips():
    servers = [{"id": 1, "vip": "172.16.1.10"}, {"id": 2, "vip": "2001:db8:1::10"}]
    assert ha_errors("bgp", bgp=GOOD, servers=servers) == [
        "dsrlb_servers[1].vip: 2001:db8:1::10 is IPv6, but HA mode bgp announces IPv4 VIPs only; serve it "
        "from a VRRP pair (dsrlb_ha: vrrp)"
    ]
    assert ha_errors("vrrp", servers=servers) == []
