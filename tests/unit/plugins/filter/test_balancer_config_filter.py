# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.dsrlb.fleet.plugins.filter.balancer_config import (
    CHECK_DEFAULTS,
    FilterModule,
    balancer_config,
)
from ansible_collections.dsrlb.fleet.plugins.module_utils.vocabulary import HEALTH_CHECKS

NETWORKS = [{"id": 1, "addr": "172.16.1.0/24"}]
HOSTVARS = {
    "web1": {"dsrlb_target_address": "172.16.1.100"},
    "web2": {"ansible_host": "172.16.1.101"},
    "web3": {},
}


def config(servers, networks=None, hosts=("web1", "web2"), hostvars=None, real="172.16.1.252", real6=None):
    return balancer_config(
        servers,
        networks=networks or NETWORKS,
        target_hosts=list(hosts),
        hostvars=hostvars or HOSTVARS,
        real=real,
        real6=real6,
    )


def test_registered_under_its_name():
    assert FilterModule().filters() == {"balancer_config": balancer_config}


def test_one_server_gets_a_target_per_host_with_defaults():
    result = config([{"id": 1, "vip": "172.16.1.10", "port": 80}], hosts=("web1", "web2", "web3"))
    assert result == {
        "networks": [{"id": 1, "addr": "172.16.1.0/24", "real": "172.16.1.252", "interface": 1}],
        "servers": [{"id": 1, "ipaddr": "172.16.1.10", "port": 80, "protocol": "tcp", "targets": [1, 2, 3]}],
        "targets": [
            {"id": 1, "ipaddr": "172.16.1.100", "port": 80, "protocol": "tcp", "weight": 1, "backup": False},
            {"id": 2, "ipaddr": "172.16.1.101", "port": 80, "protocol": "tcp", "weight": 1, "backup": False},
            {"id": 3, "ipaddr": "web3", "port": 80, "protocol": "tcp", "weight": 1, "backup": False},
        ],
        "vrrp": None,  # a lone balancer
    }


def test_targets_are_numbered_by_server_id_then_host_order():
    servers = [
        {"id": 7, "vip": "172.16.1.11", "port": 53, "protocol": "udp"},
        {"id": 2, "vip": "172.16.1.10", "port": 80},
    ]
    result = config(servers, hosts=("web2", "web1"))
    assert [(s["id"], s["targets"]) for s in result["servers"]] == [(2, [1, 2]), (7, [3, 4])]
    assert [(t["id"], t["ipaddr"], t["port"], t["protocol"]) for t in result["targets"]] == [
        (1, "172.16.1.101", 80, "tcp"),
        (2, "172.16.1.100", 80, "tcp"),
        (3, "172.16.1.101", 53, "udp"),
        (4, "172.16.1.100", 53, "udp"),
    ]


def test_dsrlb_target_servers_selects_what_a_host_serves():
    hostvars = {
        "web1": {"dsrlb_target_servers": [2]},
        "web2": {"dsrlb_target_servers": None},  # null: every server, as when unset
        "web3": {"dsrlb_target_servers": []},  # none at all
    }
    servers = [{"id": 1, "vip": "10.0.0.1", "port": 80}, {"id": 2, "vip": "10.0.0.2", "port": 443}]
    result = config(servers, hosts=("web1", "web2", "web3"), hostvars=hostvars)
    assert [(s["id"], s["targets"]) for s in result["servers"]] == [(1, [1]), (2, [2, 3])]
    assert [(t["id"], t["ipaddr"], t["port"]) for t in result["targets"]] == [
        (1, "web2", 80),
        (2, "web1", 443),
        (3, "web2", 443),
    ]


def test_no_target_hosts_leaves_the_servers_without_targets():
    """The role's validate.yml names the servers without targets and the group to fix."""
    result = config([{"id": 1, "vip": "10.0.0.1", "port": 80}], hosts=())
    assert result["servers"][0]["targets"] == [] and result["targets"] == []


def test_weight_and_backup_are_converted_as_jinja_int_and_bool_did():
    hostvars = {
        "web1": {"dsrlb_target_weight": "3", "dsrlb_target_backup": "yes"},
        "web2": {"dsrlb_target_weight": 2, "dsrlb_target_backup": True},
    }
    targets = config([{"id": 1, "vip": "10.0.0.1", "port": 80}], hostvars=hostvars)["targets"]
    assert [(t["weight"], t["backup"]) for t in targets] == [(3, True), (2, True)]


