#!/usr/bin/python
# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: balancer_config
short_description: Install the dsrlb daemon's config from structured data, validated, and reload it
version_added: "0.1.0"
description:
  - Renders interfaces, networks, virtual servers, targets, VRRP and settings into the canonical text
    of the dsrlb config language (BalanceNG syntax), with objects sorted by id, a fixed key order and
    keys at their default left out, so the same data always gives the same file. The file starts with a
    C(// managed by Ansible) line and is byte for byte what C(dsrlb check --canonical) prints for it.
  - The text is written to a temporary file and validated with C(dsrlb check) before it is installed
    atomically at O(path). A config that C(dsrlb check) rejects changes nothing; its
    C(FILE:LINE:COL message) lines come back in RV(errors).
  - When the file changed and O(reload=true), the running daemon is told to reload through its control
    socket. If the daemon rejects the new config, the previous file is put back and the module fails
    with the daemon's errors, so the file on disk always matches what runs.
  - Every object is registered and enabled unless its O(targets[].registered) or O(targets[].enabled)
    (and likewise for the other lists) is V(false).
author:
  - dsrlb developers (@dsrlb)
options:
  path:
    description: Where the config is installed.
    type: path
    default: /etc/dsrlb/dsrlb.conf
  modules:
    description:
      - The C(modules) statement. When omitted, derived from what the config uses
        (C(arp) and C(slb) always, C(hc) for C(tcpopen)/C(http) checks, C(ping) for C(ping) checks,
        C(vrrp) when O(vrrp) is given).
    type: list
    elements: str
    choices: [vrrp, arp, ping, hc, master, slb, tnat, nat, rt]
  settings:
    description: C(set) statements.
    type: dict
    suboptions:
      control:
        description: Path of the daemon's control socket.
        type: str
      metrics:
        description: C(ADDR:PORT) of the Prometheus endpoint, or C(off).
        type: str
      arprefresh:
        description: Seconds between ARP refreshes of target MAC addresses.
        type: float
      arpexpire:
        description: A target MAC unanswered for this many seconds is forgotten.
        type: float
      drainidle:
        description: A draining target counts as drained after its connections were idle this many seconds.
        type: float
      flows:
        description:
          - Capacity of the flow table (about 300 bytes each). Beyond it a new flow is not recorded and
            follows the stateless choice; nothing is dropped.
        type: int
      sessions:
        description:
          - Capacity of the client sessions of all virtual servers together (about 200 bytes each). Beyond
            it a new client is not recorded and follows the stateless choice; nothing is dropped.
        type: int
      embryonic:
        description: Idle timeout in seconds of a flow with one packet only (a TCP SYN, one UDP datagram).
        type: float
      hashseed:
        description:
          - Seed (0 to 4294967295) of the jhash that maps a client address to a bucket of a virtual
            server's target table, in the Python forwarder and in the kernel fast path alike. Balancers
            that share clients need the same seed; the default is fixed, so they agree out of the box.
        type: int
      sessionautoresync:
        description: bngsync - 1 sends the whole session table to a syncpeer that (re)started.
        type: int
        choices: [0, 1]
      sessionsyncack:
        description: bngsync - 1 has every batch acknowledged, and resent until it is.
        type: int
        choices: [0, 1]
  interfaces:
    description: C(interface N { }) blocks.
    type: list
    elements: dict
    default: []
    suboptions:
      id:
        description: Interface number.
        type: int
        required: true
      name:
        description: Kernel interface name, for example C(eth0).
        type: str
        required: true
      access:
        description:
          - Access method. C(raw) is the Python forwarder; C(nftables) forwards in the kernel (a
            netdev ingress rule), for servers whose method is C(maglev), C(hash) or C(first).
        type: str
        choices: [raw, nftables]
      threads:
        description: Number of forwarding workers.
        type: int
      registered:
        description: Emit C(register interface N).
        type: bool
        default: true
      enabled:
        description: Emit C(enable interface N) (only when registered).
        type: bool
        default: true
  networks:
    description: C(network N { }) blocks.
    type: list
    elements: dict
    default: []
    suboptions:
      id:
        description: Network number.
        type: int
        required: true
      name:
        description: Free text name (no double quotes).
        type: str
      addr:
        description: Network address; CIDR form (C(172.16.1.0/24)) sets O(networks[].mask) too.
        type: str
        required: true
      mask:
        description: Netmask, dotted or as a prefix length; written dotted.
        type: str
      real:
        description: The balancer's own address on this network; source of ARP requests and health checks.
        type: str
      virt:
        description: Shared address that moves with VRRP mastership.
        type: str
      mask6:
        description: Prefix length of the network's IPv6 network (with O(networks[].real6)).
        type: int
      real6:
        description: The balancer's own IPv6 address on this network.
        type: str
      virt6:
        description: Shared IPv6 address that moves with VRRP mastership.
        type: str
      syncpeer:
        description: The other balancer's O(networks[].real) of a VRRP pair, to sync sessions with (bngsync).
        type: str
      interface:
        description: Number of the interface the network is on.
        type: int
      registered:
        description: Emit C(register network N).
        type: bool
        default: true
      enabled:
        description: Emit C(enable network N) (only when registered).
        type: bool
        default: true
  servers:
    description: C(server N { }) blocks, the virtual servers (VIPs).
    type: list
    elements: dict
    default: []
    suboptions:
      id:
        description: Server number.
        type: int
        required: true
      ipaddr:
        description: The virtual IP address (VIP).
        type: str
        required: true
      port:
        description: Port of the virtual server.
        type: int
      protocol:
        description: Transport protocol.
        type: str
        choices: [tcp, udp]
      targets:
        description: Ids of the targets serving this VIP, as a list or a string such as C(1,2) or C(1-4).
        type: raw
      method:
        description:
          - Target selection. C(maglev) (the daemon's default) lets two balancers with the same targets pick
            the same target for a client, so flows survive a failover.
        type: str
        choices: [maglev, rr, random, hash, leastsessions, first]
      session:
        description: Idle timeout in seconds of the client-address session table.
        type: float
      registered:
        description: Emit C(register server N).
        type: bool
        default: true
      enabled:
        description: Emit C(enable server N) (only when registered).
        type: bool
        default: true
  targets:
    description: C(target N { }) blocks, the real servers behind the VIPs.
    type: list
    elements: dict
    default: []
    suboptions:
      id:
        description: Target number.
        type: int
        required: true
      ipaddr:
        description: The target's address on the balancer's segment.
        type: str
        required: true
      port:
        description: Service port.
        type: int
      protocol:
        description: Transport protocol.
        type: str
        choices: [tcp, udp]
      tcpopen:
        description: TCP connect health check C(PORT,INTERVAL,TIMEOUT), as a string or a list.
        type: raw
      ping:
        description: ICMP echo health check C(INTERVAL,TIMEOUT), as a string or a list.
        type: raw
      http:
        description: HTTP health check C(PORT,PATH,INTERVAL,TIMEOUT), as a string or a list.
        type: raw
      dsr:
        description: Emit C(dsr enable) (Direct Server Return).
        type: bool
        default: true
      weight:
        description: Relative weight in target selection.
        type: int
      backup:
        description: The target only serves when no other target of the server is up.
        type: bool
        default: false
      registered:
        description: Emit C(register target N).
        type: bool
        default: true
      enabled:
        description: Emit C(enable target N) (only when registered).
        type: bool
        default: true
  vrrp:
    description: The C(vrrp { }) block; omit for a balancer without a peer.
    type: dict
    suboptions:
      vrid:
        description: Virtual router id shared by the peers.
        type: int
        required: true
      priority:
        description: VRRP priority (the higher one becomes master). Give the peers different priorities.
        type: int
        required: true
      network:
        description: Number of the network whose C(virt) address the peers share.
        type: int
        required: true
      advert:
        description: Advertisement interval in milliseconds.
        type: int
      preempt:
        description: A higher-priority peer takes over from a running master.
        type: bool
      version:
        description: VRRP protocol version.
        type: int
        choices: [2, 3]
      peers:
        description:
          - IPv4 addresses of the other balancers of the virtual router (C(peers), a dsrlb extension).
            Adverts from any other source are dropped and counted; written sorted.
          - Without it any host on the segment can take over the shared addresses with a forged advert,
            and C(dsrlb check) warns.
        type: list
        elements: str
  bgp:
    description:
      - The C(bgp { }) block (a dsrlb extension) for HA mode bgp, in which every balancer forwards and a BGP
        speaker on the host (BIRD 2) announces the VIPs that the daemon puts on its TUN device O(bgp.device)
        while it is ready, so the upstream router spreads clients over the balancers (ECMP).
      - An empty mapping writes the block with every key at its default (C(bgp {) and C(})); omit the
        option (or give null) for HA mode vrrp or a lone balancer. Not together with O(vrrp).
    type: dict
    suboptions:
      device:
        description:
          - The TUN device the daemon creates and owns, holding the VIPs as /32 addresses while it is
            ready; BIRD's C(protocol direct) exports them. Written only when not C(dsrlb0).
        type: str
      socket:
        description:
          - BIRD's control socket, read by C(dsrlb show bgp). Written only when not C(/run/bird/bird.ctl).
        type: str
      grace:
        description:
          - Seconds the daemon keeps forwarding after it withdrew the VIPs on a clean stop, while the
            router moves the flows to the other balancers. Written only when not C(2).
        type: float
  validate:
    description: Check the rendered text with C(dsrlb check) before installing it.
    type: bool
    default: true
  dsrlb_bin:
    description:
      - The C(dsrlb) executable used for validation; a bare name is looked up in C(PATH) and in
        C(/opt/dsrlb/venv/bin).
    type: str
    default: dsrlb
  backup:
    description: Keep a timestamped copy of the previous file next to it.
    type: bool
    default: false
  reload:
    description:
      - When the file changed, reload the running daemon through its control socket. A daemon that is
        not running is not an error (it reads the file when it starts); RV(reloaded) says what happened.
    type: bool
    default: true
  control_socket:
    description: The daemon's control socket; defaults to O(settings.control), else to the daemon's default.
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.files
  - dsrlb.fleet.control.action_group
attributes:
  check_mode:
    support: full
    details:
      - The text is rendered and validated (when C(dsrlb) is installed); nothing is installed or reloaded.
  diff_mode:
    support: full
    details: Shows the difference between the installed and the rendered config text.
  platform:
    support: full
    platforms: posix
notes:
  - Checks that span several balancers (equal VRRP priorities, the same target list on both peers) belong
    to the roles, which see the whole inventory.
seealso:
  - module: dsrlb.fleet.balancer_target
  - module: dsrlb.fleet.balancer_info
"""

EXAMPLES = r"""
- name: Configure the balancer of the seed network
  dsrlb.fleet.balancer_config:
    interfaces:
      - {id: 1, name: eth0, access: raw}
    networks:
      - {id: 1, name: local network, addr: 172.16.1.0/24, real: 172.16.1.252, virt: 172.16.1.253,
         interface: 1}
    servers:
      - {id: 1, ipaddr: 172.16.1.10, port: 80, protocol: tcp, targets: [1, 2]}
    targets:
      - {id: 1, ipaddr: 172.16.1.100, port: 80, protocol: tcp, tcpopen: "80,3,10"}
      - {id: 2, ipaddr: 172.16.1.101, port: 80, protocol: tcp, tcpopen: "80,3,10"}
    vrrp: {vrid: 1, priority: 200, network: 1}
    owner: root
    group: dsrlb
    mode: "0640"
    backup: true

- name: One of N active balancers behind an ECMP router (HA mode bgp; BIRD announces the VIPs)
  dsrlb.fleet.balancer_config:
    interfaces:
      - {id: 1, name: eth0, access: nftables}
    networks:
      - {id: 1, addr: 172.16.1.0/24, real: 172.16.1.250, interface: 1}
    servers:
      - {id: 1, ipaddr: 172.16.1.10, port: 80, protocol: tcp, targets: [1, 2]}
    targets:
      - {id: 1, ipaddr: 172.16.1.100, port: 80, protocol: tcp, tcpopen: "80,3,10"}
      - {id: 2, ipaddr: 172.16.1.101, port: 80, protocol: tcp, tcpopen: "80,3,10"}
    bgp: {}

- name: Render only (no daemon on the controller), show the diff
  dsrlb.fleet.balancer_config:
    path: /tmp/dsrlb.conf
    validate: false
    reload: false
    servers: "{{ dsrlb_servers }}"
    targets: "{{ dsrlb_targets }}"
  check_mode: true
  diff: true
"""

RETURN = r"""
path:
  description: The installed config file.
  returned: always
  type: str
  sample: /etc/dsrlb/dsrlb.conf
config:
  description: The rendered config text.
  returned: success
  type: str
modules:
  description: The modules the config enables (given or derived).
  returned: success
  type: list
  elements: str
  sample: [vrrp, arp, hc, slb]
backup_file:
  description: The copy of the previous file made because of O(backup=true).
  returned: when a backup was made
  type: str
  sample: /etc/dsrlb/dsrlb.conf.1234.2025-01-01@12:00:00~
validated:
  description: Whether C(dsrlb check) accepted the text (false when validation was skipped).
  returned: always
  type: bool
reloaded:
  description: Whether the running daemon loaded the new config.
  returned: always
  type: bool
generation:
  description: The daemon's config generation after the reload.
  returned: when reloaded
  type: int
errors:
  description: C(FILE:LINE:COL message) lines from C(dsrlb check) or from the daemon's reload, naming O(path).
  returned: failure
  type: list
  elements: str
  sample: ["/etc/dsrlb/dsrlb.conf:12:5: unknown key 'prot'"]
"""

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.dsrlb.fleet.plugins.module_utils.config_render import (  # noqa: E402
    RenderError,
    derive_modules,
    render,
)
from ansible_collections.dsrlb.fleet.plugins.module_utils.control import (  # noqa: E402
    DEFAULT_CONTROL_SOCKET,
    ControlClient,
    ControlError,
)
from ansible_collections.dsrlb.fleet.plugins.module_utils.vocabulary import (  # noqa: E402
    ACCESS,
    METHODS,
    MODULES,
    PROTOCOLS,
)

SECTIONS = ("modules", "settings", "interfaces", "networks", "servers", "targets", "vrrp", "bgp")
DSRLB_FALLBACK_DIRS = ["/opt/dsrlb/venv/bin", "/usr/local/bin"]


def _id_flags() -> dict:
    return dict(registered=dict(type="bool", default=True), enabled=dict(type="bool", default=True))


def argument_spec() -> dict:
    """The module's options; a function so that unit tests can build the same spec. The choices come
    from the vocabulary; DOCUMENTATION repeats them literally (a unit test keeps the two equal)."""
    proto = dict(type="str", choices=list(PROTOCOLS))
    return dict(
        path=dict(type="path", default="/etc/dsrlb/dsrlb.conf"),
        modules=dict(
            type="list",
            elements="str",
            choices=list(MODULES),
        ),
        settings=dict(
            type="dict",
            options=dict(
                control=dict(type="str"),
                metrics=dict(type="str"),
                arprefresh=dict(type="float"),
                arpexpire=dict(type="float"),
                drainidle=dict(type="float"),
                flows=dict(type="int"),
                sessions=dict(type="int"),
                embryonic=dict(type="float"),
                hashseed=dict(type="int"),
                sessionautoresync=dict(type="int", choices=[0, 1]),
                sessionsyncack=dict(type="int", choices=[0, 1]),
            ),
        ),
        interfaces=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                id=dict(type="int", required=True),
                name=dict(type="str", required=True),
                access=dict(type="str", choices=list(ACCESS)),
                threads=dict(type="int"),
                **_id_flags(),
            ),
        ),
        networks=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                id=dict(type="int", required=True),
                name=dict(type="str"),
                addr=dict(type="str", required=True),
                mask=dict(type="str"),
                real=dict(type="str"),
                virt=dict(type="str"),
                mask6=dict(type="int"),
                real6=dict(type="str"),
                virt6=dict(type="str"),
                syncpeer=dict(type="str"),
                interface=dict(type="int"),
                **_id_flags(),
            ),
        ),
        servers=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                id=dict(type="int", required=True),
                ipaddr=dict(type="str", required=True),
                port=dict(type="int"),
                protocol=proto,
                targets=dict(type="raw"),
                method=dict(type="str", choices=list(METHODS)),
                session=dict(type="float"),
                **_id_flags(),
            ),
        ),
        targets=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                id=dict(type="int", required=True),
                ipaddr=dict(type="str", required=True),
                port=dict(type="int"),
                protocol=proto,
                tcpopen=dict(type="raw"),
                ping=dict(type="raw"),
                http=dict(type="raw"),
                dsr=dict(type="bool", default=True),
                weight=dict(type="int"),
                backup=dict(type="bool", default=False),
                **_id_flags(),
            ),
        ),
        vrrp=dict(
            type="dict",
            options=dict(
                vrid=dict(type="int", required=True),
                priority=dict(type="int", required=True),
                network=dict(type="int", required=True),
                advert=dict(type="int"),
                preempt=dict(type="bool"),
                version=dict(type="int", choices=[2, 3]),
                peers=dict(type="list", elements="str"),
            ),
        ),
        bgp=dict(
            type="dict",
            options=dict(device=dict(type="str"), socket=dict(type="str"), grace=dict(type="float")),
        ),
        validate=dict(type="bool", default=True),
        dsrlb_bin=dict(type="str", default="dsrlb"),
        backup=dict(type="bool", default=False),
        reload=dict(type="bool", default=True),
        control_socket=dict(type="path"),
    )


class BalancerConfig:
    """Render, validate, install and reload; every step leaves the old file alone when it fails."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.path = self.params["path"]
        self.result: dict = dict(changed=False, path=self.path, validated=False, reloaded=False)

    def fail(self, msg: str, errors: list[str] | None = None) -> None:
        self.module.fail_json(msg=msg, errors=errors or [], **self.result)

    def run(self) -> dict:
        spec = {name: self.params[name] for name in SECTIONS}
        try:
            text = render(spec)
        except RenderError as err:
            self.fail(f"cannot render the config: {err}")
        self.result.update(config=text, modules=self.params["modules"] or derive_modules(spec))

        before = self._read_current()
        if before is None and not os.path.isdir(os.path.dirname(self.path) or "."):
            self.fail(f"directory {os.path.dirname(self.path)} does not exist: create it first")
        if self.module._diff:
            self.result["diff"] = dict(
                before=before or "", after=text, before_header=self.path, after_header=self.path
            )
        if before != text:
            self.result["changed"] = True
            if self.params["validate"]:
                self._validate(text)
            if not self.module.check_mode:
                self._install(text)
        if os.path.exists(self.path):  # check mode: reports owner/mode changes without making them
            file_args = self.module.load_file_common_arguments(self.params, path=self.path)
            self.result["changed"] = self.module.set_fs_attributes_if_different(
                file_args, self.result["changed"]
            )
        if before != text and self.params["reload"] and not self.module.check_mode:
            self._reload(before)
        return self.result

    def _read_current(self) -> str | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            self.fail(f"cannot read the current config {self.path}: {err}")

    def _find_dsrlb(self) -> str | None:
        name = self.params["dsrlb_bin"]
        if os.path.sep in name:
            return name if os.access(name, os.X_OK) else None
        return self.module.get_bin_path(name, opt_dirs=DSRLB_FALLBACK_DIRS)

    def _validate(self, text: str) -> None:
        binary = self._find_dsrlb()
        if binary is None:
            if self.module.check_mode:
                self.module.warn(
                    f"{self.params['dsrlb_bin']} not found: the config was not validated (check mode)"
                )
                return
            self.fail(
                f"{self.params['dsrlb_bin']} not found: install the dsrlb package, point dsrlb_bin at it, "
                "or set validate=false"
            )
        tmpdir = tempfile.mkdtemp(prefix="dsrlb-check-", dir=self.module.tmpdir)
        candidate = os.path.join(tmpdir, os.path.basename(self.path))
        try:
            with open(candidate, "w", encoding="utf-8") as handle:
                handle.write(text)
            rc, out, err = self.module.run_command([binary, "check", candidate])
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if rc != 0:
            errors = [line.replace(candidate, self.path) for line in err.splitlines() if line.strip()]
            if not errors:
                errors = [f"{binary} check exited with {rc} without a message: {out.strip()}"]
            self.fail(
                f"dsrlb check rejected the config, nothing was installed; fix: {'; '.join(errors)}",
                errors,
            )
        # An accepted config may still serve nothing (no server, no target enabled): say so in the play.
        for line in err.splitlines():
            if ": warning: " in line:
                self.module.warn("dsrlb check: " + line.replace(candidate, self.path))
        self.result["validated"] = True

    def _write(self, text: str) -> None:
        """Write into the target directory first, so the final rename is atomic."""
        fd, tmp = tempfile.mkstemp(prefix=".dsrlb-", dir=os.path.dirname(self.path) or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as err:
            os.unlink(tmp)
            self.fail(f"cannot write {self.path}: {err}")
        self.module.atomic_move(tmp, self.path, unsafe_writes=self.params["unsafe_writes"])

    def _install(self, text: str) -> None:
        if self.params["backup"] and os.path.exists(self.path):
            self.result["backup_file"] = self.module.backup_local(self.path)
        self._write(text)

    def _reload(self, before: str | None) -> None:
        control = (
            self.params["control_socket"]
            or (self.params["settings"] or {}).get("control")
            or DEFAULT_CONTROL_SOCKET
        )
        try:
            data = ControlClient(control).reload()
        except ControlError as err:
            if err.unreachable:
                # No socket at all is a daemon not started yet (first install): nothing to say.
                if os.path.exists(control):
                    self.module.warn(f"{err.message}; the daemon will read {self.path} when it starts")
                return
            if before is None:
                os.unlink(self.path)
            else:
                self._write(before)
            self.result.update(changed=False, restored=True)
            self.fail(
                f"the running daemon rejected the new config ({err.message}); {self.path} is back as it was",
                err.errors,
            )
        self.result["reloaded"] = True
        if isinstance(data, dict) and "generation" in data:
            self.result["generation"] = data["generation"]


def main() -> None:
    # vrrp and bgp exclude each other (the renderer says so); not mutually_exclusive, which would refuse
    # a role that passes both with one of them null.
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True, add_file_common_args=True)
    module.run_command_environ_update = dict(LANG="C", LC_ALL="C", LC_MESSAGES="C")
    module.exit_json(**BalancerConfig(module).run())


if __name__ == "__main__":
    main()
