"""The lab's balancer pair under test: who runs there (dsrlb, in data plane access raw or nftables, or
keepalived), failover events, the client probe, ARP and advert captures. Everything runs inside lab
hosts (nsenter into their namespaces).

keepalived stands in as the baseline the way it is deployed without IPVS (not available in this
kernel): the master holds the VIP and `virt` on its own eth0 and a small HTTP server on every balancer
node answers on port 80. Its data path is that server, so `kill -9` kills keepalived's two processes
(PIDs from its pid files) and the server at once: like dsrlb, whose data path dies with the daemon.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labrun import REPO, LabRun

from dsrlb.vocabulary import DEFAULT_CONTROL
from dsrlb_tools.lab import load
from dsrlb_tools.lab.lab import Lab

VIP = "172.16.1.10"
VIRT = "172.16.1.253"
ROUTER_LAN = "172.16.1.254"
ADVERT_MS = 100
BALANCERS = {"lb1": ("172.16.1.252", 200), "lb2": ("172.16.1.251", 100)}
TARGETS = ("web1", "web2")
DSRLB, KEEPALIVED = "dsrlb", "keepalived"
ACCESS = ("raw", "nftables")  # dsrlb's data planes: the Python forwarder, the kernel (netdev ingress fwd)
SETTLE = 0.7  # seconds of probing after a change has completed

# The keepalived baseline's data path: HTTP on the balancer node itself (files persist on the hosts' disks).
HA_WEB_UNIT = """[Unit]
Description=HTTP on the balancer node itself (keepalived baseline without IPVS)

[Service]
ExecStart=/usr/bin/python3 -m http.server 80 --directory /srv/ha-web

[Install]
WantedBy=multi-user.target
"""


def keepalived_config(host: str, vrid: int, priority: int) -> str:
    # No vrrp_strict: its nftables rules drop traffic to the VIP. advert_int < 1 needs version 3.
    return f"""global_defs {{
  router_id {host}
  vrrp_version 3
}}
vrrp_instance ha {{
  state BACKUP
  interface eth0
  virtual_router_id {vrid}
  priority {priority}
  advert_int {ADVERT_MS / 1000}
  virtual_ipaddress {{
    {VIP}/32
    {VIRT}/32
  }}
}}
"""


@dataclass
class Window:
    """Client attempts during one measurement window."""

    attempts: list[list]  # [start, end, ok, who, source] (dsrlb_tools.lab.load)

    @property
    def failed(self) -> int:
        return sum(1 for a in self.attempts if not a[2])

    @property
    def gap(self) -> float:
        return load.gap(self.attempts)

    def servers(self) -> set[str]:
        return {a[3] for a in self.attempts if a[2]}


class Probe:
    """The client load (dsrlb_tools.lab.load) running in the lab's client host while in a `with`."""

    def __init__(self, lab: Lab) -> None:
        self.argv = lab.net_argv("client", [sys.executable, "-m", "dsrlb_tools.lab.load", VIP])
        self.window: Window | None = None

    def __enter__(self) -> Probe:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.proc.communicate(timeout=30)  # closes stdin: the probe's stop signal
        if exc[0] is None:
            assert self.proc.returncode == 0, out
            self.window = Window(json.loads(out)["attempts"])


