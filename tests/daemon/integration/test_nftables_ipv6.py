"""IPv6 through the kernel table (issue 15), without the daemon: `KernelTable.apply` programs the
balancer's netdev ingress table with one IPv6 virtual server, and

  - IPv6 TCP from 32 client addresses reaches both targets, each client the target `Selector.pick`
    names for its 16-byte address (the kernel's `jhash ip6 saddr` and dsrlb.jhash agree);
  - the frames reach the targets with only the Ethernet addresses rewritten (hop limit as sent: the
    balancer's kernel does not route them, its IPv6 forwarding is off), replies bypass it;
  - `KernelTable.flows()` lists the IPv6 flows (client known by its low 96 bits);
  - open connections stay on a draining target while new ones go elsewhere, and those on a dead one are
    picked again (the per-server flow map, keyed by the client's low 96 bits and port);
  - a Neighbor Solicitation for the VIP, which the balancer's kernel answers while the VIP is an
    address of the data interface, is dropped before it does. (Linux answers a solicitation only for
    addresses of the interface it came in on: a VIP on lo or on a TUN device, as HA mode bgp has it, is
    never answered for, which is also why the targets need no IPv6 counterpart of arp_ignore.)

  client 2001:db8::100, ::1:1-::1:10, 2001:db8:ab:cd::1-::10 (VIP routed via the balancer; all /32)
    |  bridge
  balancer 2001:db8::1 (VIP on eth0)   web1 2001:db8::a   web2 2001:db8::b   (VIP /128 on lo)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv6Address
from typing import Any

import pytest

from dsrlb.selection import Candidate, Selector
from dsrlb.vocabulary import DEFAULTS
from dsrlb_tools.netns import Topology

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it creates network namespaces"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft"),
]

PREFIX = f"dsrlb-v6n{os.getpid()}"  # unique: a concurrent run keeps its own namespaces
VIP = "2001:db8::10"
LB = "2001:db8::1"
WEBS = {"web1": "2001:db8::a", "web2": "2001:db8::b"}
# low 96 bits (the flow key) small and beyond 64 bits (which nft lists as a string)
CLIENTS = [f"2001:db8::1:{i:x}" for i in range(1, 17)] + [f"2001:db8:ab:cd::{i:x}" for i in range(1, 17)]
SIZE, SEED = 211, DEFAULTS["set"]["hashseed"]
SELECTOR = Selector("maglev", [Candidate(1, "web1"), Candidate(2, "web2")], SIZE, SEED)
EXPECTED = {c: f"web{SELECTOR.pick(IPv6Address(c).packed)}" for c in CLIENTS}  # both targets up

# The balancer's side: one KernelTable for the whole module, so each change is a transaction on the
# table before it (flows kept). Per line on stdin, a state of one IPv6 virtual server (VIP tcp 80,
# maglev over web1 and web2) to apply, "both", "drain" (web2 draining) or "out" (web2 down), or "flows";
# answers with one JSON line.
BALANCER = """
import json, sys
from ipaddress import IPv6Address
from dsrlb.dataplane.forwarder import ForwardingTable, Service, ServiceState
from dsrlb.dataplane.nftables import KernelTable, ruleset
from dsrlb.selection import Candidate, Selector
vip, own, size, seed, web1, web2 = sys.argv[1:7]
own = bytes.fromhex(own.replace(":", ""))
macs = {1: bytes.fromhex(web1.replace(":", "")), 2: bytes.fromhex(web2.replace(":", ""))}
kernel = KernelTable("eth0")
assert kernel.supported() is None, kernel.supported()
for line in sys.stdin:
    state = line.strip()
    if state == "flows":
        print(json.dumps(kernel.flows()), flush=True)
        continue
    active = [1, 2] if state == "both" else [1]
    forward = {t: mac + own for t, mac in macs.items() if state != "out" or t == 1}
    candidates = [Candidate(t, f"web{t}") for t in active]
    selector = Selector("maglev", candidates, int(size), int(seed))
    service = Service(selector, frozenset(active), forward, 300.0, ServiceState())
    table = ForwardingTable({(IPv6Address(vip).packed, 6, 80): service}, frozenset(), frozenset(), flows=4096)
    kernel.apply(ruleset(table, "eth0", own, [IPv6Address(vip)], True))
    print(json.dumps("ok"), flush=True)