def test_every_health_check_of_the_daemon_has_defaults():
    assert tuple(CHECK_DEFAULTS) == HEALTH_CHECKS


@pytest.mark.parametrize(
    "health, check",
    [
        ({"type": "tcpopen"}, {"tcpopen": [80, 3, 10]}),
        ({"type": "tcpopen", "port": 8080, "interval": 1, "timeout": 4}, {"tcpopen": [8080, 1, 4]}),
        ({"type": "ping"}, {"ping": [1, 5]}),
        ({"type": "ping", "interval": 2, "timeout": 6}, {"ping": [2, 6]}),
        ({"type": "http"}, {"http": [80, "/", 3, 10]}),
        (
            {"type": "http", "port": 81, "path": "/healthz", "interval": 5, "timeout": 20},
            {"http": [81, "/healthz", 5, 20]},
        ),
        ({}, {}),
        (None, {}),
    ],
)
def test_health_check_defaults(health, check):
    targets = config([{"id": 1, "vip": "10.0.0.1", "port": 80, "health": health}])["targets"]
    assert [{k: v for k, v in t.items() if k in ("tcpopen", "ping", "http")} for t in targets] == [
        check,
        check,
    ]


def test_method_and_session_pass_through_only_when_given():
    servers = [
        {"id": 1, "vip": "10.0.0.1", "port": 80, "method": "rr", "session": 300},
        {"id": 2, "vip": "10.0.0.2", "port": 80, "session": None},
    ]
    result = config(servers)["servers"]
    assert result[0]["method"] == "rr" and result[0]["session"] == 300
    assert "method" not in result[1] and result[1]["session"] is None


def test_networks_default_real_and_keep_their_optional_keys():
    networks = [
        {"id": 2, "addr": "10.0.0.0/24", "real": "10.0.0.5", "name": "dmz", "mask": "255.255.255.0"},
        {"id": 1, "addr": "172.16.1.0/24", "virt": "172.16.1.253"},
    ]
    result = config([{"id": 1, "vip": "10.0.0.1", "port": 80}], networks=networks)["networks"]
    assert result == [
        {"id": 1, "addr": "172.16.1.0/24", "real": "172.16.1.252", "interface": 1, "virt": "172.16.1.253"},
        {
            "id": 2,
            "addr": "10.0.0.0/24",
            "real": "10.0.0.5",
            "interface": 1,
            "name": "dmz",
            "mask": "255.255.255.0",
        },
    ]


def test_networks_with_their_own_real_need_no_balancer_address():
    networks = [{"id": 1, "addr": "10.0.0.0/24", "real": "10.0.0.5"}]
    result = config([{"id": 1, "vip": "10.0.0.1", "port": 80}], networks=networks, real=None)
    assert result["networks"][0]["real"] == "10.0.0.5"


SERVER = {"id": 1, "vip": "10.0.0.1", "port": 80}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(servers=[]), r"servers: a non-empty list is needed, got \[\]"),
        (dict(servers=None), "servers: a non-empty list is needed, got None"),
        (dict(servers="web"), "servers: a non-empty list is needed"),
        (dict(servers=[SERVER, "x"]), r"servers\[1\] is not a dictionary: 'x'"),
        (dict(servers=[{"id": 1, "port": 80}]), r"servers\[0\] has no vip: each needs id, vip, port"),
        (dict(servers=[{"vip": "10.0.0.1"}]), r"servers\[0\] has no id, port: each needs id, vip, port"),
        (dict(servers=[SERVER, dict(SERVER, id="2")]), "servers: the ids cannot be ordered"),
        (dict(networks=[{"id": 1}]), r"networks\[0\] has no addr: each needs id, addr"),
        (dict(real=None), "network 1 has no real address: give the balancer's own address"),
        (
            dict(servers=[dict(SERVER, health={"type": "udp"})]),
            "server 1: health type 'udp' is not one of tcpopen",
        ),
        (dict(servers=[dict(SERVER, health={"port": 81})]), "server 1: health type None is not one of"),
        (dict(servers=[dict(SERVER, health="tcpopen")]), "server 1: health is not a dictionary"),
        (
            dict(hostvars={"web1": {"dsrlb_target_weight": "heavy"}, "web2": {}}),
            "target host web1: dsrlb_target_weight is not a valid int: 'heavy'",
        ),
        (
            dict(hostvars={"web1": {}, "web2": {"dsrlb_target_backup": "maybe"}}),
            "target host web2: dsrlb_target_backup is not a valid boolean: 'maybe'",
        ),
    ],
)
def test_bad_input_is_an_error_that_names_the_item(kwargs, message):
    args = dict(servers=[SERVER]) | kwargs
    with pytest.raises(AnsibleFilterError, match=message):
        config(args.pop("servers"), **args)


