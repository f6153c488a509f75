"""The DSR network of the seed, built from namespaces, with the daemon running the seed config.

  client 198.18.0.10-.40 --- router (198.18.0.1 | 172.16.1.254, ip_forward=1)
                                 |  LAN bridge
              balancer 172.16.1.252 (dsrlb, ip_forward=0)   web1 .100   web2 .101   (VIP .10 on lo)

The router has no route trick: it finds the VIP by ARP on the LAN, which only the balancer answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from dsrlb_tools.netns import Topology

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PREFIX = "dsrlb-it"
VIP = "172.16.1.10"
WEBS = {"web1": "172.16.1.100", "web2": "172.16.1.101"}
CLIENT_SOURCES = [f"198.18.0.{i}" for i in range(10, 41)]
PYTHON = sys.executable
DSRLB = str(Path(sys.executable).with_name("dsrlb"))

HTTP_CLIENT = """
import concurrent.futures, http.client, json, sys
vip, timeout, sources = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
def get(src):
    try:
        conn = http.client.HTTPConnection(vip, 80, timeout=timeout, source_address=(src, 0))
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read().decode().strip()
        conn.close()
        return body if resp.status == 200 else f"ERR status {resp.status}"
    except OSError as err:
        return f"ERR {err}"
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    print(json.dumps(dict(zip(sources, pool.map(get, sources)))))
"""


# Answers every GET with the host's name (argv 1), on IPv6 and IPv4 alike. Unlike `python -m http.server`
# (listen backlog 5) it does not drop SYNs of a burst of parallel clients, which would show up as client
# timeouts. With argv 2 "HTTP/1.1" a connection stays open for the next request (keep-alive).
HTTP_SERVER = """
import http.server, socket, sys
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6  # and IPv4, as mapped addresses
    request_queue_size = 256
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = sys.argv[2] if len(sys.argv) > 2 else "HTTP/1.0"
    def do_GET(self):
        body = (sys.argv[1] + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
Server(("::", 80), Handler).serve_forever()
"""


SEED = REPO / "examples" / "dsr-example.conf"  # the seed config, unchanged


class Lab:
    """The running topology plus the handles the tests need."""

    def __init__(self, topo: Topology, workdir: Path) -> None:
        self.topo = topo
        self.workdir = workdir
        self.conf = workdir / "seed.conf"
        self.sock = workdir / "control.sock"
        self.log = workdir / "dsrlb.log"
        self.webs: dict[str, subprocess.Popen[str]] = {}
        self.daemon: subprocess.Popen[str] | None = None
        self.macs: dict[str, str] = {}

    def build(self) -> None:
        self.build_edge()
        self.add_balancer("balancer", "172.16.1.252")
        self.build_targets()
        self.macs = {host: self.topo.mac(host) for host in ("router", "balancer", *WEBS)}

    def build_edge(self) -> None:
        """The router between the LAN and the client, and the client with all its source addresses."""
        t = self.topo
        for host in ("router", "client"):
            t.add_host(host)
        t.connect("router", addrs=["172.16.1.254/24"])
        t.link("router", "eth1", "client", "eth0", ["198.18.0.1/24"], ["198.18.0.10/24"])
        for src in CLIENT_SOURCES[1:]:
            t.addr("client", f"{src}/24")
        t.route("client", "default", "via", "198.18.0.1")
        t.sysctl("router", {"net.ipv4.ip_forward": 1})

    def add_balancer(self, host: str, real: str) -> None:
        t = self.topo
        t.add_host(host)
        t.connect(host, addrs=[f"{real}/24"])
        t.route(host, "default", "via", "172.16.1.254")
        t.sysctl(host, {"net.ipv4.ip_forward": 0})

    def build_targets(self) -> None:
        """The web servers, each with the VIP on lo and the ARP sysctls of a DSR target."""
        t = self.topo
        for name, addr in WEBS.items():
            t.add_host(name)
            t.connect(name, addrs=[f"{addr}/24"])
            t.addr(name, f"{VIP}/32", "lo")
            t.route(name, "default", "via", "172.16.1.254")
            t.sysctl(name, {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2})
            self.start_web(name)

    def start_web(self, name: str) -> None:
        self.webs[name] = self.topo.popen(
            name, PYTHON, "-c", HTTP_SERVER, name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop_web(self, name: str) -> None:
        self.topo.stop(self.webs.pop(name))

    def config_text(self) -> str:
        """What the daemon runs: the seed config, unchanged (a subclass may add to it)."""
        return SEED.read_text()

    def start_daemon(self) -> None:
        self.conf.write_text(self.config_text())
        self.daemon = self.run_daemon("balancer", self.conf, self.sock, self.log)
        self.wait_targets({1: "up", 2: "up"}, timeout=20)

    def run_daemon(self, host: str, conf: Path, sock: Path, log: Path) -> subprocess.Popen[str]:
        """`dsrlb run` in `host` with its control socket at `sock`, stdout and stderr to `log`."""
        with log.open("w") as out:
            return self.topo.popen(
                host, DSRLB, "-s", str(sock), "run", "-c", str(conf), stdout=out, stderr=subprocess.STDOUT
            )

    def daemon_log(self) -> str:
        return self.log.read_text()[-3000:]

    def ctl(self, *args: str, sock: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The `dsrlb` client against this lab's control socket (or another daemon's `sock`)."""
        return subprocess.run(
            [DSRLB, "-s", str(sock or self.sock), *args], capture_output=True, text=True, timeout=15
        )

    def show(self, what: str, sock: Path | None = None) -> Any:
        res = self.ctl("show", what, "--json", sock=sock)
        assert res.returncode == 0, f"show {what} failed: {res.stderr}\n{self.daemon_log()}"
        return json.loads(res.stdout)

    def health(self) -> dict[int, str]:
        """Target id -> "up"/"down", counting a target without a resolved MAC as not ready."""
        return {t["id"]: t["health"] if t["mac"] else "unresolved" for t in self.show("targets")}

    def wait_targets(self, want: dict[int, str], timeout: float) -> float:
        """Wait until the targets have the wanted health; returns the seconds it took."""
        start = time.monotonic()
        while True:
            assert self.daemon is not None and self.daemon.poll() is None, f"dsrlb died:\n{self.daemon_log()}"
            # Until the control socket exists, the daemon is simply not ready yet.
            state = self.health() if self.sock.exists() else {}
            if all(state.get(tid) == h for tid, h in want.items()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                pytest.fail(f"targets {state}, wanted {want} within {timeout} s\n{self.daemon_log()}")
            time.sleep(0.25)

    def http(self, sources: list[str], timeout: float = 1.0) -> dict[str, str]:
        """GET http://VIP/ once from each source address (in parallel); source -> body or "ERR ..."."""
        res = self.topo.run("client", PYTHON, "-c", HTTP_CLIENT, VIP, str(timeout), *sources, timeout=60)
        return json.loads(res.stdout)

    def python(self, host: str, code: str, *args: str, timeout: float = 60) -> str:
        """Run a Python snippet inside a host (scapy probes) and return its stdout."""
        res = self.topo.run(host, PYTHON, "-c", textwrap.dedent(code), *args, timeout=timeout, check=False)
        assert res.returncode == 0, f"probe in {host} failed: {res.stderr[-2000:]}"
        return res.stdout

    def python_bg(self, host: str, code: str, *args: str) -> subprocess.Popen[str]:
        return self.topo.popen(
            host,
            PYTHON,
            "-c",
            textwrap.dedent(code),
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


class PairLab(Lab):
    """Two balancers, each with its own config, control socket and log in the work directory, started
    and stopped by name; `config(name)` is the subclass's."""

    def __init__(self, topo: Topology, workdir: Path, access: str) -> None:
        super().__init__(topo, workdir)
        self.daemons: dict[str, subprocess.Popen[str]] = {}
        self.access = access

    def config(self, name: str) -> str:
        raise NotImplementedError

    def paths(self, name: str) -> tuple[Path, Path, Path]:
        """A directory per balancer, as on real hosts: the resignation file lives next to the control
        socket (resign.path_for), and one shared by both would be removed by the other's clean stop."""
        (self.workdir / name).mkdir(exist_ok=True)
        return tuple(self.workdir / name / f"{name}.{ext}" for ext in ("conf", "sock", "log"))  # type: ignore[return-value]

    def start(self, name: str) -> None:
        conf, sock, log = self.paths(name)
        conf.write_text(self.config(name))
        self.daemons[name] = self.run_daemon(name, conf, sock, log)

    def stop(self, name: str) -> None:
        """A clean stop: with VRRP, the master hands over first."""
        assert self.topo.stop(self.daemons.pop(name), timeout=10) == 0, self.log_of(name)

    def log_of(self, name: str) -> str:
        return self.paths(name)[2].read_text()[-3000:]

    def view(self, name: str, what: str) -> Any:
        res = self.ctl("show", what, "--json", sock=self.paths(name)[1])
        assert res.returncode == 0, f"{name}: show {what}: {res.stderr}\n{self.log_of(name)}"
        return json.loads(res.stdout)

    def wait(self, name: str, what: str, ok: Any, timeout: float = 20) -> Any:
        """`show what` of `name` once `ok(view)` holds (the daemon must stay alive meanwhile)."""
        end = time.monotonic() + timeout
        while True:
            proc = self.daemons.get(name)
            assert proc is not None and proc.poll() is None, f"{name} died:\n{self.log_of(name)}"
            found = self.view(name, what) if self.paths(name)[1].exists() else None
            if found is not None and ok(found):
                return found
            assert time.monotonic() < end, f"{name}: show {what} = {found}\n{self.log_of(name)}"
            time.sleep(0.2)
