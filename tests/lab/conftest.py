"""Fixtures for the lab suite: one lab for the session, in a state directory unique to the run,
always brought down (and its disks deleted) at the end, also when tests fail."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from labrun import LabRun, new_state_dir


@pytest.fixture(scope="session")
def lab() -> Iterator[LabRun]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    run = LabRun(new_state_dir("test"))
    try:
        run.lab("up")
        yield run
    finally:
        run.lab("down", "--purge", check=False)
