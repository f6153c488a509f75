#!/usr/bin/python
# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: arp_sysctl
short_description: Stop a DSR target from answering ARP for the VIPs on its loopback
version_added: "0.1.0"
description:
  - Sets C(net.ipv4.conf.<interface>.arp_ignore) and C(arp_announce) at runtime and persists them in a
    file under C(/etc/sysctl.d/), so that a target that owns a VIP on C(lo) neither answers ARP requests
    for it nor uses it as the source of its own ARP requests. Otherwise it steals the VIP from the
    balancer (the classic misconfigured DSR target).
  - The kernel applies the B(maximum) of the C(all) value and the interface's own value. The module
    reads these effective values for every interface, reports in RV(wrong_before) which ones were below
    the requested values, and warns when an interface is stricter than requested.
author:
  - dsrlb developers (@dsrlb)
options:
  interfaces:
    description: Which C(net.ipv4.conf.*) entries to set; C(all) covers every interface, present and future.
    type: list
    elements: str
    default: [all]
  arp_ignore:
    description: C(1) answers ARP only for addresses configured on the interface the request came in on.
    type: int
    choices: [0, 1, 2, 3, 4, 5, 6, 7, 8]
    default: 1
  arp_announce:
    description: C(2) always uses the best local address of the outgoing interface as ARP source.
    type: int
    choices: [0, 1, 2]
    default: 2
  persist:
    description: Also write the values to O(sysctl_dir)/O(sysctl_file), so that they survive a reboot.
    type: bool
    default: true
  sysctl_file:
    description: Name of the file in O(sysctl_dir).
    type: str
    default: 90-dsrlb-arp.conf
  sysctl_dir:
    description: Directory read by C(systemd-sysctl) at boot.
    type: path
    default: /etc/sysctl.d
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows the runtime values and the persisted file before and after.
  platform:
    support: full
    platforms: linux
seealso:
  - module: dsrlb.fleet.loopback_alias
  - module: ansible.posix.sysctl
"""

EXAMPLES = r"""
- name: The net.ipv4.conf.all settings of the BalanceNG DSR example, persisted
  dsrlb.fleet.arp_sysctl:

- name: Also pin the value on the data interface
  dsrlb.fleet.arp_sysctl:
    interfaces: [all, eth0]
"""

RETURN = r"""
effective_before:
  description: The effective values (maximum of C(all) and the interface) per interface before the change.
  returned: always
  type: dict
  sample: {eth0: {arp_ignore: 0, arp_announce: 0}, lo: {arp_ignore: 0, arp_announce: 0}}
effective_after:
  description: The effective values per interface afterwards (in check mode, as they would be).
  returned: always
  type: dict
  sample: {eth0: {arp_ignore: 1, arp_announce: 2}, lo: {arp_ignore: 1, arp_announce: 2}}
wrong_before:
  description:
    - Interfaces whose effective values were below the requested ones (they could answer ARP for a VIP).
  returned: always
  type: list
  elements: str
  sample: [eth0]
changed_keys:
  description: The sysctl keys set at runtime.
  returned: always
  type: list
  elements: str
  sample: [net.ipv4.conf.all.arp_ignore]
sysctl_file:
  description: Path of the persisted file.
  returned: when O(persist=true)
  type: str
  sample: /etc/sysctl.d/90-dsrlb-arp.conf
"""

import os  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

KEYS = ("arp_ignore", "arp_announce")
PROC_CONF = "/proc/sys/net/ipv4/conf"
SPECIAL = ("all", "default")


def sysctl_name(entry: str, key: str) -> str:
    """The key as sysctl.d(5) expects it; names with dots (VLANs) need the slash form."""
    if "." in entry:
        return f"net/ipv4/conf/{entry}/{key}"
    return f"net.ipv4.conf.{entry}.{key}"


def effective(values: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per real interface, the value the kernel applies: max(all, interface)."""
    base = values.get("all", {})
    return {
        name: {key: max(base.get(key, 0), own.get(key, 0)) for key in KEYS}
        for name, own in sorted(values.items())
        if name not in SPECIAL
    }


def render_file(entries: list[str], wanted: dict[str, int]) -> str:
    lines = ["# managed by Ansible (dsrlb.fleet.arp_sysctl): a DSR target must not answer ARP for its VIPs"]
    lines += [f"{sysctl_name(entry, key)} = {wanted[key]}" for entry in entries for key in KEYS]
    return "\n".join(lines) + "\n"


