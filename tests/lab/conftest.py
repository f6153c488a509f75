"""Fixtures for the lab suite: one lab for the session, in a state directory unique to the run,
always brought down (and its disks deleted) at the end, also when tests fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from labrun import LabRun, private_lab


@pytest.fixture(scope="session")
def lab() -> Iterator[LabRun]:
    with private_lab("test") as run:
        yield run
