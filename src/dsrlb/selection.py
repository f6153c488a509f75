"""Target selection for the new clients of one virtual server.

A Selector is immutable in what it chooses from: callers build a new one off the packet path whenever
the eligible targets change (health, admin state) and swap it in atomically, so `pick`, which runs on
the data plane thread once per session miss, only does a few list operations.

The stateless methods (maglev, hash, first) choose through a bucket table: `pick` is
`buckets()[jhash.bucket(client, seed, size)]`, the same lookup the kernel does with `access
nftables` (`jhash ip saddr`, `jhash ip6 saddr`: the whole address is the key), so the Python
forwarder, the kernel and every balancer with the same config agree.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dsrlb import jhash
from dsrlb.maglev import MAX_SIZE, build_table
from dsrlb.vocabulary import DEFAULTS, METHODS, STATELESS_METHODS


@dataclass(frozen=True)
class Candidate:
    """A target that may take new clients now (up, enabled, not draining)."""

    id: int
    key: str  # stable across balancers, e.g. "172.16.1.100:80": what the bucket tables follow
    weight: int = 1
    backup: bool = False


class Selector:
    """Picks a target for a new client of one virtual server among the currently eligible targets.

    `size` is the bucket table size of the stateless methods: `tables.build` passes `maglev.table_size`
    of the targets the server lists (never of the candidates: a size that follows health would move
    every client when one target fails); the default is the largest size. `seed` is the jhash seed
    (`set hashseed`).
    """

    def __init__(
        self,
        method: str,
        candidates: Sequence[Candidate],
        size: int = MAX_SIZE,
        seed: int = DEFAULTS["set"]["hashseed"],
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown selection method {method!r} (one of {', '.join(METHODS)})")
        for c in candidates:
            if not isinstance(c.weight, int) or c.weight < 1:
                raise ValueError(f"target {c.id}: weight must be an integer >= 1, not {c.weight!r}")
        seen = [c.id for c in candidates]
        if len(set(seen)) != len(seen):
            raise ValueError(f"duplicate target ids among candidates: {seen}")
        if size < 2:
            raise ValueError(f"bucket table size must be at least 2, not {size}")
        # backups serve only while no primary can take clients
        active = [c for c in candidates if not c.backup] or [c for c in candidates if c.backup]
        self.method = method
        self.size = size
        self.seed = seed
        self._bucket = jhash.bucketer(seed, size)
        self.active: tuple[Candidate, ...] = tuple(active)
        self._ids = [c.id for c in active]
        self._weights = [c.weight for c in active]
        self._cumulative = list(itertools.accumulate(self._weights))
        self._current = [0] * len(active)  # smooth weighted round robin state
        self.stateless = method in STATELESS_METHODS
        self._buckets = self._table() if self.stateless else None

    def _table(self) -> tuple[int | None, ...]:
        """The bucket table of a stateless method, as target ids (None: no candidate)."""
        if not self.active:
            return (None,) * self.size
        if self.method == "maglev":
            return tuple(build_table({c.id: (c.key, c.weight) for c in self.active}, self.size))
        if self.method == "hash":
            # contiguous runs in key order, each as long as its weight's share: not consistent (one
            # target less shifts the runs after it), but the same on every balancer
            ordered = sorted(self.active, key=lambda c: c.key)
            cumulative = list(itertools.accumulate(c.weight for c in ordered))
            total = cumulative[-1]
            return tuple(
                ordered[bisect.bisect_right(cumulative, i * total // self.size)].id for i in range(self.size)
            )
        return (self._ids[0],) * self.size  # first

    def buckets(self) -> tuple[int | None, ...]:
        """Bucket -> target id, what the nftables map holds; only for maglev, hash and first."""
        if self._buckets is None:
            raise ValueError(f"method {self.method} picks per client, it has no bucket table")
        return self._buckets

    def pick(self, client: bytes, load: Mapping[int, int] | None = None) -> int | None:
        """Target id for a new client (its source address: 4 bytes IPv4, 16 bytes IPv6), None when no
        candidate. The stateless methods hash all 16 bytes of an IPv6 address, as the kernel's `jhash
        ip6 saddr` does (nft hands jhash the whole 16-byte register): no folding to 32 bits."""
        if not self._ids:
            return None
        if self._buckets is not None:
            if len(client) != 4:
                return self._buckets[jhash.bucket(client, self.seed, self.size)]
            return self._buckets[self._bucket(client)]
        method = self.method
        if method == "rr":
            return self._round_robin()
        if method == "random":
            return random.choices(self._ids, cum_weights=self._cumulative)[0]
        load = load or {}  # leastsessions
        best = min(range(len(self._ids)), key=lambda i: load.get(self._ids[i], 0) / self._weights[i])
        return self._ids[best]

    def _round_robin(self) -> int:
        """nginx's smooth weighted round robin: weights 5,1,1 give a,a,b,a,c,a,a rather than bursts."""
        current, weights = self._current, self._weights
        best = 0
        for i, weight in enumerate(weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._cumulative[-1]
        return self._ids[best]
