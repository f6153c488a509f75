"""Classic BPF filter so the kernel hands the forwarder only frames it has to look at.

Accepted: ARP, VRRP (IP protocol 112, IPv6 next header 112), IPv6 neighbour advertisements (what target
MACs are learned from, as all ARP is taken), neighbour solicitations whose target is one of the given
addresses, and IPv4 and IPv6 packets addressed to one of them (virtual servers and the network's `virt`;
only ICMP and ICMPv6 when the kernel forwards the rest). Everything else never leaves the kernel.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

# opcodes (linux/filter.h)
LDH_ABS = 0x28  # BPF_LD | BPF_H | BPF_ABS
LDW_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
LDW_IND = 0x40  # BPF_LD | BPF_W | BPF_IND: the word at X + k
LDX_IMM = 0x01  # BPF_LDX | BPF_W | BPF_IMM
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JA = 0x05  # BPF_JMP | BPF_JA: a jump by k, not limited to 8 bits like the conditional ones
RET_K = 0x06  # BPF_RET | BPF_K

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_VRRP = 112
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
ND_NS, ND_NA = 135, 136  # ICMPv6 types
SNAPLEN = 0x40000
# One compare per IPv4 address, and the IPv4 section must still reach its "drop" with an 8-bit jump; nine
# instructions per IPv6 address: 250 of either family keep the program far below the kernel's 4096. The
# config parser repeats this limit (config/ may not import dataplane/); a unit test keeps the two equal.
MAX_ADDRESSES = 250

Insn = tuple[int, int, int, int]


def program(addresses: Iterable[IPv4Address | IPv6Address], kernel_forwards: bool = False) -> list[Insn]:
    """The filter as (code, jt, jf, k) instructions; jumps are relative to the next instruction.

    With `kernel_forwards` (access nftables) only ICMP and ICMPv6 to the addresses reach the daemon: their
    TCP and UDP traffic is forwarded by the kernel, and a copy on the ring would cost a frame's work for
    nothing."""
    unique = set(addresses)
    ipv4 = sorted(int(a) for a in unique if a.version == 4)
    ipv6 = sorted(a.packed for a in unique if a.version == 6)
    if len(unique) > MAX_ADDRESSES:
        raise ValueError(
            f"{len(unique)} addresses (VIPs and virt): at most {MAX_ADDRESSES} fit in the packet filter"
        )
    v4 = _ipv4_section(ipv4, kernel_forwards)
    # layout: 0 ldh type; 1 jeq arp; 2 accept; 3 jeq ipv6; 4 ja ipv6 section; 5 jeq ip; 6 drop;
    #         7 IPv4 section; IPv6 section
    return [
        (LDH_ABS, 0, 0, 12),
        (JEQ_K, 0, 1, ETH_P_ARP),
        (RET_K, 0, 0, SNAPLEN),
        (JEQ_K, 0, 1, ETH_P_IPV6),
        (JA, 0, 0, 2 + len(v4)),
        (JEQ_K, 1, 0, ETH_P_IP),
        (RET_K, 0, 0, 0),
        *v4,
        *_ipv6_section(ipv6, kernel_forwards),
    ]


def _ipv4_section(addrs: list[int], kernel_forwards: bool) -> list[Insn]:
    """VRRP, then the destination address (only of ICMP with `kernel_forwards`) against `addrs`."""
    # layout: 0 ldb proto; 1 jeq vrrp; 2 accept; [3 jeq icmp]; ld dst; jeq addr...; drop; accept
    first = 5 if kernel_forwards else 4  # the first address compare
    drop = first + len(addrs)
    accept = drop + 1
    section: list[Insn] = [
        (LDB_ABS, 0, 0, 23),
        (JEQ_K, 0, 1, IPPROTO_VRRP),
        (RET_K, 0, 0, SNAPLEN),
    ]
    if kernel_forwards:
        section.append((JEQ_K, 0, drop - 4, IPPROTO_ICMP))
    section.append((LDW_ABS, 0, 0, 30))
    for i in range(len(addrs)):
        section.append((JEQ_K, accept - (first + i) - 1, 0, addrs[i]))
    return [*section, (RET_K, 0, 0, 0), (RET_K, 0, 0, SNAPLEN)]


def _ipv6_section(addrs: list[bytes], kernel_forwards: bool) -> list[Insn]:
    """VRRP and neighbour advertisements; then the target of a neighbour solicitation, or the destination
    address (only of ICMPv6 with `kernel_forwards`), against `addrs`. One compare list serves both: X is
    the offset of the address to compare from the destination's (the target is 24 bytes further)."""
    section: list[Insn] = [
        (LDB_ABS, 0, 0, 20),  # next header
        (JEQ_K, 0, 1, IPPROTO_VRRP),
        (RET_K, 0, 0, SNAPLEN),
    ]
    if kernel_forwards:
        section += [(JEQ_K, 1, 0, IPPROTO_ICMPV6), (RET_K, 0, 0, 0)]
    else:
        section.append((JEQ_K, 0, 6, IPPROTO_ICMPV6))  # to "X = 0"
    section += [
        (LDB_ABS, 0, 0, 54),  # ICMPv6 type
        (JEQ_K, 0, 1, ND_NA),
        (RET_K, 0, 0, SNAPLEN),
        (JEQ_K, 0, 2, ND_NS),
        (LDX_IMM, 0, 0, 24),
        (JA, 0, 0, 1),
        (LDX_IMM, 0, 0, 0),
    ]
    for address in addrs:  # four word compares, each failing to the next address; then accept
        words = [int.from_bytes(address[i : i + 4], "big") for i in range(0, 16, 4)]
        for i, word in enumerate(words):
            section += [(LDW_IND, 0, 0, 38 + 4 * i), (JEQ_K, 0, 7 - 2 * i, word)]
        section.append((RET_K, 0, 0, SNAPLEN))
    return [*section, (RET_K, 0, 0, 0)]
