# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Structured (inventory-derived) data -> canonical dsrlb config text.

The text is canonical so that the same data always yields the same bytes: objects are sorted by id,
keys follow a fixed order per block, and lists are rendered one way. That makes the module idempotent
and its diffs meaningful. Values are checked here only as far as needed to keep the syntax intact
(no stray braces, quotes or whitespace) and to give early messages; `dsrlb check` judges the rest.
"""

from __future__ import annotations

import ipaddress
import re
import typing as t

HEADER = "// managed by Ansible (dsrlb.fleet.balancer_config): local changes will be overwritten"
MODULE_ORDER = ("vrrp", "arp", "ping", "hc", "master", "slb", "tnat", "nat", "rt")
SETTING_KEYS = ("control", "metrics", "arprefresh", "arpexpire", "drainidle")
_WORD = re.compile(r"^[A-Za-z0-9_.:/@%+=-]+$")
_IDLIST = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")

# Per block kind: (keyword, option name, ((key, value kind), ...)) in canonical key order.
BLOCKS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("interface", "interfaces", (("name", "word"), ("access", "word"), ("threads", "int"))),
    (
        "network",
        "networks",
        (
            ("name", "quoted"),
            ("addr", "ip"),
            ("mask", "ip"),
            ("real", "ip"),
            ("virt", "ip"),
            ("interface", "int"),
        ),
    ),
    (
        "server",
        "servers",
        (
            ("ipaddr", "ip"),
            ("port", "int"),
            ("protocol", "word"),
            ("targets", "idlist"),
            ("method", "word"),
            ("session", "number"),
        ),
    ),
    (
        "target",
        "targets",
        (
            ("ipaddr", "ip"),
            ("port", "int"),
            ("protocol", "word"),
            ("tcpopen", "csv"),
            ("ping", "csv"),
            ("http", "csv"),
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
)
ITEM_FLAGS = ("id", "registered", "enabled")


class RenderError(ValueError):
    """Input that cannot become a valid config; the message names the offending field."""


def _number(value: t.Any, where: str, integer: bool) -> str:
    if isinstance(value, bool):
        raise RenderError(f"{where}: expected a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RenderError(f"{where}: expected a number, got {value!r}") from None
    if number < 0 or (integer and number != int(number)):
        raise RenderError(
            f"{where}: expected a non-negative {'integer' if integer else 'number'}, got {value!r}"
        )
    return str(int(number)) if number == int(number) else format(number, "g")


def _word(value: t.Any, where: str) -> str:
    text = str(value)
    if not _WORD.match(text):
        raise RenderError(f"{where}: {text!r} must be a single word without spaces, quotes, commas or braces")
    return text


def _bool(value: t.Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "on", "1", "enable"):
        return True
    if text in ("no", "false", "off", "0", "disable"):
        return False
    raise RenderError(f"{where}: expected a boolean, got {value!r}")


def _csv(value: t.Any, where: str) -> str:
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    if not parts:
        raise RenderError(f"{where}: must not be empty")
    return ",".join(_word(str(part).strip(), where) for part in parts)


def _idlist(value: t.Any, where: str) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_number(part, where, integer=True) for part in value)
    text = str(value).replace(" ", "")
    if not _IDLIST.match(text):
        raise RenderError(f"{where}: {value!r} must be a list of ids such as [1, 2] or '1,2' or '1-4'")
    return text


def _ip(value: t.Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise RenderError(f"{where}: {value!r} is not an IP address") from None


def format_value(kind: str, key: str, value: t.Any, where: str) -> str | None:
    """The text after the key in a block line, or None when the line is omitted (false flags)."""
    where = f"{where}.{key}"
    if kind == "word":
        return _word(value, where)
    if kind == "quoted":
        text = str(value)
        if '"' in text or "\n" in text or "\\" in text:
            raise RenderError(f"{where}: {text!r} must not contain quotes, backslashes or line breaks")
        return f'"{text}"'
    if kind == "int":
        return _number(value, where, integer=True)
    if kind == "number":
        return _number(value, where, integer=False)
    if kind == "ip":
        return _ip(value, where)
    if kind == "csv":
        return _csv(value, where)
    if kind == "idlist":
        return _idlist(value, where)
    if kind == "enable":
        return "enable" if _bool(value, where) else None
    if kind == "flag":
        return "" if _bool(value, where) else None
    if kind == "onoff":
        return "on" if _bool(value, where) else "off"
    raise AssertionError(f"unknown value kind {kind}")


def _block_lines(
    header: str, keys: tuple[tuple[str, str], ...], item: dict[str, t.Any], where: str, flags: tuple[str, ...]
) -> list[str]:
    known = {pair[0] for pair in keys}
    unknown = sorted(set(item) - known - set(flags))
    if unknown:
        raise RenderError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    lines = [header + " {"]
    for key, kind in keys:
        if item.get(key) is None:
            continue
        text = format_value(kind, key, item[key], where)
        if text is not None:
            lines.append(f"    {key} {text}".rstrip())
    lines.append("}")
    return lines


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


def _id_list_line(verb: str, keyword: str, ids: list[int]) -> str:
    noun = keyword + "s" if len(ids) > 1 else keyword
    return f"{verb} {noun} {','.join(str(i) for i in ids)}"


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


def derive_modules(spec: dict[str, t.Any]) -> list[str]:
    """The BalanceNG modules the config needs: DSR always needs slb and arp, checks and VRRP add theirs."""
    needed = {"arp", "slb"}
    for target in spec.get("targets") or []:
        if target.get("tcpopen") is not None or target.get("http") is not None:
            needed.add("hc")
        if target.get("ping") is not None:
            needed.add("ping")
    if spec.get("vrrp"):
        needed.add("vrrp")
    return [name for name in MODULE_ORDER if name in needed]


def render(spec: dict[str, t.Any]) -> str:
    """Canonical config text for `spec` (keys: modules, settings, interfaces, networks, servers,
    targets, vrrp), raising RenderError with the path of the first bad field."""
    modules = spec.get("modules") or derive_modules(spec)
    unknown = sorted(set(modules) - set(MODULE_ORDER))
    if unknown:
        raise RenderError(
            f"modules: unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULE_ORDER)}"
        )
    lines = [HEADER, "modules " + ",".join(name for name in MODULE_ORDER if name in set(modules))]

    settings = {key: value for key, value in (spec.get("settings") or {}).items() if value is not None}
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise RenderError(f"settings: unknown key(s) {', '.join(unknown)}; known: {', '.join(SETTING_KEYS)}")
    for key in SETTING_KEYS:
        if key in settings:
            value, where = settings[key], "settings." + key
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            lines.append(
                f"set {key} {_number(value, where, integer=False) if is_number else _word(value, where)}"
            )

    for keyword, option, keys in BLOCKS:
        items = _items(spec, option)
        for item in items:
            where = f"{option}[id={item['id']}]"
            if keyword == "network":
                item = _normalise_network(item, where)
            lines.extend(_block_lines(f"{keyword} {item['id']}", keys, item, where, ITEM_FLAGS))
        flags = {item["id"]: (item.get("registered", True), item.get("enabled", True)) for item in items}
        registered = [i for i, pair in flags.items() if _bool(pair[0], f"{option}[id={i}].registered")]
        enabled = [i for i in registered if _bool(flags[i][1], f"{option}[id={i}].enabled")]
        for verb, ids in (("register", registered), ("enable", enabled)):
            if ids:
                lines.append(_id_list_line(verb, keyword, ids))

    vrrp = {key: value for key, value in (spec.get("vrrp") or {}).items() if value is not None}
    if vrrp:
        lines.extend(_block_lines("vrrp", VRRP_KEYS, vrrp, "vrrp", ()))
    lines.append("// end of configuration")
    return "\n".join(lines) + "\n"
