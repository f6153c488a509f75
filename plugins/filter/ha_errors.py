# Copyright: (c) 2026, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The balancer role's HA settings (dsrlb_ha, dsrlb_bgp) checked across the inventory, for the preflight.

In Python rather than in the preflight's Jinja so that the checks can be read and unit-tested; every
message names the inventory key to fix. The documentation is in ha_errors.yml next to this file.
"""

from __future__ import annotations

import ipaddress
import re
import typing as t
from collections.abc import Mapping, Sequence

HA_MODES = ("vrrp", "bgp")
ASN_MIN = 1
ASN_MAX = 4294967295  # 4-byte AS numbers (RFC 6793)
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _asn(value: t.Any, key: str) -> list[str]:
    try:
        number = int(str(value)) if not isinstance(value, (bool, float)) else None
    except ValueError:
        number = None
    if number is None:
        return [f"{key}: {value!r} is not an AS number ({ASN_MIN}..{ASN_MAX})"]
    if not ASN_MIN <= number <= ASN_MAX:
        return [f"{key}: {value} is out of range {ASN_MIN}..{ASN_MAX}"]
    return []


def _ipv4(value: t.Any, key: str) -> list[str]:
    try:
        ipaddress.IPv4Address(str(value))
    except ValueError:
        return [f"{key}: {value!r} is not an IPv4 address"]
    return []


def _timers(bgp: Mapping[str, t.Any]) -> list[str]:
    """BGP's rules: a hold time of 0 (no keepalives) or 3..65535 s, keepalives more often than it."""
    errors = []
    hold, keepalive = bgp.get("hold"), bgp.get("keepalive")
    if hold is not None and (not str(hold).isdigit() or not (int(hold) == 0 or 3 <= int(hold) <= 65535)):
        errors.append(f"dsrlb_bgp.hold: {hold} must be 0 or 3..65535 (seconds)")
    elif keepalive is not None and (not str(keepalive).isdigit() or int(keepalive) < 1):
        errors.append(f"dsrlb_bgp.keepalive: {keepalive} must be at least 1 (second)")
    elif hold is not None and keepalive is not None and int(hold) and int(keepalive) >= int(hold):
        errors.append(f"dsrlb_bgp.keepalive: {keepalive} must be less than dsrlb_bgp.hold ({hold})")
    return errors


def _bgp(bgp: t.Any) -> list[str]:
    if not isinstance(bgp, Mapping):
        return [
            "dsrlb_bgp: dsrlb_ha is bgp, so dsrlb_bgp must give local_asn and peers "
            "(a list of {address, asn}), not " + repr(bgp)
        ]
    errors = []
    if "local_asn" not in bgp or bgp["local_asn"] is None:
        errors.append("dsrlb_bgp.local_asn: missing (this balancer's AS number)")
    else:
        errors += _asn(bgp["local_asn"], "dsrlb_bgp.local_asn")
    peers = bgp.get("peers")
    if not isinstance(peers, Sequence) or isinstance(peers, str) or not peers:
        errors.append("dsrlb_bgp.peers: a non-empty list of {address, asn} is needed (the upstream routers)")
        peers = []
    seen: dict[str, int] = {}
    for index, peer in enumerate(peers):
        key = f"dsrlb_bgp.peers[{index}]"
        if not isinstance(peer, Mapping):
            errors.append(f"{key}: must be a mapping {{address, asn}}, not {peer!r}")
            continue
        for field in ("address", "asn"):
            if peer.get(field) is None:
                errors.append(f"{key}.{field}: missing")
        if peer.get("address") is not None:
            found = _ipv4(peer["address"], f"{key}.address")
            errors += found
            if not found and str(peer["address"]) in seen:
                errors.append(
                    f"{key}.address: {peer['address']} is also dsrlb_bgp.peers[{seen[str(peer['address'])]}]"
                )
            seen.setdefault(str(peer["address"]), index)
        if peer.get("asn") is not None:
            errors += _asn(peer["asn"], f"{key}.asn")
    errors += _timers(bgp)
    device = bgp.get("device")
    if device is not None and not _IFNAME.match(str(device)):
        errors.append(f"dsrlb_bgp.device: {device!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return errors


def _ipv6_vips(servers: t.Any) -> list[str]:
    """BIRD's config (templates/bird.conf.j2) has an IPv4 channel only, so an IPv6 VIP would never be
    announced: the router would send its clients nowhere."""
    if not isinstance(servers, Sequence) or isinstance(servers, str):
        return []
    return [
        f"dsrlb_servers[{index}].vip: {server['vip']} is IPv6, but HA mode bgp announces IPv4 VIPs only; "
        "serve it from a VRRP pair (dsrlb_ha: vrrp)"
        for index, server in enumerate(servers)
        if isinstance(server, Mapping) and ":" in str(server.get("vip", ""))
    ]


def ha_errors(
    ha: t.Any,
    bgp: t.Any = None,
    vrrp: t.Any = None,
    host: str | None = None,
    balancer_hosts: Sequence[str] = (),
    hostvars: Mapping[str, t.Any] | None = None,
    servers: t.Any = (),
) -> list[str]:
    """Messages naming the inventory key for a balancer's HA settings; [] when they are sound."""
    if ha not in HA_MODES:
        return [f"dsrlb_ha: {ha!r} is not one of {', '.join(HA_MODES)}"]
    errors = []
    if ha == "bgp":
        errors += _bgp(bgp)
        if vrrp:
            errors.append(
                "dsrlb_vrrp: set while dsrlb_ha is bgp; a balancer runs one HA mode (set it to null)"
            )
        errors += _ipv6_vips(servers)
    others = {}
    for name in balancer_hosts:
        if name == host:
            continue
        mode = (hostvars or {}).get(name, {}).get("dsrlb_ha", "vrrp")
        if mode != ha:
            others.setdefault(str(mode), []).append(name)
    if others:
        listed = "; ".join(f"{mode}: {', '.join(names)}" for mode, names in sorted(others.items()))
        errors.append(
            f"dsrlb_ha: {ha} here, but other balancers of the group run another HA mode ({listed}); "
            "every balancer of dsrlb_balancer_group must use the same dsrlb_ha"
        )
    return errors


class FilterModule:
    """Ansible's entry point: filter name -> function."""

    def filters(self) -> dict[str, t.Callable]:
        return {"ha_errors": ha_errors}
