#!/usr/bin/python
# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: balancer_target
short_description: Enable, disable or drain a target of a running dsrlb daemon
version_added: "0.1.0"
description:
  - Changes the administrative state of one target at runtime through the daemon's control socket; the
    config file is not touched, so a reload or restart brings back the configured state.
  - V(drained) stops new connections to the target while packets of open connections keep reaching it;
    with O(wait=true) the module waits until the daemon reports the target as drained (its connections
    were idle for the daemon's C(drainidle) time), which is the moment to take it down for maintenance.
  - V(disabled) stops all traffic to the target at once.
author:
  - dsrlb developers (@dsrlb)
options:
  id:
    description: Target number, as in the config (C(target N)).
    type: int
    required: true
  state:
    description: The administrative state the target should be in.
    type: str
    choices: [enabled, disabled, drained]
    default: enabled
  wait:
    description: With O(state=drained), wait until the target is drained.
    type: bool
    default: false
  timeout:
    description: Seconds to wait for the drain before failing.
    type: int
    default: 300
  poll_interval:
    description: Seconds between two looks at the target while waiting.
    type: float
    default: 1.0
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - dsrlb.fleet.control
  - dsrlb.fleet.control.action_group
attributes:
  check_mode:
    support: full
    details: Reports whether the state would change; does not wait.
  diff_mode:
    support: full
    details: Shows the target's administrative state before and after.
  platform:
    support: full
    platforms: posix
seealso:
  - module: dsrlb.fleet.balancer_info
  - module: dsrlb.fleet.balancer_config
"""

EXAMPLES = r"""
- name: Drain web1 before maintenance and wait until its connections are gone
  dsrlb.fleet.balancer_target:
    id: 1
    state: drained
    wait: true
    timeout: 120
  delegate_to: "{{ item }}"
  loop: "{{ groups['dsr_balancers'] }}"

- name: Put it back into service
  dsrlb.fleet.balancer_target:
    id: 1
    state: enabled
"""

RETURN = r"""
target:
  description: The target as the daemon reports it after the change (see P(dsrlb.fleet.balancer_info#module)).
  returned: success
  type: dict
  sample: {id: 1, ipaddr: 172.16.1.100, admin: drained, health: up, sessions: 0, connections: 0}
admin_before:
  description: Administrative state before the module ran.
  returned: success
  type: str
  sample: enabled
admin:
  description: Administrative state after the module ran (in check mode, the state it would have).
  returned: success
  type: str
  sample: drained
waited:
  description: Seconds spent waiting for the drain.
  returned: when O(wait=true) and O(state=drained)
  type: float
"""

import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.dsrlb.fleet.plugins.module_utils.control import (  # noqa: E402
    DEFAULT_CONTROL_SOCKET,
    ControlClient,
    ControlError,
)

# state -> (control action, admin values that already satisfy it)
STATES = {
    "enabled": ("enable", ("enabled",)),
    "disabled": ("disable", ("disabled",)),
    "drained": ("drain", ("draining", "drained")),
}


class TargetState:
    """Compare the daemon's view of one target with the wanted state and act only on a difference."""

    def __init__(self, module: AnsibleModule, client: ControlClient) -> None:
        self.module = module
        self.client = client
        self.id = module.params["id"]

    def fail(self, msg: str, **extra) -> None:
        self.module.fail_json(msg=msg, **extra)

    def current(self) -> dict:
        try:
            targets = self.client.show("targets") or []
        except ControlError as err:
            self.fail(err.message, errors=err.errors)
        for target in targets:
            if target.get("id") == self.id:
                return target
        known = ", ".join(str(target.get("id")) for target in targets) or "none"
        self.fail(f"target {self.id} is not in the running config (known targets: {known}); check id")

    def run(self) -> dict:
        state = self.module.params["state"]
        action, satisfied = STATES[state]
        target = self.current()
        before = target.get("admin")
        changed = before not in satisfied
        result = dict(changed=changed, admin_before=before, target=target)
        if changed and not self.module.check_mode:
            try:
                target = self.client.target(action, self.id) or self.current()
            except ControlError as err:
                self.fail(
                    f"the daemon refused to {action} target {self.id}: {err.message}", errors=err.errors
                )
        after = (
            target.get("admin") if not self.module.check_mode else (before if not changed else satisfied[0])
        )
        if state == "drained" and self.module.params["wait"] and not self.module.check_mode:
            target, waited = self.wait_drained(target)
            result["waited"] = waited
            after = target.get("admin")
        result.update(target=target, admin=after)
        if self.module._diff:
            result["diff"] = dict(before=f"admin: {before}\n", after=f"admin: {after}\n")
        return result

    def wait_drained(self, target: dict) -> tuple[dict, float]:
        timeout = self.module.params["timeout"]
        interval = max(self.module.params["poll_interval"], 0.05)
        start = time.monotonic()
        while target.get("admin") != "drained":
            waited = time.monotonic() - start
            if target.get("admin") not in ("draining", "drained"):
                self.fail(
                    f"target {self.id} left the draining state while waiting (admin: {target.get('admin')}): "
                    "someone else changed it",
                    target=target,
                )
            if waited >= timeout:
                self.fail(
                    f"target {self.id} is still draining after {timeout} s "
                    f"({target.get('connections')} connections, {target.get('sessions')} sessions); "
                    "raise timeout, or use state=disabled to cut the remaining connections",
                    target=target,
                    waited=round(waited, 1),
                )
            time.sleep(min(interval, max(timeout - waited, 0.0)))
            target = self.current()
        return target, round(time.monotonic() - start, 1)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            id=dict(type="int", required=True),
            state=dict(type="str", choices=list(STATES), default="enabled"),
            wait=dict(type="bool", default=False),
            timeout=dict(type="int", default=300),
            poll_interval=dict(type="float", default=1.0),
            control_socket=dict(type="path", default=DEFAULT_CONTROL_SOCKET),
        ),
        supports_check_mode=True,
    )
    client = ControlClient(module.params["control_socket"])
    module.exit_json(**TargetState(module, client).run())


if __name__ == "__main__":
    main()
