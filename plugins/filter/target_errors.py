# Copyright: (c) 2026, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The target role's input (dsrlb_servers, dsrlb_target_servers) checked, for tasks/validate.yml.

In Python rather than in Jinja so that the checks can be read and unit-tested; every message names the
inventory key to fix. The documentation is in target_errors.yml next to this file.
"""

from __future__ import annotations

import ipaddress
import typing as t
from collections.abc import Mapping, Sequence


def _vip(value: t.Any, key: str) -> list[str]:
    """A VIP is a bare unicast IPv4 or IPv6 address: the role puts it on lo as /32 or /128 itself."""
    text = str(value).strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if "/" in text:
            return [f"{key}: {value!r} has a prefix; give the bare address (lo gets it as /32 or /128)"]
        return [f"{key}: {value!r} is not an IPv4 or IPv6 address"]
    for flag, what in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
    ):
        if getattr(address, flag):
            return [f"{key}: {value} is {what}; a VIP must be a unicast address the clients can reach"]
    return []


def target_errors(servers: t.Any, target_servers: t.Any = None) -> list[str]:
    """Messages naming the inventory key for a target's input; [] when it is sound."""
    if not isinstance(servers, Sequence) or isinstance(servers, str):
        return [f"dsrlb_servers: must be a list of {{id, vip}}, not {servers!r}"]
    errors = []
    ids = []
    for index, server in enumerate(servers):
        key = f"dsrlb_servers[{index}]"
        if not isinstance(server, Mapping):
            errors.append(f"{key}: must be a mapping {{id, vip, ...}}, not {server!r}")
            continue
        sid = server.get("id")
        if sid is None:
            errors.append(f"{key}.id: missing")
        else:
            ids.append(sid)
        vip_key = f"{key}.vip" + ("" if sid is None else f" (server {sid})")
        if server.get("vip") is None:
            errors.append(f"{vip_key}: missing")
        else:
            errors += _vip(server["vip"], vip_key)
    if target_servers is not None:
        if not isinstance(target_servers, Sequence) or isinstance(target_servers, str):
            errors.append(
                f"dsrlb_target_servers: must be a list of server ids or null, not {target_servers!r}"
            )
        else:
            unknown = [sid for sid in target_servers if sid not in ids]
            if unknown:
                known = ", ".join(str(sid) for sid in ids) or "none"
                listed = ", ".join(str(sid) for sid in unknown)
                errors.append(f"dsrlb_target_servers: {listed} not an id in dsrlb_servers (ids: {known})")
    return errors


class FilterModule:
    """Ansible's entry point: filter name -> function."""

    def filters(self) -> dict[str, t.Callable]:
        return {"target_errors": target_errors}
