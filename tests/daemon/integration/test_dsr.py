"""End to end: the seed config, unchanged, balancing real HTTP servers in namespaces."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from dsr_lab import CLIENT_SOURCES, VIP, Lab

from dsrlb_tools.netns import snmp_counters

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="integration tests need root: they create network namespaces"
    ),
]

# Sessions stick to a client address for 600 s, so the recovery check needs clients never seen before,
# and after it every client of SOURCES sticks to web1: later tests only ask for answers, not for both.
SOURCES = CLIENT_SOURCES[:16]
FRESH_SOURCES = CLIENT_SOURCES[16:]

ARP_PROBE = """
import json, sys
from scapy.all import ARP, Ether, srp
ans, _ = srp(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=sys.argv[1], psrc="172.16.1.254"),
             iface="eth0", timeout=1, multi=True, verbose=0)
print(json.dumps(sorted({reply.hwsrc for _, reply in ans})))
"""

# Runs until its stdin closes, then prints (ether src, ip dst) of every captured frame.
SNIFFER = """
import json, sys
from scapy.all import IP, AsyncSniffer, Ether
sniffer = AsyncSniffer(iface="eth0", filter=sys.argv[1], store=True,
                       started_callback=lambda: print("ready", flush=True))
sniffer.start()
sys.stdin.read()
frames = sniffer.stop()
print(json.dumps([[f[Ether].src, f[IP].dst] for f in frames if IP in f]))
"""

MALFORMED = """
import sys
from scapy.all import IP, TCP, UDP, Ether, Raw, conf, sendp
bal, vip = sys.argv[1], sys.argv[2]
eth = Ether(dst=bal, type=0x0800)
ip = IP(src="198.18.0.99", dst=vip)
good = bytes(ip / TCP(sport=40000, dport=80, flags="S"))
frames = [
    bytes(eth) + good[:10],                                       # truncated IPv4 header
    bytes(eth) + bytes([0x43]) + good[1:],                        # IHL 3
    bytes(eth) + bytes([0x4F]) + good[1:],                        # IHL 15, longer than the packet
    bytes(eth) + good[:2] + (2000).to_bytes(2, "big") + good[4:],  # total length beyond the frame
    bytes(eth) + good[:2] + (12).to_bytes(2, "big") + good[4:],    # total length below the header
    bytes(eth) + bytes([0x65]) + good[1:],                        # version 6 in an IPv4 ethertype
    bytes(eth / IP(src=ip.src, dst=vip, flags="MF") / TCP(dport=80) / Raw(b"x" * 16)),  # first fragment
    bytes(eth / IP(src=ip.src, dst=vip, frag=64, proto=6) / Raw(b"y" * 32)),           # later fragment
    bytes(eth / IP(src=ip.src, dst=vip, chksum=0x1234) / TCP(dport=80)),               # bad IP checksum
    bytes(eth / ip / TCP(dport=80, dataofs=2)),                   # TCP header shorter than 20 bytes
    bytes(eth / ip / UDP(dport=80)),                              # protocol the server does not serve
    bytes(eth) + good[:20] + b"\\x00\\x50",                       # TCP header cut after the ports
    bytes(Ether(dst=bal, type=0x88B5) / Raw(b"garbage" * 8)),     # garbage ethertype
    bytes(Ether(dst=bal, type=0x0806) / Raw(b"\\x00" * 6)),       # truncated ARP
    bytes.fromhex(bal.replace(":", "")) + b"\\x02\\x00\\x00",     # runt, shorter than an Ethernet header
    bytes(eth),                                                   # Ethernet header only
]
sock = conf.L2socket(iface="eth0")
for _ in range(20):
    for frame in frames:
        sock.send(frame)
