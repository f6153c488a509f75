"""Keep the balancer's own kernel away from VIP traffic.

The forwarder sees every frame through its packet socket before the kernel's ingress hook, so a
netfilter rule on that hook can drop frames addressed to the VIPs and `virt` without touching
forwarding: the kernel then spends nothing on routing, and nothing on failing to route, traffic that
is not its own. Needs `nft` and CAP_NET_ADMIN; without them the balancer still works, only slower.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable
from ipaddress import IPv4Address

log = logging.getLogger("dsrlb.ingress")


class IngressFilter:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.table = f"dsrlb_{ifname}".replace(".", "_").replace("-", "_")
        self.nft = shutil.which("nft")
        self.active = False

    def apply(self, addresses: Iterable[IPv4Address]) -> bool:
        """Install or replace the drop rule for `addresses` in one atomic nft transaction."""
        elements = ", ".join(sorted(str(a) for a in addresses))
        rule = f"ip daddr {{ {elements} }} drop" if elements else ""
        script = (
            f"table netdev {self.table} {{}}\n"
            f"delete table netdev {self.table}\n"
            f"table netdev {self.table} {{\n"
            f"  chain ingress {{\n"
            f'    type filter hook ingress device "{self.ifname}" priority -500; policy accept;\n'
            f"    {rule}\n"
            f"  }}\n"
            f"}}\n"
        )
        self.active = self._run(script, "install")
        return self.active

    def remove(self) -> None:
        if self.active:
            self._run(f"delete table netdev {self.table}\n", "remove")
            self.active = False

    def _run(self, script: str, what: str) -> bool:
        if self.nft is None:
            log.warning("nft not found: the kernel of this host will also process VIP traffic")
            return False
        proc = subprocess.run([self.nft, "-f", "-"], input=script, capture_output=True, text=True)
        if proc.returncode != 0:
            log.warning("cannot %s the ingress filter on %s: %s", what, self.ifname, proc.stderr.strip())
            return False
        return True
