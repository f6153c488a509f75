#!/usr/bin/python
# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: balancer_info
short_description: Read the state of a running dsrlb daemon
version_added: "0.1.0"
description:
  - Asks the daemon's control socket for its virtual servers, targets (health, administrative state,
    sessions), session count, VRRP state, BGP announcements and counters, for asserts in playbooks and
    for verification.
author:
  - dsrlb developers (@dsrlb)
options:
  gather:
    description: What to ask for; everything by default.
    type: list
    elements: str
    choices: [servers, targets, sessions, stats, vrrp, bgp, bngsync]
    default: [servers, targets, sessions, stats, vrrp, bgp, bngsync]
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - dsrlb.fleet.control
  - dsrlb.fleet.control.action_group
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
seealso:
  - module: dsrlb.fleet.balancer_target
"""

EXAMPLES = r"""
- name: Read the balancer state
  dsrlb.fleet.balancer_info:
  register: lb

- name: All targets are up
  ansible.builtin.assert:
    that: lb.targets | rejectattr('health', 'eq', 'up') | list | length == 0
    fail_msg: "down: {{ lb.targets | rejectattr('health', 'eq', 'up') | map(attribute='ipaddr') | list }}"

- name: Wait until the balancer is VRRP master
  dsrlb.fleet.balancer_info:
    gather: [vrrp]
  register: lb
  until: lb.vrrp.state == 'master'
  retries: 10
  delay: 1
"""

RETURN = r"""
servers:
  description: Virtual servers with their target ids and counters.
  returned: when gathered
  type: list
  elements: dict
  sample: [{id: 1, vip: 172.16.1.10, port: 80, protocol: tcp, method: maglev, targets: [1, 2],
            packets: 10, bytes: 1200, sessions: 2}]
targets:
  description:
    - Targets with C(health) (C(up)/C(down)), C(last_ok) (seconds since all its health checks last
      succeeded, null before that), C(admin) (C(enabled), C(disabled), C(draining), C(drained)),
      C(mac), C(weight), C(backup), C(sessions), C(connections), C(packets), C(bytes) and C(detail).
  returned: when gathered
  type: list
  elements: dict
  sample: [{id: 1, ipaddr: 172.16.1.100, port: 80, mac: "02:00:00:00:00:01", health: up, last_ok: 1.2,
            admin: enabled, weight: 1, backup: false, sessions: 1, connections: 1, packets: 5, bytes: 600,
            detail: ""}]
sessions:
  description: Number of entries in the client-address session table.
  returned: when gathered
  type: int
  sample: 2
vrrp:
  description: VRRP state; C(state) is C(master), C(backup), C(init) or C(disabled).
  returned: when gathered
  type: dict
  sample: {state: master}
bgp:
  description:
    - HA mode bgp; C(state) is C(disabled) without a C(bgp { }) block. Otherwise C(vips) (each VIP with
      C(announced) and the C(reason) when not), and C(protocols), BIRD's protocol states read from its
      control socket (C(bird) says why they are missing when the socket cannot be reached).
  returned: when gathered
  type: dict
  sample: {state: enabled, vips: [{vip: 172.16.1.10, announced: true, reason: ""}],
           protocols: [{name: router, proto: BGP, state: up, info: Established}]}
bngsync:
  description:
    - Session sync with the syncpeer; C(state) is C(disabled) without C(syncpeer), C(error) when it could
      not start (C(error) says why), else C(active) with C(peer) (C(forwarding), C(standby) or C(down)),
      C(syncpeer_mac), packet and session counters, C(sessions_held) and the last full resyncs.
  returned: when gathered
  type: dict
  sample: {state: active, syncpeer: 172.16.1.251, peer: standby, sessions_held: 0}
stats:
  description: Counters (C(rx), C(tx), C(forwarded), C(arp_replies), C(icmp_replies), C(drops), C(uptime)).
  returned: when gathered
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.dsrlb.fleet.plugins.module_utils.control import (  # noqa: E402
    DEFAULT_CONTROL_SOCKET,
    SHOW_WHAT,
    ControlClient,
    ControlError,
)


def gather(client: ControlClient, what: list[str]) -> dict:
    """One request per item; sessions are returned as a count (the sum over the virtual servers): the
    table itself can be large, and the daemon answers `show sessions` a page at a time."""
    facts: dict = {}
    for item in what:
        if item == "sessions":
            facts[item] = sum(server["sessions"] for server in client.show("servers") or [])
        else:
            facts[item] = client.show(item)
    return facts


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            control_socket=dict(type="path", default=DEFAULT_CONTROL_SOCKET),
            gather=dict(type="list", elements="str", choices=list(SHOW_WHAT), default=list(SHOW_WHAT)),
        ),
        supports_check_mode=True,
    )
    try:
        facts = gather(ControlClient(module.params["control_socket"]), module.params["gather"])
    except ControlError as err:
        module.fail_json(msg=err.message, errors=err.errors)
    module.exit_json(changed=False, **facts)


if __name__ == "__main__":
    main()
