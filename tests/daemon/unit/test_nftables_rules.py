"""The kernel table (access nftables) as text: what each forwarding table state makes the kernel do,
and that every transaction in a sequence of changes is one the kernel accepts."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from dsrlb import tables, views
from dsrlb.config.parser import parse_file
from dsrlb.dataplane.forwarder import ServiceState
from dsrlb.dataplane.nftables import KEY6, KernelTable, flow_client, ruleset, transaction

OWN = bytes.fromhex("020000000001")
MACS = {
    IPv4Address("172.16.1.100").packed: bytes.fromhex("02000000000a"),
    IPv4Address("172.16.1.101").packed: bytes.fromhex("02000000000b"),
}
SEED = Path(__file__).resolve().parents[3] / "examples" / "dsr-example.conf"
UP = tables.TargetStatus()
VIP6 = IPv6Address("2001:db8::10")
VIRT6 = IPv6Address("2001:db8::fd")


def rules(status, fast=True, forwarding=True, config=None, ipv6=False):
    """The seed's ruleset; with `ipv6` also the seed's virtual server on VIP6 (same targets) and VIRT6."""
    config = config or parse_file(str(SEED))
    built = tables.build(
        config, config.networks[1], status, MACS, OWN, {1: ServiceState()}, forwarding=forwarding
    )
    table, addresses = built.table, tables.addresses(config, config.networks[1])
    if ipv6:
        v6 = {(VIP6.packed, proto, port): svc for (_, proto, port), svc in table.services.items()}
        table = dataclasses.replace(table, services={**table.services, **v6})
        addresses = [*addresses, VIP6, VIRT6]
    return ruleset(table, "eth0", OWN, addresses, fast)


def test_raw_mode_only_keeps_the_balancer_kernel_off_the_vip():
    r = rules({1: UP, 2: UP}, fast=False)
    assert r.services == () and r.addresses == ("172.16.1.10", "172.16.1.253")
    text = transaction(r, None, "dsrlb_eth0")
    assert "ip daddr @addresses drop" in text and "fwd" not in text


def test_buckets_are_the_selectors_table_as_macs():
    r = rules({1: UP, 2: UP})
    (s,) = r.services
    assert len(s.buckets) >= 200 and set(s.buckets) == {"02:00:00:00:00:0a", "02:00:00:00:00:0b"}
    assert s.live == {"02:00:00:00:00:0a", "02:00:00:00:00:0b"}
    text = transaction(r, None, "dsrlb_eth0")
    assert f"jhash ip saddr mod {len(s.buckets)} seed {s.seed:#x} map @b_{s.name}" in text


def test_a_draining_target_keeps_its_flows_but_no_buckets():
    (s,) = rules({1: UP, 2: tables.TargetStatus(admin="draining")}).services
    assert set(s.buckets) == {"02:00:00:00:00:0a"}
    assert s.live == {"02:00:00:00:00:0a", "02:00:00:00:00:0b"}


def test_a_vrrp_backup_forwards_nothing_but_still_drops():
    r = rules({1: UP, 2: UP}, forwarding=False)
    assert r.services == ()
    assert "vmap @services" not in transaction(r, None, "dsrlb_eth0")


def test_removed_servers_and_targets_are_deleted_after_nothing_refers_to_them():
    old = rules({1: UP, 2: UP})
    new = rules({1: UP, 2: UP}, forwarding=False)
    name = old.services[0].name
    text = transaction(new, old, "dsrlb_eth0")
    assert text.index(f"flush chain netdev dsrlb_eth0 {name}") < text.index(
        f"delete chain netdev dsrlb_eth0 {name}"
    )
    assert text.index(f"delete map netdev dsrlb_eth0 k_{name}") < text.index(
        f"delete counter netdev dsrlb_eth0 c_{name}_1"
    )


def test_ipv6_addresses_are_dropped_and_their_neighbor_solicitations_too():
    r = rules({1: UP, 2: UP}, fast=False, ipv6=True)
    assert r.addresses == ("172.16.1.10", "172.16.1.253")
    assert r.addresses6 == ("2001:db8::10", "2001:db8::fd") and r.services == ()
    text = transaction(r, None, "dsrlb_eth0")
    assert "add element netdev dsrlb_eth0 addresses6 { 2001:db8::10, 2001:db8::fd }" in text
    assert (
        "add element netdev dsrlb_eth0 solicited6 "
        "{ 0x20010db8000000000000000000000010, 0x20010db80000000000000000000000fd }"
    ) in text
    assert "ip6 daddr @addresses6 drop" in text
    assert "icmpv6 type nd-neighbor-solicit @th,64,128 @solicited6 drop" in text
    assert "vmap" not in text and "fwd" not in text


def test_an_ipv6_server_picks_by_the_hash_of_its_16_address_bytes_and_has_its_own_flow_map():
    r = rules({1: UP, 2: UP}, ipv6=True)
    v4, v6 = sorted(r.services, key=lambda s: s.family)
    assert (v6.family, v6.vip, v6.name) == (6, "2001:db8::10", "s_2001_db8__10_tcp_80")
    assert v6.buckets == v4.buckets and v6.seed == v4.seed and v6.live == v4.live
    text = transaction(r, None, "dsrlb_eth0")
    assert f"2001:db8::10 . tcp . 80 : goto {v6.name}" in text
    assert "exthdr frag missing ip6 daddr . meta l4proto . th dport vmap @services6" in text
    assert f"add map netdev dsrlb_eth0 f_{v6.name} {{ typeof {KEY6} : ether daddr; size {r.flows};" in text
    assert f"jhash ip6 saddr mod {len(v6.buckets)} seed {v6.seed:#x} map @b_{v6.name}" in text
    chain = [line for line in text.splitlines() if line.startswith(f"add rule netdev dsrlb_eth0 {v6.name} ")]
    assert all("@flows" not in line for line in chain)
    assert sum(f"@f_{v6.name}" in line for line in chain) == 4  # follow (SYN, not SYN), stale, record
    assert f"update @f_{v6.name} {{ {KEY6} timeout {r.embryonic}s : ether daddr }}" in text
    assert f"jhash ip saddr mod {len(v4.buckets)} seed {v4.seed:#x} map @b_{v4.name}" in text


def test_an_ipv6_servers_flow_map_goes_with_it_and_is_rebuilt_with_a_new_capacity(tmp_path):
    old = rules({1: UP, 2: UP}, ipv6=True)
    name = next(s.name for s in old.services if s.family == 6)
    gone = transaction(rules({1: UP, 2: UP}), old, "dsrlb_eth0")
    assert gone.index(f"flush chain netdev dsrlb_eth0 {name}") < gone.index(
        f"delete map netdev dsrlb_eth0 f_{name}"
    )
    small = tmp_path / "small.conf"
    small.write_text("set {\n  flows 1024\n}\n" + SEED.read_text())
    resized = transaction(rules({1: UP, 2: UP}, config=parse_file(str(small)), ipv6=True), old, "dsrlb_eth0")
    assert resized.index(f"delete map netdev dsrlb_eth0 f_{name}") < resized.index(
        f"add map netdev dsrlb_eth0 f_{name} {{ typeof {KEY6} : ether daddr; size 1024;"
    )


def test_flows_lists_the_ipv4_map_and_each_ipv6_servers_by_the_clients_low_96_bits(monkeypatch):
    kernel = KernelTable("eth0", nft="nft")
    kernel.installed = rules({1: UP, 2: UP}, ipv6=True)
    name = next(s.name for s in kernel.installed.services if s.family == 6)
    mac = "02:00:00:00:00:0a"
    listed = {  # as `nft -j list map` has them (nft 1.0.6): large numbers as strings
        "flows": [
            [{"elem": {"val": {"concat": ["198.18.0.10", 40000, "172.16.1.10", 80]}, "expires": 7}}, mac]
        ],
        f"f_{name}": [
            [{"elem": {"val": {"concat": [65537, 40001]}, "expires": 3}}, mac],
            [{"concat": ["0xab00cd00000000000000ff", 40002]}, mac],
        ],
    }
    monkeypatch.setattr(kernel, "_json", lambda *args: [{"map": {"elem": listed[args[-1]]}}])
    assert kernel.flows() == [
        ("198.18.0.10", 40000, "172.16.1.10", 80, mac, 7),
        ("::1:1", 40001, "2001:db8::10", 80, mac, 3),
        ("0:0:ab:cd::ff", 40002, "2001:db8::10", 80, mac, 0),
    ]


def test_show_sessions_client_finds_an_ipv6_client_by_its_full_address():
    installed = rules({1: UP, 2: UP}, ipv6=True)
    mac = "02:00:00:00:00:0a"
    flows = [
        ("198.18.0.10", 40000, "172.16.1.10", 80, mac, 7),
        (flow_client("2001:db8:2::10"), 40001, str(VIP6), 80, mac, 3),
        (flow_client("2001:db8:2::11"), 40002, str(VIP6), 80, mac, 3),
    ]
    config = parse_file(str(SEED))
    found = views.kernel_flows(flows, config, installed, client="2001:DB8:2::10")
    assert [(r["client"], r["port"]) for r in found["sessions"]] == [("0:0:2::10", 40001)], found
    found = views.kernel_flows(flows, config, installed, client="198.18.0.10")
    assert [(r["client"], r["port"]) for r in found["sessions"]] == [("198.18.0.10", 40000)], found


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")
def test_every_change_is_a_transaction_the_kernel_takes(tmp_path):
    """Apply a sequence of states in a fresh network namespace (its own veth eth0)."""
    seed = SEED.read_text()
    small = tmp_path / "small.conf"
    small.write_text("set {\n  flows 1024\n}\n" + seed)
    states = [
        rules({1: UP, 2: UP}, fast=False),
        rules({1: UP, 2: UP}),
        rules({1: UP, 2: tables.TargetStatus(admin="draining")}),
        rules({1: UP, 2: tables.TargetStatus(up=False)}),
        rules({1: UP, 2: UP}, config=parse_file(str(small))),  # flow map capacity changes
        rules({1: UP, 2: UP}, forwarding=False),
        rules({1: UP, 2: UP}, fast=False),
        rules({1: UP, 2: UP}, fast=False, ipv6=True),
        rules({1: UP, 2: UP}, ipv6=True),  # an IPv6 server added
        rules({1: UP, 2: tables.TargetStatus(admin="draining")}, ipv6=True),
        rules({1: UP, 2: UP}, config=parse_file(str(small)), ipv6=True),  # its flow map too
        rules({1: UP, 2: UP}, config=parse_file(str(small))),  # and removed
        rules({1: UP, 2: UP}, ipv6=True),  # back, and both capacities change at once
        rules({1: UP, 2: UP}, fast=False, ipv6=True),
    ]
    script = ["ip link add eth0 type veth peer name eth1", "ip link set eth0 up"]
    old = None
    for i, new in enumerate(states):
        path = tmp_path / f"{i}.nft"
        path.write_text(transaction(new, old, "dsrlb_eth0"))
        script.append(f"nft -f {path}")
        old = new
    script.append("nft list table netdev dsrlb_eth0")
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-ec", "\n".join(script)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "ip daddr @addresses drop" in proc.stdout and "fwd" not in proc.stdout
    assert "ip6 daddr @addresses6 drop" in proc.stdout and "map f_" not in proc.stdout
