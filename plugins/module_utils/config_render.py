# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structured (inventory-derived) data -> canonical dsrlb config text.

The text is the daemon's canonical form, byte for byte what `dsrlb check --canonical` prints for it
(tests/contract holds the two writers to that): objects sorted by id, a fixed key order per block,
keys at their default left out, lists written one way. So the same data always yields the same bytes,
the module is idempotent and its diffs are meaningful. Values are checked here only as far as needed
to keep the syntax intact (no stray braces, quotes or whitespace) and to give early messages;
`dsrlb check` judges the rest.
"""

from __future__ import annotations

import ipaddress
import math
import re
import typing as t

from ansible_collections.dsrlb.fleet.plugins.module_utils.vocabulary import (
    ACCESS,
    CHECK_MODULES,
    DEFAULTS,
    METHODS,
    MODULES,
    PROTOCOLS,
    SETTINGS,
    VRRP_FAMILIES,
)

# A leading comment: the daemon keeps the comment lines above the first statement in canonical text.
HEADER = "// managed by Ansible (dsrlb.fleet.balancer_config): local changes will be overwritten"
_WORD = re.compile(r"^[A-Za-z0-9_.:/@%+=-]+$")
_BARE = re.compile(r'[^\s{}"]+')  # what the daemon writes without quotes
_IDLIST = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")
_CHOICES = {"access": ACCESS, "protocol": tuple(PROTOCOLS), "method": METHODS, "family": VRRP_FAMILIES}
_CHECK_FIELDS = {
    "tcpopen": ("PORT", "INTERVAL", "TIMEOUT"),
    "ping": ("INTERVAL", "TIMEOUT"),
    "ping6": ("INTERVAL", "TIMEOUT"),
    "http": ("PORT", "PATH", "INTERVAL", "TIMEOUT"),
}

# Per block kind: (keyword, option name, ((key, value kind), ...)) in canonical key order.
BLOCKS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("interface", "interfaces", (("name", "word"), ("access", "choice"), ("threads", "int"))),
    (
        "network",
        "networks",
        (
            ("name", "text"),
            ("addr", "ip"),
            ("mask", "mask"),
            ("real", "ip"),
            ("virt", "ip"),
            ("mask6", "int"),
            ("real6", "ip"),
            ("virt6", "ip"),
            ("syncpeer", "ip"),
            ("interface", "int"),
        ),
    ),
    (
        "server",
        "servers",
        (
            ("ipaddr", "ip"),
            ("ipaddr6", "ip"),
            ("port", "int"),
            ("protocol", "choice"),
            ("targets", "idlist"),
            ("method", "choice"),
            ("session", "number"),
        ),
    ),
    (
        "target",
        "targets",
        (
            ("ipaddr", "ip"),
            ("ipaddr6", "ip"),
            ("port", "int"),
            ("protocol", "choice"),
            *((check, "check") for check in CHECK_MODULES),
            ("ping6", "check"),
            ("dsr", "enable"),
            ("weight", "int"),
            ("backup", "flag"),
        ),
    ),
)
VRRP_KEYS = (
    ("vrid", "int"),
    ("priority", "int"),
    ("network", "int"),
    ("advert", "int"),
    ("preempt", "onoff"),
    ("version", "int"),
    ("family", "choice"),
    ("peers", "iplist"),
)
# HA mode bgp (dsrlb extension): the daemon's TUN device, BIRD's control socket, grace seconds.
BGP_KEYS = (("device", "word"), ("socket", "word"), ("grace", "number"))
ITEM_FLAGS = ("id", "registered", "enabled")


class RenderError(ValueError):
    """Input that cannot become a valid config; the message names the offending field."""


def _number(value: t.Any, where: str, integer: bool) -> str:
    """Whole numbers without a fraction, others as Python's shortest repr: the daemon's format."""
    if isinstance(value, bool):
        raise RenderError(f"{where}: expected a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RenderError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (integer and number != int(number)):
        raise RenderError(
            f"{where}: expected a non-negative {'integer' if integer else 'number'}, got {value!r}"
        )
    return str(int(number)) if number == int(number) else repr(number)


def _word(value: t.Any, where: str) -> str:
    text = str(value)
    if not _WORD.match(text):
        raise RenderError(f"{where}: {text!r} must be a single word without spaces, quotes, commas or braces")
    return text


def _text(value: t.Any, where: str) -> str:
    """A bare word when the daemon reads it as one, else quoted (the config language has no escapes)."""
    text = str(value)
    if _BARE.fullmatch(text) and not text.startswith("//"):
        return text
    if '"' in text or "\n" in text:
        raise RenderError(f"{where}: {text!r} must not contain double quotes or line breaks")
    return f'"{text}"'


def _bool(value: t.Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "on", "1", "enable"):
        return True
    if text in ("no", "false", "off", "0", "disable"):
        return False
    raise RenderError(f"{where}: expected a boolean, got {value!r}")


def _ranges(ids: list[int]) -> str:
    """Ids as a list, in their order; runs of three or more become ranges (1,2 stays 1,2)."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            run = ids[start:i]
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
            start = i
    return ",".join(parts)


