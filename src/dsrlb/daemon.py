"""The control plane: loads the config, runs health checks, target ARP resolution, the control
socket and metrics in asyncio, and hands the data plane complete forwarding tables.

A reload parses the new file first; only a config without errors replaces the running one, so a bad
file never stops traffic. Runtime target state (admin overrides, health, MACs, sessions) is kept for
targets that still exist.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from dsrlb import control, metrics, resign, systemd
from dsrlb.config.model import Config, Interface, Network, Target
from dsrlb.config.parser import ConfigError, parse_file
from dsrlb.dataplane import bpf
from dsrlb.dataplane.forwarder import Forwarder, ForwardingTable, Service, ServiceState
from dsrlb.dataplane.packet import arp_frame, gratuitous_arp
from dsrlb.dataplane.ring import PacketRing
from dsrlb.health import HealthMonitor
from dsrlb.ingress import IngressFilter
from dsrlb.selection import Candidate, Selector
from dsrlb.vrrp import GROUP_MAC, MASTER, VrrpRouter

log = logging.getLogger("dsrlb")

PROTOCOLS = {"tcp": 6, "udp": 17}
ARP_RETRY = 1.0  # seconds between ARP requests for a target whose MAC we do not know
GARP_BURST = (0.05, 0.1, 0.2, 3.0)  # gratuitous ARP after the first: a burst, then once more later
GARP_REFRESH = 10.0  # and from then on every so often, so a neighbour that learned a wrong MAC recovers


class StartupError(Exception):
    """The daemon cannot start with this config on this host (message says what to fix)."""


@dataclass
class TargetRuntime:
    """What the daemon knows about a target beyond its config."""

    admin: str = "enabled"  # enabled | disabled | draining (drained is derived)
    probe: tuple = ()  # what the monitor checks: (address, checks, source); a change restarts it
    monitor: HealthMonitor | None = None
    task: asyncio.Task | None = None
    arp_sent: float = 0.0

    @property
    def up(self) -> bool:
        return self.monitor.up if self.monitor else True


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
        self.answering = True  # answer ARP and ping for our addresses: VRRP master, or alone
        self.forwarding = True  # forward to targets: as answering, and while handing over on stop
        self.vrrp: VrrpRouter | None = None
        self._handing_over = False
        self._sentinel: subprocess.Popen | None = None  # resigns for us should we be killed as master
        self.ring_drops = 0
        self.stopping: asyncio.Event | None = None

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
        except StartupError as err:
            print(f"dsrlb: {err}", file=sys.stderr)
            return 1
        try:
            self.ring = PacketRing(self.interface.name)
        except OSError as err:
            print(f"dsrlb: interface {self.interface.name}: {err.strerror or err}", file=sys.stderr)
            return 1
        if self.interface.threads > 1:
            log.warning(
                "interface %d: threads %d requested, forwarding runs on 1 worker",
                self.interface.id,
                self.interface.threads,
            )
        self.arp_sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.arp_sock.bind((self.interface.name, 0))
        self.forwarder = Forwarder(self.ring)
        self.ingress = IngressFilter(self.interface.name)
        loop = asyncio.get_running_loop()
        self.forwarder.on_neighbor = lambda ip: loop.call_soon_threadsafe(self.schedule_rebuild)
        self.forwarder.on_vrrp = lambda frame: loop.call_soon_threadsafe(self._vrrp_receive, frame)
        self.ring.join(GROUP_MAC)
        self.stopping = asyncio.Event()
        self._apply(self.config)
        self.forwarder.start()
        if self.vrrp:
            self.vrrp.start()
        servers = await self._start_servers()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        arp_task = asyncio.create_task(self._resolve_targets())
        garp_task = asyncio.create_task(self._keep_announcing())
        if not self.vrrp:
            self._announce()
        systemd.notify("READY=1\nSTATUS=forwarding")
        log.info("forwarding on %s (%s) with %s", self.interface.name, self.ring.mac.hex(":"), self.path)
        await self.stopping.wait()
        systemd.notify("STOPPING=1")
        if self.vrrp:
            await self._hand_over()
        arp_task.cancel()
        garp_task.cancel()
        for rt in self.runtime.values():
            if rt.task:
                rt.task.cancel()
        for server in servers:
            server.close()
        self.forwarder.stop()
        self.ingress.remove()
        self.ring.close()
        self.arp_sock.close()
        return 0

    @property
    def control_path(self) -> str:
        assert self.config is not None
        return self.control_override or self.config.settings.control

    async def _start_servers(self) -> list[asyncio.AbstractServer]:
        assert self.config is not None
        servers = [await control.serve(self, self.control_path)]
        if self.config.settings.metrics != "off":
            host, _, port = self.config.settings.metrics.rpartition(":")
            servers.append(await metrics.serve(self, host, int(port)))
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
        if interface.name != self.interface.name:
            msg = f"{config.source}: changing the data interface needs a restart"
            log.error("reload rejected: %s", msg)
            return False, [msg]
        self.network = network
        self._apply(config)
        log.info("reloaded %s: generation %d", self.path, self.generation)
        return True, []

    def _apply(self, config: Config) -> None:
        """Adopt a validated config: start/stop health monitors, keep runtime state, rebuild."""
        self.config = config
        self.generation += 1
        wanted = self._serving_targets(config)
        for tid in list(self.runtime):
            if tid not in wanted:
                rt = self.runtime.pop(tid)
                if rt.task:
                    rt.task.cancel()
        for tid, target in wanted.items():
            rt = self.runtime.setdefault(tid, TargetRuntime())
            probe = (target.ipaddr, target.checks, self.network.real)
            if rt.probe != probe:
                if rt.task:
                    rt.task.cancel()
                rt.probe, rt.monitor, rt.task = probe, None, None
                if target.checks:
                    rt.monitor = HealthMonitor(
                        tid, target.ipaddr, target.checks, self.network.real, self._health_changed
                    )
                    rt.task = asyncio.get_running_loop().create_task(rt.monitor.run())
        for sid in [s for s in self.states if s not in config.servers]:
            del self.states[sid]
        self._configure_vrrp(config)
        addresses = self._addresses(config)
        self.ring.attach_filter(bpf.program(addresses))
        self.ingress.apply(addresses)
        self.rebuild()

    @staticmethod
    def _serving_targets(config: Config) -> dict[int, Target]:
        return {
            tid: config.targets[tid]
            for server in config.servers.values()
            if server.serving
            for tid in server.targets
            if config.targets[tid].serving
        }

    def _addresses(self, config: Config) -> list:
        addrs = [s.ipaddr for s in config.servers.values() if s.serving]
        if self.network.virt:
            addrs.append(self.network.virt)
        return addrs

    # --- forwarding table ---------------------------------------------------------------------
    def _health_changed(self, target_id: int, up: bool, detail: str) -> None:
        self.schedule_rebuild()

    def schedule_rebuild(self) -> None:
        if not self._rebuild_scheduled:
            self._rebuild_scheduled = True
            asyncio.get_running_loop().call_soon(self.rebuild)

    def mac_of(self, target: Target) -> bytes | None:
        entry = self.forwarder.neighbors.get(target.ipaddr.packed)
        return entry[0] if entry else None

    def rebuild(self) -> None:
        """Build and install a forwarding table from config, health, admin state and MACs."""
        self._rebuild_scheduled = False
        config = self.config
        assert config is not None
        services: dict[tuple[bytes, int, int], Service] = {}
        selectors: dict[tuple, Selector] = {}
        for server in config.servers.values():
            if not server.serving:
                continue
            active: list[int] = []
            forward: dict[int, bytes] = {}
            candidates: list[Candidate] = []
            for tid in server.targets:
                target = config.targets[tid]
                rt = self.runtime.get(tid)
                mac = self.mac_of(target)
                if rt is None or mac is None or not rt.up or rt.admin == "disabled":
                    continue
                forward[tid] = mac + self.ring.mac
                if rt.admin == "enabled":
                    active.append(tid)
                    candidates.append(
                        Candidate(tid, f"{target.ipaddr}:{server.port}", target.weight, target.backup)
                    )
            key = (server.method, tuple(candidates))
            selector = selectors.get(key) or self._selectors.get(key) or Selector(server.method, candidates)
            selectors[key] = selector
            if not self.forwarding:
                continue  # a VRRP backup stays silent
            state = self.states.setdefault(server.id, ServiceState())
            services[(server.ipaddr.packed, PROTOCOLS[server.protocol], server.port)] = Service(
                selector, frozenset(active), forward, server.session, state
            )
        self._selectors = selectors
        answer = frozenset(a.packed for a in self._addresses(config)) if self.answering else frozenset()
        neighbors = frozenset(t.ipaddr.packed for t in self._serving_targets(config).values())
        self.forwarder.install(ForwardingTable(services, answer, neighbors, config.settings.drainidle))

    # --- neighbours ---------------------------------------------------------------------------
    async def _resolve_targets(self) -> None:
        """Resolve target MACs ourselves (ARP from `real`), refresh them, forget silent ones."""
        while True:
            assert self.config is not None
            settings = self.config.settings
            now = time.monotonic()
            expired = False
            for tid, rt in self.runtime.items():
                target = self.config.targets[tid]
                ip = target.ipaddr.packed
                entry = self.forwarder.neighbors.get(ip)
                age = now - entry[1] if entry else None
                if age is not None and age > settings.arpexpire:
                    self.forwarder.neighbors.pop(ip, None)
                    log.warning(
                        "target %d %s: no ARP answer for %.0f s, MAC forgotten", tid, target.ipaddr, age
                    )
                    expired = True
                    age = None
                due = ARP_RETRY if age is None else settings.arprefresh
                if now - rt.arp_sent >= due and (age is None or age >= settings.arprefresh):
                    rt.arp_sent = now
                    self._send(arp_frame(1, self.ring.mac, self.network.real.packed, b"", ip))
            if expired:
                self.rebuild()
            await asyncio.sleep(0.5)

    def _announce(self) -> None:
        """Gratuitous ARP for every address we answer for, so neighbours learn our MAC at once."""
        if not self.answering:
            return
        for addr in self._addresses(self.config):
            self._send(gratuitous_arp(self.ring.mac, addr.packed))

    async def _keep_announcing(self) -> None:
        """Repeat gratuitous ARP while we own the addresses: a router that cached another MAC for a
        VIP (say, a target that answered ARP for it by mistake) comes back to us without expiring."""
        while True:
            await asyncio.sleep(GARP_REFRESH)
            self._announce()

    def _announce_burst(self) -> None:
        loop = asyncio.get_running_loop()
        self._announce()
        for delay in GARP_BURST:
            loop.call_later(delay, self._announce)

    # --- VRRP ---------------------------------------------------------------------------------
    def _configure_vrrp(self, config: Config) -> None:
        """Create the VRRP router on first load; later loads update it in place where they can."""
        wanted = config.vrrp
        if wanted is None:
            if self.vrrp is not None:
                self.vrrp.shutdown()
                self.vrrp = None
            self.answering = self.forwarding = True
            return
        source = config.networks[wanted.network].real
        addresses = self._addresses(config)
        router = self.vrrp
        if router is not None and (router.config.vrid, router.config.version, router.source) == (
            wanted.vrid,
            wanted.version,
            source,
        ):
            router.config, router.priority, router.addresses = wanted, wanted.priority, tuple(addresses)
            self._keep_resignation()
            return
        if router is not None:
            router.shutdown()
        self.vrrp = VrrpRouter(
            wanted,
            source,
            addresses,
            self.ring.mac,
            self._send,
            self._vrrp_state,
            self._announce_burst,
            ready=self._ready,
        )
        self.answering = self.forwarding = False
        if router is not None:
            self.vrrp.start()

    def _vrrp_receive(self, frame: bytes) -> None:
        if self.vrrp is not None:
            self.vrrp.receive(frame)

    def _vrrp_state(self, state: str) -> None:
        """Master answers and forwards. A master that steps down keeps forwarding for a grace period
        (make before break: the network may still send to it until the new master's gratuitous ARP
        has landed; both pick the same target for a client); one that is stopping (priority 0) also
        keeps answering ARP until a new master is heard (see `_hand_over`)."""
        was_forwarding = self.forwarding
        self.answering = state == MASTER or self._handing_over
        self.forwarding = self.answering
        if was_forwarding and not self.forwarding and self.vrrp is not None:
            self.forwarding = True
            asyncio.get_running_loop().call_later(self._grace(), self._end_grace)
        self.rebuild()
        self._keep_resignation()

    def _keep_resignation(self) -> None:
        """While master, leave the priority-0 advert for `dsrlb resign` should this process die
        without a clean stop (see resign.py); otherwise make sure none is left."""
        path = resign.path_for(self.control_path)
        try:
            if self.vrrp is not None and self.vrrp.state == MASTER:
                resign.arm(path, self.interface.name, self.vrrp.advert(priority=0))
                if self._sentinel is None or self._sentinel.poll() is not None:
                    self._sentinel = resign.start_sentinel(path)
            else:
                resign.disarm(path)
        except OSError as err:
            log.warning("cannot keep the VRRP resignation in %s: %s", path.parent, err)

    def _grace(self) -> float:
        assert self.vrrp is not None
        return max(0.2, 2 * self.vrrp.advert_interval)

    def _end_grace(self) -> None:
        if not self.answering and self.forwarding:
            self.forwarding = False
            self.rebuild()

    def _ready(self) -> bool:
        """Ready to take over from a working master: every target has been checked and every healthy
        one has a MAC, so this node picks the same target for a client as the master does; or the
        longest health-check timeout has passed since start (then there is nothing to wait for)."""
        assert self.config is not None
        longest = max((c.timeout for t in self.config.targets.values() for c in t.checks), default=0.0)
        if time.monotonic() - self.started > longest + 1:
            return True
        for tid, target in self._serving_targets(self.config).items():
            rt = self.runtime.get(tid)
            if rt is None or (rt.monitor is not None and not rt.monitor.settled):
                return False
            if rt.up and self.mac_of(target) is None:
                return False
        return True

    async def _hand_over(self) -> None:
        """Clean stop of a master: announce priority 0 and keep forwarding until the backup has
        taken over, so no request is lost."""
        router = self.vrrp
        assert router is not None
        self._handing_over = router.state == MASTER
        asked = time.monotonic()
        router.shutdown()
        if not self._handing_over:
            return
        deadline = asked + router.master_down_interval() + 1.0
        while router.peer_master_seen < asked and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.answering = False  # the new master answers from now on; we only forward what still comes
        self.rebuild()
        await asyncio.sleep(self._grace())
        log.info("handed over after %.2f s", time.monotonic() - asked)

    def _send(self, frame: bytes) -> None:
        try:
            self.arp_sock.send(frame)
        except OSError as err:
            log.warning("cannot send on %s: %s", self.interface.name, err)

    # --- runtime target control ---------------------------------------------------------------
    def set_admin(self, target_id: int, action: str) -> dict:
        if target_id not in self.runtime:
            raise KeyError(f"target {target_id} is not serving (not defined, registered or enabled)")
        self.runtime[target_id].admin = {"enable": "enabled", "disable": "disabled", "drain": "draining"}[
            action
        ]
        log.info("target %d: %s", target_id, self.runtime[target_id].admin)
        self.rebuild()
        return next(t for t in self.show_targets() if t["id"] == target_id)

    # --- views for control and metrics --------------------------------------------------------
    def admin_view(self, tid: int) -> str:
        """Admin state as operators see it: a draining target with no open connection is drained."""
        rt = self.runtime[tid]
        if rt.admin == "draining" and self.forwarder.activity.get(tid, (0, 0.0))[0] == 0:
            return "drained"
        return rt.admin

    def show_targets(self) -> list[dict]:
        assert self.config is not None
        sessions: dict[int, int] = {}
        for state in self.states.values():
            for tid, n in list(state.load.items()):
                sessions[tid] = sessions.get(tid, 0) + n
        out = []
        for tid, rt in sorted(self.runtime.items()):
            t = self.config.targets[tid]
            mac = self.mac_of(t)
            last_ok = rt.monitor.since_success() if rt.monitor else None
            packets = sum(st.counters[tid][0] for st in self.states.values() if tid in st.counters)
            nbytes = sum(st.counters[tid][1] for st in self.states.values() if tid in st.counters)
            out.append(
                {
                    "id": tid,
                    "ipaddr": str(t.ipaddr),
                    "port": t.port,
                    "mac": mac.hex(":") if mac else None,
                    "health": "up" if rt.up else "down",
                    "last_ok": None if last_ok is None else round(last_ok, 1),
                    "admin": self.admin_view(tid),
                    "weight": t.weight,
                    "backup": t.backup,
                    "sessions": sessions.get(tid, 0),
                    "connections": self.forwarder.activity.get(tid, (0, 0.0))[0],
                    "packets": packets,
                    "bytes": nbytes,
                    "detail": rt.monitor.detail if rt.monitor else "no health check",
                }
            )
        return out

    def show_servers(self) -> list[dict]:
        assert self.config is not None
        out = []
        for sid, s in sorted(self.config.servers.items()):
            state = self.states.get(sid)
            counts = list(state.counters.values()) if state else []
            packets, nbytes = sum(c[0] for c in counts), sum(c[1] for c in counts)
            out.append(
                {
                    "id": sid,
                    "vip": str(s.ipaddr),
                    "port": s.port,
                    "protocol": s.protocol,
                    "method": s.method,
                    "targets": list(s.targets),
                    "serving": s.serving,
                    "packets": packets,
                    "bytes": nbytes,
                    "sessions": len(state.sessions) if state else 0,
                }
            )
        return out

    def show_sessions(self) -> list[dict]:
        now = time.monotonic()
        out = []
        for sid, state in sorted(self.states.items()):
            for client, (tid, seen) in list(state.sessions.items()):
                out.append(
                    {
                        "server": sid,
                        "client": socket.inet_ntoa(client),
                        "target": tid,
                        "idle": round(now - seen, 1),
                    }
                )
        return out

    def show_stats(self) -> dict:
        st = self.forwarder.stats
        self.ring_drops += self.ring.kernel_drops()  # read-and-reset in the kernel, so accumulate here
        return {
            "rx": st.rx,
            "tx": st.tx,
            "forwarded": st.forwarded,
            "arp_replies": st.arp_replies,
            "icmp_replies": st.icmp_replies,
            "checksums_fixed": st.checksums_fixed,
            "drops": {**st.drops, **({"ring_full": self.ring_drops} if self.ring_drops else {})},
            "generation": self.generation,
            "uptime": round(time.monotonic() - self.started, 1),
        }

    def show_vrrp(self) -> dict:
        return self.vrrp.view() if self.vrrp else {"state": "disabled"}


def run(path: str, control: str | None = None) -> int:
    """`dsrlb run`: serve until SIGTERM/SIGINT; exit status 2 for a bad config."""
    logging.basicConfig(
        level=os.environ.get("DSRLB_LOG", "INFO"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(Daemon(path, control).main())
