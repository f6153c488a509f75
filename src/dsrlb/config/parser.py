"""BalanceNG-style config text to `model.Config`, and back with `render`.

Parsing runs in two passes. The first reads statements and checks every value on its own; the second
checks what needs the whole file (references, registration, DSR constraints, required modules). Both
collect every problem with its position instead of stopping at the first, so that `dsrlb check` shows
an operator everything that is wrong in one run. A bad value never raises anything but `ConfigError`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any, NamedTuple

from dsrlb.config import model
from dsrlb.config.lexer import EOF, LBRACE, NEWLINE, RBRACE, STRING, WORD, Token, tokenize
from dsrlb.vocabulary import (
    ACCESS,
    CHECK_MODULES,
    DEFAULTS,
    HEALTH_CHECKS,
    METHODS,
    MODULES,
    PROTOCOLS,
    STATELESS_METHODS,
    VRRP_FAMILIES,
)

MAX_ID = 65535
MAX_SECONDS = 86400.0
MAX_TABLE = 1 << 24  # `set flows` and `set sessions`: 16 M entries, some GB of memory
MAX_FILE_BYTES = 16 << 20
MAX_ADDRESSES = 250  # VIPs and virt one balancer answers for: what its packet filter holds (dataplane/bpf.py)
MAX_SEED = 0xFFFFFFFF
_INT = re.compile(r"[0-9]{1,9}")
_SEED = re.compile(r"[0-9]{1,10}|0[xX][0-9a-fA-F]{1,8}")
_SECONDS = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,3})?")
_IFNAME = re.compile(r"[^\s/:]{1,15}")
_HTTP_PATH = re.compile(r"/[!-~]*")
_BARE = re.compile(r'[^\s{}"]+')
_CONTROL_MAX = 107  # sun_path without its terminating NUL
_ACTIONS = {
    "register": ("registered", True),
    "unregister": ("registered", False),
    "enable": ("enabled", True),
    "disable": ("enabled", False),
}
_ACTION_KINDS = {
    word: kind for kind in ("interface", "network", "server", "target") for word in (kind, kind + "s")
}
_NAT = ("NAT", "dsrlb forwards in DSR mode only")
# BalanceNG keys and statements that dsrlb does not implement -> (feature, what dsrlb does instead).
UNSUPPORTED = {
    "nat": _NAT,
    "tnat": ("transparent NAT", _NAT[1]),
    "ipforwarding": ("IP forwarding", "a DSR balancer's kernel must not route the VIPs' traffic"),
}
# BalanceNG `set` keys that dsrlb reads and ignores, with why (a warning says it)
IGNORED_SETTINGS = {"multithreading": "dsrlb forwards on one thread per interface (see 'threads')"}
_ROOT_CAUSES = ("unbalanced '{'",)  # errors that explain others: shown first


class ConfigError(Exception):
    """All problems of one config file, each "FILE:LINE:COL: message", sorted by position (an unclosed
    block first: what follows may be only its consequence)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(self.errors)


class _Item(NamedTuple):
    """A value, or one element of a comma list, with the position of its first character."""

    text: str
    line: int
    col: int


