"""HA mode bgp without a network: the `bgp` block (parser, model, canonical text, errors), which VIPs a
node announces and why, the table it forwards by, BIRD's CLI replies, `show bgp`, and the BIRD config
the tools render (checked by `bird -p` where BIRD is installed)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dsrlb import bgp, control, tables
from dsrlb.config.model import Bgp
from dsrlb.config.parser import ConfigError, parse_text, render
from dsrlb.dataplane.nftables import ruleset, transaction
from dsrlb_tools import bird

SEED = (Path(__file__).resolve().parents[3] / "examples" / "dsr-example.conf").read_text()
VIP = IPv4Address("172.16.1.10")
VRRP = "vrrp {\n    vrid 1\n    priority 100\n    network 1\n    peers 172.16.1.251\n}\n"


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_text(text, "lb.conf")
    return info.value.errors


# --- the bgp block ------------------------------------------------------------------------------------


def test_an_empty_bgp_block_takes_the_defaults_and_writes_back_empty() -> None:
    config = parse_text(SEED + "bgp {\n}\n")
    assert config.bgp == Bgp("dsrlb0", "/run/bird/bird.ctl", 2.0)
    assert config.vrrp is None
    assert render(config).endswith("enable targets 1,2\n\nbgp {\n}\n")


def test_bgp_keys_are_written_last_in_canonical_order_and_round_trip() -> None:
    config = parse_text(SEED + "bgp {\n  grace 0.5\n  socket /run/b.ctl\n  device lb0\n}\n")
    assert config.bgp == Bgp("lb0", "/run/b.ctl", 0.5)
    text = render(config)
    assert text.endswith("\nbgp {\n    device lb0\n    socket /run/b.ctl\n    grace 0.5\n}\n")
    assert render(parse_text(text)) == text
    assert parse_text(text).bgp == config.bgp


def test_keys_at_their_default_are_left_out() -> None:
    text = render(parse_text(SEED + "bgp {\n device dsrlb0\n socket /run/bird/bird.ctl\n grace 2\n}\n"))
    assert text.endswith("\nbgp {\n}\n")


@pytest.mark.parametrize("first, second", [("vrrp", "bgp"), ("bgp", "vrrp")])
def test_vrrp_and_bgp_in_one_file_is_an_error_naming_both(first: str, second: str) -> None:
    blocks = {"vrrp": VRRP, "bgp": "bgp {\n}\n"}
    text = SEED + blocks[first] + blocks[second]
    line = text.splitlines().index(f"{second} {{") + 1
    first_line = text.splitlines().index(f"{first} {{") + 1
    assert errors(text) == [
        f"lb.conf:{line}:1: mixed HA modes: {second} and {first} (line {first_line}) in one file; "
        "keep one of the two blocks"
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        ("socket run/bird.ctl", "bad BIRD socket 'run/bird.ctl': expected an absolute path"),
        ("device a/b", "bad interface name 'a/b'"),
        ("device abcdefghijklmnop", "bad interface name 'abcdefghijklmnop'"),
        ("grace 0", "grace 0 is out of range"),
        ("grace soon", "bad grace 'soon': expected seconds"),
        ("peer 1.2.3.4", "unknown key 'peer' in bgp"),
    ],
)
def test_bad_bgp_keys_are_reported_where_they_are(body: str, message: str) -> None:
    text = SEED + f"bgp {{\n    {body}\n}}\n"
    line = len(SEED.splitlines()) + 2
    (error,) = errors(text)
    assert error.startswith(f"lb.conf:{line}:") and message in error, error


def test_bgp_block_takes_no_id() -> None:
    (error,) = errors(SEED + "bgp 1 {\n}\n")
    assert "unexpected '1': expected '{'" in error


# --- what is announced ----------------------------------------------------------------------------------

OTHER = IPv4Address("172.16.1.11")


def test_a_ready_node_announces_the_vips_it_can_serve() -> None:
    assert bgp.decide({VIP: True, OTHER: False}, ready=True, stopping=False) == {
        VIP: None,
        OTHER: bgp.NO_TARGET,
    }


def test_a_node_that_is_not_ready_or_stopping_announces_nothing() -> None:
    assert bgp.decide({VIP: True, OTHER: False}, ready=False, stopping=False) == {
        VIP: bgp.NOT_READY,
        OTHER: bgp.NOT_READY,
    }
    assert bgp.decide({VIP: True}, ready=True, stopping=True) == {VIP: bgp.STOPPING}
    assert bgp.decide({VIP: True}, ready=False, stopping=True) == {VIP: bgp.STOPPING}


TWO_SERVERS = SEED.replace("enable    server 1", "enable    server 1\nenable server 2").replace(
    "register  server 1",
    "register  server 1\nserver 2 {\n ipaddr 172.16.1.11\n port 443\n protocol tcp\n targets 2\n}\n"
    "register server 2",
)
MACS = {IPv4Address("172.16.1.100").packed: b"\x02" * 6, IPv4Address("172.16.1.101").packed: b"\x04" * 6}


def test_a_vip_is_servable_while_one_of_its_targets_is_up_enabled_and_resolved() -> None:
    config = parse_text(TWO_SERVERS.replace("port 80\n          protocol tcp\n          tcpopen", "tcpopen"))
    up = {1: tables.TargetStatus(), 2: tables.TargetStatus()}
    assert tables.servable(config, up, MACS) == {VIP: True, OTHER: True}
    down2 = {1: tables.TargetStatus(), 2: tables.TargetStatus(up=False)}
    assert tables.servable(config, down2, MACS) == {VIP: True, OTHER: False}
    drained = {1: tables.TargetStatus(admin="draining"), 2: tables.TargetStatus(admin="disabled")}
    assert tables.servable(config, drained, MACS) == {VIP: False, OTHER: False}
    assert tables.servable(config, up, {}) == {VIP: False, OTHER: False}, "no MAC known: no target yet"


def test_bgp_mode_tables_answer_ping_but_not_arp_for_the_vips() -> None:
    config = parse_text(SEED)
    network = config.networks[1]
    status = {1: tables.TargetStatus(), 2: tables.TargetStatus()}
    states = {1: tables.ServiceState()}
    built = tables.build(config, network, status, MACS, b"\x06" * 6, states, arp=False)
    assert VIP.packed in built.table.answer and built.table.arp == frozenset()
    assert built.table.services, "and forwards"
    assert tables.build(config, network, status, MACS, b"\x06" * 6, states).table.arp is None


def test_the_kernel_table_drops_arp_requests_for_our_addresses() -> None:
    """With the VIPs on the announcement device the balancer's kernel would answer ARP for them."""
    config = parse_text(SEED)
    table = tables.build(config, config.networks[1], {}, {}, b"\x06" * 6, {}, forwarding=False).table
    text = transaction(ruleset(table, "eth0", b"\x06" * 6, [VIP], False), None, "dsrlb")
    assert "arp operation request arp daddr ip @addresses drop" in text


