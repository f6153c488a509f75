"""One converged lab fleet for the module: `dsrlb lab up` in a state directory unique to the run, the lab
web service and site.yml applied, and always `lab down --purge` at the end, also when tests fail."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
from labrun import LabRun, private_lab  # noqa: E402


@pytest.fixture(scope="module")
def fleet() -> Iterator[LabRun]:
    with private_lab("fleet") as run:
        run.playbook("playbooks/lab-web.yml")
        run.playbook("site.yml")
        yield run
