# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.dsrlb.fleet.plugins.module_utils.config_render import (
    HEADER,
    RenderError,
    derive_modules,
    render,
)

SEED = dict(
    interfaces=[dict(id=1, name="eth0", access="raw")],
    networks=[
        dict(
            id=1,
            name="local network",
            addr="172.16.1.0",
            mask="255.255.255.0",
            real="172.16.1.252",
            virt="172.16.1.253",
            interface=1,
        )
    ],
    servers=[dict(id=1, ipaddr="172.16.1.10", port=80, protocol="tcp", targets=[1, 2])],
    targets=[
        dict(id=1, ipaddr="172.16.1.100", port=80, protocol="tcp", tcpopen="80,3,10", dsr=True),
        dict(id=2, ipaddr="172.16.1.101", port=80, protocol="tcp", tcpopen="80,3,10", dsr=True),
    ],
)

# The daemon's canonical form (tests/contract holds the two writers to the same bytes): `access raw`
# is the default, so it is left out.
SEED_TEXT = (
    HEADER
    + """
modules arp,hc,slb

interface 1 {
    name eth0
}
register interface 1
enable interface 1

network 1 {
    name "local network"
    addr 172.16.1.0
    mask 255.255.255.0
    real 172.16.1.252
    virt 172.16.1.253
    interface 1
}
register network 1
enable network 1

server 1 {
    ipaddr 172.16.1.10
    port 80
    protocol tcp
    targets 1,2
}
register server 1
enable server 1

target 1 {
    ipaddr 172.16.1.100
    port 80
    protocol tcp
    tcpopen 80,3,10
    dsr enable
}

target 2 {
    ipaddr 172.16.1.101
    port 80
    protocol tcp
    tcpopen 80,3,10
    dsr enable
}
register targets 1,2
enable targets 1,2
"""
)


def test_seed_network_renders_like_the_seed_config():
    assert render(SEED) == SEED_TEXT


def test_output_does_not_depend_on_input_order_or_spelling():
    shuffled = dict(SEED, targets=list(reversed(SEED["targets"])))
    shuffled["targets"][0] = dict(shuffled["targets"][0], tcpopen=[80, 3, 10])
    shuffled["networks"] = [dict(SEED["networks"][0], addr="172.16.1.0/24", mask=None)]
    assert render(shuffled) == SEED_TEXT
    shuffled["networks"] = [dict(SEED["networks"][0], mask=24)]
    shuffled["servers"] = [dict(SEED["servers"][0], targets=" 1, 2", method="maglev", session=600)]
    assert render(shuffled) == SEED_TEXT


def test_flags_and_extensions():
    spec = dict(
        SEED,
        servers=[dict(SEED["servers"][0], method="rr", session=30.5, targets=[1, 2, 3, 5])],
        targets=[
            dict(SEED["targets"][0], weight=3, backup=True, http=[80, "/health", 3, 10], enabled=False),
            dict(SEED["targets"][1], dsr=False, ping="1,3", registered=False),
            dict(SEED["targets"][1], id=3, http="80,/a b,3.0,10"),
            dict(SEED["targets"][1], id=5),
        ],
        vrrp=dict(vrid=7, priority=200, network=1, preempt=False, version=3),
        settings=dict(metrics="off", drainidle=2.0, arprefresh=30),
    )
    text = render(spec)
    assert "    targets 1-3,5\n    method rr\n    session 30.5\n" in text
    assert (
        "    tcpopen 80,3,10\n    http 80,/health,3,10\n    dsr enable\n    weight 3\n    backup\n}" in text
    )
    assert "    protocol tcp\n    tcpopen 80,3,10\n    ping 1,3\n}\n" in text
    assert '    http "80,/a b,3,10"\n' in text
    assert "register targets 1,3,5\nenable targets 3,5\n" in text
    assert text.endswith("\nvrrp {\n    vrid 7\n    priority 200\n    network 1\n    preempt off\n}\n")
    assert "\nmodules vrrp,arp,ping,hc,slb\nset metrics off\nset drainidle 2\n\n" in text


@pytest.mark.parametrize(
    "peers, line",
    [
        (["172.16.1.251", "10.0.0.2", "172.16.1.9"], "    peers 10.0.0.2,172.16.1.9,172.16.1.251\n"),
        ("172.16.1.251, 172.16.1.250", "    peers 172.16.1.250,172.16.1.251\n"),
        ([], ""),
        ("", ""),
    ],
)
def test_vrrp_peers_are_written_sorted_and_left_out_when_empty(peers, line):
    text = render(dict(SEED, vrrp=dict(vrid=7, priority=200, network=1, peers=peers)))
    assert text.endswith(f"\nvrrp {{\n    vrid 7\n    priority 200\n    network 1\n{line}}}\n")


