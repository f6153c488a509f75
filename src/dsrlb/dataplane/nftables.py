"""The balancer kernel's netdev ingress table on the data interface, the only one dsrlb writes.

In both access modes it drops traffic to the VIPs and `virt`, and ARP requests for them, before the
balancer's own IP stack sees it (the daemon's packet socket sees every frame before the ingress hook,
so ARP, ping and, with `access raw`, the forwarded traffic still reach it). With `access nftables` it
also forwards each virtual server's traffic in the kernel, as the Python forwarder would:

- a flow map (`set flows` entries, shared by all virtual servers) keeps a connection on its target
  while that target is up and enabled, also while it drains;
- a new flow takes the bucket `jhash(ip saddr) mod N` of the server's bucket map, the same function
  and table the Python forwarder uses (`dsrlb.jhash`, `Selector.buckets`), and is recorded with the
  `embryonic` timeout; a later packet refreshes it with the server's `session` timeout;
- when the flow map is full the same bucket choice forwards the packet unrecorded (counted), so a
  full map never drops or misroutes a packet.

- a packet whose recorded target is out (down, disabled) deletes the entry and is picked again, so
  the entry names where the flow goes now (an `update` never changes a target) and the flow stays
  there when the old target comes back.

Every change is one `nft -f -` transaction, so the kernel never forwards by half a table.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address

from dsrlb.dataplane.forwarder import ForwardingTable

log = logging.getLogger("dsrlb.nftables")

Flow = tuple[str, int, str, int, str, int]  # client, its port, VIP, port, target MAC, seconds to expiry
KEY = "ip saddr . th sport . ip daddr . th dport"  # a flow: what the Python forwarder keys flows by
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
    addresses: tuple[str, ...]  # VIPs and virt: never for this host's own stack
    services: tuple[KernelService, ...]  # empty with access raw, while a VRRP backup, or before ready
    flows: int  # capacity of the flow map
    embryonic: int  # seconds a flow that has seen one packet lives


def service_name(vip: str, protocol: str, port: int) -> str:
    """A virtual server's nft identifier, stable across reloads."""
    return f"s_{vip.replace('.', '_')}_{protocol}_{port}"


