"""`dsrlb bench`: dsrlb against the kernel's own IP forwarding, same topology, same load, one run.

Topology (namespaces under the prefix `dsrlb-bench`, one bridge): client 172.16.1.50, balancer
172.16.1.252, targets .100/.101 owning the VIP 172.16.1.10 on `lo` with the DSR ARP sysctls.
A TPACKET TX-ring generator in the client sends precomputed UDP frames to VIP:9000 from 4096
source address/port pairs, addressed to the balancer's MAC, as fast as it can, in both phases:

  kernel  the balancer forwards with ip_forward=1 and a multipath route for the VIP via the targets
  dsrlb   ip_forward=0, dsrlb runs a seed-like config with a UDP server

Delivered = UDP datagrams for the VIP the targets' stacks accepted (Udp InDatagrams + NoPorts +
RcvbufErrors of /proc/net/snmp: right MAC, right address, valid checksum), not frames seen on a
wire. With two cores, CPU 0 is "the network": the generator, the switch and the targets (receive
steering of the switch port facing the balancer sends what the balancer transmits there); the
kernel's own forwarding runs where the kernel runs it, in the receive path on CPU 0; the dsrlb
process is pinned to CPU 1. Identical in both phases: the generator's core is the shared limit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dsrlb_tools.netns import SWITCH, Topology, net_dev_counters, snmp_counters

PREFIX = "dsrlb-bench"
VIP = "172.16.1.10"
PORT = 9000
BALANCER = "172.16.1.252"
TARGETS = {"target1": "172.16.1.100", "target2": "172.16.1.101"}
CLIENT = "172.16.1.50"
SOURCES = 4096  # distinct (source address, source port) pairs, one per TX ring slot
PAYLOAD = 18  # smallest Ethernet frame (60 bytes without FCS): the benchmark is about packets/s
WARMUP = 1.0
GEN_CPU, FWD_CPU = 0, 1

DSRLB_CONFIG = f"""\
// dsrlb bench: the seed's shape with a UDP virtual server
modules   vrrp,arp,ping,hc,master,slb,tnat,nat,rt
interface 1 {{
          name eth0
          access raw
}}
register  interface 1
enable    interface 1
network   1 {{
          name "bench network"
          addr 172.16.1.0
          mask 255.255.255.0
          real {BALANCER}
          interface 1
}}
register  network 1
enable    network 1
server    1 {{
          ipaddr {VIP}
          port {PORT}
          protocol udp
          targets 1,2
}}
register  server 1
enable    server 1
target    1 {{
          ipaddr {TARGETS["target1"]}
          port {PORT}
          protocol udp
          ping 1,3
          dsr enable
}}
target    2 {{
          ipaddr {TARGETS["target2"]}
          port {PORT}
          protocol udp
          ping 1,3
          dsr enable
}}
register  targets 1,2
enable    targets 1,2
"""


@dataclass
class Phase:
    """Figures of one phase over the measurement window."""

    name: str
    seconds: float
    offered_pps: float  # frames the generator put on the client's wire
    received_pps: float  # frames that reached the balancer's eth0 (before its own drops)
    delivered_pps: float  # UDP datagrams for the VIP accepted by the targets' stacks
    per_target_pps: dict[str, float]
    machine_cpu_us_per_packet: float  # busy time of all cores (generator included) per delivered packet
    process_cpu_us_per_packet: float | None = None  # utime+stime of the dsrlb process (dsrlb only)
    daemon_rx_pps: float | None = None  # frames dsrlb took from its ring (dsrlb only)


class BenchError(Exception):
    """A setup step failed: reported as one line, never as a traceback."""


# --- generator (runs as its own process inside the client namespace) ------------------------------


def build_frames(dst_mac: bytes, src_mac: bytes, count: int) -> list[bytes]:
    """Valid UDP frames to VIP:PORT with distinct sources, checksums complete (nothing left to offload)."""
    from dsrlb.dataplane.packet import checksum

    vip = IPv4Address(VIP).packed
    frames = []
    for i in range(count):
        src = IPv4Address(f"198.18.{i >> 8 & 0xFF}.{i & 0xFF}").packed
        sport = 1024 + i
        payload = i.to_bytes(4, "big").rjust(PAYLOAD, b"\x00")
        udp_len = 8 + len(payload)
        ip = bytearray(
            struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, i & 0xFFFF, 0, 64, 17, 0, src, vip)
        )
        struct.pack_into("!H", ip, 10, checksum(ip))
        pseudo = src + vip + struct.pack("!BBH", 0, 17, udp_len)
        udp = bytearray(struct.pack("!HHHH", sport, PORT, udp_len, 0) + payload)
        struct.pack_into("!H", udp, 6, checksum(pseudo + udp) or 0xFFFF)
        frames.append(dst_mac + src_mac + b"\x08\x00" + bytes(ip) + bytes(udp))
    return frames


def generate(ifname: str, dst_mac: str) -> int:
    """Fill every TX ring slot once with its own frame, then only flip slot status words forever.

    The kernel sends from the slots (zero copy) and hands each back when its skb is freed, so the
    per-packet work in Python is one status check and one store; one send() call kicks a whole lap.
    """
    from dsrlb.dataplane.ring import FRAME_SIZE, TPACKET2_HDR, TX_DATA_OFFSET, PacketRing

    ring = PacketRing(ifname, rx_frames=1, tx_frames=SOURCES)
    frames = build_frames(bytes.fromhex(dst_mac.replace(":", "")), ring.mac, ring.tx_frames)
    for slot, frame in enumerate(frames):
        at = ring.tx_base + slot * FRAME_SIZE
        TPACKET2_HDR.pack_into(ring.map, at, 0, len(frame), len(frame), 0, 0, 0, 0, 0, 0)
        ring.map[at + TX_DATA_OFFSET : at + TX_DATA_OFFSET + len(frame)] = frame
    status = memoryview(ring.map)[ring.tx_base :].cast("I")
    slots = range(0, ring.tx_frames * FRAME_SIZE // 4, FRAME_SIZE // 4)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    while running:
        for word in slots:
            if status[word] == 0:
                status[word] = 1
        ring.flush()
    status.release()
    ring.close()
    return 0


# --- the benchmark ---------------------------------------------------------------------------------


def _build(topo: Topology) -> None:
    for host in ("client", "balancer", *TARGETS):
        topo.add_host(host)
    topo.connect("client", addrs=[f"{CLIENT}/24"])
    topo.connect("balancer", addrs=[f"{BALANCER}/24"])
    # No reverse-path filtering or redirects: the generated sources (198.18/16) are not routed here,
    # and a forwarder sending back out of the interface it received on would otherwise emit redirects.
    quiet = {
        "net.ipv4.conf.all.rp_filter": 0,
        "net.ipv4.conf.default.rp_filter": 0,
        "net.ipv4.conf.all.send_redirects": 0,
        "net.ipv4.conf.default.send_redirects": 0,
    }
    topo.sysctl("balancer", quiet)
    for host, addr in TARGETS.items():
        topo.connect(host, addrs=[f"{addr}/24"])
        topo.addr(host, f"{VIP}/32", "lo")
        # No default route: the targets cannot answer the unroutable sources (no ICMP storm back).
        topo.sysctl(host, {**quiet, "net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2})
    if _pinned():
        # What the balancer sends is the network's work (switch, targets): same core in both phases.
        port = topo.ports[("balancer", "eth0")]
        topo.run(SWITCH, "sh", "-c", f"echo {1 << GEN_CPU:x} > /sys/class/net/{port}/queues/rx-0/rps_cpus")


def _pinned() -> bool:
    return (os.cpu_count() or 1) >= 2


def _taskset(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if _pinned() else []


def _snapshot(topo: Topology, daemon: Daemon | None) -> dict[str, Any]:
    delivered = {}
    for host in TARGETS:
        udp = snmp_counters(topo.proc_net(host, "snmp"), "Udp")
        delivered[host] = udp["InDatagrams"] + udp["NoPorts"] + udp["RcvbufErrors"]
    balancer = net_dev_counters(topo.proc_net("balancer", "dev"), "eth0")
    return {
        "time": time.monotonic(),
        "offered": net_dev_counters(topo.proc_net("client", "dev"), "eth0")["tx_packets"],
        "received": balancer["rx_packets"] + balancer["rx_dropped"],
        "delivered": delivered,
        "busy": _busy_ticks(),
        "process": _process_ticks(daemon.proc.pid) if daemon else 0,
        "daemon_rx": daemon.stats()["rx"] if daemon else 0,
    }


def _busy_ticks() -> int:
    """Busy ticks of the whole machine (user, nice, system, irq, softirq): what a phase costs."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in f.readline().split()[1:8])
    return user + nice + system + irq + softirq


