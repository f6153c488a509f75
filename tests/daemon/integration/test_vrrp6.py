"""VRRP version 3 over IPv6 (`family ipv6`, RFC 5798), end to end in both access modes: test_ipv6's pair
(lb1 master, lb2 backup) with its VRRP running over IPv6, the peers being each other's link-local address.

  - the adverts on the segment are IPv6 to ff02::12 (33:33:00:00:00:12), hop limit 255, next header 112,
    from the master's link-local address and MAC, listing virt6 and the IPv6 VIP, with a checksum scapy
    computes the same; no IPv4 VRRP frame is sent;
  - only the master answers ARP for the IPv4 VIP and virt and neighbour solicitations for the IPv6 ones
    (the IPv4 addresses follow the IPv6 router's state);
  - a clean stop of the master under IPv6 load loses no request and the backup becomes master;
  - a master killed with SIGKILL resigns by IPv6 (its sentinel sends the priority-0 IPv6 advert left in
    its resignation file), and a reload that changes `family` starts an IPv4 virtual router;
  - interop (raw only): keepalived's IPv6 VRRPv3 instance and dsrlb elect by priority both ways, each
    hearing the other's adverts without complaint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path

import pytest
from dsr_lab import VIP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vrrp import VRRPv3
from test_ipv6 import REAL, VIP6, VIRT6, V6Lab, clean_failover_under_ipv6_load, config, running_pair
from test_nftables import ARP_PROBE

from dsrlb.vrrp import parse
from dsrlb_tools.netns import Topology

pytestmark = [
    pytest.mark.root,
    pytest.mark.incremental,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="integration tests need root: they create network namespaces"
    ),
]

PREFIX = "dsrlb-vr6"
VIRT = "172.16.1.253"

# In the router: every VRRP frame (IPv4 protocol or IPv6 next header 112) on eth0 for argv[1] seconds, as hex.
CAPTURE = """
import json, socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
frames, end = [], time.monotonic() + float(sys.argv[1])
while (left := end - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        f = s.recv(2048)
    except TimeoutError:
        break
    if (f[12:14] == b"\\x08\\x00" and f[23] == 112) or (f[12:14] == b"\\x86\\xdd" and f[20] == 112):
        frames.append(f.hex())
print(json.dumps(frames))
"""


class Vrrp6Lab(V6Lab):
    family = "ipv6"

    def link_local(self, name: str) -> str:
        out = self.topo.run(name, "ip", "-6", "-j", "addr", "show", "dev", "eth0", "scope", "link").stdout
        found = [a["local"] for i in json.loads(out) for a in i.get("addr_info", []) if "local" in a]
        assert len(found) == 1, out
        return found[0]

    def config(self, name: str) -> str:
        peer = "lb2" if name == "lb1" else "lb1"
        return config(name, self.access, "ipv6", self.link_local(peer))


@pytest.fixture(scope="module", params=["raw", "nftables"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vrrp6Lab]:
    yield from running_pair(Vrrp6Lab, PREFIX, request.param, tmp_path_factory)


def test_adverts_are_ipv6_from_the_masters_link_local_address(lab: Vrrp6Lab) -> None:
    frames = [bytes.fromhex(f) for f in json.loads(lab.python("router", CAPTURE, "1.0"))]
    master_ll = lab.link_local("lb1")
    assert len(frames) >= 5, frames  # advert 100: about ten a second
    for frame in frames:
        pkt = Ether(frame)
        assert IPv6 in pkt, pkt.summary()  # no IPv4 VRRP frame
        ip, vrrp = pkt[IPv6], pkt[VRRPv3]
        assert (pkt.src, pkt.dst) == (lab.macs["lb1"], "33:33:00:00:00:12")
        assert (ip.src, ip.dst, ip.hlim, ip.nh) == (master_ll, "ff02::12", 255, 112)
        assert (vrrp.version, vrrp.vrid, vrrp.priority, vrrp.adv) == (3, 62, 200, 10)
        assert sorted(vrrp.addrlist) == sorted([VIP6, VIRT6])
        wire = vrrp.chksum
        del pkt[VRRPv3].chksum  # scapy's own checksum over the IPv6 pseudo-header
        assert Ether(bytes(pkt))[VRRPv3].chksum == wire
        assert parse(frame).source == IPv6Address(master_ll)
    views = {name: lab.view(name, "vrrp") for name in REAL}
    assert {name: (v["family"], v["state"]) for name, v in views.items()} == {
        "lb1": ("ipv6", "master"),
        "lb2": ("ipv6", "backup"),
    }
    assert views["lb2"]["master"] == master_ll and views["lb2"]["drops"] == {}, views
    assert views["lb1"]["addresses"] == views["lb2"]["addresses"] and set(views["lb1"]["addresses"]) == {
        VIP6,
        VIRT6,
    }


def test_only_the_master_answers_arp_and_neighbour_solicitations(lab: Vrrp6Lab) -> None:
    macs = lab.macs
    for address in (VIP, VIRT):
        assert json.loads(lab.python("router", ARP_PROBE, address)) == [macs["lb1"]], address
    assert lab.ndp(VIP6, VIRT6) == {VIP6: [macs["lb1"]], VIRT6: [macs["lb1"]]}


def test_clean_failover_under_ipv6_load_loses_nothing(lab: Vrrp6Lab) -> None:
    outcome = clean_failover_under_ipv6_load(lab)
    print(f"{lab.access}: failover under IPv6 load: {outcome['ok']} ok, {len(outcome['failed'])} failed")
    view = lab.view("lb2", "vrrp")
    assert (view["family"], view["state"]) == ("ipv6", "master")
    assert json.loads(lab.python("router", ARP_PROBE, VIP)) == [lab.macs["lb2"]]  # IPv4 followed


def test_a_killed_master_resigns_over_ipv6_and_a_reload_changes_the_family(lab: Vrrp6Lab) -> None:
    """After the clean stop lb2 is master: lb1 comes back as backup (preempt off), lb2 is killed."""
    lab.start("lb1")
    lab.wait_state("lb1", "backup")
    capture = lab.python_bg("router", CAPTURE, "2.0")
    time.sleep(0.5)  # the capture listens
    lab.daemons["lb2"].kill()  # SIGKILL: no clean stop, the sentinel resigns for it
    lab.daemons["lb2"].wait(5)
    del lab.daemons["lb2"]
    lab.wait("lb1", "vrrp", lambda v: v["state"] == "master", timeout=5)
    out, err = capture.communicate(timeout=10)
    frames = [Ether(bytes.fromhex(f)) for f in json.loads(out)]
    resignations = [f for f in frames if IPv6 in f and f[VRRPv3].priority == 0]
    assert resignations and {f[IPv6].src for f in resignations} == {lab.link_local("lb2")}, frames
    assert all(IPv6 in f for f in frames)
    # family ipv4 by reload: a new router, adverts from lb1's real to 224.0.0.18
    conf, sock, _ = lab.paths("lb1")
    conf.write_text(config("lb1", lab.access))
    res = lab.ctl("reload", sock=sock)
    assert res.returncode == 0, res.stdout + res.stderr
    view = lab.wait("lb1", "vrrp", lambda v: v["family"] == "ipv4" and v["state"] == "master", timeout=5)
    assert view["source"] == REAL["lb1"] and VIP in view["addresses"] and VIP6 not in view["addresses"]
    frames = [Ether(bytes.fromhex(f)) for f in json.loads(lab.python("router", CAPTURE, "0.5"))]
    assert frames and all(f.type == 0x0800 and f.src == lab.macs["lb1"] for f in frames), frames
    assert lab.ndp(VIP6) == {VIP6: [lab.macs["lb1"]]}  # IPv6 now follows the IPv4 router


# --- interop: keepalived's IPv6 VRRPv3 instance as the other member of the virtual router -------------------
KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"


def keepalived_config(priority: int) -> str:
    """An IPv6 instance (its addresses are IPv6) of lb2 on vrid 62 with test_ipv6's IPv6 addresses."""
    return f"""global_defs {{
  router_id lb2
  vrrp_version 3
}}
vrrp_instance v6 {{
  state BACKUP
  interface eth0
  virtual_router_id 62
  priority {priority}
  advert_int 0.1
  virtual_ipaddress {{
    {VIP6}/64
    {VIRT6}/64
  }}
}}
"""


class KeepalivedLab(Vrrp6Lab):
    """lb1 runs dsrlb, lb2 keepalived."""

    def start_keepalived(self, priority: int) -> subprocess.Popen[str]:
        work = self.workdir / "lb2"
        work.mkdir(exist_ok=True)
        (work / "keepalived.conf").write_text(keepalived_config(priority))
        args = ["-n", "-l", "-D", "-P", "-f", str(work / "keepalived.conf")]
        args += ["-p", str(work / "keepalived.pid"), "-r", str(work / "vrrp.pid")]
        log = (work / f"keepalived-{priority}.log").open("w")
        return self.topo.popen("lb2", KEEPALIVED, *args, stdout=log, stderr=subprocess.STDOUT)

    def keepalived_holds(self) -> bool:
        out = self.topo.run("lb2", "ip", "-6", "-j", "addr", "show", "dev", "eth0").stdout
        return VIP6 in {a.get("local") for i in json.loads(out) for a in i.get("addr_info", [])}


@pytest.mark.skipif(not os.path.exists(KEEPALIVED), reason="keepalived is not installed")
def test_keepalived_ipv6_instance_and_dsrlb_elect_by_priority_both_ways(tmp_path: Path) -> None:
    with Topology(PREFIX + "k") as topo:
        lab = KeepalivedLab(topo, tmp_path, "raw")
        lab.build()
        lab.start("lb1")  # priority 200, preempt off (test_ipv6's config)
        lab.wait("lb1", "vrrp", lambda v: v["state"] == "master")
        keepalived = lab.start_keepalived(100)  # below dsrlb's 200
        time.sleep(1.5)  # keepalived hears dsrlb's adverts and stays backup
        assert not lab.keepalived_holds(), lab.log_of("lb1")
        assert lab.ndp(VIP6) == {VIP6: [lab.macs["lb1"]]}
        lab.topo.stop(keepalived)
        said = (tmp_path / "lb2" / "keepalived-100.log").read_text()
        assert "Entering BACKUP STATE" in said and "MASTER" not in said, said  # no complaint either:
        assert not any(word in said.lower() for word in ("invalid", "checksum", "error")), said
        keepalived = lab.start_keepalived(250)  # above dsrlb's: keepalived preempts
        view = lab.wait("lb1", "vrrp", lambda v: v["state"] == "backup", timeout=15)
        assert view["master"] == lab.link_local("lb2"), view
        deadline = time.monotonic() + 5
        while not lab.keepalived_holds() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lab.keepalived_holds()
        time.sleep(1)
        view = lab.view("lb1", "vrrp")
        assert view["state"] == "backup" and view["adverts_received"] > 5 and not view["drops"], view
        assert json.loads(lab.python("router", ARP_PROBE, VIP)) == []  # dsrlb backup: nobody has the IPv4 VIP
        lab.topo.stop(keepalived)  # keepalived leaves (priority 0): dsrlb takes over
        lab.wait("lb1", "vrrp", lambda v: v["state"] == "master", timeout=5)
