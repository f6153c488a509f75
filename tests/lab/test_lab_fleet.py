"""The default lab as a fleet of real machines: CLI, isolation, Ansible through nsenter, reboot, web."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from labrun import BIN, REPO, LabRun

pytestmark = pytest.mark.root

HOSTS = {"router", "lb1", "lb2", "web1", "web2", "client"}


def test_every_host_is_running_systemd(lab: LabRun) -> None:
    status = lab.status()
    assert set(status) == HOSTS
    for name, host in status.items():
        assert host["state"] == "running", (name, host)
        assert (lab.state_dir / "hosts" / name / "pid").read_text().strip() == str(host["pid"])
        assert lab.exec(name, "cat", "/proc/1/comm").stdout.strip() == "systemd"
        assert lab.exec(name, "hostname").stdout.strip() == name


def test_up_again_changes_nothing(lab: LabRun) -> None:
    before = {n: h["pid"] for n, h in lab.status().items()}
    lab.lab("up")
    assert {n: h["pid"] for n, h in lab.status().items()} == before


def test_exec_returns_the_commands_status(lab: LabRun) -> None:
    assert lab.exec("web1", "sh", "-c", "exit 7", check=False).returncode == 7
    missing = lab.lab("exec", "nosuch", "--", "true", check=False)
    assert missing.returncode == 1 and "no host 'nosuch'" in missing.stderr


def test_hosts_are_isolated_from_the_machine(lab: LabRun) -> None:
    addrs = lab.exec("client", "ip", "-j", "-4", "addr", "show", "dev", "eth0").stdout
    assert {a["local"] for a in json.loads(addrs)[0]["addr_info"]} == {f"198.18.0.{i}" for i in range(10, 21)}
    # Nothing of the lab in the machine's own network namespace.
    root = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    mine = {a["local"] for link in json.loads(root) for a in link["addr_info"]}
    assert not mine & {"172.16.1.254", "198.18.0.1", "198.18.0.10", "172.16.1.100"}
    # The lab's state (other hosts' disks) is not visible inside a host; the shared kernel is read-only.
    assert lab.exec("web1", "ls", str(lab.state_dir), check=False).returncode != 0
    assert lab.exec("web1", "sh", "-c", "echo 1 > /proc/sys/kernel/sysrq", check=False).returncode != 0
    assert lab.exec("web1", "sysctl", "-w", "net.ipv4.conf.all.arp_ignore=1").returncode == 0


def test_router_forwards_between_segments(lab: LabRun) -> None:
    assert lab.exec("router", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    route = lab.exec("client", "ip", "-j", "route", "get", "172.16.1.100").stdout
    assert json.loads(route)[0]["gateway"] == "198.18.0.1"
    assert lab.exec("client", "ping", "-c1", "-W2", "-I", "198.18.0.15", "172.16.1.101").returncode == 0


def test_router_forwards_ipv6_between_segments(lab: LabRun) -> None:
    """The default topology is dual-stack: the client reaches the LAN over IPv6 through the router."""
    assert lab.exec("router", "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
    route = lab.exec("client", "ip", "-j", "-6", "route", "get", "2001:db8:1::100").stdout
    assert json.loads(route)[0]["gateway"] == "2001:db8:2::1"
    addrs = json.loads(lab.exec("client", "ip", "-j", "-6", "addr", "show", "dev", "eth0").stdout)
    assert {a["local"] for a in addrs[0]["addr_info"] if a.get("scope") == "global"} == {
        f"2001:db8:2::{i:x}" for i in range(0x10, 0x21)
    }
    assert lab.exec("client", "ping", "-6", "-c1", "-W2", "2001:db8:1::100").returncode == 0
    assert (
        lab.exec("client", "ping", "-6", "-c1", "-W2", "-I", "2001:db8:2::15", "2001:db8:1::101").returncode
        == 0
    )


def test_ansible_ping_and_setup_through_nsenter(lab: LabRun) -> None:
    assert {h: r["ping"] for h, r in lab.adhoc("all", "ansible.builtin.ping").items()} == dict.fromkeys(
        HOSTS, "pong"
    )
    facts = lab.adhoc("all", "ansible.builtin.setup", "filter=ansible_service_mgr,ansible_hostname")
    assert {h: r["ansible_facts"]["ansible_service_mgr"] for h, r in facts.items()} == dict.fromkeys(
        HOSTS, "systemd"
    )
    assert {h: r["ansible_facts"]["ansible_hostname"] for h, r in facts.items()} == {h: h for h in HOSTS}


def test_copy_a_file_and_fetch_it_back(lab: LabRun, tmp_path: Path) -> None:
    payload = "written by the lab test\n"
    dest = "/var/tmp/dsrlab-copy-test"
    copied = lab.adhoc("web2", "ansible.builtin.copy", f"dest={dest} content='{payload}' mode=0600")
    assert copied["web2"]["changed"]
    assert lab.exec("web2", "cat", dest).stdout == payload
    assert not Path(dest).exists()  # on web2's disk, not the machine's
    assert lab.exec("web1", "test", "-e", dest, check=False).returncode == 1
    lab.adhoc("web2", "ansible.builtin.fetch", f"src={dest} dest={tmp_path}/")
    assert (tmp_path / "web2" / dest.lstrip("/")).read_text() == payload


def test_fetch_follows_links_inside_the_host(lab: LabRun, tmp_path: Path) -> None:
    # /var/run -> /run is an absolute link: it must resolve in the host's root, not the machine's.
    decoy = Path("/run/dsrlab-fetch-test")
    decoy.write_text("machine\n")
    try:
        lab.exec("web2", "sh", "-c", f"echo host > {decoy}")
        lab.adhoc("web2", "ansible.builtin.fetch", f"src=/var/run/{decoy.name} dest={tmp_path}/ flat=true")
        assert (tmp_path / decoy.name).read_text() == "host\n"
    finally:
        decoy.unlink()


def test_reboot_keeps_the_disk_and_loses_runtime_state(lab: LabRun) -> None:
    old_pid = lab.status()["lb2"]["pid"]
    lab.exec("lb2", "sh", "-c", "echo persisted > /root/reboot-test")
    lab.exec("lb2", "ip", "addr", "add", "172.16.1.10/32", "dev", "lo")
    lab.exec("lb2", "sysctl", "-w", "net.ipv4.conf.all.arp_ignore=1")
    lab.lab("reboot", "lb2")
    host = lab.status()["lb2"]
    assert host["state"] == "running" and host["pid"] != old_pid
    assert lab.exec("lb2", "cat", "/root/reboot-test").stdout == "persisted\n"
    assert "172.16.1.10" not in lab.exec("lb2", "ip", "-4", "addr", "show", "dev", "lo").stdout
    assert lab.exec("lb2", "sysctl", "-n", "net.ipv4.conf.all.arp_ignore").stdout.strip() == "0"
    assert "inet 172.16.1.251/24" in lab.exec("lb2", "ip", "-4", "addr", "show", "dev", "eth0").stdout
    assert lab.exec("lb2", "ping", "-c1", "-W2", "172.16.1.254").returncode == 0
    # IPv6 addresses (nodad: usable at once) and the IPv6 default route are back too.
    assert "inet6 2001:db8:1::251/64" in lab.exec("lb2", "ip", "-6", "addr", "show", "dev", "eth0").stdout
    assert lab.exec("lb2", "ping", "-6", "-c1", "-W2", "2001:db8:2::10").returncode == 0
    # Ansible finds the new PID 1 by itself.
    assert lab.adhoc("lb2", "ansible.builtin.ping")["lb2"]["ping"] == "pong"


def _rx_packets(lab: LabRun, host: str, dev: str) -> int:
    return int(lab.exec(host, "cat", f"/sys/class/net/{dev}/statistics/rx_packets").stdout)


def test_lab_web_answers_the_client_through_the_router(lab: LabRun) -> None:
    lab.playbook("playbooks/lab-web.yml")
    before = _rx_packets(lab, "router", "eth1")
    for target in ("web1", "web2"):
        assert lab.exec(target, "systemctl", "is-enabled", "lab-web.service").stdout.strip() == "enabled"
    got = lab.exec("client", "curl", "-sS", "--max-time", "5", "http://172.16.1.100/").stdout
    assert got.strip() == "web1"
    assert (
        lab.exec("client", "curl", "-sS", "--max-time", "5", "http://172.16.1.101/").stdout.strip() == "web2"
    )
    for target, address in (("web1", "2001:db8:1::100"), ("web2", "2001:db8:1::101")):  # and over IPv6
        got = lab.exec("client", "curl", "-sS", "--max-time", "5", f"http://[{address}]/").stdout
        assert got.strip() == target
    assert _rx_packets(lab, "router", "eth1") - before >= 12  # the four TCP exchanges entered the router
    assert "changed=0" in lab.playbook("playbooks/lab-web.yml").stdout


def test_inventory_matches_the_default_topology() -> None:
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", "inventory/lab", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    inv = json.loads(proc.stdout)
    assert set(inv["dsr_balancers"]["hosts"]) == {"lb1", "lb2"}
    assert set(inv["dsr_targets"]["hosts"]) == {"web1", "web2"}
    assert set(inv["lab_clients"]["hosts"]) == {"client"}
    assert set(inv["lab_routers"]["hosts"]) == {"router"}