"""

# Says its name on every new connection and for every request on it.
SERVER = """
import socket, sys, threading
name = sys.argv[1].encode()
def serve(conn):
    with conn:
        conn.sendall(name)
        while conn.recv(64):
            conn.sendall(name)
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 80))
s.listen(256)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

# One connection from each source address; prints {source: the target's name or "ERR ..."}.
CLIENT = """
import json, socket, sys
vip, out = sys.argv[1], {}
for src in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6)
    s.settimeout(2)
    try:
        s.bind((src, 0))
        s.connect((vip, 80))
        out[src] = s.recv(64).decode()
    except OSError as err:
        out[src] = f"ERR {err!r}"
    s.close()
print(json.dumps(out))
"""

# One persistent connection from each source; prints {source: name}, then for each line on stdin sends a
# request on every connection and prints {source: name or "ERR ..."}.
PERSISTENT = """
import json, socket, sys
vip, conns, out = sys.argv[1], {}, {}
for src in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6)
    s.settimeout(2)
    s.bind((src, 0))
    s.connect((vip, 80))
    conns[src], out[src] = s, s.recv(64).decode()
print(json.dumps(out), flush=True)
for _ in sys.stdin:
    for src, s in conns.items():
        try:
            s.sendall(b"x")
            out[src] = s.recv(64).decode() or "ERR closed"
        except OSError as err:
            out[src] = f"ERR {err!r}"
    print(json.dumps(out), flush=True)
"""

# Captures IPv6 TCP frames to VIP port 80 on eth0 until stdin closes; prints [ether src, ether dst, hop
# limit, ip6 src] of each.
SNIFFER = """
import json, select, socket, sys
vip = socket.inet_pton(socket.AF_INET6, sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.bind(("eth0", 0))
s.setblocking(False)
print("ready", flush=True)
seen = []
def take():
    while True:
        try:
            f = s.recv(65535)
        except BlockingIOError:
            return
        if f[20] == 6 and f[38:54] == vip and f[56:58] == b"\\x00P":
            src = socket.inet_ntop(socket.AF_INET6, f[22:38])
            seen.append([f[6:12].hex(":"), f[0:6].hex(":"), f[21], src])
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [])
    take()
    if sys.stdin in ready and not sys.stdin.read():
        break
print(json.dumps(sorted(seen)))
"""