@dataclass
class Fleet:
    """The two balancers and what each of them runs."""

    run: LabRun
    kinds: dict[str, str] = field(default_factory=dict)
    vrid: int = 0  # the pair's, as site.yml configured it
    provisioned_by: str = ""
    access: str = ""  # the dsrlb pair's data plane (the balancer role's dsrlb_access)
    takeovers: list[tuple[str, str]] = field(default_factory=list)  # (event, why lb2 became master)

    def __post_init__(self) -> None:
        self.lab = Lab(self.run.state_dir)

    # --- plumbing -----------------------------------------------------------------------------------
    def sh(self, host: str, script: str, check: bool = True, stdin: str | None = None) -> str:
        proc = subprocess.run(
            self.lab.exec_argv(host, ["sh", "-c", script]), input=stdin, capture_output=True, text=True
        )
        if check and proc.returncode:
            raise AssertionError(f"{host}: {script!r} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc.stdout

    def net_python(self, host: str, script: str) -> str:
        """Run a Python snippet of this test run (its venv: scapy) in the host's network namespace."""
        proc = subprocess.run(
            self.lab.net_argv(host, [sys.executable, "-c", script]), capture_output=True, text=True
        )
        if proc.returncode:
            raise AssertionError(f"{host}: {script!r} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc.stdout

    def put(self, host: str, path: str, text: str) -> None:
        self.sh(host, f"mkdir -p {Path(path).parent} && cat > {path}", stdin=text)

    def mac(self, host: str) -> str:
        return self.sh(host, "cat /sys/class/net/eth0/address").strip()

    def show(self, host: str, what: str) -> dict | None:
        """`show WHAT` through the control socket of the host's dsrlb (None if it does not answer)."""
        pid = self.lab.pid(host)
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(f"/proc/{pid}/root{DEFAULT_CONTROL}")
                s.sendall(json.dumps({"cmd": "show", "what": what}).encode() + b"\n")
                reply = json.loads(s.makefile().readline())
        except (OSError, ValueError):
            return None
        return reply["data"] if reply.get("ok") else None

    def vrrp(self, host: str) -> dict | None:
        return self.show(host, "vrrp")

    def holds_vip(self, host: str) -> bool:
        addrs = json.loads(self.sh(host, "ip -j -4 addr show dev eth0"))
        return VIP in {a["local"] for link in addrs for a in link["addr_info"]}

    def state(self, host: str) -> str:
        """master / backup / down, as the host's VRRP speaker says (keepalived: whether it holds the VIP)."""
        if self.kinds[host] == DSRLB:
            return (self.vrrp(host) or {}).get("state", "down")
        return "master" if self.holds_vip(host) else "backup"

    def wait(self, what: str, cond: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.02)

    def wait_master(self, host: str, timeout: float = 20.0) -> None:
        other = next(h for h in BALANCERS if h != host)
        self.wait(
            f"{host} master, {other} backup ({self.kinds})",
            lambda: self.state(host) == "master" and self.state(other) == "backup",
            timeout,
        )

    def curl(self, timeout: float = 2.0) -> str:
        return self.sh("client", f"curl -sS --max-time {timeout} http://{VIP}/").strip()

    # --- provisioning -------------------------------------------------------------------------------
    def provision(self) -> None:
        """dsrlb.service on lb1/lb2 from site.yml, as users deploy it. There is no fallback: a site.yml that
        fails (or is incomplete) fails the suite instead of being papered over by hand provisioning."""
        self.run.playbook("playbooks/lab-web.yml")  # HTTP on the targets: their health checks pass
        site = REPO / "site.yml"
        assert site.exists(), f"{site} is missing: the HA suite provisions the pair with it"
        proc = self.run.ansible_cli("ansible-playbook", ["site.yml"], {})
        assert proc.returncode == 0, (
            f"site.yml failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
        self.provisioned_by = "site.yml"
        self.kinds = dict.fromkeys(BALANCERS, DSRLB)
        self.wait_master("lb1")
        self.vrid = self.vrrp("lb1")["vrid"]
        self.access = self.accesses().pop()
        for host, (_, priority) in BALANCERS.items():  # keepalived on the same VRID as the dsrlb pair
            self.put(host, "/srv/ha-web/index.html", f"{host}\n")
            self.put(host, "/etc/systemd/system/ha-web.service", HA_WEB_UNIT)
            self.put(host, "/etc/keepalived/keepalived.conf", keepalived_config(host, self.vrid, priority))
            self.sh(host, "systemctl daemon-reload")

    def accesses(self) -> set[str]:
        """The data planes the two dsrlb daemons run (exactly one, or the pair is not what site.yml made)."""
        found = {h: (self.show(h, "stats") or {}).get("access") for h in BALANCERS}
        assert len(set(found.values())) == 1 and None not in found.values(), f"data planes: {found}"
        return set(found.values())

    def set_access(self, access: str) -> None:
        """Switch the dsrlb pair's data plane as users do: the balancer role with dsrlb_access (a reload)."""
        if access == self.access:
            return
        if set(self.kinds.values()) != {DSRLB}:
            self.use(DSRLB, DSRLB)  # the role starts dsrlb: keepalived must not run beside it
        playbook = ["playbooks/balancers.yml", "-e", f"dsrlb_access={access}"]
        proc = self.run.ansible_cli("ansible-playbook", playbook, {})
        assert proc.returncode == 0, (
            f"balancers.yml -e dsrlb_access={access} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
        self.wait_master("lb1")
        assert self.accesses() == {access}
        self.access = access

    def use(self, lb1: str = DSRLB, lb2: str = DSRLB) -> None:
        """Run dsrlb or keepalived on each balancer; wait until lb1 is master and the VIP serves."""
        wanted = {"lb1": lb1, "lb2": lb2}
        for host in BALANCERS:  # both off first, so no half-configured pair elects anything
            self.sh(
                host,
                "systemctl disable -q --now dsrlb keepalived ha-web; systemctl reset-failed; "
                f"ip addr del {VIP}/32 dev eth0; ip addr del {VIRT}/32 dev eth0; true",
            )
        for host in ("lb2", "lb1"):
            units = "dsrlb" if wanted[host] == DSRLB else "ha-web keepalived"
            self.sh(host, f"systemctl enable -q --now {units}")
        self.kinds = wanted
        self.wait_master("lb1")
        for host in (h for h, kind in wanted.items() if kind == DSRLB):  # a steady pair: both can serve
            self.wait(f"{host} ready to take over", lambda h=host: (self.vrrp(h) or {}).get("ready", False))
        self.wait(
            "a reply from the VIP", lambda: self.sh("client", f"curl -s -m1 http://{VIP}/", check=False) != ""
        )

    # --- events on a balancer -----------------------------------------------------------------------
    def stop(self, host: str) -> None:
        self.sh(host, f"systemctl stop {'dsrlb' if self.kinds[host] == DSRLB else 'keepalived'}")

    def kill(self, host: str) -> None:
        if self.kinds[host] == DSRLB:
            self.sh(host, "kill -9 $(systemctl show -P MainPID dsrlb)")
        else:
            self.sh(
                host, "kill -9 $(cat /run/keepalived.pid /run/vrrp.pid) $(systemctl show -P MainPID ha-web)"
            )

    def reboot(self, host: str) -> None:
        self.run.lab("reboot", host)

    def recover(self, host: str, event: str) -> None:
        """Bring the host's service back after an event (a reboot brings enabled units back itself)."""
        if event == "reboot":
            return
        if self.kinds[host] == DSRLB:
            self.sh(host, "systemctl start dsrlb")
            return
        if event == "kill":  # a killed keepalived leaves its addresses behind
            self.sh(
                host, f"ip addr del {VIP}/32 dev eth0; ip addr del {VIRT}/32 dev eth0; systemctl reset-failed"
            )
        self.sh(host, "systemctl start ha-web keepalived")

    def failover(self, event: str) -> tuple[Window, Window]:
        """One run: the master (lb1) suffers `event` while the client probes; then it comes back and
        (preempt) takes over again while the client probes. Returns (failover, recovery) windows."""
        self.wait_master("lb1")
        before = len(self.takeover_log("lb2")) if self.kinds["lb2"] == DSRLB else 0
        with Probe(self.lab) as failing:
            time.sleep(0.3)
            action = threading.Thread(target=getattr(self, event), args=("lb1",))
            action.start()
            self.wait("lb2 to take over", lambda: self.state("lb2") == "master")
            action.join()
            time.sleep(SETTLE)
        if self.kinds["lb2"] == DSRLB:
            self.wait("lb2 to log its takeover", lambda: len(self.takeover_log("lb2")) > before, 5)
            self.takeovers.append((event, self.takeover_log("lb2")[-1]))
        with Probe(self.lab) as recovering:
            time.sleep(0.3)
            self.recover("lb1", event)
            self.wait_master("lb1", timeout=30)
            time.sleep(SETTLE)
        assert failing.window is not None and recovering.window is not None
        return failing.window, recovering.window

    def takeover_log(self, host: str) -> list[str]:
        """The host's dsrlb journal lines about becoming VRRP master; each ends with the reason."""
        out = self.sh(host, "journalctl -u dsrlb -o cat --no-pager | grep -F -- '-> master:'", check=False)
        return out.splitlines()

    # --- what the segment sees ----------------------------------------------------------------------
    def arp_answers(self, address: str = VIP) -> set[str]:
        """MACs that answer a broadcast ARP request for `address`, asked from the router (scapy)."""
        script = (
            "import json; from scapy.all import ARP, Ether, srp; "
            f"ans, _ = srp(Ether(dst='ff:ff:ff:ff:ff:ff') / ARP(pdst='{address}', psrc='{ROUTER_LAN}'), "
            "iface='eth0', timeout=0.5, multi=True, verbose=0); "
            "print(json.dumps(sorted({r[ARP].hwsrc for _, r in ans})))"
        )
        return set(json.loads(self.net_python("router", script)))

    def capture_adverts(self, seconds: float) -> list[bytes]:
        """Raw frames of IP protocol 112 seen on the LAN segment from the router."""
        script = (
            "from scapy.all import IP, raw, sniff; "
            f"ps = sniff(iface='eth0', timeout={seconds}, lfilter=lambda p: IP in p and p[IP].proto == 112); "
            "print('\\n'.join(raw(p).hex() for p in ps))"
        )
        return [bytes.fromhex(line) for line in self.net_python("router", script).split()]

    def block_adverts(self, host: str, block: bool) -> None:
        """Drop VRRP leaving `host` (netdev egress: dsrlb's packet sockets bypass the IP hooks)."""
        if block:
            self.sh(
                host,
                "nft -f -",
                stdin='table netdev ha_split {\n  chain out {\n    type filter hook egress device "eth0" '
                "priority 0; ip protocol 112 drop;\n  }\n}\n",
            )
        else:
            self.sh(host, "nft delete table netdev ha_split")
