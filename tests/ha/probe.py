"""Client probe for failover tests; runs inside the lab's client host (stdlib only).

Every INTERVAL seconds it starts a NEW TCP connection to VIP:PORT and sends an HTTP GET, each attempt
independent of the others (a slow or lost one never delays the next), each with its own TIMEOUT for
connect + request + complete reply. It says "ready" once the first attempt is on its way, stops when its
stdin is closed, then prints one JSON object: the attempts as [start, end, ok, who] with monotonic
times (the lab shares the machine's clock), `who` being the first line of the body (the server's name).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time


async def attempt(vip: str, port: int, timeout: float) -> list:
    start = time.monotonic()
    who = ""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(vip, port)
            writer.write(f"GET / HTTP/1.0\r\nHost: {vip}\r\n\r\n".encode())
            reply = await reader.read()
        head, _, body = reply.partition(b"\r\n\r\n")
        ok = head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1:2] == [b"200"]
        who = body.decode(errors="replace").strip().split("\n")[0]
    except (OSError, TimeoutError):
        ok = False
    finally:
        if writer is not None:
            writer.close()
    return [start, time.monotonic(), ok, who]


async def run(vip: str, port: int, interval: float, timeout: float) -> list:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # stdin EOF is the stop signal; a thread because pipes from nsenter are not always pollable.
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True
    ).start()
    tasks = []
    first = time.monotonic()
    while not stop.is_set():
        tasks.append(asyncio.create_task(attempt(vip, port, timeout)))
        if len(tasks) == 1:
            print("ready", flush=True)
        # absolute schedule: attempts stay INTERVAL apart however long each one takes
        delay = first + len(tasks) * interval - time.monotonic()
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, delay))
        except TimeoutError:
            pass
    return list(await asyncio.gather(*tasks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("vip")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=0.3)
    args = parser.parse_args()
    attempts = asyncio.run(run(args.vip, args.port, args.interval, args.timeout))
    print(json.dumps({"attempts": attempts, "timeout": args.timeout}), flush=True)


if __name__ == "__main__":
    main()
