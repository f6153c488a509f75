"""What the data plane forwards by, as a pure function of the config and the runtime state.

`build` turns (config, each target's health and admin state, the MACs learned so far, the HA role)
into one immutable ForwardingTable. It does no I/O and keeps no state of its own, so every rule of
who gets traffic (a draining target keeps its connections but takes no new ones, a disabled or
unresolved one gets nothing, a VRRP backup forwards nothing) is tested here without sockets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from dsrlb.config.model import Config, Network, Target
from dsrlb.dataplane.forwarder import ForwardingTable, Service, ServiceState
from dsrlb.maglev import table_size
from dsrlb.selection import Candidate, Selector
from dsrlb.vocabulary import PROTOCOLS

ADMIN_STATES = ("enabled", "disabled", "draining")  # set by operators; "drained" is derived


@dataclass(frozen=True)
class TargetStatus:
    """What the table needs to know of a serving target beyond its config."""

    up: bool = True
    admin: str = "enabled"


@dataclass(frozen=True)
class Built:
    table: ForwardingTable
    selectors: dict[tuple, Selector]  # reused by the next build while candidates are unchanged


def serving_targets(config: Config) -> dict[int, Target]:
    """Targets that are registered, enabled and listed by a serving virtual server."""
    return {
        tid: config.targets[tid]
        for server in config.servers.values()
        if server.serving
        for tid in server.targets
        if config.targets[tid].serving
    }


def addresses(config: Config, network: Network) -> list[IPv4Address | IPv6Address]:
    """The addresses this balancer answers ARP (IPv6: neighbour solicitations) and ping for while it owns
    them: VIPs, `virt` and `virt6`."""
    found: list[IPv4Address | IPv6Address] = [s.ipaddr for s in config.servers.values() if s.serving]
    found += [a for a in (network.virt, network.virt6) if a is not None]
    return found


def servable(
    config: Config, status: Mapping[int, TargetStatus], macs: Mapping[bytes, bytes]
) -> dict[IPv4Address, bool]:
    """Per VIP of a serving virtual server: whether one of its targets could take a new connection now
    (up, enabled, MAC known). HA mode bgp announces a VIP only then."""
    found: dict[IPv4Address, bool] = {}
    for server in config.servers.values():
        if not server.serving:
            continue
        usable = False
        for tid in server.targets:
            st = status.get(tid)
            if (
                st is not None
                and st.up
                and st.admin == "enabled"
                and config.targets[tid].ipaddr.packed in macs
            ):
                usable = True
        found[server.ipaddr] = found.get(server.ipaddr, False) or usable
    return found


def build(
    config: Config,
    network: Network,
    status: Mapping[int, TargetStatus],
    macs: Mapping[bytes, bytes],
    own_mac: bytes,
    states: Mapping[int, ServiceState],
    *,
    forwarding: bool = True,
    answering: bool = True,
    arp: bool = True,
    selectors: Mapping[tuple, Selector] | None = None,
    synced: Mapping[int, dict[bytes, tuple[int, float]]] | None = None,
) -> Built:
    """The forwarding table for this moment (`arp` False: answer ping but not ARP, HA mode bgp).

    `status` has an entry per serving target (a target without one is not served), `macs` maps a
    target's packed IPv4 address to its MAC, `states` holds each serving server's ServiceState (sessions
    and counters outlive tables). A selector from `selectors` is reused when a server's method, bucket
    table size, hash seed and candidates are unchanged, so round-robin positions survive unrelated
    rebuilds. The table size follows the targets the server lists, not the healthy ones: a target going
    down moves only its own clients. `synced` holds, per server id, the peer's sessions bngsync handed
    over (the same dict in every build, which the forwarder consumes).
    """
    previous = selectors or {}
    services: dict[tuple[bytes, int, int], Service] = {}
    built: dict[tuple, Selector] = {}
    for server in config.servers.values():
        if not server.serving:
            continue
        active: list[int] = []
        forward: dict[int, bytes] = {}
        candidates: list[Candidate] = []
        for tid in server.targets:
            target = config.targets[tid]
            st = status.get(tid)
            mac = macs.get(target.ipaddr.packed)
            if st is None or mac is None or not st.up or st.admin == "disabled":
                continue
            forward[tid] = mac + own_mac
            if st.admin == "enabled":
                active.append(tid)
                candidates.append(
                    Candidate(tid, f"{target.ipaddr}:{server.port}", target.weight, target.backup)
                )
        size, seed = table_size(len(server.targets)), config.settings.hashseed
        key = (server.method, size, seed, tuple(candidates))
        selector = built.get(key) or previous.get(key) or Selector(server.method, candidates, size, seed)
        built[key] = selector
        if not forwarding:
            continue  # a VRRP backup stays silent
        services[(server.ipaddr.packed, PROTOCOLS[server.protocol], server.port)] = Service(
            selector,
            frozenset(active),
            forward,
            server.session,
            states[server.id],
            (synced or {}).get(server.id, {}),
        )
    answer = frozenset(a.packed for a in addresses(config, network)) if answering else frozenset()
    neighbors = frozenset(t.ipaddr.packed for t in serving_targets(config).values())
    settings = config.settings
    table = ForwardingTable(
        services,
        answer,
        neighbors,
        settings.drainidle,
        flows=settings.flows,
        sessions=settings.sessions,
        embryonic=settings.embryonic,
        arp=None if arp else frozenset(),
    )
    return Built(table, built)
