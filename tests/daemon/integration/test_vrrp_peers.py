"""VRRP peers and floods of forged adverts (issue 12), end to end: the seed network in namespaces
(dsr_lab) with a `vrrp` block whose only peer is 172.16.1.251, the daemon alone and therefore master,
and a stranger on the LAN that floods forged adverts while a client keeps using the VIP.

  - 1000 priority-255 adverts from the stranger's own address: dropped as `not_a_peer`, no state change;
  - 1000 lower-priority adverts forged with the peer's address, spread over 2 s, then 1000 at full speed:
    the master stays master and sends no more adverts than one per interval (plus a few), at most one
    gratuitous-ARP burst per interval, and keeps advertising on time;
  - HTTP through the VIP keeps working throughout, and 10,000 SYN/s offered meanwhile are all forwarded.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
from dsr_lab import CLIENT_SOURCES, VIP, Lab
from test_flood import FLOOD as SYN_LOAD

from dsrlb_tools.netns import Topology

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="integration tests need root: they create network namespaces"
    ),
]

PREFIX = "dsrlb-vp"  # not the lab fixture's: both may exist in one session
ADVERT_MS = 100
SYN_RATE = 10000  # offered to the VIP by the router while the adverts fly
PEER, STRANGER = "172.16.1.251", "172.16.1.99"
VRRP = f"""
vrrp {{
    vrid 51
    priority 200
    network 1
    advert {ADVERT_MS}
    peers {PEER}
}}
"""

# In the stranger: sniffs what the balancer sends (adverts, ARP) while it floods three phases of forged
# adverts; prints the phases' times and the captured frames' (time, kind).
FLOOD = """
import json, sys, time
from ipaddress import IPv4Address
from scapy.all import ARP, IP, AsyncSniffer, conf, get_if_hwaddr
from dsrlb.vrrp import build

balancer, stranger, peer, advert_ms = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mac = bytes.fromhex(get_if_hwaddr("eth0").replace(":", ""))
addrs = [IPv4Address("172.16.1.10"), IPv4Address("172.16.1.253")]
sniffer = AsyncSniffer(iface="eth0", filter=f"ether src {balancer} and (arp or ip proto 112)", store=True,
                       started_callback=lambda: print("ready", flush=True))
sniffer.start()
sys.stdin.readline()  # go
sock = conf.L2socket(iface="eth0")
phases = {}

def flood(name, frame, spread):
    start = time.time()
    for i in range(1000):
        if spread:
            time.sleep(max(0.0, start + i * spread - time.time()))
        sock.send(frame)
    phases[name] = (start, time.time())

