"""Micro-benchmark of the forwarding loop on an in-memory ring: no namespaces, no kernel, no other core.

Fills an RX ring with UDP frames of `--flows` known flows (the first lap takes the slow path and records
them), then times laps of the fast path: `Forwarder._loop` over the whole ring, frames copied to the TX
ring with new Ethernet addresses. Reports ns per frame (min and median over rounds). With `--slow`
the flows are forgotten before every lap, so every frame takes the slow path (parse, look the service
up, follow the client's session, record the flow).

With `--baseline path/to/forwarder.py` (an older copy of src/dsrlb/dataplane/forwarder.py) both versions
run interleaved in the same process, round by round, and the change is reported (of the min, of the
median and the median of per-round ratios):

    .venv/bin/python benchmarks/forwarder_micro.py --baseline /tmp/before/dsrlb/dataplane/forwarder.py
"""

from __future__ import annotations

import argparse
import importlib.util
import mmap
import statistics
import struct
import sys
import time
from types import ModuleType

from dsrlb.dataplane import forwarder as current
from dsrlb.dataplane.ring import FRAME_SIZE, TPACKET2_HDR
from dsrlb.selection import Candidate, Selector

OWN = bytes.fromhex("020000000001")
CLIENT = bytes.fromhex("020000000099")
TARGET_MACS = {1: bytes.fromhex("02000000000a"), 2: bytes.fromhex("02000000000b")}
VIP = bytes([172, 16, 1, 10])
PORT = 9000


class MemoryRing:
    """What the loop needs of a PacketRing, in anonymous memory. `wait` (called when the RX ring is
    empty) stops the loop: one call of `_loop` is one lap of the ring."""

    def __init__(self, frames: list[bytes], tx_frames: int = 256) -> None:
        self.rx_frames, self.tx_frames = len(frames), tx_frames
        self.tx_base = self.rx_frames * FRAME_SIZE
        self.map = mmap.mmap(-1, (self.rx_frames + tx_frames) * FRAME_SIZE)
        self.mac = OWN
        self.max_frame = 1514
        for slot, frame in enumerate(frames):
            at = slot * FRAME_SIZE
            TPACKET2_HDR.pack_into(self.map, at, 0, len(frame), len(frame), 66, 80, 0, 0, 0, 0)
            self.map[at + 66 : at + 66 + len(frame)] = frame
        self.rx_status = memoryview(self.map).cast("I")[: self.tx_base // 4 : FRAME_SIZE // 4]
        self.tx_status = memoryview(self.map).cast("I")[self.tx_base // 4 :: FRAME_SIZE // 4]
        self.tx_free = memoryview(bytes(4 * tx_frames)).cast("I")
        self.rx_full = memoryview(struct.pack(f"{self.rx_frames}I", *[1] * self.rx_frames)).cast("I")
        self.stop = lambda: None
        self.sent = 0

    def fill(self) -> None:
        """Hand every RX slot to the loop, as the kernel does when frames arrive."""
        self.rx_status[:] = self.rx_full

    def flush(self) -> None:
        """The kernel sending the TX ring: every queued slot is free again."""
        self.sent += self.tx_frames - self.tx_status.tolist().count(0)
        self.tx_status[:] = self.tx_free

    def wait(self, timeout_ms: int) -> None:
        self.stop()


def udp_frames(flows: int) -> list[bytes]:
    """60-byte UDP frames to VIP:PORT, one per flow (distinct source address and port)."""
    frames = []
    for i in range(flows):
        src = bytes([198, 18, i >> 8 & 0xFF, i & 0xFF])
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, i & 0xFFFF, 0, 64, 17, 0, src, VIP)
        udp = struct.pack("!HHHH", 1024 + i % 60000, PORT, 26, 0) + bytes(18)
        frames.append(OWN + CLIENT + b"\x08\x00" + ip + udp)
    return frames


def setup(module: ModuleType, flows: int) -> tuple[object, MemoryRing]:
    """A forwarder of `module` with one UDP service on two targets, its flows recorded."""
    ring = MemoryRing(udp_frames(flows))
    fwd = module.Forwarder(ring)
    ring.stop = fwd._stop.set
    selector = Selector("maglev", [Candidate(t, f"t{t}") for t in TARGET_MACS])
    forward = {t: mac + OWN for t, mac in TARGET_MACS.items()}
    service = module.Service(selector, frozenset(TARGET_MACS), forward, 600.0, module.ServiceState())
    fwd.install(module.ForwardingTable({(VIP, 17, PORT): service}, frozenset({VIP}), frozenset()))
    lap(fwd, ring)  # slow path: select and record every flow
    assert len(fwd.flows) == flows and fwd.stats.forwarded == flows, "frames were not forwarded"
    return fwd, ring


def lap(fwd: object, ring: MemoryRing, slow: bool = False) -> float:
    """One lap of the ring through the loop; seconds taken."""
    if slow:
        fwd.flows.clear()  # type: ignore[attr-defined]
    ring.fill()
    fwd._stop.clear()  # type: ignore[attr-defined]
    start = time.perf_counter()
    fwd._loop()  # type: ignore[attr-defined]
    return time.perf_counter() - start


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("forwarder_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=4096, help="frames in the ring, one per flow")
    parser.add_argument("--rounds", type=int, default=30, help="timed laps per version")
    parser.add_argument("--slow", action="store_true", help="time the slow path: forget flows every lap")
    parser.add_argument("--baseline", metavar="FORWARDER_PY", help="an older forwarder.py to compare with")
    args = parser.parse_args()
    versions = {"current": current}
    if args.baseline:
        versions = {"baseline": load(args.baseline), **versions}
    runs = {name: setup(module, args.flows) for name, module in versions.items()}
    for fwd, ring in runs.values():  # warm up
        for _ in range(3):
            lap(fwd, ring, args.slow)
    ns: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (fwd, ring) in runs.items():  # interleaved: drift hits every version alike
            ns[name].append(lap(fwd, ring, args.slow) * 1e9 / args.flows)
    for name, (fwd, ring) in runs.items():
        assert fwd.stats.drops == {} and ring.sent == fwd.stats.forwarded, f"{name}: frames lost"  # type: ignore[attr-defined]
        print(f"{name:>8}: {min(ns[name]):7.1f} ns/frame min, {statistics.median(ns[name]):7.1f} median")
    if args.baseline:
        for figure in (min, statistics.median):
            base, cur = figure(ns["baseline"]), figure(ns["current"])
            print(f"{figure.__name__:>8}: {100 * (cur - base) / base:+.1f} % current vs baseline")
        # each round's two laps ran back to back: their ratio is the least disturbed by drift
        paired = statistics.median(c / b for b, c in zip(ns["baseline"], ns["current"], strict=True))
        print(f"  paired: {100 * (paired - 1):+.1f} % current vs baseline (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
