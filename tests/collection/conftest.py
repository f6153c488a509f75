"""Run the collection's modules for real through `ansible localhost -c local`.

loopback_alias and arp_sysctl run inside a throwaway network namespace (name prefix `dsrlbct-<pid>-`,
or DSRLB_TEST_NETNS_PREFIX), so they change real kernel state without touching the host's own addresses
or sysctls; the balancer modules talk to a real dsrlb daemon running in such namespaces. Namespaces
left behind by a crashed earlier run (whose pid is gone) are removed at the start.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dsrlb_tools.netns import Topology

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / ".venv" / "bin" / "ansible"
DSRLB = ROOT / ".venv" / "bin" / "dsrlb"
SEED = ROOT / "examples" / "dsr-example.conf"  # the seed config, byte for byte
# DSRLB_TEST_NETNS_PREFIX keeps two checkouts testing on one host out of each other's namespaces.
PREFIX = os.environ.get("DSRLB_TEST_NETNS_PREFIX", "dsrlbct-")
_counter = itertools.count()


@dataclass
class Run:
    """One ad-hoc module run: its parsed result, the printed diff, and the raw output for messages."""

    result: dict
    status: str  # CHANGED | SUCCESS | FAILED!
    diff: str
    output: str

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed"))

    @property
    def failed(self) -> bool:
        return self.status.startswith("FAILED") or bool(self.result.get("failed"))


def run_module(
    module: str, args: dict, netns: str | None = None, check: bool = False, diff: bool = False
) -> Run:
    """`ansible localhost -c local -m dsrlb.fleet.MODULE` from the repo root, so ansible.cfg's
    collections_path resolves the collection; `netns` runs it inside that network namespace."""
    cmd = [str(ANSIBLE), "localhost", "-c", "local", "-m", f"dsrlb.fleet.{module}", "-a", json.dumps(args)]
    cmd += ["--check"] * check + ["--diff"] * diff
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="oneline", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"^localhost \| (CHANGED|SUCCESS|FAILED!) => ", proc.stdout, re.MULTILINE)
    assert match, f"no module result in the output of {' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    result = json.JSONDecoder().raw_decode(proc.stdout[match.end() :])[0]
    return Run(result, match.group(1), proc.stdout[: match.start()], proc.stdout + proc.stderr)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _cleanup_stale() -> None:
    """Remove namespaces of earlier runs whose pytest process is gone."""
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.match(rf"^{PREFIX}(\d+)-\d+", name)  # also the `w` and `-host` namespaces
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _ip("netns", "del", name, check=False)


@pytest.fixture(scope="session", autouse=True)
def _needs_ansible() -> None:
    if not ANSIBLE.exists():
        pytest.skip(f"{ANSIBLE} is missing: run `make venv`")


@pytest.fixture(scope="session")
def _netns_capable() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespace tests need root and iproute2")
    _cleanup_stale()


@pytest.fixture
def netns(_netns_capable: None) -> Iterator[str]:
    """A fresh network namespace with lo up and an interface `dum0` (a veth, as the dummy driver may be
    missing), removed afterwards."""
    name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", "dum0", "type", "veth", "peer", "name", "dum1")
        _ip("-n", name, "link", "set", "dum0", "up")
        yield name
    finally:
        _ip("netns", "del", name, check=False)


@dataclass
class Daemon:
    """A dsrlb daemon serving the seed config in a namespace, with its config file and control socket."""

    conf: Path
    sock: Path

    def show(self, what: str) -> dict:
        out = subprocess.run(
            [str(DSRLB), "-s", str(self.sock), "show", what, "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)


@pytest.fixture
def daemon(_netns_capable: None, tmp_path: Path) -> Iterator[Daemon]:
    """The seed config served by the real daemon: balancer namespace with eth0 172.16.1.252/24, and on
    the veth's other end a target namespace with 172.16.1.100 answering on port 80 (target 1 up); nothing
    answers for 172.16.1.101 (target 2 down)."""
    tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"
    lb, web = f"{tag}", f"{tag}w"
    conf, sock = tmp_path / "dsrlb.conf", tmp_path / "control.sock"
    shutil.copy(SEED, conf)
    procs: list[subprocess.Popen] = []
    _ip("netns", "add", lb)
    _ip("netns", "add", web)
    try:
        _ip("-n", lb, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", web)
        for ns, addr in ((lb, "172.16.1.252/24"), (web, "172.16.1.100/24")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", addr, "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", web, sys.executable, "-m", "http.server", "80", "-d", str(tmp_path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        log = (tmp_path / "dsrlb.log").open("w")
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", lb, str(DSRLB), "-s", str(sock), "run", "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        daemon = Daemon(conf, sock)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # ready: the socket answers and target 1 has been checked
            if sock.exists() and any(t["health"] == "up" for t in daemon.show("targets")):
                break
            assert procs[-1].poll() is None, (tmp_path / "dsrlb.log").read_text()
            time.sleep(0.2)
        else:
            raise AssertionError(f"daemon not ready: {(tmp_path / 'dsrlb.log').read_text()}")
        yield daemon
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        _ip("netns", "del", lb, check=False)
        _ip("netns", "del", web, check=False)


# A target's server for the drain test: every line received on a connection is answered with the
# target's name, so one TCP connection can be kept open and show where its packets go.
ECHO_SERVER = """
import socketserver, sys
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(sys.argv[1].encode() + b" " + line)
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = daemon_threads = True
Server(("0.0.0.0", 80), Handler).serve_forever()
"""

# The client, driven line by line on stdin: `open` opens the long-lived connection, `ping` sends a line
# on it, `new` makes a fresh connection of one request, `close` ends the long one. It prints the
# answering target's name (or "closed"), or "ERR ..." on a failure.
CLIENT = """
import socket, sys
VIP = sys.argv[1]
long = None
def ask(conn):
    conn.sendall(b"hello\\n")
    return conn.makefile().readline().split()[0]
