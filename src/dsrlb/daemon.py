"""The daemon's lifecycle: load the config, open the data interface, run health checks, target ARP
resolution, failover, the control socket and metrics in asyncio, and hand the data plane complete
forwarding tables (built by `tables.build`).

A reload parses the new file and builds everything derived from it (packet filter, VRRP advert,
forwarding table) first; only a config that passes all of it replaces the running one, so a bad file
never stops traffic. Runtime target state (admin overrides, health, MACs, sessions) is kept for
targets that still exist.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from dsrlb import __version__, bgp, control, metrics, release, sync, systemd, tables, views
from dsrlb.config.model import Config, Interface, Network, Vrrp
from dsrlb.config.parser import ConfigError, parse_file
from dsrlb.dataplane import bpf
from dsrlb.dataplane.forwarder import Forwarder, ServiceState
from dsrlb.dataplane.nftables import KernelTable, NftError, ruleset, service_name, transaction
from dsrlb.dataplane.packet import (
    ALL_NODES,
    ALL_NODES_MAC,
    arp_frame,
    gratuitous_arp,
    multicast_mac,
    neighbor_advertisement,
    neighbor_solicitation,
    solicited_node,
)
from dsrlb.dataplane.ring import Insn, PacketRing, check_filter
from dsrlb.failover import Failover
from dsrlb.health import HealthMonitor
from dsrlb.selection import Selector
from dsrlb.vocabulary import PROTOCOLS
from dsrlb.vrrp import GROUP6_MAC, GROUP_MAC, link_local
from dsrlb.vrrp import build as build_advert

log = logging.getLogger("dsrlb")

ARP_RETRY = 1.0  # seconds between ARP requests for a target whose MAC we do not know
GARP_BURST = (0.05, 0.1, 0.2, 3.0)  # gratuitous ARP after the first: a burst, then once more later
# Young collections of at most about 100k objects (under 30 ms), and a full one only after 1000 of them
# rather than whenever the long-lived objects grew by a quarter: filling and churning 300k flows with the
# interpreter's defaults held the packet thread for 230 ms in a full collection, 27 ms at most with these
# (measured on an in-memory ring). Flows and sessions form no cycles, so little is left for full ones.
GC_THRESHOLDS = (10000, 10, 1000)
LINK_LOCAL_WAIT = 10.0  # seconds VRRP over IPv6 waits at start for the link-local address to pass DAD
KERNEL_POLL = 0.5  # seconds between reads of the kernel's counters (and checks that our table is there)
GARP_REFRESH = 10.0  # and from then on every so often, so a neighbour that learned a wrong MAC recovers
SYNC_TICK = 0.1  # seconds between bngsync batches of new and moved sessions
SYNC_BATCH = 20000  # sessions taken from the forwarder's log per tick at most
FLOW_SYNC = 1.0  # access nftables: seconds between listings of the kernel's flow map for bngsync
FLOW_SYNC_SHARE = 10  # ... or this many times what the last listing took, when that is longer


class StartupError(Exception):
    """The daemon cannot start with this config on this host (message says what to fix)."""


@dataclass
class TargetRuntime:
    """What the daemon knows about a target beyond its config."""

    admin: str = "enabled"  # one of tables.ADMIN_STATES
    probe: tuple = ()  # what the monitor checks: (address, checks, source); a change restarts it
    monitor: HealthMonitor | None = None
    task: asyncio.Task | None = None
    arp_sent: float = 0.0

    @property
    def up(self) -> bool:
        return self.monitor.up if self.monitor else True

    @property
    def last_ok(self) -> float | None:
        return self.monitor.since_success() if self.monitor else None

    @property
    def detail(self) -> str:
        return self.monitor.detail if self.monitor else "no health check"


@dataclass(frozen=True)
class Plan:
    """What a config derives, built and checked before the config is adopted."""

    network: Network
    addresses: list[IPv4Address | IPv6Address]  # answered for: VIPs, `virt` and `virt6`
    program: list[Insn]  # the packet filter for them
    kernel_forwards: bool  # access nftables: the kernel forwards the virtual servers' traffic


def _protected(vrrp: Vrrp, addresses: list[IPv4Address | IPv6Address]) -> list[IPv4Address | IPv6Address]:
    """What an advert lists: the addresses of the family VRRP runs over. Those of the other family move
    with the same state (keepalived's `virtual_ipaddress_excluded`)."""
    version = 6 if vrrp.family == "ipv6" else 4
    return [a for a in addresses if a.version == version]


def data_plane_of(config: Config) -> tuple[Interface, Network]:
    """The one interface this daemon forwards on, and its network."""
    interfaces = [i for i in config.interfaces.values() if i.registered and i.enabled]
    if len(interfaces) != 1:
        raise StartupError(
            f"{config.source}: exactly one registered and enabled interface is supported, "
            f"found {len(interfaces)}"
        )
    interface = interfaces[0]
    networks = [
        n for n in config.networks.values() if n.interface == interface.id and n.registered and n.enabled
    ]
    if not networks:
        raise StartupError(f"{config.source}: no registered and enabled network on interface {interface.id}")
    return interface, networks[0]


class Daemon:
    """One balancer on one data interface. Implements `views.Status` for the control socket and
    metrics, and `failover.Host` for VRRP."""

    # Set by main() once the config is loaded and the interface opened; they live as long as the process.
    interface: Interface
    network: Network
    arp_sock: socket.socket
    forwarder: Forwarder
    kernel: KernelTable

    def __init__(self, path: str, control_path: str | None = None) -> None:
        self.path = path
        self.control_override = control_path
        self.config: Config | None = None
        self.generation = 0
        self.runtime: dict[int, TargetRuntime] = {}
        self.states: dict[int, ServiceState] = {}
        self._selectors: dict[tuple, Selector] = {}
        self._rebuild_scheduled = False
        self.started = time.monotonic()
        self.warm = False  # cold start: no forwarding and no ARP/ping answers until `ready()` (_warm_up)
        self.failover = Failover(self)
        self.ring_drops = 0
        self.kernel_seen: dict[int, tuple[int, float]] = {}  # target -> (packets, when they last grew)
        self.kernel_forwards = False  # access nftables in the adopted config
        self.addresses: list[IPv4Address | IPv6Address] = []  # what we answer for, from the adopted config
        self.stopping: asyncio.Event | None = None
        self.exit_status = 0
        self.tun: bgp.TunDevice | None = None  # HA mode bgp: the device whose addresses BIRD announces
        self.bgp_reasons: dict[IPv4Address, str | None] = {}  # VIP -> None (announced) or why not
        self.bgp_changes = 0  # addresses added to or removed from the device
        self.sync: sync.SyncPeer | None = None  # bngsync with the syncpeer of our network
        self.sync_error: str | None = None  # why bngsync is configured but not running
        self._resync = False  # the peer is to get the whole table at the next tick
        self._full_due = 0.0  # monotonic time of the next whole-table refresh
        self._forwarding = False  # the forwarding table installed last forwards (for hand-over of hints)
        self.hints: dict[int, dict[bytes, tuple[int, float]]] = {}  # server id -> the peer's sessions
        self._hints_until = 0.0  # the peer's sessions handed to the forwarder are dropped after this
        self._flows_sent: dict[tuple, str] = {}  # access nftables: flow -> target MAC, as last sent
        self._flows_due = 0.0  # when the kernel's flow map is listed next
        self._flows_in: list[tuple] = []  # the peer's flows, for our kernel's flow map at the next tick
        self.flows_refused = 0  # the peer's flows our kernel's flow map did not take (full)

    # --- lifecycle ----------------------------------------------------------------------------
    async def main(self) -> int:
        try:
            self.config = parse_file(self.path)
        except ConfigError as err:
            print(err, file=sys.stderr)
            return 2
        for warning in self.config.warnings:
            log.warning("%s", warning)
        try:
            self.interface, self.network = data_plane_of(self.config)
            control.claim(self.control_path)
        except (StartupError, OSError) as err:
            print(f"dsrlb: {err}", file=sys.stderr)
            return 1
        try:
            self.forwarder = Forwarder(PacketRing(self.interface.name))
        except OSError as err:
            print(f"dsrlb: interface {self.interface.name}: {err.strerror or err}", file=sys.stderr)
            return 1
        self.kernel = KernelTable(self.interface.name)
        if self.interface.access == "nftables":
            why = self.kernel.supported()
            if why is not None:
                self.ring.close()
                print(
                    f"dsrlb: access nftables needs nft and netdev fwd in the kernel ({why}); use access raw",
                    file=sys.stderr,
                )
                return 1
        elif self.kernel.nft is None:
            log.warning("nft not found: the kernel of this host will also process VIP traffic")
        if self.config.bgp is not None and (why := self._open_announcer(self.config.bgp.device)):
            self.ring.close()
            print(f"dsrlb: {why}", file=sys.stderr)
            return 1
        await self._wait_link_local(self.config)
        try:
            plan = self._prepare(self.config, self.network)
        except StartupError as err:
            self.ring.close()
            print(f"dsrlb: {err}", file=sys.stderr)
            return 1
        if self.interface.threads > 1:
            log.warning(
                "interface %d: threads %d requested, forwarding runs on 1 worker",
                self.interface.id,
                self.interface.threads,
            )
        self.arp_sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.arp_sock.bind((self.interface.name, 0))
        loop = asyncio.get_running_loop()
        self.forwarder.on_neighbor = lambda ip: loop.call_soon_threadsafe(self.schedule_rebuild)
        self.forwarder.on_vrrp = self.failover.post  # bounded and rate-limited; drained on the loop
        self.forwarder.on_reopen = lambda: loop.call_soon_threadsafe(self._link_back)
        self.forwarder.on_failure = lambda: loop.call_soon_threadsafe(self._fail, "the packet loop died")
        self.ring.join(GROUP_MAC)
        self.ring.join(GROUP6_MAC)  # ff02::12, VRRP over IPv6
        self.stopping = asyncio.Event()
        self._apply(self.config, plan)
        gc.freeze()  # what start-up built lives as long as the process: no collection scans it again
        gc.set_threshold(*GC_THRESHOLDS)
        self.forwarder.start()
        self.failover.start()
        try:
            servers = await self._start_servers()
        except OSError as err:  # the metrics address taken, say: stop before anything depends on us
            print(f"dsrlb: {err}", file=sys.stderr)
            self.failover.configure(None, IPv4Address(0), [])
            self.kernel.remove()
            self.forwarder.stop()
            self.ring.close()
            self.arp_sock.close()
            return 1
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        tasks = [
            asyncio.create_task(self._resolve_targets()),
            asyncio.create_task(self._keep_announcing()),
            asyncio.create_task(self._watch_kernel()),
            asyncio.create_task(self._sync_sessions()),
        ]
        watchdog = systemd.watchdog_interval()
        if watchdog is not None:
            tasks.append(asyncio.create_task(self._feed_watchdog(watchdog)))
        await self._warm_up()
        self._announce()  # alone, or a VRRP master elected while warming up: its burst was held back
        systemd.notify("READY=1\nSTATUS=forwarding")
        log.info("forwarding on %s (%s) with %s", self.interface.name, self.ring.mac.hex(":"), self.path)
        await self.stopping.wait()
        systemd.notify("STOPPING=1")
        await self.failover.hand_over()
        await self._withdraw()
        for task in tasks:
            task.cancel()
        for rt in self.runtime.values():
            if rt.task:
                rt.task.cancel()
        for server in servers:
            server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)  # a client that asks now is told no daemon runs, not "refused"
        self.kernel.remove()  # the peer took over: the kernel forwards and drops nothing for us any more
        if self.sync is not None:
            self.sync.close()
        self.forwarder.stop()
        self.ring.close()
        self.arp_sock.close()
        if self.tun is not None:
            self.tun.close()
        return self.exit_status

    async def _withdraw(self) -> None:
        """HA mode bgp, clean stop: take the addresses off the device (BIRD withdraws the routes), then
        keep forwarding for `grace` seconds while the router moves the flows to the other balancers
        (which pick the same targets for them). A dead packet loop has nothing to keep forwarding."""
        if self.tun is None:
            return
        assert self.config is not None and self.config.bgp is not None
        self.rebuild()  # stopping: the device carries nothing from now on
        if self.exit_status == 0:
            log.info("bgp: withdrawn, forwarding for %.1f s more", self.config.bgp.grace)
            await asyncio.sleep(self.config.bgp.grace)

    def _open_announcer(self, device: str) -> str | None:
        """HA mode bgp: create the announcement device; why not (None: done)."""
        if self.kernel.nft is None:
            return (
                "HA mode bgp needs nft: its table keeps this host's kernel from answering ARP for the VIPs "
                "that the announcement device carries (install the nftables package)"
            )
        self.tun = bgp.TunDevice(device)
        try:
            self.tun.open()
        except OSError as err:
            self.tun = None
            return f"bgp device {device}: {err.strerror or err}"
        return None

    def _fail(self, why: str) -> None:
        """The data path is dead: exit non-zero, so systemd restarts the daemon and `dsrlb resign` runs for
        a master, rather than advertise a VIP that goes nowhere."""
        log.critical("%s: exiting with status 1", why)
        systemd.notify(f"STATUS={why}")
        self.exit_status = 1
        assert self.stopping is not None
        self.stopping.set()

    def _link_back(self) -> None:
        """The ring was reopened after the link went away: the interface may be a new one (new MAC,
        new index for the ARP socket), and neighbours may have flushed our addresses meanwhile."""
        try:
            self.arp_sock.bind((self.interface.name, 0))
        except OSError as err:
            log.warning("cannot rebind the ARP socket to %s: %s", self.interface.name, err)
        self.rebuild()
        self.announce_burst()

    async def _feed_watchdog(self, interval: float) -> None:
        """Ping systemd's watchdog only while the packet loop makes progress: a stuck loop (or a stuck
        event loop) goes unfed, and systemd kills and restarts the daemon."""
        seen = None
        while True:
            beat = self.forwarder.heartbeat
            if beat != seen:
                systemd.notify("WATCHDOG=1")
            else:
                log.error("the packet loop made no progress for %.1f s: not feeding the watchdog", interval)
            seen = beat
            await asyncio.sleep(interval)

    @property
    def control_path(self) -> str:
        assert self.config is not None
        return self.control_override or self.config.settings.control

    @property
    def ring(self) -> PacketRing:
        """The forwarder's current ring: it opens a new one when the link comes back."""
        return self.forwarder.ring

    @property
    def mac(self) -> bytes:
        return self.ring.mac

    @property
    def interface_name(self) -> str:
        return self.interface.name

    async def _start_servers(self) -> list[asyncio.AbstractServer]:
        assert self.config is not None
        servers = [await control.serve(self, self.control_path)]
        if self.config.settings.metrics != "off":
            host, _, port = self.config.settings.metrics.rpartition(":")
            try:
                servers.append(await metrics.serve(self, host, int(port)))
            except OSError:
                servers[0].close()
                os.unlink(self.control_path)
                raise
        return servers

    # --- config -------------------------------------------------------------------------------
    async def reload(self) -> tuple[bool, list[str]]:
        """Replace the config with the file's current content, or keep the old one and say why."""
        try:
            config = parse_file(self.path)
            interface, network = data_plane_of(config)
        except ConfigError as err:
            log.error("reload rejected, keeping generation %d:\n%s", self.generation, err)
            return False, err.errors
        except StartupError as err:
            log.error("reload rejected, keeping generation %d: %s", self.generation, err)
            return False, [str(err)]
        old_bgp = self.config.bgp if self.config else None
        if interface.name != self.interface.name:
            msg = f"{config.source}: changing the data interface needs a restart"
            log.error("reload rejected: %s", msg)
            return False, [msg]
        if (config.bgp is None) != (old_bgp is None) or (
            config.bgp and old_bgp and config.bgp.device != old_bgp.device
        ):
            msg = f"{config.source}: changing the HA mode or the bgp device needs a restart"
            log.error("reload rejected: %s", msg)
            return False, [msg]
        try:
            plan = self._prepare(config, network)
        except StartupError as err:
            log.error("reload rejected, keeping generation %d: %s", self.generation, err)
            return False, [str(err)]
        self._apply(config, plan)
        log.info("reloaded %s: generation %d", self.path, self.generation)
        return True, []

    def _prepare(self, config: Config, network: Network) -> Plan:
        """Build and check everything `config` derives, changing nothing: a config this daemon cannot
        run (say, more addresses than the packet filter holds) is refused while the old one serves."""
        addresses = tables.addresses(config, network)
        kernel_forwards = data_plane_of(config)[0].access == "nftables"
        if kernel_forwards and self.interface.access != "nftables" and (why := self.kernel.supported()):
            raise StartupError(
                f"{config.source}: access nftables needs nft and netdev fwd in the kernel ({why})"
            )
        try:
            program = bpf.program(addresses, kernel_forwards)
            check_filter(program)
            if config.vrrp is not None:
                v = config.vrrp
                source = self._vrrp_source(config)
                build_advert(
                    v.version, v.vrid, v.priority, v.advert_ms, source, _protected(v, addresses), self.mac
                )
            serving = tables.serving_targets(config)
            built = tables.build(
                config,
                network,
                {tid: tables.TargetStatus() for tid in serving},
                {t.ipaddr.packed: b"\x02\x00" + t.ipaddr.packed for t in serving.values()},  # stand-ins
                self.mac,
                {sid: ServiceState() for sid, s in config.servers.items() if s.serving},
                selectors=self._selectors,
            )
            rules = ruleset(built.table, self.interface.name, self.mac, addresses, kernel_forwards)
            if kernel_forwards:
                self.kernel.check(transaction(rules, None, "dsrlb_check"))
        except Exception as err:  # whatever fails here would have failed halfway through _apply
            raise StartupError(f"{config.source}: this daemon cannot run it: {err}") from err
        return Plan(network, addresses, program, kernel_forwards)

    def _vrrp_source(self, config: Config) -> IPv4Address | IPv6Address:
        """Where our adverts come from: `real` of the VRRP network, or with family ipv6 the interface's
        link-local address (RFC 5798 5.1.2.1), read from the kernel."""
        assert config.vrrp is not None
        if config.vrrp.family != "ipv6":
            return config.networks[config.vrrp.network].real
        address, tentative = link_local(self.interface.name)
        if address is None:
            raise StartupError(
                f"{config.source}: VRRP family ipv6 needs the IPv6 link-local address of "
                f"{self.interface.name}, which "
                + (
                    "is still tentative (duplicate address detection)"
                    if tentative
                    else "has none (IPv6 off?)"
                )
            )
        return address

    async def _wait_link_local(self, config: Config) -> None:
        """VRRP over IPv6 at start: wait (a while) until the interface's link-local address has passed
        duplicate address detection; an advert may not come from a tentative address."""
        if config.vrrp is None or config.vrrp.family != "ipv6":
            return
        end = time.monotonic() + LINK_LOCAL_WAIT
        while time.monotonic() < end:
            if link_local(self.interface.name)[0] is not None:
                return
            await asyncio.sleep(0.1)

    def _apply(self, config: Config, plan: Plan) -> None:
        """Adopt a config `_prepare` accepted: start/stop health monitors, keep runtime state, rebuild."""
        self.config = config
        self.network = plan.network
        self.generation += 1
        wanted = tables.serving_targets(config)
        for tid in list(self.runtime):
            if tid not in wanted:
                rt = self.runtime.pop(tid)
                if rt.task:
                    rt.task.cancel()
        for tid, target in wanted.items():
            rt = self.runtime.setdefault(tid, TargetRuntime())
            source = self.network.real6 if target.ipaddr.version == 6 else self.network.real
            probe = (target.ipaddr, target.checks, source)
            if rt.probe != probe:
                if rt.task:
                    rt.task.cancel()
                previous = rt.monitor
                rt.probe, rt.monitor, rt.task = probe, None, None
                if target.checks:
                    rt.monitor = HealthMonitor(
                        tid, target.ipaddr, target.checks, source, self._health_changed
                    )
                    if previous is not None:
                        rt.monitor.inherit(previous)
                    rt.task = asyncio.get_running_loop().create_task(rt.monitor.run())
        for sid in list(self.states):
            if sid not in config.servers:
                del self.states[sid]
        for sid, server in config.servers.items():
            if server.serving:
                self.states.setdefault(sid, ServiceState())
        if config.vrrp is None:
            self.failover.configure(None, self.network.real, [])
        else:  # the addresses of the other family follow its state
            source = self._vrrp_source(config)
            self.failover.configure(config.vrrp, source, _protected(config.vrrp, plan.addresses))
        self._configure_sync(config)
        self.addresses = plan.addresses
        for addr in plan.addresses:  # NICs filter multicast: solicitations for our IPv6 addresses go to these
            group = multicast_mac(solicited_node(addr.packed)) if addr.version == 6 else None
            if group is not None and group not in self.ring.groups:
                self.ring.join(group)
        if plan.kernel_forwards and not self.kernel_forwards:  # make before break: the kernel first
            self.kernel_forwards = True
            self.rebuild()
            self.forwarder.attach_filter(plan.program)
        else:  # the Python forwarder first (raw, or nothing changes)
            self.forwarder.attach_filter(plan.program)
            self.kernel_forwards = plan.kernel_forwards
        self.rebuild()

    # --- forwarding table ---------------------------------------------------------------------
    def _health_changed(self, target_id: int, up: bool, detail: str) -> None:
        self.schedule_rebuild()

    def schedule_rebuild(self) -> None:
        if not self._rebuild_scheduled:
            self._rebuild_scheduled = True
            asyncio.get_running_loop().call_soon(self.rebuild)

    def _macs(self) -> dict[bytes, bytes]:
        """MACs of the serving targets, read key by key: the packet thread may add entries meanwhile."""
        assert self.config is not None
        found = {}
        for target in tables.serving_targets(self.config).values():
            entry = self.forwarder.neighbors.get(target.ipaddr.packed)
            if entry is not None:
                found[target.ipaddr.packed] = entry[0]
        return found

    def rebuild(self) -> None:
        """Build and install a forwarding table from config, health, admin state and MACs."""
        self._rebuild_scheduled = False
        assert self.config is not None
        status = {tid: tables.TargetStatus(rt.up, rt.admin) for tid, rt in self.runtime.items()}
        macs = self._macs()
        forwarding = self.failover.forwarding and self.warm
        if forwarding != self._forwarding:
            self._forwarding = forwarding
            self._hand_over_hints(forwarding)
        built = tables.build(
            self.config,
            self.network,
            status,
            macs,
            self.ring.mac,
            self.states,
            forwarding=forwarding,
            answering=self.failover.answering and self.warm,
            arp=self.tun is None,
            selectors=self._selectors,
            synced=self.hints,
        )
        self._selectors = built.selectors
        table = built.table
        if self.kernel_forwards:
            self.forwarder.install(replace(table, services={}))  # ARP, ping and VRRP only
        else:
            self.forwarder.install(table)
        rules = ruleset(table, self.interface.name, self.ring.mac, self.addresses, self.kernel_forwards)
        if rules != self.kernel.installed and (self.kernel.nft or self.kernel_forwards):
            try:
                self.kernel.apply(rules)
            except NftError as err:
                if not self.kernel_forwards:  # raw: only the balancer's own stack sees VIP traffic
                    log.error("nftables: table %s not updated: %s", self.kernel.name, err)
                else:
                    self._fail(f"nftables: cannot write table {self.kernel.name}: {err}")
        if self.tun is not None:
            self._announce_vips(tables.servable(self.config, status, macs))

    def _announce_vips(self, servable: dict[IPv4Address, bool]) -> None:
        """HA mode bgp: the device carries the VIPs this node can serve now (after the table that
        serves them is installed); BIRD announces what it carries."""
        assert self.tun is not None
        # Without our nftables table the kernel would answer ARP for the VIPs on the device and reset
        # connections to them: such a node is not ready to announce.
        ready = self.warm and self.kernel.installed is not None
        stopping = self.stopping is not None and self.stopping.is_set()  # also a stop while warming up
        reasons = bgp.decide(servable, ready, stopping)
        try:
            changed = self.tun.set(vip for vip, why in reasons.items() if why is None)
        except OSError as err:
            log.error("bgp: cannot update the addresses of %s: %s", self.tun.name, err)
            return
        if changed:
            self.bgp_changes += changed
            for vip, why in sorted(reasons.items()):
                if self.bgp_reasons.get(vip, "") != why:
                    log.info("bgp: %s %s", vip, "announced" if why is None else f"withdrawn ({why})")
        self.bgp_reasons = reasons

    async def _watch_kernel(self) -> None:
        """Read the kernel's counters, and put our table back within a second when someone removed it
        (`nft flush ruleset`, or `systemctl reload nftables` with Debian's /etc/nftables.conf)."""
        while self.kernel.nft is not None:
            await asyncio.sleep(KERNEL_POLL)
            if not self._read_kernel():
                return

    def _read_kernel(self) -> bool:
        """Take the kernel's counters now (also for `show`: they must count what was just sent); False
        when the table can neither be read nor restored and the daemon is ending."""
        if self.kernel.installed is None:
            return True
        try:
            self.kernel.refresh()
        except NftError as err:
            if self.kernel_forwards:
                self._fail(f"nftables: cannot read or restore table {self.kernel.name}: {err}")
                return False
            log.error("nftables: cannot read or restore table %s: %s", self.kernel.name, err)
            return True
        if self.kernel_forwards:
            self._kernel_counters()
        return True

    def _kernel_counters(self) -> None:
        """Access nftables: per target counters and activity from the kernel's, as the Python forwarder
        keeps them (a draining target is drained once no packet went to it for `drainidle` seconds)."""
        assert self.config is not None and self.kernel.installed is not None
        now = time.monotonic()
        sids = {
            service_name(str(s.ipaddr), s.protocol, s.port): sid
            for sid, s in self.config.servers.items()
            if s.serving
        }
        packets: dict[int, int] = {}
        for s in self.kernel.installed.services:
            state = self.states.get(sids.get(s.name, -1))
            for tid, _ in s.targets:
                counter = self.kernel.counters.get(f"c_{s.name}_{tid}")
                if counter is not None and state is not None:
                    state.counters[tid] = counter
                    packets[tid] = packets.get(tid, 0) + counter[0]
        for tid, n in packets.items():
            seen, last = self.kernel_seen.get(tid, (0, 0.0))
            self.kernel_seen[tid] = (n, now if n > seen else last)

    def _activity(self) -> dict[int, tuple[int, float]]:
        """Per target (open connections, last packet): counted by the Python forwarder with access raw;
        with access nftables the kernel keeps no count, so 1 while packets went to it in the last
        `drainidle` seconds."""
        if not self.kernel_forwards:
            return self.forwarder.activity
        assert self.config is not None
        recent = time.monotonic() - self.config.settings.drainidle
        return {tid: (int(last >= recent), last) for tid, (_, last) in self.kernel_seen.items() if last}

    # --- neighbours ---------------------------------------------------------------------------
    async def _resolve_targets(self) -> None:
        """Resolve target MACs ourselves (ARP from `real`), refresh them, forget silent ones."""
        while True:
            assert self.config is not None
            settings = self.config.settings
            now = time.monotonic()
            for tid, rt in self.runtime.items():
                target = self.config.targets[tid]
                ip = target.ipaddr.packed
                entry = self.forwarder.neighbors.get(ip)
                age = now - entry[1] if entry else None
                if age is not None and age > settings.arpexpire:
                    log.warning(
                        "target %d %s: no %s answer for %.0f s, MAC forgotten",
                        tid,
                        target.ipaddr,
                        "ARP" if target.ipaddr.version == 4 else "neighbour",
                        age,
                    )
                    self.forwarder.call(lambda ip=ip: self._forget(ip))
                    age = None
                due = ARP_RETRY if age is None else settings.arprefresh
                if now - rt.arp_sent >= due and (age is None or age >= settings.arprefresh):
                    rt.arp_sent = now
                    self.send(self._solicit(ip))
            await asyncio.sleep(0.5)

    def _solicit(self, ip: bytes) -> bytes:
        """An ARP request for a target's IPv4 address from `real`, a neighbour solicitation for an IPv6 one
        from `real6` (the parser requires it for IPv6 targets)."""
        if len(ip) == 4:
            return arp_frame(1, self.ring.mac, self.network.real.packed, b"", ip)
        assert self.network.real6 is not None
        return neighbor_solicitation(self.ring.mac, self.network.real6.packed, ip)

    def _forget(self, ip: bytes) -> None:
        """On the packet thread, which owns the neighbour table: drop a MAC and have the table rebuilt."""
        if self.forwarder.neighbors.pop(ip, None) is not None:
            self.forwarder.on_neighbor(ip)

    def _announce(self) -> None:
        """Gratuitous ARP for every IPv4 address we answer for, an unsolicited neighbour advertisement for
        every IPv6 one, so neighbours learn our MAC at once."""
        if not self.failover.answering or not self.warm or self.tun is not None:
            return  # HA mode bgp: the router reaches the VIPs by routes, nobody is to learn our MAC for them
        assert self.config is not None
        mac = self.ring.mac
        for addr in tables.addresses(self.config, self.network):
            if addr.version == 4:
                self.send(gratuitous_arp(mac, addr.packed))
            else:
                self.send(neighbor_advertisement(mac, addr.packed, ALL_NODES, ALL_NODES_MAC, solicited=False))

    async def _keep_announcing(self) -> None:
        """Repeat gratuitous ARP while we own the addresses: a router that cached another MAC for a
        VIP (say, a target that answered ARP for it by mistake) comes back to us without expiring."""
        while True:
            await asyncio.sleep(GARP_REFRESH)
            self._announce()

    def announce_burst(self) -> None:
        loop = asyncio.get_running_loop()
        self._announce()
        for delay in GARP_BURST:
            loop.call_later(delay, self._announce)

    async def _warm_up(self) -> None:
        """Cold start: forward and answer for our addresses only once `ready()` (every target checked
        and every healthy one's MAC known, or the longest check timeout passed). A client that came
        earlier would be pinned to whichever target happened to be usable first, for its whole session."""
        assert self.stopping is not None
        while not self.ready() and not self.stopping.is_set():
            await asyncio.sleep(0.1)
        self.warm = True
        self.rebuild()

    def ready(self) -> bool:
        """Ready to take over from a working master: every target has been checked and every healthy
        one has a MAC, so this node picks the same target for a client as the master does; or the
        longest health-check timeout has passed since start (then there is nothing to wait for)."""
        assert self.config is not None
        longest = max((c.timeout for t in self.config.targets.values() for c in t.checks), default=0.0)
        if time.monotonic() - self.started > longest + 1:
            return True
        macs = self._macs()
        for tid, target in tables.serving_targets(self.config).items():
            rt = self.runtime.get(tid)
            if rt is None or (rt.monitor is not None and not rt.monitor.settled):
                return False
            if rt.up and target.ipaddr.packed not in macs:
                return False
        return True

    def send(self, frame: bytes) -> None:
        try:
            self.arp_sock.send(frame)
        except OSError as err:
            log.warning("cannot send on %s: %s", self.interface.name, err)

    # --- runtime target control ---------------------------------------------------------------
    def set_admin(self, target_id: int, action: str) -> dict[str, Any]:
        if target_id not in self.runtime:
            raise KeyError(f"target {target_id} is not serving (not defined, registered or enabled)")
        self.runtime[target_id].admin = {"enable": "enabled", "disable": "disabled", "drain": "draining"}[
            action
        ]
        log.info("target %d: %s", target_id, self.runtime[target_id].admin)
        self.rebuild()
        if self.sync is not None:
            self.sync.send_admin(self._admin_records([target_id]))
        return next(t for t in self.show_targets() if t["id"] == target_id)

    # --- bngsync ------------------------------------------------------------------------------
    def _configure_sync(self, config: Config) -> None:
        """Start, keep or stop bngsync for this config: on with `syncpeer` on our network and VRRP."""
        peer, settings = self.network.syncpeer, config.settings
        wanted = None
        if peer is not None and config.vrrp is not None:
            wanted = (
                self.network.real,
                peer,
                bool(settings.sessionautoresync),
                bool(settings.sessionsyncack),
            )
        current = self.sync
        if current is not None:
            if wanted == (current.local, current.peer, current.autoresync, current.acks):
                current.capacity = settings.sessions
                return
            current.close()
            self.sync = None
        self.sync_error = None
        self.forwarder.session_log = None
        if wanted is None:
            return
        local, peer, autoresync, acks = wanted
        peer_sync = sync.SyncPeer(
            local,
            peer,
            autoresync=autoresync,
            acks=acks,
            capacity=settings.sessions,
            on_admin=self._peer_admin,
            on_resync=self._peer_restarted,
            on_sessions=self._peer_sessions,
            on_flows=self._peer_flows,
            forwarding=lambda: self._forwarding,
        )
        try:
            peer_sync.start()
        except OSError as err:
            self.sync_error = f"cannot bind {local}:{sync.PORT}: {err.strerror or err}"
            log.error("bngsync not active: %s", self.sync_error)
            return
        self.sync = peer_sync
        self.forwarder.session_log = collections.deque()
        self._resync = True
        log.info("bngsync active: %s <-> %s, UDP port %d", local, peer, sync.PORT)

    def _server_keys(self) -> dict[int, tuple[bytes, int, int]]:
        """Serving server id -> (VIP, IP protocol, port): how both nodes name a virtual server."""
        assert self.config is not None
        return {
            sid: (s.ipaddr.packed, PROTOCOLS[s.protocol], s.port)
            for sid, s in self.config.servers.items()
            if s.serving
        }

    def _wire_sessions(self, rows: list[tuple[ServiceState, bytes, int]]) -> list[sync.Session]:
        """Forwarder sessions (state, client, target id) as bngsync records."""
        assert self.config is not None
        keys = {
            id(self.states[sid]): (sid, key) for sid, key in self._server_keys().items() if sid in self.states
        }
        out = []
        for state, client, tid in rows:
            found = keys.get(id(state))
            target = self.config.targets.get(tid)
            if found is None or target is None:
                continue  # a server or target that a reload removed meanwhile
            (vip, proto, port), ttl = found[1], round(self.config.servers[found[0]].session)
            out.append(sync.Session(vip, proto, port, client, target.ipaddr.packed, ttl))
        return out

    async def _snapshot(self) -> list[tuple[ServiceState, bytes, int]]:
        """Every session of the forwarder, read on its thread (a dict it changes all the time)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[tuple[ServiceState, bytes, int]]] = loop.create_future()
        states = list(self.states.values())

        def take() -> None:
            rows = [(st, client, s.target) for st in states for client, s in st.sessions.items()]
            loop.call_soon_threadsafe(done.set_result, rows)

        self.forwarder.call(take)
        return await asyncio.wait_for(done, 5)

    async def _sync_sessions(self) -> None:
        """Send new and moved sessions every tick while forwarding, the whole table once per refresh
        period (the peer's copies expire after `session` seconds) and when the peer (re)started."""
        overflow = 0
        while True:
            await asyncio.sleep(SYNC_TICK)
            peer, logged = self.sync, self.forwarder.session_log
            now = time.monotonic()
            if self._hints_until and now > self._hints_until:
                self._hints_until, self.hints = 0.0, {}
                self.rebuild()
            if peer is None or logged is None or self.config is None:
                continue
            rows = [logged.popleft() for _ in range(min(len(logged), SYNC_BATCH))]
            if rows and self._forwarding:
                peer.send_sessions(self._wire_sessions(rows))
            lost = self.forwarder.stats.session_log_overflow
            if self._resync and self._forwarding:  # a node that just started has no drain state to give
                peer.send_admin(self._admin_records(list(self.runtime)))
            full = self._forwarding and (self._resync or now >= self._full_due or lost != overflow)
            if full:
                overflow = lost
                self._full_due = now + self._refresh_period()
                peer.send_sessions(self._wire_sessions(await self._snapshot()), full=True)
            if self.kernel_forwards and self._forwarding and (full or now >= self._flows_due):
                took = await self._send_kernel_flows(peer, full)
                self._flows_due = now + max(FLOW_SYNC, FLOW_SYNC_SHARE * took)  # a big map: less often
            self._resync = False
            if self._flows_in:
                flows, self._flows_in = self._flows_in, []
                self.flows_refused += self.kernel.add_flows(flows)

    async def _send_kernel_flows(self, peer: sync.SyncPeer, full: bool) -> float:
        """Access nftables: the kernel's flows that are new or changed target since the last listing
        (all of them when `full`), with the seconds each has left. IPv4 flows only. Returns the
        seconds the listing took."""
        start = time.monotonic()
        try:
            rows = await asyncio.to_thread(self.kernel.flows)
        except NftError as err:
            log.warning("bngsync: cannot list the kernel's flows: %s", err)
            return time.monotonic() - start
        took = time.monotonic() - start
        targets = {mac.hex(":"): ip for ip, mac in self._macs().items()}
        listed: dict[tuple, str] = {}
        out = []
        for client, sport, vip, dport, mac, expires in rows:
            target = targets.get(mac)
            if target is None or ":" in client:
                continue
            key = (client, sport, vip, dport)
            listed[key] = mac
            if full or self._flows_sent.get(key) != mac:
                out.append(
                    sync.Flow(
                        IPv4Address(client).packed,
                        sport,
                        IPv4Address(vip).packed,
                        dport,
                        target,
                        int(expires),
                    )
                )
        self._flows_sent = listed
        if out:
            peer.send_flows(out)
        return took

    def _peer_flows(self, records: list[sync.Flow]) -> None:
        """Access nftables: the peer's flows go to our kernel's flow map (at the next tick, in batches),
        with their targets' MACs as we know them; bounded by the map's capacity."""
        if not self.kernel_forwards or self.config is None:
            return
        macs = self._macs()
        room = self.config.settings.flows - len(self._flows_in)
        for r in records[: max(0, room)]:
            mac = macs.get(r.target)
            if mac is not None and len(r.client) == 4:
                client, vip = IPv4Address(r.client), IPv4Address(r.vip)
                self._flows_in.append((client, r.sport, vip, r.dport, mac.hex(":"), r.ttl))

    def _refresh_period(self) -> float:
        """A third of the shortest session timeout (1 s to 60 s): the peer's copies never run out."""
        assert self.config is not None
        shortest = min((s.session for s in self.config.servers.values() if s.serving), default=180.0)
        return min(60.0, max(1.0, shortest / 3))

    def _peer_restarted(self) -> None:
        self._resync = True

    def _peer_sessions(self, records: list[sync.Session]) -> None:
        """Sessions that arrive while we forward (the peer still forwards what reaches it during the hand
        over) become hints at once, added on the loop's thread to the dicts its table holds."""
        if not self._forwarding or not self.hints:
            return
        found, current = self._hints(records), self.hints
        self.forwarder.call(lambda: [current[sid].update(h) for sid, h in found.items() if sid in current])

    def _hand_over_hints(self, forwarding: bool) -> None:
        """Taking over: the peer's sessions become hints the forwarder follows for clients new to it,
        in the table that starts forwarding (new dicts, the loop's from then on); stepping down: they go."""
        self.hints, self._hints_until = {}, 0.0
        if self.sync is None or not forwarding:
            return
        now = time.monotonic()
        found = self._hints(
            [
                sync.Session(v, p, o, c, t, max(0, round(e - now)))
                for (v, p, o, c), (t, e) in self.sync.table.items()
            ]
        )
        self.hints = {sid: found.get(sid, {}) for sid in self._server_keys()}
        if found:
            log.info("bngsync: following %d sessions of the peer", sum(map(len, found.values())))

    def _hints(self, records: list[sync.Session]) -> dict[int, dict[bytes, tuple[int, float]]]:
        """Peer sessions as server id -> {client: (target id, expiry)}, for servers and targets we serve."""
        assert self.config is not None
        sids = {key: sid for sid, key in self._server_keys().items()}
        tids = {t.ipaddr.packed: tid for tid, t in tables.serving_targets(self.config).items()}
        now = time.monotonic()
        hints: dict[int, dict[bytes, tuple[int, float]]] = {}
        for r in records:
            sid, tid = sids.get((r.vip, r.proto, r.port)), tids.get(r.target)
            if sid is not None and tid is not None:
                hints.setdefault(sid, {})[r.client] = (tid, now + r.ttl)
                self._hints_until = max(self._hints_until, now + r.ttl)
        return hints

    def _admin_records(self, target_ids: list[int]) -> list[sync.Admin]:
        assert self.config is not None
        return [
            sync.Admin(self.config.targets[tid].ipaddr.packed, self.runtime[tid].admin)
            for tid in target_ids
            if tid in self.runtime
        ]

    def _peer_admin(self, records: list[sync.Admin]) -> None:
        """The peer's operator drained, disabled or enabled a target: so do we (not sent back)."""
        assert self.config is not None
        by_address = {t.ipaddr.packed: tid for tid, t in tables.serving_targets(self.config).items()}
        changed = False
        for r in records:
            tid = by_address.get(r.target)
            if tid is not None and self.runtime[tid].admin != r.state:
                log.info("target %d: %s (from bngsync peer %s)", tid, r.state, self.network.syncpeer)
                self.runtime[tid].admin = r.state
                changed = True
        if changed:
            self.rebuild()

    def show_bngsync(self) -> dict[str, Any]:
        if self.sync is None:
            return {"state": "error" if self.sync_error else "disabled", "error": self.sync_error}
        return self.sync.view() | {"flows_refused": self.flows_refused}

    # --- views.Status -------------------------------------------------------------------------
    def show_targets(self) -> list[dict[str, Any]]:
        assert self.config is not None
        if self.kernel_forwards:
            self._read_kernel()
        return views.targets(self.config, self.runtime, self.states.values(), self._activity(), self._macs())

    def show_servers(self) -> list[dict[str, Any]]:
        assert self.config is not None
        if self.kernel_forwards:
            self._read_kernel()
        return views.servers(self.config, self.states)

    def show_sessions(self, limit: int = views.SESSIONS_LIMIT, client: str | None = None) -> dict[str, Any]:
        """Raw: the Python forwarder's sessions. Nftables: the kernel's flow map, one row per flow (called
        off the event loop: listing a big map takes nft seconds)."""
        if not self.kernel_forwards:
            return views.sessions(self.states, time.monotonic(), limit, client)
        assert self.config is not None and self.kernel.installed is not None
        return views.kernel_flows(self.kernel.flows(), self.config, self.kernel.installed, limit, client)

    def show_stats(self) -> dict[str, Any]:
        self.ring_drops += self.forwarder.kernel_drops()  # read-and-reset in the kernel, so accumulate here
        stats = self.forwarder.stats
        if self.kernel_forwards:
            self._read_kernel()
            counters = self.kernel.counters
            drops = stats.drops.copy()
            drops["no_target"] += sum(v[0] for n, v in counters.items() if n.startswith("n_"))
            stats = replace(
                stats,
                forwarded=sum(v[0] for n, v in counters.items() if n.startswith("c_")),
                flows_overflow=counters.get("overflow", [0])[0],
                drops=drops,
            )
        return views.stats(
            stats,
            self.ring_drops,
            self.generation,
            time.monotonic() - self.started,
            access="nftables" if self.kernel_forwards else "raw",
            restored=self.kernel.restored,
        ) | {"version": __version__, "build": release.build()}  # the code this process runs

    def show_vrrp(self) -> dict[str, Any]:
        return self.failover.view()

    def bgp_status(self) -> dict[str, Any]:
        if self.tun is None:
            return {"state": "disabled"}
        return {"state": "enabled", **bgp.view(self.tun.name, self.bgp_reasons, self.bgp_changes)}

    async def show_bgp(self) -> dict[str, Any]:
        """`show bgp`: what this node announces and why, with BIRD's protocol states (`bird` says why
        they are missing when BIRD's control socket cannot be reached)."""
        found = self.bgp_status()
        if self.tun is not None and self.config is not None and self.config.bgp is not None:
            found["socket"] = self.config.bgp.socket
            found["bird"], found["protocols"] = await bgp.protocols(self.config.bgp.socket)
        return found


def run(path: str, control: str | None = None) -> int:
    """`dsrlb run`: serve until SIGTERM/SIGINT; exit status 2 for a bad config."""
    logging.basicConfig(
        level=os.environ.get("DSRLB_LOG", "INFO"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(Daemon(path, control).main())
