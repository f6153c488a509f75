#!/usr/bin/python
# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: loopback_alias
short_description: Put virtual IP addresses (VIPs) on the loopback interface of a DSR target
version_added: "0.1.0"
description:
  - In Direct Server Return mode a target accepts frames for the VIP only when it owns the VIP, as a host
    address on its loopback interface (the C(ifconfig lo:0 VIP netmask 255.255.255.255) of classic
    setups). This module adds or removes such addresses at runtime through netlink.
  - Only the listed addresses are touched; other addresses of the interface stay as they are.
  - An address counts as present when it is on the interface with a host prefix, whatever its label.
  - Pair it with P(dsrlb.fleet.arp_sysctl#module) so that the target does not answer ARP for the VIP.
  - The change does not survive a reboot; persist it with the host's network configuration.
author:
  - dsrlb developers (@dsrlb)
options:
  addresses:
    description:
      - IPv4 (C(/32)) or IPv6 (C(/128)) host addresses; an address without prefix means the host prefix.
    type: list
    elements: str
    required: true
  interface:
    description: The interface that gets the addresses.
    type: str
    default: lo
  label:
    description:
      - Label of the IPv4 addresses (IPv6 has none). The kernel requires it to start with the interface
        name, and it can have at most 15 characters.
    type: str
    default: "lo:0"
  state:
    description: Whether the addresses should be on the interface.
    type: str
    choices: [present, absent]
    default: present
requirements:
  - pyroute2
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows the interface's addresses before and after.
  platform:
    support: full
    platforms: linux
seealso:
  - module: dsrlb.fleet.arp_sysctl
"""

EXAMPLES = r"""
- name: Own the VIP on lo:0, as the seed's ifconfig lo:0 172.16.1.10 netmask 255.255.255.255
  dsrlb.fleet.loopback_alias:
    addresses:
      - 172.16.1.10
      - 2001:db8::10/128

- name: Give the VIP back
  dsrlb.fleet.loopback_alias:
    addresses: [172.16.1.10]
    state: absent
"""

RETURN = r"""
added:
  description: Addresses the module added (in check mode, would add), with prefix.
  returned: always
  type: list
  elements: str
  sample: [172.16.1.10/32]
removed:
  description: Addresses the module removed (in check mode, would remove), with prefix.
  returned: always
  type: list
  elements: str
  sample: []
addresses:
  description: All addresses of the interface afterwards (in check mode, as they would be).
  returned: always
  type: list
  elements: str
  sample: ["127.0.0.1/8", "172.16.1.10/32", "::1/128"]
"""

import ipaddress  # noqa: E402
import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
except ImportError:
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()
else:
    PYROUTE2_IMPORT_ERROR = None

IFNAMSIZ = 16


def parse_address(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """A VIP as a host interface address; anything wider than /32 or /128 is refused because it would
    make the target claim a whole range."""
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if iface.network.prefixlen != iface.max_prefixlen:
        raise ValueError(
            f"{text!r} is not a host address: use /{iface.max_prefixlen} (or no prefix) for a VIP on loopback"
        )
    return iface


def check_label(label: str, interface: str) -> None:
    if label != interface and not label.startswith(interface + ":"):
        raise ValueError(
            f"label {label!r} must be {interface!r} or start with '{interface}:', e.g. {interface}:0"
        )
    if len(label) >= IFNAMSIZ:
        raise ValueError(f"label {label!r} is longer than {IFNAMSIZ - 1} characters")


def sort_key(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> tuple[int, int, int]:
    return (iface.version, int(iface.ip), iface.network.prefixlen)


def plan(current: list, wanted: list, state: str) -> tuple[list, list]:
    """(to add, to remove): only the wanted addresses are ever touched."""
    have = set(current)
    if state == "present":
        return sorted((a for a in set(wanted) if a not in have), key=sort_key), []
    return [], sorted((a for a in set(wanted) if a in have), key=sort_key)


class LoopbackAlias:
    """Reads and changes the addresses of one interface through netlink."""

    def __init__(self, ipr, interface: str) -> None:
        self.ipr = ipr
        self.interface = interface
        found = ipr.link_lookup(ifname=interface)
        if not found:
            raise LookupError(f"interface {interface!r} does not exist on this host")
        self.index = found[0]

    def addresses(self) -> list:
        result = []
        for msg in self.ipr.get_addr(index=self.index):
            address = msg.get_attr("IFA_ADDRESS")
            if msg.get("family") == 2:
                address = msg.get_attr("IFA_LOCAL") or address
            result.append(ipaddress.ip_interface(f"{address}/{msg['prefixlen']}"))
        return sorted(result, key=sort_key)

    def add(self, address, label: str) -> None:
        extra = {"label": label} if address.version == 4 else {}
        self.ipr.addr(
            "add", index=self.index, address=str(address.ip), prefixlen=address.network.prefixlen, **extra
        )

    def remove(self, address) -> None:
        self.ipr.addr("del", index=self.index, address=str(address.ip), prefixlen=address.network.prefixlen)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            addresses=dict(type="list", elements="str", required=True),
            interface=dict(type="str", default="lo"),
            label=dict(type="str", default="lo:0"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        supports_check_mode=True,
    )
    if PYROUTE2_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    params = module.params
    try:
        wanted = [parse_address(text) for text in params["addresses"]]
        if any(address.version == 4 for address in wanted):
            check_label(params["label"], params["interface"])
    except ValueError as err:
        module.fail_json(msg=f"invalid option: {err}")

    with IPRoute() as ipr:
        try:
            link = LoopbackAlias(ipr, params["interface"])
        except LookupError as err:
            module.fail_json(msg=f"{err}; set interface to an existing one")
        before = link.addresses()
        to_add, to_remove = plan(before, wanted, params["state"])
        if not module.check_mode:
            try:
                for address in to_add:
                    link.add(address, params["label"])
                for address in to_remove:
                    link.remove(address)
            except NetlinkError as err:
                module.fail_json(
                    msg=f"cannot change {address} on {params['interface']}: {err}",
                    addresses=[str(a) for a in link.addresses()],
                )
            after = link.addresses()
        else:
            after = sorted((set(before) | set(to_add)) - set(to_remove), key=sort_key)

    result = dict(
        changed=bool(to_add or to_remove),
        added=[str(a) for a in to_add],
        removed=[str(a) for a in to_remove],
        addresses=[str(a) for a in after],
    )
    if module._diff:
        result["diff"] = dict(
            before="".join(f"{a}\n" for a in before),
            after="".join(f"{a}\n" for a in after),
            before_header=f"{params['interface']} addresses",
            after_header=f"{params['interface']} addresses",
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
