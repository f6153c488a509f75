"""A host's disk: the persistent upper directory of the overlay over this machine's `/`.

The machine's `/etc/systemd/system` enables units that belong to the machine, not to lab hosts
(databases, timers, getty, time sync). Each `*.wants`/`*.requires` directory of the machine is made
opaque in the host's upper dir, so hosts start from a clean set of enabled units while Ansible can
still enable what it installs. Units that would act on the shared kernel or cannot work in a
namespace are masked. A host with a topology `bgp:` key gets its router config (routing.py).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from dsrlb_tools.lab import routing
from dsrlb_tools.lab.topology import Topology

UNIT_DIR = Path("/etc/systemd/system")
# Would change the shared kernel or clock, or mount things a namespace has no use for.
MASKED = (
    "systemd-modules-load.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-timesyncd.service",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "systemd-firstboot.service",
)


def prepare(upper: Path, hostname: str, topology: Topology) -> None:
    """Make ``upper`` a disk the host can boot from; safe to repeat before every boot."""
    etc = upper / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hostname").write_text(hostname + "\n")
    machine_id = etc / "machine-id"
    if not machine_id.exists():  # a host keeps its identity across reboots, like a real disk
        machine_id.write_text(uuid.uuid4().hex + "\n")
    hosts = etc / "hosts"
    if not hosts.exists():
        lines = [
            "127.0.0.1\tlocalhost",
            f"127.0.1.1\t{hostname}",
            "::1\tlocalhost ip6-localhost ip6-loopback",
        ]
        for host in topology.hosts.values():
            lines += [f"{a.ip}\t{host.name}" for i in host.interfaces for a in i.addresses[:1]]
        hosts.write_text("\n".join(lines) + "\n")
    units = upper / UNIT_DIR.relative_to("/")
    units.mkdir(parents=True, exist_ok=True)
    for lower in UNIT_DIR.iterdir():
        if lower.is_dir() and not lower.is_symlink() and lower.suffix in (".wants", ".requires"):
            mine = units / lower.name
            mine.mkdir(exist_ok=True)
            os.setxattr(mine, "trusted.overlay.opaque", b"y")
    for unit in MASKED:
        link = units / unit
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
    me = topology.hosts.get(hostname)
    if me is not None and me.bgp is not None:
        routing.install(upper, me.bgp)
