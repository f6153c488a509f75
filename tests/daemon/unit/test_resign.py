"""A killed master's resignation: the advert left next to the control socket is sent by `dsrlb resign`
(three times, on the interface it names) and removed; nothing is sent when none is left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsrlb import resign

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="packet sockets need CAP_NET_RAW")
FRAME = bytes.fromhex("01005e000012") + bytes.fromhex("020000000001") + b"\x08\x00" + b"resign-test" * 4


def test_arm_and_disarm_leave_one_file_or_none(tmp_path: Path) -> None:
    path = resign.path_for(str(tmp_path / "control.sock"))
    resign.arm(path, "lo", FRAME)
    resign.arm(path, "lo", FRAME)  # re-armed in place, atomically
    assert [p.name for p in tmp_path.iterdir()] == ["vrrp-resign.json"]
    resign.disarm(path)
    resign.disarm(path)
    assert list(tmp_path.iterdir()) == []


def sent_on_lo(sniff: socket.socket, within: float) -> list[float]:
    """When our test frame left on lo (each frame shows twice there: outgoing and incoming)."""
    seen = []
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sniff.settimeout(left)
        try:
            frame, (_, _, pkttype, _, _) = sniff.recvfrom(2048)
        except TimeoutError:
            break
        if frame == FRAME and pkttype == socket.PACKET_OUTGOING:
            seen.append(time.monotonic())
    return seen


def lo_sniffer() -> socket.socket:
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sniff.bind(("lo", 0))
    return sniff


@needs_root
def test_resign_sends_the_advert_left_behind_and_removes_it(tmp_path: Path) -> None:
    control = str(tmp_path / "control.sock")
    resign.arm(resign.path_for(control), "lo", FRAME)
    run = [sys.executable, "-m", "dsrlb.cli", "-s", control, "resign"]
    with lo_sniffer() as sniff:
        first = subprocess.run(run, capture_output=True, text=True)
        seen = sent_on_lo(sniff, 0.3)
    again = subprocess.run(run, capture_output=True, text=True)
    assert first.returncode == 0 and "resigned as VRRP master on lo" in first.stderr
    assert len(seen) == resign.REPEAT
    assert not resign.path_for(control).exists()
    assert again.returncode == 0 and "nothing to resign" in again.stderr


def watching(daemon: subprocess.Popen, path: Path) -> subprocess.Popen:
    """The sentinel as the daemon starts it, for another process."""
    argv = [sys.executable, "-m", "dsrlb.resign", "--watch", str(daemon.pid), str(path)]
    return subprocess.Popen(argv, stderr=subprocess.PIPE)


@needs_root
def test_sentinel_resigns_the_moment_its_daemon_is_killed(tmp_path: Path) -> None:
    path = resign.path_for(str(tmp_path / "control.sock"))
    daemon = subprocess.Popen(["sleep", "30"])
    sentinel = watching(daemon, path)
    resign.arm(path, "lo", FRAME)
    time.sleep(0.5)  # the sentinel is waiting
    sentinel.send_signal(signal.SIGTERM)  # what systemd sends the rest of a service: ignored
    with lo_sniffer() as sniff:
        killed = time.monotonic()
        daemon.kill()
        seen = sent_on_lo(sniff, 1.0)
    daemon.wait()
    _, err = sentinel.communicate(timeout=5)
    assert len(seen) == resign.REPEAT, err
    assert seen[0] - killed < 0.1  # it was waiting, not starting
    assert sentinel.returncode == 0 and b"resigned" in err and not path.exists()


@needs_root
def test_sentinel_of_a_cleanly_stopped_daemon_sends_nothing(tmp_path: Path) -> None:
    path = resign.path_for(str(tmp_path / "control.sock"))
    daemon = subprocess.Popen(["sleep", "30"])
    sentinel = watching(daemon, path)
    with lo_sniffer() as sniff:
        daemon.terminate()
        seen = sent_on_lo(sniff, 0.5)
    daemon.wait()
    _, err = sentinel.communicate(timeout=5)
    assert seen == [] and b"nothing to resign" in err


def capabilities(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in status if line.startswith("Cap"))}


CAP_NET_ADMIN = 12


@needs_root
def test_sentinel_keeps_only_cap_net_raw(tmp_path: Path) -> None:
    """It only sends a frame: the daemon's CAP_NET_ADMIN (and, here as root, everything else) is dropped."""
    path = resign.path_for(str(tmp_path / "control.sock"))
    daemon = subprocess.Popen(["sleep", "30"])
    sentinel = watching(daemon, path)
    try:
        deadline = time.monotonic() + 5
        while (caps := capabilities(sentinel.pid))["CapEff"] != 1 << resign.CAP_NET_RAW:
            assert time.monotonic() < deadline, f"sentinel capabilities {caps}"
            time.sleep(0.05)
        assert (
            caps["CapPrm"] == caps["CapEff"] and caps["CapAmb"] == 0 and caps["CapInh"] & ~caps["CapEff"] == 0
        )
        assert not caps["CapEff"] & 1 << CAP_NET_ADMIN
    finally:
        daemon.kill()
        daemon.wait()
        sentinel.communicate(timeout=5)


def test_dropping_capabilities_keeps_at_most_cap_net_raw() -> None:
    """In a child, so this process keeps its own; without privileges there is nothing to drop."""
    code = "from dsrlb import resign; print(resign.keep_only_net_raw())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"
    code += "; import pathlib; print(pathlib.Path('/proc/self/status').read_text())"
    status = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    eff = int(next(line for line in status.splitlines() if line.startswith("CapEff")).split()[1], 16)
    assert eff & ~(1 << resign.CAP_NET_RAW) == 0