for cmd in sys.stdin:
    cmd = cmd.strip()
    try:
        if cmd == "open":
            long = socket.create_connection((VIP, 80), timeout=2)
            out = ask(long)
        elif cmd == "ping":
            out = ask(long)
        elif cmd == "new":
            with socket.create_connection((VIP, 80), timeout=2) as conn:
                out = ask(conn)
        else:
            long.close()
            out = "closed"
    except (OSError, IndexError) as err:
        out = f"ERR {err!r}"
    print(out, flush=True)
"""


@dataclass
class DsrSegment(Daemon):
    """The seed config served by the real daemon for a client, both targets up, on one DSR segment."""

    client: subprocess.Popen
    lock: threading.Lock = field(default_factory=threading.Lock)  # one command at a time

    def client_says(self, cmd: str) -> str:
        assert self.client.stdin is not None and self.client.stdout is not None
        with self.lock:
            self.client.stdin.write(cmd + "\n")
            self.client.stdin.flush()
            return self.client.stdout.readline().strip()


DRAINIDLE = 1.5  # seconds without a packet after which a flow of a draining target no longer counts


@pytest.fixture
def dsr_segment(_netns_capable: None, tmp_path: Path) -> Iterator[DsrSegment]:
    """client 172.16.1.50, balancer 172.16.1.252 (dsrlb, seed config with a short drainidle) and web1
    .100 / web2 .101 (target 1 and 2, VIP on lo, DSR ARP sysctls) on one bridge; removed afterwards."""
    conf, sock = tmp_path / "dsrlb.conf", tmp_path / "control.sock"
    conf.write_text(f"set drainidle {DRAINIDLE}\n" + SEED.read_text())
    with Topology(f"{PREFIX}{os.getpid()}-{next(_counter)}") as topo:
        for host, addr in (("client", "50"), ("balancer", "252"), ("web1", "100"), ("web2", "101")):
            topo.add_host(host)
            topo.connect(host, addrs=[f"172.16.1.{addr}/24"])
        for web in ("web1", "web2"):
            topo.addr(web, "172.16.1.10/32", "lo")
            topo.sysctl(web, {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2})
            topo.popen(web, sys.executable, "-c", ECHO_SERVER, web, stderr=subprocess.DEVNULL)
        log = tmp_path / "dsrlb.log"
        with log.open("w") as out:
            daemon = topo.popen(
                "balancer", str(DSRLB), "-s", str(sock), "run", "-c", str(conf), stdout=out, stderr=out
            )
        client = topo.popen(
            "client",
            sys.executable,
            "-c",
            CLIENT,
            "172.16.1.10",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        segment = DsrSegment(conf, sock, client)
        deadline = time.monotonic() + 20
        while not (sock.exists() and all(t["health"] == "up" and t["mac"] for t in segment.show("targets"))):
            assert daemon.poll() is None and time.monotonic() < deadline, (
                f"daemon not ready: {log.read_text()}"
            )
            time.sleep(0.2)
        yield segment
