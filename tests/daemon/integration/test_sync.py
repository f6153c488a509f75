"""bngsync between a VRRP pair (issue 16), end to end: the seed network in namespaces with two balancers,
lb1 (172.16.1.252, priority 200) and lb2 (172.16.1.251, priority 100), `syncpeer` each other, `preempt
off`, and two virtual servers on 172.16.1.10 and 172.16.1.11, both to web1 and web2. With `access raw`
their methods pick per client (`rr`, `leastsessions`); with `access nftables` they hash (`maglev`), and
the kernel's flow map is what travels. Every failover is a clean stop of the master under load.

  1. 20 clients get a target from lb1; lb1 stops: every client gets the same target from lb2 for its new
     connections, and no request of the load fails.
  2. lb1 restarts as backup: lb2 sends it the whole table at once (sessionautoresync); lb2 stops: every
     client still keeps its target, now through lb1.
  3. long-lived connections to web1 are open, web1 is drained on lb1 (the master): lb2 (restarted) learns
     it; lb1 stops: on lb2 web1 is still draining, its open connections keep working on web1 (with
     nftables: because lb2's kernel got lb1's flows; its hash sends them to web2), and the clients whose
     target was web1 move to web2 for new connections.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dsr_lab import CLIENT_SOURCES, HTTP_CLIENT, HTTP_SERVER, PYTHON, SEED, WEBS, PairLab

from dsrlb_tools.netns import Topology

pytestmark = [
    pytest.mark.root,
    pytest.mark.incremental,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="integration tests need root: they create network namespaces"
    ),
]

PREFIX = "dsrlb-sy"
VIPS = ("172.16.1.10", "172.16.1.11")
METHODS = {"raw": ("rr", "leastsessions"), "nftables": ("maglev", "maglev")}
REALS = {"lb1": "172.16.1.252", "lb2": "172.16.1.251"}
CLIENTS = CLIENT_SOURCES[:20]
LONG_LIVED = CLIENT_SOURCES[20:26]
LOAD = CLIENT_SOURCES[26:31]

# HTTP/1.1 connections from each source (argv 2...) kept open, one GET every 0.2 s each, until a line
# arrives on stdin; prints {source: [[time, body or "ERR ..."] per request]}.
KEEP_ALIVE = """
import http.client, json, sys, threading, time
vip, sources = sys.argv[1], sys.argv[2:]
done, seen = threading.Event(), {s: [] for s in sources}
def run(src):
    conn = http.client.HTTPConnection(vip, 80, timeout=2, source_address=(src, 0))
    while not done.is_set():
        try:
            conn.request("GET", "/")
            seen[src].append([time.time(), conn.getresponse().read().decode().strip()])
        except OSError as err:
            seen[src].append([time.time(), f"ERR {err}"])
            return
        time.sleep(0.2)
threads = [threading.Thread(target=run, args=(s,)) for s in sources]
for t in threads:
    t.start()
print("ready", flush=True)
sys.stdin.readline()
done.set()
for t in threads:
    t.join()
print(json.dumps(seen))
"""

# New connections from each source (argv 3...) to the VIP in rounds until a line arrives on stdin; prints
# {"ok": N, "failed": [errors]}.
LOAD_LOOP = """
import http.client, json, sys, threading
vip, timeout, sources = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
done, ok, failed = threading.Event(), [0], []
def run(src):
    while not done.is_set():
        try:
            conn = http.client.HTTPConnection(vip, 80, timeout=timeout, source_address=(src, 0))
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            ok[0] += 1
        except OSError as err:
            failed.append(f"{src}: {err}")
threads = [threading.Thread(target=run, args=(s,)) for s in sources]
for t in threads:
    t.start()
print("ready", flush=True)
sys.stdin.readline()
done.set()
for t in threads:
    t.join()
print(json.dumps({"ok": ok[0], "failed": failed}))
"""


def config(name: str, access: str) -> str:
    """The seed plus a second VIP, the access mode and its methods, VRRP and bngsync."""
    first, second = METHODS[access]
    peer = REALS["lb2" if name == "lb1" else "lb1"]
    text = SEED.read_text().replace(
        "          targets 1,2\n",
        f"          targets 1,2\n          method {first}\n          session 120\n",
    )
    text = text.replace("register  server 1\nenable    server 1\n", "")
    text = text.replace(
        "          virt 172.16.1.253\n", f"          virt 172.16.1.253\n          syncpeer {peer}\n"
    )
    text = text.replace("          real 172.16.1.252\n", f"          real {REALS[name]}\n")
    text = text.replace("          access raw\n", f"          access {access}\n")
    return (
        "set { sessionautoresync 1\n sessionsyncack 1 }\n"
        + text
        + f"""