# --- IPv6 ---------------------------------------------------------------------------------------------

NETWORKS6 = [{"id": 1, "addr": "172.16.1.0/24", "addr6": "2001:db8:1::/64", "virt6": "2001:db8:1::fd"}]
HOSTVARS6 = {
    "web1": {"dsrlb_target_address": "172.16.1.100", "dsrlb_target_address6": "2001:db8:1::100"},
    "web2": {"ansible_host": "2001:db8:1::101"},  # IPv6 only
}
SERVER6 = {"id": 2, "vip": "2001:db8:1::10", "port": 80, "health": {"type": "ping"}}


def test_addr6_gives_the_network_mask6_real6_and_virt6():
    result = config([SERVER6], networks=NETWORKS6, hostvars=HOSTVARS6, real6="2001:db8:1::fc")
    assert result["networks"] == [
        {
            "id": 1,
            "addr": "172.16.1.0/24",
            "real": "172.16.1.252",
            "interface": 1,
            "mask6": 64,
            "real6": "2001:db8:1::fc",
            "virt6": "2001:db8:1::fd",
        }
    ]
    own = [dict(NETWORKS6[0], real6="2001:db8:1::fb")]
    assert config([SERVER6], networks=own, hostvars=HOSTVARS6)["networks"][0]["real6"] == "2001:db8:1::fb"


def test_a_network_without_addr6_gets_no_ipv6_keys():
    result = config([SERVER], real6="2001:db8:1::fc")
    assert not {"mask6", "real6", "virt6"} & set(result["networks"][0])


def test_an_ipv6_server_gets_the_ipv6_address_of_each_target_host():
    result = config(
        [SERVER, SERVER6], networks=NETWORKS6, hosts=("web1",), hostvars=HOSTVARS6, real6="2001:db8:1::fc"
    )
    assert [(s["id"], s["ipaddr"], s["targets"]) for s in result["servers"]] == [
        (1, "10.0.0.1", [1]),
        (2, "2001:db8:1::10", [2]),
    ]
    targets = [(t["id"], t["ipaddr"]) for t in result["targets"]]
    assert targets == [(1, "172.16.1.100"), (2, "2001:db8:1::100")]
    only6 = config([SERVER6], networks=NETWORKS6, hosts=("web2",), hostvars=HOSTVARS6, real6="2001:db8:1::fc")
    assert only6["targets"][0]["ipaddr"] == "2001:db8:1::101"  # dsrlb_target_address (ansible_host) is IPv6


def test_ipv6_renders_as_the_daemon_reads_it():
    from ansible_collections.dsrlb.fleet.plugins.module_utils.config_render import render

    text = render(config([SERVER6], networks=NETWORKS6, hostvars=HOSTVARS6, real6="2001:db8:1::fc"))
    for line in ("mask6 64", "real6 2001:db8:1::fc", "virt6 2001:db8:1::fd", "ipaddr6 2001:db8:1::10"):
        assert f"\n    {line}\n" in text
    assert "ipaddr6 2001:db8:1::100\n" in text and "ping6 1,5\n" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(real6=None), "network 1 has addr6 but no real6: give the balancer's own IPv6 address"),
        (
            dict(networks=[dict(NETWORKS6[0], addr6="2001:db8:1::/129")]),
            "network 1: addr6 '2001:db8:1::/129' is not an IPv6 network",
        ),
        (
            dict(hostvars={"web1": {"dsrlb_target_address": "172.16.1.100"}, "web2": HOSTVARS6["web2"]}),
            r"target host web1: no IPv6 address for the IPv6 virtual server 2 \(2001:db8:1::10\): set its "
            "dsrlb_target_address6",
        ),
        (
            dict(hostvars=dict(HOSTVARS6, web1={"dsrlb_target_address6": "172.16.1.100"})),
            "target host web1: dsrlb_target_address6: '172.16.1.100' is not an IPv6 address",
        ),
        (
            dict(servers=[SERVER]),
            r"target host web2: no IPv4 address for the IPv4 virtual server 1 \(10.0.0.1\): its "
            "dsrlb_target_address 2001:db8:1::101 is IPv6",
        ),
    ],
)
def test_bad_ipv6_input_is_an_error_that_names_the_item(kwargs, message):
    args = dict(servers=[SERVER6], networks=NETWORKS6, hostvars=HOSTVARS6, real6="2001:db8:1::fc") | kwargs
    with pytest.raises(AnsibleFilterError, match=message):
        config(args.pop("servers"), **args)


