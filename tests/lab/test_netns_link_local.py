"""`Topology.wait_link_local`: after it, a host forwarding IPv6 resolves its next hop at once.

Before an interface's link-local address passes duplicate address detection the kernel sends no
neighbour solicitation for forwarded packets and drops them; the bench's first (kernel) phase lost
two fifths of its packets that way."""

from __future__ import annotations

import time

from dsrlb_tools.netns import Topology

SERVICE = "2001:db8:99::1"


def test_a_router_forwards_ipv6_at_once_after_its_link_local_is_ready() -> None:
    with Topology("dsrlb-t-ll") as topo:
        for host in ("client", "router", "target"):
            topo.add_host(host)
        topo.connect("client", addrs=["2001:db8:9::1/64"])
        topo.connect("router", addrs=["2001:db8:9::2/64"])
        topo.connect("target", addrs=["2001:db8:9::3/64"])
        topo.addr("target", f"{SERVICE}/128", "lo")
        topo.sysctl("router", {"net.ipv6.conf.all.forwarding": 1})
        topo.route("router", SERVICE, "via", "2001:db8:9::3")
        topo.route("client", SERVICE, "via", "2001:db8:9::2")
        topo.wait_link_local()
        for host in topo.hosts:
            assert topo.run(host, "ip", "-6", "addr", "show", "tentative").stdout == "", host
        started = time.monotonic()
        ping = topo.run("client", "ping", "-6", "-n", "-c", "1", "-W", "0.5", SERVICE, check=False)
        assert ping.returncode == 0, f"no reply through the router within 0.5 s: {ping.stdout}"
        assert time.monotonic() - started < 0.5
