"""Memory per flow and per session, and the longest expiry step, on an in-memory ring (no kernel).

Records `--flows` flows through the forwarding loop's slow path, measured with tracemalloc: each from its
own client address (a spoofed flood: a flow and a session each) and all from one client (a flow each).
Then lets them all expire in steps as the loop would and reports the longest step (`Forwarder._sweep`),
which must stay far below 10 ms. The defaults of `set flows` and `set sessions` are sized from these
figures (docs/config.md):

    .venv/bin/python benchmarks/state_memory.py --flows 262144
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
import time
import tracemalloc

from dsrlb.dataplane import forwarder as fw
from dsrlb.selection import Candidate, Selector

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from forwarder_micro import OWN, PORT, TARGET_MACS, VIP, MemoryRing  # noqa: E402

CLIENT = bytes.fromhex("020000000099")


def syn_frames(n: int, start: int, one_client: bool) -> list[bytes]:
    """TCP SYNs to VIP:PORT, distinct source address each, or distinct ports (60000 a client)."""
    frames = []
    for i in range(start, start + n):
        src = bytes([198, 18, 0, i // 60000]) if one_client else struct.pack("!I", 0x0A000000 + i)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, src, VIP)
        tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, PORT, i, 0, 0x50, 0x02, 65535, 0, 0)
        frames.append(OWN + CLIENT + b"\x08\x00" + ip + tcp + bytes(6))
    return frames


def forwarder(flows: int) -> tuple[fw.Forwarder, fw.ForwardingTable]:
    fwd = fw.Forwarder(None)  # type: ignore[arg-type]
    selector = Selector("maglev", [Candidate(t, f"t{t}") for t in TARGET_MACS])
    forward = {t: mac + OWN for t, mac in TARGET_MACS.items()}
    service = fw.Service(selector, frozenset(TARGET_MACS), forward, 600.0, fw.ServiceState())
    # no expiry while the table fills (tracemalloc makes that slow)
    table = fw.ForwardingTable(
        {(VIP, 6, PORT): service}, frozenset({VIP}), frozenset(), flows=flows, sessions=flows, embryonic=3600
    )
    fwd.install(table)
    return fwd, table


def fill(fwd: fw.Forwarder, total: int, one_client: bool, chunk: int = 16384) -> None:
    """Run `total` SYNs through the loop, a ring of `chunk` frames at a time."""
    for start in range(0, total, chunk):
        ring = MemoryRing(syn_frames(min(chunk, total - start), start, one_client), tx_frames=64)
        fwd.ring = ring  # type: ignore[assignment]
        ring.stop = fwd._stop.set
        ring.fill()
        fwd._stop.clear()
        fwd._loop()


def measure(total: int, one_client: bool) -> float:
    fwd, _ = forwarder(total + 1)
    fill(fwd, 2048, one_client)  # warm: a first table, the loop's own allocations
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fill(fwd, total, one_client)
    fwd._census.clear()  # a census in progress holds a list of the flows: 8 B each, for a second
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(fwd.flows) >= total, len(fwd.flows)
    return used / total


def longest_step(total: int) -> tuple[float, int]:
    fwd, table = forwarder(total + 1)
    fill(fwd, total, one_client=False)
    now = time.monotonic() + table.embryonic + 2
    fwd._census_at = now + 3600  # expiry steps only: the census is timed below
    worst = 0.0
    steps = 0
    while fwd.flows or fwd._census:
        start = time.perf_counter()
        fwd._sweep(now)
        worst = max(worst, time.perf_counter() - start)
        steps += 1
    return worst, steps


def longest_census(total: int) -> tuple[float, int]:
    fwd, table = forwarder(total + 1)
    fill(fwd, total, one_client=False)
    now = time.monotonic()
    fwd._census_at, fwd._cursor = now, int(now) + 3600  # a census only
    worst = 0.0
    steps = 0
    while True:
        start = time.perf_counter()
        fwd._sweep(now)
        worst = max(worst, time.perf_counter() - start)
        steps += 1
        if not fwd._census:
            return worst, steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=65536, help="flows for the memory figures")
    parser.add_argument("--steps", type=int, default=1 << 20, help="flows for the step times")
    args = parser.parse_args()
    flood = measure(args.flows, one_client=False)
    flows = measure(args.flows, one_client=True)
    print(f"flow + session (one client each): {flood:6.0f} B")
    print(f"flow only (one client):           {flows:6.0f} B")
    print(f"so a session:                      {flood - flows:6.0f} B")
    worst, steps = longest_step(args.steps)
    print(f"expiring {args.steps} embryonic flows: {steps} steps, longest {worst * 1e3:.2f} ms")
    worst, steps = longest_census(args.steps)
    print(f"census of {args.steps} flows: {steps} steps, longest {worst * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
