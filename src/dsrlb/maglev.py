"""Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016).

Two balancers with the same targets must send a client to the same target, so that flows survive a
VRRP failover: the table depends only on the backends' stable keys and weights (never on dict order,
target ids or Python's salted `hash()`), and the hash is a keyed blake2b that is identical on every
machine. Tables are built off the packet path; the data plane only does `lookup`.
"""

from __future__ import annotations

import array
import hashlib
from collections.abc import Mapping
from math import gcd

TABLE_SIZE = 65537  # prime, so every skip in [1, size) walks the whole table
_EMPTY = -1


def stable_hash(data: bytes, seed: int = 0) -> int:
    """64-bit hash of `data`, the same in every process and on every machine."""
    key = b"dsrlb" + seed.to_bytes(8, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=key).digest(), "big")


def build_table(backends: Mapping[int, tuple[str, int]], size: int = TABLE_SIZE) -> array.array:
    """Lookup table of `size` target ids; backends maps target id -> (stable key, weight >= 1).

    Each backend walks its own permutation of the slots (offset and skip from its key) and claims
    the next free one; per round a backend takes as many turns as its weight (weights reduced by
    their gcd), so slot shares follow the weights and removing a backend moves few other slots.
    """
    if size < 2 or any(size % d == 0 for d in range(2, int(size**0.5) + 1)):
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
        for i, tid in enumerate(ids):
            slot, skip = slots[i], skips[i]
            for _ in range(turns[i]):
                while table[slot] != _EMPTY:
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = tid
                free -= 1
                if free == 0:
                    return table
            slots[i] = slot


def lookup(table: array.array, client_hash: int) -> int:
    """Target id for a client hash (from `stable_hash`)."""
    return table[client_hash % len(table)]


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
