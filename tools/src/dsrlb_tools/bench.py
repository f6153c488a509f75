"""`dsrlb bench`: kernel IP forwarding, dsrlb `access raw` and `access nftables`, side by side.

One run, same topology, same offered load, each path in two placements of the balancer's work.

Topology (namespaces under the prefix `dsrlb-bench`, one bridge, dual-stack): client 172.16.1.50
(2001:db8:1::32), balancer 172.16.1.252 (2001:db8:1::fc), targets .100/.101 (::64/::65) owning the VIPs
172.16.1.10 and 2001:db8:1::10 on `lo`, with the DSR ARP sysctls. In the client a small C generator
(bench_gen.c, compiled into a temporary directory; sendmmsg on a packet socket) sends minimal TCP SYNs
to VIP:80 of one family (--family; 60-byte frames for IPv4, 74 for IPv6) from 4096 source
address/port pairs, addressed to the balancer's MAC, as fast as it can.

  kernel    the balancer forwards (ip_forward=1, or IPv6 forwarding) with a multipath route for the
            VIP via the targets
  raw       ip_forward=0, dsrlb with `access raw`: the Python forwarder
  nftables  ip_forward=0, dsrlb with `access nftables`: the daemon's netdev-ingress table forwards

Delivered = SYNs the targets' TCP accepted (Tcp InSegs - InCsumErrors of /proc/net/snmp, which counts
both families: right MAC, right address, valid checksum), not frames seen on a wire. One core is
"the network": the generator, the switch and the targets (receive steering of the switch port facing
the balancer brings what the balancer sends there). The balancer's work is placed

  free      on the other core: its receive path steered there with RPS, the dsrlb process pinned there;
            for raw, the receive path stays on the network's core (its best placement: a Python loop
            sharing its core with the receive softirq forwards a third as much or less)
  shared    on the network's core too, the other core idle

Ratios are to the kernel in the same placement. CPU per packet, per delivered packet: the busy time
of each of the two cores (/proc/stat), the balancer's (free placement: the softirq time of its own core
plus the dsrlb process's) and the dsrlb process's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.resources import files
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from dsrlb_tools.netns import SWITCH, Topology, net_dev_counters, snmp_counters

PREFIX = "dsrlb-bench"
PORT = 80
SOURCES = 4096  # distinct (source address, source port) pairs, one per generator ring slot
WARMUP = 1.0
PATHS = ("kernel", "raw", "nftables")
BASELINE_DELIVERED = 0.95  # share of the received frames a sound kernel baseline delivers


@dataclass(frozen=True)
class Family:
    """The addresses of one IP version on the dual-stack topology, and what its traffic looks like."""

    name: str
    prefix: int  # of the shared segment
    balancer: str
    client: str
    vip: str
    targets: dict[str, str]
    sources: str  # the generated clients: SOURCES addresses from here, routed nowhere
    frame_bytes: int  # the smallest frame carrying a TCP SYN (Ethernet's minimum is 60 without FCS)
    forwarding: str  # the sysctl that makes the kernel forward this family
    key: str  # "" or "6": BalanceNG's `ipaddr`/`ipaddr6`, `ping`/`ping6`

    def source(self, i: int) -> bytes:
        return (ip_address(self.sources) + i).packed


FAMILIES = {
    "ipv4": Family(
        name="ipv4",
        prefix=24,
        balancer="172.16.1.252",
        client="172.16.1.50",
        vip="172.16.1.10",
        targets={"target1": "172.16.1.100", "target2": "172.16.1.101"},
        sources="198.18.0.0",
        frame_bytes=60,
        forwarding="net.ipv4.ip_forward",
        key="",
    ),
    "ipv6": Family(
        name="ipv6",
        prefix=64,
        balancer="2001:db8:1::fc",
        client="2001:db8:1::32",
        vip="2001:db8:1::10",
        targets={"target1": "2001:db8:1::64", "target2": "2001:db8:1::65"},
        sources="2001:db8:198:18::",
        frame_bytes=74,
        forwarding="net.ipv6.conf.all.forwarding",
        key="6",
    ),
}

DSRLB_CONFIG = """\
// dsrlb bench: the seed's shape, access {access}
modules   vrrp,arp,ping,hc,master,slb,tnat,nat,rt
interface 1 {{
          name eth0
          access {access}
}}
register  interface 1
enable    interface 1
network   1 {{
          name "bench network"
          addr 172.16.1.0
          mask 255.255.255.0
          real {balancer}
          mask6 64
          real6 {balancer6}
          interface 1
}}
register  network 1
enable    network 1
server    1 {{
          ipaddr{v} {vip}
          port {port}
          protocol tcp
          targets 1,2
}}
register  server 1
enable    server 1
target    1 {{
          ipaddr{v} {target1}
          port {port}
          protocol tcp
          ping{v} 1,3
          dsr enable
}}
target    2 {{
          ipaddr{v} {target2}
          port {port}
          protocol tcp
          ping{v} 1,3
          dsr enable
}}
register  targets 1,2
enable    targets 1,2
"""


@dataclass
class Phase:
    """Figures of one path in one placement over the measurement window."""

    path: str  # kernel | raw | nftables
    placement: str  # free | shared
    balancer: str  # where the balancer's work ran
    seconds: float
    offered_pps: float  # frames the generator put on the client's wire
    received_pps: float  # frames that reached the balancer's eth0 (before its own drops)
    delivered_pps: float  # SYNs for the VIP accepted by the targets' TCP
    per_target_pps: dict[str, float]
    cpu_us_per_packet: dict[str, float]  # busy time of each core per delivered packet
    cpu_busy: dict[str, float]  # share of the window each core was busy (1.0: saturated)
    # free placement: softirq time of the balancer's own core plus the dsrlb process's, per delivered
    # packet (raw's receive copy, on the network's core, is not in it); shared: None, see the cores
    balancer_cpu_us_per_packet: float | None
    daemon_cpu_us_per_packet: float | None  # utime+stime of the dsrlb process (raw, nftables)
    ratio: float = 0.0  # delivered / the kernel's delivered in the same placement


class BenchError(Exception):
    """A setup step failed: reported as one line, never as a traceback."""


def build_frames(family: Family, dst_mac: bytes, src_mac: bytes) -> bytes:
    """SOURCES TCP SYNs to the family's VIP:PORT from distinct sources, checksums complete, each
    family.frame_bytes long."""
    from dsrlb.dataplane.packet import checksum, pseudo_sum

    vip = ip_address(family.vip).packed
    frames = []
    for i in range(SOURCES):
        src = family.source(i)
        tcp = bytearray(struct.pack("!HHIIBBHHH", 1024 + i, PORT, i, 0, 5 << 4, 0x02, 64240, 0, 0))
        struct.pack_into("!H", tcp, 16, checksum(tcp, pseudo_sum(src + vip, 6, len(tcp))))
        if family.name == "ipv6":
            ether, ip = b"\x86\xdd", struct.pack("!IHBB", 0x60000000, len(tcp), 6, 64) + src + vip
        else:
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0, 64, 6, 0, src, vip)
            ether, ip = b"\x08\x00", header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        frames.append((dst_mac + src_mac + ether + ip + bytes(tcp)).ljust(family.frame_bytes, b"\x00"))
    return b"".join(frames)


def compile_generator(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BenchError("needs a C compiler for its traffic generator (apt-get install gcc)")
    binary = workdir / "bench_gen"
    source = (files("dsrlb_tools") / "bench_gen.c").read_text()
    subprocess.run(
        [cc, "-O2", "-o", str(binary), "-x", "c", "-"],
        input=source,
        check=True,
        capture_output=True,
        text=True,
    )
    return binary


def _cpu_ticks() -> dict[str, tuple[int, int]]:
    """(busy, softirq) ticks of each core by name ("cpu0", ...); busy = user, nice, system, irq, softirq."""
    ticks = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in values[:7])
                ticks[name] = (user + nice + system + irq + softirq, softirq)
    return ticks


def _process_ticks(pid: int) -> int:
    """utime+stime of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


