"""Prometheus text exposition of the daemon's counters over a minimal HTTP/1.0 server.

Rendered from the same views as the control socket, so both always agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time

from dsrlb.views import ENDPOINTS, Endpoint, Status

# (key of show stats, metric name, help) of the data plane's frame counters.
FRAME_COUNTERS = (
    (
        "rx",
        "rx_frames_total",
        "Frames the data plane read from its interface (what the packet filter passed).",
    ),
    ("tx", "tx_frames_total", "Frames the data plane sent: forwarded frames, ARP and ICMP echo replies."),
    (
        "forwarded",
        "forwarded_frames_total",
        "Frames forwarded to a target (by the kernel with access nftables).",
    ),
    ("arp_replies", "arp_replies_total", "ARP replies sent for a VIP or the shared virt address."),
    ("icmp_replies", "icmp_echo_replies_total", "ICMP echo replies sent for a VIP or the virt address."),
    (
        "nd_replies",
        "neighbour_advertisements_total",
        "Neighbour advertisements sent answering solicitations for an IPv6 VIP or virt6.",
    ),
    (
        "checksums_fixed",
        "checksum_completed_frames_total",
        "Forwarded frames whose TCP/UDP checksum the kernel had left unfinished (CHECKSUM_PARTIAL).",
    ),
)


def _start_time() -> float:
    """When this process started, seconds since the epoch: from /proc (the kernel's clock ticks since
    boot), or the import time of this module where /proc cannot tell."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


