"""HA mode bgp (issue 14) end to end: three active balancers behind an ECMP router.

  client 198.18.0.10-.40 --- router (BIRD, AS 65000, merge paths, L4 multipath hash)
                                 |  LAN bridge
     lb1 .241 (raw)   lb2 .242 (raw)   lb3 .243 (nftables)   web1 .100   web2 .101 (VIP on lo)
     each: dsrlb in bgp mode + BIRD (AS 65001) announcing the /32s on the daemon's TUN device

Asserted on behaviour: one router route with three next hops; new connections spread over all three
balancers; replies go from the targets to the router directly, without a reset from anyone; nobody
answers ARP for the VIP; a clean stop under load loses no request; after kill -9 the router drops that
balancer's next hop within 0.5 s (the figure and the failed requests are printed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dsr_lab import CLIENT_SOURCES, SEED, VIP, WEBS, Lab
from test_dsr import ARP_PROBE, SNIFFER

from dsrlb_tools import bird
from dsrlb_tools.netns import Topology

pytestmark = [
    pytest.mark.root,
    pytest.mark.incremental,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="integration tests need root: they create network namespaces"
    ),
]

PREFIX = "dsrlb-bgp"
BALANCERS = {"lb1": "172.16.1.241", "lb2": "172.16.1.242", "lb3": "172.16.1.243"}
ACCESS = {"lb1": "raw", "lb2": "raw", "lb3": "nftables"}
ROUTER = "172.16.1.254"
TIMERS = bird.Timers(hold=3, keepalive=1)
GRACE = 1.0  # seconds a cleanly stopping balancer keeps forwarding after its withdraw

# In the client: GET http://VIP/ over new connections from all source addresses, from N threads, until
# stdin closes; then prints {"ok": n, "failed": [[time, error]], "by": {target: n}}.
LOAD = """
import http.client, json, sys, threading, time
vip, threads, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
stop, lock = threading.Event(), threading.Lock()
result = {"ok": 0, "failed": [], "by": {}}
def worker(i):
    n = 0
    while not stop.is_set():
        src = sources[(i + n * threads) % len(sources)]
        n += 1
        start = time.monotonic()
        try:
            conn = http.client.HTTPConnection(vip, 80, timeout=3, source_address=(src, 0))
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode().strip()
            conn.close()
            res = body if resp.status == 200 else f"ERR status {resp.status}"
        except OSError as err:
            res = f"ERR {err}"
        with lock:
            if res.startswith("ERR"):
                result["failed"].append([start, res])
            else:
                result["ok"] += 1
                result["by"][res] = result["by"].get(res, 0) + 1
pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for t in pool:
    t.start()
print("ready", flush=True)
sys.stdin.read()
stop.set()
for t in pool:
    t.join()
print(json.dumps(result))
"""

# In the router: the VIP route's next hops, polled until stdin closes; prints [[time, [gateways]], ...]
# at every change (time.monotonic is one clock for all namespaces).
ROUTE_WATCH = """
import json, select, subprocess, sys, time
vip, seen, last = sys.argv[1], [], None
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    ip = subprocess.run(["ip", "-j", "route", "show", vip], capture_output=True, text=True)
    routes = json.loads(ip.stdout or "[]")
    hops = sorted(h["gateway"] for r in routes for h in r.get("nexthops", [r]) if "gateway" in h)
    if hops != last:
        seen.append([time.monotonic(), hops])
        last = hops
print(json.dumps(seen))
"""

# In a balancer: a leftover persistent TUN device with an address is taken over by TunDevice, which must
# leave it empty and non-persistent (it dies with the process); prints the device's addresses at each step.
PERSISTENT = """
import json, subprocess
from ipaddress import IPv4Address
from dsrlb.bgp import TunDevice
def addresses():
    out = subprocess.run(["ip", "-j", "addr", "show", "dev", "dsrlbp"], capture_output=True, text=True)
    links = json.loads(out.stdout or "[]")
    return [a["local"] for link in links for a in link["addr_info"] if a["family"] == "inet"]