sock.close()
"""


def answered_by(results: dict[str, str]) -> set[str]:
    return set(results.values())


def failures(results: dict[str, str]) -> dict[str, str]:
    return {src: body for src, body in results.items() if body.startswith("ERR")}


def total_drops(lab: Lab) -> int:
    stats = lab.show("stats")
    assert isinstance(stats, dict)
    return sum(stats["drops"].values())


def test_both_targets_serve_many_clients(lab: Lab) -> None:
    results = lab.http(SOURCES)
    assert not failures(results), results
    assert answered_by(results) == {"web1", "web2"}, results


def test_only_the_balancer_answers_arp_for_the_vip(lab: Lab) -> None:
    for address in (VIP, "172.16.1.253"):  # the virtual server and the network's `virt`
        answers = json.loads(lab.python("router", ARP_PROBE, address))
        assert answers == [lab.macs["balancer"]], f"ARP for {address} answered by {answers}"


def test_replies_bypass_the_balancer(lab: Lab) -> None:
    reply_filter = f"tcp and src host {VIP} and src port 80"
    sniffers = {host: lab.python_bg(host, SNIFFER, reply_filter) for host in ("router", "balancer")}
    for host, proc in sniffers.items():
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", f"sniffer in {host}"
    forwarded_before = lab.show("stats")["forwarded"]  # type: ignore[index]
    results = lab.http(SOURCES)
    time.sleep(0.3)
    captured = {}
    for host, proc in sniffers.items():
        out, err = proc.communicate("", timeout=20)
        assert proc.returncode == 0, err
        captured[host] = json.loads(out)
    assert not failures(results), results

    router_sources = {src for src, _ in captured["router"]}
    assert router_sources == {lab.macs["web1"], lab.macs["web2"]}, captured["router"]
    assert {dst for _, dst in captured["router"]} >= set(SOURCES)
    assert captured["balancer"] == [], "replies crossed the balancer's interface"
    forwarded = lab.show("stats")["forwarded"] - forwarded_before  # type: ignore[index]
    assert forwarded >= 3 * len(SOURCES), "each request is at least SYN, ACK and GET through the balancer"


def test_balancer_kernel_leaves_vip_traffic_alone(lab: Lab) -> None:
    """The daemon's ingress filter keeps the balancer's own IP stack out of VIP traffic: without it,
    every forwarded frame would also be routed by that kernel and dropped as not forwardable."""

    def ip_errors() -> int:
        ip = snmp_counters(lab.topo.proc_net("balancer", "snmp"), "Ip")
        return ip["InAddrErrors"] + ip["InDiscards"] + ip["InHdrErrors"]

    before_errors = ip_errors()
    forwarded_before = lab.show("stats")["forwarded"]  # type: ignore[index]
    results = lab.http(SOURCES)
    assert not failures(results), results
    assert lab.show("stats")["forwarded"] - forwarded_before >= 3 * len(SOURCES)  # type: ignore[index]
    assert ip_errors() == before_errors


METRICS = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9410/metrics", timeout=5).read().decode())
"""


def test_metrics_count_what_was_forwarded(lab: Lab) -> None:
    def scrape() -> dict[str, float]:
        text = lab.python("balancer", METRICS)
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    before = scrape()
    results = lab.http(SOURCES)
    assert not failures(results), results
    after = scrape()
    per_target = [k for k in after if k.startswith("dsrlb_target_packets_total")]
    assert len(per_target) == 2
    assert sum(after[k] - before.get(k, 0) for k in per_target) >= 3 * len(SOURCES)
    assert after['dsrlb_target_up{target="1",ipaddr="172.16.1.100"}'] == 1
    assert after["dsrlb_forwarded_frames_total"] > before["dsrlb_forwarded_frames_total"]


