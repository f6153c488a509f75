"""Who gets traffic: the forwarding table as a pure function of config and runtime state."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dsrlb import tables, views
from dsrlb.config.parser import parse_file
from dsrlb.dataplane.forwarder import ServiceState

OWN = bytes.fromhex("020000000001")
MAC1 = bytes.fromhex("02000000000a")
MAC2 = bytes.fromhex("02000000000b")
VIP_KEY = (IPv4Address("172.16.1.10").packed, 6, 80)

SEED = Path(__file__).resolve().parents[3] / "examples" / "dsr-example.conf"


@pytest.fixture
def config():
    return parse_file(str(SEED))


def build(config, status, macs=None, **kw):
    macs = {IPv4Address("172.16.1.100").packed: MAC1, IPv4Address("172.16.1.101").packed: MAC2} | (macs or {})
    network = config.networks[1]
    return tables.build(config, network, status, macs, OWN, {1: ServiceState()}, **kw)


def test_both_targets_up_and_enabled_take_new_connections(config):
    svc = build(config, {1: tables.TargetStatus(), 2: tables.TargetStatus()}).table.services[VIP_KEY]
    assert svc.active == {1, 2}
    assert svc.forward == {1: MAC1 + OWN, 2: MAC2 + OWN}
    assert {c.id for c in svc.selector.active} == {1, 2}


def test_a_draining_target_keeps_its_connections_but_takes_no_new_ones(config):
    status = {1: tables.TargetStatus(), 2: tables.TargetStatus(admin="draining")}
    svc = build(config, status).table.services[VIP_KEY]
    assert svc.active == {1}, "a draining target must not count as active"
    assert 2 in svc.forward, "packets of its open connections still reach it"
    assert [c.id for c in svc.selector.active] == [1], "new clients are never picked for it"


@pytest.mark.parametrize(
    "status2",
    [tables.TargetStatus(admin="disabled"), tables.TargetStatus(up=False)],
    ids=["disabled", "down"],
)
def test_disabled_or_down_target_gets_nothing(config, status2):
    svc = build(config, {1: tables.TargetStatus(), 2: status2}).table.services[VIP_KEY]
    assert svc.active == {1} and set(svc.forward) == {1}


def test_a_target_without_a_known_mac_or_runtime_entry_gets_nothing(config):
    macs = {IPv4Address("172.16.1.100").packed: MAC1}
    network = config.networks[1]
    built = tables.build(
        config, network, {1: tables.TargetStatus(), 2: tables.TargetStatus()}, macs, OWN, {1: ServiceState()}
    )
    assert set(built.table.services[VIP_KEY].forward) == {1}
    assert set(build(config, {1: tables.TargetStatus()}).table.services[VIP_KEY].forward) == {1}


def test_a_vrrp_backup_forwards_and_answers_nothing(config):
    built = build(
        config, {1: tables.TargetStatus(), 2: tables.TargetStatus()}, forwarding=False, answering=False
    )
    assert built.table.services == {} and built.table.answer == frozenset()
    assert built.selectors, "selectors are kept ready for the takeover"


def test_answer_covers_vips_and_virt_and_neighbors_the_targets(config):
    table = build(config, {1: tables.TargetStatus(), 2: tables.TargetStatus()}).table
    assert table.answer == {IPv4Address(a).packed for a in ("172.16.1.10", "172.16.1.253")}
    assert table.neighbors == {IPv4Address(a).packed for a in ("172.16.1.100", "172.16.1.101")}
    assert table.drainidle == config.settings.drainidle


def test_selectors_are_reused_while_candidates_are_unchanged(config):
    status = {1: tables.TargetStatus(), 2: tables.TargetStatus()}
    first = build(config, status)
    again = build(config, status, selectors=first.selectors)
    assert again.table.services[VIP_KEY].selector is first.table.services[VIP_KEY].selector
    changed = build(
        config, {1: tables.TargetStatus(), 2: tables.TargetStatus(up=False)}, selectors=first.selectors
    )
    assert changed.table.services[VIP_KEY].selector is not first.table.services[VIP_KEY].selector


def test_admin_state_shows_drained_once_no_connection_is_open():
    assert views.admin_state("draining", 3) == "draining"
    assert views.admin_state("draining", 0) == "drained"
    assert views.admin_state("enabled", 0) == "enabled"


def test_table_capacities_come_from_the_settings(config):
    from dataclasses import replace

    from dsrlb.dataplane.forwarder import ForwardingTable
    from dsrlb.vocabulary import DEFAULTS

    default = ForwardingTable({}, frozenset(), frozenset())
    assert (default.flows, default.sessions, default.embryonic) == tuple(
        DEFAULTS["set"][k] for k in ("flows", "sessions", "embryonic")
    )
    settings = replace(config.settings, flows=20000, sessions=500, embryonic=2.5)
    table = build(
        replace(config, settings=settings), {1: tables.TargetStatus(), 2: tables.TargetStatus()}
    ).table
    assert (table.flows, table.sessions, table.embryonic) == (20000, 500, 2.5)


def test_bucket_table_size_follows_the_listed_targets_and_the_seed_the_settings(config):
    """The seed server lists two targets: 211 buckets, also while one is down, so that a failure moves
    only that target's clients; the seed comes from `set hashseed`, and a new one means a new selector."""
    from dataclasses import replace

    from dsrlb.maglev import table_size

    up = {1: tables.TargetStatus(), 2: tables.TargetStatus()}
    first = build(config, up)
    selector = first.table.services[VIP_KEY].selector
    assert (selector.size, selector.seed) == (table_size(2), config.settings.hashseed) == (211, 0x6473726C)
    one_down = build(config, {1: tables.TargetStatus(), 2: tables.TargetStatus(up=False)})
    assert one_down.table.services[VIP_KEY].selector.size == 211
    assert set(one_down.table.services[VIP_KEY].selector.buckets()) == {1}
    reseeded = replace(config, settings=replace(config.settings, hashseed=7))
    again = build(reseeded, up, selectors=first.selectors).table.services[VIP_KEY].selector
    assert again is not selector and again.seed == 7
