"""Fixture: the seed's DSR network in namespaces with dsrlb running the seed config (see dsr_lab)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from dsr_lab import PREFIX, Lab

from dsrlb_tools.netns import Topology


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root: they create network namespaces")
    with Topology(PREFIX) as topo:
        lab = Lab(topo, tmp_path_factory.mktemp("dsrlb-it"))
        lab.build()
        lab.start_daemon()
        yield lab
