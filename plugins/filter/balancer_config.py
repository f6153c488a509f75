# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The balancer role's inventory shaped into the networks, servers, targets and vrrp of balancer_config.

In Python rather than in role vars so that the numbering of targets across servers and hosts, the
defaults and the checks of each item can be read and unit-tested; the documentation is in
balancer_config.yml next to this file.
"""

from __future__ import annotations

import ipaddress
import typing as t
from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.dsrlb.fleet.plugins.module_utils.vocabulary import VRRP_FAMILIES

# Health check type -> its parameters with their defaults, in the order of the config statement's
# arguments; a port of None means the virtual server's port.
CHECK_DEFAULTS: dict[str, tuple[tuple[str, t.Any], ...]] = {
    "tcpopen": (("port", None), ("interval", 3), ("timeout", 10)),
    "ping": (("interval", 1), ("timeout", 5)),
    "http": (("port", None), ("path", "/"), ("interval", 3), ("timeout", 10)),
}


def _items(value: t.Any, what: str, required: tuple[str, ...]) -> list[Mapping[str, t.Any]]:
    """A non-empty list of mappings that have the required keys, sorted by id as the config is."""
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise AnsibleFilterError(f"{what}: a non-empty list is needed, got {value!r}")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise AnsibleFilterError(f"{what}[{index}] is not a dictionary: {item!r}")
        missing = [key for key in required if key not in item]
        if missing:
            raise AnsibleFilterError(
                f"{what}[{index}] has no {', '.join(missing)}: each needs {', '.join(required)}"
            )
    try:
        return sorted(value, key=lambda item: item["id"])
    except TypeError as err:
        raise AnsibleFilterError(f"{what}: the ids cannot be ordered ({err})") from None


def _health(server: Mapping[str, t.Any]) -> dict[str, list[t.Any]]:
    """The target's health check option (e.g. {tcpopen: [port, interval, timeout]}) from the server's."""
    health = server.get("health") or {}
    if not isinstance(health, Mapping):
        raise AnsibleFilterError(f"server {server['id']}: health is not a dictionary: {health!r}")
    if not health:
        return {}
    kind = health.get("type")
    if kind not in CHECK_DEFAULTS:
        raise AnsibleFilterError(
            f"server {server['id']}: health type {kind!r} is not one of {', '.join(CHECK_DEFAULTS)}"
        )
    return {
        kind: [
            health.get(name, server["port"] if name == "port" else default)
            for name, default in CHECK_DEFAULTS[kind]
        ]
    }


def _host_var(host: str, hv: Mapping[str, t.Any], name: str, default: t.Any, convert: t.Callable) -> t.Any:
    """A target host's variable converted as the role's Jinja did (`| int`, `| bool`), named on failure."""
    value = hv.get(name, default)
    try:
        return convert(value)
    except (TypeError, ValueError):
        message = f"target host {host}: {name} is not a valid {convert.__name__}: {value!r}"
        raise AnsibleFilterError(message) from None


def _version(address: t.Any) -> int | None:
    """4 or 6 for an IP address, None for anything else (a host name)."""
    try:
        return ipaddress.ip_address(str(address)).version
    except ValueError:
        return None


def _target_address(host: str, hv: Mapping[str, t.Any], server: Mapping[str, t.Any]) -> t.Any:
    """The host's address of the server's family: the daemon sends a server's packets to targets of its
    own family only. dsrlb_target_address (default ansible_host) serves both families' servers unless
    it is an address of the other one; dsrlb_target_address6 gives a host an IPv6 address besides it."""
    address = hv.get("dsrlb_target_address", hv.get("ansible_host", host))
    address6 = hv.get("dsrlb_target_address6")
    if address6 is not None and _version(address6) != 6:
        message = f"target host {host}: dsrlb_target_address6: {address6!r} is not an IPv6 address"
        raise AnsibleFilterError(message)
    served = f"virtual server {server['id']} ({server['vip']})"
    if _version(server["vip"]) == 6:
        if address6 is not None:
            return address6
        if _version(address) == 6:
            return address
        raise AnsibleFilterError(
            f"target host {host}: no IPv6 address for the IPv6 {served}: set its dsrlb_target_address6, "
            f"or dsrlb_target_servers without {server['id']}"
        )
    if _version(address) == 6:
        raise AnsibleFilterError(
            f"target host {host}: no IPv4 address for the IPv4 {served}: its dsrlb_target_address "
            f"{address} is IPv6; give it the IPv4 address and dsrlb_target_address6 this one, or set "
            f"dsrlb_target_servers without {server['id']}"
        )
    return address


def _targets(
    servers: list[Mapping[str, t.Any]], target_hosts: Sequence[str], hostvars: Mapping[str, t.Any]
) -> list[list[dict[str, t.Any]]]:
    """Per server its targets, one per host serving it, numbered 1.. by server, then in host order."""
    served = []
    number = 0
    for server in servers:
        health = _health(server)
        targets = []
        for host in target_hosts:
            hv = hostvars[host]
            only = hv.get("dsrlb_target_servers")
            if only is not None and server["id"] not in only:
                continue
            number += 1
            targets.append(
                {
                    "id": number,
                    "ipaddr": _target_address(host, hv, server),
                    "port": server["port"],
                    "protocol": server.get("protocol", "tcp"),
                    "weight": _host_var(host, hv, "dsrlb_target_weight", 1, int),
                    "backup": _host_var(host, hv, "dsrlb_target_backup", False, boolean),
                    **health,
                }
            )
        served.append(targets)
    return served


def _network(net: Mapping[str, t.Any], real: str | None, real6: str | None) -> dict[str, t.Any]:
    """A network on the role's one interface, with the balancer's own address unless it has its own;
    with addr6, the IPv6 network too: its prefix length (mask6) and the balancer's own IPv6 address."""
    network = {"id": net["id"], "addr": net["addr"], "real": net.get("real", real), "interface": 1}
    if network["real"] is None:
        raise AnsibleFilterError(
            f"network {net['id']} has no real address: give the balancer's own address (real, the "
            "role's host var dsrlb_real) or the network's real"
        )
    network |= {key: net[key] for key in ("name", "mask", "virt") if key in net}
    if net.get("addr6") is None:
        return network
    try:
        mask6 = ipaddress.IPv6Network(str(net["addr6"]), strict=False).prefixlen
    except ValueError:
        message = f"network {net['id']}: addr6 {net['addr6']!r} is not an IPv6 network (2001:db8:1::/64)"
        raise AnsibleFilterError(message) from None
    network |= {"mask6": mask6, "real6": net.get("real6", real6)}
    if network["real6"] is None:
        raise AnsibleFilterError(
            f"network {net['id']} has addr6 but no real6: give the balancer's own IPv6 address (the "
            "role's host var dsrlb_real6) or the network's real6"
        )
    return network | ({"virt6": net["virt6"]} if "virt6" in net else {})


