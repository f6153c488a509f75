"""Target selection for the new clients of one virtual server.

A Selector is immutable in what it chooses from: callers build a new one off the packet path whenever
the eligible targets change (health, admin state) and swap it in atomically, so `pick`, which runs on
the data plane thread once per session miss, only does a few list operations (maglev: one table
lookup).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dsrlb.maglev import build_table, lookup, stable_hash
from dsrlb.vocabulary import METHODS


@dataclass(frozen=True)
class Candidate:
    """A target that may take new clients now (up, enabled, not draining)."""

    id: int
    key: str  # stable across balancers, e.g. "172.16.1.100:80": what maglev hashes
    weight: int = 1
    backup: bool = False


class Selector:
    """Picks a target for a new client of one virtual server among the currently eligible targets."""

    def __init__(self, method: str, candidates: Sequence[Candidate]) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown selection method {method!r} (one of {', '.join(METHODS)})")
        for c in candidates:
            if not isinstance(c.weight, int) or c.weight < 1:
                raise ValueError(f"target {c.id}: weight must be an integer >= 1, not {c.weight!r}")
        seen = [c.id for c in candidates]
        if len(set(seen)) != len(seen):
            raise ValueError(f"duplicate target ids among candidates: {seen}")
        # backups serve only while no primary can take clients
        active = [c for c in candidates if not c.backup] or [c for c in candidates if c.backup]
        self.method = method
        self.active: tuple[Candidate, ...] = tuple(active)
        self._ids = [c.id for c in active]
        self._weights = [c.weight for c in active]
        self._cumulative = list(itertools.accumulate(self._weights))
        self._current = [0] * len(active)  # smooth weighted round robin state
        self._table = build_table({c.id: (c.key, c.weight) for c in active}) if method == "maglev" else None

    def pick(self, client: bytes, load: Mapping[int, int] | None = None) -> int | None:
        """Target id for a new client (its 4-byte IPv4 source address), None when no candidate."""
        if not self._ids:
            return None
        method = self.method
        if method == "maglev":
            return lookup(self._table, stable_hash(client))
        if method == "rr":
            return self._round_robin()
        if method == "random":
            return random.choices(self._ids, cum_weights=self._cumulative)[0]
        if method == "hash":
            point = stable_hash(client) % self._cumulative[-1]
            return self._ids[bisect.bisect_right(self._cumulative, point)]
        if method == "leastsessions":
            load = load or {}
            best = min(range(len(self._ids)), key=lambda i: load.get(self._ids[i], 0) / self._weights[i])
            return self._ids[best]
        return self._ids[0]  # first

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
