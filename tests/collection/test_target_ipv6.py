"""IPv6 VIPs on a DSR target, against the real kernel in throwaway network namespaces.

A target namespace (the `netns` fixture: VIPs on lo, LAN address on dum0) and a LAN peer namespace (the
router or a client, on the veth's other end dum1). The peer sends real Neighbor Solicitations with scapy
and listens for the answers: Linux must not answer one for a VIP on lo, so IPv6 needs no counterpart of
arp_ignore. And the IPv6 VIP must survive what the IPv4 alias survives: lo going down and up, and a
reboot, through the role's boot unit replayed in a fresh namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
import yaml

from .conftest import ROOT, run_module
from .test_target_modules import lo_addresses, lo_info, lo_labels

pytestmark = pytest.mark.root

ROLE = ROOT / "roles" / "target"
VIP, VIP_ON_LINK, VIP4 = "2001:db8:10::10", "2001:db8:1::10", "172.16.1.10"
TARGET_LAN, PEER_LAN = "2001:db8:1::100", "2001:db8:1::1"

# Run in the peer namespace: for each target address, an NS from the peer's LAN address (multicast to
# the solicited-node address, or unicast to argv[1]'s MAC when given) and every NA for it within 1 s.
NS_PROBE = """
import json, socket, sys, time
from scapy.all import AsyncSniffer, Ether, IPv6, conf, get_if_hwaddr, sendp
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr
from scapy.utils6 import in6_getnsma, in6_getnsmac
conf.verb = 0
iface, src, unicast, targets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
mac = get_if_hwaddr(iface)
answers = {}
for target in targets:
    nsma = in6_getnsma(socket.inet_pton(socket.AF_INET6, target))
    if unicast == "-":
        dst, dmac = socket.inet_ntop(socket.AF_INET6, nsma), in6_getnsmac(nsma)
    else:
        dst, dmac = target, unicast
    is_answer = lambda p, t=target: ICMPv6ND_NA in p and p[ICMPv6ND_NA].tgt == t
    sniffer = AsyncSniffer(iface=iface, lfilter=is_answer)
    sniffer.start()
    time.sleep(0.3)
    ns = ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    sendp(Ether(src=mac, dst=dmac) / IPv6(src=src, dst=dst, hlim=255) / ns, iface=iface)
    time.sleep(1.0)
    answers[target] = [p[Ether].src for p in sniffer.stop()]
print(json.dumps(answers))
"""


def nsx(netns: str, *cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, check=True
    ).stdout


def keep_addr_on_down(netns: str) -> int:
    return int(nsx(netns, "cat", "/proc/sys/net/ipv6/conf/lo/keep_addr_on_down"))


def bounce_lo(netns: str) -> None:
    """What `ifdown lo; ifup lo` or a restart of the network service does to lo."""
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "down"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)


def mac_of(netns: str, ifname: str) -> str:
    return json.loads(
        subprocess.run(
            ["ip", "-j", "-n", netns, "link", "show", ifname], capture_output=True, text=True, check=True
        ).stdout
    )[0]["address"]


@pytest.fixture
def lan(netns: str) -> Iterator[str]:
    """The LAN peer: dum1 moved into its own namespace with PEER_LAN; the target's dum0 gets TARGET_LAN."""
    pytest.importorskip("scapy")
    peer = f"{netns}-lan"
    subprocess.run(["ip", "netns", "add", peer], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "dum1", "netns", peer], check=True)
        subprocess.run(
            ["ip", "-n", netns, "addr", "add", f"{TARGET_LAN}/64", "dev", "dum0", "nodad"], check=True
        )
        subprocess.run(
            ["ip", "-n", peer, "addr", "add", f"{PEER_LAN}/64", "dev", "dum1", "nodad"], check=True
        )
        subprocess.run(["ip", "-n", peer, "link", "set", "dum1", "up"], check=True)
        yield peer
    finally:
        subprocess.run(["ip", "netns", "del", peer], check=False)


def na_from_target(peer: str, targets: list[str], unicast: str = "-") -> dict[str, list[str]]:
    """Send a real NS from the peer for each address; the MACs that answered, per address."""
    return json.loads(nsx(peer, sys.executable, "-c", NS_PROBE, "dum1", PEER_LAN, unicast, *targets))


