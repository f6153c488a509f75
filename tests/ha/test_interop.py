"""dsrlb and keepalived as the two members of one virtual router (same VRID, same addresses)."""

from __future__ import annotations

import pytest
from hafleet import DSRLB, KEEPALIVED, TARGETS, VIRT, Fleet

pytestmark = pytest.mark.root


def served_by(kind: str, host: str) -> set[str]:
    """Who answers the client's request when `host` running `kind` is master."""
    return set(TARGETS) if kind == DSRLB else {host}


@pytest.mark.parametrize(("first", "second"), [(KEEPALIVED, DSRLB), (DSRLB, KEEPALIVED)])
def test_master_stops_and_the_other_implementation_takes_over(fleet: Fleet, first: str, second: str) -> None:
    fleet.use(lb1=first, lb2=second)
    mac = {h: fleet.mac(h) for h in ("lb1", "lb2")}
    dsrlb_host = "lb1" if first == DSRLB else "lb2"
    # dsrlb understood the other's adverts: it knows who is master and dropped none
    view = fleet.vrrp(dsrlb_host)
    assert view is not None and view["master"] == "172.16.1.252"
    assert not view["drops"], view["drops"]
    assert fleet.arp_answers() == {mac["lb1"]}
    assert fleet.curl() in served_by(first, "lb1")

    fleet.stop("lb1")
    fleet.wait("lb2 to take over", lambda: fleet.state("lb2") == "master")
    fleet.wait("the VIP to serve again", lambda: fleet.curl() in served_by(second, "lb2"))
    assert fleet.arp_answers() == {mac["lb2"]}
    assert fleet.arp_answers(VIRT) == {mac["lb2"]}

    fleet.recover("lb1", "stop")  # preempt: lb1 (priority 200) takes the addresses back
    fleet.wait_master("lb1")
    fleet.wait("lb1 to serve again", lambda: fleet.curl() in served_by(first, "lb1"))
    assert fleet.arp_answers() == {mac["lb1"]}
