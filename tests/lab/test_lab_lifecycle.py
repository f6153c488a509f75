"""A lab of its own: `up` after everything was killed with SIGKILL mid-boot, and a `down` that
leaves no namespace, mount, cgroup or process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labrun import BIN, LabRun, lab_processes, netns, new_state_dir

from dsrlb_tools.lab.lab import Lab

pytestmark = pytest.mark.root


@pytest.fixture
def own_lab() -> Iterator[LabRun]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    run = LabRun(new_state_dir("life"))
    try:
        yield run
    finally:
        run.lab("down", "--purge", check=False)


def test_up_after_kill9_and_a_clean_down(own_lab: LabRun) -> None:
    lab = Lab(own_lab.state_dir)
    starting = subprocess.Popen(
        [str(BIN / "dsrlb"), "lab", "up", "--state-dir", str(own_lab.state_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not lab_processes(lab) and time.monotonic() < deadline:  # some hosts are mid-boot
        time.sleep(0.05)
    time.sleep(0.3)
    starting.kill()
    starting.wait()
    victims = lab_processes(lab)
    assert victims, "the interrupted up had started no host"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # a pre-init may exit on its own meanwhile
            os.kill(pid, signal.SIGKILL)

    up = own_lab.lab("up")
    assert "running" in up.stdout
    status = own_lab.status()
    assert {h["state"] for h in status.values()} == {"running"}
    assert own_lab.exec("client", "ping", "-c1", "-W2", "172.16.1.100").returncode == 0

    own_lab.lab("down")
    deadline = time.monotonic() + 5
    while lab_processes(lab) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not lab_processes(lab)
    for host in status.values():  # gone, or a zombie waiting for the machine's init to reap it
        state = Path(f"/proc/{host['pid']}/stat")
        assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    assert not netns(lab.prefix)
    assert str(own_lab.state_dir) not in Path("/proc/self/mountinfo").read_text()
    assert not lab.cgroup_dir().exists()
    assert (own_lab.state_dir / "hosts" / "web1" / "upper").is_dir()  # disks stay until --purge

    own_lab.lab("down")  # idempotent
    refused = own_lab.ansible_cli("ansible", ["web1", "-m", "ansible.builtin.ping"], {})
    assert refused.returncode != 0
    assert "lab host web1 is not running: dsrlb lab up" in refused.stdout + refused.stderr
    own_lab.lab("down", "--purge")
    assert not own_lab.state_dir.exists()
