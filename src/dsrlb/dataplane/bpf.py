"""Classic BPF filter so the kernel hands the forwarder only frames it has to look at.

Accepted: ARP, VRRP (IP protocol 112) and IPv4 frames addressed to one of the given addresses
(virtual servers and the network's `virt`). Everything else never leaves the kernel.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address

# opcodes (linux/filter.h)
LDH_ABS = 0x28  # BPF_LD | BPF_H | BPF_ABS
LDW_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
IPPROTO_VRRP = 112
SNAPLEN = 0x40000
# One compare per address, and the first must still reach "accept" with its 8-bit jump offset. The config
# parser repeats this limit (config/ may not import dataplane/); a unit test keeps the two equal.
MAX_ADDRESSES = 250

Insn = tuple[int, int, int, int]


def program(addresses: Iterable[IPv4Address]) -> list[Insn]:
    """The filter as (code, jt, jf, k) instructions; jumps are relative to the next instruction."""
    addrs = sorted({int(a) for a in addresses})
    if len(addrs) > MAX_ADDRESSES:
        raise ValueError(
            f"{len(addrs)} addresses (VIPs and virt): at most {MAX_ADDRESSES} fit in the packet filter"
        )
    n = len(addrs)
    # layout: 0 ldh type; 1 jeq arp; 2 jeq ip; 3 ld dst; 4..4+n-1 jeq addr; 4+n ldb proto;
    #         5+n jeq vrrp; 6+n drop; 7+n accept
    accept = 7 + n
    drop = 6 + n
    prog: list[Insn] = [
        (LDH_ABS, 0, 0, 12),
        (JEQ_K, accept - 2, 0, ETH_P_ARP),
        (JEQ_K, 0, drop - 3, ETH_P_IP),
        (LDW_ABS, 0, 0, 30),
    ]
    for i, addr in enumerate(addrs):
        pc = 4 + i
        prog.append((JEQ_K, accept - pc - 1, 0, addr))
    prog += [
        (LDB_ABS, 0, 0, 23),
        (JEQ_K, accept - (5 + n) - 1, drop - (5 + n) - 1, IPPROTO_VRRP),
        (RET_K, 0, 0, 0),
        (RET_K, 0, 0, SNAPLEN),
    ]
    return prog