# --- VRRP peers ---------------------------------------------------------------------------------------

VRRP = {"vrid": 7, "network": 1, "advert": 500}
BALANCERS = {
    "lb1": {"dsrlb_vrrp": VRRP, "dsrlb_real": "172.16.1.252"},
    "lb2": {"dsrlb_vrrp": VRRP, "dsrlb_real": "172.16.1.251"},
    # its own real on the VRRP network wins over dsrlb_real
    "lb3": {
        "dsrlb_vrrp": dict(VRRP, preempt=False),
        "dsrlb_real": "10.9.9.9",
        "dsrlb_networks": [
            {"id": 2, "addr": "10.0.0.0/24", "real": "10.0.0.3"},
            {"id": 1, "real": "172.16.1.3"},
        ],
    },
    "lb4": {"dsrlb_vrrp": dict(VRRP, vrid=8), "dsrlb_real": "172.16.1.4"},  # another virtual router
    "lb5": {"dsrlb_vrrp": None, "dsrlb_real": "172.16.1.5"},  # a lone balancer
    "lb6": {"dsrlb_real": "172.16.1.6"},  # no VRRP in the inventory
}


def vrrp_config(host="lb1", vrrp=None, hosts=tuple(BALANCERS), hostvars=None, sync=False):
    vrrp = VRRP if vrrp is None else vrrp
    hv = HOSTVARS | BALANCERS | (hostvars or {})
    return balancer_config(
        [{"id": 1, "vip": "172.16.1.10", "port": 80}],
        networks=NETWORKS,
        target_hosts=["web1"],
        hostvars=hv,
        real=hv[host]["dsrlb_real"],
        vrrp=vrrp,
        balancer_hosts=list(hosts),
        host=host,
        sync=sync,
    )


def test_vrrp_peers_are_the_other_balancers_of_the_same_vrid_sorted():
    assert vrrp_config("lb1")["vrrp"] == dict(VRRP, peers=["172.16.1.3", "172.16.1.251"])
    assert vrrp_config("lb2")["vrrp"]["peers"] == ["172.16.1.3", "172.16.1.252"]
    assert vrrp_config("lb3")["vrrp"]["peers"] == ["172.16.1.251", "172.16.1.252"]
    assert vrrp_config("lb4", vrrp=dict(VRRP, vrid=8))["vrrp"]["peers"] == []  # alone in vrid 8


def test_vrrp_peers_given_in_dsrlb_vrrp_are_kept():
    given = dict(VRRP, peers=["172.16.1.200"])
    assert vrrp_config("lb1", vrrp=given)["vrrp"] == given


def test_vrrp_peers_only_from_the_balancer_group():
    assert vrrp_config("lb1", hosts=("lb1", "lb3"))["vrrp"]["peers"] == ["172.16.1.3"]
    assert vrrp_config("lb1", hosts=())["vrrp"]["peers"] == []


def test_vrrp_peers_render_as_the_daemon_reads_them():
    from ansible_collections.dsrlb.fleet.plugins.module_utils.config_render import render

    result = vrrp_config("lb1")
    text = render(dict(result, vrrp=dict(result["vrrp"], priority=100)))
    assert "\n    peers 172.16.1.3,172.16.1.251\n}\n" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vrrp={"network": 1}), "vrrp: a dictionary with vrid is needed"),
        (dict(vrrp="7"), "vrrp: a dictionary with vrid is needed"),
        (
            dict(hostvars={"lb2": {"dsrlb_vrrp": VRRP}}),
            "balancer host lb2: no address for VRRP network 1: give it dsrlb_real",
        ),
        (
            dict(hostvars={"lb2": {"dsrlb_vrrp": VRRP, "dsrlb_real": "172.16.1.252"}}),
            "vrrp: another balancer of vrid 7 has this one's address 172.16.1.252",
        ),
    ],
)
def test_bad_vrrp_peers_are_an_error_that_names_the_host(kwargs, message):
    with pytest.raises(AnsibleFilterError, match=message):
        vrrp_config("lb1", **kwargs)


