"""The two canonical config writers agree byte for byte: the collection's `config_render.render`, which
turns inventory data into the file the balancer_config module installs, and the daemon's
`parser.render`, which `dsrlb check --canonical` prints. A file the module wrote is its own canonical
form, so either writer changing alone fails here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dsrlb.config.parser import parse_file, parse_text
from dsrlb.config.parser import render as canonical
from dsrlb.vocabulary import MODULES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))  # ansible_collections/dsrlb/fleet -> the repository root

from ansible_collections.dsrlb.fleet.plugins.filter.balancer_config import balancer_config  # noqa: E402
from ansible_collections.dsrlb.fleet.plugins.module_utils import config_render  # noqa: E402

SEED_EXAMPLE = ROOT / "examples/dsr-example.conf"

SEED = dict(
    interfaces=[dict(id=1, name="eth0", access="raw")],
    networks=[
        dict(
            id=1,
            name="local network",
            addr="172.16.1.0/24",
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

FULL = dict(
    modules=["slb", "arp", "hc", "ping", "vrrp", "master"],
    settings=dict(
        control="/run/my dsrlb/c.sock",
        metrics="off",
        arprefresh=30,
        arpexpire=45.5,
        drainidle=0.25,
        flows=20000,
        sessions=262144,
        embryonic=2.5,
        hashseed=0xDEADBEEF,
    ),
    interfaces=[dict(id=2, name="eth1", threads=1), dict(id=1, name="eth0", access="raw", threads=4)],
    networks=[
        dict(
            id=1,
            name="front",
            addr="172.16.1.0",
            mask="24",
            real="172.16.1.252",
            virt="172.16.1.253",
            interface=1,
        ),
        dict(id=2, name="", addr="10.0.0.0/30", real="10.0.0.1", interface=2, enabled=False),
        dict(id=3, addr="10.0.1.0", mask="255.255.255.0", real="10.0.1.1", interface=2, registered=False),
    ],
    servers=[
        dict(
            id=1, ipaddr="172.16.1.10", port=80, protocol="tcp", targets="1,3-5", method="rr", session=30.25
        ),
        dict(id=2, ipaddr="172.16.1.11", port=53, protocol="udp", targets=[2], method="maglev", session=600),
        dict(id=3, ipaddr="172.16.1.12", port=443, protocol="tcp", targets="6,7", method="leastsessions"),
    ],
    targets=[
        dict(
            id=1,
            ipaddr="172.16.1.100",
            port=80,
            protocol="tcp",
            http=[80, "/health?a=1,b=2", 2, 6],
            ping="1, 3",
            dsr=True,
            weight=5,
        ),
        dict(id=2, ipaddr="172.16.1.101", protocol="udp", ping=[0.5, 1.5], dsr=True, weight=1),
        dict(id=3, ipaddr="172.16.1.102", tcpopen=[8080, 1, 1], dsr=True, backup=True),
        dict(id=4, ipaddr="172.16.1.103", dsr=True, enabled=False),
        dict(id=5, ipaddr="172.16.1.104", dsr="yes", backup=False),
        dict(id=6, ipaddr="172.16.1.105", port=443, dsr=True, http="443,/a{b}//c,3,10"),
        dict(id=7, ipaddr="172.16.1.106", dsr=True, tcpopen="443,3,10", ping="3,10", http="443,/,3,10"),
        dict(id=8, ipaddr="172.16.1.107", registered=False),
    ],
    vrrp=dict(
        vrid=42,
        priority=200,
        network=1,
        advert=2000,
        preempt=False,
        version=2,
        peers=["172.16.1.251", "10.0.0.2", "172.16.1.9"],  # the writers sort them numerically
    ),
)


def role_filter_dual_stack() -> dict:
    """The balancer role's dual-stack inventory through its filter (IPv6 networks, VIPs and targets), with
    the module's default dsr on every target."""
    config = balancer_config(
        [
            {"id": 1, "vip": "172.16.1.10", "port": 80, "health": {"type": "ping"}},
            {"id": 2, "vip": "2001:db8:1::10", "port": 80, "health": {"type": "ping"}},
        ],
        networks=[{"id": 1, "addr": "172.16.1.0/24", "addr6": "2001:db8:1::/64", "virt6": "2001:db8:1::fd"}],
        target_hosts=["web1", "web2"],
        hostvars={
            "web1": {"dsrlb_target_address": "172.16.1.100", "dsrlb_target_address6": "2001:db8:1::100"},
            "web2": {"dsrlb_target_address": "2001:db8:1::101", "dsrlb_target_servers": [2]},
        },
        real="172.16.1.252",
        real6="2001:db8:1::fc",
    )
    return dict(
        interfaces=SEED["interfaces"],
        networks=config["networks"],
        servers=config["servers"],
        targets=[dict(target, dsr=True) for target in config["targets"]],
    )


