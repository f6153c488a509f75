"""Balance and disruption of the Maglev bucket tables at their per-server sizes (`maglev.table_size`).

For each target count: the table size; the largest target's bucket count over the average (balance,
ideal 1.00); and the share of buckets that change target when one target is removed and when it comes
back (disruption, ideal 1/n: only the removed target's buckets), averaged over removing each target in
turn, worst case in brackets. The last column is the same removal in the old 65537-bucket table, for
comparison. Small tables are what the kernel fast path needs (docs/config.md); this shows their price.

    .venv/bin/python benchmarks/maglev_balance.py
"""

from __future__ import annotations

from collections import Counter

from dsrlb.maglev import MAX_SIZE, build_table, table_size

COUNTS = (2, 3, 5, 10, 50)


def backends(n: int) -> dict[int, tuple[str, int]]:
    return {i: (f"172.16.{i // 200}.{i % 200 + 1}:80", 1) for i in range(1, n + 1)}


def changed(a, b) -> float:
    return sum(x != y for x, y in zip(a, b, strict=True)) / len(a)


def removals(n: int, size: int) -> tuple[list[float], list[float]]:
    """Share of buckets moved by removing each target, and by bringing it back."""
    full = build_table(backends(n), size)
    gone, back = [], []
    for tid in range(1, n + 1):
        fewer = build_table({i: b for i, b in backends(n).items() if i != tid}, size)
        gone.append(changed(full, fewer))
        back.append(changed(fewer, build_table(backends(n), size)))
    return gone, back


def main() -> None:
    head = ("targets", 7), ("size", 6), ("max/avg", 7), ("ideal", 6), ("remove", 15), ("re-add", 15)
    print(" ".join(f"{name:>{width}}" for name, width in head), f"{'at 65537':>8}")
    for n in COUNTS:
        size = table_size(n)
        counts = Counter(build_table(backends(n), size))
        balance = max(counts.values()) / (size / n)
        gone, back = removals(n, size)
        old, _ = removals(n, MAX_SIZE)
        print(
            f"{n:>7} {size:>6} {balance:>7.3f} {1 / n:>6.3f} "
            f"{sum(gone) / n:>7.3f} ({max(gone):.3f}) {sum(back) / n:>7.3f} ({max(back):.3f}) "
            f"{sum(old) / len(old):>8.3f}"
        )


if __name__ == "__main__":
    main()
