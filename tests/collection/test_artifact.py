"""The collection as a user gets it: the Galaxy artifact built by scripts/collection-build, installed with
`ansible-galaxy collection install` into an empty collections path, and used from a directory outside
the checkout with an ansible.cfg that names only that path (no checkout, no ~/.ansible collections).

Without root: the artifact's file list, the daemon wheel inside it, and the balancer role's choice of
what to install (tasks/source.yml). As root: the fleet of a private lab deployed over SSH from the
installed collection, with inventory/example as shipped (user `deploy` with sudo, keys made for the
run, host keys checked), traffic through the VIP, and `dsrlb show vrrp` in a balancer's login shell.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
WHEEL = "roles/balancer/files/dsrlb-*-py3-none-any.whl"
# Nothing of these may be in the artifact: build and tool leftovers, the daemon's sources (it ships as
# the wheel), the lab and its inventory and playbooks, tests other than ansible-test's units.
LEFTOVERS = [
    "build/*",
    "dist/*",
    "*.egg-info*",
    ".venv/*",
    "*__pycache__*",
    "*.pyc",
    ".ansible/*",
    ".pytest_cache/*",
    ".ruff_cache/*",
    "src/*",
    "tools/*",
    "molecule/*",
    "collections/*",
    "benchmarks/*",
    "scripts/*",
    "inventory/lab*",
    "playbooks/lab-web.yml",
    "pyproject.toml",
    "Makefile",
    "ansible.cfg",
    "tests/*",
]
ALLOWED_TESTS = "tests/unit*"


@dataclass
class Installed:
    """The artifact installed into a collections path of its own, and a working directory outside the
    checkout whose ansible.cfg names only that path."""

    artifact: Path
    collections: Path
    cwd: Path

    @property
    def root(self) -> Path:
        return self.collections / "ansible_collections" / "dsrlb" / "fleet"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        return {
            **env,
            "ANSIBLE_CONFIG": str(self.cwd / "ansible.cfg"),
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
            "ANSIBLE_NOCOLOR": "1",
            **extra,
        }

    def run(self, tool: str, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / tool), *args],
            cwd=self.cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifact")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "collection-build"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out, proc.stdout
    return path


@pytest.fixture(scope="module")
def installed(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("user")
    inst = Installed(artifact, base / "collections", base / "work")
    inst.collections.mkdir()
    inst.cwd.mkdir()
    (inst.cwd / "ansible.cfg").write_text(
        "[defaults]\n"
        f"collections_path = {inst.collections}\n"
        "collections_scan_sys_path = False\n"
        "interpreter_python = auto_silent\n"
        "retry_files_enabled = False\n"
    )
    proc = inst.run("ansible-galaxy", "collection", "install", "-p", str(inst.collections), str(artifact))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (inst.collections / "ansible_collections").iterdir()) == ["dsrlb"]
    assert (inst.root / "MANIFEST.json").is_file()
    return inst


def test_the_artifact_ships_the_daemon_wheel_and_no_leftovers(artifact: Path) -> None:
    with tarfile.open(artifact) as tar:
        names = [m.name.removeprefix("./") for m in tar.getmembers()]
        manifest = json.load(tar.extractfile("MANIFEST.json"))["collection_info"]  # type: ignore[arg-type]
    leaked = [
        n
        for n in names
        if any(fnmatch.fnmatch(n, pattern) or n == pattern.rstrip("/*") for pattern in LEFTOVERS)
        and not fnmatch.fnmatch(n, ALLOWED_TESTS)
        and n != "tests"
    ]
    assert not leaked, f"{artifact.name} carries {leaked}"
    assert len(fnmatch.filter(names, WHEEL)) == 1, names
    for required in ["LICENSE", "README.md", "meta/runtime.yml", "changelogs/changelog.yaml"]:
        assert required in names
    assert "roles/balancer/tasks/source.yml" in names
    assert manifest["license"] == ["GPL-3.0-or-later"]
    assert "example.invalid" not in json.dumps(manifest)
    assert "GNU GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()


def test_the_wheel_is_the_pure_python_daemon_alone(installed: Installed) -> None:
    (wheel,) = installed.root.glob(WHEEL)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
        entry_points = zf.read(meta.replace("METADATA", "entry_points.txt")).decode()
        wheel_info = zf.read(meta.replace("METADATA", "WHEEL")).decode()
    assert "dsrlb/cli.py" in names and "dsrlb/__init__.py" in names
    assert {n.split("/")[0] for n in names} == {"dsrlb", meta.split("/")[0]}, "only the daemon's package"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "Requires-Dist" not in metadata, "the daemon needs nothing but the standard library"
    assert "Tag: py3-none-any" in wheel_info
    assert re.search(r"^dsrlb = dsrlb\.cli:main$", entry_points, re.MULTILINE)


CHOOSE = """\
- name: What the balancer role installs the daemon from
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Choose
      ansible.builtin.include_role:
        name: dsrlb.fleet.balancer
        tasks_from: source
    - name: Show
      ansible.builtin.debug:
        msg: "CHOSEN {{ __dsrlb_install | to_json }}"