# A Neighbor Solicitation for argv[1] from argv[2] to the solicited-node multicast address; prints the
# sorted MACs of the Neighbor Advertisements for it within 1 s.
NS_PROBE = """
import json, socket, struct, sys, time
target = socket.inet_pton(socket.AF_INET6, sys.argv[1])
src = socket.inet_pton(socket.AF_INET6, sys.argv[2])
dst = bytes.fromhex("ff0200000000000000000001ff") + target[13:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.bind(("eth0", 0x86DD))
mac = s.getsockname()[4]
icmp = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + target + bytes([1, 1]) + mac
pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58) + icmp
total = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
while total >> 16:
    total = (total & 0xFFFF) + (total >> 16)
icmp = icmp[:2] + struct.pack("!H", ~total & 0xFFFF) + icmp[4:]
header = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 255, src, dst)
s.send(b"\\x33\\x33" + dst[12:] + mac + b"\\x86\\xdd" + header + icmp)
found, end = set(), time.monotonic() + 1
while (left := end - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        f = s.recv(2048)
    except TimeoutError:
        break
    if f[20] == 58 and f[54] == 136 and f[62:78] == target:
        found.add(f[6:12].hex(":"))
print(json.dumps(sorted(found)))
"""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(PREFIX) as topo:  # removes the namespaces on the way out, also on a failure
        for host in ("client", "lb", *WEBS):
            topo.add_host(host)
            # addresses usable at once (no duplicate address detection); new interfaces inherit it
            topo.sysctl(host, {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
        topo.connect("client", addrs=[f"{a}/32" for a in ("2001:db8::100", *CLIENTS)])
        topo.route("client", f"{VIP}/128", "via", LB)
        topo.connect("lb", addrs=[f"{LB}/32"])
        topo.addr("lb", f"{VIP}/128", "eth0")
        for web, address in WEBS.items():
            topo.connect(web, addrs=[f"{address}/32"])
            topo.addr(web, f"{VIP}/128", "lo")
        yield topo


def probe(topo: Topology) -> list[str]:
    """The MACs that answer a Neighbor Solicitation for the VIP."""
    return json.loads(topo.run("client", sys.executable, "-c", NS_PROBE, VIP, "2001:db8::100").stdout)


class Balancer:
    """The KernelTable in the balancer's namespace (BALANCER)."""

    def __init__(self, topo: Topology) -> None:
        args = [VIP, topo.mac("lb"), str(SIZE), str(SEED), *(topo.mac(web) for web in WEBS)]
        self.proc = topo.popen(
            "lb", sys.executable, "-c", BALANCER, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def __call__(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the balancer script died on {command!r}"
        return json.loads(line)


@pytest.fixture(scope="module")
def balancer(topo: Topology) -> Balancer:
    return Balancer(topo)


@pytest.fixture
def servers(topo: Topology) -> Iterator[None]:
    procs = [topo.popen(web, sys.executable, "-c", SERVER, web) for web in WEBS]
    time.sleep(0.3)  # listening
    yield
    for proc in procs:
        topo.stop(proc)


def connect(topo: Topology) -> dict[str, str]:
    """A new connection from every client: which target answered."""
    return json.loads(topo.run("client", sys.executable, "-c", CLIENT, VIP, *CLIENTS).stdout)


def test_ipv6_through_the_kernel_table(topo: Topology, balancer: Balancer, servers: None) -> None:
    lb_mac = topo.mac("lb")
    # without the table the balancer's kernel answers for the VIP, and only it (not the targets)
    assert probe(topo) == [lb_mac]
    assert topo.run("lb", "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "0"
    assert balancer("both") == "ok"
    assert probe(topo) == []

    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    sniffers = {web: topo.popen(web, sys.executable, "-c", SNIFFER, VIP, **pipes) for web in WEBS}
    for sniffer in sniffers.values():
        assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
    try:
        answers = connect(topo)
    finally:
        captured = {web: json.loads(s.communicate(timeout=10)[0]) for web, s in sniffers.items()}

    assert answers == EXPECTED
    assert set(answers.values()) == set(WEBS)
    for web, frames in captured.items():
        # SYN, ACK, FIN, ACK: only its own clients' frames, from the balancer's MAC, not routed
        assert {src for *_, src in frames} == {c for c, w in EXPECTED.items() if w == web}
        assert {(src_mac, dst_mac, hops) for src_mac, dst_mac, hops, _ in frames} == {
            (lb_mac, topo.mac(web), 64)
        }

    flows = balancer("flows")
    low = {str(IPv6Address(int(IPv6Address(c)) & (1 << 96) - 1)): c for c in CLIENTS}
    assert {(low[src], vip, port) for src, _, vip, port, _, _ in flows} == {(c, VIP, 80) for c in CLIENTS}
    macs = {web: topo.mac(web) for web in WEBS}
    assert all(mac == macs[EXPECTED[low[src]]] for src, _, _, _, mac, _ in flows)


def test_ipv6_flows_stay_on_a_draining_target_and_leave_a_dead_one(
    topo: Topology, balancer: Balancer, servers: None
) -> None:
    assert balancer("both") == "ok"
    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    client = topo.popen("client", sys.executable, "-c", PERSISTENT, VIP, *CLIENTS, **pipes)
    stdin, stdout = client.stdin, client.stdout
    assert stdin is not None and stdout is not None

    def again() -> dict[str, str]:
        """A request on every open connection: who answered."""
        stdin.write("\n")
        stdin.flush()
        return json.loads(stdout.readline())

    try:
        assert json.loads(stdout.readline()) == EXPECTED
        assert balancer("drain") == "ok"
        assert again() == EXPECTED  # open connections stay where they are
        assert set(connect(topo).values()) == {"web1"}  # new ones do not go to the draining target
        assert balancer("out") == "ok"
        # a connection on the dead target is picked again (web1, which resets it), the others stay
        after = again()
        assert all(after[c] == "web1" for c in CLIENTS if EXPECTED[c] == "web1")
        assert all(after[c].startswith("ERR") for c in CLIENTS if EXPECTED[c] == "web2")
    finally:
        topo.stop(client)
    assert balancer("both") == "ok"
    assert connect(topo) == EXPECTED  # back: new connections as the hash says
