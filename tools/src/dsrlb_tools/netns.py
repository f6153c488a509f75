"""Throw-away network namespace topologies for the benchmark and the integration tests.

Every namespace, and therefore every veth, bridge and address, lives under one name prefix, so a
single `cleanup(prefix)` removes a topology completely, including what a crashed earlier run left
behind. Nothing is ever created in the root network namespace: veth pairs are created directly
inside the namespaces that own their ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence

SWITCH = "switch"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def namespaces(prefix: str) -> list[str]:
    """Network namespaces named `<prefix>-…`, i.e. those a topology with this prefix owns."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-")]


def _pids(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(pid) for pid in out.split() if pid.isdigit()]


def _kill(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def cleanup(prefix: str) -> None:
    """Remove every namespace named `<prefix>-…` and kill the processes still running in them.

    Idempotent. A namespace is only deleted once its processes are gone, because `ip netns del`
    with live members would merely unlink the name and leave the interfaces alive and unreachable.
    """
    names = namespaces(prefix)
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        pids = [pid for name in names for pid in _pids(name)]
        if not pids:
            break
        _kill(pids, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_pids(name) for name in names):
            time.sleep(0.05)
    for name in names:
        _ip("netns", "del", name, check=False)


class Topology:
    """Named hosts (one network namespace each) on bridges that live in their own switch namespace.

    Use as a context manager: entering removes leftovers of an earlier run with the same prefix,
    leaving (also on an exception) removes everything.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.hosts: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self._bridges: set[str] = set()
        self._ports = 0
        self.ports: dict[tuple[str, str], str] = {}  # (host, ifname) -> its switch port
        self._anchors: dict[str, subprocess.Popen[str]] = {}

    def __enter__(self) -> Topology:
        cleanup(self.prefix)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def ns(self, host: str) -> str:
        """The network namespace name of a host."""
        return f"{self.prefix}-{host}"

    def add_host(self, host: str) -> str:
        """Create the host's namespace with `lo` up; returns the namespace name."""
        name = self.ns(host)
        _ip("netns", "add", name)
        self.hosts.append(host)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def add_bridge(self, bridge: str = "br0") -> None:
        """A bridge in the switch namespace (created on first use)."""
        if SWITCH not in self.hosts:
            self.add_host(SWITCH)
            # A switch does not run iptables on bridged frames (br_netfilter, when loaded, would).
            self.run(
                SWITCH,
                "sh",
                "-c",
                'for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e "$f" ] && echo 0 > "$f"; done; true',
            )
        _ip("-n", self.ns(SWITCH), "link", "add", bridge, "type", "bridge", "forward_delay", "0")
        _ip("-n", self.ns(SWITCH), "link", "set", bridge, "up")
        self._bridges.add(bridge)

    def connect(
        self, host: str, bridge: str = "br0", ifname: str = "eth0", addrs: Sequence[str] = ()
    ) -> None:
        """Plug the host into a bridge with a veth whose host end is `ifname`."""
        if bridge not in self._bridges:
            self.add_bridge(bridge)
        self._ports += 1
        port = f"p{self._ports}"
        self.ports[(host, ifname)] = port
        _ip(
            "-n",
            self.ns(host),
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.ns(SWITCH),
        )
        _ip("-n", self.ns(SWITCH), "link", "set", port, "master", bridge, "up")
        self._up(host, ifname, addrs)

    def link(
        self, a: str, a_if: str, b: str, b_if: str, a_addrs: Sequence[str] = (), b_addrs: Sequence[str] = ()
    ) -> None:
        """A point-to-point veth between two hosts."""
        _ip("-n", self.ns(a), "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", self.ns(b))
        self._up(a, a_if, a_addrs)
        self._up(b, b_if, b_addrs)

    def _up(self, host: str, ifname: str, addrs: Sequence[str]) -> None:
        for addr in addrs:
            self.addr(host, addr, ifname)
        _ip("-n", self.ns(host), "link", "set", ifname, "up")

    def addr(self, host: str, cidr: str, ifname: str = "eth0") -> None:
        """Add an address; an IPv6 one without duplicate address detection, so it is usable at once."""
        _ip("-n", self.ns(host), "addr", "add", cidr, "dev", ifname, *(("nodad",) if ":" in cidr else ()))

    def wait_link_local(self, timeout: float = 10.0) -> None:
        """Wait until no host has a tentative IPv6 address (the link-locals, which get DAD at link up).

        Until its link-local passes DAD an interface sends no neighbour solicitation, so a host
        forwarding IPv6 silently drops what it cannot resolve meanwhile."""
        deadline = time.monotonic() + timeout
        waiting = list(self.hosts)
        while waiting:
            waiting = [h for h in waiting if _ip("-n", self.ns(h), "-6", "addr", "show", "tentative").stdout]
            if waiting and time.monotonic() > deadline:
                hosts = ", ".join(waiting)
                raise TimeoutError(f"IPv6 addresses still tentative after {timeout:.0f} s on {hosts}")
            if waiting:
                time.sleep(0.1)

    def route(self, host: str, *spec: str) -> None:
        """`ip route replace SPEC…` inside the host, e.g. route("web1", "default", "via", "10.0.0.1")."""
        _ip("-n", self.ns(host), "route", "replace", *spec)

    def sysctl(self, host: str, settings: dict[str, str | int]) -> None:
        self.run(host, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items()))

    def mac(self, host: str, ifname: str = "eth0") -> str:
        info = json.loads(_ip("-n", self.ns(host), "-j", "link", "show", ifname).stdout)
        return info[0]["address"]

    def run(
        self, host: str, *argv: str, check: bool = True, timeout: float | None = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host's namespace and wait for it."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            check=check,
            timeout=timeout,
            capture_output=True,
            text=True,
            input=input,
        )

    def popen(self, host: str, *argv: str, **kwargs: object) -> subprocess.Popen[str]:
        """Start a background process inside the host; it is killed by cleanup().

        `ip netns exec` execs the command, so the Popen's pid is the command's own pid.
        """
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 5.0) -> int:
        """Terminate one background process (SIGTERM, then SIGKILL) and reap it."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode

    def pids(self, host: str) -> list[int]:
        """Pids of every process in the host's network namespace."""
        return _pids(self.ns(host))

    def proc_net(self, host: str, name: str) -> str:
        """The host's /proc/net/NAME (dev, snmp, …), read without forking a process per read.

        A sleeping anchor process keeps a window into the namespace: /proc/PID/net is per netns.
        """
        anchor = self._anchors.get(host)
        if anchor is None or anchor.poll() is not None:
            anchor = self._anchors[host] = self.popen(host, "sleep", "infinity")
            # Until `ip netns exec` has switched namespaces, the pid still shows the caller's network.
            inode = os.stat(f"/run/netns/{self.ns(host)}").st_ino
            deadline = time.monotonic() + 5.0
            while os.readlink(f"/proc/{anchor.pid}/ns/net") != f"net:[{inode}]":
                if time.monotonic() > deadline or anchor.poll() is not None:
                    raise RuntimeError(f"cannot enter namespace {self.ns(host)}")
                time.sleep(0.01)
        with open(f"/proc/{anchor.pid}/net/{name}") as f:
            return f.read()

    def cleanup(self) -> None:
        """Stop what this object started, then remove every namespace of the prefix."""
        for proc in list(self.procs):
            self.stop(proc, timeout=2.0)
        self._anchors.clear()
        cleanup(self.prefix)
        self.hosts.clear()
        self._bridges.clear()


def net_dev_counters(proc_net_dev: str, ifname: str) -> dict[str, int]:
    """rx/tx packet and drop counters of one interface from the text of /proc/net/dev."""
    for line in proc_net_dev.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == ifname:
            f = [int(x) for x in rest.split()]
            return {"rx_packets": f[1], "rx_dropped": f[3], "tx_packets": f[9], "tx_dropped": f[11]}
    raise KeyError(ifname)


def snmp_counters(proc_net_snmp: str, proto: str) -> dict[str, int]:
    """One protocol's counters (e.g. "Udp") from the text of /proc/net/snmp."""
    rows = [line.split()[1:] for line in proc_net_snmp.splitlines() if line.startswith(f"{proto}:")]
    return {k: int(v) for k, v in zip(rows[0], rows[1], strict=True)}
