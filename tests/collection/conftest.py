"""Run the collection's modules for real through `ansible localhost -c local`.

loopback_alias and arp_sysctl run inside a throwaway network namespace (name prefix `dsrlbct-<pid>-`),
so they change real kernel state without touching the host's own addresses or sysctls. Namespaces left
behind by a crashed earlier run (whose pid is gone) are removed at the start.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / ".venv" / "bin" / "ansible"
PREFIX = "dsrlbct-"
_counter = itertools.count()

sys.path.insert(0, str(ROOT / "collections"))
from ansible_collections.dsrlb.fleet.tests.unit.fake_control import FakeControl  # noqa: E402


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
        match = re.match(rf"^{PREFIX}(\d+)-\d+$", name)
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


@pytest.fixture
def control() -> Iterator[FakeControl]:
    """A fake daemon behind a real control socket, until the daemon itself can run in the tests."""
    tmpdir = tempfile.mkdtemp(prefix="dsrlbct-")
    try:
        with FakeControl(os.path.join(tmpdir, "control.sock")) as server:
            yield server
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
