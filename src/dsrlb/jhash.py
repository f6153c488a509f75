"""The Linux kernel's jhash and nftables' scaling of it, bit for bit.

`access nftables` lets the kernel pick a target with `jhash ip saddr mod N seed S map @buckets` (IPv4)
or `jhash ip6 saddr mod N seed S map @buckets` (IPv6: the kernel hashes the 16 address bytes, length 16,
so `bucket(address16, S, N)`); the Python forwarder (`access raw`) must pick the same bucket for the
same client, so that nodes in either mode, and a flow that moves between them, agree. This is a port
of include/linux/jhash.h (`jhash`) and of net/netfilter/nft_hash.c (`nft_jhash_eval`:
`reciprocal_scale`, offset 0). A leaf module: the data plane calls it per new client, so it is written
out flat rather than with helper calls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

JHASH_INITVAL = 0xDEADBEEF
_M = 0xFFFFFFFF


def jhash(key: bytes, seed: int) -> int:
    """The kernel's `jhash(key, len(key), seed)`, a 32-bit value.

    Blocks before the last 1..12 bytes are read in the CPU's byte order (`__get_unaligned_cpu32`), the
    last ones as little-endian words (the kernel's `switch`): keys of at most 12 bytes, like an IPv4
    address, hash the same on every CPU.
    """
    length = len(key)
    a = b = c = (JHASH_INITVAL + length + seed) & _M
    pos = 0
    while length - pos > 12:  # __jhash_mix
        a = (a + int.from_bytes(key[pos : pos + 4], sys.byteorder)) & _M
        b = (b + int.from_bytes(key[pos + 4 : pos + 8], sys.byteorder)) & _M
        c = (c + int.from_bytes(key[pos + 8 : pos + 12], sys.byteorder)) & _M
        a = ((a - c) & _M) ^ ((c << 4 | c >> 28) & _M)
        c = (c + b) & _M
        b = ((b - a) & _M) ^ ((a << 6 | a >> 26) & _M)
        a = (a + c) & _M
        c = ((c - b) & _M) ^ ((b << 8 | b >> 24) & _M)
        b = (b + a) & _M
        a = ((a - c) & _M) ^ ((c << 16 | c >> 16) & _M)
        c = (c + b) & _M
        b = ((b - a) & _M) ^ ((a << 19 | a >> 13) & _M)
        a = (a + c) & _M
        c = ((c - b) & _M) ^ ((b << 4 | b >> 28) & _M)
        b = (b + a) & _M
        pos += 12
    if pos == length:
        return c  # the kernel's `case 0`: nothing left, no final mix
    tail = int.from_bytes(key[pos:], "little")  # the last 1..12 bytes as three words, zero-padded
    a = (a + (tail & _M)) & _M
    b = (b + (tail >> 32 & _M)) & _M
    c = (c + (tail >> 64)) & _M
    # __jhash_final
    c = ((c ^ b) - ((b << 14 | b >> 18) & _M)) & _M
    a = ((a ^ c) - ((c << 11 | c >> 21) & _M)) & _M
    b = ((b ^ a) - ((a << 25 | a >> 7) & _M)) & _M
    c = ((c ^ b) - ((b << 16 | b >> 16) & _M)) & _M
    a = ((a ^ c) - ((c << 4 | c >> 28) & _M)) & _M
    b = ((b ^ a) - ((a << 14 | a >> 18) & _M)) & _M
    return ((c ^ b) - ((b << 24 | b >> 8) & _M)) & _M


def bucket(key: bytes, seed: int, size: int) -> int:
    """The bucket 0..size-1 of `jhash KEY mod SIZE seed SEED` in nftables: `reciprocal_scale`, i.e. the
    high bits of hash x size, not `hash % size` (the kernel avoids the division)."""
    return (jhash(key, seed) * size) >> 32


def bucketer(seed: int, size: int) -> Callable[[bytes], int]:
    """`bucket(key, seed, size)`, twice as fast for 4-byte keys (IPv4 addresses): with a 4-byte key `b`
    and `c` start as constants, so what depends on the seed alone is computed here once. The Python
    forwarder calls it for every new client, and in a SYN flood for every packet. Other keys (16-byte
    IPv6 addresses) take the general `jhash`, as `jhash ip6 saddr` does in the kernel."""
    init = (JHASH_INITVAL + 4 + seed) & _M
    c1 = -((init << 14 | init >> 18) & _M) & _M  # c = (c ^ b) - rol(b, 14) with b == c
    r1 = (c1 << 11 | c1 >> 21) & _M
    from_bytes = int.from_bytes

    def pick(key: bytes) -> int:
        if len(key) != 4:
            return (jhash(key, seed) * size) >> 32
        a = ((((init + from_bytes(key, "little")) & _M) ^ c1) - r1) & _M
        b = ((init ^ a) - ((a << 25 | a >> 7) & _M)) & _M
        c = ((c1 ^ b) - ((b << 16 | b >> 16) & _M)) & _M
        a = ((a ^ c) - ((c << 4 | c >> 28) & _M)) & _M
        b = ((b ^ a) - ((a << 14 | a >> 18) & _M)) & _M
        return ((((c ^ b) - ((b << 24 | b >> 8) & _M)) & _M) * size) >> 32

    return pick
