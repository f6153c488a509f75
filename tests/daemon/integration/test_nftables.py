"""`access nftables` end to end (issue 11): the seed network in namespaces (dsr_lab) with the seed config
switched to `access nftables`, so the balancer's kernel forwards VIP traffic from the daemon's netdev
ingress table while ARP, ping and health checks stay in the daemon. In that mode:

  - the kernel forwards many clients to both targets, the Python forwarder's ring sees none of it;
  - a reload to `access raw` and back keeps traffic flowing, and both modes pick the same targets;
  - only the balancer answers ARP; frames reach the targets from its MAC, replies bypass it;
  - `nft flush ruleset` is repaired within a second (new connections answered again) and counted;
  - drain: open connections stay on the target, new ones move, "drained" once they are idle;
  - a target that comes back (enable) leaves the connections that moved off it where they went, also
    connections that reuse an address and port pair recorded for it before;
  - a dead target is avoided within the tcpopen timeout and gets its clients back;
  - a full flow map (`set flows 4`) still forwards every client, to the hash's choice, and counts it;
  - without nft the daemon exits 1 with one line; a clean stop removes the table.

The web servers here speak HTTP/1.1 with keep-alive, so a test can hold TCP connections open across a
drain, a disable or an enable and send more requests on the very same connections.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import pytest
from dsr_lab import CLIENT_SOURCES, DSRLB, HTTP_SERVER, PYTHON, VIP, Lab

from dsrlb_tools.netns import Topology

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="integration tests need root: they create network namespaces"
    ),
]

PREFIX = "dsrlb-nf"  # not the lab fixture's: both may exist in one session
TABLE = "dsrlb_eth0"
DRAINIDLE = 5  # the default `set drainidle`
KERNEL_POLL = 0.5  # the daemon reads the kernel's counters this often (daemon.KERNEL_POLL)
# Client ports above the ephemeral range (32768-60999), each used once: a flow-map entry outlives its
# connection (`session` seconds), so a reused address and port pair would follow the old entry.
FRESH_PORTS = count(61000)

# One persistent connection per source ("ADDRESS" or "ADDRESS:PORT"); prints {address: local port}, then for
# each line on stdin sends one GET on every connection and prints {address: body or "ERR ..."}. A connection
# that broke (or never opened) is never replaced by a new one (auto_open off), so an answer always comes over
# the original connection. With "close" the GET asks the server to close the connection after its answer.
PERSISTENT = """
import http.client, json, socket, sys
vip, close, sources = sys.argv[1], sys.argv[2] == "close", sys.argv[3:]
conns, ports = {}, {}
for source in sources:
    src, _, port = source.partition(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(2)
    sock.bind((src, int(port or 0)))
    ports[src] = sock.getsockname()[1]
    try:
        sock.connect((vip, 80))
    except OSError as err:
        conns[src] = f"ERR {err!r}"
        continue
    conn = http.client.HTTPConnection(vip, 80, timeout=2)
    conn.sock, conn.auto_open = sock, 0
    conns[src] = conn
print(json.dumps(ports), flush=True)
for _ in sys.stdin:
    out = {}
    for src, conn in conns.items():
        if isinstance(conn, str):
            out[src] = conn
            continue
        try:
            conn.request("GET", "/", headers={"Connection": "close"} if close else {})
            resp = conn.getresponse()
            body = resp.read().decode().strip()
            kept = close or not resp.will_close
            out[src] = body if resp.status == 200 and kept else f"ERR {resp.status} {body}"
        except Exception as err:
            out[src] = f"ERR {err!r}"
    print(json.dumps(out), flush=True)
"""

# test_dsr's ARP_PROBE and SNIFFER without scapy (importing it costs 2 s of CPU per process).
# ARP request for argv[1] from the router's address; prints the sorted MACs that answered within 1 s.
ARP_PROBE = """
import json, socket, sys, time
target = socket.inet_aton(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0x0806))
mac = s.getsockname()[4]
arp = bytes.fromhex("0001080006040001") + mac + socket.inet_aton("172.16.1.254") + bytes(6) + target
s.send(b"\\xff" * 6 + mac + b"\\x08\\x06" + arp)
found, end = set(), time.monotonic() + 1
while (left := end - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        f = s.recv(2048)
    except TimeoutError:
        break
    if f[20:22] == b"\\x00\\x02" and f[28:32] == target:  # a reply from the target address
        found.add(f[22:28].hex(":"))
print(json.dumps(sorted(found)))
"""

# Captures TCP frames on eth0 ("replies": from VIP port 80, "requests": to it) until its stdin closes, then
# prints [ether src, ip dst] of each.
SNIFFER = """
import json, select, socket, sys
want, vip = sys.argv[1], socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.setblocking(False)
print("ready", flush=True)
seen = []
def take():
    while True:
        try:
            f = s.recv(65535)
        except BlockingIOError:
            return
        if f[12:14] != b"\\x08\\x00" or f[23] != 6:
            continue
        l4 = 14 + (f[14] & 15) * 4
        src, dst = (f[26:30], f[l4:l4 + 2]), (f[30:34], f[l4 + 2:l4 + 4])
        if (src if want == "replies" else dst) == (vip, b"\\x00P"):  # port 80
            seen.append([f[6:12].hex(":"), socket.inet_ntoa(f[30:34])])
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [])
    take()
    if sys.stdin in ready and not sys.stdin.read():
        break
