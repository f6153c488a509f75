"""Selector: what each method picks, weights, backups, load, and the bucket tables of the stateless
methods, which the kernel fast path holds too."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dsrlb import jhash
from dsrlb.maglev import table_size
from dsrlb.selection import Candidate, Selector
from dsrlb.vocabulary import DEFAULTS, METHODS, STATELESS_METHODS

SIZE = table_size(3)  # a server that lists three targets


def clients(n: int) -> list[bytes]:
    return [bytes([198, 18, i >> 8 & 0xFF, i & 0xFF]) for i in range(n)]


def shares(picks) -> dict[int, float]:
    counts = Counter(picks)
    total = sum(counts.values())
    return {tid: count / total for tid, count in counts.items()}


A, B, C = Candidate(1, "172.16.1.100:80"), Candidate(2, "172.16.1.101:80"), Candidate(3, "172.16.1.102:80")
WEIGHTED = [Candidate(1, "a:80", 1), Candidate(2, "b:80", 2), Candidate(3, "c:80", 3)]


def test_rr_cycles_in_list_order():
    selector = Selector("rr", [B, A, C])
    assert [selector.pick(b"\0\0\0\0") for _ in range(6)] == [2, 1, 3, 2, 1, 3]


def test_rr_is_smooth_and_weighted():
    selector = Selector("rr", [Candidate(1, "a", 5), Candidate(2, "b", 1), Candidate(3, "c", 1)])
    assert [selector.pick(b"\0\0\0\0") for _ in range(14)] == [1, 1, 2, 1, 3, 1, 1] * 2


def test_random_follows_weights():
    random.seed(7)
    selector = Selector("random", WEIGHTED)
    got = shares(selector.pick(b"\1\2\3\4") for _ in range(30000))
    for tid, share in ((1, 1 / 6), (2, 2 / 6), (3, 3 / 6)):
        assert abs(got[tid] - share) < 0.02


@pytest.mark.parametrize("method", ["hash", "maglev"])
def test_client_methods_follow_weights_and_are_stable(method):
    selector = Selector(method, WEIGHTED, SIZE)
    picks = [selector.pick(client) for client in clients(30000)]
    got = shares(picks)
    for tid, share in ((1, 1 / 6), (2, 2 / 6), (3, 3 / 6)):
        assert abs(got[tid] - share) < 0.02
    # the same client always lands on the same target, also with a second balancer's selector that
    # lists the targets in another order
    other = Selector(method, list(reversed(WEIGHTED)), SIZE)
    assert [other.pick(client) for client in clients(30000)] == picks
    assert {selector.pick(b"\xc6\x12\x00\x0a") for _ in range(100)} == {picks[10]}


@pytest.mark.parametrize("method", STATELESS_METHODS)
def test_stateless_pick_is_the_bucket_the_kernel_computes(method):
    """`jhash ip saddr mod SIZE seed SEED map @buckets`, with the map filled from `buckets()`."""
    seed = 0x1234ABCD
    selector = Selector(method, WEIGHTED, SIZE, seed)
    table = selector.buckets()
    assert len(table) == SIZE and set(table) <= {1, 2, 3}
    for client in clients(2000):
        assert selector.pick(client) == table[jhash.bucket(client, seed, SIZE)]


@pytest.mark.parametrize("method", STATELESS_METHODS)
def test_stateless_pick_of_an_ipv6_client_hashes_all_16_bytes(method):
    """`jhash ip6 saddr mod SIZE seed SEED`: nft hands jhash the whole address, and so does `pick` (no
    fold to 32 bits: the kernel has none). Clients that differ in any word are spread alike."""
    seed = 0x1234ABCD
    selector = Selector(method, WEIGHTED, SIZE, seed)
    table = selector.buckets()
    rng = random.Random(6)
    for _ in range(2000):
        client = rng.randbytes(16)
        assert selector.pick(client) == table[jhash.bucket(client, seed, SIZE)]
    for word in range(4):  # only one word varies: still every bucket
        buckets = {
            jhash.bucket(bytes(4 * word) + rng.randbytes(4) + bytes(12 - 4 * word), seed, SIZE)
            for _ in range(5000)
        }
        assert len(buckets) == SIZE, word


def test_bucket_tables_per_method():
    maglev = Counter(Selector("maglev", WEIGHTED, SIZE).buckets())
    assert {tid: round(n / SIZE, 2) for tid, n in maglev.items()} == {1: 0.17, 2: 0.33, 3: 0.5}
    hashed = Selector("hash", WEIGHTED, SIZE).buckets()
    assert [hashed.count(tid) for tid in (1, 2, 3)] == [52, 102, 153]  # runs in key order a, b, c
    assert hashed == tuple(sorted(hashed))
    assert Selector("first", [C, A, B], SIZE).buckets() == (3,) * SIZE
    assert Selector("maglev", [], SIZE).buckets() == (None,) * SIZE


def test_the_seed_changes_the_buckets_of_clients_not_the_table():
    one = Selector("maglev", [A, B, C], SIZE, 1)
    two = Selector("maglev", [A, B, C], SIZE, 2)
    assert one.buckets() == two.buckets()
    assert [one.pick(c) for c in clients(300)] != [two.pick(c) for c in clients(300)]
    assert Selector("maglev", [A]).seed == DEFAULTS["set"]["hashseed"] != 0


@pytest.mark.parametrize("method", sorted(set(METHODS) - set(STATELESS_METHODS)))
def test_per_connection_methods_have_no_bucket_table(method):
    with pytest.raises(ValueError, match="no bucket table"):
        Selector(method, [A]).buckets()


def test_maglev_agrees_across_balancers_that_number_targets_differently():
    """A VRRP backup taking over must send each client to the same target (by key) as the old master,
    even when the two daemons gave the targets other ids in another order."""
    keys = [f"172.16.{i // 200}.{i % 200 + 1}:80" for i in range(100)]
    ids = list(range(1, 101))
    random.Random(5).shuffle(ids)
    size = table_size(100)
    master = Selector("maglev", [Candidate(i + 1, key) for i, key in enumerate(keys)], size)
    backup = Selector(
        "maglev", [Candidate(tid, key) for tid, key in reversed(list(zip(ids, keys, strict=True)))], size
    )
    key_on_master = {c.id: c.key for c in master.active}
    key_on_backup = {c.id: c.key for c in backup.active}
    moved = [c for c in clients(20000) if key_on_master[master.pick(c)] != key_on_backup[backup.pick(c)]]
    assert len(moved) == 0, f"{len(moved)} of 20000 clients land on another target after a failover"


def test_maglev_keeps_clients_of_surviving_targets():
    """The table keeps its size when a target fails (it follows the targets the server lists)."""
    before = Selector("maglev", [A, B, C], SIZE)
    after = Selector("maglev", [A, C], SIZE)
    survivors = [client for client in clients(5000) if before.pick(client) != 2]
    moved = sum(1 for client in survivors if after.pick(client) != before.pick(client))
    assert moved / len(survivors) < 0.05  # small, not zero: 5 of 205 buckets here (~100 buckets a target)


def test_leastsessions_uses_load_per_weight_and_list_order():
    selector = Selector("leastsessions", [Candidate(1, "a", 1), Candidate(2, "b", 4), Candidate(3, "c", 1)])
    assert selector.pick(b"\0\0\0\0", {1: 3, 2: 8, 3: 1}) == 3  # 3/1, 8/4, 1/1
    assert selector.pick(b"\0\0\0\0", {1: 3, 2: 4, 3: 2}) == 2  # 3, 1, 2
    assert selector.pick(b"\0\0\0\0", {1: 2, 2: 8, 3: 2}) == 1  # tie 2, 2, 2: list order
    assert selector.pick(b"\0\0\0\0", {1: 5, 2: 1}) == 3  # missing load counts as 0
    assert selector.pick(b"\0\0\0\0") == 1


def test_first_takes_list_order():
    assert Selector("first", [C, A, B]).pick(b"\0\0\0\0") == 3


@pytest.mark.parametrize("method", METHODS)
def test_backups_only_when_no_primary(method):
    backup = Candidate(9, "172.16.1.109:80", backup=True)
    with_primary = Selector(method, [backup, A, B])
    assert 9 not in {with_primary.pick(client, {}) for client in clients(300)}
    only_backups = Selector(method, [backup, Candidate(8, "172.16.1.108:80", backup=True)])
    assert {only_backups.pick(client, {}) for client in clients(300)} <= {8, 9}
    assert only_backups.pick(b"\1\1\1\1", {}) is not None


@pytest.mark.parametrize("method", METHODS)
def test_no_candidate_gives_none(method):
    assert Selector(method, []).pick(b"\1\2\3\4") is None


@pytest.mark.parametrize("method", METHODS)
def test_every_method_spreads_or_orders(method):
    selector = Selector(method, [A, B, C])
    picks = [selector.pick(client, {}) for client in clients(3000)]
    assert set(picks) == ({1} if method in ("first", "leastsessions") else {1, 2, 3})


@pytest.mark.parametrize(
    ("method", "candidates", "message"),
    [
        ("roundrobin", [A], "unknown selection method"),
        ("rr", [Candidate(1, "a", 0)], "weight"),
        ("rr", [A, A], "duplicate"),
        ("hash", [A], "at least 2"),
    ],
)
def test_bad_input_is_a_clear_error(method, candidates, message):
    with pytest.raises(ValueError, match=message):
        Selector(method, candidates, 1 if message == "at least 2" else SIZE)