class ArpSysctl:
    """Runtime values under `proc_conf` (a parameter so that unit tests can use a fake tree)."""

    def __init__(self, proc_conf: str = PROC_CONF) -> None:
        self.proc_conf = proc_conf

    def entries(self) -> list[str]:
        return sorted(os.listdir(self.proc_conf))

    def read(self) -> dict[str, dict[str, int]]:
        values = {}
        for entry in self.entries():
            try:
                values[entry] = {key: self._read_one(entry, key) for key in KEYS}
            except FileNotFoundError:  # interface vanished while we looked
                continue
        return values

    def _read_one(self, entry: str, key: str) -> int:
        with open(os.path.join(self.proc_conf, entry, key)) as handle:
            return int(handle.read().strip())

    def write(self, entry: str, key: str, value: int) -> None:
        with open(os.path.join(self.proc_conf, entry, key), "w") as handle:
            handle.write(f"{value}\n")


def persist(module: AnsibleModule, content: str, result: dict) -> dict:
    """Write the sysctl.d file atomically when its content differs; returns the file's diff."""
    directory = module.params["sysctl_dir"]
    path = os.path.join(directory, module.params["sysctl_file"])
    result["sysctl_file"] = path
    if not os.path.isdir(directory):
        module.fail_json(msg=f"directory {directory} does not exist; create it or set sysctl_dir", **result)
    try:
        with open(path) as handle:
            old = handle.read()
    except FileNotFoundError:
        old = ""
    except OSError as err:
        module.fail_json(msg=f"cannot read {path}: {err}", **result)
    if old != content:
        result["changed"] = True
        if not module.check_mode:
            fd, tmp = tempfile.mkstemp(prefix=".dsrlb-", dir=directory)
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
            os.chmod(tmp, 0o644)
            module.atomic_move(tmp, path)
    return dict(before_header=path, after_header=path, before=old, after=content)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            interfaces=dict(type="list", elements="str", default=["all"]),
            arp_ignore=dict(type="int", choices=list(range(9)), default=1),
            arp_announce=dict(type="int", choices=[0, 1, 2], default=2),
            persist=dict(type="bool", default=True),
            sysctl_file=dict(type="str", default="90-dsrlb-arp.conf"),
            sysctl_dir=dict(type="path", default="/etc/sysctl.d"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    wanted = {key: params[key] for key in KEYS}
    entries = list(dict.fromkeys(params["interfaces"]))
    sysctl = ArpSysctl()

    try:
        runtime = sysctl.read()
    except OSError as err:
        module.fail_json(msg=f"cannot read {PROC_CONF}: {err}; is this a Linux host with IPv4?")
    missing = [entry for entry in entries if entry not in runtime]
    if missing:
        module.fail_json(
            msg=f"no such interface: {', '.join(missing)} (not in {PROC_CONF}); "
            f"existing: {', '.join(sorted(runtime))}"
        )
    if "/" in params["sysctl_file"] or not params["sysctl_file"].endswith(".conf"):
        module.fail_json(
            msg=f"sysctl_file {params['sysctl_file']!r} must be a plain file name ending in .conf"
        )

    changes = [(entry, key) for entry in entries for key in KEYS if runtime[entry][key] != wanted[key]]
    desired = {entry: dict(values) for entry, values in runtime.items()}
    for entry, key in changes:
        desired[entry][key] = wanted[key]
    before_eff, after_eff = effective(runtime), effective(desired)
    result: dict = dict(
        changed=bool(changes),
        effective_before=before_eff,
        effective_after=after_eff,
        wrong_before=[name for name, vals in before_eff.items() if any(vals[k] < wanted[k] for k in KEYS)],
        changed_keys=[sysctl_name(entry, key) for entry, key in changes],
    )
    diffs = [
        dict(
            before_header="runtime",
            after_header="runtime",
            before="".join(f"{sysctl_name(e, k)} = {runtime[e][k]}\n" for e in entries for k in KEYS),
            after="".join(f"{sysctl_name(e, k)} = {desired[e][k]}\n" for e in entries for k in KEYS),
        )
    ]
    for name, vals in after_eff.items():
        stricter = [f"{k}={vals[k]}" for k in KEYS if vals[k] > wanted[k]]
        if stricter:
            module.warn(f"{name} is stricter than requested ({', '.join(stricter)}): list it in interfaces")

    if not module.check_mode:
        for entry, key in changes:
            try:
                sysctl.write(entry, key, wanted[key])
            except OSError as err:
                module.fail_json(msg=f"cannot set {sysctl_name(entry, key)}: {err}", **result)

    if params["persist"]:
        diffs.append(persist(module, render_file(entries, wanted), result))
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