print(json.dumps(seen))
"""

# A new connection and GET from one source every 20 ms for argv[3] seconds; prints [[start, ok], ...]
# with wall-clock start times (the test's clock too: namespaces share it).
PROBER = """
import http.client, json, sys, time
vip, src, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
out, end = [], time.time() + seconds
while time.time() < end:
    start = time.time()
    try:
        conn = http.client.HTTPConnection(vip, 80, timeout=0.3, source_address=(src, 0))
        conn.request("GET", "/")
        ok = conn.getresponse().status == 200
        conn.close()
    except OSError:
        ok = False
    out.append([start, ok])
    time.sleep(max(0.0, start + 0.02 - time.time()))
print(json.dumps(out))
"""


class NftLab(Lab):
    """The seed network, the daemon in `access nftables` (or raw, for comparison), keep-alive servers."""

    access = "nftables"
    extra = ""  # appended to the config (a `set` statement)
    choice: dict[str, str]  # source -> target name on a fresh flow map: the hash's choice

    def config_text(self) -> str:
        text = super().config_text()
        assert "access raw" in text
        return text.replace("access raw", f"access {self.access}") + self.extra

    def start_web(self, name: str) -> None:
        self.webs[name] = self.topo.popen(
            name, PYTHON, "-c", HTTP_SERVER, name, "HTTP/1.1",  # keep-alive: persistent connections
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def reload(self, access: str = "nftables", extra: str = "") -> None:
        self.access, self.extra = access, extra
        self.conf.write_text(self.config_text())
        res = self.ctl("reload")
        assert res.returncode == 0, f"reload to access {access}: {res.stderr}\n{self.daemon_log()}"
        assert self.stats()["access"] == access

    def stats(self) -> dict[str, Any]:
        stats = self.show("stats")
        assert isinstance(stats, dict)
        return stats

    def targets(self) -> dict[int, dict[str, Any]]:
        return {t["id"]: t for t in self.show("targets")}  # type: ignore[union-attr, index]

    def nft(self, *args: str) -> str:
        return self.topo.run("balancer", "nft", *args).stdout

    def sources_of(self, target: str, n: int = 6) -> list[str]:
        found = [src for src, name in self.choice.items() if name == target][:n]
        assert len(found) >= 3, self.choice
        return found


def failures(results: dict[str, str]) -> dict[str, str]:
    return {src: body for src, body in results.items() if body.startswith("ERR")}


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> float:
    """Poll until `check()` is truthy; the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(interval)
    return time.monotonic() - start