def ruleset(
    table: ForwardingTable, ifname: str, own: bytes, addresses: list[IPv4Address], fast: bool
) -> Ruleset:
    """The table for this moment: `fast` (access nftables) forwards `table`'s services in the kernel."""
    services = []
    for (vip, proto, port), svc in sorted(table.services.items()) if fast else ():
        buckets = svc.selector.buckets()  # type: ignore[attr-defined]  # the stateless methods only
        macs = {t: head[:6].hex(":") for t, head in svc.forward.items()}
        counted = {mac: t for t, mac in sorted(macs.items(), reverse=True)}  # targets sharing a host: one
        address = str(IPv4Address(vip))
        services.append(
            KernelService(
                name=service_name(address, PROTOCOL_NAMES[proto], port),
                vip=address,
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
        tuple(sorted(str(a) for a in addresses)),
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
    flows_def = f"{{ type {FLOW_TYPE}; size {new.flows}; flags dynamic,timeout; timeout 3600s; }}"
    if old and old.flows != new.flows:
        out.append(f"delete map {t} flows")
    out.append(f"add map {t} flows {flows_def}")
    out.append(f"add set {t} addresses {{ type ipv4_addr; }}")
    out.append(f"flush set {t} addresses")
    if new.addresses:
        out.append(f"add element {t} addresses {{ {', '.join(new.addresses)} }}")
    out.append(f"add map {t} services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}")
    out.append(f"flush map {t} services")
    out.append(f"add counter {t} overflow")
    for s in new.services:
        out += _service(t, s, new)
    if new.services:
        elements = ", ".join(f"{s.vip} . {s.protocol} . {s.port} : goto {s.name}" for s in new.services)
        out.append(f"add element {t} services {{ {elements} }}")
    hook = f'type filter hook ingress device "{new.ifname}" priority -500; policy accept;'
    out.append(f"add chain {t} ingress {{ {hook} }}")
    if new.services:
        out.append(
            f"add rule {t} ingress ether daddr {new.own} ip frag-off & 0x3fff == 0 "
            "ip daddr . meta l4proto . th dport vmap @services"
        )
    out.append(f"add rule {t} ingress ip daddr @addresses drop")
    # ARP for them too: with HA mode bgp the VIPs are local addresses of the balancer (on the announcement
    # device), which its kernel would answer ARP for on every interface (arp_ignore 0); only the daemon
    # decides who answers ARP for a VIP.
    out.append(f"add rule {t} ingress arp operation request arp daddr ip @addresses drop")
    # 2. Delete what the new ruleset no longer has (nothing refers to it any more).
    names = {s.name for s in new.services}
    for name in old_services:
        if name not in names:
            out += [f"delete chain {t} {name}", f"delete map {t} b_{name}", f"delete set {t} l_{name}"]
            out += [f"delete map {t} k_{name}", f"delete counter {t} n_{name}"]
    for name, s in old_services.items():
        kept = {tid for tid, _ in next((n.targets for n in new.services if n.name == name), ())}
        out += [f"delete counter {t} c_{name}_{tid}" for tid, _ in s.targets if tid not in kept]
    return "\n".join(out) + "\n"


def _service(t: str, s: KernelService, rs: Ruleset) -> list[str]:
    """A virtual server's maps, counters and chain (created or refilled)."""
    name = s.name
    out = [
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
    send = f'counter name ether daddr map @k_{name} ether saddr set {rs.own} fwd to "{rs.ifname}"'
    follow = f"ether daddr set {KEY} map @flows ether daddr @l_{name}"
    pick = f"ether daddr set jhash ip saddr mod {max(1, len(s.buckets))} seed {s.seed:#x} map @b_{name}"
    keep, young = (f"update @flows {{ {KEY} timeout {n}s : ether daddr }}" for n in (s.timeout, rs.embryonic))
    if s.protocol == "tcp":  # a repeated SYN keeps its flow embryonic
        rules = [f"tcp flags & (syn | ack) != syn {follow} {keep} {send}", f"{follow} {young} {send}"]
    else:
        rules = [f"{follow} {keep} {send}"]
    # A flow whose recorded target is out (disabled, down): its entry goes, so the pick below records where
    # it goes now (an `update` never changes a target) and it stays there when the old target is back.
    stale = f"ether daddr set {KEY} map @flows ether daddr != @l_{name}"
    rules.append(f"{stale} delete @flows {{ {KEY} : ether daddr }}")
    rules.append(f"{pick} {young} {send}")
    rules.append(f'{pick} counter name "overflow" {send}')  # the flow map is full
    rules.append(f'counter name "n_{name}" drop')  # no target takes new flows
    return out + [f"add rule {t} {name} {rule}" for rule in rules]


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
        """Why `access nftables` cannot run here (None: it can): nft and netdev `fwd` in the kernel."""
        if self.nft is None:
            return "nft not found (install the nftables package)"
        buckets = "{ 0 : 02:00:00:00:00:01, 1 : 02:00:00:00:00:02 }"
        probe = (
            "table netdev dsrlb_probe {\n"
            f'  chain c {{ type filter hook ingress device "{self.ifname}" priority 0; policy accept;\n'
            f'    ether daddr set jhash ip saddr mod 2 seed 1 map {buckets} fwd to "{self.ifname}"\n'
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
        """The flow map's entries: (client, sport, vip, port, target MAC, seconds to expiry)."""
        out = []
        for item in self._json("list", "map", "netdev", self.name, "flows"):
            for key, mac in item.get("map", {}).get("elem", []):
                elem = key.get("elem", {})
                src, sport, dst, dport = elem.get("val", key)["concat"]
                out.append((src, sport, dst, dport, mac, elem.get("expires", 0)))
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
