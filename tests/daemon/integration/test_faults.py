"""Faults on a live daemon: a link flap is survived in place, a dead packet loop ends the process (so
systemd restarts it and `dsrlb resign` runs), a config the daemon cannot run is refused whole."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from dsr_lab import CLIENT_SOURCES, DSRLB, PYTHON, Lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="integration tests need root: they create network namespaces"
    ),
]

SOURCES = CLIENT_SOURCES[:4]

# The daemon with a bug in its packet path: the first ping to an address it answers for raises.
BROKEN_DAEMON = """
import sys
from dsrlb.dataplane import forwarder

def icmp_echo_reply(*args):
    raise RuntimeError("injected fault in the packet path")

forwarder.icmp_echo_reply = icmp_echo_reply
from dsrlb.daemon import run
sys.exit(run(sys.argv[1], control=sys.argv[2]))
"""


def failures(results: dict[str, str]) -> dict[str, str]:
    return {src: body for src, body in results.items() if body.startswith("ERR")}


def test_link_flap_is_survived_by_the_same_process(lab: Lab) -> None:
    assert lab.daemon is not None
    pid = lab.daemon.pid
    assert not failures(lab.http(SOURCES))
    lab.topo.run("balancer", "ip", "link", "set", "eth0", "down")
    try:
        time.sleep(1)
    finally:
        lab.topo.run("balancer", "ip", "link", "set", "eth0", "up")
        up = time.monotonic()
        lab.topo.route("balancer", "default", "via", "172.16.1.254")  # went with the link
    while failures(results := lab.http(SOURCES, timeout=0.5)):
        assert time.monotonic() - up < 10, (
            f"no answer 10 s after the link came back: {results}\n{lab.daemon_log()}"
        )
    print(f"link flap: first HTTP answer {time.monotonic() - up:.2f} s after link up")
    assert lab.daemon.poll() is None and lab.daemon.pid == pid, lab.daemon_log()
    assert lab.show("stats")["link_down"] >= 1  # type: ignore[index]
    assert not failures(lab.http(CLIENT_SOURCES)), "every client, not just the first ones"


def with_servers(seed: str, count: int) -> str:
    """The seed with `count` more servers, each on its own VIP."""
    return seed + "".join(
        f"server    {i} {{\n          ipaddr 10.1.{i // 200}.{i % 200 + 1}\n          port 80\n"
        f"          protocol tcp\n          targets 1,2\n}}\nregister  server {i}\nenable    server {i}\n"
        for i in range(2, count + 2)
    )


def test_config_the_daemon_cannot_run_is_refused_whole(lab: Lab) -> None:
    seed = lab.conf.read_text()
    generation = lab.show("stats")["generation"]  # type: ignore[index]
    try:
        lab.conf.write_text(with_servers(seed, 250))  # 251 VIPs and virt: the packet filter holds 250
        located = re.compile(rf"^{re.escape(str(lab.conf))}:\d+:\d+: server \d+: .*at most 250", re.M)
        check = subprocess.run([DSRLB, "check", str(lab.conf)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 1 and located.search(check.stderr), check
        res = lab.ctl("reload")
        assert res.returncode == 1 and located.search(res.stderr), res
        assert lab.daemon is not None and lab.daemon.poll() is None, lab.daemon_log()
        assert lab.show("stats")["generation"] == generation  # type: ignore[index]
        assert [s["id"] for s in lab.show("servers")] == [1]  # type: ignore[index, union-attr]
        assert not failures(lab.http(SOURCES))
    finally:
        lab.conf.write_text(seed)


def test_dead_packet_loop_ends_the_process_non_zero(lab: Lab) -> None:
    assert lab.daemon is not None
    lab.topo.stop(lab.daemon)
    log = lab.workdir / "broken.log"
    try:
        with log.open("w") as out:
            proc = lab.topo.popen(
                "balancer",
                PYTHON,
                "-c",
                BROKEN_DAEMON,
                str(lab.conf),
                str(lab.workdir / "broken.sock"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 10
            while "forwarding on eth0" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            lab.topo.run("router", "ping", "-c", "1", "-W", "1", "172.16.1.10", check=False)
            proc.wait(5)  # a few seconds at most; still running after them fails the test
            assert proc.returncode == 1, log.read_text()
            assert "injected fault in the packet path" in log.read_text()
        finally:
            lab.topo.stop(proc)
    finally:
        lab.start_daemon()  # the later tests' daemon


def test_a_second_daemon_or_a_taken_metrics_address_is_one_line_and_spares_the_first(lab: Lab) -> None:
    """The same control socket: refused before the interface or the kernel table is touched. A free
    socket but the first daemon's metrics address: refused once it is bound, and it cleans up."""
    assert lab.daemon is not None
    generation = lab.show("stats")["generation"]  # type: ignore[index]
    second = lab.workdir / "second.sock"
    for sock, why in ((lab.sock, "another dsrlb is already listening"), (second, "address already in use")):
        log = lab.workdir / "second.log"
        proc = lab.run_daemon("balancer", lab.conf, sock, log)
        assert proc.wait(15) == 1, log.read_text()
        lines = [line for line in log.read_text().splitlines() if line.startswith("dsrlb: ")]
        assert len(lines) == 1 and why in lines[0].lower(), log.read_text()
        assert "Traceback" not in log.read_text()
        assert lab.daemon.poll() is None, lab.daemon_log()
        assert lab.show("stats")["generation"] == generation  # type: ignore[index]
        assert not failures(lab.http(SOURCES))
    assert not second.exists()
