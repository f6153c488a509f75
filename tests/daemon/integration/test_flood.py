"""A spoofed SYN flood against a live daemon with small tables, while a legit client keeps connecting:
the tables stay bounded (overflow follows the stateless pick, nothing is dropped for it), embryonic
flows leave within seconds, and legit clients are served during and after the flood."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from dsr_lab import CLIENT_SOURCES, SEED, VIP, Lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="integration tests need root: they create network namespaces"
    ),
]

FLOOD_SECONDS = 20.0
AFTER_SECONDS = 15.0
# embryonic 1 s: a spoofed flow is gone (the expiry wheel looks at most a second late) before the
# generator repeats its frame 3 s later, which would make it a flow of two packets
LIMITS = "set flows 20000\nset sessions 20000\nset embryonic 1\n"

# Spoofed SYNs from 60,000 source addresses (10.0.0.0/8, changing ports) at a fixed rate, straight onto
# the LAN from the router's namespace (no rp_filter in the way), to the balancer's MAC.
FLOOD = """
import socket, struct, sys, time
ifname, dst_mac, src_mac, vip, rate, seconds = sys.argv[1:7]
rate, seconds = int(rate), float(seconds)
def csum(data):
    if len(data) % 2:
        data += b"\\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
dst = socket.inet_aton(vip)
head = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\\x08\\x00"
frames = []
for i in range(60000):
    src = struct.pack("!I", 0x0A000000 + 7919 * i % 0xFFFFFF + 1)
    sport = 1024 + (i * 31) % 60000
    tcp = struct.pack("!HHIIBBHHH", sport, 80, i, 0, 0x50, 0x02, 65535, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, 20) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    frames.append(head + ip + tcp)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((ifname, 0))
start, sent = time.monotonic(), 0
while (elapsed := time.monotonic() - start) < seconds:
    due = int(elapsed * rate)
    while sent < due:
        try:
            sock.send(frames[sent % len(frames)])
        except OSError:
            pass
        sent += 1
    time.sleep(0.001)
print(sent)
"""

# A new connection every 50 ms (each from the next source port), for `seconds`: one JSON line each.
LEGIT = """
import http.client, json, sys, time, threading
vip, src, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
start = time.monotonic()
def get(at):
    try:
        conn = http.client.HTTPConnection(vip, 80, timeout=1.0, source_address=(src, 0))
        conn.request("GET", "/")
        resp = conn.getresponse()
        ok = resp.status == 200 and resp.read().strip() in (b"web1", b"web2")
        conn.close()
        err = "" if ok else f"status {resp.status}"
    except OSError as exc:
        err = str(exc) or type(exc).__name__
    print(json.dumps({"at": at, "err": err}), flush=True)
threads = []
n = 0
while (at := time.monotonic() - start) < seconds:
    t = threading.Thread(target=get, args=(at,))
    t.start()
    threads.append(t)
    n += 1
    time.sleep(max(0.0, start + n * 0.05 - time.monotonic()))
for t in threads:
    t.join()
"""


def kernel_flows(lab: Lab) -> int:
    """Entries of the kernel's flow map (access nftables)."""
    res = lab.topo.run("balancer", "nft", "-j", "list", "map", "netdev", "dsrlb_eth0", "flows", timeout=60)
    (found,) = [item["map"] for item in json.loads(res.stdout)["nftables"] if "map" in item]
    return len(found.get("elem", []))


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("access", ["raw", "nftables"])
def test_spoofed_syn_flood_spares_legit_clients_and_memory(lab: Lab, access: str) -> None:
    assert lab.daemon is not None
    lab.conf.write_text(SEED.read_text().replace("access raw", f"access {access}") + LIMITS)
    try:
        res = lab.ctl("reload")
        assert res.returncode == 0, res.stderr
        before = lab.show("stats")
        rss_before = peak_rss_mb(lab.daemon.pid)
        legit = lab.python_bg("client", LEGIT, VIP, CLIENT_SOURCES[0], str(FLOOD_SECONDS + 2 + AFTER_SECONDS))
        time.sleep(1.0)
        flood = lab.python_bg(
            "router",
            FLOOD,
            "eth0",
            lab.macs["balancer"],
            lab.macs["router"],
            VIP,
            "20000",
            str(FLOOD_SECONDS),
        )
        flood_out, flood_err = flood.communicate(timeout=FLOOD_SECONDS + 30)
        assert flood.returncode == 0, flood_err
        during = lab.show("stats")
        if access == "nftables":
            during["flows"] = kernel_flows(lab)
        legit_out, legit_err = legit.communicate(timeout=AFTER_SECONDS + 30)
        assert legit.returncode == 0, legit_err
        after = lab.show("stats")
        if access == "nftables":
            after["flows"] = kernel_flows(lab)
        rss = peak_rss_mb(lab.daemon.pid)
        results = [json.loads(line) for line in legit_out.splitlines()]
        flood_window = [r for r in results if 1.0 <= r["at"] < 1.0 + FLOOD_SECONDS]
        after_window = [r for r in results if 6.0 + FLOOD_SECONDS <= r["at"] < 16.0 + FLOOD_SECONDS]
        failed_during = [r for r in flood_window if r["err"]]
        failed_after = [r for r in after_window if r["err"]]
        summary = (
            f"{access}: flood {flood_out.strip()} SYNs; "
            f"legit failed {len(failed_during)}/{len(flood_window)} during, "
            f"{len(failed_after)}/{len(after_window)} 5-15 s after; peak RSS {rss:.0f} MB "
            f"(before {rss_before:.0f}); flows {during['flows']} sessions {during['sessions']} "
            f"overflow {during['flows_overflow'] - before['flows_overflow']}/"
            f"{during['sessions_overflow'] - before['sessions_overflow']}; after: flows {after['flows']}"
        )
        print(summary)
        assert len(flood_window) > 300 and len(after_window) > 150, summary
        # before bounded state 36 of 41 failed; issue 12 asks for at most 1%
        assert len(failed_during) <= 0.01 * len(flood_window), (summary, failed_during[:5])
        assert not failed_after, (summary, failed_after[:5])
        assert during["flows"] <= 20000 and during["sessions"] <= 20000, summary
        # the spoofed flows left within seconds (embryonic); those whose source and port the generator
        # happened to repeat saw two packets and stay their session timeout, like the legit ones
        assert after["flows"] < 0.2 * 20000, summary
        assert rss < 256, summary
    finally:
        shutil.copyfile(SEED, lab.conf)
        lab.ctl("reload")
