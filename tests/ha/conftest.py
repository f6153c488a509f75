"""Fixtures for the HA suite: a private lab (unique state directory, always torn down and purged, also
when tests fail), the balancer pair provisioned on it, and the figures report."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))  # labrun: the lab CLI driver

from hafleet import Fleet  # noqa: E402
from labrun import private_lab  # noqa: E402
from report import Report  # noqa: E402

REPORT = Path(os.environ.get("DSRLB_HA_REPORT", "/tmp/dsrlb-ha-report.txt"))


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    with private_lab("ha") as run:
        fleet = Fleet(run)
        fleet.provision()
        yield fleet


@pytest.fixture(scope="session")
def report(fleet: Fleet) -> Iterator[Report]:
    rep = Report(provisioned_by=fleet.provisioned_by)
    yield rep
    text = rep.render()
    REPORT.write_text(text)
    print(f"\n{text}\n(written to {REPORT})")