flood("stranger_255", build(3, 51, 255, advert_ms, IPv4Address(stranger), addrs, mac), 0)
flood("forged_low_spread", build(3, 51, 100, advert_ms, IPv4Address(peer), addrs, mac), 0.002)
flood("forged_low_burst", build(3, 51, 100, advert_ms, IPv4Address(peer), addrs, mac), 0)
time.sleep(0.5)
sock.close()
frames = sniffer.stop()
print(json.dumps({
    "phases": phases,
    "frames": [[float(f.time), "arp" if ARP in f else "advert"] for f in frames],
}))
"""


class VrrpLab(Lab):
    """The seed network plus a stranger on the LAN; the daemon runs the seed config with VRRP."""

    def build(self) -> None:
        super().build()
        self.topo.add_host("stranger")
        self.topo.connect("stranger", addrs=[f"{STRANGER}/24"])

    def config_text(self) -> str:
        return super().config_text() + VRRP

    def vrrp(self) -> dict:
        view = self.show("vrrp")
        assert isinstance(view, dict)
        return view

    def wait_master(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while (view := self.vrrp())["state"] != "master":
            assert time.monotonic() < deadline, f"not master within {timeout} s: {view}\n{self.daemon_log()}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def vlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VrrpLab]:
    with Topology(PREFIX) as topo:
        lab = VrrpLab(topo, tmp_path_factory.mktemp("dsrlb-vp"))
        lab.build()
        lab.start_daemon()
        lab.wait_master()
        yield lab


def test_master_ignores_strangers_and_survives_forged_floods(vlab: VrrpLab) -> None:
    before = vlab.vrrp()
    assert before["peers"] == [PEER]
    flood = vlab.python_bg("stranger", FLOOD, vlab.macs["balancer"], STRANGER, PEER, str(ADVERT_MS))
    try:
        assert flood.stdout is not None and flood.stdin is not None
        assert flood.stdout.readline().strip() == "ready"
        before_stats = vlab.show("stats")
        load = vlab.python_bg(
            "router", SYN_LOAD, "eth0", vlab.macs["balancer"], vlab.macs["router"], VIP, str(SYN_RATE), "3"
        )
        flood.stdin.write("go\n")
        flood.stdin.flush()
        answers: dict[str, str] = {}
        while flood.poll() is None:  # HTTP through the VIP while the flood runs
            answers |= {f"{len(answers)}:{k}": v for k, v in vlab.http(CLIENT_SOURCES[:8], timeout=2).items()}
        out, err = flood.communicate(timeout=30)
        load_out, load_err = load.communicate(timeout=30)
        forwarded = vlab.show("stats")["forwarded"] - before_stats["forwarded"]
    finally:
        vlab.topo.stop(flood)
    assert flood.returncode == 0, err[-2000:]
    assert load.returncode == 0, load_err[-2000:]
    offered = int(load_out)
    print(f"vrrp flood: forwarded {forwarded} frames while {offered} SYNs were offered (and HTTP)")
    assert forwarded >= 0.99 * offered, (forwarded, offered)  # the forwarding rate did not suffer
    result = json.loads(out.strip().splitlines()[-1])
    after = vlab.vrrp()
    interval = ADVERT_MS / 1000

    # the stranger's priority-255 adverts changed nothing; all were counted
    assert after["state"] == "master" and after["transitions"] == before["transitions"], after
    drops = {k: after["drops"].get(k, 0) - before["drops"].get(k, 0) for k in after["drops"]}
    assert drops.get("not_a_peer", 0) == 1000, drops

    # the forged lower-priority adverts: no more adverts and ARP bursts than one per interval (+ a few)
    frames = result["frames"]
    report = {}
    for name, (start, end) in result["phases"].items():
        window = [(t, kind) for t, kind in frames if start <= t <= end + interval]
        adverts = [t for t, kind in window if kind == "advert"]
        gaps = [b - a for a, b in zip(adverts, adverts[1:], strict=False)]
        report[name] = {
            "seconds": round(end - start + interval, 3),
            "adverts": len(adverts),
            "arps": sum(kind == "arp" for _, kind in window),
            "longest_gap": round(max(gaps, default=0.0), 3),
        }
    print("vrrp flood:", json.dumps(report), "drops:", drops, "reasserts:", after.get("reasserts"))
    for name, seen in report.items():
        assert seen["adverts"] <= seen["seconds"] / interval + 3, (name, report)
        assert seen["longest_gap"] < 3 * interval, (name, report)  # a backup would not have taken over
    spread = report["forged_low_spread"]
    # a re-assert's burst: 5 gratuitous ARPs (GARP_BURST) for each of the VIP and virt; one per interval
    assert spread["arps"] <= 10 * (spread["seconds"] / interval + 2), report
    assert after["reasserts"] - before["reasserts"] <= (
        sum(end - start for start, end in result["phases"].values()) / interval + 3
    ), after

    # the VIP kept answering during the flood
    failed = {k: v for k, v in answers.items() if v.startswith("ERR")}
    assert answers and not failed, failed
    assert not {k: v for k, v in vlab.http(CLIENT_SOURCES[:8]).items() if v.startswith("ERR")}
