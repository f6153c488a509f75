"""A killed master's resignation: the advert left next to the control socket is sent by `dsrlb resign`
(three times, on the interface it names) and removed; nothing is sent when none is left."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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


@needs_root
def test_resign_sends_the_advert_left_behind_and_removes_it(tmp_path: Path) -> None:
    control = str(tmp_path / "control.sock")
    resign.arm(resign.path_for(control), "lo", FRAME)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sniff:
        sniff.bind(("lo", 0))
        sniff.settimeout(0.2)
        run = [sys.executable, "-m", "dsrlb.cli", "-s", control, "resign"]
        first = subprocess.run(run, capture_output=True, text=True)
        seen = []
        try:
            while True:
                frame, (_, _, pkttype, _, _) = sniff.recvfrom(2048)
                if frame == FRAME and pkttype == socket.PACKET_OUTGOING:  # lo shows each frame twice
                    seen.append(frame)
        except TimeoutError:
            pass
        again = subprocess.run(run, capture_output=True, text=True)
    assert first.returncode == 0 and "resigned as VRRP master on lo" in first.stderr
    assert len(seen) == resign.REPEAT
    assert not resign.path_for(control).exists()
    assert again.returncode == 0 and "nothing to resign" in again.stderr