def test_dead_target_is_avoided_and_returns(lab: Lab) -> None:
    before = lab.http(SOURCES)
    assert not failures(before), before
    on_web1 = [src for src, body in before.items() if body == "web1"]
    lab.stop_web("web2")
    killed = time.monotonic()
    try:
        # tcpopen 80,3,10: down after 10 s without a successful check, noticed at the next interval.
        deadline = killed + 10 + 3 + 2
        while True:
            results = lab.http(SOURCES)
            broken = {src: results[src] for src in on_web1 if results[src] != "web1"}
            assert not broken, f"clients of web1 disturbed while web2 died: {broken}"
            if not failures(results) and answered_by(results) == {"web1"}:
                break
            assert time.monotonic() < deadline, f"web2 still gets traffic 15 s after it died: {results}"
            time.sleep(0.5)
        assert lab.health()[2] == "down"
        for _ in range(3):
            results = lab.http(SOURCES)
            assert not failures(results) and answered_by(results) == {"web1"}, results
    finally:
        lab.start_web("web2")

    lab.wait_targets({2: "up"}, timeout=3 + 3)
    deadline = time.monotonic() + 5
    while True:
        results = lab.http(FRESH_SOURCES)
        assert not failures(results), results
        if "web2" in answered_by(results):
            break
        assert time.monotonic() < deadline, f"web2 up again but new clients never reach it: {results}"
        time.sleep(0.5)


def test_bad_reload_keeps_serving_and_good_reload_applies(lab: Lab) -> None:
    seed = lab.conf.read_text()
    lines = seed.splitlines()
    bad_address_line = len(lines) + 2
    unknown_line = len(lines) + 7
    broken = seed + (
        "server    3 {\n"
        "          ipaddr 172.16.1.300\n"
        "          port 80\n"
        "          protocol tcp\n"
        "          targets 1,2\n"
        "}\n"
        "frobnicate 1\n"
    )
    good = seed + (
        "server    2 {\n"
        "          ipaddr 172.16.1.11\n"
        "          port 80\n"
        "          protocol tcp\n"
        "          targets 1,2\n"
        "}\n"
        "register  server 2\n"
        "enable    server 2\n"
    )
    generation = lab.show("stats")["generation"]  # type: ignore[index]
    try:
        lab.conf.write_text(broken)
        res = lab.ctl("reload")
        assert res.returncode == 1, res
        located = {
            int(m.group(1)) for m in re.finditer(rf"{re.escape(lab.conf.name)}:(\d+):\d+: ", res.stderr)
        }
        assert {bad_address_line, unknown_line} <= located, res.stderr
        assert lab.daemon is not None and lab.daemon.poll() is None
        results = lab.http(CLIENT_SOURCES)
        assert not failures(results), results
        assert [s["id"] for s in lab.show("servers")] == [1]  # type: ignore[index, union-attr]

        sessions = {(s["client"], s["target"]) for s in lab.show("sessions")}  # type: ignore[union-attr, index]
        assert sessions
        lab.conf.write_text(good)
        res = lab.ctl("reload")
        assert res.returncode == 0, res.stderr
        assert sorted(s["id"] for s in lab.show("servers")) == [1, 2]  # type: ignore[union-attr, index]
        assert lab.show("stats")["generation"] > generation  # type: ignore[index]
        kept = {(s["client"], s["target"]) for s in lab.show("sessions")}  # type: ignore[union-attr, index]
        assert sessions <= kept, "a reload keeps the sessions of targets that still exist"
        results = lab.http(SOURCES)
        assert not failures(results), results

        # SIGHUP is a reload too
        generation = lab.show("stats")["generation"]  # type: ignore[index]
        lab.daemon.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while lab.show("stats")["generation"] == generation and time.monotonic() < deadline:  # type: ignore[index]
            time.sleep(0.05)
        assert lab.show("stats")["generation"] == generation + 1  # type: ignore[index]
    finally:
        lab.conf.write_text(seed)
        assert lab.ctl("reload").returncode == 0


def test_malformed_frames_do_not_stop_forwarding(lab: Lab) -> None:
    drops_before = total_drops(lab)
    lab.python("router", MALFORMED, lab.macs["balancer"], VIP)
    assert lab.daemon is not None and lab.daemon.poll() is None, lab.daemon_log()
    results = lab.http(CLIENT_SOURCES)
    assert not failures(results), results
    assert total_drops(lab) > drops_before, lab.show("stats")
