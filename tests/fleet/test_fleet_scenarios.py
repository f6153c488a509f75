"""Scenarios on a converged lab fleet (site.yml): what an operator changes and breaks, and what must
survive it. Converge, idempotence and verify themselves run in the molecule scenario `default`."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
from labrun import LabRun

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


def targets(fleet: LabRun, lb: str) -> list[dict]:
    return json.loads(fleet.exec(lb, DSRLB, "show", "targets", "--json").stdout)


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
    assert not removed, "weight 1 is the default, which the canonical config leaves out"
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


def test_a_failed_rollout_batch_stops_with_its_target_left_drained(fleet: LabRun) -> None:
    """The first batch (web1) fails its update: the rollout stops there, web1 stays drained on both
    balancers (nothing new reaches it), web2 is never touched and serves every client. Then web1 is
    put back by hand."""
    update = Path(__file__).with_name("update-fails-on-web1.yml")
    proc = fleet.ansible_cli(
        "ansible-playbook", ["playbooks/rollout.yml", "-e", f"dsrlb_rollout_update={update}"], {}
    )
    assert proc.returncode != 0, proc.stdout
    assert "the update of web1 failed" in proc.stdout
    recap = proc.stdout.split("PLAY RECAP")[-1]
    assert "web1" in recap and "web2" not in recap, recap  # the second batch never started
    for lb in ("lb1", "lb2"):
        admin = {t["ipaddr"]: t["admin"] for t in targets(fleet, lb)}
        # web1's IPv4 and IPv6 targets (the lab's servers 1 and 2) are both drained, web2's both not.
        assert admin["172.16.1.100"] in ("draining", "drained"), (lb, admin)
        assert admin["2001:db8:1::100"] in ("draining", "drained"), (lb, admin)
        assert admin["172.16.1.101"] == admin["2001:db8:1::101"] == "enabled", (lb, admin)
    assert set(served_by(fleet)) == {"web2"}  # every client, also web1's earlier ones, goes to web2
    for lb in ("lb1", "lb2"):
        for target in targets(fleet, lb):
            if target["admin"] != "enabled":
                fleet.exec(lb, DSRLB, "target", "enable", str(target["id"]))
    assert {(t["admin"], t["health"]) for t in targets(fleet, "lb1")} == {("enabled", "up")}


def test_preflight_names_a_bad_port_and_changes_no_host(fleet: LabRun) -> None:
    """A second virtual server with port 70000: site.yml stops in its preflight with the inventory key in
    the message, before any play changes a host (web1 never gets the new VIP, lb1 keeps its config)."""
    lab_server = {"id": 1, "vip": VIP, "port": 80, "protocol": "tcp", "method": "maglev"}
    bad = {"dsrlb_servers": [lab_server, {"id": 2, "vip": "172.16.1.11", "port": 70000, "protocol": "tcp"}]}
    config = fleet.exec("lb1", "cat", CONFIG).stdout
    proc = fleet.ansible_cli("ansible-playbook", ["site.yml", "-e", json.dumps(bad)], {})
    assert proc.returncode != 0, proc.stdout
    assert "dsrlb_servers[1].port: 70000 is out of range 1..65535" in proc.stdout, proc.stdout
    assert "PLAY [DSR targets" not in proc.stdout and "PLAY [DSR balancers" not in proc.stdout, proc.stdout
    recap = proc.stdout.split("PLAY RECAP")[-1]
    assert "changed=0" in recap and all(
        "changed=0" in line for line in recap.splitlines() if "ok=" in line
    ), recap
    assert "172.16.1.11" not in fleet.exec("web1", "ip", "-4", "addr", "show", "dev", "lo").stdout
    assert fleet.exec("lb1", "cat", CONFIG).stdout == config


def test_verify_by_name_probes_arp_from_the_router(fleet: LabRun) -> None:
    """`ansible-playbook dsrlb.fleet.verify`: the collection's playbook by name; its ARP probe (no arping
    needed) runs on a host that is not a balancer and says so."""
    proc = fleet.ansible_cli("ansible-playbook", ["dsrlb.fleet.verify"], {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "probed from router" in proc.stdout, proc.stdout


def test_a_daemon_running_another_build_than_its_venv_is_restarted_not_reloaded(fleet: LabRun) -> None:
    """As after a run that installed a new release and failed before its restart: lb2's venv holds other
    code than its daemon runs (one line more in the installed sources). The next balancers.yml restarts
    lb2's daemon onto the installed build instead of handing a config to the old code, and lb1 only if
    it is stale too; a run after that changes nothing."""
    release = "$(ls -d /opt/dsrlb/venv/lib/python3*/site-packages/dsrlb)/release.py"
    fleet.exec("lb2", "sh", "-c", f"echo '# another build' >> {release}")
    installed = fleet.exec("lb2", DSRLB, "--version").stdout.split("build ")[1].rstrip(")\n")

    def pid(lb: str) -> str:
        return fleet.exec(lb, "systemctl", "show", "-P", "MainPID", "dsrlb.service").stdout.strip()

    def build(lb: str) -> str:
        return json.loads(fleet.exec(lb, DSRLB, "show", "stats", "--json").stdout)["build"]

    assert build("lb2") != installed
    before = {lb: pid(lb) for lb in ("lb1", "lb2")}
    proc = fleet.ansible_cli("ansible-playbook", ["playbooks/balancers.yml"], {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    restarted = proc.stdout.split("TASK [dsrlb.fleet.balancer : Restart the daemon onto the installed build]")
    assert len(restarted) == 3, "one such task per balancer (serial 1)"
    assert "changed: [lb2]" in restarted[1] and "lb1" not in restarted[2].split("TASK [")[0].replace(
        "skipping: [lb1]", ""
    ), proc.stdout
    assert build("lb2") == installed and pid("lb2") != before["lb2"]
    assert pid("lb1") == before["lb1"]
    again = fleet.ansible_cli("ansible-playbook", ["playbooks/balancers.yml"], {})
    assert again.returncode == 0 and all(
        "changed=0" in line for line in again.stdout.split("PLAY RECAP")[-1].splitlines() if "ok=" in line
    ), again.stdout
