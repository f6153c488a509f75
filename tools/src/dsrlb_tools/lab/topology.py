"""Lab topology: load and validate the YAML file that names segments, hosts, addresses and routes.

Errors name the offending field by its path (``hosts.web1.interfaces[0].segment``) so a user can fix
the file without reading this code. The format is documented in ``default.yml`` (``sysctl:`` and
``bgp:`` in ``ecmp.yml``); ``--topology ecmp`` names a packaged file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

ROLES = ("router", "balancer", "target", "client")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
# A host may change its own network namespace's sysctls only (/proc/sys/net is its own; the rest is
# the shared kernel's and read-only in a host).
_SYSCTL_KEY = re.compile(r"^net\.[a-z0-9_.-]+$")
_SYSCTL_VALUE = re.compile(r"^[A-Za-z0-9_.:-]+$")
ASN_RANGE = (1, 4294967295)


class TopologyError(ValueError):
    """A topology file that cannot be used; the message names the file and the field."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Segment:
    name: str
    subnet: ipaddress.IPv4Network | None
    subnet6: ipaddress.IPv6Network | None = None

    def network(self, version: int) -> IPNetwork | None:
        """The segment's subnet of that IP version (4 or 6), if it has one."""
        return self.subnet if version == 4 else self.subnet6


@dataclass(frozen=True)
class Interface:
    name: str  # eth0, eth1, ... inside the host
    segment: str
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]


@dataclass(frozen=True)
class Route:
    to: IPNetwork
    via: IPAddress


@dataclass(frozen=True)
class Neighbor:
    """A BGP peer of a host, by lab host name or by address (its address is resolved at load)."""

    address: ipaddress.IPv4Address
    asn: int
    host: str | None = None  # the lab host it names, when given by name


@dataclass(frozen=True)
class Bgp:
    """What a router host's BIRD speaks: its own ASN and its peers (see ``routing.py``)."""

    asn: int
    router_id: ipaddress.IPv4Address
    neighbors: tuple[Neighbor, ...]
    bfd: bool = False


@dataclass(frozen=True)
class Host:
    name: str
    roles: tuple[str, ...]
    interfaces: tuple[Interface, ...]
    forward: bool = False
    gateway: ipaddress.IPv4Address | None = None
    routes: tuple[Route, ...] = ()
    sysctl: tuple[tuple[str, str], ...] = ()
    bgp: Bgp | None = None
    gateway6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True)
class Topology:
    segments: dict[str, Segment]
    hosts: dict[str, Host]


def default_path() -> Path:
    """The topology shipped with the package (mirrors the seed network)."""
    return packaged_path("default")


def packaged_path(name: str) -> Path:
    """A topology shipped with the package, by name (``default``, ``ecmp``)."""
    return Path(str(resources.files("dsrlb_tools.lab").joinpath(f"{name}.yml")))


def packaged() -> list[str]:
    """Names of the topologies shipped with the package."""
    return sorted(p.name[:-4] for p in packaged_path("default").parent.glob("*.yml"))


def resolve(name_or_path: str | Path | None) -> Path:
    """A topology file: a path as given, or the packaged topology of that name (``--topology ecmp``)."""
    if not name_or_path:
        return default_path()
    text = str(name_or_path)
    if "/" in text or text.endswith((".yml", ".yaml")) or Path(text).exists():
        return Path(text)
    if text in packaged():
        return packaged_path(text)
    raise TopologyError(
        f"{text}: no such topology file, and no packaged topology of that name "
        f"(packaged: {', '.join(packaged())})"
    )