"""


def choose(inst: Installed, *extra: str) -> tuple[dict | None, str]:
    (inst.cwd / "choose.yml").write_text(CHOOSE)
    proc = inst.run("ansible-playbook", "-i", "localhost,", "-c", "local", "choose.yml", *extra)
    found = re.search(r'"msg": "CHOSEN (.*)"$', proc.stdout, re.MULTILINE)
    chosen = json.loads(found[1].encode().decode("unicode_escape")) if found else None
    assert (chosen is not None) == (proc.returncode == 0), proc.stdout + proc.stderr
    return chosen, proc.stdout + proc.stderr


def test_without_a_checkout_the_role_installs_the_collections_wheel(installed: Installed) -> None:
    chosen, out = choose(installed)
    (wheel,) = installed.root.glob(WHEEL)
    assert chosen == {"from": "wheel", "path": str(wheel)}, out


def test_dsrlb_install_from_names_a_wheel_or_a_pip_requirement(installed: Installed) -> None:
    (wheel,) = installed.root.glob(WHEEL)
    chosen, out = choose(installed, "-e", f"dsrlb_install_from={wheel}")
    assert chosen == {"from": "wheel", "path": str(wheel)}, out
    chosen, out = choose(installed, "-e", "dsrlb_install_from=dsrlb==0.1.0")
    assert chosen == {"from": "pip", "requirement": "dsrlb==0.1.0"}, out
    chosen, out = choose(installed, "-e", "dsrlb_install_from=/nowhere/dsrlb-0.1.0-py3-none-any.whl")
    assert chosen is None and "no such wheel file on the controller" in out, out
    chosen, out = choose(installed, "-e", "dsrlb_install_from=checkout")
    assert chosen is None and "no dsrlb source checkout (no pyproject.toml)" in out, out
    chosen, out = choose(installed, "-e", f"dsrlb_source_dir={REPO}")
    assert chosen == {"from": "checkout", "dir": str(REPO)}, out


def test_with_nothing_to_install_the_role_fails_saying_what_to_set(
    installed: Installed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same collection without its wheel (as `ansible-galaxy collection build` alone made it)."""
    bare = tmp_path_factory.mktemp("bare")
    shutil.copytree(installed.collections, bare / "collections", symlinks=True)
    inst = Installed(installed.artifact, bare / "collections", bare / "work")
    inst.cwd.mkdir()
    (inst.cwd / "ansible.cfg").write_text(
        f"[defaults]\ncollections_path = {inst.collections}\ncollections_scan_sys_path = False\n"
    )
    for wheel in inst.root.glob(WHEEL):
        wheel.unlink()
    chosen, out = choose(inst)
    assert chosen is None
    assert "nothing to install the dsrlb daemon from" in out, out
    assert "Set dsrlb_install_from to a dsrlb wheel on the controller" in out, out


# --- as root: the fleet deployed over SSH from the installed collection, as on real hosts ------------

# The operator's machine is the lab's client host: Ansible runs in its network namespace (with this
# machine's files, so the venv's ansible-core wherever the checkout is) and reaches every other host
# through the router, over SSH, as the user `deploy` with sudo, like inventory/example describes.
CONTROLLER = "client"
CLIENT_ADDRESS = "198.18.0.10"
SSH_HOSTS = ("lb1", "lb2", "web1", "web2", "client")

# What a provisioned Debian host has before the collection runs: sshd with its own host keys (made now,
# for this run), a user `deploy` who logs in with the run's key and may sudo without a password.
PROVISION = r"""
set -eu
useradd --create-home --shell /bin/bash deploy
install -d -m 700 -o deploy -g deploy /home/deploy/.ssh
printf '%s\n' "$1" > /home/deploy/.ssh/authorized_keys
chown deploy:deploy /home/deploy/.ssh/authorized_keys
echo 'deploy ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deploy
chmod 440 /etc/sudoers.d/deploy
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -A
systemctl enable --now ssh >/dev/null 2>&1
cat /etc/ssh/ssh_host_ed25519_key.pub
"""


@dataclass
class Operator:
    """The operator's working directory: the run's SSH key, known_hosts, inventory and ansible.cfg."""

    dir: Path
    installed: Installed
    lab: object

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    def ssh_options(self) -> list[str]:
        return [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}",
            "-o", "ConnectTimeout=10",
            "-i", str(self.key),
        ]  # fmt: skip

    def in_controller(self, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run ``argv`` on the operator's machine (the client host's network)."""
        return self.lab.lab("exec", "--net", CONTROLLER, "--", *argv, check=False, timeout=timeout)  # type: ignore[attr-defined]

    def playbook(self, *args: str) -> subprocess.CompletedProcess:
        env = self.installed.env(ANSIBLE_CONFIG=str(self.dir / "ansible.cfg"))
        return self.in_controller(
            "env", "-i", *[f"{k}={v}" for k, v in env.items()],
            str(BIN / "ansible-playbook"), "-i", str(self.dir / "inventory"), *args,
        )  # fmt: skip

    def ssh(self, address: str, command: str) -> subprocess.CompletedProcess:
        return self.in_controller("ssh", *self.ssh_options(), f"deploy@{address}", command, timeout=60)


def provision(lab: object, operator_dir: Path) -> None:
    """sshd, the user `deploy` and the run's key on every host; their host keys into known_hosts."""
    key = operator_dir / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dsrlb-test", "-f", str(key)], check=True
    )
    public = key.with_suffix(".pub").read_text().strip()
    status = lab.status()  # type: ignore[attr-defined]
    known = []
    for host in SSH_HOSTS:
        proc = lab.exec(host, "sh", "-c", PROVISION, "provision", public)  # type: ignore[attr-defined]
        address = next(iter(status[host]["addresses"].values()))[0].split("/")[0]
        known.append(f"{address} {proc.stdout.strip().splitlines()[-1]}")
    (operator_dir / "known_hosts").write_text("\n".join(known) + "\n")


