# Copyright: (c) 2026, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.dsrlb.fleet.plugins.filter.ipv6_errors import FilterModule, ipv6_errors

NET = {"id": 1, "addr": "172.16.1.0/24", "addr6": "2001:db8:1::/64", "virt6": "2001:db8:1::fd"}
SERVERS = [{"id": 1, "vip": "172.16.1.10", "port": 80}, {"id": 2, "vip": "2001:db8:1::10", "port": 80}]
REAL6 = "2001:db8:1::fc"


def errors(servers=tuple(SERVERS), networks=(NET,), real6=REAL6, **kwargs):
    return ipv6_errors(list(servers), networks=list(networks), real6=real6, **kwargs)


def test_sound_input_gives_no_message():
    assert errors() == []
    assert errors(networks=[dict(NET, real6="2001:db8:1::fb")], real6=None) == []
    assert errors(servers=SERVERS[:1], networks=[{"id": 1, "addr": "172.16.1.0/24"}], real6=None) == []
    assert FilterModule().filters()["ipv6_errors"] is ipv6_errors


@pytest.mark.parametrize(
    "net, message",
    [
        (dict(NET, addr6="2001:db8:1::"), "dsrlb_networks[0].addr6: 2001:db8:1:: has no prefix length"),
        (
            dict(NET, addr6="2001:db8:1::/129"),
            "dsrlb_networks[0].addr6: '2001:db8:1::/129' is not an IPv6 network",
        ),
        (
            dict(NET, addr6="172.16.2.0/24"),
            "dsrlb_networks[0].addr6: 172.16.2.0/24 is an IPv4 network; give it as dsrlb_networks[0].addr",
        ),
        (dict(NET, addr6="fe80::/64"), "dsrlb_networks[0].addr6: fe80::/64 is link-local"),
        (
            dict(NET, virt6="172.16.1.253"),
            "dsrlb_networks[0].virt6: 172.16.1.253 is an IPv4 address; give it as dsrlb_networks[0].virt",
        ),
        (
            dict(NET, virt6="2001:db8:2::fd"),
            "dsrlb_networks[0].virt6: 2001:db8:2::fd is outside dsrlb_networks[0].addr6 (2001:db8:1::/64)",
        ),
        (dict(NET, real6="ff02::1"), "dsrlb_networks[0].real6: ff02::1 is multicast"),
        (dict(NET, real6="::1"), "dsrlb_networks[0].real6: ::1 is a loopback address"),
        (dict(NET, virt6="fe80::fd"), "dsrlb_networks[0].virt6: fe80::fd is link-local"),
        (dict(NET, virt6="nope"), "dsrlb_networks[0].virt6: 'nope' is not an IPv6 address"),
        (
            {"id": 1, "addr": "172.16.1.0/24", "real6": REAL6},
            "dsrlb_networks[0].real6: needs dsrlb_networks[0].addr6, the IPv6 network",
        ),
    ],
)
def test_bad_network_keys_are_named(net, message):
    assert message in "; ".join(errors(networks=[net]))


def test_an_ipv6_network_needs_the_balancers_own_ipv6_address():
    assert errors(real6=None) == [
        "dsrlb_networks[0].addr6: the balancer needs its own IPv6 address on 2001:db8:1::/64: set the host "
        "var dsrlb_real6 or dsrlb_networks[0].real6"
    ]


@pytest.mark.parametrize(
    "real6, message",
    [
        ("172.16.1.252", "dsrlb_real6: 172.16.1.252 is an IPv4 address; give it as dsrlb_real"),
        ("fe80::1", "dsrlb_real6: fe80::1 is link-local"),
        (
            "2001:db8:2::1",
            "dsrlb_real6: 2001:db8:2::1 is inside no IPv6 network of dsrlb_networks (addr6: 2001:db8:1::/64)",
        ),
    ],
)
def test_bad_dsrlb_real6_is_named(real6, message):
    assert message in "; ".join(errors(real6=real6))


def test_dsrlb_real6_and_ipv6_vips_need_a_network_with_addr6():
    assert errors(networks=[{"id": 1, "addr": "172.16.1.0/24"}]) == [
        "dsrlb_real6: 2001:db8:1::fc needs an IPv6 network, and no item of dsrlb_networks has addr6 "
        "(e.g. 2001:db8:1::/64)",
        "dsrlb_servers[1].vip: 2001:db8:1::10 needs an IPv6 network, and no item of dsrlb_networks has addr6 "
        "(e.g. 2001:db8:1::/64): the balancers answer Neighbor Solicitations on it only",
    ]


@pytest.mark.parametrize(
    "vip, message",
    [
        (
            "2001:db8:9::10",
            "dsrlb_servers[1].vip: 2001:db8:9::10 is inside no IPv6 network of dsrlb_networks",
        ),
        ("2001:db8:1::/64", "dsrlb_servers[1].vip: '2001:db8:1::/64' is not an IPv6 address"),
        ("fe80::10", "dsrlb_servers[1].vip: fe80::10 is link-local"),
        ("ff05::10", "dsrlb_servers[1].vip: ff05::10 is multicast"),
        ("::1", "dsrlb_servers[1].vip: ::1 is a loopback address"),
    ],
)
def test_bad_ipv6_vips_are_named(vip, message):
    servers = [SERVERS[0], dict(SERVERS[1], vip=vip)]
    assert message in "; ".join(errors(servers=servers))


def test_a_vip_may_not_be_an_own_address_of_the_fleet():
    hostvars = {
        "lb1": {"dsrlb_real6": "2001:db8:1::fc"},
        "lb2": {"dsrlb_networks": [dict(NET, real6="2001:db8:1:0::fb")]},
        "web1": {"dsrlb_target_address6": "2001:db8:1::100"},
        "web2": {"ansible_host": "2001:db8:1::101"},
    }
    vips = ["2001:db8:1::fc", "2001:db8:1::00fb", "2001:db8:1::100", "2001:db8:1::101"]
    servers = [{"id": n, "vip": vip, "port": 80} for n, vip in enumerate(vips)]
    found = errors(
        servers=servers, balancer_hosts=["lb1", "lb2"], target_hosts=["web1", "web2"], hostvars=hostvars
    )
    assert all(message.endswith("; a VIP must be an address of its own") for message in found)
    assert [message.split(";", maxsplit=1)[0] for message in found] == [
        "dsrlb_servers[0].vip: 2001:db8:1::fc is the own address of balancer lb1 (dsrlb_real6)",
        "dsrlb_servers[1].vip: 2001:db8:1::00fb is the own address of balancer lb2 (dsrlb_networks[0].real6)",
        "dsrlb_servers[2].vip: 2001:db8:1::100 is the own address of target web1 (dsrlb_target_address6)",
        "dsrlb_servers[3].vip: 2001:db8:1::101 is the own address of target web2 (dsrlb_target_address)",
    ]


def test_dsrlb_real6_must_be_on_the_data_interface():
    assert errors(interface="eth0", interface_addresses=["fe80::1", "2001:db8:1:0::fc"]) == []
    assert errors(interface="eth0", interface_addresses=["fe80::1"]) == [
        "dsrlb_real6: 2001:db8:1::fc is not an address of eth0 (dsrlb_interface), which has fe80::1"
    ]
    assert errors(interface="eth0", interface_addresses=[]) == [
        "dsrlb_real6: 2001:db8:1::fc is not an address of eth0 (dsrlb_interface), which has no IPv6 address"
    ]
