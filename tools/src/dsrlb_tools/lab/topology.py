"""Lab topology: load and validate the YAML file that names segments, hosts, addresses and routes.

Errors name the offending field by its path (``hosts.web1.interfaces[0].segment``) so a user can fix
the file without reading this code. The format is documented in ``default.yml``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

ROLES = ("router", "balancer", "target", "client")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,14}$")


class TopologyError(ValueError):
    """A topology file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Segment:
    name: str
    subnet: ipaddress.IPv4Network


@dataclass(frozen=True)
class Interface:
    name: str  # eth0, eth1, ... inside the host
    segment: str
    addresses: tuple[ipaddress.IPv4Interface, ...]


@dataclass(frozen=True)
class Route:
    to: ipaddress.IPv4Network
    via: ipaddress.IPv4Address


@dataclass(frozen=True)
class Host:
    name: str
    roles: tuple[str, ...]
    interfaces: tuple[Interface, ...]
    forward: bool = False
    gateway: ipaddress.IPv4Address | None = None
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class Topology:
    segments: dict[str, Segment]
    hosts: dict[str, Host]


def default_path() -> Path:
    """The topology shipped with the package (mirrors the seed network)."""
    return Path(str(resources.files("dsrlb_tools.lab").joinpath("default.yml")))


def load(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file (the default one when ``path`` is None)."""
    path = Path(path) if path else default_path()
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
        spec = _mapping(spec, where, required=("subnet",), allowed=("subnet",))
        segments[name] = Segment(name, _parse(ipaddress.IPv4Network, spec["subnet"], f"{where}.subnet"))
    hosts = {}
    seen: dict[ipaddress.IPv4Address, str] = {}
    for name, spec in _mapping(top["hosts"], "hosts").items():
        hosts[name] = _host(name, spec, segments, seen)
    if not hosts:
        raise TopologyError("hosts: at least one host is needed")
    return Topology(segments, hosts)


def _host(name: Any, spec: Any, segments: dict[str, Segment], seen: dict) -> Host:
    where = f"hosts.{name}"
    _check_name(name, where)
    spec = _mapping(
        spec,
        where,
        required=("interfaces",),
        allowed=("roles", "forward", "interfaces", "gateway", "routes"),
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
                if addr not in seg.subnet or addr in (
                    seg.subnet.network_address,
                    seg.subnet.broadcast_address,
                ):
                    raise TopologyError(
                        f"{iwhere}.addresses[{j}]: {addr} is not a host address of {seg.subnet}"
                    )
                if addr in seen:
                    raise TopologyError(f"{iwhere}.addresses[{j}]: {addr} is already used by {seen[addr]}")
                seen[addr] = name
                addrs.append(ipaddress.IPv4Interface(f"{addr}/{seg.subnet.prefixlen}"))
        interfaces.append(Interface(f"eth{i}", seg.name, tuple(addrs)))
    if not interfaces:
        raise TopologyError(f"{where}.interfaces: a host needs at least one interface")
    subnets = [segments[x.segment].subnet for x in interfaces]

    def on_link(value: Any, at: str) -> ipaddress.IPv4Address:
        addr = _parse(ipaddress.IPv4Address, value, at)
        if not any(addr in net for net in subnets):
            raise TopologyError(f"{at}: {addr} is not on any segment of {name}")
        return addr

    gateway = on_link(spec["gateway"], f"{where}.gateway") if "gateway" in spec else None
    routes = []
    for i, rspec in enumerate(_list(spec.get("routes", []), f"{where}.routes")):
        rwhere = f"{where}.routes[{i}]"
        rspec = _mapping(rspec, rwhere, required=("to", "via"), allowed=("to", "via"))
        routes.append(
            Route(
                _parse(ipaddress.IPv4Network, rspec["to"], f"{rwhere}.to"),
                on_link(rspec["via"], f"{rwhere}.via"),
            )
        )
    return Host(name, roles, tuple(interfaces), forward, gateway, tuple(routes))


def _expand(item: Any, where: str) -> list[ipaddress.IPv4Address]:
    """One address, or every address of an inclusive range ``A-B``."""
    text = str(item)
    if "-" not in text:
        return [_parse(ipaddress.IPv4Address, text, where)]
    first, last = (_parse(ipaddress.IPv4Address, part.strip(), where) for part in text.split("-", 1))
    if last < first or int(last) - int(first) > 1024:
        raise TopologyError(f"{where}: bad range {text!r} (first <= last, at most 1024 addresses)")
    return [ipaddress.IPv4Address(n) for n in range(int(first), int(last) + 1)]


def _parse(kind: type, value: Any, where: str) -> Any:
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
