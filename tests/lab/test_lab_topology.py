"""Topology files: the packaged default mirrors the seed network; mistakes are named by their field."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from labrun import BIN

from dsrlb_tools.lab import topology


def test_default_topology_mirrors_the_seed_network() -> None:
    topo = topology.load()
    assert {s.name: str(s.subnet) for s in topo.segments.values()} == {
        "lan": "172.16.1.0/24",
        "wan": "198.18.0.0/24",
    }
    first = {h.name: str(h.interfaces[0].addresses[0]) for h in topo.hosts.values()}
    assert first == {
        "router": "172.16.1.254/24",
        "lb1": "172.16.1.252/24",
        "lb2": "172.16.1.251/24",
        "web1": "172.16.1.100/24",
        "web2": "172.16.1.101/24",
        "client": "198.18.0.10/24",
    }
    router = topo.hosts["router"]
    assert router.forward and [str(a.ip) for a in router.interfaces[1].addresses] == [
        "198.18.0.1",
        "2001:db8:2::1",
    ]
    for name in ("lb1", "lb2", "web1", "web2"):
        assert topo.hosts[name].gateway == ipaddress.IPv4Address("172.16.1.254")
    client = topo.hosts["client"]
    assert [str(a.ip) for a in client.interfaces[0].addresses if a.version == 4] == [
        f"198.18.0.{i}" for i in range(10, 21)
    ]
    assert client.gateway == ipaddress.IPv4Address("198.18.0.1")


def test_default_topology_is_dual_stack() -> None:
    topo = topology.load()
    assert {s.name: str(s.subnet6) for s in topo.segments.values()} == {
        "lan": "2001:db8:1::/64",
        "wan": "2001:db8:2::/64",
    }
    v6 = {
        h.name: [str(a) for i in h.interfaces for a in i.addresses if a.version == 6]
        for h in topo.hosts.values()
    }
    assert v6["router"] == ["2001:db8:1::254/64", "2001:db8:2::1/64"]
    assert {n: v6[n] for n in ("lb1", "lb2", "web1", "web2")} == {
        "lb1": ["2001:db8:1::252/64"],
        "lb2": ["2001:db8:1::251/64"],
        "web1": ["2001:db8:1::100/64"],
        "web2": ["2001:db8:1::101/64"],
    }
    assert v6["client"] == [f"2001:db8:2::{i:x}/64" for i in range(0x10, 0x21)]
    for name in ("lb1", "lb2", "web1", "web2"):
        assert topo.hosts[name].gateway6 == ipaddress.IPv6Address("2001:db8:1::254")
    assert topo.hosts["client"].gateway6 == ipaddress.IPv6Address("2001:db8:2::1")
    assert topo.hosts["router"].gateway6 is None


def test_ipv6_gateway_and_routes_by_family() -> None:
    def change(d: dict) -> None:
        web1 = d["hosts"]["web1"]
        del web1["gateway6"]
        web1.update(gateway="2001:db8:1::254")  # an IPv6 `gateway` is the IPv6 default route
        web1["routes"] = [
            {"to": "2001:db8:9::/48", "via": "2001:db8:1::252"},
            {"to": "10.9.0.0/16", "via": "172.16.1.252"},
        ]
        d["segments"]["v6only"] = {"subnet6": "fd00:1::/64"}
        d["hosts"]["web2"]["interfaces"].append({"segment": "v6only", "addresses": ["fd00:1::1-fd00:1::3"]})

    topo = topology.parse(_broken(change))
    web1 = topo.hosts["web1"]
    assert web1.gateway is None and web1.gateway6 == ipaddress.IPv6Address("2001:db8:1::254")
    assert [(str(r.to), str(r.via)) for r in web1.routes] == [
        ("2001:db8:9::/48", "2001:db8:1::252"),
        ("10.9.0.0/16", "172.16.1.252"),
    ]
    assert topo.segments["v6only"].subnet is None
    assert [str(a) for a in topo.hosts["web2"].interfaces[1].addresses] == [
        f"fd00:1::{i}/64" for i in (1, 2, 3)
    ]


def _broken(change) -> dict:
    data = yaml.safe_load(topology.default_path().read_text())
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["hosts"]["web1"]["interfaces"][0].update(segment="lam"),
            "hosts.web1.interfaces[0].segment",
        ),
        (lambda d: d["hosts"]["web1"]["interfaces"][0].update(addresses=["10.0.0.1"]), "not a host address"),
        (
            lambda d: d["hosts"]["web2"]["interfaces"][0].update(addresses=["172.16.1.100"]),
            "already used by web1",
        ),
        (lambda d: d["hosts"]["lb1"].update(gateway="198.18.0.1"), "hosts.lb1.gateway"),
        (lambda d: d["hosts"]["lb1"].update(roles=["balancr"]), "hosts.lb1.roles[0]: unknown role"),
        (lambda d: d["hosts"]["lb1"].update(colour="red"), "hosts.lb1.colour: unknown field"),
        (lambda d: d["hosts"].update({"Web_3": d["hosts"]["web1"]}), "hosts.Web_3: bad name"),
        (lambda d: d["segments"]["lan"].update(subnet="172.16.1.0/33"), "segments.lan.subnet"),
        (
            lambda d: d["hosts"]["client"]["interfaces"][0].update(addresses=["198.18.0.20-198.18.0.11"]),
            "bad range",
        ),
        (lambda d: d.pop("segments"), "topology.segments: missing"),
        (lambda d: d["segments"]["lan"].update(subnet6="2001:db8:1::/129"), "segments.lan.subnet6"),
        (lambda d: d["segments"]["lan"].update(subnet6="172.16.1.0/24"), "segments.lan.subnet6"),
        (
            lambda d: d["segments"].update(dmz={}),
            "segments.dmz.subnet: missing (an IPv4 subnet, an IPv6 subnet6",
        ),
        (
            lambda d: d["hosts"]["web1"]["interfaces"][0].update(addresses=["2001:db8:9::1"]),
            "hosts.web1.interfaces[0].addresses[0]: 2001:db8:9::1 is not a host address of 2001:db8:1::/64",
        ),
        (
            lambda d: d["hosts"]["web1"]["interfaces"][0].update(addresses=["2001:db8:1::"]),
            "2001:db8:1:: is not a host address",
        ),
        (
            lambda d: d["hosts"]["web1"]["interfaces"][0].update(addresses=["2001:db8:1::zz"]),
            "hosts.web1.interfaces[0].addresses[0]: '2001:db8:1::zz' does not appear to be",
        ),
        (
            lambda d: d["hosts"]["web2"]["interfaces"][0].update(addresses=["2001:DB8:1::100"]),
            "2001:db8:1::100 is already used by web1",
        ),
        (
            lambda d: d["segments"]["lan"].pop("subnet6"),
            "2001:db8:1::254 is IPv6, but segment 'lan' has no subnet6 (segments.lan.subnet6)",
        ),
        (
            lambda d: d["hosts"]["client"]["interfaces"][0].update(addresses=["198.18.0.10-2001:db8:2::10"]),
            "bad range '198.18.0.10-2001:db8:2::10' (both ends of one IP version)",
        ),
        (
            lambda d: d["hosts"]["lb1"].update(gateway6="172.16.1.254"),
            "hosts.lb1.gateway6: 172.16.1.254 is not an IPv6",
        ),
        (
            lambda d: d["hosts"]["lb1"].update(gateway6="2001:db8:2::1"),
            "hosts.lb1.gateway6: 2001:db8:2::1 is not on any",
        ),
        (
            lambda d: d["hosts"]["lb1"].update(gateway="2001:db8:1::251"),
            "hosts.lb1.gateway6: a second IPv6 gateway (2001:db8:1::251 and 2001:db8:1::254)",
        ),
        (
            lambda d: d["hosts"]["lb1"].update(routes=[{"to": "2001:db8:9::/48", "via": "172.16.1.254"}]),
            "hosts.lb1.routes[0].via: 172.16.1.254 is not an IPv6 address",
        ),
    ],
)
def test_mistakes_are_named_by_field(change, message: str) -> None:
    with pytest.raises(topology.TopologyError, match=re.escape(message)):
        topology.parse(_broken(change))


def _broken_ecmp(change) -> dict:
    data = yaml.safe_load(topology.packaged_path("ecmp").read_text())
    change(data)
    return data


def _router(d: dict) -> dict:
    return d["hosts"]["router"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _router(d)["bgp"].update(asn=0), "hosts.router.bgp.asn: 0 is not an AS number"),
        (lambda d: _router(d)["bgp"].update(asn=4294967296), "hosts.router.bgp.asn"),
        (lambda d: _router(d)["bgp"]["neighbors"][1].update(asn="x"), "hosts.router.bgp.neighbors[1].asn"),
        (lambda d: _router(d)["bgp"]["neighbors"][0].update(host="lb9"), "neighbors[0].host: 'lb9' is not"),
        (lambda d: _router(d)["bgp"]["neighbors"][0].update(address="172.16.1.9"), "not both or neither"),
        (
            lambda d: _router(d)["bgp"]["neighbors"].append({"address": "10.9.9.9", "asn": 65001}),
            "neighbors[4].address: 10.9.9.9 is not on any segment of router",
        ),
        (
            lambda d: _router(d)["bgp"]["neighbors"].append({"address": "172.16.1.252", "asn": 65001}),
            "172.16.1.252 is already a neighbor",
        ),
        (lambda d: _router(d)["bgp"].update(bfd="yes"), "hosts.router.bgp.bfd: must be true or false"),
        (lambda d: _router(d)["bgp"].update(colour=1), "hosts.router.bgp.colour: unknown field"),
        (lambda d: _router(d)["sysctl"].update({"kernel.panic": 1}), "only the host's own network sysctls"),
        (
            lambda d: _router(d)["sysctl"].update({"net.ipv4.x": "1;rm"}),
            "hosts.router.sysctl.net.ipv4.x: bad value",
        ),
    ],
)
def test_bgp_and_sysctl_mistakes_are_named_by_field(change, message: str) -> None:
    with pytest.raises(topology.TopologyError, match=re.escape(message)):
        topology.parse(_broken_ecmp(change))


def test_topology_by_name_or_path(tmp_path: Path) -> None:
    assert {"default", "ecmp"} <= set(topology.packaged())
    assert topology.resolve("ecmp") == topology.packaged_path("ecmp")
    assert topology.resolve(None) == topology.default_path()
    own = tmp_path / "mine.yml"
    assert topology.resolve(str(own)) == own
    with pytest.raises(topology.TopologyError, match="ecmq: no such topology file.*packaged: .*ecmp"):
        topology.resolve("ecmq")


def test_cli_reports_a_bad_file_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(_broken(lambda d: d["hosts"]["web1"].update(gateway="not-an-ip"))))
    proc = subprocess.run(
        [str(BIN / "dsrlb"), "lab", "up", "--topology", str(bad), "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert f"{bad}: hosts.web1.gateway:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()  # nothing was started
