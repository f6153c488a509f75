"""IPv6 virtual servers (issue 15), end to end in both access modes: the seed network made dual-stack, a
VRRP pair (lb1 master, lb2 backup) whose network has BalanceNG's `mask6`/`real6`/`virt6`, an `ipaddr6`
server 2001:db8:1::10 and `ipaddr6` targets web1 and web2 (the VIP as /128 on lo, nothing else: Linux
answers no neighbour solicitation for an address on another interface), reached from IPv6 clients in
2001:db8:2::/64 through the router.

  - requests from 20 clients reach both targets; replies go from the targets to the router, with the
    targets' MACs, and none crosses a balancer; what reaches the targets comes from the master's MAC;
  - only the master answers neighbour solicitations for the VIP and for virt6;
  - a clean stop of the master under IPv6 load loses no request, and the router's neighbour entry for the
    VIP moves to the new master (its unsolicited advertisement).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import TypeVar

import pytest
from dsr_lab import HTTP_CLIENT, PYTHON, SEED, WEBS, PairLab
from test_sync import LOAD_LOOP

from dsrlb_tools.netns import Topology

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="integration tests need root: they create network namespaces"
    ),
]

PREFIX = "dsrlb-v6"
VIP6, VIRT6 = "2001:db8:1::10", "2001:db8:1::253"
REAL6 = {"lb1": "2001:db8:1::252", "lb2": "2001:db8:1::251"}
REAL = {"lb1": "172.16.1.252", "lb2": "172.16.1.251"}
WEB6 = {"web1": "2001:db8:1::100", "web2": "2001:db8:1::101"}
CLIENTS6 = [f"2001:db8:2::{i:x}" for i in range(0x10, 0x24)]
LOAD6 = [f"2001:db8:2::{i:x}" for i in range(0x30, 0x35)]

# In the router: a neighbour solicitation for each address of argv from the router's address; prints
# {address: MACs of every neighbour advertisement for it within a second}.
NDP_PROBE = """
import json, sys
from scapy.all import Ether, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6, get_if_hwaddr, srp
from scapy.utils6 import in6_getnsma, in6_getnsmac
from socket import AF_INET6, inet_pton, inet_ntop
mac, probes = get_if_hwaddr("eth0"), []
for target in sys.argv[1:]:
    group = inet_ntop(AF_INET6, in6_getnsma(inet_pton(AF_INET6, target)))
    eth = Ether(src=mac, dst=in6_getnsmac(inet_pton(AF_INET6, group)))
    ns = eth / IPv6(src="2001:db8:1::254", dst=group, hlim=255) / ICMPv6ND_NS(tgt=target)
    probes.append(ns / ICMPv6NDOptSrcLLAddr(lladdr=mac))
ans, _ = srp(probes, iface="eth0", timeout=1, multi=True, verbose=0)
found = {t: set() for t in sys.argv[1:]}
for _, r in ans:
    if ICMPv6ND_NA in r and r[ICMPv6ND_NA].tgt in found:
        found[r[ICMPv6ND_NA].tgt].add(r[Ether].src)
