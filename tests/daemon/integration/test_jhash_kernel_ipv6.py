"""The kernel and `dsrlb.jhash.bucket` put every IPv6 client in the same bucket: `jhash ip6 saddr mod N
seed S` hashes the 16 address bytes (length 16: one mixed block of 12 read in CPU byte order, then the
last 4 as the kernel's tail), checked on real frames as test_jhash_kernel.py does for IPv4.

  sender (AF_PACKET) eth0 === in0  kernel: netdev ingress on in0             out0 === eth0 receiver
                                   ether daddr set jhash ip6 saddr mod N       (AF_PACKET: reads the
                                   seed S map @buckets fwd to "out0"           bucket from the MAC)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv6Address

import pytest

from dsrlb.jhash import bucket, bucketer
from dsrlb.vocabulary import DEFAULTS
from dsrlb_tools.netns import Topology

PREFIX = f"dsrlb-v6j{os.getpid()}"  # unique, so that a concurrent run keeps its own namespaces
CLIENTS = 2500
MARK = b"dsrlb-jhash6"

# IPv6 UDP frames from each source to 2001:db8::1 (the UDP checksum is left 0: nothing here checks it)
SENDER = """
import socket, struct, sys, time
mark, sources = sys.argv[1].encode(), bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
payload = struct.pack("!HHHH", 40000, 9, 8 + len(mark), 0) + mark
dst = bytes.fromhex("20010db8000000000000000000000001")
for i in range(0, len(sources), 16):
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64, sources[i:i + 16], dst)
    s.send(bytes.fromhex("0200000fffff0200000000aa86dd") + header + payload)
    if i % 1600 == 1584:
        time.sleep(0.002)  # let the receiver drain its queue
"""

RECEIVER = """
import json, socket, sys
mark, count = sys.argv[1].encode(), int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)  # SO_RCVBUFFORCE: room for every frame
s.bind(("eth0", 0))
s.settimeout(3.0)
print("ready", flush=True)
got = {}
try:
    while len(got) < count:
        frame = s.recv(2048)
        if frame[20] == 17 and frame[62:62 + len(mark)] == mark:
            got[frame[22:38].hex()] = frame[0:6].hex()
except TimeoutError:
    pass
print(json.dumps(got))
"""


def bucket_mac(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def ruleset(size: int, seed: int) -> str:
    elements = ", ".join(f"{i} : {bucket_mac(i)}" for i in range(size))
    return f"""flush ruleset
table netdev dsrlbjh6 {{
    map buckets {{ typeof numgen inc mod 2 : ether daddr; }}
    chain in0 {{
        type filter hook ingress device "in0" priority 0;
        ether daddr set jhash ip6 saddr mod {size} seed {seed:#x} map @buckets fwd to "out0"
    }}
}}
add element netdev dsrlbjh6 buckets {{ {elements} }}
"""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("needs root: it creates network namespaces")
    if shutil.which("nft") is None:
        pytest.skip("needs nft")
    with Topology(PREFIX) as topo:  # removes the namespaces on the way out, also on a failure
        for host in ("sender", "kernel", "receiver"):
            topo.add_host(host)
            # no IPv6 stack on the hosts: frames are built by hand, and none of router solicitations,
            # DAD or MLD reports may reach the receiver
            topo.sysctl(host, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
        topo.link("sender", "eth0", "kernel", "in0")
        topo.link("kernel", "out0", "receiver", "eth0")
        yield topo


def sources() -> list[bytes]:
    """Distinct addresses all over the space, with the edges and a few of one /64."""
    rng = random.Random(20261202)
    found = {bytes(16), b"\xff" * 16, IPv6Address("2001:db8::10").packed, IPv6Address("fe80::1").packed}
    found |= {IPv6Address(f"2001:db8:0:1::{i:x}").packed for i in range(1, 200)}
    while len(found) < CLIENTS:
        found.add(rng.getrandbits(128).to_bytes(16, "big"))
    return sorted(found)


@pytest.mark.parametrize("size", [211, 401])
@pytest.mark.parametrize("seed", [DEFAULTS["set"]["hashseed"], 0xFFFFFFFF])
def test_kernel_and_python_pick_the_same_bucket_for_ipv6(topo: Topology, size: int, seed: int) -> None:
    topo.run("kernel", "nft", "-f", "-", input=ruleset(size, seed))
    clients = sources()
    receiver = topo.popen(
        "receiver", sys.executable, "-c", RECEIVER, MARK.decode(), str(len(clients)), stdout=subprocess.PIPE
    )
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        topo.run("sender", sys.executable, "-c", SENDER, MARK.decode(), b"".join(clients).hex())
        out, _ = receiver.communicate(timeout=60)
    finally:
        topo.stop(receiver)
    kernel = {bytes.fromhex(src): int(mac, 16) - 0x020000000000 for src, mac in json.loads(out).items()}
    missing = len(clients) - len(kernel)
    assert not missing, f"{missing} of {len(clients)} frames did not arrive"
    pick = bucketer(seed, size)  # what the selector calls
    wrong = [
        f"{IPv6Address(c)}: kernel {kernel[c]}, python {bucket(c, seed, size)}, selector {pick(c)}"
        for c in clients
        if not kernel[c] == bucket(c, seed, size) == pick(c)
    ]
    assert not wrong, f"{len(wrong)} of {len(clients)} clients disagree, e.g. {wrong[:5]}"
    assert len(set(kernel.values())) > 0.95 * size  # (nearly) every bucket in use: the map was consulted
