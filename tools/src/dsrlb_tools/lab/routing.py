"""A lab router's BGP: its BIRD 2 config, written onto the host's disk before it boots, and bird enabled.

The router learns each balancer's VIP /32s over eBGP and installs them as one multipath kernel route
(`merge paths on`): the balancers share one ASN, so BIRD ranks their routes equal. Which nexthop a
flow takes is the kernel's choice (`net.ipv4.fib_multipath_hash_policy`, a topology `sysctl` of the
router). Like addresses, this is the lab's "hardware": rewritten at every boot from the topology.
"""

from __future__ import annotations

import os
from pathlib import Path

from dsrlb_tools import bird
from dsrlb_tools.lab.topology import Bgp

CONF = Path("etc/bird/bird.conf")
UNIT = "bird.service"
UNIT_FILE = Path("/lib/systemd/system") / UNIT
WANTS = Path("etc/systemd/system/multi-user.target.wants")
HEADER = "# Written by `dsrlb lab` at every boot of this host from its topology's bgp: key; edits are lost.\n"


def router_config(bgp: Bgp) -> str:
    """BIRD 2 config of a router that takes host routes from its neighbors and installs them multipath
    (the text is dsrlb_tools.bird's, shared with the daemon's tests); hold 3 s, keepalive 1 s."""
    peers = [
        # A prefix: a lab host may be named like a BIRD keyword (`router`).
        bird.Peer("bgp_" + (n.host or str(i)).replace("-", "_"), str(n.address), n.asn)
        for i, n in enumerate(bgp.neighbors)
    ]
    return HEADER + bird.router(str(bgp.router_id), bgp.asn, peers, bird.Timers(bfd=bgp.bfd))


def install(upper: Path, bgp: Bgp) -> None:
    """Write the router's bird.conf into its disk and enable bird.service (the wants dir is the host's
    own, opaque over this machine's: see rootfs.py)."""
    conf = upper / CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(router_config(bgp))
    os.chmod(conf, 0o644)
    wants = upper / WANTS
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / UNIT
    if not link.is_symlink():
        link.unlink(missing_ok=True)
        link.symlink_to(UNIT_FILE)