subprocess.run(["ip", "tuntap", "add", "dev", "dsrlbp", "mode", "tun"], check=True)
subprocess.run(["ip", "addr", "add", "192.0.2.9/32", "dev", "dsrlbp"], check=True)
steps = {"leftover": addresses()}
dev = TunDevice("dsrlbp")
dev.open()
steps["opened"] = addresses()
dev.set([IPv4Address("192.0.2.10"), IPv4Address("192.0.2.11")])
dev.set([IPv4Address("192.0.2.11")])
steps["set"] = addresses()
dev.close()
steps["closed"] = subprocess.run(["ip", "link", "show", "dsrlbp"], capture_output=True).returncode != 0
print(json.dumps(steps))
"""

METRICS = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9410/metrics", timeout=5).read().decode())
"""


class BgpLab(Lab):
    """The DSR network with three balancers in HA mode bgp, each with its own BIRD, and a BIRD router."""

    def __init__(self, topo: Topology, workdir: Path) -> None:
        super().__init__(topo, workdir)
        self.daemons: dict[str, subprocess.Popen[str]] = {}
        self.birds: dict[str, subprocess.Popen[str]] = {}

    def build(self) -> None:
        self.build_edge()
        self.topo.sysctl("router", {"net.ipv4.fib_multipath_hash_policy": 1})
        for host, real in BALANCERS.items():
            self.add_balancer(host, real)
        self.build_targets()
        self.macs = {host: self.topo.mac(host) for host in ("router", *BALANCERS, *WEBS)}
        peers = [bird.Peer(host, real, 65001) for host, real in BALANCERS.items()]
        self.start_bird("router", bird.router(ROUTER, 65000, peers, TIMERS))
        for host, real in BALANCERS.items():
            self.start_bird(
                host, bird.balancer(real, 65001, [bird.Peer("upstream", ROUTER, 65000)], timers=TIMERS)
            )
        for host in BALANCERS:
            self.start_balancer(host)

    def path(self, host: str, suffix: str) -> Path:
        return self.workdir / f"{host}.{suffix}"

    def start_bird(self, host: str, text: str) -> None:
        conf = self.path(host, "bird.conf")
        conf.write_text(text)
        check = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, f"bird -p {conf}: {check.stderr}"
        with self.path(host, "bird.log").open("w") as log:
            self.birds[host] = self.topo.popen(
                host,
                "bird",
                "-f",
                "-c",
                str(conf),
                "-s",
                str(self.path(host, "bird.ctl")),
                "-P",
                str(self.path(host, "bird.pid")),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def config_for(self, host: str) -> str:
        """The seed config with this balancer's address, its access mode, no `virt`, and a bgp block."""
        lines = [
            line
            for line in SEED.read_text().splitlines()
            if not line.strip().startswith("virt") and not line.startswith("// end")
        ]
        text = "\n".join(lines).replace("real 172.16.1.252", f"real {BALANCERS[host]}")
        text = text.replace("access raw", f"access {ACCESS[host]}")
        return f"{text}\nbgp {{\n    socket {self.path(host, 'bird.ctl')}\n    grace {GRACE:g}\n}}\n"

    def start_balancer(self, host: str) -> None:
        conf = self.path(host, "conf")
        conf.write_text(self.config_for(host))
        self.daemons[host] = self.run_daemon(host, conf, self.path(host, "sock"), self.path(host, "log"))

    def log_of(self, host: str) -> str:
        return self.path(host, "log").read_text()[-3000:] + self.path(host, "bird.log").read_text()[-1500:]

    def stats(self, host: str) -> dict[str, Any]:
        return self.show("stats", sock=self.path(host, "sock"))

    def nexthops(self) -> list[str]:
        res = self.topo.run("router", "ip", "-j", "route", "show", VIP)
        routes = json.loads(res.stdout or "[]")
        return sorted(h["gateway"] for r in routes for h in r.get("nexthops", [r]) if "gateway" in h)

    def wait_announced(self, hosts: list[str], timeout: float = 40) -> None:
        """Until every host announces the VIP over an established session and the router has them all."""
        deadline = time.monotonic() + timeout
        want = sorted(BALANCERS[h] for h in hosts)
        while True:
            state = {}
            for host in hosts:
                daemon = self.daemons[host]
                assert daemon.poll() is None, f"dsrlb in {host} died:\n{self.log_of(host)}"
                res = self.ctl("show", "bgp", "--json", sock=self.path(host, "sock"))
                if res.returncode == 0:  # else not up yet (a killed daemon's socket file stays behind)
                    state[host] = json.loads(res.stdout)
            ready = all(
                s["vips"] == [{"vip": VIP, "announced": True, "reason": ""}]
                and any(p["name"] == "upstream" and p["info"] == "Established" for p in s["protocols"])
                for s in state.values()
            )
            if len(state) == len(hosts) and ready and self.nexthops() == want:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(self.log_of(h) for h in hosts)
                pytest.fail(f"not announced within {timeout} s: {state}, router {self.nexthops()}\n{logs}")
            time.sleep(0.25)

    def start_load(self, threads: int = 8) -> subprocess.Popen[str]:
        proc = self.python_bg("client", LOAD, VIP, str(threads), *CLIENT_SOURCES)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def background(self, host: str, code: str, *args: str) -> subprocess.Popen[str]:
        proc = self.python_bg(host, code, *args)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", f"{host}: not ready"
        return proc


def finish(proc: subprocess.Popen[str]) -> Any:
    """Close a background helper's stdin and return what it printed (JSON)."""
    out, err = proc.communicate("", timeout=30)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BgpLab]:
    for tool in ("bird", "nft"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            pytest.skip(f"{tool} is not installed")
    with Topology(PREFIX) as topo:
        lab = BgpLab(topo, tmp_path_factory.mktemp("dsrlb-bgp"))
        lab.build()
        lab.wait_announced(list(BALANCERS))
        yield lab


def test_router_spreads_new_connections_over_all_balancers(lab: BgpLab) -> None:
    assert lab.nexthops() == sorted(BALANCERS.values()), "one route, three next hops"
    before = {host: lab.stats(host)["forwarded"] for host in BALANCERS}
    # SYN-ACKs (few enough for scapy to keep up), and resets: there must be none
    from_vip = f"tcp and src host {VIP} and tcp[tcpflags]"
    synacks = lab.background("router", SNIFFER, f"{from_vip} & tcp-syn != 0")
    resets = lab.background("router", SNIFFER, f"{from_vip} & tcp-rst != 0")
    load = lab.start_load()
    time.sleep(3)
    result = finish(load)
    time.sleep(0.3)
    replies, reset = finish(synacks), finish(resets)
    forwarded = {host: lab.stats(host)["forwarded"] - before[host] for host in BALANCERS}
    total = sum(forwarded.values())
    shares = {host: round(n / total, 3) for host, n in forwarded.items()}
    print(f"\nbgp spread: {result['ok']} requests, forwarded packets {forwarded}, shares {shares}")
    assert result["failed"] == [] and result["ok"] > 100, result
    assert set(result["by"]) == set(WEBS), result["by"]
    assert all(share >= 0.2 for share in shares.values()), shares
    # Replies reach the router from the targets themselves, and no one resets a connection (a VIP on
    # a balancer's announcement device must not make its kernel answer VIP traffic).
    assert {mac for mac, _ in replies} == {lab.macs[w] for w in WEBS}, "replies not from the targets"
    assert reset == [], "a reset from the VIP"
    assert len(replies) >= result["ok"] // 2, "the replies went elsewhere"


def test_nobody_answers_arp_for_the_vip(lab: BgpLab) -> None:
    """The VIP is a local address of every balancer (on its announcement device), which a Linux kernel
    answers ARP for on any interface by default (seen without the daemon's table): none may answer."""
    for host in BALANCERS:
        carried = lab.topo.run(host, "ip", "-br", "addr", "show", "dev", "dsrlb0").stdout
        assert f"{VIP}/32" in carried, f"{host}: {carried}"
    answers = json.loads(lab.python("router", ARP_PROBE, VIP))
    assert answers == [], (
        f"ARP for {VIP} answered by {answers} (balancers {[lab.macs[b] for b in BALANCERS]})"
    )
    ping = lab.topo.run("client", "ping", "-c", "1", "-W", "1", VIP, check=False)
    assert ping.returncode == 0, "a balancer answers ping to the VIP"


def test_a_leftover_persistent_device_is_taken_over_empty_and_dies_with_us(lab: BgpLab) -> None:
    steps = json.loads(lab.python("lb3", PERSISTENT))
    assert steps == {"leftover": ["192.0.2.9"], "opened": [], "set": ["192.0.2.11"], "closed": True}


def test_show_bgp_tells_what_is_announced_and_bird_state(lab: BgpLab) -> None:
    text = lab.ctl("show", "bgp", sock=lab.path("lb1", "sock")).stdout
    assert "dsrlb0" in text and VIP in text and "Established" in text, text
    metrics = lab.python("lb1", METRICS)
    assert f'dsrlb_bgp_announced{{vip="{VIP}"}} 1' in metrics


def test_reload_keeps_the_ha_mode(lab: BgpLab) -> None:
    conf, sock = lab.path("lb3", "conf"), lab.path("lb3", "sock")
    text = conf.read_text()
    try:
        conf.write_text(text.replace("bgp {", "bgp {\n    device lb9"))
        res = lab.ctl("reload", sock=sock)
        assert res.returncode == 1 and "changing the HA mode or the bgp device needs a restart" in res.stderr
        conf.write_text(text.replace(f"grace {GRACE:g}", "grace 1.5"))
        assert lab.ctl("reload", sock=sock).returncode == 0
    finally:
        conf.write_text(text)
        assert lab.ctl("reload", sock=sock).returncode == 0
    assert lab.nexthops() == sorted(BALANCERS.values()), "a reload does not withdraw"


def test_clean_stop_under_load_loses_nothing(lab: BgpLab) -> None:
    load = lab.start_load()
    time.sleep(1)
    daemon = lab.daemons["lb1"]
    daemon.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    daemon.wait(timeout=15)
    stopped = time.monotonic() - asked
    time.sleep(1)
    result = finish(load)
    failed = len(result["failed"])
    print(f"\nbgp clean stop: {result['ok']} requests, {failed} failed, exit after {stopped:.2f} s")
    assert daemon.returncode == 0, lab.log_of("lb1")
    assert result["failed"] == [], result["failed"]
    assert lab.nexthops() == sorted(BALANCERS[h] for h in ("lb2", "lb3"))
    assert stopped >= GRACE


def test_kill_9_withdraws_within_half_a_second(lab: BgpLab) -> None:
    assert lab.nexthops() == sorted(BALANCERS[h] for h in ("lb2", "lb3")), "after the clean stop"
    watch = lab.background("router", ROUTE_WATCH, VIP)
    load = lab.start_load()
    time.sleep(1)
    killed = time.monotonic()
    os.kill(lab.daemons["lb2"].pid, signal.SIGKILL)
    lab.daemons["lb2"].wait(timeout=5)
    time.sleep(2)
    result = finish(load)
    changes = finish(watch)
    left = [t for t, hops in changes if hops == [BALANCERS["lb3"]] and t >= killed]
    assert left, f"the router kept lb2's next hop: {changes}"
    withdrawn = left[0] - killed
    failed = [f for f in result["failed"] if f[0] >= killed - 3]
    print(
        f"\nbgp kill -9: route withdrawn at the router after {withdrawn * 1000:.0f} ms; "
        f"{result['ok']} requests ok, {len(failed)} failed: {[f[1] for f in failed][:5]}"
    )
    assert withdrawn <= 0.5, f"withdrawn after {withdrawn:.3f} s"


def test_restarted_balancers_announce_again(lab: BgpLab) -> None:
    for host in ("lb1", "lb2"):
        lab.start_balancer(host)
    lab.wait_announced(list(BALANCERS), timeout=30)
