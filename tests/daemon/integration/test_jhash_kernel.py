"""The kernel and `dsrlb.jhash.bucket` put every client in the same bucket: real frames through the
nftables rule the `access nftables` fast path uses.

  sender (AF_PACKET) eth0 === in0  kernel: netdev ingress on in0            out0 === eth0 receiver
                                   ether daddr set jhash ip saddr mod N       (AF_PACKET: reads the
                                   seed S map @buckets fwd to "out0"          bucket from the MAC)

Bucket i maps to the MAC 02:00:00:00:HI:LO, so the destination MAC of each frame that arrives tells
which bucket the kernel chose for its source address. No address is configured anywhere: frames are
built by hand and the kernel only reads their source address.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from dsrlb.jhash import bucket
from dsrlb.vocabulary import DEFAULTS
from dsrlb_tools.netns import Topology

PREFIX = f"dsrlb-jh{os.getpid()}"  # unique, so that a concurrent run keeps its own namespaces
CLIENTS = 2500
MARK = b"dsrlb-jhash"

SENDER = """
import socket, struct, sys, time
mark, sources = sys.argv[1].encode(), bytes.fromhex(sys.argv[2])
def checksum(header):
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
payload = struct.pack("!HHHH", 40000, 9, 8 + len(mark), 0) + mark
for i in range(0, len(sources), 4):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), i // 4, 0, 64, 17, 0,
                         sources[i:i + 4], bytes([192, 0, 2, 1]))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    s.send(bytes.fromhex("0200000fffff0200000000aa0800") + header + payload)
    if i % 400 == 396:
        time.sleep(0.002)  # let the receiver drain its queue
"""

RECEIVER = """
import json, socket, sys
mark, count = sys.argv[1].encode(), int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)  # SO_RCVBUFFORCE: room for every frame
s.bind(("eth0", 0))
s.settimeout(3.0)
print("ready", flush=True)
got = {}
try:
    while len(got) < count:
        frame = s.recv(2048)
        if frame[23] == 17 and frame[42:42 + len(mark)] == mark:
            got[frame[26:30].hex()] = frame[0:6].hex()
except TimeoutError:
    pass
print(json.dumps(got))
"""


def bucket_mac(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def ruleset(size: int, seed: int) -> str:
    elements = ", ".join(f"{i} : {bucket_mac(i)}" for i in range(size))
    return f"""flush ruleset
table netdev dsrlbjh {{
    map buckets {{ typeof numgen inc mod 2 : ether daddr; }}
    chain in0 {{
        type filter hook ingress device "in0" priority 0;
        ether type ip ether daddr set jhash ip saddr mod {size} seed {seed:#x} map @buckets fwd to "out0"
    }}
}}
add element netdev dsrlbjh buckets {{ {elements} }}
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
            topo.sysctl(host, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
        topo.link("sender", "eth0", "kernel", "in0")
        topo.link("kernel", "out0", "receiver", "eth0")
        yield topo


def sources() -> list[bytes]:
    """Distinct addresses all over the space, with the edges."""
    rng = random.Random(20261201)
    found = {b"\0\0\0\0", b"\xff\xff\xff\xff", IPv4Address("198.18.0.10").packed}
    while len(found) < CLIENTS:
        found.add(rng.getrandbits(32).to_bytes(4, "big"))
    return sorted(found)


@pytest.mark.parametrize("size", [211, 401])
@pytest.mark.parametrize("seed", [DEFAULTS["set"]["hashseed"], 0xFFFFFFFF])
def test_kernel_and_python_pick_the_same_bucket(topo: Topology, size: int, seed: int) -> None:
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
    assert len(kernel) == len(clients), (
        f"{len(clients) - len(kernel)} of {len(clients)} frames did not arrive"
    )
    wrong = [
        f"{IPv4Address(c)}: kernel {kernel[c]}, python {bucket(c, seed, size)}"
        for c in clients
        if kernel[c] != bucket(c, seed, size)
    ]
    assert not wrong, f"{len(wrong)} of {len(clients)} clients disagree, e.g. {wrong[:5]}"
    assert len(set(kernel.values())) > 0.95 * size  # (nearly) every bucket in use: the map was consulted
