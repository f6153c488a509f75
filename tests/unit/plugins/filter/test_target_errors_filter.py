# Copyright: (c) 2026, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.dsrlb.fleet.plugins.filter.target_errors import FilterModule, target_errors

SERVERS = [{"id": 1, "vip": "172.16.1.10", "port": 80}, {"id": 2, "vip": "2001:db8:10::10"}]


def test_ipv4_and_ipv6_vips_in_one_list_are_sound():
    assert target_errors(SERVERS) == []
    assert target_errors(SERVERS, target_servers=[2]) == []
    assert target_errors([]) == [] and target_errors([], target_servers=[]) == []
    assert target_errors([{"id": 3, "vip": "2001:DB8:10::0011"}]) == []
    assert FilterModule().filters()["target_errors"] is target_errors


@pytest.mark.parametrize(
    "vip, message",
    [
        ("2001:db8:10::10/128", "'2001:db8:10::10/128' has a prefix; give the bare address"),
        ("172.16.1.10/32", "'172.16.1.10/32' has a prefix"),
        ("2001:db8:10::/64", "'2001:db8:10::/64' has a prefix"),
        ("172.16.1.300", "'172.16.1.300' is not an IPv4 or IPv6 address"),
        ("2001:db8::10::1", "'2001:db8::10::1' is not an IPv4 or IPv6 address"),
        ("web.example", "'web.example' is not an IPv4 or IPv6 address"),
        ("fe80::10", "fe80::10 is link-local; a VIP must be a unicast address"),
        ("::1", "::1 is a loopback address"),
        ("::", ":: is unspecified"),
        ("ff02::1", "ff02::1 is multicast"),
        ("224.0.0.18", "224.0.0.18 is multicast"),
    ],
)
def test_a_bad_vip_is_named_with_its_key_and_server(vip, message):
    errors = target_errors([SERVERS[0], {"id": 7, "vip": vip}])
    assert len(errors) == 1 and errors[0].startswith(f"dsrlb_servers[1].vip (server 7): {message}"), errors


def test_missing_fields_and_unknown_target_servers_are_named():
    errors = target_errors([{"vip": "172.16.1.10"}, {"id": 2}, "172.16.1.12"], target_servers=[2, 5, 6])
    assert errors == [
        "dsrlb_servers[0].id: missing",
        "dsrlb_servers[1].vip (server 2): missing",
        "dsrlb_servers[2]: must be a mapping {id, vip, ...}, not '172.16.1.12'",
        "dsrlb_target_servers: 5, 6 not an id in dsrlb_servers (ids: 2)",
    ]
    assert target_errors("172.16.1.10") == ["dsrlb_servers: must be a list of {id, vip}, not '172.16.1.10'"]
    assert target_errors(SERVERS, target_servers=3) == [
        "dsrlb_target_servers: must be a list of server ids or null, not 3"
    ]
