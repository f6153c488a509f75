"""Split brain: adverts between the balancers are lost for a few seconds, then flow again."""

from __future__ import annotations

import json
import time

import pytest
from hafleet import BALANCERS, DSRLB, TARGETS, VIP, Fleet

pytestmark = pytest.mark.root


def test_one_master_remains_after_the_split_heals(fleet: Fleet) -> None:
    fleet.use(DSRLB, DSRLB)
    try:
        for host in BALANCERS:
            fleet.block_adverts(host, True)
        fleet.wait("both balancers master", lambda: all(fleet.state(h) == "master" for h in BALANCERS), 5)
        time.sleep(3)
    finally:
        for host in BALANCERS:
            fleet.block_adverts(host, False)
    fleet.wait_master("lb1", timeout=3)
    time.sleep(1)
    assert [fleet.state(h) for h in BALANCERS] == ["master", "backup"]  # and it stays so
    lb1 = fleet.mac("lb1")
    assert fleet.arp_answers() == {lb1}
    # what the client's side really uses: the router's neighbour entry after a fresh request
    assert fleet.curl() in TARGETS
    neigh = json.loads(fleet.sh("router", f"ip -j neigh show {VIP} dev eth0"))
    assert [n["lladdr"] for n in neigh] == [lb1]
