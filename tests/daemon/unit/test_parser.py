"""Config parser: the seed loads, every error class is reported at its line:col, all in one run,
`render` round-trips, `dsrlb check` behaves, and random damage never produces a traceback."""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest

from dsrlb.config.model import Config, HealthCheck, Settings
from dsrlb.config.parser import ConfigError, parse_file, parse_text, render

CONFIGS = Path(__file__).parent / "configs"
SEED_PATH = Path(__file__).resolve().parents[3] / "examples" / "dsr-example.conf"
SEED = SEED_PATH.read_text()
DSRLB = Path(sys.executable).parent / "dsrlb"


def seed(*edits: tuple[str, str]) -> str:
    """The seed config with each `old` text (which must occur exactly once) replaced by `new`."""
    text = SEED
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_text(text)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def same(a: Config, b: Config) -> bool:
    return dataclasses.replace(a, source="", warnings=()) == dataclasses.replace(b, source="", warnings=())


# --- the seed --------------------------------------------------------------------------------------


def test_seed_loads_unchanged():
    config = parse_file(str(SEED_PATH))
    assert config.source == str(SEED_PATH)
    assert config.warnings == ()
    assert config.modules == {"vrrp", "arp", "ping", "hc", "master", "slb", "tnat", "nat", "rt"}
    assert config.settings == Settings()
    assert config.vrrp is None

    (iface,) = config.interfaces.values()
    assert (iface.id, iface.name, iface.access, iface.threads) == (1, "eth0", "raw", 1)

    (net,) = config.networks.values()
    assert net.name == "local network"
    assert net.network == IPv4Network("172.16.1.0/24")
    assert net.real == IPv4Address("172.16.1.252")
    assert net.virt == IPv4Address("172.16.1.253")
    assert net.interface == 1

    (server,) = config.servers.values()
    assert server.id == 1
    assert (server.ipaddr, server.port, server.protocol) == (IPv4Address("172.16.1.10"), 80, "tcp")
    assert server.targets == (1, 2)
    assert server.method == "maglev"
    assert server.session == 600.0

    assert sorted(config.targets) == [1, 2]
    for tid, addr in ((1, "172.16.1.100"), (2, "172.16.1.101")):
        target = config.targets[tid]
        assert target.ipaddr == IPv4Address(addr)
        assert (target.port, target.protocol, target.dsr, target.weight, target.backup) == (
            80,
            "tcp",
            True,
            1,
            False,
        )
        assert target.checks == (HealthCheck("tcpopen", 3.0, 10.0, port=80),)

    for obj in [iface, net, server, *config.targets.values()]:
        assert obj.registered and obj.enabled


def test_full_config_every_feature():
    config = parse_file(str(CONFIGS / "full.conf"))
    assert config.settings == Settings(
        control="/run/dsrlb/alt.sock", metrics="off", arprefresh=10.0, arpexpire=45.5, drainidle=2.0
    )
    assert config.interfaces[1].threads == 4 and config.interfaces[2].name == "eth1"
    assert config.networks[1].network == IPv4Network("172.16.1.0/24")  # mask given as prefix length
    assert config.networks[2].network == IPv4Network("10.0.0.0/30") and config.networks[2].virt is None
    assert config.networks[2].registered and not config.networks[2].enabled
    assert config.servers[1].targets == (1, 3, 4, 5)
    assert (config.servers[1].method, config.servers[1].session) == ("rr", 30.25)
    assert (config.servers[2].protocol, config.servers[2].session) == ("udp", 600.0)
    t1 = config.targets[1]
    assert t1.checks == (  # in canonical order (tcpopen, ping, http), whatever the file's order
        HealthCheck("ping", 1.0, 3.0),
        HealthCheck("http", 2.0, 6.0, port=80, path="/health?a=1,b=2"),
    )
    assert t1.weight == 5 and not t1.backup
    assert config.targets[2].port is None and config.targets[2].protocol == "udp"
    assert config.targets[3].backup
    assert not config.targets[4].enabled and config.targets[4].registered
    assert not config.targets[6].dsr and not config.targets[6].registered and config.targets[6].enabled
    vrrp = config.vrrp
    assert vrrp is not None
    assert (vrrp.vrid, vrrp.priority, vrrp.network, vrrp.advert_ms, vrrp.preempt, vrrp.version) == (
        42,
        200,
        1,
        2000,
        False,
        2,
    )
    assert vrrp.peers == (IPv4Address("172.16.1.250"), IPv4Address("172.16.1.251"))
    path = CONFIGS / "full.conf"
    assert config.warnings == (
        f"{path}:24:1: warning: network 2 is not enabled: it is not used (add 'enable network 2')",
        f"{path}:39:1: warning: server 2 is not enabled: it is not used (add 'enable server 2')",
        f"{path}:67:1: warning: target 4 is not enabled: it is not used (add 'enable target 4')",
        f"{path}:75:1: warning: target 6 is not registered: it is not used (add 'register target 6')",
        f"{path}:88:1: warning: gateway has no effect in DSR mode",
    )


def test_layout_variants():
    """One-line blocks, `{` on the next line, `}` after the last key, quoted values, CRLF, tabs."""
    text = (
        'modules "slb"\r\n'
        "target 1 { ipaddr 172.16.1.100 }\r\n"
        + "target 2\n\n{\n\tipaddr\t172.16.1.101\n\tdsr enable }\n"
        + 'server 1 {\n ipaddr "172.16.1.10"\n port 80 // the VIP port\n protocol tcp\n targets 2\n}\n'
    )
    config = parse_text(text)
    assert config.targets[1].ipaddr == IPv4Address("172.16.1.100")
    assert config.targets[2].dsr
    assert config.servers[1].ipaddr == IPv4Address("172.16.1.10") and config.servers[1].port == 80


