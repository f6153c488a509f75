# Copyright: (c) 2026, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The balancer role's IPv6 input (addr6, real6, virt6, dsrlb_real6, IPv6 VIPs) checked, for the preflight.

The preflight's IPv4 checks are Jinja arithmetic on 32-bit numbers; IPv6 needs Python's ipaddress, so
templates/preflight-errors.j2 adds these messages to its own. Every message names the inventory key to
fix. The documentation is in ipv6_errors.yml next to this file.
"""

from __future__ import annotations

import ipaddress
import typing as t
from collections.abc import Mapping, Sequence

# What an address of the data plane must not be: the balancers answer Neighbor Solicitations for VIPs
# and send health checks from real6 on the segment, which none of these can do.
_SPECIAL = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "a loopback address"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
)


def _special(value: t.Any, key: str, address: t.Any) -> list[str]:
    """A message when the address or network is one the segment cannot use."""
    for flag, what in _SPECIAL:
        if getattr(address, flag):
            return [f"{key}: {value} is {what}; give a global or unique local address of the segment"]
    return []


def _address6(value: t.Any, key: str, key4: str) -> tuple[ipaddress.IPv6Address | None, list[str]]:
    """An IPv6 address for an IPv6 key; an IPv4 one names its IPv4 key (key4)."""
    try:
        address = ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None, [f"{key}: {value!r} is not an IPv6 address"]
    if address.version == 4:
        return None, [f"{key}: {value} is an IPv4 address; give it as {key4} (here an IPv6 address)"]
    errors = _special(value, key, address)
    return (None if errors else address), errors


def _network6(value: t.Any, key: str, key4: str) -> tuple[ipaddress.IPv6Network | None, list[str]]:
    """An IPv6 network as CIDR, host bits allowed as in addr (real6/LEN reads as its network)."""
    text = str(value).strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None, [f"{key}: {value!r} is not an IPv6 network (A6/LEN, e.g. 2001:db8:1::/64)"]
    if network.version == 4:
        return None, [f"{key}: {value} is an IPv4 network; give it as {key4} (here the IPv6 network)"]
    if "/" not in text:
        return None, [f"{key}: {value} has no prefix length (A6/LEN, e.g. 2001:db8:1::/64)"]
    errors = _special(value, key, network)
    return (None if errors else network), errors


def _is_ipv6(value: t.Any) -> bool:
    """A VIP is the IPv6 checks' when it looks like one: the IPv4 checks have the others."""
    return ":" in str(value)


def _inside(address: ipaddress.IPv6Address, nets: list[ipaddress.IPv6Network]) -> bool:
    return any(address in network for network in nets)


def _owners(
    balancer_hosts: Sequence[str], target_hosts: Sequence[str], hostvars: Mapping[str, t.Any]
) -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str]:
    """The fleet's own addresses, which no VIP may be: the balancers' real6, the targets' addresses."""
    owners = {}
    for host in balancer_hosts:
        hv = hostvars.get(host, {})
        found = [("dsrlb_real6", hv.get("dsrlb_real6"))] + [
            (f"dsrlb_networks[{index}].real6", net.get("real6"))
            for index, net in enumerate(hv.get("dsrlb_networks") or ())
            if isinstance(net, Mapping)
        ]
        for key, value in found:
            if value is not None and _parsed(value) is not None:
                owners.setdefault(_parsed(value), f"the own address of balancer {host} ({key})")
    for host in target_hosts:
        hv = hostvars.get(host, {})
        for key, value in (
            ("dsrlb_target_address6", hv.get("dsrlb_target_address6")),
            ("dsrlb_target_address", hv.get("dsrlb_target_address", hv.get("ansible_host"))),
        ):
            if value is not None and _parsed(value) is not None:
                owners.setdefault(_parsed(value), f"the own address of target {host} ({key})")
    return owners