server 2 {{
    ipaddr {VIPS[1]}
    port 80
    protocol tcp
    targets 1,2
    method {second}
    session 120
}}
register servers 1,2
enable servers 1,2
vrrp {{
    vrid 61
    priority {200 if name == "lb1" else 100}
    network 1
    advert 100
    preempt off
    peers {peer}
}}
"""
    )


class SyncLab(PairLab):
    def build(self) -> None:
        self.build_edge()
        for name, real in REALS.items():
            self.add_balancer(name, real)
        self.build_targets()
        for web in WEBS:
            self.topo.addr(web, f"{VIPS[1]}/32", "lo")

    def start_web(self, name: str) -> None:  # keep-alive, for the long-lived connections
        self.webs[name] = self.topo.popen(name, PYTHON, "-c", HTTP_SERVER, name, "HTTP/1.1")

    def config(self, name: str) -> str:
        return config(name, self.access)

    def targets(self, vip: str, sources: list[str] = CLIENTS) -> dict[str, str]:
        res = self.topo.run("client", PYTHON, "-c", HTTP_CLIENT, vip, "2", *sources, timeout=60)
        return json.loads(res.stdout)

    def all_targets(self) -> dict[str, dict[str, str]]:
        return {vip: self.targets(vip) for vip in VIPS}

    def synced(self, view: dict[str, Any], held: int) -> bool:
        """The peer's state arrived: sessions (raw) or the kernel's flows (nftables)."""
        return (view["sessions_held"] if self.access == "raw" else view["flows_received"]) >= held

    def background(self, code: str, *args: str) -> Any:
        pipe = subprocess.PIPE
        proc = self.topo.popen("client", PYTHON, "-c", code, *args, stdin=pipe, stdout=pipe, stderr=pipe)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    @staticmethod
    def finish(proc: Any) -> Any:
        out, err = proc.communicate("go\n", timeout=30)
        assert proc.returncode == 0, err
        return json.loads(out)


@pytest.fixture(scope="module", params=["raw", "nftables"])
def slab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncLab]:
    with Topology(PREFIX) as topo:
        lab = SyncLab(topo, tmp_path_factory.mktemp("dsrlb-sy"), request.param)
        lab.build()
        lab.start("lb1")
        lab.wait("lb1", "vrrp", lambda v: v["state"] == "master" and v["ready"])  # forwarding
        lab.start("lb2")
        lab.wait("lb2", "vrrp", lambda v: v["state"] == "backup" and v["ready"])
        yield lab


def failover(lab: SyncLab, old: str, new: str) -> dict[str, Any]:
    """Stop the master `old` cleanly under load; `new` takes over. Returns the load's outcome. As the
    balancer role's rolling update does, the master is stopped only once the backup is ready (its
    targets checked and their MACs known): a backup still warming up takes over without forwarding."""
    lab.wait(new, "vrrp", lambda v: v["ready"])
    load = lab.background(LOAD_LOOP, VIPS[0], "2", *LOAD)
    time.sleep(1)
    lab.stop(old)
    lab.wait(new, "vrrp", lambda v: v["state"] == "master")
    time.sleep(1)
    return lab.finish(load)


def test_clients_keep_their_targets_across_a_failover(slab: SyncLab) -> None:
    before = slab.all_targets()
    for vip, got in before.items():
        assert set(got.values()) == set(WEBS), (vip, got)  # both targets serve
    held = len(CLIENTS) * len(VIPS)
    synced = slab.wait("lb2", "bngsync", lambda v: slab.synced(v, held) and v["peer"] == "forwarding")
    assert synced["syncpeer_mac"] == slab.topo.mac("lb1") and not synced["drops"], synced
    load = failover(slab, "lb1", "lb2")
    assert not load["failed"] and load["ok"] > 20, load
    assert slab.all_targets() == before
    if slab.access == "raw":
        followed = slab.view("lb2", "stats")
        assert followed["synced_followed"] >= held, followed


def test_a_restarted_backup_gets_the_whole_table_back(slab: SyncLab) -> None:
    before = slab.all_targets()
    slab.start("lb1")
    slab.wait("lb1", "vrrp", lambda v: v["state"] == "backup")
    held = len(CLIENTS) * len(VIPS)
    got = slab.wait("lb1", "bngsync", lambda v: slab.synced(v, held))
    assert got["peer"] == "forwarding" and not got["flows_refused"], got
    if slab.access == "raw":
        assert got["last_full_resync_received"], got
    load = failover(slab, "lb2", "lb1")
    assert not load["failed"], load
    assert slab.all_targets() == before


def test_drain_travels_and_open_connections_survive_the_failover(slab: SyncLab) -> None:
    slab.start("lb2")
    slab.wait("lb2", "vrrp", lambda v: v["state"] == "backup")
    slab.wait("lb2", "bngsync", lambda v: v["peer"] == "forwarding")
    before = slab.targets(VIPS[0])
    long_lived = slab.background(KEEP_ALIVE, VIPS[0], *LONG_LIVED)
    time.sleep(1)
    slab.ctl("target", "drain", "1", sock=slab.paths("lb1")[1])
    slab.wait(
        "lb2", "targets", lambda ts: next(t for t in ts if t["id"] == 1)["admin"] in ("draining", "drained")
    )
    failover(slab, "lb1", "lb2")
    taken_over = time.time()
    time.sleep(1)
    seen = slab.finish(long_lived)
    on_web1 = [src for src, answers in seen.items() if answers and answers[0][1] == "web1"]
    assert on_web1, f"no long-lived connection landed on web1: {seen}"
    for src, answers in seen.items():
        bodies = [body for _, body in answers]
        assert set(bodies) == {bodies[0]}, (src, bodies)  # no error, never moved
        assert sum(at > taken_over for at, _ in answers) >= 2, (src, answers)  # and still served
    assert next(t for t in slab.view("lb2", "targets") if t["id"] == 1)["admin"] in ("draining", "drained")
    after = slab.targets(VIPS[0])
    assert {src: "web2" if t == "web1" else t for src, t in before.items()} == after