def _process_ticks(pid: int) -> int:
    """utime+stime of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _measure(
    topo: Topology, name: str, seconds: float, balancer_mac: str, daemon: Daemon | None = None
) -> Phase:
    gen = topo.popen(
        "client",
        *_taskset(GEN_CPU),
        sys.executable,
        "-m",
        "dsrlb_tools.bench",
        "--generate",
        "eth0",
        balancer_mac,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        if gen.stdout is None or gen.stdout.readline().strip() != "ready":
            raise BenchError(f"generator did not start: {gen.stderr.read().strip() if gen.stderr else ''}")
        time.sleep(WARMUP)
        before = _snapshot(topo, daemon)
        time.sleep(seconds)
        after = _snapshot(topo, daemon)
    finally:
        topo.stop(gen)
    elapsed = after["time"] - before["time"]
    per_target = {h: (after["delivered"][h] - before["delivered"][h]) / elapsed for h in TARGETS}
    delivered = sum(after["delivered"][h] - before["delivered"][h] for h in TARGETS)
    per_packet = 1e6 / os.sysconf("SC_CLK_TCK") / max(delivered, 1)  # us per tick per delivered packet
    return Phase(
        name=name,
        seconds=round(elapsed, 3),
        offered_pps=(after["offered"] - before["offered"]) / elapsed,
        received_pps=(after["received"] - before["received"]) / elapsed,
        delivered_pps=delivered / elapsed,
        per_target_pps=per_target,
        machine_cpu_us_per_packet=(after["busy"] - before["busy"]) * per_packet,
        process_cpu_us_per_packet=(after["process"] - before["process"]) * per_packet if daemon else None,
        daemon_rx_pps=(after["daemon_rx"] - before["daemon_rx"]) / elapsed if daemon else None,
    )


def _kernel_phase(topo: Topology, seconds: float, balancer_mac: str) -> Phase:
    topo.sysctl("balancer", {"net.ipv4.ip_forward": 1})
    topo.route("balancer", f"{VIP}/32", *(w for a in TARGETS.values() for w in ("nexthop", "via", a)))
    try:
        return _measure(topo, "kernel", seconds, balancer_mac)
    finally:
        topo.run("balancer", "ip", "route", "del", f"{VIP}/32", check=False)
        topo.sysctl("balancer", {"net.ipv4.ip_forward": 0})


@dataclass
class Daemon:
    """A dsrlb process started for the dsrlb phase, with its control socket and log."""

    proc: subprocess.Popen[str]
    sock: Path
    log: Path

    def stats(self) -> dict[str, Any]:
        return self.request({"cmd": "show", "what": "stats"})

    def request(self, message: dict[str, Any]) -> Any:
        from dsrlb.control import request

        answer = request(str(self.sock), message)
        if not answer.get("ok"):
            raise BenchError(f"dsrlb: {answer.get('error')}")
        return answer["data"]

    def wait_targets_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log.read_text().strip()[-500:]
                raise BenchError(f"dsrlb exited with status {self.proc.returncode}: {log}")
            if self.sock.exists():
                targets = self.request({"cmd": "show", "what": "targets"})
                if len(targets) == 2 and all(t["health"] == "up" and t["mac"] for t in targets):
                    return
            time.sleep(0.3)
        raise BenchError(f"dsrlb targets not up and resolved within {timeout:.0f} s")


def _dsrlb_phase(topo: Topology, seconds: float, balancer_mac: str, workdir: Path) -> Phase:
    conf = workdir / "bench.conf"
    conf.write_text(DSRLB_CONFIG)
    log = workdir / "dsrlb.log"
    with log.open("w") as out:  # a file, not a pipe nobody drains: the daemon must never block on its log
        proc = topo.popen(
            "balancer",
            *_taskset(FWD_CPU),
            str(Path(sys.executable).with_name("dsrlb")),
            "-s",
            str(workdir / "control.sock"),
            "run",
            "-c",
            str(conf),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    daemon = Daemon(proc, workdir / "control.sock", log)
    try:
        daemon.wait_targets_up()
        return _measure(topo, "dsrlb", seconds, balancer_mac, daemon)
    finally:
        topo.stop(proc)


def run_bench(seconds: float) -> dict[str, Any]:
    """Build the topology, measure both phases, always tear down."""
    with Topology(PREFIX) as topo, tempfile.TemporaryDirectory(prefix="dsrlb-bench-") as tmp:
        _build(topo)
        balancer_mac = topo.mac("balancer")
        kernel = _kernel_phase(topo, seconds, balancer_mac)
        dsrlb = _dsrlb_phase(topo, seconds, balancer_mac, Path(tmp))
    return {
        "frame_bytes": 14 + 20 + 8 + PAYLOAD,
        "sources": SOURCES,
        "pinning": (
            f"generator, switch and targets on cpu{GEN_CPU}; dsrlb process on cpu{FWD_CPU}"
            if _pinned()
            else "not pinned (one cpu)"
        ),
        "kernel": asdict(kernel),
        "dsrlb": asdict(dsrlb),
        "ratio": dsrlb.delivered_pps / kernel.delivered_pps if kernel.delivered_pps else 0.0,
    }


def _report(result: dict[str, Any]) -> str:
    kernel, dsrlb = result["kernel"], result["dsrlb"]
    lines = [f"{result['frame_bytes']}-byte UDP frames from {result['sources']} sources; {result['pinning']}"]
    for p in (kernel, dsrlb):
        per = ", ".join(f"{h} {v:,.0f}" for h, v in p["per_target_pps"].items())
        lines.append(
            f"{p['name']:>6}: delivered {p['delivered_pps']:>9,.0f} pps ({per}); "
            f"offered {p['offered_pps']:,.0f}, reached the balancer {p['received_pps']:,.0f}"
        )
    lines += [
        f" ratio: dsrlb/kernel = {result['ratio']:.2f}",
        f"   cpu: dsrlb process {dsrlb['process_cpu_us_per_packet']:.2f} us per forwarded packet; "
        f"whole machine per delivered packet: kernel {kernel['machine_cpu_us_per_packet']:.2f} us, "
        f"dsrlb {dsrlb['machine_cpu_us_per_packet']:.2f} us",
        f"        dsrlb took {dsrlb['daemon_rx_pps']:,.0f} frames/s from its ring",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dsrlb bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per phase (default 5)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if os.geteuid() != 0:
        print("dsrlb bench: needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    try:
        result = run_bench(args.seconds)
    except (BenchError, subprocess.CalledProcessError, OSError) as err:
        detail = err.stderr.strip() if isinstance(err, subprocess.CalledProcessError) and err.stderr else ""
        print(f"dsrlb bench: {err}{': ' + detail if detail else ''}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else _report(result))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--generate"]:
        sys.exit(generate(sys.argv[2], sys.argv[3]))
    sys.exit(main(sys.argv[1:]))
