"""The roles' lists of balancing methods (and the other words they validate against) are the daemon's
`src/dsrlb/vocabulary.py`: the methods `access nftables` serves (`STATELESS_METHODS`), every method
(`METHODS`), the protocols, health checks and data planes. The roles keep their own copies in YAML (a
role cannot import dsrlb); they are read here from the files the role reads, as Ansible reads them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dsrlb.vocabulary import ACCESS, HEALTH_CHECKS, METHODS, PROTOCOLS, STATELESS_METHODS

ROOT = Path(__file__).resolve().parents[2]
BALANCER = ROOT / "roles/balancer"
TARGET = ROOT / "roles/target"


def load(path: Path):
    return yaml.safe_load(path.read_text())


def server_options(role: Path) -> dict:
    """The options of `dsrlb_servers` items in the role's argument spec (meta/argument_specs.yml)."""
    spec = load(role / "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    return spec["dsrlb_servers"]["options"]


def validate_task(name_part: str) -> dict:
    """The task of the balancer's tasks/validate.yml whose name contains `name_part`."""
    tasks = [t for t in load(BALANCER / "tasks/validate.yml") if name_part in t.get("name", "")]
    assert len(tasks) == 1, f"roles/balancer/tasks/validate.yml: no single task named '...{name_part}...'"
    return tasks[0]


def test_kernel_methods_are_the_daemons_stateless_methods():
    """`__dsrlb_kernel_methods` (vars/main.yml) is what validate.yml lets through with access nftables."""
    kernel = load(BALANCER / "vars/main.yml")["__dsrlb_kernel_methods"]
    assert kernel == list(STATELESS_METHODS)


def test_validate_checks_methods_against_the_kernel_methods():
    task = validate_task("method works with dsrlb_access nftables")
    assert "__dsrlb_kernel_methods" in task["vars"]["__dsrlb_kernel_unfit"]
    assert task["when"] == "dsrlb_access == 'nftables'"


@pytest.mark.parametrize("role", [BALANCER, TARGET], ids=["balancer", "target"])
def test_method_choices_are_the_daemons_methods(role):
    assert server_options(role)["method"]["choices"] == list(METHODS)


@pytest.mark.parametrize("role", [BALANCER, TARGET], ids=["balancer", "target"])
def test_protocol_choices_are_the_daemons_protocols(role):
    assert server_options(role)["protocol"]["choices"] == list(PROTOCOLS)


def test_health_check_choices_are_the_daemons_checks():
    health = server_options(BALANCER)["health"]["options"]["type"]
    assert health["choices"] == list(HEALTH_CHECKS)


def test_access_modes_are_the_daemons():
    """validate.yml's `dsrlb_access in [...]` and the default are the daemon's access modes."""
    that = validate_task("dsrlb_access is nftables or raw")["ansible.builtin.assert"]["that"]
    found = re.search(r"dsrlb_access in (\[[^\]]*\])", that)
    assert found, f"no `dsrlb_access in [...]` in {that!r}"
    assert sorted(yaml.safe_load(found.group(1))) == sorted(ACCESS)
    assert load(BALANCER / "defaults/main.yml")["dsrlb_access"] in ACCESS