# --- the device -------------------------------------------------------------------------------------------


def test_address_messages_are_rtnetlink_requests_for_a_slash_32() -> None:
    msg = bgp.address_message(bgp.RTM_NEWADDR, 7, 3, VIP)
    length, kind, flags, seq, _ = bgp.NLMSGHDR.unpack_from(msg)
    assert (length, kind, seq) == (len(msg), bgp.RTM_NEWADDR, 7)
    assert flags & bgp.NLM_F_ACK and flags & bgp.NLM_F_CREATE
    family, prefix, _, _, index = bgp.IFADDRMSG.unpack_from(msg, bgp.NLMSGHDR.size)
    assert (family, prefix, index) == (socket.AF_INET, 32, 3)
    assert msg.count(VIP.packed) == 2  # IFA_LOCAL and IFA_ADDRESS
    delete = bgp.address_message(bgp.RTM_DELADDR, 8, 3, VIP)
    assert not bgp.NLMSGHDR.unpack_from(delete)[2] & bgp.NLM_F_CREATE


def test_acks_carry_the_errno() -> None:
    ack = bgp.NLMSGHDR.pack(36, bgp.NLMSG_ERROR, 0, 1, 0) + (-17).to_bytes(4, "little", signed=True)
    assert bgp.ack_error(ack) == 17
    assert bgp.ack_error(bgp.NLMSGHDR.pack(36, bgp.NLMSG_ERROR, 0, 1, 0) + bytes(4)) == 0


# --- BIRD's CLI ---------------------------------------------------------------------------------------------

# What BIRD 2.0.12 answers to `show protocols` (recorded), after its greeting.
GREETING = "0001 BIRD 2.0.12 ready.\n"
PROTOCOLS = (
    "2002-Name       Proto      Table      State  Since         Info\n"
    "1002-device1    Device     ---        up     08:26:32.641  \n"
    " bfd1       BFD        ---        up     08:26:32.641  \n"
    " dsrlb      Direct     ---        up     08:26:32.641  \n"
    " upstream   BGP        ---        up     2026-12-01 08:26:35  Established   \n"
    " lb2        BGP        ---        start  08:26:32.641  Active        Socket: Connection refused\n"
    "0000 \n"
)


