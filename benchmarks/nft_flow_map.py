"""What the kernel flow map of `access nftables` costs: slab memory per entry, and how long nft takes to
load it, to list it (what `show sessions` waits for) and to read the counters (twice a second). Runs in
a throwaway network namespace (as root):

    .venv/bin/python benchmarks/nft_flow_map.py --entries 200000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from dsrlb.dataplane.nftables import FLOW_TYPE

TARGET = "02:00:00:00:00:01"


def nft(*args: str, script: str | None = None) -> float:
    """Seconds nft took."""
    start = time.monotonic()
    subprocess.run(["nft", *args], input=script, capture_output=True, text=True, check=True)
    return time.monotonic() - start


def slab_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) for line in meminfo if line.startswith("Slab:"))


def measure(entries: int) -> str:
    subprocess.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], check=True)
    nft("add", "table", "netdev", "m")
    flags = f"size {max(entries, 1024)}; flags dynamic,timeout; timeout 3600s;"
    nft("-f", "-", script=f"add map netdev m flows {{ type {FLOW_TYPE}; {flags} }}\n")
    elements = ", ".join(
        f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} . 1000 . 172.16.1.10 . 80 timeout 600s : {TARGET}"
        for i in range(entries)
    )
    before = slab_kib()
    loaded = nft("-f", "-", script=f"add element netdev m flows {{ {elements} }}\n")
    grown = slab_kib() - before
    listed = nft("-j", "list", "map", "netdev", "m", "flows")
    counters = nft("-j", "reset", "counters", "table", "netdev", "m")
    return (
        f"{entries} entries: slab +{grown / 1024:.1f} MiB ({grown * 1024 / entries:.0f} B an entry); "
        f"loaded in {loaded:.2f} s, listed in {listed:.2f} s, counters read in {counters * 1e3:.0f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200000)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # in the namespace
    args = parser.parse_args()
    if args.inside:
        print(measure(args.entries))
        return 0
    argv = [sys.executable, __file__, "--inside", "--entries", str(args.entries)]
    return subprocess.run(["unshare", "--net", *argv]).returncode


if __name__ == "__main__":
    sys.exit(main())