class Persistent:
    """Keep-alive HTTP connections from the client, one per source (see PERSISTENT)."""

    def __init__(self, lab: NftLab, sources: list[str], close: bool = False) -> None:
        self.lab = lab
        self.proc = lab.python_bg("client", PERSISTENT, VIP, "close" if close else "keep", *sources)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        line = self.stdout.readline()
        if not line:
            self.close()
            pytest.fail(f"persistent connections not opened: {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.ports: dict[str, int] = json.loads(line)

    def request(self) -> dict[str, str]:
        """One more GET on every connection."""
        self.stdin.write("\n")
        self.stdin.flush()
        line = self.stdout.readline()
        assert line, "the persistent client died"
        return json.loads(line)

    def close(self) -> None:
        """Close the connections (the client exits)."""
        if self.proc.poll() is None:
            self.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.lab.topo.stop(self.proc)

    def __enter__(self) -> Persistent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fresh(lab: NftLab, sources: list[str]) -> dict[str, str]:
    """One GET from each source on a connection from a port never used before: where a new connection goes."""
    with Persistent(lab, [f"{src}:{next(FRESH_PORTS)}" for src in sources], close=True) as once:
        return once.request()


def probe(lab: NftLab, seconds: float, during: Callable[[], None], source: str = CLIENT_SOURCES[-1]) -> list:
    """Run `during()` while the prober opens a connection every 20 ms; the probes as [[start, ok], ...]."""
    proc = lab.python_bg("client", PROBER, VIP, source, str(seconds))
    try:
        time.sleep(0.5)  # started and probing
        during()
        out, err = proc.communicate(timeout=seconds + 20)
    finally:
        lab.topo.stop(proc)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out)


@pytest.fixture(scope="module")
def nlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NftLab]:
    with Topology(PREFIX) as topo:
        lab = NftLab(topo, tmp_path_factory.mktemp("dsrlb-nf"))
        lab.build()
        lab.start_daemon()
        # Up and resolved; the kernel forwards once the daemon is ready (its first rebuild after warm-up).
        wait_for(
            "the kernel forwarding VIP traffic",
            lambda: not failures(lab.http(CLIENT_SOURCES[:2])),
            timeout=10,
            interval=0.2,
        )
        lab.choice = lab.http(CLIENT_SOURCES)  # the flow map is (almost) empty: each pick is the hash's
        assert not failures(lab.choice) and set(lab.choice.values()) == {"web1", "web2"}, lab.choice
        yield lab


def test_kernel_forwards_many_clients_to_both_targets(nlab: NftLab) -> None:
    before, targets_before = nlab.stats(), nlab.targets()
    assert before["access"] == "nftables"
    results = nlab.http(CLIENT_SOURCES)
    assert not failures(results), results
    assert results == nlab.choice  # the same source, the same target: a new connection follows the hash

    # every request is at least SYN, ACK, GET and FIN through the balancer, counted by the kernel
    n = len(CLIENT_SOURCES)
    wait_for("kernel counters", lambda: nlab.stats()["forwarded"] - before["forwarded"] >= 4 * n, 3)
    after, targets_after = nlab.stats(), nlab.targets()
    per_target = {tid: targets_after[tid]["packets"] - targets_before[tid]["packets"] for tid in (1, 2)}
    assert all(p >= 4 for p in per_target.values()), per_target
    assert sum(per_target.values()) >= 4 * n, per_target
    # ... and none of it went through the Python forwarder: its ring saw at most some ARP
    assert after["rx"] - before["rx"] < n // 3, (before, after)
    assert after["tx"] - before["tx"] < n // 3, (before, after)


