"""Client load for lab scenarios: a NEW TCP connection and HTTP GET to VIP:PORT every INTERVAL seconds,
run inside a lab host's network namespace (`dsrlb lab load HOST VIP`). Stdlib only.

Each attempt is independent of the others (a slow or lost one never delays the next) and has its own
TIMEOUT for connect + request + complete reply; attempts cycle through the given source addresses, so
a balancer sees many clients. With --hold S each connection lives S seconds (its request trickles in),
for flows that must survive a change of the path under them. It says "ready" once the first attempt is
on its way and stops when its stdin is closed, when the stop file appears, or after at most MAX seconds
(open connections run to their end). Then it prints one JSON object: the attempts as [start, end, ok,
who, source] with monotonic times (the lab shares the machine's clock; `who` is the first line of the
body, the server's name) and a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import threading
import time

POLL = 0.05  # how often the stop file is looked for


async def attempt(vip: str, port: int, source: str | None, timeout: float, hold: float = 0.0) -> list:
    """One connection and GET; with ``hold`` the request trickles in for that many seconds (a byte a
    second), so the connection lives that long with packets in both directions."""
    start = time.monotonic()
    who = ""
    writer = None
    try:
        async with asyncio.timeout(timeout + hold):
            local = (source, 0) if source else None
            reader, writer = await asyncio.open_connection(vip, port, local_addr=local)
            writer.write(f"GET / HTTP/1.0\r\nHost: {vip}\r\nX-Hold: ".encode())
            for _ in range(int(hold)):  # one header line a byte a second (servers cap the header count)
                await writer.drain()
                await asyncio.sleep(1.0)
                writer.write(b"x")
            writer.write(b"\r\n\r\n")
            reply = await reader.read()
        head, _, body = reply.partition(b"\r\n\r\n")
        ok = head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1:2] == [b"200"]
        who = body.decode(errors="replace").strip().split("\n")[0]
    except (OSError, TimeoutError):
        ok = False
    finally:
        if writer is not None:
            writer.close()
    return [start, time.monotonic(), ok, who, source or ""]


async def _watch_stop_file(path: str, stop: asyncio.Event) -> None:
    while not os.path.exists(path):
        await asyncio.sleep(POLL)
    stop.set()


async def run(args: argparse.Namespace) -> list:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if args.stop_file:
        watcher = asyncio.create_task(_watch_stop_file(args.stop_file, stop))
    else:  # stdin EOF: a thread because pipes from nsenter are not always pollable
        threading.Thread(
            target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True
        ).start()
    loop.call_later(args.max_seconds, stop.set)  # stops new attempts; open ones run to their end
    sources = args.sources.split(",") if args.sources else [None]
    tasks = []
    first = time.monotonic()
    while not stop.is_set():
        source = sources[len(tasks) % len(sources)]
        tasks.append(asyncio.create_task(attempt(args.vip, args.port, source, args.timeout, args.hold)))
        if len(tasks) == 1:
            print("ready", flush=True)
        # absolute schedule: attempts stay INTERVAL apart however long each one takes
        delay = first + len(tasks) * args.interval - time.monotonic()
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, delay))
        except TimeoutError:
            pass
    if args.stop_file:
        watcher.cancel()
    return list(await asyncio.gather(*tasks))


def gap(attempts: list) -> float:
    """Longest interval between two successful replies (s), the window's edges counting as replies."""
    if not attempts:
        return float("inf")
    points = [attempts[0][0], *sorted(a[1] for a in attempts if a[2]), attempts[-1][0]]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


def summary(attempts: list) -> dict:
    """Requests sent and failed, the longest interval without a reply, and who served which source."""
    served: dict[str, dict[str, int]] = collections.defaultdict(lambda: collections.defaultdict(int))
    for _, _, ok, who, source in attempts:
        if ok:
            served[who][source] += 1
    return {
        "sent": len(attempts),
        "failed": sum(1 for a in attempts if not a[2]),
        "gap_ms": round(1000 * gap(attempts)) if attempts else None,
        "served": {server: dict(sources) for server, sources in sorted(served.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("vip")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=0.3)
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="keep each connection open this many seconds, its request trickling in (long-lived flows)",
    )
    parser.add_argument("--sources", default="", help="comma-separated source addresses to cycle through")
    parser.add_argument("--stop-file", default="", help="stop when this file exists (stdin is ignored)")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--summary-only", action="store_true", help="leave the attempts out of the report")
    args = parser.parse_args()
    attempts = asyncio.run(run(args))
    report = {"timeout": args.timeout, "summary": summary(attempts)}
    if not args.summary_only:
        report["attempts"] = attempts
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
