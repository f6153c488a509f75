"""Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016).

Two balancers with the same targets must send a client to the same target, so that flows survive a
VRRP failover: the table depends only on the backends' stable keys and weights (never on dict order,
target ids or Python's salted `hash()`), and the permutations come from a keyed blake2b that is
identical on every machine. Tables are built off the packet path. A client's bucket is not chosen here
but by `dsrlb.jhash.bucket`, the hash the kernel's nftables fast path computes too.
"""

from __future__ import annotations

import array
import hashlib
from collections.abc import Mapping
from math import gcd

BUCKETS_PER_TARGET = 100  # Maglev's rule of thumb: with size >= 100 x backends, shares stay within ~1%
MAX_SIZE = 65537  # a prime above the most targets a server can list (65535): each still gets a bucket
_EMPTY = -1


def stable_hash(data: bytes, seed: int = 0) -> int:
    """64-bit hash of `data`, the same in every process and on every machine."""
    key = b"dsrlb" + seed.to_bytes(8, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=key).digest(), "big")


def table_size(targets: int) -> int:
    """Bucket table size of a virtual server that lists `targets` targets: the smallest prime >= 100 x
    targets (101 for one target), at most MAX_SIZE.

    Small on purpose: the kernel fast path looks a bucket up in an nftables map per packet, and big
    maps miss the cache (measured: 251 buckets forward at 0.98x kernel IP forwarding, 65537 at 0.5x).
    Callers pass the targets the server lists, not the healthy ones, so that health changes never
    resize the table and move every client.
    """
    size = min(BUCKETS_PER_TARGET * max(targets, 1), MAX_SIZE)
    while not _prime(size):
        size += 1
    return size


def build_table(backends: Mapping[int, tuple[str, int]], size: int) -> array.array:
    """Lookup table of `size` target ids; backends maps target id -> (stable key, weight >= 1).

    Each backend walks its own permutation of the slots (offset and skip from its key) and claims
    the next free one; per round a backend takes as many turns as its weight (weights reduced by
    their gcd), so slot shares follow the weights and removing a backend moves few other slots. Turns
    interleave (every backend's first, then every second, ...), so that in a small table a light backend
    next to a heavy one still gets a slot while there are at least as many slots as backends.
    """
    if not _prime(size):
        raise ValueError(f"maglev table size must be a prime, not {size}")
    entries = _canonical(backends)
    table = array.array("i", [_EMPTY]) * (size if entries else 0)
    if not entries:
        return table
    step = 0
    for _, _, weight in entries:
        step = gcd(step, weight)
    ids = [tid for _, tid, _ in entries]
    turns = [weight // step for _, _, weight in entries]
    skips = [stable_hash(key.encode(), 1) % (size - 1) + 1 for key, _, _ in entries]
    slots = [stable_hash(key.encode(), 0) % size for key, _, _ in entries]  # next slot to try
    free = size
    while True:
        for turn in range(max(turns)):
            for i, tid in enumerate(ids):
                if turns[i] <= turn:
                    continue
                slot, skip = slots[i], skips[i]
                while table[slot] != _EMPTY:
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = tid
                slots[i] = slot
                free -= 1
                if free == 0:
                    return table


def _prime(n: int) -> bool:
    """Prime table sizes let every skip in [1, size) walk the whole table."""
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _canonical(backends: Mapping[int, tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(key, id, weight) sorted by key, after checking what the table relies on."""
    entries = sorted((key, tid, weight) for tid, (key, weight) in backends.items())
    for i, (key, tid, weight) in enumerate(entries):
        if not 0 <= tid <= 0x7FFFFFFF:
            raise ValueError(f"maglev backend id {tid} is out of range 0..2147483647")
        if not isinstance(weight, int) or weight < 1:
            raise ValueError(f"maglev backend {tid} ({key}): weight must be an integer >= 1, not {weight!r}")
        if i and entries[i - 1][0] == key:
            raise ValueError(f"maglev backends {entries[i - 1][1]} and {tid} share the key {key!r}")
    return entries
