"""The packet filter, run on hand-built frames by a small classic-BPF interpreter: what reaches the daemon's
ring in each access mode (raw: ARP, VRRP, neighbour advertisements, solicitations for its addresses and all
IPv4 and IPv6 to them; nftables: the kernel forwards TCP and UDP to them, so of that only ICMP and ICMPv6)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from dsrlb.dataplane import bpf
from dsrlb.dataplane.packet import neighbor_advertisement, neighbor_solicitation
from dsrlb.dataplane.ring import check_filter

VIP = IPv4Address("172.16.1.10")
VIRT = IPv4Address("172.16.1.253")
OTHER = IPv4Address("172.16.1.252")  # the balancer's own `real`: not the filter's business
VIP6 = IPv6Address("2001:db8:1::10")
VIRT6 = IPv6Address("2001:db8:1::fd")
OTHER6 = IPv6Address("2001:db8:1::fc")
ADDRESSES = [VIP, VIRT, VIP6, VIRT6]
IPV4_ADDRESSES = [VIP, VIRT]
TCP, UDP, ICMP, VRRP, GRE, ICMPV6 = 6, 17, 1, 112, 47, 58
MAC = bytes.fromhex("02000000000b")


def run(program: list[bpf.Insn], frame: bytes) -> int:
    """Classic BPF as the kernel runs it, for the instructions the filter uses: the bytes to keep
    (0: drop). A load beyond the frame ends the program with 0, like the kernel's."""
    a, x, pc = 0, 0, 0
    sizes = {bpf.LDH_ABS: 2, bpf.LDW_ABS: 4, bpf.LDB_ABS: 1, bpf.LDW_IND: 4}
    for _ in range(10_000):
        code, jt, jf, k = program[pc]
        pc += 1
        if code in sizes:
            at = k + x if code == bpf.LDW_IND else k
            if at + sizes[code] > len(frame):
                return 0
            a = int.from_bytes(frame[at : at + sizes[code]], "big")
        elif code == bpf.LDX_IMM:
            x = k
        elif code == bpf.JEQ_K:
            assert jt < 256 and jf < 256, "conditional jumps have 8-bit offsets"
            pc += jt if a == k else jf
        elif code == bpf.JA:
            pc += k
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


def ipv6(dst: IPv6Address, nh: int, src: str = "2001:db8:c::a", payload: bytes = b"") -> bytes:
    l4 = payload or bytes(20)
    header = struct.pack("!IHBB16s16s", 0x60000000, len(l4), nh, 64, IPv6Address(src).packed, dst.packed)
    return ether(0x86DD, header + l4)


def echo6(dst: IPv6Address) -> bytes:
    return ipv6(dst, ICMPV6, payload=bytes.fromhex("8000000000010001"))


def solicit(target: IPv6Address) -> bytes:
    return neighbor_solicitation(MAC, IPv6Address("2001:db8:1::fe").packed, target.packed)


ARP = ether(0x0806, bytes.fromhex("0001080006040001") + bytes(20))
VRRP_ADVERT = ipv4(IPv4Address("224.0.0.18"), VRRP, "172.16.1.251")
VRRP6_ADVERT = ipv6(IPv6Address("ff02::12"), VRRP, "fe80::1")
ADVERT = neighbor_advertisement(MAC, IPv6Address("2001:db8:1::64").packed, OTHER6.packed, MAC, True)
IPV6 = ether(0x86DD, bytes(40))


def passes(program: list[bpf.Insn], frame: bytes) -> bool:
    kept = run(program, frame)
    assert kept in (0, bpf.SNAPLEN)
    return kept == bpf.SNAPLEN


def test_raw_mode_passes_arp_vrrp_and_any_ipv4_to_the_addresses() -> None:
    program = bpf.program(ADDRESSES)
    assert passes(program, ARP)
    assert passes(program, VRRP_ADVERT)
    for address in IPV4_ADDRESSES:
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
    for address in IPV4_ADDRESSES:
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
    assert not passes(program, IPV6)  # over the IPv4 section by the one unconditional jump


@pytest.mark.parametrize("kernel_forwards", [False, True])
def test_ipv6_vrrp_advertisements_and_solicitations_for_the_addresses(kernel_forwards: bool) -> None:
    program = bpf.program(ADDRESSES, kernel_forwards)
    assert passes(program, VRRP6_ADVERT)
    assert passes(program, ADVERT)  # any advertisement: what target MACs are learned from, like ARP
    assert passes(program, solicit(VIP6)) and passes(program, solicit(VIRT6))
    assert not passes(program, solicit(OTHER6))
    for address in (VIP6, VIRT6):
        assert passes(program, echo6(address)), address
        for nh in (TCP, UDP, GRE, 0):  # 0: a hop-by-hop header, for the forwarder to count as a drop
            assert passes(program, ipv6(address, nh)) is not kernel_forwards, (address, nh)
    for nh in (TCP, UDP, ICMPV6):
        assert not passes(program, ipv6(OTHER6, nh)), nh
    assert not passes(program, echo6(OTHER6))
    assert not passes(program, IPV6)
    assert not passes(program, echo6(VIP6)[:50])  # cut in the destination address


def test_an_ipv6_address_differing_in_any_word_is_not_ours() -> None:
    program = bpf.program([VIP6])
    for word in range(4):
        other = bytearray(VIP6.packed)
        other[4 * word + 3] ^= 1
        assert not passes(program, ipv6(IPv6Address(bytes(other)), UDP)), word
        assert not passes(program, solicit(IPv6Address(bytes(other)))), word


@pytest.mark.parametrize("kernel_forwards", [False, True])
@pytest.mark.parametrize("ipv6_share", [0, 1, 125, bpf.MAX_ADDRESSES])
def test_both_families_pass_at_the_limit_and_the_kernel_takes_the_filter(
    kernel_forwards: bool, ipv6_share: int
) -> None:
    """MAX_ADDRESSES counts both families: any mix at the limit fits the 8-bit jumps (the interpreter
    checks them) and the kernel's verifier."""
    addresses: list[IPv4Address | IPv6Address] = [
        IPv6Address(0x20010DB8000100000000000000000001 + (i << 40)) for i in range(ipv6_share)
    ]
    addresses += [IPv4Address(0x0A000001 + i) for i in range(bpf.MAX_ADDRESSES - ipv6_share)]
    program = bpf.program(reversed(addresses), kernel_forwards)
    check_filter(program)
    for address in (addresses[0], addresses[len(addresses) // 2], addresses[-1]):
        if address.version == 6:
            assert passes(program, echo6(address)) and passes(program, solicit(address)), address
            assert passes(program, ipv6(address, TCP)) is not kernel_forwards, address
        else:
            assert passes(program, ipv4(address, ICMP)), address
            assert passes(program, ipv4(address, TCP)) is not kernel_forwards, address
    assert not passes(program, echo6(OTHER6)) and not passes(program, ipv4(OTHER, ICMP))
    assert passes(program, ARP) and passes(program, VRRP_ADVERT) and passes(program, VRRP6_ADVERT)
    with pytest.raises(ValueError, match="at most"):
        bpf.program([*addresses, IPv6Address("2001:db8:ffff::1")], kernel_forwards)