@dataclass
class Daemon:
    """A dsrlb process started for one phase, with its control socket and log."""

    proc: subprocess.Popen[str]
    sock: Path
    log: Path

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


class Bench:
    """The topology, the generator and the cores of one run; `phase()` measures one path in one placement."""

    def __init__(self, topo: Topology, workdir: Path, seconds: float, family: Family) -> None:
        self.topo, self.workdir, self.seconds, self.family = topo, workdir, seconds, family
        cores = sorted(os.sched_getaffinity(0))[:2]
        self.net_cpu = cores[0]
        self.placements = {"free": cores[-1], "shared": cores[0]} if len(cores) > 1 else {"shared": cores[0]}
        self.cores = [f"cpu{c}" for c in cores]
        self.background = self._busy_share(1.0)
        self.generator = compile_generator(workdir)
        self._build()
        self.frames = workdir / "frames"
        self.frames.write_bytes(
            build_frames(
                family,
                bytes.fromhex(topo.mac("balancer").replace(":", "")),
                bytes.fromhex(topo.mac("client").replace(":", "")),
            )
        )

    def _build(self) -> None:
        topo, v4, v6 = self.topo, FAMILIES["ipv4"], FAMILIES["ipv6"]
        for host in ("client", "balancer", *v4.targets):
            topo.add_host(host)
        for host in ("client", "balancer"):
            topo.connect(host, addrs=[f"{getattr(f, host)}/{f.prefix}" for f in (v4, v6)])
        # No reverse-path filtering or redirects: the generated sources (198.18/16) are not routed
        # here, and a forwarder sending back out of the interface it received on would emit redirects.
        quiet = {
            "net.ipv4.conf.all.rp_filter": 0,
            "net.ipv4.conf.default.rp_filter": 0,
            "net.ipv4.conf.all.send_redirects": 0,
            "net.ipv4.conf.default.send_redirects": 0,
        }
        topo.sysctl("balancer", quiet)
        for host in v4.targets:
            topo.connect(host, addrs=[f"{f.targets[host]}/{f.prefix}" for f in (v4, v6)])
            topo.addr(host, f"{v4.vip}/32", "lo")
            topo.addr(host, f"{v6.vip}/128", "lo")  # Linux answers no neighbour solicitation for it
            # No default route: the targets cannot answer the unroutable sources (no RST storm back).
            topo.sysctl(
                host, {**quiet, "net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2}
            )
        # What the balancer sends is the network's work (switch, targets), in every phase.
        self._steer(SWITCH, self.topo.ports[("balancer", "eth0")], self.net_cpu)
        # Before its link-local passes DAD the balancer cannot resolve a target, and the kernel would
        # drop what it forwards meanwhile: the first (kernel) phase measured 0.6x its later self.
        topo.wait_link_local()

    def _busy_share(self, seconds: float) -> dict[str, float]:
        """Share of each core busy over `seconds`: before the run, other work that will skew the figures."""
        before = _cpu_ticks()
        time.sleep(seconds)
        after = _cpu_ticks()
        return {c: (after[c][0] - before[c][0]) / os.sysconf("SC_CLK_TCK") / seconds for c in self.cores}

    def _steer(self, host: str, ifname: str, cpu: int) -> None:
        """Receive processing of the interface on `cpu` (RPS)."""
        path = f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus"
        self.topo.run(host, "sh", "-c", f"echo {1 << cpu:x} > {path}")

    def phase(self, path: str, placement: str) -> Phase:
        cpu = self.placements[placement]
        rx_cpu = self.net_cpu if path == "raw" else cpu
        self._steer("balancer", "eth0", rx_cpu)
        where = f"receive on cpu{rx_cpu}" + ("" if path == "kernel" else f", dsrlb on cpu{cpu}")
        family = self.family
        if path == "kernel":
            self.topo.sysctl("balancer", {family.forwarding: 1})
            vip = family.vip
            self.topo.route(
                "balancer", vip, *(w for a in family.targets.values() for w in ("nexthop", "via", a))
            )
            try:
                return self._measure(path, placement, where, None)
            finally:
                self.topo.run("balancer", "ip", "route", "del", vip, check=False)
                self.topo.sysctl("balancer", {family.forwarding: 0})
        conf, sock, log = (self.workdir / f"{path}-{placement}.{name}" for name in ("conf", "sock", "log"))
        conf.write_text(
            DSRLB_CONFIG.format(
                access=path,
                balancer=FAMILIES["ipv4"].balancer,
                balancer6=FAMILIES["ipv6"].balancer,
                v=family.key,
                vip=family.vip,
                port=PORT,
                **family.targets,
            )
        )
        with log.open("w") as out:  # a file, not a pipe nobody drains: the daemon must never block on it
            proc = self.topo.popen(
                "balancer",
                *("taskset", "-c", str(cpu)),
                str(Path(sys.executable).with_name("dsrlb")),
                *("-s", str(sock), "run", "-c", str(conf)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            Daemon(proc, sock, log).wait_targets_up()
            return self._measure(path, placement, where, proc.pid)
        finally:
            self.topo.stop(proc)

    def _snapshot(self, daemon_pid: int | None) -> dict[str, Any]:
        delivered = {}
        for host in self.family.targets:
            tcp = snmp_counters(self.topo.proc_net(host, "snmp"), "Tcp")
            delivered[host] = tcp["InSegs"] - tcp["InCsumErrors"]
        balancer = net_dev_counters(self.topo.proc_net("balancer", "dev"), "eth0")
        return {
            "time": time.monotonic(),
            "offered": net_dev_counters(self.topo.proc_net("client", "dev"), "eth0")["tx_packets"],
            "received": balancer["rx_packets"] + balancer["rx_dropped"],
            "delivered": delivered,
            "cpu": _cpu_ticks(),
            "daemon": _process_ticks(daemon_pid) if daemon_pid else 0,
        }

    def _measure(self, path: str, placement: str, where: str, daemon_pid: int | None) -> Phase:
        with self.frames.open("rb") as frames:
            gen = self.topo.popen(
                "client",
                *("taskset", "-c", str(self.net_cpu)),
                *(str(self.generator), "eth0", str(self.family.frame_bytes)),
                stdin=frames,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        try:
            if gen.stdout is None or gen.stdout.readline().strip() != "ready":
                raise BenchError(
                    f"generator did not start: {gen.stderr.read().strip() if gen.stderr else ''}"
                )
            time.sleep(WARMUP)
            before = self._snapshot(daemon_pid)
            time.sleep(self.seconds)
            after = self._snapshot(daemon_pid)
        finally:
            self.topo.stop(gen)
        elapsed = after["time"] - before["time"]
        per_target = {h: after["delivered"][h] - before["delivered"][h] for h in self.family.targets}
        delivered = sum(per_target.values())
        tick = 1 / os.sysconf("SC_CLK_TCK")
        busy = {c: (after["cpu"][c][0] - before["cpu"][c][0]) * tick for c in self.cores}  # seconds
        daemon = (after["daemon"] - before["daemon"]) * tick
        own = f"cpu{self.placements[placement]}"
        per_packet = 1e6 / max(delivered, 1)
        return Phase(
            path=path,
            placement=placement,
            balancer=where,
            seconds=round(elapsed, 3),
            offered_pps=(after["offered"] - before["offered"]) / elapsed,
            received_pps=(after["received"] - before["received"]) / elapsed,
            delivered_pps=delivered / elapsed,
            per_target_pps={h: n / elapsed for h, n in per_target.items()},
            cpu_us_per_packet={c: s * per_packet for c, s in busy.items()},
            cpu_busy={c: s / elapsed for c, s in busy.items()},
            balancer_cpu_us_per_packet=(
                ((after["cpu"][own][1] - before["cpu"][own][1]) * tick + daemon) * per_packet
                if placement == "free"
                else None
            ),
            daemon_cpu_us_per_packet=daemon * per_packet if daemon_pid else None,
        )


def run_bench(seconds: float, family: Family) -> dict[str, Any]:
    """Build the topology, measure every path in every placement, always tear down."""
    with Topology(PREFIX) as topo, tempfile.TemporaryDirectory(prefix="dsrlb-bench-") as tmp:
        bench = Bench(topo, Path(tmp), seconds, family)
        phases = [bench.phase(path, placement) for placement in bench.placements for path in PATHS]
    for p in phases:
        kernel = next(k for k in phases if k.placement == p.placement and k.path == "kernel")
        p.ratio = p.delivered_pps / kernel.delivered_pps if kernel.delivered_pps else 0.0
    return {
        "traffic": f"{family.frame_bytes}-byte TCP SYNs to {family.vip} port {PORT} from {SOURCES} sources",
        "network_cpu": f"cpu{bench.net_cpu}",
        "placements": {name: f"cpu{cpu}" for name, cpu in bench.placements.items()},
        "busy_before": bench.background,
        "phases": [asdict(p) for p in phases],
        "warnings": baseline_warnings(phases),
    }


def baseline_warnings(phases: list[Phase]) -> list[str]:
    """The kernel phases that lost what the balancer received: every ratio rests on them.

    The kernel counts no drop for a next hop it cannot resolve (an IPv6 link-local still in DAD did
    that to a whole phase), so a baseline that lost frames is called out rather than trusted."""
    return [
        f"the kernel baseline ({p.placement}) delivered {p.delivered_pps / p.received_pps:.0%} of what "
        "the balancer received: it lost frames, so the ratios of that placement are not comparable"
        for p in phases
        if p.path == "kernel" and p.received_pps and p.delivered_pps < BASELINE_DELIVERED * p.received_pps
    ]


def _report(result: dict[str, Any]) -> str:
    places = ", ".join(f"{name}: the balancer on {cpu}" for name, cpu in result["placements"].items())
    cores = list(result["phases"][0]["cpu_us_per_packet"])
    lines = [
        f"{result['traffic']}; generator, switch and targets on {result['network_cpu']}; {places}",
        f"{'placement':<10}{'path':<10}{'offered':>10}{'delivered':>11}{'/kernel':>8}"
        + "".join(f"{c + ' us/pkt (busy)':>20}" for c in cores)
        + f"{'balancer us/pkt':>16}{'dsrlb us/pkt':>13}  where",
    ]
    for p in result["phases"]:
        lines.append(
            f"{p['placement']:<10}{p['path']:<10}{p['offered_pps']:>10,.0f}{p['delivered_pps']:>11,.0f}"
            f"{p['ratio']:>8.2f}"
            + "".join(f"{p['cpu_us_per_packet'][c]:>13.2f} ({p['cpu_busy'][c]:>4.0%})" for c in cores)
            + _figure(p["balancer_cpu_us_per_packet"], 16)
            + _figure(p["daemon_cpu_us_per_packet"], 13)
            + f"  {p['balancer']}"
        )
    lines += [f"warning: {w}" for w in result["warnings"]]
    busy = ", ".join(f"{c} {share:.0%}" for c, share in result["busy_before"].items())
    lines.append(f"busy before the run (other work, skews every figure): {busy}")
    lines.append("offered, delivered: packets/s; /kernel: delivered over the kernel's in the same placement")
    lines.append(
        "us/pkt: CPU time per delivered packet; balancer: softirq of its own core + dsrlb (free placement)"
    )
    return "\n".join(lines)


def _figure(value: float | None, width: int) -> str:
    return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dsrlb bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per phase (default 5)")
    parser.add_argument(
        "--family", choices=sorted(FAMILIES), default="ipv4", help="of the VIP and the traffic (default ipv4)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if os.geteuid() != 0:
        print("dsrlb bench: needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    try:
        result = run_bench(args.seconds, FAMILIES[args.family])
    except (BenchError, subprocess.CalledProcessError, OSError) as err:
        detail = err.stderr.strip() if isinstance(err, subprocess.CalledProcessError) and err.stderr else ""
        print(f"dsrlb bench: {err}{': ' + detail if detail else ''}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else _report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
