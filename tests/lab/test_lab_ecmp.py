"""The packaged `ecmp` topology booted for real: the router's BIRD, its multipath hashing, TUN devices
in the balancers, and a router that spreads a VIP announced by three BGP speakers over three nexthops.

The balancers' BGP speakers here are BIRD with a minimal config of the test's own and a veth device
for the VIP (the daemon's TUN device is the daemon's business); what is tested is the lab: the router
side, written from the topology at boot, and the devices a balancer needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labrun import LabRun, lab_processes, netns, private_lab

from dsrlb_tools import bird
from dsrlb_tools.lab import topology
from dsrlb_tools.lab.lab import Lab

pytestmark = pytest.mark.root

VIP = "172.16.1.10"
SPEAKERS = ("lb1", "lb2", "lb3")


@pytest.fixture(scope="module")
def ecmp() -> Iterator[LabRun]:
    with private_lab("ecmp", topology="ecmp") as run:
        yield run


def _nexthops(run: LabRun) -> set[str]:
    out = run.exec("router", "ip", "route", "show", VIP).stdout
    return set(re.findall(r"via (\S+)", out))


def _wait_nexthops(run: LabRun, want: set[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (got := _nexthops(run)) != want:
        if time.monotonic() > deadline:
            bgp = run.exec("router", "birdc", "show", "protocols", check=False).stdout
            raise AssertionError(f"router's nexthops for {VIP}: {sorted(got)}, want {sorted(want)}\n{bgp}")
        time.sleep(0.2)


def test_the_packaged_ecmp_topology_is_found_by_name() -> None:
    topo = topology.load("ecmp")
    router = topo.hosts["router"]
    assert router.bgp is not None and router.bgp.asn == 65000
    assert [n.host for n in router.bgp.neighbors] == ["lb1", "lb2", "lb3", "lb4"]
    assert {n.asn for n in router.bgp.neighbors} == {65001}
    assert dict(router.sysctl) == {"net.ipv4.fib_multipath_hash_policy": "1"}


def test_router_runs_bird_with_multipath_hashing(ecmp: LabRun) -> None:
    assert ecmp.exec("router", "systemctl", "is-active", "bird").stdout.strip() == "active"
    proto = ecmp.exec("router", "birdc", "show", "protocols").stdout
    for name in ("lb1", "lb2", "lb3", "lb4"):
        assert re.search(rf"^bgp_{name}\s+BGP\s", proto, re.M), proto
    hash_policy = ecmp.exec("router", "sysctl", "-n", "net.ipv4.fib_multipath_hash_policy").stdout
    assert hash_policy.strip() == "1"
    assert ecmp.exec("router", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    # Only the router runs BIRD at boot; the balancer role enables it on balancers.
    assert ecmp.exec("lb1", "systemctl", "is-enabled", "bird", check=False).stdout.strip() != "enabled"


def test_a_balancer_can_create_a_tun_device(ecmp: LabRun) -> None:
    ecmp.exec("lb4", "ip", "tuntap", "add", "dev", "tuntest", "mode", "tun")
    try:
        shown = ecmp.exec("lb4", "ip", "-details", "link", "show", "tuntest").stdout
        assert "tun type tun" in shown
    finally:
        ecmp.exec("lb4", "ip", "link", "del", "tuntest", check=False)


@contextlib.contextmanager
def speakers(run: LabRun, bfd: bool) -> Iterator[dict[str, str]]:
    """lb1-lb3 announce the VIP with BIRD (the balancer config of dsrlb_tools.bird) from a veth pair
    standing in for the daemon's TUN device (an interface that is up with the VIP on it); yields their
    addresses once the router routes the VIP over all three."""
    hosts = run.status()
    addresses = {name: hosts[name]["addresses"]["eth0"][0].split("/")[0] for name in SPEAKERS}
    uplink = [bird.Peer("uplink", "172.16.1.254", 65000)]
    try:
        for name, address in addresses.items():
            config = bird.balancer(address, 65001, uplink, timers=bird.Timers(bfd=bfd))
            Path(f"/proc/{hosts[name]['pid']}/root/etc/bird/bird.conf").write_text(config)
            run.exec(name, "ip", "link", "add", "dsrlb0", "type", "veth", "peer", "name", "dsrlb0p")
            run.exec(name, "ip", "link", "set", "dsrlb0p", "up")
            run.exec(name, "ip", "link", "set", "dsrlb0", "up")
            run.exec(name, "ip", "addr", "add", f"{VIP}/32", "dev", "dsrlb0")
            run.exec(name, "systemctl", "restart", "bird")
        _wait_nexthops(run, set(addresses.values()))
        yield addresses
    finally:
        for name in SPEAKERS:
            run.exec(name, "systemctl", "stop", "bird", check=False)
            run.exec(name, "ip", "link", "del", "dsrlb0", check=False)


def test_router_spreads_a_vip_over_every_speaker_and_drops_one_that_withdraws(ecmp: LabRun) -> None:
    with speakers(ecmp, bfd=False) as addresses:
        ecmp.exec("lb2", "ip", "link", "del", "dsrlb0")  # what a dying daemon's TUN device does
        start = time.monotonic()
        _wait_nexthops(ecmp, {addresses["lb1"], addresses["lb3"]}, timeout=5)
        print(f"withdrawn route gone from the router in {time.monotonic() - start:.2f}s")


def test_preflight_names_bad_bgp_keys_and_mixed_modes_and_changes_no_host(
    ecmp: LabRun, tmp_path: Path
) -> None:
    """inventory/ecmp with a bad ASN and peer address for all balancers and lb3 in mode vrrp: site.yml
    stops in its preflight, every message names the inventory key, and no task changed a host."""
    mixed = tmp_path / "mixed.yml"
    mixed.write_text(
        json.dumps(
            {
                "all": {
                    "children": {"dsr_balancers": {"hosts": {"lb3": {"dsrlb_ha": "vrrp", "dsrlb_bgp": None}}}}
                }
            }
        )
    )
    bad = {"dsrlb_bgp": {"local_asn": 0, "peers": [{"address": "172.16.1.300", "asn": 65000}]}}
    proc = ecmp.ansible_cli(
        "ansible-playbook",
        ["-i", "inventory/ecmp", "-i", str(mixed), "site.yml", "-e", json.dumps(bad)],
        {},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "dsrlb_bgp.local_asn: 0 is out of range 1..4294967295" in out, out
    assert "dsrlb_bgp.peers[0].address: '172.16.1.300' is not an IPv4 address" in out, out
    assert (
        "lb3: dsrlb_ha: vrrp here, but other balancers of the group run another HA mode (bgp: lb1, lb2)"
        in out
    )
    assert "PLAY [DSR targets" not in out and not re.search(r"changed=[1-9]", out), out


def test_preflight_names_a_router_peer_that_is_never_reached(ecmp: LabRun) -> None:
    """A second router peer at an address where nothing listens: site.yml stops in its preflight, naming
    the inventory key, and changes no host."""
    peers = [{"address": "172.16.1.254", "asn": 65000}, {"address": "172.16.1.249", "asn": 65000}]
    bgp = {"dsrlb_bgp": {"local_asn": 65001, "peers": peers, "hold": 3, "keepalive": 1, "bfd": True}}
    args = ["-i", "inventory/ecmp", "site.yml", "-e", json.dumps(bgp)]
    proc = ecmp.ansible_cli("ansible-playbook", args, {})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "dsrlb_bgp.peers[1].address: 172.16.1.249 does not answer on TCP port 179 (BGP)" in out, out
    assert "dsrlb_bgp.peers[0]" not in out, "the router itself answers"
    assert "PLAY [DSR targets" not in out and not re.search(r"changed=[1-9]", out), out


def test_the_router_drops_a_dead_balancer_host_by_bfd(ecmp: LabRun) -> None:
    """A balancer host that dies at once (its PID 1 killed: no BGP notification, no withdrawal) leaves
    the route when the router's BFD session (100 ms x 3) goes down, well before the 3 s hold timer.
    The host stays dead: this test comes last but for `down`."""
    with speakers(ecmp, bfd=True) as addresses:
        deadline = time.monotonic() + 15
        while "Up" not in dict(_bfd_sessions(ecmp)).get(addresses["lb3"], ""):
            assert time.monotonic() < deadline, _bfd_sessions(ecmp)
            time.sleep(0.2)
        pid = ecmp.status()["lb3"]["pid"]
        os.kill(pid, signal.SIGKILL)  # the lab's own host (lab.py checks it is its namespace init)
        start = time.monotonic()
        _wait_nexthops(ecmp, {addresses["lb1"], addresses["lb2"]}, timeout=5)
        gap = time.monotonic() - start
        print(f"dead balancer host: route gone from the router in {gap * 1000:.0f} ms (BFD)")
        assert gap < 1.0, f"{gap:.2f} s: not BFD (100 ms x 3) but the hold timer"


def _bfd_sessions(run: LabRun) -> list[tuple[str, str]]:
    """(peer address, state) of the router's BFD sessions."""
    out = run.exec("router", "birdc", "show", "bfd", "sessions", check=False).stdout
    return [(f[0], f[2]) for line in out.splitlines() if len(f := line.split()) >= 3 and f[0].count(".") == 3]


def test_down_removes_everything(ecmp: LabRun) -> None:
    """Last in this module: the fixture's own `down --purge` then finds nothing left to do."""
    lab = Lab(ecmp.state_dir)
    assert lab_processes(lab) and netns(lab.prefix)
    ecmp.lab("down")
    deadline = time.monotonic() + 5
    while lab_processes(lab) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not lab_processes(lab)
    assert not netns(lab.prefix)
    assert not lab.cgroup_dir().exists()
    assert str(ecmp.state_dir) not in Path("/proc/self/mountinfo").read_text()
