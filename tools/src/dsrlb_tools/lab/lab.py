"""The lab as a whole: a state directory, the switches of its segments, its hosts.

Everything the lab creates is named after a short id derived from the state directory
(`dsrlab-<id>-<segment>` namespaces, cgroup `dsrlab-<id>`), so two labs with different state
directories never collide and `down` finds what a crashed run left behind without any record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dsrlb_tools.lab import cgroup, host, net, rootfs, topology
from dsrlb_tools.lab.topology import Topology

DEFAULT_STATE_DIR = "/var/lib/dsrlb-lab"
STATE_ENV = "DSRLB_LAB_STATE_DIR"
BOOT_TIMEOUT = 120.0  # generous: two labs booting at once on two cores take a while
REBOOT_GRACE = 10.0


class LabError(RuntimeError):
    """Anything that stops a lab command; printed as one clear line by the CLI."""


@dataclass(frozen=True)
class HostStatus:
    name: str
    roles: tuple[str, ...]
    pid: int | None
    state: str  # systemd's system state, or "stopped"
    addresses: dict[str, list[str]]
    failed_units: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "pid": self.pid,
            "state": self.state,
            "addresses": self.addresses,
            "failed_units": list(self.failed_units),
        }


class Lab:
    """A lab rooted at ``state_dir`` (default: $DSRLB_LAB_STATE_DIR or /var/lib/dsrlb-lab)."""

    def __init__(self, state_dir: str | Path | None = None) -> None:
        self.state_dir = Path(state_dir or os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR).resolve()
        self.id = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:6]
        self.prefix = f"dsrlab-{self.id}"
        self.saved = self.state_dir / "lab.json"
        if any(c in str(self.state_dir) for c in ",:\\"):
            raise LabError(
                f"{self.state_dir}: the state directory path must not contain ',', ':' or '\\' (overlay)"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One changing command at a time per lab (two `up`s would boot every host twice)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- naming -------------------------------------------------------------------------------
    def switch(self, segment: str) -> str:
        return f"{self.prefix}-{segment}"

    def dirs(self, name: str) -> host.HostDirs:
        return host.HostDirs(self.state_dir / "hosts" / name)

    def cgroup_path(self, name: str = "") -> str:
        """The host's cgroup as processes report it (``/dsrlab-<id>/<name>``)."""
        return f"/{self.prefix}/{name}".rstrip("/")

    def cgroup_dir(self, name: str = "") -> Path:
        return cgroup.base() / self.cgroup_path(name).lstrip("/")

    # -- topology of the running lab ----------------------------------------------------------
    def topology(self) -> Topology:
        """The topology the lab was brought up with (status, reboot and exec use it)."""
        try:
            return topology.parse(json.loads(self.saved.read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab in {self.state_dir}: dsrlb lab up") from None
        except (ValueError, topology.TopologyError) as err:
            raise LabError(f"{self.saved}: unreadable ({err}): dsrlb lab down, then up") from None

    def pid(self, name: str) -> int | None:
        return host.running_pid(self.dirs(name), self.cgroup_path(name))

    def require(self, name: str) -> int:
        """PID of a running host, or a clear error saying what to do."""
        if name not in self.topology().hosts:
            raise LabError(f"no host {name!r} in the lab (hosts: {', '.join(self.topology().hosts)})")
        pid = self.pid(name)
        if pid is None:
            raise LabError(f"lab host {name} is not running: dsrlb lab up")
        return pid

    # -- commands -----------------------------------------------------------------------------
    def up(self, topology_file: str | None = None) -> list[HostStatus]:
        """Bring every host up; hosts already running are left alone (idempotent)."""
        topo = topology.load(topology_file)
        with self._locked():
            return self._up(topo)

    def _up(self, topo: Topology) -> list[HostStatus]:
        raw = json.dumps(_raw(topo), indent=1)
        running = [n for n in self._recorded_hosts() if self.pid(n) is not None]
        if running and self.saved.exists() and self.saved.read_text() != raw:
            raise LabError(
                f"the lab in {self.state_dir} runs another topology (hosts up: {', '.join(running)}): "
                "dsrlb lab down first"
            )
        self.saved.write_text(raw)
        for name in self._recorded_hosts():
            if name not in topo.hosts:  # a host dropped from the topology must not keep running
                self._stop(name)
        for segment in topo.segments:
            net.create_switch(self.switch(segment))
        to_boot = [h for h in topo.hosts if self.pid(h) is None]
        for name in to_boot:
            self._stop(name)  # leftovers of a crashed boot of this host
        self._boot(topo, to_boot)
        return self.status()

    def down(self, purge: bool = False) -> None:
        """Remove every process, namespace and cgroup of the lab; ``purge`` deletes the disks too."""
        with self._locked():
            self._down()
        if purge:
            shutil.rmtree(self.state_dir)

    def _down(self) -> None:
        for name in self._recorded_hosts():
            self._stop(name)
        # Hosts of a crashed run that never got a pid file are still in the lab's cgroup.
        self._kill(cgroup.pids(self.cgroup_dir()))
        if self.cgroup_dir().exists():
            cgroup.remove(self.cgroup_dir())
        for switch in net.switches(self.prefix + "-"):
            net.delete_switch(switch)

    def reboot(self, name: str) -> HostStatus:
        """Restart PID 1 on the same disk: files persist, runtime state (addresses, processes) is lost."""
        with self._locked():
            topo = self.topology()
            pid = self.require(name)
            self._reboot(topo, name, pid)
        return next(s for s in self.status() if s.name == name)

    def _reboot(self, topo: Topology, name: str, pid: int) -> None:
        if not host.poweroff(pid, self.cgroup_path(name), REBOOT_GRACE):
            print(f"{name}: no clean shutdown within {REBOOT_GRACE:.0f}s, killing it", file=sys.stderr)
        self._stop(name)
        self._boot(topo, [name])

    def status(self) -> list[HostStatus]:
        topo = self.topology()
        result = []
        for h in topo.hosts.values():
            pid = self.pid(h.name)
            state = host.system_state(pid) if pid else "stopped"
            failed = tuple(host.failed_units(pid)) if state == "degraded" else ()
            addresses = {i.name: [str(a) for a in i.addresses] for i in h.interfaces}
            result.append(HostStatus(h.name, h.roles, pid, state, addresses, failed))
        return result

    def exec_argv(self, name: str, argv: list[str]) -> list[str]:
        return host.nsenter(self.require(name), argv)

    def net_argv(self, name: str, argv: list[str]) -> list[str]:
        """Command line running ``argv`` in the host's network namespace only: it sees this machine's
        files (a test's own venv, wherever the checkout is), but the host's interfaces."""
        return ["nsenter", "-t", str(self.require(name)), "-n", "--", *argv]

    # -- internals ----------------------------------------------------------------------------
    def _recorded_hosts(self) -> list[str]:
        hosts = self.state_dir / "hosts"
        return sorted(p.name for p in hosts.iterdir()) if hosts.is_dir() else []

    def _boot(self, topo: Topology, names: list[str]) -> None:
        """Boot ``names`` in parallel: start all, wire all, release all, then wait for all."""
        boots: list[host.Boot] = []
        try:
            for name in names:
                dirs = self.dirs(name)
                rootfs.prepare(dirs.upper, name, topo)
                boots.append(host.Boot(name, dirs, self.cgroup_dir(name), self.state_dir))
            switch_of = {s: self.switch(s) for s in topo.segments}
            for boot in boots:
                net.wire(self.id, switch_of, topo.hosts[boot.name], boot.pid)
                boot.release()
        except (host.HostError, net.NetError) as err:
            for boot in boots:
                boot.abort()
            raise LabError(str(err)) from None
        deadline = time.monotonic() + BOOT_TIMEOUT
        try:
            for boot in boots:
                host.wait_running(boot.name, boot.pid, deadline)
        except host.HostError as err:
            raise LabError(f"{err}\n(the lab stays up for inspection: dsrlb lab status / down)") from None

    def _stop(self, name: str) -> None:
        """Kill a host: its recorded init (verified), then whatever is left in its cgroup."""
        pid = self.pid(name)
        self._kill({pid} if pid else set())
        path = self.cgroup_dir(name)
        self._kill(cgroup.pids(path))
        if path.exists():
            cgroup.remove(path)
        self.dirs(name).pidfile.unlink(missing_ok=True)

    def _kill(self, pids: set[int]) -> None:
        """SIGKILL processes of this lab; killing a PID-namespace init takes its whole namespace,
        including commands entered with nsenter, which are not in the host's cgroup."""
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _raw(topo: Topology) -> dict:
    """The topology as plain data (saved with the lab, compared by a later `up`)."""
    return {
        "segments": {
            s.name: {
                **({"subnet": str(s.subnet)} if s.subnet else {}),
                **({"subnet6": str(s.subnet6)} if s.subnet6 else {}),
            }
            for s in topo.segments.values()
        },
        "hosts": {
            h.name: {
                "roles": list(h.roles),
                "forward": h.forward,
                "interfaces": [
                    {"segment": i.segment, "addresses": [str(a.ip) for a in i.addresses]}
                    for i in h.interfaces
                ],
                **({"gateway": str(h.gateway)} if h.gateway else {}),
                **({"gateway6": str(h.gateway6)} if h.gateway6 else {}),
                "routes": [{"to": str(r.to), "via": str(r.via)} for r in h.routes],
                **({"sysctl": dict(h.sysctl)} if h.sysctl else {}),
                **({"bgp": _raw_bgp(h.bgp)} if h.bgp else {}),
            }
            for h in topo.hosts.values()
        },
    }


def _raw_bgp(bgp: topology.Bgp) -> dict:
    return {
        "asn": bgp.asn,
        "router_id": str(bgp.router_id),
        "bfd": bgp.bfd,
        "neighbors": [
            {"host": n.host, "asn": n.asn} if n.host else {"address": str(n.address), "asn": n.asn}
            for n in bgp.neighbors
        ],
    }
