"""BIRD 2 configuration text for HA mode bgp: the balancers' speakers and an ECMP router.

A balancer's BIRD announces the /32 addresses the dsrlb daemon puts on its TUN device (`protocol direct`
on that device, nothing else is exported); the router's BIRD learns them from every balancer and, with
`merge paths on`, installs one multipath route per VIP in its kernel. Routes merge only when BGP sees
them as equal (same AS path length, local preference, origin, MED), so all balancers share one ASN.
Check the text with `bird -p -c FILE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """A BGP neighbour: its address and ASN; `name` becomes the BIRD protocol name (a symbol that is no
    BIRD keyword: `lb1`, `upstream`, not `router`)."""

    name: str
    address: str
    asn: int


@dataclass(frozen=True)
class Timers:
    """BGP hold and keepalive seconds; BFD (when on) detects a dead peer in interval x multiplier ms."""

    hold: int = 3
    keepalive: int = 1
    bfd: bool = False
    bfd_interval_ms: int = 100
    bfd_multiplier: int = 3


def _head(router_id: str, timers: Timers) -> list[str]:
    lines = [
        f"router id {router_id};",
        "",
        "protocol device {",
        "    scan time 10;",
        "}",
    ]
    if timers.bfd:
        ms = timers.bfd_interval_ms
        lines += [
            "",
            "protocol bfd {",
            '    interface "*" {',
            f"        min rx interval {ms} ms;",
            f"        min tx interval {ms} ms;",
            f"        multiplier {timers.bfd_multiplier};",
            "    };",
            "}",
        ]
    return lines


def _bgp(local: str, asn: int, peer: Peer, timers: Timers, channel: str) -> list[str]:
    return [
        "",
        f"protocol bgp {peer.name} {{",
        f"    local {local} as {asn};",
        f"    neighbor {peer.address} as {peer.asn};",
        f"    hold time {timers.hold};",
        f"    keepalive time {timers.keepalive};",
        f"    connect retry time {max(1, timers.keepalive)};",
        *(["    bfd on;"] if timers.bfd else []),
        "    ipv4 {",
        *(f"        {line}" for line in channel.splitlines()),
        "    };",
        "}",
    ]


def router(
    router_id: str, asn: int, balancers: Sequence[Peer], timers: Timers = Timers(), paths: int = 16
) -> str:
    """The upstream router: one BGP session per balancer, routes imported, nothing exported to them,
    and equal routes merged into one multipath kernel route (at most `paths` next hops)."""
    lines = _head(router_id, timers)
    lines += [
        "",
        "protocol kernel {",
        "    ipv4 {",
        "        import none;",
        "        export all;",
        "    };",
        f"    merge paths on limit {paths};",
        "}",
    ]
    for peer in balancers:
        lines += _bgp(router_id, asn, peer, timers, "import all;\nexport none;")
    return "\n".join(lines) + "\n"


def balancer(
    router_id: str,
    asn: int,
    routers: Sequence[Peer],
    device: str = "dsrlb0",
    timers: Timers = Timers(),
) -> str:
    """A balancer: announces the /32 addresses on the daemon's TUN device `device` to each router, and
    nothing else; learns nothing. `router_id` is the balancer's `real` address (also the BGP source)."""
    lines = _head(router_id, timers)
    lines += [
        "",
        "protocol direct dsrlb {",
        "    ipv4;",
        f'    interface "{device}";',
        "}",
        "",
        "filter dsrlb_vips {",
        f'    if source = RTS_DEVICE && ifname = "{device}" && net.len = 32 then accept;',
        "    reject;",
        "}",
    ]
    for peer in routers:
        lines += _bgp(router_id, asn, peer, timers, "import none;\nexport filter dsrlb_vips;")
    return "\n".join(lines) + "\n"
