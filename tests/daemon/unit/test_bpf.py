"""The packet filter, run on hand-built frames by a small classic-BPF interpreter: what reaches the daemon's
ring in each access mode (raw: ARP, VRRP and all IPv4 to its addresses; nftables: the kernel forwards TCP and
UDP to them, so only ICMP to them, ARP and VRRP)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from dsrlb.dataplane import bpf

VIP = IPv4Address("172.16.1.10")
VIRT = IPv4Address("172.16.1.253")
OTHER = IPv4Address("172.16.1.252")  # the balancer's own `real`: not the filter's business
ADDRESSES = [VIP, VIRT]
TCP, UDP, ICMP, VRRP, GRE = 6, 17, 1, 112, 47


def run(program: list[bpf.Insn], frame: bytes) -> int:
    """Classic BPF as the kernel runs it, for the instructions the filter uses: the bytes to keep
    (0: drop). A load beyond the frame ends the program with 0, like the kernel's."""
    a, pc = 0, 0
    sizes = {bpf.LDH_ABS: 2, bpf.LDW_ABS: 4, bpf.LDB_ABS: 1}
    for _ in range(10_000):
        code, jt, jf, k = program[pc]
        pc += 1
        if code in sizes:
            if k + sizes[code] > len(frame):
                return 0
            a = int.from_bytes(frame[k : k + sizes[code]], "big")
        elif code == bpf.JEQ_K:
            pc += jt if a == k else jf
        elif code == bpf.RET_K:
            return k
        else:
            raise AssertionError(f"instruction {code:#x} not interpreted")
        assert 0 <= pc < len(program), f"jump beyond the program to {pc}"
    raise AssertionError("no return")


def ether(ethertype: int, payload: bytes) -> bytes:
    dst_src = bytes.fromhex("02000000000a02000000000b")
    return dst_src + struct.pack("!H", ethertype) + payload


def ipv4(dst: IPv4Address, proto: int, src: str = "198.18.0.10", payload: bytes = b"") -> bytes:
    l4 = payload or bytes(20)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, IPv4Address(src).packed, dst.packed
    )
    return ether(0x0800, header + l4)


ARP = ether(0x0806, bytes.fromhex("0001080006040001") + bytes(20))
VRRP_ADVERT = ipv4(IPv4Address("224.0.0.18"), VRRP, "172.16.1.251")
IPV6 = ether(0x86DD, bytes(40))


def passes(program: list[bpf.Insn], frame: bytes) -> bool:
    kept = run(program, frame)
    assert kept in (0, bpf.SNAPLEN)
    return kept == bpf.SNAPLEN


def test_raw_mode_passes_arp_vrrp_and_any_ipv4_to_the_addresses() -> None:
    program = bpf.program(ADDRESSES)
    assert passes(program, ARP)
    assert passes(program, VRRP_ADVERT)
    for address in ADDRESSES:
        for proto in (TCP, UDP, ICMP, GRE):
            assert passes(program, ipv4(address, proto)), (address, proto)
    for proto in (TCP, UDP, ICMP):
        assert not passes(program, ipv4(OTHER, proto)), proto
    assert not passes(program, IPV6)
    assert not passes(program, ipv4(VIP, TCP)[:20])  # cut before the IP header's addresses


def test_nftables_mode_passes_only_icmp_to_the_addresses_arp_and_vrrp() -> None:
    program = bpf.program(ADDRESSES, kernel_forwards=True)
    assert passes(program, ARP)
    assert passes(program, VRRP_ADVERT)
    for address in ADDRESSES:
        assert passes(program, ipv4(address, ICMP)), address
        for proto in (TCP, UDP, GRE):  # the kernel forwards (or drops) them: not a frame for the ring
            assert not passes(program, ipv4(address, proto)), (address, proto)
    for proto in (TCP, UDP, ICMP):
        assert not passes(program, ipv4(OTHER, proto)), proto
    assert not passes(program, IPV6)


@pytest.mark.parametrize("kernel_forwards", [False, True])
def test_every_address_passes_at_the_limit(kernel_forwards: bool) -> None:
    addresses = [IPv4Address(0x0A000001 + i) for i in range(bpf.MAX_ADDRESSES)]
    program = bpf.program(reversed(addresses), kernel_forwards)
    for address in (addresses[0], addresses[len(addresses) // 2], addresses[-1]):
        assert passes(program, ipv4(address, ICMP)), address
        assert passes(program, ipv4(address, TCP)) is not kernel_forwards, address
    after = IPv4Address(int(addresses[-1]) + 1)
    assert not passes(program, ipv4(after, ICMP))
    assert not passes(program, ipv4(after, TCP))
    assert passes(program, ARP) and passes(program, VRRP_ADVERT)
    assert not passes(program, IPV6)  # the longest jump of the program: to "drop"