@pytest.mark.parametrize(
    "bgp, block",
    [
        ({}, "bgp {\n}\n"),
        (dict(device=None, socket=None, grace=None), "bgp {\n}\n"),  # what the module passes for {}
        (dict(device="dsrlb0", socket="/run/bird/bird.ctl", grace=2), "bgp {\n}\n"),  # defaults
        (dict(device="vips0", grace=0.5), "bgp {\n    device vips0\n    grace 0.5\n}\n"),
        (dict(socket="/run/bird2.ctl", grace=3.0), "bgp {\n    socket /run/bird2.ctl\n    grace 3\n}\n"),
    ],
)
def test_bgp_block_comes_last_with_keys_at_their_default_left_out(bgp, block):
    text = render(dict(SEED, bgp=bgp))
    assert text.endswith("\n\n" + block)
    assert "vrrp" not in text


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(vrrp=dict(vrid=1, priority=1, network=1), bgp={}), r"vrrp, bgp: a balancer runs one HA mode"),
        (dict(bgp=dict(device="dsr lb0")), r"bgp\.device: 'dsr lb0' must be a single word"),
        (dict(bgp=dict(grace=-1)), r"bgp\.grace: expected a non-negative number"),
        (dict(bgp=dict(asn=65001)), r"bgp: unknown key\(s\) asn"),
        (dict(bgp="on"), r"bgp: expected a mapping"),
    ],
)
def test_bad_bgp_input_names_the_field(change, message):
    with pytest.raises(RenderError, match=message):
        render(dict(SEED, **change))


def test_modules_are_derived_from_use_unless_given():
    assert derive_modules({}) == ["arp", "slb"]
    assert derive_modules(dict(targets=[dict(id=1, ping="1,3")], vrrp=dict(vrid=1))) == [
        "vrrp",
        "arp",
        "ping",
        "slb",
    ]
    assert "\nmodules arp,master,slb\n" in render(dict(SEED, modules=["slb", "master", "arp"]))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(targets=[dict(id=1, ipaddr="172.16.1.300")]),
            r"targets\[id=1\]\.ipaddr: '172.16.1.300' is not an IP",
        ),
        (
            dict(networks=[dict(id=1, addr="10.0.0.0", name='a "b"')]),
            r"networks\[id=1\]\.name: .* must not contain double quotes",
        ),
        (dict(networks=[dict(id=1, addr="10.0.0.0", mask="255.0.255.0")]), r"mask: '255.0.255.0' is not a"),
        (
            dict(servers=[dict(id=1, ipaddr="10.0.0.1", method="lc")]),
            r"method: 'lc' is not one of maglev, rr",
        ),
        (dict(servers=[dict(id=1, ipaddr="10.0.0.1", targets="3-1")]), r"targets: range 3-1 runs backwards"),
        (
            dict(targets=[dict(id=1, ipaddr="10.0.0.1", http="80,3,10")]),
            r"http: '80,3,10' must be PORT,PATH,",
        ),
        (dict(settings=dict(drainidle=float("inf"))), r"settings\.drainidle: expected a non-negative number"),
        (dict(targets=[dict(id=1, ipaddr="10.0.0.1", prot="tcp")]), r"unknown key\(s\) prot"),
        (dict(targets=[dict(id=1, ipaddr="10.0.0.1"), dict(id=1, ipaddr="10.0.0.2")]), r"id 1 is used twice"),
        (dict(targets=[dict(ipaddr="10.0.0.1")]), r"targets\[0\]: every entry needs an integer id"),
        (dict(servers=[dict(id=1, ipaddr="10.0.0.1", targets="1;2")]), r"servers\[id=1\]\.targets: '1;2'"),
        (
            dict(targets=[dict(id=1, ipaddr="10.0.0.1", tcpopen="80, 3 }, 10")]),
            r"tcpopen: expected a number, got '3 }'",
        ),
        (dict(networks=[dict(id=1, addr="10.0.0.0/24", mask="255.0.0.0")]), r"either addr in CIDR form or"),
        (dict(networks=[dict(id=1, addr="10.0.0.1/24")]), r"networks\[id=1\]\.addr: .*host bits set"),
        (dict(settings=dict(colour="red")), r"settings: unknown key\(s\) colour"),
        (dict(modules=["slb", "lbx"]), r"modules: unknown module\(s\) lbx"),
        (dict(vrrp=dict(vrid=1, peers=["10.0.0.2", "fe80::g"])), r"vrrp\.peers: 'fe80::g' is not an IP"),
        (dict(vrrp=dict(vrid=1, family="ipv5")), r"vrrp\.family: 'ipv5' is not one of ipv4, ipv6"),
        (dict(vrrp=dict(vrid=1, peers="10.0.0.2,10.0.0.2")), r"vrrp\.peers: an address is listed twice"),
        (dict(servers=[dict(id=1, ipaddr="10.0.0.1", port=-1)]), r"port: expected a non-negative integer"),
    ],
)
def test_bad_input_names_the_field(change, message):
    with pytest.raises(RenderError, match=message):
        render(dict(SEED, **change))
