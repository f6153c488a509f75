"""Drives a lab under test through the real `dsrlb lab` CLI and the Ansible CLIs of the venv."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dsrlb_tools.lab.lab import Lab

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class LabRun:
    """A lab under test, driven through the real `dsrlb lab` CLI and `ansible`."""

    state_dir: Path

    def lab(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd, *rest = args
        proc = subprocess.run(
            [str(BIN / "dsrlb"), "lab", cmd, "--state-dir", str(self.state_dir), *rest],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"dsrlb lab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def exec(self, host: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab("exec", host, "--", *cmd, check=check)

    def status(self) -> dict[str, dict]:
        return {h["name"]: h for h in json.loads(self.lab("status", "--json").stdout)["hosts"]}

    def ansible_cli(
        self, tool: str, args: list[str], extra_env: dict[str, str]
    ) -> subprocess.CompletedProcess:
        """Run an Ansible CLI from the repository (its ansible.cfg) against this lab: inventory/lab unless
        the arguments or extra_env name another (the repository's ansible.cfg sets no inventory)."""
        env = {
            **os.environ,
            "DSRLB_LAB_STATE_DIR": str(self.state_dir),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_INVENTORY": str(REPO / "inventory" / "lab"),
            **extra_env,
        }
        return subprocess.run(
            [str(BIN / tool), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )

    def adhoc(self, pattern: str, module: str, args: str = "") -> dict[str, dict]:
        """Results per host of an ad-hoc module run (via the builtin tree callback); all must succeed."""
        with tempfile.TemporaryDirectory() as tree:
            env = {
                "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree",
                "ANSIBLE_CALLBACK_TREE_DIR": tree,
            }
            proc = self.ansible_cli("ansible", [pattern, "-m", module, *(["-a", args] if args else [])], env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return {p.name: json.loads(p.read_text()) for p in Path(tree).iterdir()}

    def playbook(self, path: str) -> subprocess.CompletedProcess:
        proc = self.ansible_cli("ansible-playbook", [path], {})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc


def lab_processes(lab: Lab) -> set[int]:
    """Live processes in the lab's cgroup, as the kernel reports them in /proc (not the lab's records)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            groups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if f"::/{lab.prefix}/" in groups:
            found.add(int(proc.name))
    return found


def netns(prefix: str) -> list[str]:
    """Named network namespaces starting with ``prefix`` (a lab's switches)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def new_state_dir(tag: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"dsrlab-{tag}-", dir="/tmp"))


@contextlib.contextmanager
def private_lab(tag: str, topology: str | None = None) -> Iterator[LabRun]:
    """A booted lab (the default topology, or ``topology``: a packaged name or a file) in a state
    directory unique to the run, always brought down with its disks deleted, also when tests fail;
    skips the tests that need it when not root."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    run = LabRun(new_state_dir(tag))
    try:
        run.lab("up", *(["--topology", topology] if topology else []))
        yield run
    finally:
        run.lab("down", "--purge", check=False)
