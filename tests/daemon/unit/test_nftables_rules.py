"""The kernel table (access nftables) as text: what each forwarding table state makes the kernel do,
and that every transaction in a sequence of changes is one the kernel accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dsrlb import tables
from dsrlb.config.parser import parse_file
from dsrlb.dataplane.forwarder import ServiceState
from dsrlb.dataplane.nftables import ruleset, transaction

OWN = bytes.fromhex("020000000001")
MACS = {
    IPv4Address("172.16.1.100").packed: bytes.fromhex("02000000000a"),
    IPv4Address("172.16.1.101").packed: bytes.fromhex("02000000000b"),
}
SEED = Path(__file__).resolve().parents[3] / "examples" / "dsr-example.conf"
UP = tables.TargetStatus()


def rules(status, fast=True, forwarding=True, config=None):
    config = config or parse_file(str(SEED))
    built = tables.build(
        config, config.networks[1], status, MACS, OWN, {1: ServiceState()}, forwarding=forwarding
    )
    return ruleset(built.table, "eth0", OWN, tables.addresses(config, config.networks[1]), fast)


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