def _idlist(value: t.Any, where: str) -> str:
    if isinstance(value, (list, tuple)):
        parts = [_number(part, where, integer=True) for part in value]
    else:
        text = str(value).replace(" ", "")
        if not _IDLIST.match(text):
            raise RenderError(f"{where}: {value!r} must be a list of ids such as [1, 2] or '1,2' or '1-4'")
        parts = text.split(",")
    ids: list[int] = []
    for part in parts:
        bounds = [int(bound) for bound in part.split("-")]
        if bounds[-1] < bounds[0]:
            raise RenderError(f"{where}: range {part} runs backwards")
        ids.extend(range(bounds[0], bounds[-1] + 1))
    if not ids:
        raise RenderError(f"{where}: must not be empty")
    return _ranges(ids)


def _check(key: str, value: t.Any, where: str) -> str:
    """`PORT,INTERVAL,TIMEOUT` and the like from a string or a list; an http path may hold commas."""
    fields = _CHECK_FIELDS[key]
    parts = [
        str(part).strip() for part in (value if isinstance(value, (list, tuple)) else str(value).split(","))
    ]
    if "PATH" in fields and len(parts) > len(fields):
        parts = [parts[0], ",".join(parts[1:-2]), *parts[-2:]]
    if len(parts) != len(fields):
        raise RenderError(f"{where}: {value!r} must be {','.join(fields)}")
    text = ",".join(
        part if fields[i] == "PATH" else _number(part, where, integer=fields[i] == "PORT")
        for i, part in enumerate(parts)
    )
    return _text(text, where) if "PATH" in fields else text


