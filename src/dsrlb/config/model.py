"""Plain data produced by the config parser and consumed by everything else.

Nothing outside `dsrlb.config.parser` knows the config syntax: the control plane sees these frozen
dataclasses, the data plane only the ForwardingTable built from them (`dsrlb.tables`). Only objects
that are both registered and enabled serve traffic: the parser keeps them all and records the two
flags. Defaults of optional keys come from `dsrlb.vocabulary`, as for the collection's config writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from dsrlb.vocabulary import DEFAULTS

_SET, _INTERFACE, _SERVER, _TARGET, _VRRP, _BGP = (
    DEFAULTS[kind] for kind in ("set", "interface", "server", "target", "vrrp", "bgp")
)


@dataclass(frozen=True)
class Position:
    """Where a statement came from, for messages in FILE:LINE:COL form."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Interface:
    id: int
    name: str
    access: str = _INTERFACE["access"]
    threads: int = _INTERFACE["threads"]
    registered: bool = False
    enabled: bool = False


@dataclass(frozen=True)
class Network:
    id: int
    name: str
    network: IPv4Network  # from addr + mask
    real: IPv4Address  # the balancer's own address: source of ARP and health checks
    virt: IPv4Address | None  # shared address that moves with VRRP
    interface: int
    network6: IPv6Network | None = None  # from real6 + mask6
    real6: IPv6Address | None = None  # the balancer's own IPv6 address: source of NDP and health checks
    virt6: IPv6Address | None = None  # shared IPv6 address that moves with VRRP
    syncpeer: IPv4Address | None = None  # the other node's `real`: bngsync session sync (dsrlb.sync)
    registered: bool = False
    enabled: bool = False


@dataclass(frozen=True)
class HealthCheck:
    kind: str  # "tcpopen" | "ping" | "http"
    interval: float  # seconds between probes
    timeout: float  # down when no probe succeeded for this long
    port: int | None = None  # tcpopen, http
    path: str | None = None  # http


@dataclass(frozen=True)
class Target:
    id: int
    ipaddr: IPv4Address | IPv6Address  # `ipaddr` or `ipaddr6`
    port: int | None = None
    protocol: str | None = None
    checks: tuple[HealthCheck, ...] = ()
    dsr: bool = False
    weight: int = _TARGET["weight"]
    backup: bool = False
    registered: bool = False
    enabled: bool = False

    @property
    def serving(self) -> bool:
        return self.registered and self.enabled


@dataclass(frozen=True)
class Server:
    id: int
    ipaddr: IPv4Address | IPv6Address  # the VIP (`ipaddr` or `ipaddr6`)
    port: int
    protocol: str  # "tcp" | "udp"
    targets: tuple[int, ...]
    method: str = _SERVER["method"]
    session: float = _SERVER["session"]  # idle timeout of the client-address session table
    registered: bool = False
    enabled: bool = False

    @property
    def serving(self) -> bool:
        return self.registered and self.enabled


@dataclass(frozen=True)
class Vrrp:
    vrid: int
    priority: int
    network: int
    advert_ms: int = _VRRP["advert"]
    preempt: bool = _VRRP["preempt"]
    version: int = _VRRP["version"]
    # dsrlb extension: the other balancers of the virtual router, sorted; adverts from any other source
    # are dropped. Empty: any valid advert counts (RFC behaviour), and `dsrlb check` warns. With family
    # ipv6: their IPv6 link-local addresses (the source of their adverts).
    peers: tuple[IPv4Address | IPv6Address, ...] = ()
    # dsrlb extension: what VRRP runs over; the addresses of the other family follow its state
    family: str = _VRRP["family"]


@dataclass(frozen=True)
class Bgp:
    """HA mode bgp (dsrlb extension): every balancer forwards; BIRD announces the VIPs that the daemon
    puts on its TUN device `device` while it can serve them (see dsrlb.bgp)."""

    device: str = _BGP["device"]  # TUN device the daemon owns; BIRD's `protocol direct` watches it
    socket: str = _BGP["socket"]  # BIRD's control socket, read by `dsrlb show bgp`
    grace: float = _BGP["grace"]  # seconds of forwarding after the withdraw on a clean stop


@dataclass(frozen=True)
class Settings:
    """`set` keys. Unknown keys are config errors."""

    control: str = _SET["control"]  # control socket path
    metrics: str = _SET["metrics"]  # "ADDR:PORT" or "off"
    arprefresh: float = _SET["arprefresh"]  # seconds between ARP refreshes of target MACs
    arpexpire: float = _SET["arpexpire"]  # a target MAC unanswered for this long is forgotten
    drainidle: float = _SET["drainidle"]  # a draining target counts as drained after this idle time
    flows: int = _SET["flows"]  # capacity of the flow table; beyond it new flows follow the stateless pick
    sessions: int = _SET["sessions"]  # capacity of the session tables of all virtual servers together
    embryonic: float = _SET["embryonic"]  # idle timeout of a flow that has seen one packet only
    hashseed: int = _SET["hashseed"]  # jhash seed of the client -> bucket step, the same on every balancer
    sessionautoresync: int = _SET["sessionautoresync"]  # 1: bngsync: whole table to a (re)started peer
    sessionsyncack: int = _SET["sessionsyncack"]  # 1: bngsync batches are acknowledged, resent until they are


@dataclass(frozen=True)
class Config:
    source: str  # file name the config was read from
    modules: frozenset[str] = frozenset()
    settings: Settings = field(default_factory=Settings)
    interfaces: dict[int, Interface] = field(default_factory=dict)
    networks: dict[int, Network] = field(default_factory=dict)
    servers: dict[int, Server] = field(default_factory=dict)
    targets: dict[int, Target] = field(default_factory=dict)
    vrrp: Vrrp | None = None
    bgp: Bgp | None = None  # HA mode bgp; at most one of vrrp and bgp
    comments: tuple[str, ...] = ()  # the `//` lines before the first statement, which `render` keeps
    warnings: tuple[str, ...] = ()  # "FILE:LINE:COL: warning: ..." lines (e.g. gateway in DSR mode)
