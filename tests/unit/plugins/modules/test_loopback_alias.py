# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import ipaddress

import pytest
from ansible_collections.dsrlb.fleet.plugins.modules.loopback_alias import check_label, parse_address, plan


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
