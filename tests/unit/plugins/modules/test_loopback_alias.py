# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import ipaddress

import pytest
from ansible_collections.dsrlb.fleet.plugins.modules.loopback_alias import (
    Ipv6Conf,
    check_label,
    keeps_addresses,
    parse_address,
    plan,
    wants_keep,
)


def addrs(*texts):
    return [ipaddress.ip_interface(text) for text in texts]


def test_bare_addresses_mean_the_host_prefix():
    assert parse_address("172.16.1.10") == ipaddress.ip_interface("172.16.1.10/32")
    assert parse_address(" 2001:db8::10 ") == ipaddress.ip_interface("2001:db8::10/128")
    assert parse_address("2001:db8::10/128").version == 6


@pytest.mark.parametrize(
    "text, message",
    [
        ("172.16.1.10/24", "not a host address: use /32"),
        ("2001:db8::/64", "use /128"),
        ("vip", "not an IP address"),
    ],
)
def test_non_host_addresses_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_address(text)


def test_label_rules():
    check_label("lo:0", "lo")
    check_label("lo", "lo")
    with pytest.raises(ValueError, match="must be 'lo' or start with 'lo:'"):
        check_label("eth0:0", "lo")
    with pytest.raises(ValueError, match="longer than 15"):
        check_label("lo:0123456789abc", "lo")


def test_plan_touches_only_the_wanted_addresses():
    current = addrs("127.0.0.1/8", "172.16.1.10/32", "::1/128")
    wanted = addrs("172.16.1.11/32", "172.16.1.10/32", "2001:db8::10/128", "172.16.1.11/32")
    assert plan(current, wanted, "present") == (addrs("172.16.1.11/32", "2001:db8::10/128"), [])
    assert plan(current, wanted, "absent") == ([], addrs("172.16.1.10/32"))
    assert plan(current, addrs("127.0.0.1/32"), "absent") == ([], [])


def test_keep_addr_on_down_matters_only_for_ipv6_addresses_that_stay():
    v4, v6 = addrs("172.16.1.10/32"), addrs("172.16.1.10/32", "2001:db8:10::10/128")
    assert wants_keep(v6, "present", True)
    assert not wants_keep(v4, "present", True)  # IPv4 addresses survive a down interface anyway
    assert not wants_keep(v6, "absent", True)
    assert not wants_keep(v6, "present", False)


@pytest.mark.parametrize(
    "all_value, own, keeps",
    [(0, 1, True), (0, 0, False), (1, 0, True), (-1, 1, False), (0, -1, False), (1, -1, True)],
)
def test_keeps_addresses_follows_the_kernel(all_value, own, keeps):
    assert keeps_addresses(all_value, own) is keeps


def test_ipv6_conf_reads_and_writes_a_proc_tree(tmp_path):
    (tmp_path / "lo").mkdir()
    (tmp_path / "lo" / "keep_addr_on_down").write_text("0\n")
    conf = Ipv6Conf("lo", str(tmp_path))
    assert conf.read("lo") == 0 and conf.read("all") is None
    conf.write(1)
    assert conf.read("lo") == 1 and (tmp_path / "lo" / "keep_addr_on_down").read_text() == "1\n"