def test_a_reply_ends_at_the_first_code_followed_by_a_space() -> None:
    lines = (GREETING + PROTOCOLS + "0001 trailing\n").splitlines(keepends=True)
    it = iter(lines)
    assert bgp.read_reply(it) == [("0001", "BIRD 2.0.12 ready.")]
    reply = bgp.read_reply(it)
    assert reply[0][0] == "2002" and reply[-1] == ("0000", "") and len(reply) == 7
    assert {code for code, _ in reply[1:-1]} == {"1002"}, "continuation lines keep the code"


def test_protocol_rows_are_parsed() -> None:
    rows = bgp.parse_protocols(bgp.read_reply(iter(PROTOCOLS.splitlines(keepends=True))))
    assert [(r["name"], r["proto"], r["state"]) for r in rows] == [
        ("device1", "Device", "up"),
        ("bfd1", "BFD", "up"),
        ("dsrlb", "Direct", "up"),
        ("upstream", "BGP", "up"),
        ("lb2", "BGP", "start"),
    ]
    assert rows[3]["since"] == "2026-12-01 08:26:35" and rows[3]["info"] == "Established"
    assert rows[4]["info"] == "Active Socket: Connection refused"
    assert rows[0]["info"] == ""


@pytest.fixture
def fake_bird(tmp_path: Path) -> Iterator[Path]:
    """A BIRD control socket that greets, reads one command and answers with PROTOCOLS."""
    path = tmp_path / "bird.ctl"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(GREETING.encode())
            assert conn.makefile().readline() == "show protocols\n"
            conn.sendall(PROTOCOLS.encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    server.close()
    thread.join(2)


def test_bird_protocols_over_the_socket(fake_bird: Path) -> None:
    status, rows = asyncio.run(bgp.protocols(str(fake_bird)))
    assert status == "ok" and [r["name"] for r in rows][-2:] == ["upstream", "lb2"]


def test_an_unreachable_bird_is_a_state_not_a_traceback(tmp_path: Path) -> None:
    status, rows = asyncio.run(bgp.protocols(str(tmp_path / "none.ctl")))
    assert rows == [] and status == f"cannot reach BIRD at {tmp_path / 'none.ctl'}: No such file or directory"


# --- show bgp ------------------------------------------------------------------------------------------


def test_show_bgp_lists_each_vip_with_its_reason_and_renders_as_text() -> None:
    data = {
        "state": "enabled",
        **bgp.view("dsrlb0", {OTHER: bgp.NO_TARGET, VIP: None}, 3),
        "socket": "/run/bird/bird.ctl",
        "bird": "ok",
        "protocols": bgp.parse_protocols(bgp.read_reply(iter(PROTOCOLS.splitlines(keepends=True)))),
    }
    assert data["vips"] == [
        {"vip": "172.16.1.10", "announced": True, "reason": ""},
        {"vip": "172.16.1.11", "announced": False, "reason": "no healthy target"},
    ]
    text = control.render("bgp", data)
    assert "device           dsrlb0" in text and "bird             ok" in text
    assert "172.16.1.11  False      no healthy target" in text
    assert "upstream  BGP     ---    up     2026-12-01 08:26:35  Established" in text
    assert control.render("bgp", {"state": "disabled"}) == "state            disabled"


# --- the BIRD configs of the tools ----------------------------------------------------------------------

BALANCERS = [bird.Peer(f"lb{i}", f"172.16.1.24{i}", 65001) for i in (1, 2, 3)]


@pytest.mark.parametrize("bfd", [False, True])
def test_bird_configs_render_and_bird_accepts_them(tmp_path: Path, bfd: bool) -> None:
    timers = bird.Timers(bfd=bfd)
    router = bird.router("172.16.1.254", 65000, BALANCERS, timers)
    balancer = bird.balancer(
        "172.16.1.241", 65001, [bird.Peer("upstream", "172.16.1.254", 65000)], "lb0", timers
    )
    assert "merge paths on" in router and router.count("protocol bgp lb") == 3
    assert "neighbor 172.16.1.243 as 65001;" in router
    assert 'interface "lb0";' in balancer and 'ifname = "lb0" && net.len = 32' in balancer
    assert "export filter dsrlb_vips;" in balancer and "import none;" in balancer
    assert ("bfd on;" in balancer) is bfd and ("protocol bfd" in router) is bfd
    if shutil.which("bird") is None:
        pytest.skip("bird is not installed: text checked, not parsed")
    for name, text in (("router", router), ("balancer", balancer)):
        conf = tmp_path / f"{name}.conf"
        conf.write_text(text)
        check = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, f"{name}: {check.stderr}\n{text}"