def test_mode_switch_by_reload_keeps_traffic_and_the_choice(nlab: NftLab) -> None:
    failed: list[dict[str, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            if bad := failures(nlab.http(CLIENT_SOURCES[:8], timeout=2)):
                failed.append(bad)

    background = threading.Thread(target=traffic)
    background.start()
    try:
        time.sleep(0.5)
        nlab.reload("raw")
        raw_before = nlab.stats()
        raw_choice = nlab.http(CLIENT_SOURCES)
        raw_after = nlab.stats()
        nlab.reload("nftables")
        time.sleep(0.5)
    finally:
        stop.set()
        background.join()
        if nlab.access != "nftables":
            nlab.reload("nftables")
    assert not failures(raw_choice), raw_choice
    assert raw_choice == nlab.choice, "access raw and access nftables pick different targets"
    assert raw_after["forwarded"] - raw_before["forwarded"] >= 4 * len(CLIENT_SOURCES)  # Python did it
    assert raw_after["rx"] - raw_before["rx"] >= 4 * len(CLIENT_SOURCES)
    assert not failed, f"requests failed while the access mode switched: {failed}"
    assert nlab.http(CLIENT_SOURCES) == nlab.choice


def test_only_the_balancer_answers_arp_and_replies_bypass_it(nlab: NftLab) -> None:
    filters = {"router": "replies", "balancer": "replies", "web1": "requests", "web2": "requests"}
    sniffers = {host: nlab.python_bg(host, SNIFFER, f, VIP) for host, f in filters.items()}
    captured = {}
    try:
        # while the sniffers start: who answers ARP for the virtual server and the network's `virt`
        probes = {address: nlab.python_bg("router", ARP_PROBE, address) for address in (VIP, "172.16.1.253")}
        for address, proc in probes.items():
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert json.loads(out) == [nlab.macs["balancer"]], f"ARP for {address} answered by {out}"
        for host, proc in sniffers.items():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", f"sniffer in {host}"
        results = nlab.http(CLIENT_SOURCES)
        time.sleep(0.3)
        for host, proc in sniffers.items():
            out, err = proc.communicate("", timeout=20)
            assert proc.returncode == 0, err
            captured[host] = json.loads(out)
    finally:
        for proc in sniffers.values():
            nlab.topo.stop(proc)
    assert not failures(results), results

    assert {src for src, _ in captured["router"]} == {nlab.macs["web1"], nlab.macs["web2"]}
    assert {dst for _, dst in captured["router"]} == set(CLIENT_SOURCES)
    assert captured["balancer"] == [], "replies crossed the balancer's interface"
    for web in ("web1", "web2"):  # what reached the targets was forwarded by the balancer
        assert captured[web] and {src for src, _ in captured[web]} == {nlab.macs["balancer"]}, captured[web]


def test_flushed_ruleset_is_restored_within_a_second(nlab: NftLab) -> None:
    restored = nlab.stats()["ruleset_restored"]
    flushed: list[float] = []

    def flush() -> None:
        nlab.nft("flush", "ruleset")
        flushed.append(time.time())  # flushed by now (a probe that started earlier may have got through)

    probes = probe(nlab, 3.0, flush)
    t0 = flushed[0]
    assert all(ok for start, ok in probes if start < t0 - 0.4), "traffic failed before the flush"
    back = [start for start, ok in probes if ok and start > t0]
    assert back, f"no answer in {probes[-1][0] - t0:.1f} s after nft flush ruleset"
    print(f"nft flush ruleset: a new connection answered again {back[0] - t0:.2f} s later")
    assert back[0] - t0 < 1.0
    timeline = [(round(start - t0, 2), ok) for start, ok in probes if start > t0 - 0.4]
    assert all(ok for start, ok in probes if start > back[0]), f"traffic failed again: {timeline}"
    assert TABLE in nlab.nft("list", "tables")
    wait_for("ruleset_restored counted", lambda: nlab.stats()["ruleset_restored"] == restored + 1, 2)
    results = nlab.http(CLIENT_SOURCES)
    assert results == nlab.choice, results


def test_drain_keeps_open_connections_and_moves_new_ones(nlab: NftLab) -> None:
    sources = nlab.sources_of("web1")
    try:
        with Persistent(nlab, sources) as conns:
            assert conns.request() == dict.fromkeys(sources, "web1")
            res = nlab.ctl("target", "drain", "1")
            assert res.returncode == 0, res.stderr
            for _ in range(3):  # the open connections keep reaching web1 ...
                assert conns.request() == dict.fromkeys(sources, "web1")
                time.sleep(0.5)
            new = fresh(nlab, sources)  # ... new ones, from the same clients, go to web2
            assert new == dict.fromkeys(sources, "web2"), new
            assert conns.request() == dict.fromkeys(sources, "web1")
            assert nlab.targets()[1]["admin"] == "draining"
            flows = {(s["client"], s["port"]): s["target"] for s in nlab.show("sessions")}  # type: ignore[union-attr, index]
            assert {flows.get((src, port)) for src, port in conns.ports.items()} == {1}, flows
        closed = time.monotonic()
        took = wait_for("target 1 drained", lambda: nlab.targets()[1]["admin"] == "drained", DRAINIDLE + 3)
        print(f"drain: target 1 drained {took:.1f} s after its last connection closed")
        assert took >= DRAINIDLE - 2 * KERNEL_POLL - 1, "drained while its connections were still busy"
        assert time.monotonic() - closed < DRAINIDLE + 3
        assert fresh(nlab, sources) == dict.fromkeys(sources, "web2")
    finally:
        assert nlab.ctl("target", "enable", "1").returncode == 0
    wait_for("new connections on web1", lambda: fresh(nlab, sources) == dict.fromkeys(sources, "web1"), 3)


def test_returning_target_leaves_moved_connections_where_they_are(nlab: NftLab) -> None:
    sources = nlab.sources_of("web1")
    try:
        res = nlab.ctl("target", "disable", "1")
        assert res.returncode == 0, res.stderr
        assert fresh(nlab, sources) == dict.fromkeys(sources, "web2")
        with Persistent(nlab, sources) as conns:
            assert conns.request() == dict.fromkeys(sources, "web2")
            res = nlab.ctl("target", "enable", "1")
            assert res.returncode == 0, res.stderr
            wait_for(  # new connections: web1 again
                "new connections on web1", lambda: fresh(nlab, sources) == dict.fromkeys(sources, "web1"), 3
            )
            for _ in range(3):  # the connections that moved stay on web2
                assert conns.request() == dict.fromkeys(sources, "web2")
                time.sleep(0.5)
            flows = {(s["client"], s["port"]): s["target"] for s in nlab.show("sessions")}  # type: ignore[union-attr, index]
            assert {flows.get((src, port)) for src, port in conns.ports.items()} == {2}, flows
    finally:
        assert nlab.ctl("target", "enable", "1").returncode == 0


def test_returning_target_leaves_moved_flows_of_reused_addresses_and_ports(nlab: NftLab) -> None:
    """A flow map entry outlives its connection (`session` seconds): a new connection on the same address
    and port pair while its target is out goes elsewhere, and must stay there when the target returns."""
    sources = [f"{src}:{next(FRESH_PORTS)}" for src in nlab.sources_of("web1", 4)]
    addresses = [s.partition(":")[0] for s in sources]
    with Persistent(nlab, sources, close=True) as once:  # the server closes: the ports are free again
        assert once.request() == dict.fromkeys(addresses, "web1")
    try:
        res = nlab.ctl("target", "disable", "1")
        assert res.returncode == 0, res.stderr
        with Persistent(nlab, sources) as conns:  # the same address and port pairs as before
            assert conns.request() == dict.fromkeys(addresses, "web2")
            res = nlab.ctl("target", "enable", "1")
            assert res.returncode == 0, res.stderr
            wait_for(
                "new connections on web1",
                lambda: fresh(nlab, addresses) == dict.fromkeys(addresses, "web1"),
                3,
            )
            for _ in range(3):
                assert conns.request() == dict.fromkeys(addresses, "web2")
                time.sleep(0.5)
    finally:
        assert nlab.ctl("target", "enable", "1").returncode == 0


def test_dead_target_is_avoided_within_the_tcpopen_timeout_and_returns(nlab: NftLab) -> None:
    on_web1 = nlab.sources_of("web1", 8)
    on_web2 = nlab.sources_of("web2", 8)
    sources = on_web1 + on_web2
    nlab.stop_web("web2")
    killed = time.monotonic()
    try:
        # tcpopen 80,3,10: down after 10 s without a successful check, noticed at the next interval.
        while True:
            results = fresh(nlab, sources)
            broken = {src: results[src] for src in on_web1 if results[src] != "web1"}
            assert not broken, f"clients of web1 disturbed while web2 died: {broken}"
            if not failures(results) and set(results.values()) == {"web1"}:
                break
            assert time.monotonic() - killed < 10 + 3 + 2, f"web2 still gets traffic: {results}"
            time.sleep(0.5)
        print(f"dead target: avoided {time.monotonic() - killed:.1f} s after its server stopped")
        assert nlab.health()[2] == "down"
    finally:
        nlab.start_web("web2")
    nlab.wait_targets({2: "up"}, timeout=3 + 3)
    expected = {src: nlab.choice[src] for src in sources}
    wait_for("web2's clients back on web2", lambda: fresh(nlab, sources) == expected, 5, 0.2)


def test_full_flow_map_still_forwards_every_client(nlab: NftLab) -> None:
    try:
        nlab.reload(extra="set flows 4\n")
        assert "size 4\n" in nlab.nft("list", "map", "netdev", TABLE, "flows")
        overflow = nlab.stats()["flows_overflow"]
        results = nlab.http(CLIENT_SOURCES)
        assert not failures(results), results
        assert results == nlab.choice  # beyond the map, the stateless pick: the same target
        wait_for("flows_overflow counted", lambda: nlab.stats()["flows_overflow"] > overflow, 3)
    finally:
        nlab.reload()
    assert "size 4\n" not in nlab.nft("list", "map", "netdev", TABLE, "flows")
    assert not failures(nlab.http(CLIENT_SOURCES))


def test_without_nft_access_nftables_exits_1_with_one_line(nlab: NftLab) -> None:
    conf = nlab.workdir / "nonft.conf"
    conf.write_text(nlab.config_text())
    empty = nlab.workdir / "empty-bin"
    empty.mkdir(exist_ok=True)
    ip = shutil.which("ip")
    assert ip is not None
    res = subprocess.run(
        [ip, "netns", "exec", nlab.topo.ns("balancer"), DSRLB, "-s", str(nlab.workdir / "nonft.sock")]
        + ["run", "-c", str(conf)],
        env={"PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 1, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "access nftables" in lines[0] and "use access raw" in lines[0], lines


def test_clean_stop_removes_the_table(nlab: NftLab) -> None:
    assert TABLE in nlab.nft("list", "tables")
    assert nlab.daemon is not None
    nlab.daemon.send_signal(signal.SIGTERM)
    assert nlab.daemon.wait(10) == 0, nlab.daemon_log()
    assert "dsrlb_" not in nlab.nft("list", "tables")


def test_a_kernel_path_that_cannot_be_restored_ends_the_process(nlab: NftLab) -> None:
    """After the clean stop: a daemon whose nft starts failing (a wrapper on its PATH) while its table is
    gone exits 1 (systemd restarts it, a master resigns) instead of advertising a VIP that goes nowhere."""
    real = shutil.which("nft")
    assert real is not None
    bin_dir, broken = nlab.workdir / "failing-bin", nlab.workdir / "nft-broken"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "nft"
    wrapper.write_text(
        f'#!/bin/sh\n[ -e {broken} ] && {{ echo "nft: broken" >&2; exit 1; }}\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    nlab.access, nlab.extra = "nftables", ""
    nlab.conf.write_text(nlab.config_text())
    daemon = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            nlab.topo.ns("balancer"),
            DSRLB,
            "-s",
            str(nlab.sock),
            "run",
            "-c",
            str(nlab.conf),
        ],
        env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("the table", lambda: TABLE in nlab.nft("list", "tables"), timeout=20)
        broken.touch()
        nlab.nft("flush", "ruleset")
        assert daemon.wait(10) == 1, daemon.stderr.read() if daemon.stderr else ""
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        broken.unlink(missing_ok=True)