class _Fail(Exception):
    """One bad statement: aborts it and becomes a positioned error."""

    def __init__(self, at: _Item | Token, message: str) -> None:
        super().__init__(message)
        self.line, self.col, self.message = at.line, at.col, message


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _alternatives(choices: tuple[str, ...]) -> str:
    return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _ranges(ids: list[int]) -> str:
    """Ids as a list token, in their order; runs of three or more become ranges (1,2 stays 1,2)."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            run = ids[start:i]
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
            start = i
    return ",".join(parts)


def _plural(kind: str, ids: list[int]) -> str:
    return f"{kind} {ids[0]} is" if len(ids) == 1 else f"{kind}s {_ranges(ids)} are"


# --- values ------------------------------------------------------------------------------------------


def _int(it: _Item, lo: int, hi: int, what: str) -> int:
    if not _INT.fullmatch(it.text):
        raise _Fail(it, f"bad {what} {_show(it.text)}: expected a whole number {lo}..{hi}")
    value = int(it.text)
    if not lo <= value <= hi:
        raise _Fail(it, f"{what} {value} is out of range {lo}..{hi}")
    return value


_port = partial(_int, lo=1, hi=65535, what="port")


def _seconds(it: _Item, what: str) -> float:
    if not _SECONDS.fullmatch(it.text):
        raise _Fail(it, f"bad {what} {_show(it.text)}: expected seconds, e.g. 3 or 0.5")
    value = float(it.text)
    if not 0 < value <= MAX_SECONDS:
        raise _Fail(it, f"{what} {it.text} is out of range: more than 0 and at most {MAX_SECONDS:.0f} s")
    return value


def _seed(it: _Item) -> int:
    """`hashseed`: a 32-bit jhash seed, decimal or 0x hex (how nft writes it)."""
    if not _SEED.fullmatch(it.text):
        raise _Fail(it, f"bad hashseed {_show(it.text)}: expected a whole number 0..{MAX_SEED} or 0x hex")
    value = int(it.text, 16) if it.text[1:2] in ("x", "X") else int(it.text)
    if value > MAX_SEED:
        raise _Fail(it, f"hashseed {value} is out of range 0..{MAX_SEED} (0xffffffff)")
    return value


def _choice(it: _Item, choices: tuple[str, ...], what: str) -> str:
    if it.text not in choices:
        raise _Fail(it, f"bad {what} {_show(it.text)}: expected {_alternatives(choices)}")
    return it.text


def _flag(it: _Item, on: str, off: str, what: str) -> bool:
    return _choice(it, (on, off), what) == on


def _ipv4(it: _Item, key6: str | None = None) -> IPv4Address:
    """An IPv4 address; an IPv6 one is pointed at the key that takes it (`key6`), when there is one."""
    try:
        return IPv4Address(it.text)
    except ValueError:
        pass
    if key6 and ":" in it.text:
        raise _Fail(it, f"bad IPv4 address {_show(it.text)}: an IPv6 address goes in '{key6}'")
    raise _Fail(it, f"bad IPv4 address {_show(it.text)}")


def _ipv6(it: _Item, key4: str) -> IPv6Address:
    try:
        return IPv6Address(it.text)
    except ValueError:
        pass
    if "." in it.text and ":" not in it.text:
        raise _Fail(it, f"bad IPv6 address {_show(it.text)}: an IPv4 address goes in '{key4}'")
    raise _Fail(it, f"bad IPv6 address {_show(it.text)}")


def _host(it: _Item, key6: str | None = None) -> IPv4Address:
    addr = _ipv4(it, key6)
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr == IPv4Address(0xFFFFFFFF):
        raise _Fail(it, f"{addr} cannot be the address of a host")
    return addr


def _host6(it: _Item, key4: str) -> IPv6Address:
    addr = _ipv6(it, key4)
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_link_local:
        raise _Fail(
            it,
            f"{addr} cannot be the address of a host here (unspecified, multicast, loopback or link-local)",
        )
    return addr


def _mask(it: _Item) -> int:
    """Dotted netmask or prefix length, as a prefix length."""
    if "." not in it.text:
        return _int(it, 0, 32, "prefix length")
    try:
        host = ~int(IPv4Address(it.text)) & 0xFFFFFFFF
    except ValueError:
        raise _Fail(it, f"bad mask {_show(it.text)}: expected e.g. 255.255.255.0 or 24") from None
    if host & (host + 1):
        raise _Fail(it, f"bad mask {it.text}: its one bits must be contiguous")
    return 32 - host.bit_length()


def _split(it: _Item) -> list[_Item]:
    """A comma list token as items, each with its own column."""
    items, col = [], it.col
    for part in it.text.split(","):
        if not part:
            raise _Fail(_Item(part, it.line, col), "empty element in list")
        items.append(_Item(part, it.line, col))
        col += len(part) + 1
    return items


def _ids(it: _Item, what: str = "id") -> list[tuple[_Item, list[int]]]:
    """`1,3-5` as [(element, [ids])], so that errors about ids can point at their element."""
    out = []
    for el in _split(it):
        lo_text, dash, hi_text = el.text.partition("-")
        lo = _int(_Item(lo_text, el.line, el.col), 1, MAX_ID, what)
        hi = _int(_Item(hi_text, el.line, el.col + len(lo_text) + 1), 1, MAX_ID, what) if dash else lo
        if hi < lo:
            raise _Fail(el, f"bad range {el.text}: {lo} is greater than {hi}")
        out.append((el, list(range(lo, hi + 1))))
    return out


def _target_list(it: _Item) -> list[tuple[_Item, list[int]]]:
    seen: set[int] = set()
    elements = _ids(it, "target id")
    for el, ids in elements:
        for target in ids:
            if target in seen:
                raise _Fail(el, f"target {target} is listed twice")
            seen.add(target)
    return elements


def _ifname(it: _Item) -> str:
    if not _IFNAME.fullmatch(it.text) or it.text in (".", "..") or len(it.text.encode()) > 15:
        raise _Fail(it, f"bad interface name {_show(it.text)}: at most 15 bytes, no '/', ':' or spaces")
    return it.text


def _control(it: _Item, what: str = "control socket") -> str:
    if not it.text.startswith("/"):
        raise _Fail(it, f"bad {what} {_show(it.text)}: expected an absolute path")
    if len(it.text.encode()) > _CONTROL_MAX:
        raise _Fail(it, f"{what} path is longer than {_CONTROL_MAX} bytes")
    return it.text


def _metrics(it: _Item) -> str:
    if it.text == "off":
        return "off"
    addr, colon, port = it.text.rpartition(":")
    if not colon:
        raise _Fail(it, f"bad metrics {_show(it.text)}: expected ADDR:PORT or off")
    address = _ipv4(_Item(addr, it.line, it.col))
    return f"{address}:{_port(_Item(port, it.line, it.col + len(addr) + 1))}"


def _advert(it: _Item) -> int:
    value = _int(it, 10, 40950, "advert")
    if value % 10:
        raise _Fail(it, f"advert {value} must be a multiple of 10 ms")
    return value


def _peer(el: _Item) -> IPv4Address | IPv6Address:
    """A peer: an IPv4 host, or (family ipv6) an IPv6 link-local address, where IPv6 adverts come from."""
    if ":" not in el.text:
        return _host(el)
    try:
        addr = IPv6Address(el.text)
    except ValueError:
        raise _Fail(el, f"bad IPv6 address {_show(el.text)}") from None
    if not addr.is_link_local:
        raise _Fail(
            el,
            f"peer {addr} is not link-local: with family ipv6 the peers are the other balancers' IPv6 "
            "link-local addresses (fe80::/10), the source of their adverts",
        )
    return addr


def _peers(it: _Item) -> tuple[IPv4Address | IPv6Address, ...]:
    """`peers A,B`: the other balancers of the virtual router, each once, sorted (IPv4 first)."""
    seen: set[IPv4Address | IPv6Address] = set()
    for el in _split(it):
        addr = _peer(el)
        if addr in seen:
            raise _Fail(el, f"peer {addr} is listed twice")
        seen.add(addr)
    return tuple(sorted(seen, key=lambda a: (a.version, int(a))))


def _timing(interval: _Item, timeout: _Item) -> tuple[float, float]:
    iv, to = _seconds(interval, "interval"), _seconds(timeout, "timeout")
    if to < iv:
        raise _Fail(timeout, f"timeout {timeout.text} is shorter than interval {interval.text}")
    return iv, to


def _check_items(it: _Item, usage: str) -> list[_Item]:
    items = _split(it)
    if len(items) != usage.count(",") + 1:
        raise _Fail(it, f"bad {usage.split()[0]} {_show(it.text)}: expected '{usage}'")
    return items


def _tcpopen(it: _Item) -> model.HealthCheck:
    port, interval, timeout = _check_items(it, "tcpopen PORT,INTERVAL,TIMEOUT")
    return model.HealthCheck("tcpopen", *_timing(interval, timeout), port=_port(port))


def _ping(it: _Item) -> model.HealthCheck:
    return model.HealthCheck("ping", *_timing(*_check_items(it, "ping INTERVAL,TIMEOUT")))


def _http(it: _Item) -> model.HealthCheck:
    """`http PORT,PATH,INTERVAL,TIMEOUT`; the path is everything between the first and last two commas."""
    items = _split(it)
    if len(items) < 4:
        raise _Fail(it, f"bad http {_show(it.text)}: expected 'http PORT,PATH,INTERVAL,TIMEOUT'")
    port, *parts, interval, timeout = items
    path = ",".join(p.text for p in parts)
    if not _HTTP_PATH.fullmatch(path):
        raise _Fail(parts[0], f"bad http path {_show(path)}: expected '/...' without spaces")
    return model.HealthCheck("http", *_timing(interval, timeout), port=_port(port), path=path)


# --- block kinds -------------------------------------------------------------------------------------

_Parse = Callable[[_Item], Any] | None  # None: a key without value (`backup`)


@dataclass
class _Block:
    kind: str
    id: int | None
    head: Token
    keys: dict[str, Token] = field(default_factory=dict)  # every key seen, also those with bad values
    values: dict[str, Any] = field(default_factory=dict)  # good values, in file order
    items: dict[str, _Item] = field(default_factory=dict)  # where each value is

    @property
    def title(self) -> str:
        return self.kind if self.id is None else f"{self.kind} {self.id}"


def _check_network(b: _Block) -> Iterator[tuple[_Item, str]]:
    v = b.values
    if "addr" in v and "mask" in v:
        net = IPv4Network((v["addr"], v["mask"]), strict=False)
        if net.network_address != v["addr"]:
            yield b.items["addr"], f"addr {v['addr']} has host bits set: the network is {net}"
        for key in ("real", "virt", "syncpeer"):
            if key in v and v[key] not in net:
                yield b.items[key], f"{key} {v[key]} is outside network {net}"
    for key, first in (("virt", "real"), ("syncpeer", "real"), ("syncpeer", "virt")):
        if key in v and v.get(first) == v[key]:
            yield b.items[key], f"{key} must differ from {first}"
    if "real6" in v and "mask6" in v:
        net6 = IPv6Network((v["real6"], v["mask6"]), strict=False)
        if "addr6" in v and v["addr6"] != net6.network_address:
            yield b.items["addr6"], f"addr6 {v['addr6']} is not the network of real6 and mask6 ({net6})"
        if "virt6" in v and v["virt6"] not in net6:
            yield b.items["virt6"], f"virt6 {v['virt6']} is outside network {net6} (real6 and mask6)"
    for key, need in (("mask6", "real6"), ("real6", "mask6"), ("virt6", "real6"), ("addr6", "real6")):
        if key in b.keys and need not in b.keys:
            yield b.keys[key], f"'{key}' needs '{need}' in {b.title}"
    if "real6" in v and v.get("virt6") == v["real6"]:
        yield b.items["virt6"], "virt6 must differ from real6"


def _check_vrrp(b: _Block) -> Iterator[tuple[_Item, str]]:
    advert = b.values.get("advert")
    if advert is not None and b.values.get("version") == 2 and advert % 1000:
        yield b.items["advert"], f"advert {advert} must be a multiple of 1000 ms with VRRP version 2"
    family = b.values.get("family", DEFAULTS["vrrp"]["family"])
    if family == "ipv6" and b.values.get("version") == 2:
        yield b.items["version"], "VRRP version 2 runs over IPv4 only: family ipv6 needs version 3"
    if "peers" in b.values:
        for el in _split(b.items["peers"]):
            if (":" in el.text) == (family == "ipv6"):
                continue
            if family == "ipv6":
                why = "is not IPv6: with family ipv6 the peers are the other balancers'"
                yield (
                    el,
                    f"peer {el.text} {why} IPv6 link-local addresses (fe80::/10), their adverts' source",
                )
            else:
                yield (
                    el,
                    (
                        f"peer {el.text} is IPv6 but VRRP runs over IPv4: list the other balancers' IPv4 "
                        "addresses, or set 'family ipv6' (then the peers are their IPv6 link-local addresses)"
                    ),
                )


def _build_network(b: _Block, flags: dict[str, bool]) -> model.Network:
    v = dict(b.values)
    net = IPv4Network((v.pop("addr"), v.pop("mask")))
    v.pop("addr6", None)  # checked: the network of real6 and mask6
    mask6 = v.pop("mask6", None)
    if mask6 is not None:
        v["network6"] = IPv6Network((v["real6"], mask6), strict=False)
    return model.Network(b.id, v.pop("name", ""), net, virt=v.pop("virt", None), **v, **flags)


def _one_address(b: _Block) -> Iterator[tuple[_Item | Token, str]]:
    """A server or target has one address, IPv4 (`ipaddr`) or IPv6 (`ipaddr6`, BalanceNG's key)."""
    if "ipaddr" in b.keys and "ipaddr6" in b.keys:
        yield b.keys["ipaddr6"], f"{b.title} has both 'ipaddr' and 'ipaddr6': give one address"
    elif "ipaddr" not in b.keys and "ipaddr6" not in b.keys:
        yield b.head, f"{b.title} is missing 'ipaddr' (or 'ipaddr6' for IPv6)"


def _check_target(b: _Block) -> Iterator[tuple[_Item | Token, str]]:
    yield from _one_address(b)
    for key, other, family in (("ping", "ping6", "ipaddr6"), ("ping6", "ping", "ipaddr")):
        if key in b.keys and family in b.keys:
            yield b.keys[key], f"'{key}' cannot check {b.title} at its {family} address: use '{other}'"


def _build_server(b: _Block, flags: dict[str, bool]) -> model.Server:
    v = dict(b.values)
    if "ipaddr6" in v:
        v["ipaddr"] = v.pop("ipaddr6")
    v["targets"] = tuple(t for _, ids in v["targets"] for t in ids)
    return model.Server(b.id, **v, **flags)


def _build_target(b: _Block, flags: dict[str, bool]) -> model.Target:
    v = dict(b.values)
    if "ipaddr6" in v:
        v["ipaddr"] = v.pop("ipaddr6")
    if "ping6" in v:
        v["ping"] = v.pop("ping6")
    checks = tuple(v.pop(key) for key in HEALTH_CHECKS if key in v)  # in canonical order
    return model.Target(b.id, checks=checks, **v, **flags)


def _build_bgp(b: _Block) -> model.Bgp:
    return model.Bgp(**b.values)


def _build_vrrp(b: _Block) -> model.Vrrp:
    v = dict(b.values)
    if "advert" in v:
        v["advert_ms"] = v.pop("advert")
    return model.Vrrp(**v)


@dataclass(frozen=True)
class _Kind:
    keys: dict[str, tuple[str, _Parse]]  # key -> (usage, value parser)
    required: tuple[str, ...] = ()
    has_id: bool = True
    module: str | None = None
    check: Callable[[_Block], Iterator[tuple[_Item | Token, str]]] | None = None
    build: Callable[[_Block, dict[str, bool]], Any] | None = None


_PROTOCOL = (f"protocol {'|'.join(PROTOCOLS)}", partial(_choice, choices=tuple(PROTOCOLS), what="protocol"))
_KINDS: dict[str, _Kind] = {
    "set": _Kind(
        {
            "control": ("control PATH", _control),
            "metrics": ("metrics ADDR:PORT|off", _metrics),
            "arprefresh": ("arprefresh SECONDS", partial(_seconds, what="arprefresh")),
            "arpexpire": ("arpexpire SECONDS", partial(_seconds, what="arpexpire")),
            "drainidle": ("drainidle SECONDS", partial(_seconds, what="drainidle")),
            "flows": ("flows 1..16777216", partial(_int, lo=1, hi=MAX_TABLE, what="flows")),
            "sessions": ("sessions 1..16777216", partial(_int, lo=1, hi=MAX_TABLE, what="sessions")),
            "embryonic": ("embryonic SECONDS", partial(_seconds, what="embryonic")),
            "hashseed": ("hashseed 0..4294967295|0xHEX", _seed),
            "sessionautoresync": (
                "sessionautoresync 0|1",
                partial(_int, lo=0, hi=1, what="sessionautoresync"),
            ),
            "sessionsyncack": ("sessionsyncack 0|1", partial(_int, lo=0, hi=1, what="sessionsyncack")),
            **{key: (f"{key} VALUE", lambda it: it.text) for key in IGNORED_SETTINGS},  # warned about
        },
        has_id=False,
    ),
    "interface": _Kind(
        {
            "name": ("name IFNAME", _ifname),
            "access": (f"access {'|'.join(ACCESS)}", partial(_choice, choices=ACCESS, what="access")),
            "threads": ("threads 1..64", partial(_int, lo=1, hi=64, what="threads")),
        },
        required=("name",),
        build=lambda b, flags: model.Interface(b.id, **b.values, **flags),
    ),
    "network": _Kind(
        {
            "name": ('name "TEXT"', lambda it: it.text),
            "addr": ("addr ADDRESS", partial(_ipv4, key6="addr6")),
            "mask": ("mask NETMASK|PREFIXLEN", _mask),
            "real": ("real ADDRESS", partial(_host, key6="real6")),
            "virt": ("virt ADDRESS", partial(_host, key6="virt6")),
            "addr6": ("addr6 ADDRESS6", partial(_ipv6, key4="addr")),
            "mask6": ("mask6 PREFIXLEN", partial(_int, lo=1, hi=128, what="mask6 prefix length")),
            "real6": ("real6 ADDRESS6", partial(_host6, key4="real")),
            "virt6": ("virt6 ADDRESS6", partial(_host6, key4="virt")),
            "syncpeer": ("syncpeer ADDRESS", _host),
            "interface": ("interface ID", partial(_int, lo=1, hi=MAX_ID, what="interface id")),
        },
        required=("addr", "mask", "real", "interface"),
        module="arp",
        check=_check_network,
        build=_build_network,
    ),
    "server": _Kind(
        {
            "ipaddr": ("ipaddr ADDRESS", partial(_host, key6="ipaddr6")),
            "ipaddr6": ("ipaddr6 ADDRESS6", partial(_host6, key4="ipaddr")),
            "port": ("port 1..65535", _port),
            "protocol": _PROTOCOL,
            "targets": ("targets LIST", _target_list),
            "method": (f"method {'|'.join(METHODS)}", partial(_choice, choices=METHODS, what="method")),
            "session": ("session SECONDS", partial(_seconds, what="session")),
        },
        required=("port", "protocol", "targets"),
        module="slb",
        check=_one_address,
        build=_build_server,
    ),
    "target": _Kind(
        {
            "ipaddr": ("ipaddr ADDRESS", partial(_host, key6="ipaddr6")),
            "ipaddr6": ("ipaddr6 ADDRESS6", partial(_host6, key4="ipaddr")),
            "port": ("port 1..65535", _port),
            "protocol": _PROTOCOL,
            "tcpopen": ("tcpopen PORT,INTERVAL,TIMEOUT", _tcpopen),
            "ping": ("ping INTERVAL,TIMEOUT", _ping),
            "ping6": ("ping6 INTERVAL,TIMEOUT", _ping),
            "http": ("http PORT,PATH,INTERVAL,TIMEOUT", _http),
            "dsr": ("dsr enable|disable", partial(_flag, on="enable", off="disable", what="dsr")),
            "weight": ("weight 1..1000", partial(_int, lo=1, hi=1000, what="weight")),
            "backup": ("backup", None),
        },
        module="slb",
        check=_check_target,
        build=_build_target,
    ),
    "vrrp": _Kind(
        {
            "vrid": ("vrid 1..255", partial(_int, lo=1, hi=255, what="vrid")),
            "priority": ("priority 1..254", partial(_int, lo=1, hi=254, what="priority")),
            "network": ("network ID", partial(_int, lo=1, hi=MAX_ID, what="network id")),
            "advert": ("advert MILLISECONDS", _advert),
            "preempt": ("preempt on|off", partial(_flag, on="on", off="off", what="preempt")),
            "version": ("version 2|3", partial(_int, lo=2, hi=3, what="version")),
            "family": (
                f"family {'|'.join(VRRP_FAMILIES)}",
                partial(_choice, choices=VRRP_FAMILIES, what="family"),
            ),
            "peers": ("peers ADDRESS[,ADDRESS...]", _peers),
        },
        required=("vrid", "priority", "network"),
        has_id=False,
        module="vrrp",
        check=_check_vrrp,
    ),
    "bgp": _Kind(
        {
            "device": ("device IFNAME", _ifname),
            "socket": ("socket PATH", partial(_control, what="BIRD socket")),
            "grace": ("grace SECONDS", partial(_seconds, what="grace")),
        },
        has_id=False,
    ),
    "gateway": _Kind(
        {"ipaddr": ("ipaddr ADDRESS", _host), "ping": ("ping INTERVAL,TIMEOUT", _ping)},
        has_id=False,
    ),
}
_BLOCKS = tuple(kind for kind in _KINDS if kind != "set")
_STATEMENTS = ("modules", "set", *_BLOCKS, *_ACTIONS)


# --- parser ------------------------------------------------------------------------------------------


@dataclass
class _Action:
    verb: Token
    kind: str
    elements: list[tuple[_Item, list[int]]]


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens, self.errors = tokenize(text)
        self.pos = 0
        self.comments = _leading_comments(text, self.tokens)
        self.warnings: list[tuple[int, int, str]] = []
        self.modules: tuple[Token, set[str]] | None = None
        self.blocks: dict[str, dict[int | None, _Block]] = {kind: {} for kind in _BLOCKS}
        self.settings = _Block("set", None, self.tokens[0])
        self.actions: list[_Action] = []
        self.flags: dict[tuple[str, int], dict[str, bool]] = {}
        self.bad_action = False  # a failed register/enable leaves the flags unknown: no cascade of errors

    def _error(self, at: _Item | Token, message: str) -> None:
        self.errors.append((at.line, at.col, message))

    def _peek(self) -> Token:
        return self.tokens[self.pos]

    def _line(self) -> list[Token]:
        """The tokens of one statement: up to a line break or a brace."""
        start = self.pos
        while self.tokens[self.pos].kind not in (NEWLINE, EOF, LBRACE, RBRACE):
            self.pos += 1
        return self.tokens[start : self.pos]

    def _skip_block(self) -> None:
        depth = 0
        while (tok := self._peek()).kind != EOF:
            self.pos += 1
            depth += {LBRACE: 1, RBRACE: -1}.get(tok.kind, 0)
            if depth == 0:
                return

    def _open_brace(self) -> Token | None:
        """The `{` of a block, also when it stands on the next line."""
        pos = self.pos
        while self.tokens[pos].kind == NEWLINE:
            pos += 1
        if self.tokens[pos].kind != LBRACE:
            return None
        self.pos = pos + 1
        return self.tokens[pos]

    def parse(self) -> None:
        while (tok := self._peek()).kind != EOF:
            if tok.kind == NEWLINE:
                self.pos += 1
            elif tok.kind == RBRACE:
                self._error(tok, "unbalanced '}': no block is open")
                self.pos += 1
            elif tok.kind == LBRACE:
                self._error(tok, "unexpected '{': a block starts with its kind, e.g. 'server 1 {'")
                self._skip_block()
            else:
                try:
                    self._statement(self._line())
                except _Fail as fail:
                    self.errors.append((fail.line, fail.col, fail.message))

    def _statement(self, words: list[Token]) -> None:
        head = words[0]
        if head.kind == STRING:
            raise _Fail(head, "a statement cannot start with a quoted string")
        if head.text == "modules":
            self._modules(words)
        elif head.text == "set":
            self._set(words)
        elif head.text in _ACTIONS:
            self._action(words)
        elif head.text in _BLOCKS:
            self._block(words)
        else:
            if self._peek().kind == LBRACE:
                self._skip_block()
            if head.text in UNSUPPORTED:
                raise _Fail(head, _unsupported(head.text))
            raise _Fail(head, f"unknown statement {_show(head.text)}{_suggest(head.text, _STATEMENTS)}")

    def _modules(self, words: list[Token]) -> None:
        head = words[0]
        if self.modules is not None:
            raise _Fail(head, f"duplicate 'modules' statement (first on line {self.modules[0].line})")
        have: set[str] = set()
        self.modules = (head, have)
        if len(words) != 2:
            at = head if len(words) < 2 else words[2]
            raise _Fail(at, f"expected 'modules NAME,NAME,...' with names from {','.join(MODULES)}")
        for el in _split(_item(words[1])):
            if el.text in MODULES:
                have.add(el.text)
            else:
                self._error(el, f"unknown module {_show(el.text)}{_suggest(el.text, MODULES)}")

    def _set(self, words: list[Token]) -> None:
        if len(words) > 1:
            self._key(self.settings, words[1:])
        elif brace := self._open_brace():
            self._body(self.settings, brace)
        else:
            raise _Fail(words[0], "'set' needs 'KEY VALUE' or a '{' block")

    def _action(self, words: list[Token]) -> None:
        verb = words[0]
        try:
            if len(words) != 3:
                at = verb if len(words) < 3 else words[3]
                raise _Fail(at, f"expected '{verb.text} KIND LIST', e.g. '{verb.text} targets 1,2'")
            kind = _ACTION_KINDS.get(words[1].text)
            if kind is None:
                raise _Fail(
                    words[1],
                    f"bad kind {_show(words[1].text)}: expected interface, network, server or target",
                )
            self.actions.append(_Action(verb, kind, _ids(_item(words[2]), f"{kind} id")))
        except _Fail:
            self.bad_action = True
            raise

    def _block(self, words: list[Token]) -> None:
        head, args = words[0], words[1:]
        kind = _KINDS[head.text]
        block = _Block(head.text, None, head)
        try:
            if kind.has_id:
                if not args:
                    raise _Fail(head, f"'{head.text}' needs an id: '{head.text} N {{'")
                block.id = _int(_item(args[0]), 1, MAX_ID, f"{head.text} id")
                args = args[1:]
            if args:
                raise _Fail(args[0], f"unexpected {_show(args[0].text)}: expected '{{'")
        except _Fail as fail:
            self.errors.append((fail.line, fail.col, fail.message))
        brace = self._open_brace()
        if brace is None:
            last = words[-1]
            self.errors.append((last.line, last.end, f"expected '{{' after '{head.text}'"))
            return
        self._body(block, brace)
        for at, message in kind.check(block) if kind.check else ():
            self._error(at, message)
        for key in kind.required:
            if key not in block.keys:
                self._error(head, f"{block.title} is missing '{key}'")
        if head.text == "gateway":
            self.warnings.append((head.line, head.col, "warning: gateway has no effect in DSR mode"))
        if kind.has_id and block.id is None:
            return
        table = self.blocks[head.text]
        if block.id in table:
            first = table[block.id].head
            self._error(head, f"duplicate {block.title} (first defined on line {first.line})")
        else:
            table[block.id] = block

    def _body(self, block: _Block, brace: Token) -> None:
        keys = _KINDS[block.kind].keys
        while (tok := self._peek()).kind != RBRACE:
            if tok.kind == NEWLINE:
                self.pos += 1
            elif tok.kind == EOF:
                self._error(brace, f"unbalanced '{{': {block.title} is never closed with '}}'")
                return
            elif tok.kind == LBRACE:
                self._error(tok, "unexpected '{' inside a block")
                self._skip_block()
            else:
                start = self.pos
                words = self._line()
                if self._starts_statement(words[0], keys):
                    where = f"'{tok.text}' on line {tok.line}"
                    self._error(brace, f"unbalanced '{{': {block.title} is not closed before {where}")
                    self.pos = start
                    return
                self._key(block, words)
        self.pos += 1

    def _starts_statement(self, word: Token, keys: dict[str, Any]) -> bool:
        """A top-level statement inside a block means its `}` was forgotten."""
        if word.kind != WORD or word.text in keys:
            return False
        if word.text in ("modules", "set", *_ACTIONS):
            return True
        pos = self.pos
        while self.tokens[pos].kind == NEWLINE:  # `target 2` with its `{` on the next line
            pos += 1
        return word.text in _BLOCKS and self.tokens[pos].kind == LBRACE

    def _key(self, block: _Block, words: list[Token]) -> None:
        key, args = words[0], [_item(t) for t in words[1:]]
        keys = _KINDS[block.kind].keys
        if key.kind == STRING:
            self._error(key, "a key cannot be a quoted string")
            return
        if key.text not in keys and key.text in UNSUPPORTED:
            self._error(key, _unsupported(key.text))
            return
        if key.text not in keys:
            self._error(key, f"unknown key {_show(key.text)} in {block.kind}{_suggest(key.text, keys)}")
            return
        if key.text in block.keys:
            first = block.keys[key.text]
            self._error(key, f"duplicate key '{key.text}' (first on line {first.line})")
            return
        block.keys[key.text] = key
        usage, parse = keys[key.text]
        count = 0 if parse is None else 1
        try:
            if len(args) < count:
                raise _Fail(key, f"'{key.text}' needs a value: '{usage}'")
            if len(args) > count:
                raise _Fail(args[count], f"unexpected {_show(args[count].text)}: expected '{usage}'")
            block.values[key.text] = True if parse is None else parse(args[0])
        except _Fail as fail:
            self.errors.append((fail.line, fail.col, fail.message))
        if args:
            block.items[key.text] = args[0]

    # --- whole-file checks -----------------------------------------------------------------------

    def resolve(self) -> None:
        self._check_modules()
        self._apply_actions()
        interfaces, networks = self.blocks["interface"], self.blocks["network"]
        for b in networks.values():
            if "interface" in b.values and b.values["interface"] not in interfaces:
                self._error(b.items["interface"], f"interface {b.values['interface']} is not defined")
        for b in self.blocks["vrrp"].values():
            if "network" in b.values and b.values["network"] not in networks:
                self._error(b.items["network"], f"network {b.values['network']} is not defined")
            self._check_peers(b, networks.get(b.values.get("network")))
            network = networks.get(b.values.get("network"))
            if b.values.get("family") == "ipv6" and network is not None and "real6" not in network.values:
                self._error(
                    b.items["family"],
                    f"family ipv6 needs network {network.id} to have 'real6' and 'mask6': VRRP over IPv6 "
                    "protects the network's IPv6 addresses (virt6, IPv6 VIPs)",
                )
        self._check_ha_mode()
        self._check_sync()
        self._check_ipv6()
        self._check_servers()
        self._check_access()
        self._check_capacity()
        self._check_serving()

    def _check_peers(self, vrrp: _Block, network: _Block | None) -> None:
        """Peers are other balancers: not this one's real address nor the shared virt. Without peers any
        host on the segment can take over with a forged advert: a warning."""
        if "peers" not in vrrp.keys:
            example = (
                "their link-local addresses, e.g. 'peers fe80::5054:ff:fe00:2'"
                if vrrp.values.get("family") == "ipv6"
                else "e.g. 'peers 172.16.1.251'"
            )
            self.warnings.append(
                (
                    vrrp.head.line,
                    vrrp.head.col,
                    "warning: vrrp has no 'peers': any host on the segment can take over the shared "
                    f"addresses with a forged advert; list the other balancers, {example}",
                )
            )
            return
        if network is None or "peers" not in vrrp.values:
            return
        for el in _split(vrrp.items["peers"]):
            for key, what in (("real", "this balancer's own address"), ("virt", "the shared address")):
                if str(network.values.get(key)) == el.text:
                    self._error(el, f"peer {el.text} is {what} ({key} of network {network.id})")

    def _check_ha_mode(self) -> None:
        """One HA mode per balancer: VRRP moves the addresses between two nodes by ARP, BGP has every node
        announce them to a router; both at once would have the VRRP backup attract traffic too."""
        vrrp, bgp = self.blocks["vrrp"].get(None), self.blocks["bgp"].get(None)
        if vrrp is None or bgp is None:
            return
        first, second = sorted((vrrp, bgp), key=lambda b: (b.head.line, b.head.col))
        self._error(
            second.head,
            f"mixed HA modes: {second.kind} and {first.kind} (line {first.head.line}) in one file; "
            "keep one of the two blocks",
        )

    def _check_sync(self) -> None:
        """bngsync runs between the two nodes of a VRRP pair; BalanceNG's ignored `set` keys are said."""
        for key, why in IGNORED_SETTINGS.items():
            if key in self.settings.keys:
                self._warn(self.settings.keys[key], f"'{key}' is ignored: {why}")
        if self.blocks["vrrp"]:
            return
        for b in self.blocks["network"].values():
            if "syncpeer" in b.keys:
                self._error(
                    b.keys["syncpeer"],
                    "syncpeer needs a 'vrrp' block: bngsync runs between a master and its backup",
                )

    def _check_ipv6(self) -> None:
        """An IPv6 server or target needs the balancer's own IPv6 address (`real6`): the source of its
        neighbour solicitations and health checks. HA mode bgp announces IPv4 VIPs only."""
        has_real6 = any("real6" in b.values for b in self.blocks["network"].values())
        bgp = self.blocks["bgp"].get(None)
        for kind in ("server", "target"):
            for b in self.blocks[kind].values():
                if "ipaddr6" not in b.values:
                    continue
                if not has_real6:
                    self._error(
                        b.keys["ipaddr6"],
                        f"{b.title} is IPv6 but no network has 'real6' and 'mask6' (the balancer's own IPv6 "
                        "address: source of neighbour solicitations and health checks)",
                    )
                if kind == "server" and bgp is not None:
                    self._error(
                        b.keys["ipaddr6"], f"HA mode bgp (line {bgp.head.line}) announces IPv4 VIPs only"
                    )

    def _check_modules(self) -> None:
        if self.modules is None:
            self.errors.append((1, 1, "missing 'modules' statement, e.g. 'modules arp,hc,ping,slb,vrrp'"))
            return
        head, have = self.modules
        hint = f"add it to 'modules' on line {head.line}"
        for kind, table in self.blocks.items():
            need = _KINDS[kind].module
            for b in table.values():
                if need and need not in have:
                    self._error(b.head, f"{kind} needs module '{need}': {hint}")
                for key, module in {**CHECK_MODULES, "ping6": CHECK_MODULES["ping"]}.items():
                    if kind == "target" and key in b.keys and module not in have:
                        self._error(b.keys[key], f"'{key}' needs module '{module}': {hint}")

    def _apply_actions(self) -> None:
        """register/enable in file order; an object must be defined before it is named."""
        for action in self.actions:
            flag, value = _ACTIONS[action.verb.text]
            table = self.blocks[action.kind]
            for el, ids in action.elements:
                missing = [i for i in ids if i not in table]
                later = [i for i in ids if i in table and _after(table[i].head, action.verb)]
                if missing:
                    self._error(el, f"{_plural(action.kind, missing)} not defined")
                if later:
                    verb = action.verb.text
                    self._error(
                        el, f"{_plural(action.kind, later)} defined only later: define before '{verb}'"
                    )
                for i in ids:
                    if i in table:
                        flags = self.flags.setdefault(
                            (action.kind, i), {"registered": False, "enabled": False}
                        )
                        flags[flag] = value

    def _registered(self, kind: str, ident: int) -> bool:
        return self.flags.get((kind, ident), {}).get("registered", False)

    def _check_servers(self) -> None:
        targets = self.blocks["target"]
        addresses: dict[tuple[Any, ...], int] = {}
        users: dict[int, int] = {}  # target -> first server that uses it
        for sid, s in sorted(self.blocks["server"].items()):
            v = s.values
            for el, ids in v.get("targets", ()):
                missing = [t for t in ids if t not in targets]
                if missing:
                    self._error(el, f"{_plural('target', missing)} not defined")
                unregistered = [t for t in ids if t in targets and not self._registered("target", t)]
                if unregistered and self._registered("server", sid) and not self.bad_action:
                    self._error(el, f"{_plural('target', unregistered)} not registered")
                for t in ids:
                    if t in targets:
                        users.setdefault(t, sid)
                        self._check_same(targets[t], s)
            address = (_address(s), v.get("port"), v.get("protocol"))
            if None not in address and address in addresses:
                where = f"{address[0]}:{address[1]}/{address[2]}"
                self._error(
                    s.head, f"server {sid} has the same address {where} as server {addresses[address]}"
                )
            addresses.setdefault(address, sid)
        for t, sid in sorted(users.items()):
            b = targets[t]
            if "dsr" not in b.keys or b.values.get("dsr") is False:
                self._error(
                    b.keys.get("dsr", b.head),
                    f"target {t} is used by server {sid} but lacks 'dsr enable': only DSR mode is supported",
                )

    def _check_access(self) -> None:
        """The kernel fast path can only hash: servers that pick per connection need the Python one."""
        kernel = [
            i for i, b in sorted(self.blocks["interface"].items()) if b.values.get("access") == "nftables"
        ]
        if not kernel:
            return
        for s in self.blocks["server"].values():
            method = s.values.get("method")
            if method is not None and method not in STATELESS_METHODS:
                self._error(
                    s.items["method"],
                    f"method {method} needs access raw: access nftables (interface {kernel[0]}) picks "
                    f"targets by a hash of the client address ({_alternatives(STATELESS_METHODS)})",
                )

    def _check_capacity(self) -> None:
        """What parses but the daemon cannot run: more addresses than its packet filter holds."""

        seen = {
            b.values.get(key)
            for i, b in self.blocks["network"].items()
            if self._serving("network", i)
            for key in ("virt", "virt6")
        }
        seen.discard(None)
        first: tuple[int, _Item] | None = None  # the server whose VIP is one too many
        for sid, s in self.blocks["server"].items():
            vip = _address(s)
            if self._serving("server", sid) and vip is not None and vip not in seen:
                seen.add(vip)
                if len(seen) == MAX_ADDRESSES + 1:
                    first = sid, s.items["ipaddr6" if vip.version == 6 else "ipaddr"]
        if first is not None:
            self._error(
                first[1],
                f"server {first[0]}: {len(seen)} addresses to answer for (VIPs and virt), "
                f"the packet filter holds at most {MAX_ADDRESSES}",
            )

    def _serving(self, kind: str, ident: int | None) -> bool:
        flags = self.flags.get((kind, ident or 0), {})
        return flags.get("registered", False) and flags.get("enabled", False)

    def _warn(self, at: _Item | Token, message: str) -> None:
        self.warnings.append((at.line, at.col, f"warning: {message}"))

    def _check_serving(self) -> None:
        """Warnings for what loads but serves nothing: objects left unregistered or disabled, no server,
        VIPs the balancer cannot answer ARP for or that are some host's own address."""
        start = self.modules[0] if self.modules else self.tokens[0]
        for kind in ("interface", "network", "server", "target"):
            for i, b in sorted(self.blocks[kind].items()):
                flags = self.flags.get((kind, i or 0), {})
                verbs = [verb for verb in ("register", "enable") if not flags.get(_ACTIONS[verb][0])]
                if verbs:
                    add = " and ".join(f"'{verb} {b.title}'" for verb in verbs)
                    state = (
                        "neither registered nor enabled"
                        if len(verbs) == 2
                        else f"not {_ACTIONS[verbs[0]][0]}"
                    )
                    self._warn(b.head, f"{b.title} is {state}: it is not used (add {add})")
        if not any(self._serving("interface", i) for i in self.blocks["interface"]):
            self._warn(start, "no interface is registered and enabled: the daemon needs one to start")
        servers = self.blocks["server"]
        if not any(self._serving("server", i) for i in servers):
            what = "no server is registered and enabled" if servers else "no server is defined"
            self._warn(start, f"this config serves nothing: {what}")
        networks: list[tuple[int, IPv4Network | IPv6Network, _Block]] = []
        for i, b in sorted(self.blocks["network"].items()):
            for addr, mask in (("addr", "mask"), ("real6", "mask6")):
                if addr in b.values and mask in b.values:
                    networks.append((i, ip_network((b.values[addr], b.values[mask]), strict=False), b))
        owners = {
            _address(b): f"the address of target {i}"
            for i, b in self.blocks["target"].items()
            if _address(b) is not None
        }
        owners.update(
            {
                b.values[key]: f"the balancer's own address ({key} of network {i})"
                for i, _, b in networks
                for key in ("real", "real6")
                if key in b.values
            }
        )
        for sid, s in sorted(servers.items()):
            if not self._serving("server", sid):
                continue
            listed = [t for _, ids in s.values.get("targets", ()) for t in ids]
            if listed and not any(self._serving("target", t) for t in listed):
                self._warn(
                    s.head,
                    f"server {sid} serves nothing: none of its targets "
                    f"{_ranges(listed)} is registered and enabled",
                )
            vip = _address(s)
            if vip is None:
                continue
            at = s.items["ipaddr6" if vip.version == 6 else "ipaddr"]
            family = [net for _, net, _ in networks if net.version == vip.version]
            if networks and not any(vip in net for net in family):
                nets = ", ".join(str(net) for net in family) or f"no IPv{vip.version} network"
                self._warn(
                    at,
                    f"server {sid} VIP {vip} is outside every network ({nets}): "
                    "no client on the segment reaches it through this balancer",
                )
            if vip in owners:
                self._warn(
                    at, f"server {sid} VIP {vip} is {owners[vip]}: a VIP must be an address of its own"
                )

    def _check_same(self, target: _Block, server: _Block) -> None:
        """Only Ethernet addresses change in DSR, so a target cannot listen elsewhere than its VIP, nor
        on another IP version."""
        mine, theirs = _address(target), _address(server)
        if mine is not None and theirs is not None and mine.version != theirs.version:
            key = "ipaddr6" if mine.version == 6 else "ipaddr"
            self._error(
                target.items[key],
                f"target {target.id} is IPv{mine.version}, server {server.id} IPv{theirs.version} "
                f"({theirs}): DSR does not translate it",
            )
        for key in ("port", "protocol"):
            mine, theirs = target.values.get(key), server.values.get(key)
            if mine is not None and theirs is not None and mine != theirs:
                self._error(
                    target.items[key],
                    f"target {target.id} {key} {mine} differs from server {server.id} ({theirs}): "
                    "DSR does not translate it",
                )

    def build(self, source: str) -> model.Config:
        def objects(kind: str) -> dict[int, Any]:
            build = _KINDS[kind].build
            assert build is not None
            return {i: build(b, self.flags.get((kind, i), {})) for i, b in self.blocks[kind].items()}

        vrrp, bgp = self.blocks["vrrp"].get(None), self.blocks["bgp"].get(None)
        assert self.modules is not None
        settings = {k: v for k, v in self.settings.values.items() if k not in IGNORED_SETTINGS}
        return model.Config(
            source=source,
            modules=frozenset(self.modules[1]),
            settings=model.Settings(**settings),
            interfaces=objects("interface"),
            networks=objects("network"),
            servers=objects("server"),
            targets=objects("target"),
            vrrp=_build_vrrp(vrrp) if vrrp else None,
            bgp=_build_bgp(bgp) if bgp else None,
            comments=self.comments,
            warnings=tuple(
                f"{source}:{line}:{col}: {message}" for line, col, message in sorted(self.warnings)
            ),
        )


def _leading_comments(text: str, tokens: list[Token]) -> tuple[str, ...]:
    """The comment lines above the first statement: a file's header (e.g. "managed by Ansible"), which
    `render` keeps so that a written file and its canonical form can be the same bytes."""
    first = next(tok for tok in tokens if tok.kind != NEWLINE)
    return tuple(line.strip() for line in text.split("\n")[: first.line - 1] if line.strip())


def _item(tok: Token) -> _Item:
    return _Item(tok.text, tok.line, tok.vcol)


def _unsupported(key: str) -> str:
    feature, instead = UNSUPPORTED[key]
    return f"not supported by dsrlb: {feature} ('{key}'; {instead})"


def _order(error: tuple[int, int, str]) -> tuple[bool, int, int, str]:
    """By position, root causes (an unclosed block) first: later errors may only follow from them."""
    line, col, message = error
    return (not message.startswith(_ROOT_CAUSES), line, col, message)


def _address(b: _Block) -> IPv4Address | IPv6Address | None:
    """A server's or target's address, whichever of `ipaddr` and `ipaddr6` holds it."""
    return b.values.get("ipaddr", b.values.get("ipaddr6"))


def _after(a: Token, b: Token) -> bool:
    return (a.line, a.col) > (b.line, b.col)


# --- public API --------------------------------------------------------------------------------------


def parse_text(text: str, source: str = "<string>") -> model.Config:
    """Parse config text; `source` names it in messages. Raises ConfigError with every problem found."""
    parser = _Parser(text)
    parser.parse()
    parser.resolve()
    if parser.errors:
        raise ConfigError(
            [f"{source}:{line}:{col}: {msg}" for line, col, msg in sorted(set(parser.errors), key=_order)]
        )
    return parser.build(source)


def parse_file(path: str) -> model.Config:
    """Parse a config file; an unreadable or non-UTF-8 file is a ConfigError too."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror or err}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: cannot read: larger than {MAX_FILE_BYTES >> 20} MiB"])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line, col = (
            data.count(b"\n", 0, err.start) + 1,
            len(data[line_start : err.start].decode(errors="replace")) + 1,
        )
        raise ConfigError([f"{path}:{line}:{col}: not UTF-8 text (byte 0x{data[err.start]:02x})"]) from None
    return parse_text(text, path)


# --- canonical text ----------------------------------------------------------------------------------


def _word(text: str) -> str:
    if _BARE.fullmatch(text) and not text.startswith("//"):
        return text
    if '"' in text or "\n" in text:
        raise ValueError(f"cannot write {text!r} in a config: it contains '\"' or a line break")
    return f'"{text}"'


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _check_text(check: model.HealthCheck) -> str:
    timing = f"{_num(check.interval)},{_num(check.timeout)}"
    if check.kind == "ping":
        return timing
    if check.kind == "http":
        return _word(f"{check.port},{check.path},{timing}")
    return f"{check.port},{timing}"


_Key = tuple[str, Any, str]  # key, model value (None: left out), text


def _plain(obj: Any, *names: str) -> list[_Key]:
    return [(name, getattr(obj, name), str(getattr(obj, name))) for name in names]


def _interface_keys(ifc: model.Interface) -> list[_Key]:
    return [
        ("name", ifc.name, _word(ifc.name)),
        ("access", ifc.access, _word(ifc.access)),
        *_plain(ifc, "threads"),
    ]


def _network_keys(net: model.Network) -> list[_Key]:
    return [
        ("name", net.name, _word(net.name)),
        ("addr", net.network, str(net.network.network_address)),
        ("mask", net.network, str(net.network.netmask)),
        *_plain(net, "real", "virt"),
        ("mask6", net.network6, str(net.network6.prefixlen) if net.network6 else ""),
        *_plain(net, "real6", "virt6", "syncpeer", "interface"),
    ]


def _ipaddr(obj: model.Server | model.Target) -> _Key:
    return ("ipaddr6" if obj.ipaddr.version == 6 else "ipaddr", obj.ipaddr, str(obj.ipaddr))


def _server_keys(srv: model.Server) -> list[_Key]:
    return [
        _ipaddr(srv),
        *_plain(srv, "port", "protocol"),
        ("targets", srv.targets, _ranges(list(srv.targets))),
        ("method", srv.method, srv.method),
        ("session", srv.session, _num(srv.session)),
    ]


def _target_keys(tgt: model.Target) -> list[_Key]:
    return [
        _ipaddr(tgt),
        *_plain(tgt, "port", "protocol"),
        *(
            (
                "ping6" if check.kind == "ping" and tgt.ipaddr.version == 6 else check.kind,
                check,
                _check_text(check),
            )
            for check in tgt.checks
        ),
        ("dsr", tgt.dsr or None, "enable"),
        *_plain(tgt, "weight"),
        ("backup", tgt.backup or None, ""),
    ]


def _vrrp_keys(vrrp: model.Vrrp) -> list[_Key]:
    return [
        *_plain(vrrp, "vrid", "priority", "network"),
        ("advert", vrrp.advert_ms, str(vrrp.advert_ms)),
        ("preempt", vrrp.preempt, "on" if vrrp.preempt else "off"),
        *_plain(vrrp, "version", "family"),
        ("peers", vrrp.peers or None, ",".join(map(str, vrrp.peers))),
    ]


def _bgp_keys(bgp: model.Bgp) -> list[_Key]:
    return [
        ("device", bgp.device, _word(bgp.device)),
        ("socket", bgp.socket, _word(bgp.socket)),
        ("grace", bgp.grace, _num(bgp.grace)),
    ]


def _block_text(head: str, kind: str, keys: list[_Key]) -> list[str]:
    """A blank line, then the block with the keys that are set and differ from their default."""
    default = DEFAULTS.get(kind, {})
    lines = [
        f"    {key} {text}".rstrip() for key, value, text in keys if value not in (None, default.get(key))
    ]
    return ["", f"{head} {{", *lines, "}"]


def _flag_lines(kind: str, table: dict[int, Any]) -> list[str]:
    lines = []
    for verb, flag in (("register", "registered"), ("enable", "enabled")):
        ids = sorted(i for i, obj in table.items() if getattr(obj, flag))
        if ids:
            lines.append(f"{verb} {kind if len(ids) == 1 else kind + 's'} {_ranges(ids)}")
    return lines


def render(config: model.Config) -> str:
    """Canonical config text for `config`; `parse_text(render(c))` equals `c` up to source and warnings.

    Equal configs give equal text, and the Ansible module (plugins/module_utils/config_render.py)
    writes the same bytes for the same objects (tests/contract checks both). In this order: the
    leading `//` comment lines (stripped); `modules` in the order of `vocabulary.MODULES`; one
    `set KEY VALUE` line per setting that differs from its default; per kind (interface, network,
    server, target) each block by id, preceded by a blank line, then `register` and `enable` with the
    sorted ids of the objects that have the flag (singular kind for one id, plural with `1,2` / `1-4`
    lists otherwise); last the HA block, vrrp or bgp (a file has at most one). Blocks hold one
    `key value` per line, indented by four spaces, in the order of the language reference, health
    checks as tcpopen, ping, http; optional keys appear only when they differ from their default in
    `vocabulary.DEFAULTS` (`dsr enable` and `backup` when set). Masks are dotted, id lists use ranges
    for runs of three or more, seconds are written without a fraction when whole. Strings are bare
    words when possible, else quoted; a string with `"`
    or a line break is a ValueError.
    """
    out = [*config.comments, f"modules {','.join(name for name in MODULES if name in config.modules)}"]
    for key, default in DEFAULTS["set"].items():
        value = getattr(config.settings, key)
        if value != default:
            out.append(f"set {key} {_word(value) if isinstance(value, str) else _num(value)}")
    for kind, table, keys in (
        ("interface", config.interfaces, _interface_keys),
        ("network", config.networks, _network_keys),
        ("server", config.servers, _server_keys),
        ("target", config.targets, _target_keys),
    ):
        for i in sorted(table):
            out += _block_text(f"{kind} {i}", kind, keys(table[i]))
        out += _flag_lines(kind, table)
    if config.vrrp:
        out += _block_text("vrrp", "vrrp", _vrrp_keys(config.vrrp))
    if config.bgp:
        out += _block_text("bgp", "bgp", _bgp_keys(config.bgp))
    return "\n".join(out) + "\n"