def test_register_order_applies():
    config = parse_text(
        seed(
            (
                "enable    targets 1,2\n",
                "enable    targets 1,2\ndisable target 2\nenable target 2\ndisable target 2\n",
            ),
            (
                "enable    server 1\n",
                "enable    server 1\nunregister server 1\nregister server 1\nunregister server 1\n",
            ),
        )
    )
    assert config.targets[1].serving
    assert config.targets[2].registered and not config.targets[2].enabled
    assert config.servers[1].enabled and not config.servers[1].registered


# --- errors, each at its line:col ----------------------------------------------------------------

CASES = {
    # syntax
    "unknown statement": (
        seed(("register  server 1\n", "regster server 1\n")),
        ["<string>:26:1: unknown statement 'regster' (did you mean 'register'?)"],
    ),
    "quoted statement": (
        seed(("enable    server 1\n", '"enable" server 1\n')),
        ["<string>:27:1: a statement cannot start with a quoted string"],
    ),
    "quoted key": (
        seed(("          ipaddr 172.16.1.10\n", '          "ipaddr" 172.16.1.10\n')),
        [
            "<string>:20:1: server 1 is missing 'ipaddr' (or 'ipaddr6' for IPv6)",
            "<string>:21:11: a key cannot be a quoted string",
        ],
    ),
    "unknown key": (
        seed(
            (
                "          port 80\n          protocol tcp\n          targets",
                "          prot 80\n          protocol tcp\n          targets",
            )
        ),
        [
            "<string>:20:1: server 1 is missing 'port'",
            "<string>:22:11: unknown key 'prot' in server (did you mean 'port'?)",
        ],
    ),
    "missing value": (
        seed(("          ipaddr 172.16.1.10\n", "          ipaddr\n")),
        ["<string>:21:11: 'ipaddr' needs a value: 'ipaddr ADDRESS'"],
    ),
    "extra value": (
        seed(("          targets 1,2\n", "          targets 1, 2\n")),
        ["<string>:24:22: unexpected '2': expected 'targets LIST'"],
    ),
    "bad address": (
        seed(("ipaddr 172.16.1.100\n", "ipaddr 172.16.1.256\n")),
        ["<string>:29:18: bad IPv4 address '172.16.1.256'"],
    ),
    "bad port": (
        seed(
            (
                "          port 80\n          protocol tcp\n          targets",
                "          port 65536\n          protocol tcp\n          targets",
            )
        ),
        ["<string>:22:16: port 65536 is out of range 1..65535"],
    ),
    "ports of targets and health checks": (
        seed(
            (
                "          port 80\n          protocol tcp\n          targets",
                "          port 70000\n    protocol tcp\n  targets",
            ),
            (
                "ipaddr 172.16.1.100\n          port 80\n          protocol tcp\n          tcpopen 80,3,10\n",
                "ipaddr 172.16.1.100\n port 0\n protocol tcp\n tcpopen 70000,3,10\n http 0,/,3,10\n",
            ),
            (
                "    tcpopen 80,3,10\n          dsr enable\n}\nregister",
                " http 99999999999,/,3,10\n dsr enable\n}\nregister",
            ),
        ),
        [
            "<string>:22:16: port 70000 is out of range 1..65535",
            "<string>:30:7: port 0 is out of range 1..65535",
            "<string>:32:10: port 70000 is out of range 1..65535",
            "<string>:33:7: port 0 is out of range 1..65535",
            "<string>:40:13: bad port '99999999999': expected a whole number 1..65535",
        ],
    ),
    "bad number": (
        seed(
            ("interface 1 {\n          name eth0\n", "interface 1 {\n          name eth0\n    threads two\n")
        ),
        ["<string>:6:13: bad threads 'two': expected a whole number 1..64"],
    ),
    "bad seconds": (
        seed(("          targets 1,2\n", "          targets 1,2\n  session 1e3\n")),
        ["<string>:25:11: bad session '1e3': expected seconds, e.g. 3 or 0.5"],
    ),
    "bad list element": (
        seed(("register  targets 1,2\n", "register  targets 1,,2\n")),
        ["<string>:42:21: empty element in list"],
    ),
    "bad range": (
        seed(("enable    targets 1,2\n", "enable    targets 2-1\n")),
        ["<string>:43:19: bad range 2-1: 2 is greater than 1"],
    ),
    "bad range end": (
        seed(("enable    targets 1,2\n", "enable    targets 1-x\n")),
        ["<string>:43:21: bad target id 'x': expected a whole number 1..65535"],
    ),
    "unterminated string": (
        seed(('"local network"', '"local network')),
        ["<string>:11:16: unterminated string: add the closing '\"' on the same line"],
    ),
    "unbalanced close": (
        seed(("enable    server 1\n", "enable    server 1\n}\n")),
        ["<string>:28:1: unbalanced '}': no block is open"],
    ),
    "unclosed at end": (
        SEED + "target 3 {\n ipaddr 172.16.1.102\n",
        ["<string>:45:10: unbalanced '{': target 3 is never closed with '}'"],
    ),
    "forgotten close": (
        seed(("          targets 1,2\n}\n", "          targets 1,2\n")),
        ["<string>:20:13: unbalanced '{': server 1 is not closed before 'register' on line 25"],
    ),
    "stray open": (
        seed(("enable    server 1\n", "enable    server 1\n{ port 80 }\n")),
        ["<string>:28:1: unexpected '{': a block starts with its kind, e.g. 'server 1 {'"],
    ),
    "missing open": (
        seed(("target    2 {\n", "target    2\n")),
        [
            "<string>:24:21: target 2 is not defined",
            "<string>:35:12: expected '{' after 'target'",
            "<string>:36:11: unknown statement 'ipaddr'",
            "<string>:37:11: unknown statement 'port'",
            "<string>:38:11: unknown statement 'protocol'",
            "<string>:39:11: unknown statement 'tcpopen'",
            "<string>:40:11: unknown statement 'dsr'",
            "<string>:41:1: unbalanced '}': no block is open",
            "<string>:42:21: target 2 is not defined",
            "<string>:43:21: target 2 is not defined",
        ],
    ),
    "stray token after id": (
        seed(("server    1 {", "server    1 x {")),
        ["<string>:20:13: unexpected 'x': expected '{'"],
    ),
    "bad block id": (
        seed(("network   1 {", "network   one {")),
        [
            "<string>:10:11: bad network id 'one': expected a whole number 1..65535",
            "<string>:18:19: network 1 is not defined",
            "<string>:19:19: network 1 is not defined",
        ],
    ),
    # values checked on their own
    "unknown module": (
        seed((",tnat,", ",tnatt,")),
        ["<string>:3:39: unknown module 'tnatt' (did you mean 'tnat'?)"],
    ),
    "unknown set key": (
        "set metric off\n" + SEED,
        ["<string>:1:5: unknown key 'metric' in set (did you mean 'metrics'?)"],
    ),
    "bad set values": (
        "set {\n control run.sock\n metrics 127.0.0.1:0\n drainidle 0\n}\n" + SEED,
        [
            "<string>:2:10: bad control socket 'run.sock': expected an absolute path",
            "<string>:3:20: port 0 is out of range 1..65535",
            "<string>:4:12: drainidle 0 is out of range: more than 0 and at most 86400 s",
        ],
    ),
    "access and threads": (
        seed(("access raw\n", "access bpf\n threads 65\n")),
        [
            "<string>:6:18: bad access 'bpf': expected raw or nftables",
            "<string>:7:10: threads 65 is out of range 1..64",
        ],
    ),
    "network addresses": (
        seed(("real 172.16.1.252", "real 172.16.2.252"), ("virt 172.16.1.253", "virt 172.16.2.252")),
        [
            "<string>:14:16: real 172.16.2.252 is outside network 172.16.1.0/24",
            "<string>:15:16: virt 172.16.2.252 is outside network 172.16.1.0/24",
            "<string>:15:16: virt must differ from real",
        ],
    ),
    "network host bits and mask": (
        seed(("addr 172.16.1.0", "addr 172.16.1.7"), ("mask 255.255.255.0", "mask 24")),
        ["<string>:12:16: addr 172.16.1.7 has host bits set: the network is 172.16.1.0/24"],
    ),
    "bad netmask": (
        seed(("mask 255.255.255.0", "mask 255.0.255.0")),
        ["<string>:13:16: bad mask 255.0.255.0: its one bits must be contiguous"],
    ),
    "health check timing": (
        seed(
            (
                "tcpopen 80,3,10\n          dsr enable\n}\ntarget    2",
                "tcpopen 80,10,3\n          dsr enable\n}\ntarget    2",
            )
        ),
        ["<string>:32:25: timeout 3 is shorter than interval 10"],
    ),
    "health check arity": (
        seed(
            (
                "tcpopen 80,3,10\n          dsr enable\n}\ntarget    2",
                "tcpopen 80,3\n          dsr enable\n}\ntarget    2",
            )
        ),
        ["<string>:32:19: bad tcpopen '80,3': expected 'tcpopen PORT,INTERVAL,TIMEOUT'"],
    ),
    "http path": (
        seed(
            (
                "tcpopen 80,3,10\n          dsr enable\n}\ntarget    2",
                "http 80,health,3,10\n          dsr enable\n}\ntarget    2",
            )
        ),
        ["<string>:32:19: bad http path 'health': expected '/...' without spaces"],
    ),
    "weight and backup": (
        seed(("ipaddr 172.16.1.101\n", "ipaddr 172.16.1.101\n weight 0\n backup yes\n")),
        [
            "<string>:37:9: weight 0 is out of range 1..1000",
            "<string>:38:9: unexpected 'yes': expected 'backup'",
        ],
    ),
    "method": (
        seed(("          targets 1,2\n", "          targets 1,2\n method roundrobin\n")),
        ["<string>:25:9: bad method 'roundrobin': expected maglev, rr, random, hash, leastsessions or first"],
    ),
    "bad hashseed": (
        "set hashseed 0xdeadbeef0\n" + SEED,
        ["<string>:1:14: bad hashseed '0xdeadbeef0': expected a whole number 0..4294967295 or 0x hex"],
    ),
    "hashseed out of range": (
        "set hashseed 4294967296\n" + SEED,
        ["<string>:1:14: hashseed 4294967296 is out of range 0..4294967295 (0xffffffff)"],
    ),
    "vrrp values": (
        SEED + "vrrp {\n vrid 256\n priority 255\n network 1\n advert 15\n preempt yes\n}\n",
        [
            "<string>:46:7: vrid 256 is out of range 1..255",
            "<string>:47:11: priority 255 is out of range 1..254",
            "<string>:49:9: advert 15 must be a multiple of 10 ms",
            "<string>:50:10: bad preempt 'yes': expected on or off",
        ],
    ),
    "vrrp version 2 advert": (
        SEED + "vrrp {\n vrid 1\n priority 100\n network 1\n advert 1500\n version 2\n}\n",
        ["<string>:49:9: advert 1500 must be a multiple of 1000 ms with VRRP version 2"],
    ),
    "vrrp peers values": (
        SEED + "vrrp {\n vrid 1\n priority 100\n network 1\n peers 172.16.1.251,x\n}\n",
        ["<string>:49:21: bad IPv4 address 'x'"],
    ),
    "vrrp peers not a host": (
        SEED + "vrrp {\n vrid 1\n priority 100\n network 1\n peers 172.16.1.251,224.0.0.5\n}\n",
        ["<string>:49:21: 224.0.0.5 cannot be the address of a host"],
    ),
    "vrrp peers listed twice": (
        SEED + "vrrp {\n vrid 1\n priority 100\n network 1\n peers 172.16.1.9,172.16.1.8,172.16.1.9\n}\n",
        ["<string>:49:30: peer 172.16.1.9 is listed twice"],
    ),
    "vrrp peers empty": (
        SEED + "vrrp {\n vrid 1\n priority 100\n network 1\n peers\n}\n",
        ["<string>:49:2: 'peers' needs a value: 'peers ADDRESS[,ADDRESS...]'"],
    ),
    # whole-file checks
    "vrrp peers own addresses": (
        SEED + "vrrp {\n vrid 1\n priority 100\n network 1\n peers 172.16.1.253,172.16.1.9,172.16.1.252\n}\n",
        [
            "<string>:49:8: peer 172.16.1.253 is the shared address (virt of network 1)",
            "<string>:49:32: peer 172.16.1.252 is this balancer's own address (real of network 1)",
        ],
    ),
    "method that nftables cannot do": (
        seed(
            ("access raw\n", "access nftables\n"),
            ("          targets 1,2\n", "          targets 1,2\n method leastsessions\n"),
        ),
        [
            "<string>:25:9: method leastsessions needs access raw: access nftables (interface 1) picks "
            "targets by a hash of the client address (maglev, hash or first)"
        ],
    ),
    "missing modules": (
        seed(("modules   vrrp,arp,ping,hc,master,slb,tnat,nat,rt\n", "")),
        ["<string>:1:1: missing 'modules' statement, e.g. 'modules arp,hc,ping,slb,vrrp'"],
    ),
    "duplicate modules": (
        SEED + "modules slb\n",
        ["<string>:45:1: duplicate 'modules' statement (first on line 3)"],
    ),
    "modules required": (
        seed(("vrrp,arp,ping,hc,master,slb,", "master,")) + "vrrp {\n vrid 1\n priority 100\n network 1\n}\n",
        [
            "<string>:10:1: network needs module 'arp': add it to 'modules' on line 3",
            "<string>:20:1: server needs module 'slb': add it to 'modules' on line 3",
            "<string>:28:1: target needs module 'slb': add it to 'modules' on line 3",
            "<string>:32:11: 'tcpopen' needs module 'hc': add it to 'modules' on line 3",
            "<string>:35:1: target needs module 'slb': add it to 'modules' on line 3",
            "<string>:39:11: 'tcpopen' needs module 'hc': add it to 'modules' on line 3",
            "<string>:45:1: vrrp needs module 'vrrp': add it to 'modules' on line 3",
        ],
    ),
    "ping needs ping": (
        seed(
            ("vrrp,arp,ping,hc,", "vrrp,arp,hc,"),
            (
                "tcpopen 80,3,10\n          dsr enable\n}\ntarget    2",
                "ping 3,10\n          dsr enable\n}\ntarget    2",
            ),
        ),
        ["<string>:32:11: 'ping' needs module 'ping': add it to 'modules' on line 3"],
    ),
    "missing required keys": (
        seed(("          ipaddr 172.16.1.10\n          port 80\n", "")),
        [
            "<string>:20:1: server 1 is missing 'ipaddr' (or 'ipaddr6' for IPv6)",
            "<string>:20:1: server 1 is missing 'port'",
        ],
    ),
    "missing keys everywhere": (
        "modules arp,slb,vrrp\ninterface 1 {\n}\nnetwork 1 {\n}\ntarget 1 {\n}\nvrrp {\n}\n",
        [
            "<string>:2:1: interface 1 is missing 'name'",
            "<string>:4:1: network 1 is missing 'addr'",
            "<string>:4:1: network 1 is missing 'interface'",
            "<string>:4:1: network 1 is missing 'mask'",
            "<string>:4:1: network 1 is missing 'real'",
            "<string>:6:1: target 1 is missing 'ipaddr' (or 'ipaddr6' for IPv6)",
            "<string>:8:1: vrrp is missing 'network'",
            "<string>:8:1: vrrp is missing 'priority'",
            "<string>:8:1: vrrp is missing 'vrid'",
        ],
    ),
    "duplicate key": (
        seed(
            (
                "          protocol tcp\n          targets 1,2",
                "          protocol tcp\n          port 81\n          targets 1,2",
            )
        ),
        ["<string>:24:11: duplicate key 'port' (first on line 22)"],
    ),
    "duplicate block": (
        SEED + "target 2 {\n ipaddr 172.16.1.102\n}\n",
        ["<string>:45:1: duplicate target 2 (first defined on line 35)"],
    ),
    "duplicate vrrp": (
        SEED + "vrrp {\n vrid 1\n priority 1\n network 1\n}\n" * 2,
        ["<string>:50:1: duplicate vrrp (first defined on line 45)"],
    ),
    "same server address": (
        seed(
            (
                "register  server 1\n",
                "server 2 {\n ipaddr 172.16.1.10\n port 80\n protocol tcp\n targets 1\n}\n"
                "register  server 1\n",
            )
        ),
        ["<string>:26:1: server 2 has the same address 172.16.1.10:80/tcp as server 1"],
    ),
    "undefined target": (
        seed(("          targets 1,2\n", "          targets 1,2,7-9\n")),
        ["<string>:24:23: targets 7-9 are not defined"],
    ),
    "target not registered": (
        seed(("register  targets 1,2\n", "register  target 1\n")),
        ["<string>:24:21: target 2 is not registered"],
    ),
    "unregistered server may use unregistered target": (
        seed(("register  targets 1,2\n", "register  target 1\n"), ("register  server 1\n", "")),
        None,
    ),
    "undefined interface": (
        seed(("          interface 1\n", "          interface 2\n")),
        ["<string>:16:21: interface 2 is not defined"],
    ),
    "undefined vrrp network": (
        SEED + "vrrp {\n vrid 1\n priority 100\n network 3\n}\n",
        ["<string>:48:10: network 3 is not defined"],
    ),
    "register undefined": (
        seed(("enable    targets 1,2\n", "enable    targets 1,2\nregister servers 1,2,5\n")),
        ["<string>:44:20: server 2 is not defined", "<string>:44:22: server 5 is not defined"],
    ),
    "register before define": (
        seed(("register  interface 1\n", ""), ("interface 1 {", "register  interface 1\ninterface 1 {")),
        ["<string>:4:21: interface 1 is defined only later: define before 'register'"],
    ),
    "bad action kind": (
        seed(("enable    server 1\n", "enable    vip 1\n")),
        ["<string>:27:11: bad kind 'vip': expected interface, network, server or target"],
    ),
    "action arity": (
        seed(("enable    server 1\n", "enable    server\n")),
        ["<string>:27:1: expected 'enable KIND LIST', e.g. 'enable targets 1,2'"],
    ),
    "no dsr": (
        seed(("          dsr enable\n}\ntarget    2", "}\ntarget    2")),
        ["<string>:28:1: target 1 is used by server 1 but lacks 'dsr enable': only DSR mode is supported"],
    ),
    "dsr disable": (
        seed(("          dsr enable\n}\nregister", "          dsr disable\n}\nregister")),
        ["<string>:40:11: target 2 is used by server 1 but lacks 'dsr enable': only DSR mode is supported"],
    ),
    "unused target needs no dsr": (
        seed(
            ("          dsr enable\n}\nregister", "          dsr disable\n}\nregister"),
            ("          targets 1,2", "          targets 1"),
        ),
        None,
    ),
    "port and protocol must match": (
        seed(
            (
                "          port 80\n          protocol tcp\n          tcpopen 80,3,10\n"
                "          dsr enable\n}\nregister",
                "          port 8080\n          protocol udp\n          tcpopen 80,3,10\n"
                "          dsr enable\n}\nregister",
            )
        ),
        [
            "<string>:37:16: target 2 port 8080 differs from server 1 (80): DSR does not translate it",
            "<string>:38:20: target 2 protocol udp differs from server 1 (tcp): DSR does not translate it",
        ],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_error(name):
    text, expected = CASES[name]
    if expected is None:
        parse_text(text)
    else:
        assert errors(text) == expected


def test_several_errors_in_one_file_all_reported():
    with pytest.raises(ConfigError) as info:
        parse_file(str(CONFIGS / "bad.conf"))
    path = CONFIGS / "bad.conf"
    assert info.value.errors == [
        f"{path}:6:14: bad protocol 'tcpp': expected tcp or udp",
        f"{path}:10:12: bad IPv4 address '172.16.1.1000'",
        f"{path}:16:15: target 2 is not defined",
    ]


def test_errors_sorted_and_recovery_continues_after_each():
    text = seed(
        ("name eth0", "name eth0/1"),
        ("mask 255.255.255.0", "mask 33"),
        (
            "port 80\n          protocol tcp\n          targets",
            "port x\n          protocol tcp\n          targets",
        ),
        ("ipaddr 172.16.1.101", "ipaddr 172.16.1"),
    )
    found = errors(text)
    assert [tuple(map(int, e.split(":")[1:3])) for e in found] == [(5, 16), (13, 16), (22, 16), (36, 18)]


def test_hashseed_and_access_nftables():
    """`hashseed` reads decimal or hex and is written in decimal; nftables takes the hashing methods."""
    for value in ("0xDEADbeef", "3735928559"):
        config = parse_text(seed(("access raw\n", "access nftables\n")) + f"set hashseed {value}\n")
        assert config.settings.hashseed == 0xDEADBEEF and config.interfaces[1].access == "nftables"
        assert "\nset hashseed 3735928559\n" in render(config)
    for method in ("hash", "first", "maglev"):
        kernel = seed(("access raw\n", "access nftables\n"))
        text = kernel.replace("          targets 1,2\n", f"          targets 1,2\n method {method}\n")
        assert parse_text(text).servers[1].method == method
    assert "hashseed" not in render(parse_text(SEED + "set hashseed 0x6473726c\n"))  # the default
    assert parse_text(SEED + "set hashseed 0\n").settings.hashseed == 0


def test_vrrp_peers_are_read_sorted_and_rendered():
    text = SEED + "vrrp {\n vrid 1\n priority 100\n network 1\n peers 172.16.1.251,10.0.0.9,172.16.1.9\n}\n"
    config = parse_text(text, "x.conf")
    assert config.vrrp is not None and config.vrrp.peers == tuple(
        IPv4Address(a) for a in ("10.0.0.9", "172.16.1.9", "172.16.1.251")
    )
    assert config.warnings == ()
    assert render(config).endswith("    network 1\n    peers 10.0.0.9,172.16.1.9,172.16.1.251\n}\n")


def test_vrrp_without_peers_is_a_warning():
    config = parse_text(SEED + "vrrp {\n vrid 1\n priority 100\n network 1\n}\n", "x.conf")
    assert config.vrrp is not None and config.vrrp.peers == ()
    assert config.warnings == (
        "x.conf:45:1: warning: vrrp has no 'peers': any host on the segment can take over the shared "
        "addresses with a forged advert; list the other balancers, e.g. 'peers 172.16.1.251'",
    )
    assert "peers" not in render(config)


def test_dsrlb_check_prints_the_peers_warning(tmp_path):
    path = tmp_path / "vrrp.conf"
    path.write_text(SEED + "vrrp {\n vrid 1\n priority 100\n network 1\n}\n")
    done = subprocess.run([DSRLB, "check", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert f"{path}:45:1: warning: vrrp has no 'peers'" in done.stderr + done.stdout


def test_gateway_is_a_warning():
    config = parse_text(SEED + "gateway {\n ipaddr 172.16.1.254\n ping 3,10\n}\n", "x.conf")
    assert config.warnings == ("x.conf:45:1: warning: gateway has no effect in DSR mode",)


SERVES_NOTHING = {
    "only modules": (
        "modules arp,slb\n",
        [
            "x.conf:1:1: warning: no interface is registered and enabled: the daemon needs one to start",
            "x.conf:1:1: warning: this config serves nothing: no server is defined",
        ],
    ),
    "server never enabled": (
        seed(("enable    server 1\n", "")),
        [
            "x.conf:3:1: warning: this config serves nothing: no server is registered and enabled",
            "x.conf:20:1: warning: server 1 is not enabled: it is not used (add 'enable server 1')",
        ],
    ),
    "server never registered": (
        seed(("register  server 1\nenable    server 1\n", "")),
        [
            "x.conf:3:1: warning: this config serves nothing: no server is registered and enabled",
            "x.conf:20:1: warning: server 1 is neither registered nor enabled: it is not used "
            "(add 'register server 1' and 'enable server 1')",
        ],
    ),
    "targets never enabled": (
        seed(("enable    targets 1,2\n", "")),
        [
            "x.conf:20:1: warning: server 1 serves nothing: "
            "none of its targets 1,2 is registered and enabled",
            "x.conf:28:1: warning: target 1 is not enabled: it is not used (add 'enable target 1')",
            "x.conf:35:1: warning: target 2 is not enabled: it is not used (add 'enable target 2')",
        ],
    ),
    "vip outside every network": (
        seed(("ipaddr 172.16.1.10\n", "ipaddr 10.9.9.9\n")),
        [
            "x.conf:21:18: warning: server 1 VIP 10.9.9.9 is outside every network (172.16.1.0/24): "
            "no client on the segment reaches it through this balancer"
        ],
    ),
    "vip is a target": (
        seed(("ipaddr 172.16.1.10\n", "ipaddr 172.16.1.101\n")),
        [
            "x.conf:21:18: warning: server 1 VIP 172.16.1.101 is the address of target 2: "
            "a VIP must be an address of its own"
        ],
    ),
    "vip is the balancer": (
        seed(("ipaddr 172.16.1.10\n", "ipaddr 172.16.1.252\n")),
        [
            "x.conf:21:18: warning: server 1 VIP 172.16.1.252 is the balancer's own address "
            "(real of network 1): a VIP must be an address of its own"
        ],
    ),
}


@pytest.mark.parametrize("name", SERVES_NOTHING)
def test_configs_that_serve_nothing_are_warnings(name):
    text, expected = SERVES_NOTHING[name]
    assert list(parse_text(text, "x.conf").warnings) == expected


def test_dsrlb_check_warns_exits_0_and_fails_with_strict(tmp_path):
    path = tmp_path / "modules.conf"
    path.write_text("modules arp,slb\n")
    done = run_check(path)
    assert done.returncode == 0 and done.stdout == f"{path}: ok (2 warnings)\n"
    assert done.stderr.count("warning:") == 2 and "serves nothing" in done.stderr
    done = subprocess.run([str(DSRLB), "check", "--strict", str(path)], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == "" and "serves nothing" in done.stderr
    done = subprocess.run([str(DSRLB), "check", "--strict", str(SEED_PATH)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""


HEADS = {"network": "network   1 {\n", "server": "server    1 {\n"}
UNSUPPORTED = {
    # "KIND: KEY VALUE" goes into the seed's block of that kind, any other snippet at the end of the seed;
    # the value: line in the snippet, column, start of the message
    "nat 1 {\n addr 10.0.0.1\n}\n": "1:1: not supported by dsrlb: NAT ('nat'; dsrlb forwards in DSR mode",
    "server: tnat 1": "1:2: not supported by dsrlb: transparent NAT ('tnat'",
    "set ipforwarding 1\n": "1:5: not supported by dsrlb: IP forwarding ('ipforwarding'",
}


@pytest.mark.parametrize("snippet", UNSUPPORTED)
def test_balanceng_features_dsrlb_lacks_are_named(snippet):
    """Said as such, not as an unknown key with a misleading "did you mean" (mask6 -> mask)."""
    line, col, message = UNSUPPORTED[snippet].split(":", 2)
    kind, colon, key = snippet.partition(": ")
    if colon:
        text = seed((HEADS[kind], f"{HEADS[kind]} {key}\n"))
        line = str(SEED[: SEED.index(HEADS[kind])].count("\n") + 1 + int(line))
    else:
        text, line = SEED + snippet, str(SEED.count("\n") + int(line))
    found = errors(text)
    assert len(found) == 1 and found[0].startswith(f"<string>:{line}:{col}:{message}"), found
    assert "did you mean" not in found[0] and "unknown" not in found[0]


def test_seed_modules_tnat_and_nat_stay_accepted():
    assert {"tnat", "nat"} <= parse_text(SEED).modules


def test_unclosed_block_is_reported_before_what_follows_from_it():
    text = seed(("          dsr enable\n}\ntarget    2 {", "          dsr enable\ntarget    2\n{"))
    assert (
        errors(text)[0] == "<string>:28:13: unbalanced '{': target 1 is not closed before 'target' on line 34"
    )
    text = seed(("          targets 1,2\n}\n", "          targets 1,2,3\n"))
    found = errors(text)
    assert found[0].startswith("<string>:20:13: unbalanced '{': server 1 is not closed"), found


def test_version():
    done = subprocess.run([str(DSRLB), "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"dsrlb \d+\.\d+\.\d+\S* \(build [0-9a-f]{12}\)\n", done.stdout)


def test_unreadable_and_binary_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_file(str(tmp_path / "nope.conf"))
    assert info.value.errors == [f"{tmp_path / 'nope.conf'}: cannot read: No such file or directory"]
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"modules slb\n  name \xff\n")
    with pytest.raises(ConfigError) as info:
        parse_file(str(binary))
    assert info.value.errors == [f"{binary}:2:8: not UTF-8 text (byte 0xff)"]


# --- render ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SEED_PATH, CONFIGS / "full.conf"], ids=lambda p: p.name)
def test_render_round_trip(path):
    config = parse_file(str(path))
    text = render(config)
    again = parse_text(text)
    assert same(again, config)
    assert render(again) == text  # canonical: a fixed point


def test_render_seed_is_readable_balanceng():
    assert render(parse_text(SEED)) == (
        "// configuration taken ...\n// BalanceNG ...\n"
        "modules vrrp,arp,ping,hc,master,slb,tnat,nat,rt\n"
        "\ninterface 1 {\n    name eth0\n}\nregister interface 1\nenable interface 1\n"
        '\nnetwork 1 {\n    name "local network"\n    addr 172.16.1.0\n    mask 255.255.255.0\n'
        "    real 172.16.1.252\n    virt 172.16.1.253\n    interface 1\n}\n"
        "register network 1\nenable network 1\n"
        "\nserver 1 {\n    ipaddr 172.16.1.10\n    port 80\n    protocol tcp\n    targets 1,2\n}\n"
        "register server 1\nenable server 1\n"
        "\ntarget 1 {\n    ipaddr 172.16.1.100\n    port 80\n    protocol tcp\n    tcpopen 80,3,10\n"
        "    dsr enable\n}\n"
        "\ntarget 2 {\n    ipaddr 172.16.1.101\n    port 80\n    protocol tcp\n    tcpopen 80,3,10\n"
        "    dsr enable\n}\nregister targets 1,2\nenable targets 1,2\n"
    )


def test_render_keeps_the_leading_comments_only():
    """The comment lines above the first statement are the file's header (e.g. "managed by Ansible"):
    canonical text keeps them, stripped, and drops every other comment."""
    config = parse_text("\n  // managed by Ansible \n\n//\tsecond\nmodules slb // why\n// later\n")
    assert config.comments == ("// managed by Ansible", "//\tsecond")
    assert render(config) == "// managed by Ansible\n//\tsecond\nmodules slb\n"
    assert parse_text("modules slb\n// after\n").comments == ()


def test_render_quotes_what_needs_it():
    text = (
        'modules slb,hc\nset control "/run/my dsrlb/c.sock"\n'
        'interface 1 {\n name "eth0"\n}\n'
        'target 1 {\n ipaddr 172.16.1.100\n http "80,/a{b}//c,1,2"\n}\n'
    )
    config = parse_text(text)
    assert config.settings.control == "/run/my dsrlb/c.sock"
    assert config.targets[1].checks[0].path == "/a{b}//c"
    rendered = render(config)
    assert 'set control "/run/my dsrlb/c.sock"\n' in rendered and "    name eth0\n" in rendered
    assert same(parse_text(rendered), config)


def test_render_rejects_unwritable_string():
    config = parse_text(SEED)
    net = dataclasses.replace(config.networks[1], name='say "hi"')
    with pytest.raises(ValueError):
        render(dataclasses.replace(config, networks={1: net}))


# --- dsrlb check -----------------------------------------------------------------------------------


def run_check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DSRLB), "check", *map(str, files)], capture_output=True, text=True, timeout=60)


def test_cli_check_seed_ok():
    result = run_check(SEED_PATH)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{SEED_PATH}: ok\n"


def test_cli_check_bad_file():
    bad = CONFIGS / "bad.conf"
    result = run_check(SEED_PATH, bad)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert lines and all(re.match(rf"{re.escape(str(bad))}:\d+:\d+: ", line) for line in lines)
    assert len(lines) == 3
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_check_missing_file(tmp_path):
    result = run_check(tmp_path / "missing.conf")
    assert result.returncode != 0
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


# --- fuzz ------------------------------------------------------------------------------------------

_PIECES = ["{", "}", '"', "//", ",", "-", "\n", "0", "99999", "1-65535", "x", "targets", "server", "enable"]


def _mutate(rng: random.Random, text: str) -> str:
    tokens = re.findall(r"\s+|[^\s]+", text)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(tokens))
        op = rng.randrange(6)
        if op == 0:
            del tokens[i]
        elif op == 1:
            tokens.insert(i, tokens[i])
        elif op == 2:
            j = rng.randrange(len(tokens))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif op == 3:
            tokens.insert(i, rng.choice(_PIECES))
        elif op == 4:
            word = tokens[i]
            k = rng.randrange(len(word) + 1)
            tokens[i] = word[:k] + rng.choice(_PIECES) + word[k:]
        else:
            return "".join(tokens)[: rng.randrange(len(text))]
        if not tokens:
            break
    return "".join(tokens)


@pytest.mark.parametrize("base", [SEED_PATH, CONFIGS / "full.conf"], ids=lambda p: p.name)
def test_fuzz_never_a_traceback(base):
    rng = random.Random(20240601)
    original = base.read_text()
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        text = _mutate(rng, original)
        try:
            config = parse_text(text, "f.conf")
        except ConfigError as err:
            outcomes["error"] += 1
            assert err.errors
            for line in err.errors:
                assert re.match(r"f\.conf:\d+:\d+: \S", line), line
        else:
            outcomes["ok"] += 1
            assert same(parse_text(render(config)), config)
    assert outcomes["error"] > 100


# --- IPv6 and bngsync (BalanceNG's keys) -------------------------------------------------------------


def test_balanceng_ipv6_example_is_accepted_and_round_trips():
    config = parse_file(str(CONFIGS / "ipv6-dsr.conf"))
    net = config.networks[1]
    assert (str(net.network6), str(net.real6), str(net.virt6)) == (
        "2001:db8::/32",
        "2001:db8::2:1",
        "2001:db8::2:3",
    )
    assert config.servers[1].ipaddr == IPv6Address("2001:db8::2:4")
    assert config.targets[1].ipaddr == IPv6Address("2001:db8::1:1")
    assert config.targets[1].checks == (HealthCheck("ping", 3.0, 10.0),)  # written ping6
    text = render(config)
    assert "ipaddr6 2001:db8::2:4" in text and "ping6 3,10" in text and "mask6 32" in text
    assert same(parse_text(text), config)


def test_balanceng_bngsync_example_is_accepted():
    config = parse_file(str(CONFIGS / "bngsync-node-a.conf"))
    assert config.networks[1].syncpeer == IPv4Address("172.17.2.102")
    assert (config.settings.sessionautoresync, config.settings.sessionsyncack) == (1, 1)
    assert any("'multithreading' is ignored" in w for w in config.warnings)
    assert "multithreading" not in render(config) and "syncpeer 172.17.2.102" in render(config)


V6_NETWORK = (
    "          virt 172.16.1.253\n",
    "          virt 172.16.1.253\n mask6 64\n real6 2001:db8::252\n",
)


@pytest.mark.parametrize(
    "edits, expected",
    [
        (
            [("ipaddr 172.16.1.10\n", "ipaddr 2001:db8::10\n")],
            "21:18: bad IPv4 address '2001:db8::10': an IPv6 address goes in 'ipaddr6'",
        ),
        (
            [("ipaddr 172.16.1.10\n", "ipaddr6 172.16.1.10\n")],
            "21:19: bad IPv6 address '172.16.1.10': an IPv4 address goes in 'ipaddr'",
        ),
        (
            [("ipaddr 172.16.1.100", "ipaddr6 2001:db8::100")],
            "29:19: target 1 is IPv6, server 1 IPv4 (172.16.1.10): DSR does not translate it",
        ),
        ([V6_NETWORK, ("ipaddr 172.16.1.10\n", "ipaddr 172.16.1.10\n ipaddr6 2001:db8::10\n")], "both"),
        ([(" real 172.16.1.252", " real 172.16.1.252\n virt6 2001:db8::3")], "'virt6' needs 'real6'"),
        ([V6_NETWORK, (" real 172.16.1.252", " real 172.16.1.252\n virt6 2001:db9::3")], "outside network"),
        (
            [(" real 172.16.1.252", " real 172.16.1.252\n mask6 129")],
            "mask6 prefix length 129 is out of range",
        ),
        ([(" real 172.16.1.252", " real 172.16.1.252\n syncpeer 10.0.0.1")], "syncpeer 10.0.0.1 is outside"),
        (
            [(" real 172.16.1.252", " real 172.16.1.252\n syncpeer 172.16.1.252")],
            "syncpeer must differ from real",
        ),
        (
            [(" real 172.16.1.252", " real 172.16.1.252\n syncpeer 172.16.1.251")],
            "syncpeer needs a 'vrrp' block",
        ),
        (
            [("modules   vrrp", "set sessionsyncack 2\nmodules   vrrp")],
            "sessionsyncack 2 is out of range 0..1",
        ),
    ],
)
def test_ipv6_and_sync_errors(edits, expected):
    found = errors(seed(*edits))
    assert any(expected in error for error in found), found


def test_ping_checks_the_address_family_of_its_target():
    text = seed(
        V6_NETWORK,
        ("ipaddr 172.16.1.10\n", "ipaddr6 2001:db8::10\n"),
        ("ipaddr 172.16.1.100", "ipaddr6 2001:db8::100\n ping 3,10"),
        ("ipaddr 172.16.1.101", "ipaddr6 2001:db8::101\n ping6 3,10"),
    )
    assert [e.split(": ", 1)[1] for e in errors(text)] == [
        "'ping' cannot check target 1 at its ipaddr6 address: use 'ping6'"
    ]


# --- VRRP over IPv6 (`family ipv6`, dsrlb extension) -------------------------------------------------------
DUAL = SEED.replace(
    "          virt 172.16.1.253\n", "          virt 172.16.1.253\n mask6 64\n real6 2001:db8::252\n"
)


def vrrp6(*lines: str, text: str = DUAL) -> str:
    return (
        text
        + "vrrp {\n vrid 1\n priority 100\n network 1\n"
        + "".join(f" {line}\n" for line in lines)
        + "}\n"
    )


def test_vrrp_family_ipv6_is_read_and_rendered_and_ipv4_writes_nothing():
    config = parse_text(vrrp6("family ipv6", "peers fe80::2,fe80::1:2"))
    assert config.vrrp is not None and config.vrrp.family == "ipv6"
    assert config.vrrp.peers == (IPv6Address("fe80::2"), IPv6Address("fe80::1:2"))
    text = render(config)
    assert text.endswith("    network 1\n    family ipv6\n    peers fe80::2,fe80::1:2\n}\n")
    assert same(parse_text(text), config)
    lone = parse_text(vrrp6("family ipv6"))
    assert lone.warnings[0].endswith(
        "list the other balancers, their link-local addresses, e.g. 'peers fe80::5054:ff:fe00:2'"
    )
    default = parse_text(vrrp6("family ipv4", "peers 172.16.1.251"))
    assert default.vrrp is not None and default.vrrp.family == "ipv4"
    assert "family" not in render(default)


def test_vrrp_family_errors_point_at_file_line_col(tmp_path):
    line = DUAL.count("\n") + 5  # the first key line after vrid, priority, network
    assert errors(vrrp6("family ipv5")) == [f"<string>:{line}:9: bad family 'ipv5': expected ipv4 or ipv6"]
    assert errors(vrrp6("family ipv6", "version 2", "advert 1000")) == [
        f"<string>:{line + 1}:10: VRRP version 2 runs over IPv4 only: family ipv6 needs version 3"
    ]
    assert errors(vrrp6("family ipv6", text=SEED)) == [
        f"<string>:{SEED.count(chr(10)) + 5}:9: family ipv6 needs network 1 to have 'real6' and 'mask6': "
        "VRRP over IPv6 protects the network's IPv6 addresses (virt6, IPv6 VIPs)"
    ]
    assert errors(vrrp6("family ipv6", "peers fe80::2,172.16.1.251")) == [
        f"<string>:{line + 1}:16: peer 172.16.1.251 is not IPv6: with family ipv6 the peers are the other "
        "balancers' IPv6 link-local addresses (fe80::/10), their adverts' source"
    ]
    assert errors(vrrp6("peers fe80::2")) == [
        f"<string>:{line}:8: peer fe80::2 is IPv6 but VRRP runs over IPv4: list the other balancers' IPv4 "
        "addresses, or set 'family ipv6' (then the peers are their IPv6 link-local addresses)"
    ]
    assert errors(vrrp6("family ipv6", "peers 2001:db8::251")) == [
        f"<string>:{line + 1}:8: peer 2001:db8::251 is not link-local: with family ipv6 the peers are the "
        "other balancers' IPv6 link-local addresses (fe80::/10), the source of their adverts"
    ]
    path = tmp_path / "v6.conf"
    path.write_text(vrrp6("family ipv6", "version 2"))
    with pytest.raises(ConfigError) as info:
        parse_file(path)
    assert info.value.errors[0].startswith(f"{path}:{line + 1}:10: VRRP version 2")