START_TIME = _start_time()


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
    info = {
        "version": stats["version"],
        "build": stats["build"],
        "python": platform.python_version(),
        "access": stats["access"],
    }
    metric(
        "build_info",
        "gauge",
        "Always 1; the labels say which dsrlb runs, on which Python and data plane.",
        [(info, 1)],
    )
    lines.append(
        "# HELP process_start_time_seconds Start time of the process since the Unix epoch, in seconds."
    )
    lines.append("# TYPE process_start_time_seconds gauge")
    lines.append(f"process_start_time_seconds {START_TIME:.2f}")
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
    for key, name, help_text in FRAME_COUNTERS:
        metric(name, "counter", help_text, [({}, stats[key])])
    metric(
        "link_down_total",
        "counter",
        "Times the data link went down or away (or changed its MTU) and the packet ring was reopened.",
        [({}, stats["link_down"])],
    )
    metric(
        "tx_errors_total",
        "counter",
        "Sends refused by a busy device (ENOBUFS); the frames stayed queued.",
        [({}, stats["tx_errors"])],
    )
    metric(
        "dropped_frames_total",
        "counter",
        "Frames the data plane dropped, by reason (ring_full: the kernel found the receive ring full).",
        [({"reason": r}, n) for r, n in sorted(stats["drops"].items())],
    )
    metric(
        "table_entries",
        "gauge",
        "Entries in the flow table and in the session tables of all virtual servers.",
        [({"table": "flows"}, stats["flows"]), ({"table": "sessions"}, stats["sessions"])],
    )
    metric(
        "table_overflow_packets_total",
        "counter",
        "Packets of new flows not recorded because a table was full; they followed the stateless choice.",
        [({"table": "flows"}, stats["flows_overflow"]), ({"table": "sessions"}, stats["sessions_overflow"])],
    )
    metric(
        "flows_expired_total",
        "counter",
        "Flows expired idle: after one packet (embryonic) or after more.",
        [({"kind": "embryonic"}, stats["expired_embryonic"]), ({"kind": "established"}, stats["expired"])],
    )
    metric(
        "arp_target_changes_total",
        "counter",
        "Changes of a target's MAC heard in ARP: taken (replies to us) or ignored (rate limit, not a reply).",
        [({"result": "changed"}, stats["arp_changed"]), ({"result": "ignored"}, stats["arp_ignored"])],
    )
    metric(
        "ruleset_restored_total",
        "counter",
        "Times the kernel's dsrlb table was found removed (say, nft flush ruleset) and put back.",
        [({"access": stats["access"]}, stats["ruleset_restored"])],
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
        metric(
            "vrrp_transitions_total",
            "counter",
            "VRRP state changes of this balancer (to master, backup or init).",
            [(vrid, vrrp["transitions"])],
        )
        metric(
            "vrrp_adverts_sent_total",
            "counter",
            "VRRP adverts this balancer sent as master (and its priority-0 resign adverts).",
            [(vrid, vrrp["adverts_sent"])],
        )
        metric(
            "vrrp_adverts_received_total",
            "counter",
            "Valid VRRP adverts received from peers.",
            [(vrid, vrrp["adverts_received"])],
        )
        metric(
            "vrrp_dropped_frames_total",
            "counter",
            "VRRP frames dropped, by reason (not_a_peer, other_vrid, a malformed advert, ...).",
            [({**vrid, "reason": r}, n) for r, n in sorted(vrrp["drops"].items())],
        )
    announcing = daemon.bgp_status()
    if announcing["state"] != "disabled":
        metric(
            "bgp_announced",
            "gauge",
            "1 while this balancer puts the VIP on its announcement device (BIRD announces it), else 0.",
            [({"vip": v["vip"]}, int(v["announced"])) for v in announcing["vips"]],
        )
        metric(
            "bgp_announcement_changes_total",
            "counter",
            "VIP addresses added to or removed from the announcement device.",
            [({}, announcing["changes"])],
        )
    syncing = daemon.show_bngsync()
    if syncing["state"] != "disabled":
        active = syncing["state"] == "active"
        metric(
            "bngsync_active",
            "gauge",
            "1 while session sync with the syncpeer runs, else 0.",
            [({}, int(active))],
        )
    if syncing["state"] == "active":
        peer = {"syncpeer": syncing["syncpeer"]}
        metric(
            "bngsync_peer_up",
            "gauge",
            "1 while hellos arrive from the syncpeer (one a second), else 0.",
            [(peer, int(syncing["peer"] != "down"))],
        )
        for name, key, text in (
            (
                "bngsync_packets_sent_total",
                "packets_sent",
                "Datagrams sent to the syncpeer (hellos, batches, acks).",
            ),
            ("bngsync_packets_received_total", "packets_received", "Datagrams accepted from the syncpeer."),
            ("bngsync_packets_resent_total", "packets_resent", "Batches sent again for want of an ack."),
            (
                "bngsync_batches_lost_total",
                "batches_lost",
                "Batches given up: never acknowledged, or queue full.",
            ),
            ("bngsync_sessions_sent_total", "sessions_sent", "Session records sent to the syncpeer."),
            ("bngsync_sessions_received_total", "sessions_received", "Session records received."),
            (
                "bngsync_sessions_overflow_total",
                "sessions_overflow",
                "Peer sessions not kept: the table was full.",
            ),
            (
                "bngsync_full_resyncs_sent_total",
                "full_resyncs_sent",
                "Whole session tables sent to the syncpeer.",
            ),
        ):
            metric(name, "counter", text, [(peer, syncing[key])])
        metric(
            "bngsync_sessions_held",
            "gauge",
            "Peer sessions held for a take-over.",
            [(peer, syncing["sessions_held"])],
        )
        metric(
            "bngsync_dropped_packets_total",
            "counter",
            "Datagrams dropped, by reason (not_syncpeer, malformed, oversize, rate_limited, icmp_error).",
            [({**peer, "reason": r}, n) for r, n in sorted(syncing["drops"].items())],
        )
    return "\n".join(lines) + "\n"


MAX_REQUEST = 8192  # bytes of a request head (request line and headers)
DEADLINE = 3.0  # seconds to read a whole request head (a scraper sends it at once), and again to answer
MAX_CONNECTIONS = 64  # open at once (see views.Endpoint)
BACKLOG = 1024  # a flood is accepted (and closed) at once, not left to SYN-ACK retries for seconds


def endpoint_metrics(endpoints: dict[str, Endpoint] = ENDPOINTS) -> str:
    """The local endpoints' connections (control socket, metrics; views.Endpoint)."""
    lines = []
    for key, help_text in (
        ("open", "Connections open on a local endpoint (the control socket, the metrics)."),
        ("rejected", "Connections closed at once at the cap, every one open being answered."),
        ("evicted", "Connections closed at the cap before they sent a request, to make room."),
        ("expired", "Connections closed at the request deadline."),
        ("oversize", "Requests closed because their head was larger than the endpoint takes."),
    ):
        name, kind = (
            ("dsrlb_endpoint_open", "gauge") if key == "open" else (f"dsrlb_endpoint_{key}_total", "counter")
        )
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{_labels(endpoint=e)} {c.counts()[key]}" for e, c in sorted(endpoints.items())]
    return "\n".join(lines) + "\n"


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The request line; the headers are read (at most MAX_REQUEST bytes in all) and ignored."""
    request = await reader.readline()
    size = len(request)
    while line := await reader.readline():
        size += len(line)
        if size > MAX_REQUEST:
            raise ValueError("request head too large")
        if not line.strip():
            break
    return request


def _answer(status: str, content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def serve(
    daemon: Status, host: str, port: int, deadline: float = DEADLINE, max_connections: int = MAX_CONNECTIONS
) -> asyncio.AbstractServer:
    """HTTP/1.0 GET /metrics. At most `max_connections` at once (views.Endpoint), each closed `deadline` s
    after connecting unless its request head is in; a head over MAX_REQUEST bytes gets a JSON error (431)."""
    endpoint = ENDPOINTS["metrics"] = Endpoint(max_connections)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.transport
        if not endpoint.admit(conn):
            writer.write(_answer("503 Service Unavailable", "text/plain", b"busy, try again\n"))
            writer.close()
            return
        try:
            try:
                async with asyncio.timeout(deadline):
                    request = await _read_head(reader)
            except ValueError:  # a line over the reader's limit, or a head over MAX_REQUEST
                endpoint.oversize += 1
                error = _json({"ok": False, "error": f"request head larger than {MAX_REQUEST} bytes"})
                async with asyncio.timeout(deadline):
                    writer.write(_answer("431 Request Header Fields Too Large", "application/json", error))
                    writer.write_eof()
                    while await reader.read(65536):  # what is left: closing on it would reset the answer
                        pass
                return
            if conn not in endpoint.conns:
                return  # closed to make room
            endpoint.busy(conn)
            parts = request.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1] in (b"/metrics", b"/"):
                body = (render(daemon) + endpoint_metrics()).encode()
                answer = _answer("200 OK", "text/plain; version=0.0.4", body)
            else:
                answer = _answer("404 Not Found", "text/plain", b"not found: try /metrics\n")
            async with asyncio.timeout(deadline):
                writer.write(answer)
                await writer.drain()
        except (TimeoutError, ConnectionError):
            endpoint.expired += 1
            conn.abort()
        finally:
            endpoint.release(conn)
            writer.close()

    return await asyncio.start_server(client, host, port, limit=MAX_REQUEST, backlog=BACKLOG)


def _json(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"