def _ip(value: t.Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise RenderError(f"{where}: {value!r} is not an IP address") from None


def _iplist(value: t.Any, where: str) -> str | None:
    """IP addresses from a list or an `A,B` string, sorted as the daemon writes them (IPv4 first: with
    VRRP family ipv6 the peers are IPv6 link-local addresses); empty: no line."""
    parts = (
        value
        if isinstance(value, (list, tuple))
        else [p for p in str(value).replace(" ", "").split(",") if p]
    )
    addresses = []
    for part in parts:
        try:
            addresses.append(ipaddress.ip_address(str(part).strip()))
        except ValueError:
            raise RenderError(f"{where}: {part!r} is not an IP address") from None
    if len(set(addresses)) != len(addresses):
        raise RenderError(f"{where}: an address is listed twice in {value!r}")
    ordered = sorted(addresses, key=lambda a: (a.version, int(a)))
    return ",".join(str(address) for address in ordered) or None


def _mask(value: t.Any, where: str) -> str:
    """Dotted, as the daemon writes it, also when given as a prefix length."""
    try:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{value}").netmask)
    except ValueError:
        raise RenderError(f"{where}: {value!r} is not a netmask such as 255.255.255.0 or 24") from None


def _format(kind: str, key: str, value: t.Any, where: str) -> str | None:
    """The text after the key in a block line, or None when the line is omitted (false flags)."""
    if kind == "word":
        return _word(value, where)
    if kind == "text":
        return _text(value, where)
    if kind == "choice":
        if value not in _CHOICES[key]:
            raise RenderError(f"{where}: {value!r} is not one of {', '.join(_CHOICES[key])}")
        return value
    if kind in ("int", "number"):
        return _number(value, where, integer=kind == "int")
    if kind == "ip":
        return _ip(value, where)
    if kind == "iplist":
        return _iplist(value, where)
    if kind == "mask":
        return _mask(value, where)
    if kind == "check":
        return _check(key, value, where)
    if kind == "idlist":
        return _idlist(value, where)
    if kind == "enable":
        return "enable" if _bool(value, where) else None
    if kind == "flag":
        return "" if _bool(value, where) else None
    if kind == "onoff":
        return "on" if _bool(value, where) else "off"
    raise AssertionError(f"unknown value kind {kind}")


def _key_lines(
    block: str, keys: t.Sequence[tuple[str, str]], item: dict[str, t.Any], where: str, indent: str = "    "
) -> list[str]:
    """`key value` lines in `keys` order, leaving out absent keys, false flags and default values."""
    defaults = DEFAULTS.get(block, {})
    lines = []
    for key, kind in keys:
        if item.get(key) is None:
            continue
        text = _format(kind, key, item[key], f"{where}.{key}")
        if text is not None and (key not in defaults or text != _format(kind, key, defaults[key], key)):
            lines.append(f"{indent}{key} {text}".rstrip())
    return lines


def _block_lines(
    keyword: str,
    header: str,
    keys: tuple[tuple[str, str], ...],
    item: dict[str, t.Any],
    where: str,
    flags: tuple[str, ...],
) -> list[str]:
    known = {pair[0] for pair in keys}
    unknown = sorted(set(item) - known - set(flags))
    if unknown:
        raise RenderError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return ["", header + " {", *_key_lines(keyword, keys, item, where), "}"]


def _normalise_network(item: dict[str, t.Any], where: str) -> dict[str, t.Any]:
    """Accept `addr: 172.16.1.0/24` as shorthand for addr + mask, as inventories usually hold CIDRs."""
    addr = item.get("addr")
    if addr is None or "/" not in str(addr):
        return item
    if item.get("mask") is not None:
        raise RenderError(f"{where}: give either addr in CIDR form or addr + mask, not both")
    try:
        net = ipaddress.ip_network(str(addr), strict=True)
    except ValueError as err:
        raise RenderError(f"{where}.addr: {err}") from None
    return dict(item, addr=str(net.network_address), mask=str(net.netmask))


def _normalise_address(item: dict[str, t.Any], where: str) -> dict[str, t.Any]:
    """An IPv6 `ipaddr` is written as BalanceNG's `ipaddr6`, and its `ping` check as `ping6`, so that an
    inventory lists servers and targets of both families alike."""
    try:
        version = ipaddress.ip_address(str(item.get("ipaddr"))).version
    except ValueError:
        return item  # absent or bad: _ip says so
    if version != 6:
        return item
    if item.get("ipaddr6") is not None:
        raise RenderError(f"{where}: give either ipaddr or ipaddr6, not both")
    moved = {
        ("ping6" if key == "ping" else "ipaddr6" if key == "ipaddr" else key): v for key, v in item.items()
    }
    if item.get("ping") is not None and item.get("ping6") is not None:
        raise RenderError(f"{where}: give either ping or ping6, not both")
    return moved


def _items(spec: dict[str, t.Any], option: str) -> list[dict[str, t.Any]]:
    items = spec.get(option) or []
    if not isinstance(items, list):
        raise RenderError(f"{option}: expected a list of objects")
    seen: set[int] = set()
    result = []
    for index, item in enumerate(items):
        where = f"{option}[{index}]"
        if not isinstance(item, dict) or item.get("id") is None:
            raise RenderError(f"{where}: every entry needs an integer id")
        item_id = int(_number(item["id"], f"{where}.id", integer=True))
        if item_id in seen:
            raise RenderError(f"{where}: id {item_id} is used twice in {option}")
        seen.add(item_id)
        result.append(dict(item, id=item_id))
    return sorted(result, key=lambda item: item["id"])


def _flag_lines(keyword: str, option: str, items: list[dict[str, t.Any]]) -> list[str]:
    """`register` then `enable`, each with the ids that have the flag; only registered ones are enabled."""
    registered = [
        i["id"] for i in items if _bool(i.get("registered", True), f"{option}[id={i['id']}].registered")
    ]
    enabled = [
        i["id"]
        for i in items
        if i["id"] in registered and _bool(i.get("enabled", True), f"{option}[id={i['id']}].enabled")
    ]
    return [
        f"{verb} {keyword + 's' if len(ids) > 1 else keyword} {_ranges(ids)}"
        for verb, ids in (("register", registered), ("enable", enabled))
        if ids
    ]


def derive_modules(spec: dict[str, t.Any]) -> list[str]:
    """The BalanceNG modules the config needs: DSR always needs slb and arp, checks and VRRP add theirs."""
    needed = {"arp", "slb"}
    for target in spec.get("targets") or []:
        checks = {**CHECK_MODULES, "ping6": CHECK_MODULES["ping"]}
        needed.update(module for check, module in checks.items() if target.get(check) is not None)
    if spec.get("vrrp"):
        needed.add("vrrp")
    return [name for name in MODULES if name in needed]


_SETTING_KINDS = {float: "number", int: "int"}  # by the type of a `set` key's default; else text


def render(spec: dict[str, t.Any]) -> str:
    """Canonical config text for `spec` (keys: modules, settings, interfaces, networks, servers,
    targets, and one HA block: vrrp or bgp), raising RenderError with the path of the first bad field."""
    modules = spec.get("modules") or derive_modules(spec)
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        raise RenderError(f"modules: unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    lines = [HEADER, "modules " + ",".join(name for name in MODULES if name in set(modules))]

    settings = {key: value for key, value in (spec.get("settings") or {}).items() if value is not None}
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise RenderError(f"settings: unknown key(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    kinds = [(key, _SETTING_KINDS.get(type(DEFAULTS["set"][key]), "text")) for key in SETTINGS]
    lines += _key_lines("set", kinds, settings, "settings", indent="set ")

    for keyword, option, keys in BLOCKS:
        items = _items(spec, option)
        for item in items:
            where = f"{option}[id={item['id']}]"
            if keyword == "network":
                item = _normalise_network(item, where)
            elif keyword in ("server", "target"):
                item = _normalise_address(item, where)
            lines += _block_lines(keyword, f"{keyword} {item['id']}", keys, item, where, ITEM_FLAGS)
        lines += _flag_lines(keyword, option, items)

    vrrp = {key: value for key, value in (spec.get("vrrp") or {}).items() if value is not None}
    bgp = spec.get("bgp")
    if vrrp and bgp is not None:
        raise RenderError("vrrp, bgp: a balancer runs one HA mode; give either vrrp or bgp")
    if vrrp:
        lines += _block_lines("vrrp", "vrrp", VRRP_KEYS, vrrp, "vrrp", ())
    if bgp is not None:  # an empty mapping is HA mode bgp with every default: `bgp {` `}`
        if not isinstance(bgp, dict):
            raise RenderError(f"bgp: expected a mapping (device, socket, grace), got {bgp!r}")
        bgp = {key: value for key, value in bgp.items() if value is not None}
        lines += _block_lines("bgp", "bgp", BGP_KEYS, bgp, "bgp", ())
    return "\n".join(lines) + "\n"