@pytest.fixture(scope="module")
def operator(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    sys.path.insert(0, str(REPO / "tests" / "lab"))
    from labrun import private_lab

    base = tmp_path_factory.mktemp("operator")
    # The lab's web servers come first, through the lab's own inventory (this is the lab, not the user).
    shutil.copytree(REPO / "inventory" / "lab", installed.cwd / "lab-inventory", dirs_exist_ok=True)
    shutil.copy(REPO / "playbooks" / "lab-web.yml", installed.cwd / "lab-web.yml")
    # The user's inventory: inventory/example as shipped, plus the client host in group dsr_clients so
    # that verify.yml checks HTTP through the VIP from it.
    shutil.copytree(REPO / "inventory" / "example", base / "inventory")
    (base / "inventory" / "clients.yml").write_text(
        f"dsr_clients:\n  hosts:\n    client:\n      ansible_host: {CLIENT_ADDRESS}\n"
    )
    (base / "ansible.cfg").write_text(
        "[defaults]\n"
        f"collections_path = {installed.collections}\n"
        "collections_scan_sys_path = False\n"
        "interpreter_python = auto_silent\n"
        "retry_files_enabled = False\n"
        f"private_key_file = {base / 'id_ed25519'}\n"
        "[ssh_connection]\n"
        f"ssh_args = -o UserKnownHostsFile={base / 'known_hosts'} -o StrictHostKeyChecking=yes "
        "-o ControlMaster=auto -o ControlPersist=60s\n"
        f"control_path_dir = {base / 'cp'}\n"
        "pipelining = True\n"
    )
    with private_lab("artifact") as lab:
        env = {"DSRLB_LAB_STATE_DIR": str(lab.state_dir)}
        web = installed.run("ansible-playbook", "-i", "lab-inventory", "lab-web.yml", **env)
        assert web.returncode == 0, web.stdout + web.stderr
        provision(lab, base)
        yield Operator(base, installed, lab)


@pytest.mark.root
def test_the_fleet_deploys_over_ssh_from_the_installed_collection(operator: Operator) -> None:
    inst, lab = operator.installed, operator.lab
    proc = operator.playbook("dsrlb.fleet.site")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(r"^ok: \[client\]", out, re.MULTILINE), "verify.yml checked HTTP from dsr_clients"
    for task in ("Build the dsrlb wheel on the controller", "Copy the dsrlb wheel to the balancer"):
        blocks = re.findall(rf"TASK \[dsrlb\.fleet\.balancer : {task}[^\n]*\n(.*?)\n\n", out, re.DOTALL)
        assert blocks, f"no task {task!r} in the output"
        ran = [line for b in blocks for line in b.splitlines() if not line.startswith("skipping:")]
        if task.startswith("Build"):
            assert not ran, f"no checkout, so nothing is built: {ran}"
        else:
            assert ran, "the collection's wheel is copied to the balancers"

    (wheel,) = inst.root.glob(WHEEL)
    digest = subprocess.run(["sha256sum", str(wheel)], capture_output=True, text=True).stdout.split()[0]
    states = {}
    for lb, address in (("lb1", "172.16.1.252"), ("lb2", "172.16.1.251")):
        shipped = lab.exec(lb, "sha256sum", f"/opt/dsrlb/wheelhouse/{wheel.name}").stdout  # type: ignore[attr-defined]
        assert shipped.split()[0] == digest, "the balancer got the collection's wheel"
        # The operator's view: log in to the balancer and ask the daemon.
        shell = operator.ssh(address, "sudo dsrlb show vrrp --json")
        assert shell.returncode == 0, shell.stdout + shell.stderr
        states[lb] = json.loads(shell.stdout)["state"]
    assert sorted(states.values()) == ["backup", "master"], states
    got = lab.exec("client", "curl", "-sS", "--max-time", "5", "http://172.16.1.10/")  # type: ignore[attr-defined]
    assert got.stdout.strip() in {"web1", "web2"}

    again = operator.playbook("dsrlb.fleet.balancers")
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"lb1\s*: ok=\d+\s+changed=0\s", again.stdout), again.stdout