def test_ipv6_vip_gets_no_neighbor_advertisement_and_is_idempotent(netns, lan):
    args = {"addresses": [VIP4, VIP, VIP_ON_LINK]}
    check = run_module("loopback_alias", args, netns, check=True, diff=True)
    assert check.changed and check.result["keep_addr_on_down"] == 1, check.output
    assert "+2001:db8:10::10/128" in check.diff and "+net.ipv6.conf.lo.keep_addr_on_down = 1" in check.diff
    assert f"{VIP}/128" not in lo_addresses(netns) and keep_addr_on_down(netns) == 0

    first = run_module("loopback_alias", args, netns)
    assert first.changed and first.result["added"] == [f"{VIP4}/32", f"{VIP_ON_LINK}/128", f"{VIP}/128"]
    assert {f"{VIP4}/32", f"{VIP}/128", f"{VIP_ON_LINK}/128"} <= lo_addresses(netns)
    assert lo_labels(netns)[VIP4] == "lo:0" and keep_addr_on_down(netns) == 1
    flags = {info["local"]: info for info in lo_info(netns)}
    assert not any(flags[vip].get(flag) for vip in (VIP, VIP_ON_LINK) for flag in ("tentative", "dadfailed"))

    second = run_module("loopback_alias", args, netns)
    assert not second.changed and second.result["added"] == [], second.output

    target_mac = mac_of(netns, "dum0")
    for forwarding in (0, 1):  # a target that also routes does not answer either
        nsx(netns, "sysctl", "-qw", f"net.ipv6.conf.all.forwarding={forwarding}")
        answers = na_from_target(lan, [TARGET_LAN, VIP, VIP_ON_LINK])
        assert answers[TARGET_LAN] == [target_mac], f"the probe works: the LAN address is answered {answers}"
        assert answers[VIP] == [] and answers[VIP_ON_LINK] == [], f"forwarding={forwarding}: {answers}"
        unicast = na_from_target(lan, [VIP, VIP_ON_LINK], unicast=target_mac)
        assert unicast == {VIP: [], VIP_ON_LINK: []}, f"forwarding={forwarding}, unicast NS: {unicast}"


def test_ipv6_vip_survives_lo_going_down_like_the_ipv4_alias(netns):
    args = {"addresses": [VIP4, VIP]}
    plain = run_module("loopback_alias", dict(args, keep_on_down=False), netns)
    assert plain.changed and plain.result["keep_addr_on_down"] == 0, plain.output
    bounce_lo(netns)
    assert f"{VIP4}/32" in lo_addresses(netns) and f"{VIP}/128" not in lo_addresses(netns), "why keep_on_down"

    kept = run_module("loopback_alias", args, netns)
    assert kept.changed and kept.result["added"] == [f"{VIP}/128"] and kept.result["keep_addr_on_down"] == 1
    bounce_lo(netns)
    assert {f"{VIP4}/32", f"{VIP}/128"} <= lo_addresses(netns)
    assert lo_labels(netns)[VIP4] == "lo:0"
    assert not run_module("loopback_alias", args, netns).changed


def render_role_files(etc_sysctl: Path, netns: str) -> list[list[str]]:
    """What the role installs, written under `etc_sysctl` instead of /etc/sysctl.d: the ARP file (by
    arp_sysctl, as the role runs it), the IPv6 file (the role's copy task) and the unit's ExecStart
    commands (its template), for the VIPs VIP4 and VIP."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    variables = dict(
        defaults,
        ansible_managed="Ansible managed",
        __dsrlb_target_vips=[VIP4, VIP],
        __dsrlb_target_ipv6=True,
    )
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["bool"] = bool
    arp = run_module(
        "arp_sysctl",
        {"sysctl_dir": str(etc_sysctl), "sysctl_file": defaults["dsrlb_target_sysctl_file"]},
        netns,
    )
    assert not arp.failed, arp.output
    tasks = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    (copy,) = [
        t["ansible.builtin.copy"]
        for t in tasks
        if "keep_addr_on_down" in t["name"] and "ansible.builtin.copy" in t
    ]
    (etc_sysctl / defaults["dsrlb_target_ipv6_sysctl_file"]).write_text(
        env.from_string(copy["content"]).render(variables)
    )
    unit = env.from_string((ROLE / "templates" / "dsrlb-vip.service.j2").read_text()).render(variables)
    return [
        line.removeprefix("ExecStart=").replace("/etc/sysctl.d/", f"{etc_sysctl}/").split()
        for line in unit.splitlines()
        if line.startswith("ExecStart=")
    ]


def test_boot_unit_restores_the_ipv6_vip_and_keeps_it(netns, tmp_path: Path):
    """A reboot is a fresh namespace (lo down, default sysctls) in which the unit's commands run."""
    commands = render_role_files(tmp_path, netns)
    assert ["/usr/sbin/ip", "address", "replace", f"{VIP}/128", "dev", "lo"] in commands, commands
    booted = f"{netns}-boot"
    subprocess.run(["ip", "netns", "add", booted], check=True)
    try:
        for command in commands:
            nsx(booted, *command)
        subprocess.run(["ip", "-n", booted, "link", "set", "lo", "up"], check=True)  # the network comes up
        assert {f"{VIP4}/32", f"{VIP}/128"} <= lo_addresses(booted)
        assert keep_addr_on_down(booted) == 1
        assert nsx(booted, "cat", "/proc/sys/net/ipv4/conf/all/arp_ignore").strip() == "1"
        bounce_lo(booted)
        assert {f"{VIP4}/32", f"{VIP}/128"} <= lo_addresses(booted)
        for command in commands:  # the unit runs again (systemctl restart): nothing fails, nothing doubles
            nsx(booted, *command)
        assert sorted(a for a in lo_addresses(booted) if a.startswith(("172.16.", "2001:db8:"))) == [
            f"{VIP4}/32",
            f"{VIP}/128",
        ]
    finally:
        subprocess.run(["ip", "netns", "del", booted], check=False)
