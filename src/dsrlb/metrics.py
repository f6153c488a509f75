"""Prometheus text exposition of the daemon's counters over a minimal HTTP/1.0 server.

Rendered from the same views as the control socket, so both always agree.
"""

from __future__ import annotations

import asyncio

from dsrlb.views import Status


def _labels(**labels: object) -> str:
    inner = ",".join(f'{k}="{str(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def render(daemon: Status) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP dsrlb_{name} {help_text}")
        lines.append(f"# TYPE dsrlb_{name} {kind}")
        lines.extend(f"dsrlb_{name}{_labels(**labels)} {value}" for labels, value in samples)

    servers = daemon.show_servers()
    targets = daemon.show_targets()
    stats = daemon.show_stats()
    metric(
        "server_packets_total",
        "counter",
        "Packets forwarded per virtual server.",
        [({"server": s["id"], "vip": f"{s['vip']}:{s['port']}"}, s["packets"]) for s in servers],
    )
    metric(
        "server_bytes_total",
        "counter",
        "Bytes forwarded per virtual server.",
        [({"server": s["id"], "vip": f"{s['vip']}:{s['port']}"}, s["bytes"]) for s in servers],
    )
    metric(
        "server_sessions",
        "gauge",
        "Client sessions per virtual server.",
        [({"server": s["id"]}, s["sessions"]) for s in servers],
    )
    metric(
        "target_packets_total",
        "counter",
        "Packets forwarded per target.",
        [({"target": t["id"], "ipaddr": t["ipaddr"]}, t["packets"]) for t in targets],
    )
    metric(
        "target_bytes_total",
        "counter",
        "Bytes forwarded per target.",
        [({"target": t["id"], "ipaddr": t["ipaddr"]}, t["bytes"]) for t in targets],
    )
    metric(
        "target_sessions",
        "gauge",
        "Client sessions per target.",
        [({"target": t["id"]}, t["sessions"]) for t in targets],
    )
    metric(
        "target_up",
        "gauge",
        "1 when the target's health checks pass.",
        [({"target": t["id"], "ipaddr": t["ipaddr"]}, int(t["health"] == "up")) for t in targets],
    )
    metric(
        "target_enabled",
        "gauge",
        "1 when the target takes new connections.",
        [({"target": t["id"]}, int(t["admin"] == "enabled")) for t in targets],
    )
    for key in ("rx", "tx", "forwarded", "arp_replies", "icmp_replies", "checksums_fixed"):
        metric(f"{key}_total", "counter", f"Frames: {key.replace('_', ' ')}.", [({}, stats[key])])
    metric(
        "drops_total",
        "counter",
        "Frames dropped, by reason.",
        [({"reason": r}, n) for r, n in sorted(stats["drops"].items())],
    )
    metric(
        "config_generation",
        "gauge",
        "Config generation in service (1 = first load).",
        [({}, stats["generation"])],
    )
    vrrp = daemon.show_vrrp()
    if vrrp["state"] != "disabled":
        vrid = {"vrid": vrrp["vrid"]}
        metric(
            "vrrp_master",
            "gauge",
            "1 while this balancer is VRRP master.",
            [(vrid, int(vrrp["state"] == "master"))],
        )
        metric("vrrp_transitions_total", "counter", "VRRP state changes.", [(vrid, vrrp["transitions"])])
        metric("vrrp_adverts_sent_total", "counter", "VRRP adverts sent.", [(vrid, vrrp["adverts_sent"])])
        metric(
            "vrrp_adverts_received_total",
            "counter",
            "Valid VRRP adverts received from peers.",
            [(vrid, vrrp["adverts_received"])],
        )
        metric(
            "vrrp_drops_total",
            "counter",
            "VRRP frames dropped, by reason.",
            [({**vrid, "reason": r}, n) for r, n in sorted(vrrp["drops"].items())],
        )
    return "\n".join(lines) + "\n"


async def serve(daemon: Status, host: str, port: int) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)).strip():
                pass
            parts = request.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1] in (b"/metrics", b"/"):
                body = render(daemon).encode()
                head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"not found: try /metrics\n"
                head = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(client, host, port)
