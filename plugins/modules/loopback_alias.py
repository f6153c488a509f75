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
    IPv6 needs no such setting - Linux answers a Neighbor Solicitation only for addresses on the interface
    it arrived on, so it never answers one for a VIP on C(lo), whatever C(forwarding) is, and addresses on
    C(lo) skip duplicate address detection (never tentative, no C(nodad) needed).
  - Linux drops the IPv6 addresses of an interface that goes down (C(ifdown lo), a restart of the network
    service) while it keeps the IPv4 ones. So that an IPv6 VIP survives what an IPv4 one survives,
    O(keep_on_down) sets C(net.ipv6.conf.<interface>.keep_addr_on_down=1) before it adds an IPv6 address.
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
  keep_on_down:
    description:
      - With O(state=present) and an IPv6 address in O(addresses), set
        C(net.ipv6.conf.<interface>.keep_addr_on_down) to C(1) at runtime (not persisted; the
        P(dsrlb.fleet.target#role) role persists it in C(/etc/sysctl.d)).
      - A negative C(net.ipv6.conf.all.keep_addr_on_down) overrides it; the module then warns.
    type: bool
    default: true
requirements:
  - pyroute2
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows the interface's addresses (and C(keep_addr_on_down) when it sets it) before and after.
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

- name: An IPv6 VIP alone (also sets net.ipv6.conf.lo.keep_addr_on_down=1)
  dsrlb.fleet.loopback_alias:
    addresses: [2001:db8:10::10]

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
keep_addr_on_down:
  description:
    - C(net.ipv6.conf.<interface>.keep_addr_on_down) afterwards (in check mode, as it would be); null when
      the interface has no IPv6 configuration (IPv6 disabled).
  returned: always
  type: int
  sample: 1
"""

import ipaddress  # noqa: E402
import os  # noqa: E402
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
PROC_IPV6_CONF = "/proc/sys/net/ipv6/conf"
KEEP = "keep_addr_on_down"


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


def wants_keep(wanted: list, state: str, keep_on_down: bool) -> bool:
    """Whether keep_addr_on_down matters: only IPv6 addresses vanish when their interface goes down."""
    return keep_on_down and state == "present" and any(address.version == 6 for address in wanted)


def keeps_addresses(all_value: int, own_value: int) -> bool:
    """The kernel's rule (addrconf_ifdown): a non-zero `all` value wins over the interface's own one."""
    return (all_value or own_value) > 0


class Ipv6Conf:
    """net.ipv6.conf.* of one interface under `proc_conf` (a parameter so that unit tests can fake it)."""

    def __init__(self, interface: str, proc_conf: str = PROC_IPV6_CONF) -> None:
        self.interface = interface
        self.proc_conf = proc_conf

    def read(self, entry: str, key: str = KEEP) -> int | None:
        """The value, or None when the entry does not exist (IPv6 disabled on the host)."""
        try:
            with open(os.path.join(self.proc_conf, entry, key)) as handle:
                return int(handle.read().strip())
        except FileNotFoundError:
            return None

    def write(self, value: int, key: str = KEEP) -> None:
        with open(os.path.join(self.proc_conf, self.interface, key), "w") as handle:
            handle.write(f"{value}\n")


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
            keep_on_down=dict(type="bool", default=True),
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
        conf = Ipv6Conf(params["interface"])
        keep_before = keep_after = conf.read(params["interface"])
        set_keep = False
        if wants_keep(wanted, params["state"], params["keep_on_down"]):
            if keep_before is None:
                module.fail_json(
                    msg=f"no {PROC_IPV6_CONF}/{params['interface']}: IPv6 is disabled on this host or "
                    f"interface, so it cannot hold the IPv6 addresses"
                )
            set_keep, keep_after = keep_before != 1, 1
            all_value = conf.read("all") or 0
            if not keeps_addresses(all_value, 1):
                interface = params["interface"]
                module.warn(
                    f"net.ipv6.conf.all.{KEEP}={all_value} overrides net.ipv6.conf.{interface}.{KEEP}: "
                    f"the IPv6 addresses vanish when {interface} goes down"
                )
        if not module.check_mode:
            if set_keep:
                try:
                    conf.write(1)
                except OSError as err:
                    module.fail_json(msg=f"cannot set net.ipv6.conf.{params['interface']}.{KEEP}: {err}")
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
        changed=bool(to_add or to_remove or set_keep),
        added=[str(a) for a in to_add],
        removed=[str(a) for a in to_remove],
        addresses=[str(a) for a in after],
        keep_addr_on_down=keep_after,
    )
    if module._diff:
        sysctl = f"net.ipv6.conf.{params['interface']}.{KEEP}"
        keep_lines = (f"{sysctl} = {keep_before}\n", f"{sysctl} = {keep_after}\n") if set_keep else ("", "")
        result["diff"] = dict(
            before="".join(f"{a}\n" for a in before) + keep_lines[0],
            after="".join(f"{a}\n" for a in after) + keep_lines[1],
            before_header=f"{params['interface']} addresses",
            after_header=f"{params['interface']} addresses",
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
