"""Classic BPF filter so the kernel hands the forwarder only frames it has to look at.

Accepted: ARP, VRRP (IP protocol 112) and IPv4 frames addressed to one of the given addresses
(virtual servers and the network's `virt`; only ICMP when the kernel forwards the rest). Everything
else never leaves the kernel.
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
IPPROTO_ICMP = 1
SNAPLEN = 0x40000
# One compare per address, and the IPv4 check must still reach "drop" with its 8-bit jump offset. The config
# parser repeats this limit (config/ may not import dataplane/); a unit test keeps the two equal.
MAX_ADDRESSES = 250

Insn = tuple[int, int, int, int]


def program(addresses: Iterable[IPv4Address], kernel_forwards: bool = False) -> list[Insn]:
    """The filter as (code, jt, jf, k) instructions; jumps are relative to the next instruction.

    With `kernel_forwards` (access nftables) only ICMP to the addresses reaches the daemon: their TCP and
    UDP traffic is forwarded by the kernel, and a copy on the ring would cost a frame's work for nothing."""
    addrs = sorted({int(a) for a in addresses})
    if len(addrs) > MAX_ADDRESSES:
        raise ValueError(
            f"{len(addrs)} addresses (VIPs and virt): at most {MAX_ADDRESSES} fit in the packet filter"
        )
    # layout: 0 ldh type; 1 jeq arp; 2 accept; 3 jeq ip; 4 ldb proto; 5 jeq vrrp; 6 accept;
    #         [7 jeq icmp]; ld dst; jeq addr...; drop; accept
    first = 9 if kernel_forwards else 8  # the first address compare
    drop = first + len(addrs)
    accept = drop + 1
    prog: list[Insn] = [
        (LDH_ABS, 0, 0, 12),
        (JEQ_K, 0, 1, ETH_P_ARP),
        (RET_K, 0, 0, SNAPLEN),
        (JEQ_K, 0, drop - 4, ETH_P_IP),
        (LDB_ABS, 0, 0, 23),
        (JEQ_K, 0, 1, IPPROTO_VRRP),
        (RET_K, 0, 0, SNAPLEN),
    ]
    if kernel_forwards:
        prog.append((JEQ_K, 0, drop - 8, IPPROTO_ICMP))
    prog.append((LDW_ABS, 0, 0, 30))
    for i in range(len(addrs)):
        prog.append((JEQ_K, accept - (first + i) - 1, 0, addrs[i]))
    prog += [(RET_K, 0, 0, 0), (RET_K, 0, 0, SNAPLEN)]
    return prog
