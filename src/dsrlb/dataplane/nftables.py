"""The balancer kernel's netdev ingress table on the data interface, the only one dsrlb writes.

In both access modes it drops traffic to the VIPs and `virt`, and ARP requests and IPv6 Neighbor
Solicitations for them, before the balancer's own IP stack sees it (the daemon's packet socket sees
every frame before the ingress hook, so ARP, NDP, ping and, with `access raw`, the forwarded traffic
still reach it). With `access nftables` it also forwards each virtual server's traffic in the kernel,
as the Python forwarder would:

- a flow map (`set flows` entries, shared by all IPv4 virtual servers) keeps a connection on its
  target while that target is up and enabled, also while it drains;
- a new flow takes the bucket `jhash(ip saddr) mod N` (`jhash(ip6 saddr)`: the 16 address bytes) of
  the server's bucket map, the same function and table the Python forwarder uses (`dsrlb.jhash`,
  `Selector.buckets`), and is recorded with the `embryonic` timeout; a later packet refreshes it with
  the server's `session` timeout;
- when the flow map is full the same bucket choice forwards the packet unrecorded (counted), so a
  full map never drops or misroutes a packet.

- a packet whose recorded target is out (down, disabled) deletes the entry and is picked again, so
  the entry names where the flow goes now (an `update` never changes a target) and the flow stays
  there when the old target comes back.

An IPv6 virtual server has a flow map of its own (`set flows` entries each), keyed by the low 96 bits
of the client address and its port (KEY6): nft 1.0.6 (Debian 12) aborts on a map `update`/`delete` whose
key is longer than 16 bytes (netlink_linearize.c: "Assertion `dreg < ctx->reg_low' failed"), so the
IPv4 key's IPv6 counterpart (36 bytes) cannot be written. Two clients with the same low 96 bits and the
same port at once share one entry: both stay on one live target, as a flow must.

Every change is one `nft -f -` transaction, so the kernel never forwards by half a table.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from dsrlb.dataplane.forwarder import ForwardingTable

log = logging.getLogger("dsrlb.nftables")

Flow = tuple[str, int, str, int, str, int]  # client, its port, VIP, port, target MAC, seconds to expiry
KEY = "ip saddr . th sport . ip daddr . th dport"  # a flow: what the Python forwarder keys flows by
KEY6 = "@nh,96,96 . th sport"  # an IPv6 flow of one server: the client's low 96 bits (see above)
LOW96 = (1 << 96) - 1
PROTOCOL_NAMES = {6: "tcp", 17: "udp"}
FLOW_TYPE = "ipv4_addr . inet_service . ipv4_addr . inet_service : ether_addr"
FLOW_BATCH = 500  # flow map entries per transaction of `add_flows`


class NftError(Exception):
    """nft refused a transaction or a listing (message is nft's)."""


@dataclass(frozen=True)
class KernelService:
    """One virtual server as the kernel forwards it."""

    name: str  # nft identifier, from address, protocol and port (stable across reloads)
    vip: str
    family: int  # 4 | 6
    protocol: str  # "tcp" | "udp"
    port: int
    seed: int
    buckets: tuple[str | None, ...]  # target MAC per bucket (None: no target takes new flows)
    live: frozenset[str]  # MACs whose recorded flows are followed: enabled and draining targets
    targets: tuple[tuple[int, str], ...]  # (target id, MAC) of every forwarded-to target: its counter
    timeout: int  # seconds a recorded flow lives without a packet (the server's `session`)


@dataclass(frozen=True)
class Ruleset:
    """Everything the table holds but the flow map's entries; a pure function of the forwarding table."""

    ifname: str
    own: str  # our MAC: the frames we forward carry it as source
    addresses: tuple[str, ...]  # IPv4 VIPs and virt: never for this host's own stack
    addresses6: tuple[str, ...]  # the IPv6 ones
    services: tuple[KernelService, ...]  # empty with access raw, while a VRRP backup, or before ready
    flows: int  # capacity of the flow map (of each IPv6 server's)
    embryonic: int  # seconds a flow that has seen one packet lives


def service_name(vip: str, protocol: str, port: int) -> str:
    """A virtual server's nft identifier, stable across reloads."""
    return f"s_{vip.replace('.', '_').replace(':', '_')}_{protocol}_{port}"


def ruleset(
    table: ForwardingTable,
    ifname: str,
    own: bytes,
    addresses: Sequence[IPv4Address | IPv6Address],
    fast: bool,
) -> Ruleset:
    """The table for this moment: `fast` (access nftables) forwards `table`'s services in the kernel."""
    services = []
    for (vip, proto, port), svc in sorted(table.services.items()) if fast else ():
        buckets = svc.selector.buckets()  # type: ignore[attr-defined]  # the stateless methods only
        macs = {t: head[:6].hex(":") for t, head in svc.forward.items()}
        counted = {mac: t for t, mac in sorted(macs.items(), reverse=True)}  # targets sharing a host: one
        address = ip_address(vip)
        services.append(
            KernelService(
                name=service_name(str(address), PROTOCOL_NAMES[proto], port),
                vip=str(address),
                family=address.version,
                protocol=PROTOCOL_NAMES[proto],
                port=port,
                seed=svc.selector.seed,  # type: ignore[attr-defined]
                buckets=tuple(None if t is None else macs[t] for t in buckets),
                live=frozenset(macs.values()),
                targets=tuple(sorted((t, mac) for mac, t in counted.items())),
                timeout=max(1, round(svc.timeout)),
            )
        )
    return Ruleset(
        ifname,
        own.hex(":"),
        tuple(sorted(str(a) for a in addresses if a.version == 4)),
        tuple(sorted(str(a) for a in addresses if a.version == 6)),
        tuple(services),
        table.flows,
        max(1, round(table.embryonic)),
    )


def transaction(new: Ruleset, old: Ruleset | None, table: str) -> str:
    """The nft script that turns `old` (None: nothing of ours is there) into `new`, keeping the flow map's
    entries (unless its capacity changes)."""
    t = f"netdev {table}"
    out = [f"add table {t}"]
    old_services = {s.name: s for s in old.services} if old else {}
    # 1. Nothing may refer to what is replaced or deleted: empty the chains first.
    if old:
        out.append(f"flush chain {t} ingress")
        out += [f"flush chain {t} {name}" for name in old_services]
    resized = old is not None and old.flows != new.flows
    flows_def = f"{{ type {FLOW_TYPE}; size {new.flows}; flags dynamic,timeout; timeout 3600s; }}"
    if resized:
        out.append(f"delete map {t} flows")
        out += [f"delete map {t} f_{s.name}" for s in old_services.values() if s.family == 6]
    out.append(f"add map {t} flows {flows_def}")
    out.append(f"add set {t} addresses {{ type ipv4_addr; }}")
    out.append(f"add set {t} addresses6 {{ type ipv6_addr; }}")
    # the same addresses as 128-bit numbers: nft 1.0.6 has no `icmpv6 taraddr`, and the raw payload that
    # reads the target of a Neighbor Solicitation only matches a set of integers
    out.append(f"add set {t} solicited6 {{ typeof @th,64,128; }}")
    out += [f"flush set {t} {name}" for name in ("addresses", "addresses6", "solicited6")]
    if new.addresses:
        out.append(f"add element {t} addresses {{ {', '.join(new.addresses)} }}")
    if new.addresses6:
        out.append(f"add element {t} addresses6 {{ {', '.join(new.addresses6)} }}")
        numbers = ", ".join(f"{int(IPv6Address(a)):#034x}" for a in new.addresses6)
        out.append(f"add element {t} solicited6 {{ {numbers} }}")
    out.append(f"add map {t} services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}")
    out.append(f"add map {t} services6 {{ type ipv6_addr . inet_proto . inet_service : verdict; }}")
    out += [f"flush map {t} services", f"flush map {t} services6"]
    out.append(f"add counter {t} overflow")
    for s in new.services:
        out += _service(t, s, new)
    for family, vmap in ((4, "services"), (6, "services6")):
        elements = [
            f"{s.vip} . {s.protocol} . {s.port} : goto {s.name}" for s in new.services if s.family == family
        ]
        if elements:
            out.append(f"add element {t} {vmap} {{ {', '.join(elements)} }}")
    hook = f'type filter hook ingress device "{new.ifname}" priority -500; policy accept;'
    out.append(f"add chain {t} ingress {{ {hook} }}")
    # fragments stay with the daemon, whose packet socket sees them anyway
    if any(s.family == 4 for s in new.services):
        out.append(
            f"add rule {t} ingress ether daddr {new.own} ip frag-off & 0x3fff == 0 "
            "ip daddr . meta l4proto . th dport vmap @services"
        )
    if any(s.family == 6 for s in new.services):
        out.append(
            f"add rule {t} ingress ether daddr {new.own} exthdr frag missing "
            "ip6 daddr . meta l4proto . th dport vmap @services6"
        )
    out.append(f"add rule {t} ingress ip daddr @addresses drop")
    out.append(f"add rule {t} ingress ip6 daddr @addresses6 drop")
    # ARP and Neighbor Solicitations for them too: only the daemon decides who answers for a VIP. With HA
    # mode bgp the VIPs are local addresses of the balancer (on the announcement device), which its kernel
    # answers ARP for on every interface (arp_ignore 0); Linux answers a solicitation only for addresses of
    # the interface it came in on, so that drop matters for a VIP on the data interface itself. A
    # solicitation goes to a multicast address: the target field (ICMPv6 bytes 8-23) names the VIP.
    out.append(f"add rule {t} ingress arp operation request arp daddr ip @addresses drop")
    out.append(f"add rule {t} ingress icmpv6 type nd-neighbor-solicit @th,64,128 @solicited6 drop")
    # 2. Delete what the new ruleset no longer has (nothing refers to it any more).
    names = {s.name for s in new.services}
    for name, s in old_services.items():
        if name not in names:
            out += [f"delete chain {t} {name}", f"delete map {t} b_{name}", f"delete set {t} l_{name}"]
            out += [f"delete map {t} k_{name}", f"delete counter {t} n_{name}"]
            out += [f"delete map {t} f_{name}"] if s.family == 6 and not resized else []
    for name, s in old_services.items():
        kept = {tid for tid, _ in next((n.targets for n in new.services if n.name == name), ())}
        out += [f"delete counter {t} c_{name}_{tid}" for tid, _ in s.targets if tid not in kept]
    return "\n".join(out) + "\n"


def _service(t: str, s: KernelService, rs: Ruleset) -> list[str]:
    """A virtual server's maps, counters and chain (created or refilled)."""
    name = s.name
    out = []
    if s.family == 6:
        flows = f"{{ typeof {KEY6} : ether daddr; size {rs.flows}; flags dynamic,timeout; timeout 3600s; }}"
        out.append(f"add map {t} f_{name} {flows}")
    out += [
        f"add map {t} b_{name} {{ typeof numgen inc mod 2 : ether daddr; }}",
        f"flush map {t} b_{name}",
        f"add set {t} l_{name} {{ type ether_addr; }}",
        f"flush set {t} l_{name}",
        f"add map {t} k_{name} {{ type ether_addr : counter; }}",
        f"flush map {t} k_{name}",
        f"add counter {t} n_{name}",
        f"add chain {t} {name}",
    ]
    out += [f"add counter {t} c_{name}_{tid}" for tid, _ in s.targets]
    filled = [f"{i} : {mac}" for i, mac in enumerate(s.buckets) if mac is not None]
    out += [f"add element {t} b_{name} {{ {', '.join(chunk)} }}" for chunk in _chunks(filled, 1000)]
    if s.live:
        out.append(f"add element {t} l_{name} {{ {', '.join(sorted(s.live))} }}")
    if s.targets:
        counters = ", ".join(f'{mac} : "c_{name}_{tid}"' for tid, mac in s.targets)
        out.append(f"add element {t} k_{name} {{ {counters} }}")
    key, flows, ip = (KEY6, f"@f_{name}", "ip6") if s.family == 6 else (KEY, "@flows", "ip")
    send = f'counter name ether daddr map @k_{name} ether saddr set {rs.own} fwd to "{rs.ifname}"'
    follow = f"ether daddr set {key} map {flows} ether daddr @l_{name}"
    pick = f"ether daddr set jhash {ip} saddr mod {max(1, len(s.buckets))} seed {s.seed:#x} map @b_{name}"
    keep, young = (
        f"update {flows} {{ {key} timeout {n}s : ether daddr }}" for n in (s.timeout, rs.embryonic)
    )
    if s.protocol == "tcp":  # a repeated SYN keeps its flow embryonic
        rules = [f"tcp flags & (syn | ack) != syn {follow} {keep} {send}", f"{follow} {young} {send}"]
    else:
        rules = [f"{follow} {keep} {send}"]
    # A flow whose recorded target is out (disabled, down): its entry goes, so the pick below records where
    # it goes now (an `update` never changes a target) and it stays there when the old target is back.
    stale = f"ether daddr set {key} map {flows} ether daddr != @l_{name}"
    rules.append(f"{stale} delete {flows} {{ {key} : ether daddr }}")
    rules.append(f"{pick} {young} {send}")
    rules.append(f'{pick} counter name "overflow" {send}')  # the flow map is full
    rules.append(f'counter name "n_{name}" drop')  # no target takes new flows
    return out + [f"add rule {t} {name} {rule}" for rule in rules]


def flow_client(address: str | IPv4Address | IPv6Address) -> str:
    """A client as the flow maps know it: an IPv6 one by the low 96 bits of its address (KEY6)."""
    ip = ip_address(address)
    return str(IPv6Address(int(ip) & LOW96)) if ip.version == 6 else str(ip)


def _chunks(items: list[str], n: int) -> list[list[str]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


class KernelTable:
    """Writes and watches the table; the daemon calls it from its event loop only."""

    def __init__(self, ifname: str, nft: str | None = None) -> None:
        self.ifname = ifname
        self.name = f"dsrlb_{ifname}".replace(".", "_").replace("-", "_")
        self.nft = nft or shutil.which("nft")
        self.installed: Ruleset | None = None
        self.restored = 0  # times the table was found gone (say, `flush ruleset`) and put back
        self.rebuilt = 0  # times a change was refused and the table built anew instead
        self.counters: dict[str, list[int]] = {}  # counter name -> [packets, bytes] since start

    def supported(self) -> str | None:
        """Why `access nftables` cannot run here (None: it can): nft and netdev `fwd` in the kernel, for
        both families (IPv6: the hash, a flow map update and the solicitation target)."""
        if self.nft is None:
            return "nft not found (install the nftables package)"
        buckets = "{ 0 : 02:00:00:00:00:01, 1 : 02:00:00:00:00:02 }"
        probe = (
            "table netdev dsrlb_probe {\n"
            f"  map f {{ typeof {KEY6} : ether daddr; size 2; flags dynamic,timeout; }}\n"
            "  set n { typeof @th,64,128; }\n"
            f'  chain c {{ type filter hook ingress device "{self.ifname}" priority 0; policy accept;\n'
            f'    ether daddr set jhash ip saddr mod 2 seed 1 map {buckets} fwd to "{self.ifname}"\n'
            f"    ether daddr set jhash ip6 saddr mod 2 seed 1 map {buckets} update @f {{ {KEY6} timeout 1s :"
            f' ether daddr }} fwd to "{self.ifname}"\n'
            "    icmpv6 type nd-neighbor-solicit @th,64,128 @n drop\n"
            "  }\n}\n"
        )
        proc = subprocess.run([self.nft, "-c", "-f", "-"], input=probe, capture_output=True, text=True)
        return proc.stderr.strip().splitlines()[0] if proc.returncode else None

    def apply(self, new: Ruleset) -> None:
        """Install `new` in one transaction. When nft refuses the change, the table is built anew in one
        transaction (recorded flows are lost; new ones follow the same hash); NftError if that fails too,
        and the old table keeps forwarding."""
        if self.installed is not None:
            try:
                self._run(transaction(new, self.installed, self.name))
                self.installed = new
                return
            except NftError as err:
                log.warning("nftables: building table %s anew (its flows are forgotten): %s", self.name, err)
                self.rebuilt += 1
        # the first time, the table may be one a killed daemon left: not ours to patch
        self._run(
            f"add table netdev {self.name}\ndelete table netdev {self.name}\n"
            + transaction(new, None, self.name)
        )
        self.installed = new

    def refresh(self) -> bool:
        """Read (and zero) the kernel's counters into `counters`; put the table back when it is gone.
        True when it had to be restored."""
        try:
            items = self._json("reset", "counters", "table", "netdev", self.name)
        except NftError:
            if self.installed is None:
                raise
            log.warning("the nftables table %s is gone (flushed?): restoring it", self.name)
            new, self.installed = self.installed, None
            self.apply(new)
            self.restored += 1
            return True
        for item in items:
            c = item.get("counter")
            if c:
                total = self.counters.setdefault(c["name"], [0, 0])
                total[0] += c["packets"]
                total[1] += c["bytes"]
        return False

    def flows(self) -> list[Flow]:
        """The flow maps' entries: (client, sport, vip, port, target MAC, seconds to expiry). An IPv6
        client is known by the low 96 bits of its address only (KEY6): its first 32 bits read as zero."""
        out = []
        for item in self._json("list", "map", "netdev", self.name, "flows"):
            for key, mac in item.get("map", {}).get("elem", []):
                elem = key.get("elem", {})
                src, sport, dst, dport = elem.get("val", key)["concat"]
                out.append((src, sport, dst, dport, mac, elem.get("expires", 0)))
        for s in self.installed.services if self.installed else ():
            if s.family != 6:
                continue
            for item in self._json("list", "map", "netdev", self.name, f"f_{s.name}"):
                for key, mac in item.get("map", {}).get("elem", []):
                    elem = key.get("elem", {})
                    low, sport = elem.get("val", key)["concat"]  # nft lists a large number as a string
                    client = flow_client(IPv6Address(int(low, 0) if isinstance(low, str) else low))
                    out.append((client, sport, s.vip, s.port, mac, elem.get("expires", 0)))
        return out

    def add_flows(self, flows: list[Flow]) -> int:
        """Record flows another node followed (bngsync), each with its own timeout, in transactions of
        FLOW_BATCH; an entry that exists keeps its target. Returns how many could not be added (a full
        map refuses a whole transaction)."""
        refused = 0
        for chunk in _chunks(flows, FLOW_BATCH):
            elements = ", ".join(
                f"{c} . {sp} . {v} . {dp} timeout {max(1, ttl)}s : {mac}" for c, sp, v, dp, mac, ttl in chunk
            )
            try:
                self._run(f"add element netdev {self.name} flows {{ {elements} }}\n")
            except NftError as err:
                log.warning("nftables: %d synced flows not recorded: %s", len(chunk), err)
                refused += len(chunk)
        return refused

    def remove(self) -> None:
        """Delete the table (clean stop): the kernel forwards and drops nothing for us any more."""
        if self.installed is not None:
            try:
                self._run(f"delete table netdev {self.name}\n")
            except NftError as err:
                log.warning("cannot remove the nftables table %s: %s", self.name, err)
            self.installed = None

    def check(self, script: str) -> None:
        """Have the kernel check a transaction without committing it (nft -c)."""
        self._run(script, "-c")

    def _run(self, script: str, *options: str) -> None:
        if self.nft is None:
            raise NftError("nft not found")
        proc = subprocess.run([self.nft, *options, "-f", "-"], input=script, capture_output=True, text=True)
        if proc.returncode:
            raise NftError(proc.stderr.strip())

    def _json(self, *args: str) -> list[dict]:
        if self.nft is None:
            raise NftError("nft not found")
        proc = subprocess.run([self.nft, "-j", *args], capture_output=True, text=True)
        if proc.returncode:
            raise NftError(proc.stderr.strip())
        return json.loads(proc.stdout or '{"nftables": []}')["nftables"]