print(json.dumps({t: sorted(macs) for t, macs in found.items()}))
"""


def config(name: str, access: str, family: str = "ipv4", peers: str | None = None) -> str:
    """The seed with the balancer's addresses, IPv6 on its network, an IPv6 server and targets, VRRP over
    `family` with `peers` (default: the other balancer's `real`)."""
    peer = "lb2" if name == "lb1" else "lb1"
    text = SEED.read_text()
    text = text.replace("          access raw\n", f"          access {access}\n")
    text = text.replace(
        "          real 172.16.1.252\n",
        f"          real {REAL[name]}\n mask6 64\n real6 {REAL6[name]}\n virt6 {VIRT6}\n",
    )
    text = text.replace("register  server 1\nenable    server 1\n", "")
    text = text.replace("register  targets 1,2\nenable    targets 1,2\n", "")
    targets = "".join(
        f"target {3 + i} {{\n ipaddr6 {address}\n port 80\n protocol tcp\n tcpopen 80,1,3\n dsr enable\n}}\n"
        for i, address in enumerate(WEB6.values())
    )
    return (
        text
        + f"server 2 {{\n ipaddr6 {VIP6}\n port 80\n protocol tcp\n targets 3,4\n}}\n"
        + targets
        + "register servers 1,2\nenable servers 1,2\nregister targets 1-4\nenable targets 1-4\n"
        + f"vrrp {{\n vrid 62\n priority {200 if name == 'lb1' else 100}\n network 1\n advert 100\n"
        + f" preempt off\n peers {peers or REAL[peer]}\n"
        + ("" if family == "ipv4" else f" family {family}\n")
        + "}\n"
    )


class V6Lab(PairLab):
    family = "ipv4"  # what VRRP runs over

    def build(self) -> None:
        t = self.topo
        self.build_edge()
        t.addr("router", "2001:db8:1::254/64")
        t.addr("router", "2001:db8:2::1/64", "eth1")
        for src in CLIENTS6 + LOAD6:
            t.addr("client", f"{src}/64")
        t.route("client", "default", "via", "2001:db8:2::1")
        t.sysctl("router", {"net.ipv6.conf.all.forwarding": 1})
        for name, real in REAL.items():
            self.add_balancer(name, real)
            t.addr(name, f"{REAL6[name]}/64")
        self.build_targets()
        for web, address in WEB6.items():
            t.addr(web, f"{address}/64")
            t.addr(web, f"{VIP6}/128", "lo")
            t.route(web, "default", "via", "2001:db8:1::254")
        self.macs = {host: t.mac(host) for host in ("router", *REAL, *WEBS)}

    def config(self, name: str) -> str:
        return config(name, self.access, self.family)

    def wait_state(self, name: str, state: str) -> None:
        self.wait(name, "vrrp", lambda v: v["state"] == state)

    def http6(self, sources: list[str]) -> dict[str, str]:
        res = self.topo.run("client", PYTHON, "-c", HTTP_CLIENT, VIP6, "2", *sources, timeout=60)
        return json.loads(res.stdout)

    def ndp(self, *addresses: str) -> dict[str, list[str]]:
        return json.loads(self.python("router", NDP_PROBE, *addresses))

    def sniff(self, host: str, bpf: str) -> subprocess.Popen[str]:
        """tcpdump (quicker to start than scapy) printing the MACs of what `bpf` matches on eth0."""
        pipe = subprocess.PIPE
        return self.topo.popen(host, "tcpdump", "-i", "eth0", "-e", "-n", "-l", bpf, stdout=pipe, stderr=pipe)

    @staticmethod
    def sniffed(proc: subprocess.Popen[str]) -> list[tuple[str, str]]:
        """(source MAC, destination MAC) of each frame a `sniff` saw, once it is stopped."""
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        fields = [line.split() for line in out.splitlines() if " > " in line]  # TIME SRC > DST, ...
        return [(f[1], f[3].rstrip(",")) for f in fields]


LabT = TypeVar("LabT", bound=V6Lab)


@pytest.fixture(scope="module", params=["raw", "nftables"])
def v6lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[V6Lab]:
    yield from running_pair(V6Lab, PREFIX, request.param, tmp_path_factory)


def running_pair(
    kind: type[LabT], prefix: str, access: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabT]:
    """A lab of `kind` in namespaces named `prefix`-…: lb1 started (master), then lb2 (backup), the targets
    up and lb1 warm; torn down when the generator ends."""
    with Topology(prefix) as topo:
        lab = kind(topo, tmp_path_factory.mktemp(prefix), access)
        lab.build()
        lab.start("lb1")
        lab.wait_state("lb1", "master")
        lab.start("lb2")
        lab.wait_state("lb2", "backup")
        lab.daemon = lab.daemons["lb1"]
        lab.sock, lab.log = lab.paths("lb1")[1:]
        lab.wait_targets({1: "up", 2: "up", 3: "up", 4: "up"}, timeout=20)
        log, deadline = lab.paths("lb1")[2], time.monotonic() + 10
        while "forwarding on eth0" not in log.read_text():  # warm: answers ARP and NDP from now on
            assert time.monotonic() < deadline, lab.log_of("lb1")
            time.sleep(0.1)
        yield lab


def test_ipv6_clients_reach_both_targets_and_replies_bypass_the_balancers(v6lab: V6Lab) -> None:
    replies = f"ip6 and tcp and src host {VIP6} and src port 80"
    requests = f"ip6 and tcp and dst host {VIP6} and dst port 80"
    sniffers = {
        ("router", "replies"): replies,
        ("lb1", "replies"): replies,
        ("lb2", "replies"): replies,
        ("web1", "requests"): requests,
        ("web2", "requests"): requests,
    }
    procs = {key: v6lab.sniff(key[0], bpf) for key, bpf in sniffers.items()}
    for key, proc in procs.items():  # tcpdump says when it listens
        assert proc.stderr is not None
        assert any("listening on" in proc.stderr.readline() for _ in range(3)), key
    results = v6lab.http6(CLIENTS6)
    time.sleep(0.3)
    captured = {key: v6lab.sniffed(proc) for key, proc in procs.items()}
    assert all(not r.startswith("ERR") for r in results.values()), results
    assert set(results.values()) == set(WEBS), results
    macs = v6lab.macs
    assert {src for src, _ in captured[("router", "replies")]} == {macs["web1"], macs["web2"]}
    assert captured[("lb1", "replies")] == [] and captured[("lb2", "replies")] == []
    for web in WEBS:  # rewritten by the master: its MAC as source, the target's as destination
        frames = captured[(web, "requests")]
        assert frames and {tuple(f) for f in frames} == {(macs["lb1"], macs[web])}, (web, frames)


def test_only_the_master_answers_neighbour_solicitations(v6lab: V6Lab) -> None:
    macs = v6lab.macs
    answers = v6lab.ndp(VIP6, VIRT6, REAL6["lb2"])
    assert answers == {VIP6: [macs["lb1"]], VIRT6: [macs["lb1"]], REAL6["lb2"]: [macs["lb2"]]}, answers


def test_clean_failover_under_ipv6_load_loses_nothing(v6lab: V6Lab) -> None:
    clean_failover_under_ipv6_load(v6lab)


def clean_failover_under_ipv6_load(v6lab: V6Lab) -> dict:
    """Stop lb1 (master) under IPv6 load: no request lost, lb2 master, the router's neighbour entry for the
    VIP on lb2's MAC; returns the load's outcome (ok: answered requests, failed: the others)."""
    pipe = subprocess.PIPE
    load = v6lab.topo.popen(
        "client", PYTHON, "-c", LOAD_LOOP, VIP6, "2", *LOAD6, stdin=pipe, stdout=pipe, stderr=pipe
    )
    assert load.stdout is not None and load.stdout.readline().strip() == "ready"
    time.sleep(1)
    v6lab.stop("lb1")
    v6lab.wait_state("lb2", "master")
    time.sleep(1)
    out, err = load.communicate("go\n", timeout=30)
    outcome = json.loads(out)
    assert not outcome["failed"] and outcome["ok"] > 50, outcome
    neighbours = v6lab.topo.run("router", "ip", "-6", "-j", "neigh", "show", VIP6).stdout
    assert {n["lladdr"] for n in json.loads(neighbours) if "lladdr" in n} == {v6lab.macs["lb2"]}
    assert v6lab.ndp(VIP6) == {VIP6: [v6lab.macs["lb2"]]}
    return outcome