SPECS = {
    "empty": {},
    "minimal": dict(
        servers=[dict(id=1, ipaddr="10.0.0.10", port=80, protocol="tcp", targets=[1])],
        targets=[dict(id=1, ipaddr="10.0.0.100", dsr=True)],
    ),
    "seed": SEED,
    "full": FULL,
    "defaults spelled out": dict(
        SEED,
        settings=dict(
            control="/run/dsrlb/control.sock", metrics="127.0.0.1:9410", drainidle=5, hashseed=0x6473726C
        ),
        servers=[dict(SEED["servers"][0], method="maglev", session=600.0)],
        targets=[dict(target, weight=1, backup=False) for target in SEED["targets"]],
        vrrp=dict(vrid=1, priority=100, network=1, advert=1000, preempt=True, version=3, peers=[]),
    ),
    "dual stack": dict(
        settings=dict(sessionautoresync=1, sessionsyncack=1),
        interfaces=SEED["interfaces"],
        networks=[
            dict(
                SEED["networks"][0],
                mask6=64,
                real6="2001:db8:1::252",
                virt6="2001:db8:1::253",
                syncpeer="172.16.1.251",
            )
        ],
        servers=[
            SEED["servers"][0],
            dict(id=2, ipaddr="2001:db8:1::10", port=80, protocol="tcp", targets=[3, 4], method="rr"),
        ],
        targets=[
            *SEED["targets"],
            dict(id=3, ipaddr="2001:db8:1::100", port=80, ping="1,3", dsr=True),  # ping6 for IPv6
            dict(id=4, ipaddr6="2001:db8:1:0::101", tcpopen="80,1,3", ping6="1,3", dsr=True),
        ],
        vrrp=dict(vrid=42, priority=200, network=1, peers=["172.16.1.251"]),
    ),
    "role filter, dual stack": role_filter_dual_stack(),
    "vrrp over ipv6": dict(
        SEED,
        networks=[dict(SEED["networks"][0], mask6=64, real6="2001:db8:1::252")],
        vrrp=dict(vrid=42, priority=200, network=1, family="ipv6", peers=["fe80::1:2", "fe80::2"]),
    ),
    "vrrp family ipv4 spelled out": dict(SEED, vrrp=dict(vrid=1, priority=100, network=1, family="ipv4")),
    "bgp": dict(SEED, bgp={}),
    "bgp with keys": dict(SEED, bgp=dict(device="vips0", socket="/run/bird/other.ctl", grace=0.5)),
    "bgp defaults spelled out": dict(SEED, bgp=dict(device="dsrlb0", socket="/run/bird/bird.ctl", grace=2)),
}


@pytest.mark.parametrize("name", SPECS)
def test_module_text_is_its_own_canonical_form(name):
    """What the module installs is byte for byte what `dsrlb check --canonical` prints for that file."""
    text = config_render.render(SPECS[name])
    assert canonical(parse_text(text, f"{name}.conf")) == text


def test_module_writes_the_seed_network_as_the_seed_example_in_canonical_form():
    """The seed example's objects, given as inventory data, give the example's canonical text: only the
    leading comments differ (the example's own, the module's "managed by Ansible" line)."""
    module_text = config_render.render(dict(SEED, modules=list(MODULES)))
    example = canonical(parse_file(str(SEED_EXAMPLE)))
    assert module_text.startswith(config_render.HEADER + "\n")
    body = module_text[len(config_render.HEADER) + 1 :]
    assert example.endswith("\n" + body) and example[: -len(body)].startswith("//")


def test_seed_example_canonical_form_is_a_fixed_point():
    text = canonical(parse_file(str(SEED_EXAMPLE)))
    again = parse_text(text)
    assert canonical(again) == text
    assert again.comments == parse_file(str(SEED_EXAMPLE)).comments != ()