def _server(server: Mapping[str, t.Any], targets: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """A virtual server with the ids of its targets; method and session only when given."""
    return {
        "id": server["id"],
        "ipaddr": server["vip"],
        "port": server["port"],
        "protocol": server.get("protocol", "tcp"),
        "targets": [target["id"] for target in targets],
    } | {key: server[key] for key in ("method", "session") if key in server}


def _peer_address(host: str, hv: Mapping[str, t.Any], network: t.Any) -> str:
    """A balancer's own address on the VRRP network: that network's `real` in its dsrlb_networks, else
    its dsrlb_real (the source of its adverts)."""
    for net in hv.get("dsrlb_networks") or ():
        if isinstance(net, Mapping) and str(net.get("id")) == str(network) and net.get("real"):
            return str(net["real"])
    if not hv.get("dsrlb_real"):
        raise AnsibleFilterError(
            f"balancer host {host}: no address for VRRP network {network}: give it dsrlb_real or a "
            "real in its dsrlb_networks, so that the other balancers can list it in peers"
        )
    return str(hv["dsrlb_real"])


def _link_local(host: str, hv: Mapping[str, t.Any]) -> str:
    """A balancer's IPv6 link-local address on the data interface, the source of its adverts with VRRP
    family ipv6: its dsrlb_vrrp_link_local, else from its gathered facts."""
    given = hv.get("dsrlb_vrrp_link_local")
    if not given:
        facts = hv.get("ansible_facts") or {}
        interface = hv.get("dsrlb_interface") or (facts.get("default_ipv4") or {}).get("interface")
        found = [
            a.get("address")
            for a in ((facts.get(str(interface).replace("-", "_")) or {}).get("ipv6") or ())
            if isinstance(a, Mapping) and a.get("scope") == "link"
        ]
        given = found[0] if len(found) == 1 else None
    try:
        address = ipaddress.IPv6Address(str(given).split("%", maxsplit=1)[0]) if given else None
    except ValueError:
        address = None
    if address is None or not address.is_link_local:
        raise AnsibleFilterError(
            f"balancer host {host}: VRRP family ipv6 needs its IPv6 link-local address on the data interface "
            f"(the source of its adverts, what the other balancers list in peers): got {given!r}; set "
            "dsrlb_vrrp_link_local (`ip -6 addr show dev IFACE scope link`), gather its facts, or give "
            "dsrlb_vrrp.peers"
        )
    return str(address)


def _vrrp(
    vrrp: t.Any,
    balancer_hosts: Sequence[str],
    host: str | None,
    hostvars: Mapping[str, t.Any],
    own: set[str],
) -> tuple[dict[str, t.Any] | None, list[str]]:
    """The vrrp option with `peers`: the own addresses of the other hosts of the balancer group whose
    dsrlb_vrrp has the same vrid (with family ipv6 their link-local addresses), unless dsrlb_vrrp gives
    peers itself; and those hosts' own (IPv4) addresses, the candidates for bngsync's syncpeer."""
    if vrrp is None:
        return None, []
    if not isinstance(vrrp, Mapping) or "vrid" not in vrrp:
        raise AnsibleFilterError(f"vrrp: a dictionary with vrid is needed, got {vrrp!r}")
    family = vrrp.get("family", VRRP_FAMILIES[0])
    if family not in VRRP_FAMILIES:
        raise AnsibleFilterError(
            f"vrrp.family: {family!r} is not one of {', '.join(VRRP_FAMILIES)} (what VRRP runs over)"
        )
    if "peers" in vrrp and family == VRRP_FAMILIES[0]:
        return dict(vrrp), [str(p) for p in vrrp["peers"] or ()]
    peers: set[str] = set()
    links: set[str] = set()
    for other in balancer_hosts:
        hv = hostvars[other]
        theirs = hv.get("dsrlb_vrrp")
        if other == host or not isinstance(theirs, Mapping) or str(theirs.get("vrid")) != str(vrrp["vrid"]):
            continue
        peers.add(_peer_address(other, hv, theirs.get("network", vrrp.get("network"))))
        if family == "ipv6" and "peers" not in vrrp:
            links.add(_link_local(other, hv))
    clash = sorted(peers & own)
    if clash:
        message = f"vrrp: another balancer of vrid {vrrp['vrid']} has this one's address {', '.join(clash)}"
        raise AnsibleFilterError(message)
    reals = sorted(peers, key=_address_key)
    if "peers" in vrrp:
        return dict(vrrp), reals
    if family == "ipv6":
        return dict(vrrp, peers=sorted(links, key=lambda a: int(ipaddress.IPv6Address(a)))), reals
    return dict(vrrp, peers=reals), reals


def _address_key(address: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in address.split("."))
    except ValueError:
        return (1 << 32,)


def balancer_config(
    servers: t.Any,
    networks: t.Any,
    target_hosts: Sequence[str],
    hostvars: Mapping[str, t.Any],
    real: str | None = None,
    vrrp: t.Any = None,
    balancer_hosts: Sequence[str] | None = None,
    host: str | None = None,
    sync: bool = False,
    real6: str | None = None,
) -> dict[str, t.Any]:
    """The networks, servers, targets and vrrp options of the dsrlb.fleet.balancer_config module; with
    `sync`, the VRRP network's `syncpeer` is the pair's other balancer (bngsync)."""
    networks = _items(networks, "networks", ("id", "addr"))
    servers = _items(servers, "servers", ("id", "vip", "port"))
    served = _targets(servers, target_hosts, hostvars)
    nets = [_network(net, real, real6) for net in networks]
    pair, others = _vrrp(vrrp, balancer_hosts or (), host, hostvars, {str(net["real"]) for net in nets})
    if sync and pair is not None and others:
        if len(others) > 1:
            raise AnsibleFilterError(
                f"dsrlb_sync: bngsync pairs one master with one backup, but vrid {pair['vrid']} has "
                f"{len(others) + 1} balancers (peers {', '.join(others)}): set dsrlb_sync: "
                "false, or make the virtual router a pair"
            )
        for net in nets:
            if str(net["id"]) == str(pair.get("network")):
                net["syncpeer"] = others[0]
    return {
        "networks": nets,
        "servers": [_server(server, targets) for server, targets in zip(servers, served, strict=True)],
        "targets": [target for targets in served for target in targets],
        "vrrp": pair,
    }


class FilterModule:
    """Ansible's entry point: filter name -> function."""

    def filters(self) -> dict[str, t.Callable]:
        return {"balancer_config": balancer_config}
