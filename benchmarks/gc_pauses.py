"""Garbage-collector pauses while the forwarder's tables fill and churn, with the interpreter's default
thresholds and with the daemon's (`dsrlb.daemon.GC_THRESHOLDS`, start-up objects frozen). A pause holds
the packet thread, so the longest one is what a ring must absorb:

    .venv/bin/python benchmarks/gc_pauses.py --flows 300000 --syns 600000
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import state_memory  # noqa: E402

from dsrlb.daemon import GC_THRESHOLDS  # noqa: E402


def run(flows: int, syns: int, tuned: bool) -> str:
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    if tuned:
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
    gc.callbacks.append(timed)
    fwd, _ = state_memory.forwarder(flows)
    state_memory.fill(fwd, syns, one_client=False)
    full = sum(1 for g, _ in pauses if g == 2)
    longest, total = max(p for _, p in pauses) * 1e3, sum(p for _, p in pauses) * 1e3
    name = "daemon" if tuned else "default"
    return (
        f"{name} thresholds {gc.get_threshold()}: {len(pauses)} collections, {full} full; "
        f"longest {longest:.1f} ms, total {total:.0f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=300000, help="flow table capacity")
    parser.add_argument("--syns", type=int, default=600000, help="SYNs from distinct clients")
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)  # one setting per process
    args = parser.parse_args()
    if args.tuned:
        print(run(args.flows, args.syns, True))
        return 0
    print(run(args.flows, args.syns, False), flush=True)
    return subprocess.call(
        [sys.executable, __file__, "--tuned", "--flows", str(args.flows), "--syns", str(args.syns)]
    )


if __name__ == "__main__":
    sys.exit(main())