# --- bngsync -------------------------------------------------------------------------------------------


def test_sync_makes_the_other_balancer_of_the_pair_the_syncpeer():
    pair = vrrp_config("lb1", hosts=("lb1", "lb2"), sync=True)
    assert [net.get("syncpeer") for net in pair["networks"]] == ["172.16.1.251"]
    assert "syncpeer" not in vrrp_config("lb1", hosts=("lb1", "lb2"))["networks"][0]  # sync off
    assert "syncpeer" not in vrrp_config("lb4", vrrp=dict(VRRP, vrid=8), sync=True)["networks"][0]  # alone


def test_sync_refuses_a_virtual_router_of_more_than_two_balancers():
    with pytest.raises(
        AnsibleFilterError, match="dsrlb_sync: bngsync pairs one master with one backup, but vrid 7 has 3"
    ):
        vrrp_config("lb1", sync=True)


# --- VRRP over IPv6 (family ipv6): the peers are the other balancers' link-local addresses --------------

LINK_LOCAL = {"lb1": "fe80::1", "lb2": "fe80::5054:ff:fe00:2"}


def vrrp6_config(host="lb1", hostvars=None, sync=False, vrrp=None):
    v6 = dict(VRRP, family="ipv6")
    pair = {
        name: dict(BALANCERS[name], dsrlb_vrrp=v6, dsrlb_vrrp_link_local=ll)
        for name, ll in LINK_LOCAL.items()
    }
    return vrrp_config(host, vrrp or v6, hosts=("lb1", "lb2"), hostvars=pair | (hostvars or {}), sync=sync)


def test_vrrp_family_ipv6_peers_are_link_local_and_syncpeer_stays_ipv4():
    result = vrrp6_config("lb1", sync=True)
    assert result["vrrp"] == dict(VRRP, family="ipv6", peers=["fe80::5054:ff:fe00:2"])
    assert [net.get("syncpeer") for net in result["networks"]] == ["172.16.1.251"]
    from ansible_collections.dsrlb.fleet.plugins.module_utils.config_render import render

    text = render(dict(result, vrrp=dict(result["vrrp"], priority=100)))
    assert "\n    family ipv6\n    peers fe80::5054:ff:fe00:2\n}\n" in text


def test_vrrp_family_ipv6_link_local_from_facts_and_given_peers():
    facts = {
        "ansible_facts": {
            "default_ipv4": {"interface": "eth-1"},
            "eth_1": {
                "ipv6": [
                    {"address": "2001:db8::2", "scope": "global"},
                    {"address": "fe80::2", "scope": "link"},
                ]
            },
        },
        "dsrlb_vrrp_link_local": None,
    }
    assert vrrp6_config(
        "lb1", hostvars={"lb2": dict(BALANCERS["lb2"], dsrlb_vrrp=dict(VRRP, family="ipv6"), **facts)}
    )["vrrp"]["peers"] == ["fe80::2"]
    given = dict(VRRP, family="ipv6", peers=["fe80::9"])
    assert vrrp6_config("lb1", vrrp=given, sync=True)["vrrp"] == given
    assert vrrp6_config("lb1", vrrp=given, sync=True)["networks"][0]["syncpeer"] == "172.16.1.251"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(hostvars={"lb2": dict(BALANCERS["lb2"], dsrlb_vrrp=dict(VRRP, family="ipv6"))}),
            "balancer host lb2: VRRP family ipv6 needs its IPv6 link-local address on the data interface",
        ),
        (
            dict(
                hostvars={
                    "lb2": dict(
                        BALANCERS["lb2"],
                        dsrlb_vrrp=dict(VRRP, family="ipv6"),
                        dsrlb_vrrp_link_local="2001:db8::2",
                    )
                }
            ),
            r"balancer host lb2: .* got '2001:db8::2'; set dsrlb_vrrp_link_local",
        ),
        (dict(vrrp=dict(VRRP, family="ip6")), "vrrp.family: 'ip6' is not one of ipv4, ipv6"),
    ],
)
def test_bad_vrrp_family_input_says_what_to_fix(kwargs, message):
    with pytest.raises(AnsibleFilterError, match=message):
        vrrp6_config("lb1", **kwargs)
