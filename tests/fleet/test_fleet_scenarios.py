"""Scenarios on a converged lab fleet (site.yml): what an operator changes and breaks, and what must
survive it. Converge, idempotence and verify themselves run in the molecule scenario `default`."""

from __future__ import annotations

import collections
import json
import subprocess
import time

import pytest
from labrun import BIN, LabRun

pytestmark = pytest.mark.root

VIP = "172.16.1.10"
DSRLB = "/opt/dsrlb/venv/bin/dsrlb"
CONFIG = "/etc/dsrlb/dsrlb.conf"


def served_by(fleet: LabRun, sources: range = range(10, 21), rounds: int = 2) -> collections.Counter:
    """Which target answered HTTP requests to the VIP from the client's source addresses."""
    script = (
        f"for n in $(seq {rounds}); do for i in {' '.join(map(str, sources))}; do "
        f"curl -s -m 2 --interface 198.18.0.$i http://{VIP}/ || echo FAILED; done; done"
    )
    return collections.Counter(fleet.exec("client", "sh", "-c", script).stdout.split())


def vrrp_state(fleet: LabRun, lb: str) -> str:
    return json.loads(fleet.exec(lb, DSRLB, "show", "vrrp", "--json").stdout)["state"]


def test_vrrp_pair_has_exactly_one_master(fleet: LabRun) -> None:
    assert vrrp_state(fleet, "lb1") == "master"  # priority 200
    assert vrrp_state(fleet, "lb2") == "backup"  # priority 100


def test_check_diff_shows_a_weight_change_and_changes_nothing(fleet: LabRun) -> None:
    before = fleet.exec("lb1", "cat", CONFIG).stdout
    change = ["playbooks/balancers.yml", "--check", "--diff", "-e", "dsrlb_target_weight=3"]
    proc = fleet.ansible_cli("ansible-playbook", change, {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    added = [line for line in proc.stdout.splitlines() if line.startswith("+") and "weight" in line]
    removed = [line for line in proc.stdout.splitlines() if line.startswith("-") and "weight" in line]
    assert added and all(line.split() == ["+", "weight", "3"] for line in added), proc.stdout
    assert removed and all(line.split() == ["-", "weight", "1"] for line in removed), proc.stdout
    assert fleet.exec("lb1", "cat", CONFIG).stdout == before
    targets = json.loads(fleet.exec("lb1", DSRLB, "show", "targets", "--json").stdout)
    assert {t["weight"] for t in targets} == {1}


def test_equal_vrrp_priorities_are_refused(fleet: LabRun) -> None:
    equal = ["playbooks/balancers.yml", "-e", "dsrlb_vrrp_priority=100"]
    proc = fleet.ansible_cli("ansible-playbook", equal, {})
    assert proc.returncode != 0
    assert "balancers with the same priority 100: lb2" in proc.stdout, proc.stdout
    assert "balancers with the same priority 100: lb1" in proc.stdout, proc.stdout
    assert vrrp_state(fleet, "lb1") == "master"  # refused before anything changed


def test_verify_catches_a_target_that_answers_arp_for_the_vip(fleet: LabRun) -> None:
    mac = fleet.exec("web2", "cat", "/sys/class/net/eth0/address").stdout.strip()
    fleet.exec("web2", "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0", "net.ipv4.conf.all.arp_announce=0")
    try:
        proc = fleet.ansible_cli("ansible-playbook", ["playbooks/verify.yml"], {})
        assert proc.returncode != 0
        assert "Only the master balancer answers ARP" in proc.stdout and mac in proc.stdout, proc.stdout
    finally:
        fleet.playbook("playbooks/targets.yml")
        # web2 stole the VIP: the router still sends the clients to it until its ARP entry goes.
        fleet.exec("router", "ip", "neigh", "flush", "to", VIP)
    fleet.playbook("playbooks/verify.yml")


def test_reboot_restores_vip_and_arp_sysctls_without_ansible(fleet: LabRun) -> None:
    fleet.lab("reboot", "web1")
    lo = json.loads(fleet.exec("web1", "ip", "-j", "-4", "addr", "show", "dev", "lo").stdout)[0]["addr_info"]
    assert {(a["local"], a["prefixlen"], a.get("label")) for a in lo} >= {(VIP, 32, "lo:0")}
    sysctl = fleet.exec(
        "web1", "sysctl", "-n", "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce"
    ).stdout.split()
    assert sysctl == ["1", "2"]
    deadline = time.monotonic() + 30
    while "web1" not in (served := served_by(fleet)):
        assert time.monotonic() < deadline, f"web1 does not serve the VIP after its reboot: {served}"
        time.sleep(1)


def test_rollout_drains_targets_without_failed_requests(fleet: LabRun) -> None:
    loop = (
        "i=0; while [ ! -e /run/dsrlb-stop ]; do i=$((i % 11 + 10)); "
        f"curl -s -o /dev/null -w '%{{http_code}}\\n' -m 2 --interface 198.18.0.$i http://{VIP}/; "
        "sleep 0.05; done"
    )
    fleet.exec("client", "rm", "-f", "/run/dsrlb-stop")
    client = subprocess.Popen(
        [str(BIN / "dsrlb"), "lab", "exec", "--state-dir", str(fleet.state_dir), "client", "--"]
        + ["sh", "-c", loop],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        proc = fleet.ansible_cli("ansible-playbook", ["playbooks/rollout.yml"], {})
    finally:
        fleet.exec("client", "touch", "/run/dsrlb-stop")
        codes = collections.Counter(client.communicate(timeout=30)[0].split())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "web1 -> lb1" in proc.stdout and "web2 -> lb1" in proc.stdout  # both were drained on the master
    assert sum(codes.values()) > 50 and set(codes) == {"200"}, codes
    # Both are back in service (clients whose sessions moved during a drain stay where they are).
    targets = json.loads(fleet.exec("lb1", DSRLB, "show", "targets", "--json").stdout)
    assert {(t["admin"], t["health"]) for t in targets} == {("enabled", "up")}