def load(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file, or a packaged one by name (the default one when None)."""
    path = resolve(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise TopologyError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise TopologyError(f"{path}: not valid YAML: {err}") from None
    try:
        return parse(data)
    except TopologyError as err:
        raise TopologyError(f"{path}: {err}") from None


def parse(data: Any) -> Topology:
    """Validate already-loaded YAML data."""
    top = _mapping(data, "topology", required=("segments", "hosts"), allowed=("segments", "hosts"))
    segments = {}
    for name, spec in _mapping(top["segments"], "segments").items():
        where = f"segments.{name}"
        _check_name(name, where)
        spec = _mapping(spec, where, allowed=("subnet", "subnet6"))
        if "subnet" not in spec and "subnet6" not in spec:
            raise TopologyError(f"{where}.subnet: missing (an IPv4 subnet, an IPv6 subnet6, or both)")
        segments[name] = Segment(
            name,
            _parse(ipaddress.IPv4Network, spec["subnet"], f"{where}.subnet") if "subnet" in spec else None,
            _parse(ipaddress.IPv6Network, spec["subnet6"], f"{where}.subnet6") if "subnet6" in spec else None,
        )
    hosts = {}
    seen: dict[IPAddress, str] = {}
    bgp_specs = {}
    for name, spec in _mapping(top["hosts"], "hosts").items():
        hosts[name] = _host(name, spec, segments, seen)
        if isinstance(spec, dict) and "bgp" in spec:
            bgp_specs[name] = spec["bgp"]
    if not hosts:
        raise TopologyError("hosts: at least one host is needed")
    # Peers may be named by host, so BGP is read once every host's addresses are known.
    for name, spec in bgp_specs.items():
        hosts[name] = replace(hosts[name], bgp=_bgp(hosts[name], spec, hosts, segments))
    return Topology(segments, hosts)


def _host(name: Any, spec: Any, segments: dict[str, Segment], seen: dict) -> Host:
    where = f"hosts.{name}"
    _check_name(name, where)
    spec = _mapping(
        spec,
        where,
        required=("interfaces",),
        allowed=("roles", "forward", "interfaces", "gateway", "gateway6", "routes", "sysctl", "bgp"),
    )
    roles = tuple(_list(spec.get("roles", []), f"{where}.roles"))
    for i, role in enumerate(roles):
        if role not in ROLES:
            raise TopologyError(f"{where}.roles[{i}]: unknown role {role!r} (known: {', '.join(ROLES)})")
    forward = spec.get("forward", False)
    if not isinstance(forward, bool):
        raise TopologyError(f"{where}.forward: must be true or false, not {forward!r}")
    interfaces = []
    for i, ispec in enumerate(_list(spec["interfaces"], f"{where}.interfaces")):
        iwhere = f"{where}.interfaces[{i}]"
        ispec = _mapping(ispec, iwhere, required=("segment", "addresses"), allowed=("segment", "addresses"))
        seg = segments.get(ispec["segment"])
        if seg is None:
            raise TopologyError(
                f"{iwhere}.segment: unknown segment {ispec['segment']!r} (known: {', '.join(segments)})"
            )
        if any(x.segment == seg.name for x in interfaces):
            raise TopologyError(f"{iwhere}.segment: host already has an interface on {seg.name!r}")
        addrs = []
        for j, item in enumerate(_list(ispec["addresses"], f"{iwhere}.addresses")):
            for addr in _expand(item, f"{iwhere}.addresses[{j}]"):
                net = seg.network(addr.version)
                if net is None:
                    key = "subnet" if addr.version == 4 else "subnet6"
                    raise TopologyError(
                        f"{iwhere}.addresses[{j}]: {addr} is IPv{addr.version}, but segment {seg.name!r} "
                        f"has no {key} (segments.{seg.name}.{key})"
                    )
                # IPv6 has no broadcast address; its subnet-router anycast (the ::) is no host's either.
                reserved = (
                    (net.network_address, net.broadcast_address)
                    if addr.version == 4
                    else (net.network_address,)
                )
                if addr not in net or addr in reserved:
                    raise TopologyError(f"{iwhere}.addresses[{j}]: {addr} is not a host address of {net}")
                if addr in seen:
                    raise TopologyError(f"{iwhere}.addresses[{j}]: {addr} is already used by {seen[addr]}")
                seen[addr] = name
                addrs.append(ipaddress.ip_interface(f"{addr}/{net.prefixlen}"))
        interfaces.append(Interface(f"eth{i}", seg.name, tuple(addrs)))
    if not interfaces:
        raise TopologyError(f"{where}.interfaces: a host needs at least one interface")
    subnets = [
        net for x in interfaces for net in (segments[x.segment].subnet, segments[x.segment].subnet6) if net
    ]

    def on_link(value: Any, at: str, version: int | None = None) -> Any:
        addr = _parse(ipaddress.ip_address, value, at)
        if version and addr.version != version:
            raise TopologyError(f"{at}: {addr} is not an IPv{version} address")
        if not any(addr in net for net in subnets):
            raise TopologyError(f"{at}: {addr} is not on any segment of {name}")
        return addr

    # `gateway` takes either family (an IPv6 one is the IPv6 default route); `gateway6` an IPv6 one.
    gateways: dict[int, Any] = {}
    for key in ("gateway", "gateway6"):
        if key in spec:
            addr = on_link(spec[key], f"{where}.{key}", 6 if key == "gateway6" else None)
            if addr.version in gateways:
                raise TopologyError(
                    f"{where}.{key}: a second IPv{addr.version} gateway ({gateways[addr.version]} and {addr})"
                )
            gateways[addr.version] = addr
    routes = []
    for i, rspec in enumerate(_list(spec.get("routes", []), f"{where}.routes")):
        rwhere = f"{where}.routes[{i}]"
        rspec = _mapping(rspec, rwhere, required=("to", "via"), allowed=("to", "via"))
        to = _parse(ipaddress.ip_network, rspec["to"], f"{rwhere}.to")
        routes.append(Route(to, on_link(rspec["via"], f"{rwhere}.via", to.version)))
    sysctl = []
    for key, value in _mapping(spec.get("sysctl", {}), f"{where}.sysctl").items():
        if not isinstance(key, str) or not _SYSCTL_KEY.match(key):
            raise TopologyError(
                f"{where}.sysctl.{key}: only the host's own network sysctls (net.*) can be set"
            )
        if isinstance(value, bool) or not _SYSCTL_VALUE.match(str(value)):
            raise TopologyError(f"{where}.sysctl.{key}: bad value {value!r} (a number or a word)")
        sysctl.append((key, str(value)))
    return Host(
        name,
        roles,
        tuple(interfaces),
        forward,
        gateways.get(4),
        tuple(routes),
        tuple(sysctl),
        gateway6=gateways.get(6),
    )


def _bgp(host: Host, spec: Any, hosts: dict[str, Host], segments: dict[str, Segment]) -> Bgp:
    """A router's BGP: peers by host name resolve to that host's first address on a shared segment."""
    where = f"hosts.{host.name}.bgp"
    spec = _mapping(
        spec, where, required=("asn", "neighbors"), allowed=("asn", "router_id", "neighbors", "bfd")
    )
    asn = _asn(spec["asn"], f"{where}.asn")
    own = [a for i in host.interfaces for a in i.addresses if a.version == 4]  # BGP speaks IPv4 here
    router_id = _parse(
        ipaddress.IPv4Address, spec.get("router_id", own[0].ip if own else ""), f"{where}.router_id"
    )
    bfd = spec.get("bfd", False)
    if not isinstance(bfd, bool):
        raise TopologyError(f"{where}.bfd: must be true or false, not {bfd!r}")
    mine = {i.segment for i in host.interfaces}
    neighbors: list[Neighbor] = []
    for i, nspec in enumerate(_list(spec["neighbors"], f"{where}.neighbors")):
        nwhere = f"{where}.neighbors[{i}]"
        nspec = _mapping(nspec, nwhere, required=("asn",), allowed=("host", "address", "asn"))
        if ("host" in nspec) == ("address" in nspec):
            raise TopologyError(
                f"{nwhere}: give either host (a lab host name) or address, not both or neither"
            )
        if "host" in nspec:
            peer = hosts.get(nspec["host"])
            if peer is None or peer.name == host.name:
                raise TopologyError(f"{nwhere}.host: {nspec['host']!r} is not another host of the topology")
            shared = [
                a.ip for x in peer.interfaces if x.segment in mine for a in x.addresses if a.version == 4
            ][:1]
            if not shared:
                raise TopologyError(f"{nwhere}.host: {peer.name} shares no segment with {host.name}")
            address, name = shared[0], peer.name
        else:
            address, name = _parse(ipaddress.IPv4Address, nspec["address"], f"{nwhere}.address"), None
            if not any(address in (segments[x.segment].subnet or ()) for x in host.interfaces):
                raise TopologyError(f"{nwhere}.address: {address} is not on any segment of {host.name}")
        if any(n.address == address for n in neighbors):
            raise TopologyError(f"{nwhere}: {address} is already a neighbor")
        neighbors.append(Neighbor(address, _asn(nspec["asn"], f"{nwhere}.asn"), name))
    if not neighbors:
        raise TopologyError(f"{where}.neighbors: at least one neighbor is needed")
    return Bgp(asn, router_id, tuple(neighbors), bfd)


def _asn(value: Any, where: str) -> int:
    low, high = ASN_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TopologyError(f"{where}: {value!r} is not an AS number ({low}..{high})")
    return value


def _expand(item: Any, where: str) -> list[IPAddress]:
    """One IPv4 or IPv6 address, or every address of an inclusive range ``A-B`` (one family)."""
    text = str(item)
    if "-" not in text:
        return [_parse(ipaddress.ip_address, text, where)]
    first, last = (_parse(ipaddress.ip_address, part.strip(), where) for part in text.split("-", 1))
    if first.version != last.version:
        raise TopologyError(f"{where}: bad range {text!r} (both ends of one IP version)")
    if last < first or int(last) - int(first) > 1024:
        raise TopologyError(f"{where}: bad range {text!r} (first <= last, at most 1024 addresses)")
    return [
        ipaddress.ip_address(n) if first.version == 4 else ipaddress.IPv6Address(n)
        for n in range(int(first), int(last) + 1)
    ]


def _parse(kind: Callable[[str], Any], value: Any, where: str) -> Any:
    try:
        return kind(str(value))
    except ValueError as err:
        raise TopologyError(f"{where}: {err}") from None


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TopologyError(
            f"{where}: bad name {name!r} (1-15 chars of a-z, 0-9, '-', starting with a letter)"
        )


def _mapping(value: Any, where: str, required: tuple = (), allowed: tuple | None = None) -> dict:
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: must be a mapping, not {type(value).__name__}")
    for key in required:
        if key not in value:
            raise TopologyError(f"{where}.{key}: missing")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise TopologyError(f"{where}.{key}: unknown field (allowed: {', '.join(allowed)})")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise TopologyError(f"{where}: must be a list, not {type(value).__name__}")
    return value