def _parsed(value: t.Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None


def _networks(networks: t.Any, real6: t.Any) -> tuple[list[ipaddress.IPv6Network], list[str]]:
    """The IPv6 networks and the messages of addr6, real6 and virt6 of each item."""
    nets = []
    errors = []
    items = networks if isinstance(networks, Sequence) and not isinstance(networks, str) else ()
    for index, net in enumerate(items):
        if not isinstance(net, Mapping):
            continue
        key = f"dsrlb_networks[{index}]"
        network = None
        if net.get("addr6") is not None:
            network, found = _network6(net["addr6"], f"{key}.addr6", f"{key}.addr")
            errors += found
            if network is not None:
                nets.append(network)
            if net.get("real6") is None and real6 is None:
                errors.append(
                    f"{key}.addr6: the balancer needs its own IPv6 address on {net['addr6']}: set the host "
                    f"var dsrlb_real6 or {key}.real6"
                )
        for field in ("real6", "virt6"):
            if net.get(field) is None:
                continue
            if net.get("addr6") is None:
                errors.append(f"{key}.{field}: needs {key}.addr6, the IPv6 network (e.g. 2001:db8:1::/64)")
                continue
            address, found = _address6(net[field], f"{key}.{field}", f"{key}.{field[:-1]}")
            errors += found
            if address is not None and network is not None and address not in network:
                errors.append(f"{key}.{field}: {net[field]} is outside {key}.addr6 ({network})")
    return nets, errors


def ipv6_errors(
    servers: t.Any,
    networks: t.Any = None,
    real6: t.Any = None,
    balancer_hosts: Sequence[str] = (),
    target_hosts: Sequence[str] = (),
    hostvars: Mapping[str, t.Any] | None = None,
    interface: str | None = None,
    interface_addresses: Sequence[str] | None = None,
) -> list[str]:
    """Messages naming the inventory key for a balancer's IPv6 input; [] when it is sound. With the
    data interface's IPv6 addresses (facts), dsrlb_real6 must be one of them: it is the source of the
    health checks and Neighbor Advertisements."""
    nets, errors = _networks(networks, real6)
    listed = ", ".join(str(network) for network in nets)
    where = (
        f"is inside no IPv6 network of dsrlb_networks (addr6: {listed})"
        if nets
        else "needs an IPv6 network, and no item of dsrlb_networks has addr6 (e.g. 2001:db8:1::/64)"
    )
    if real6 is not None:
        address, found = _address6(real6, "dsrlb_real6", "dsrlb_real")
        errors += found
        if address is not None and not _inside(address, nets):
            errors.append(f"dsrlb_real6: {real6} {where}")
        if address is not None and interface_addresses is not None:
            if address not in {_parsed(own) for own in interface_addresses}:
                errors.append(
                    f"dsrlb_real6: {real6} is not an address of {interface} (dsrlb_interface), which has "
                    + (", ".join(interface_addresses) or "no IPv6 address")
                )
    owners = _owners(balancer_hosts, target_hosts, hostvars or {})
    items = servers if isinstance(servers, Sequence) and not isinstance(servers, str) else ()
    for index, server in enumerate(items):
        if not isinstance(server, Mapping) or not _is_ipv6(server.get("vip", "")):
            continue
        key = f"dsrlb_servers[{index}].vip"
        vip = server["vip"]
        address = _parsed(vip)
        if address is None:
            errors.append(f"{key}: {vip!r} is not an IPv6 address")
            continue
        found = _special(vip, key, address)
        if found:
            errors += found
            continue
        if not _inside(address, nets):
            errors.append(f"{key}: {vip} {where}: the balancers answer Neighbor Solicitations on it only")
        if address in owners:
            errors.append(f"{key}: {vip} is {owners[address]}; a VIP must be an address of its own")
    return errors


class FilterModule:
    """Ansible's entry point: filter name -> function."""

    def filters(self) -> dict[str, t.Callable]:
        return {"ipv6_errors": ipv6_errors}
