"""jhash: the kernel's function and nftables' scaling, bit for bit (the kernel itself agrees in
tests/daemon/integration/test_jhash_kernel.py).

Vectors: Bob Jenkins' own for lookup3's hashlittle (which the kernel's jhash is), and values from a C
build of include/linux/jhash.h's macros (jhash, __jhash_mix, __jhash_final) with the switch as written.
"""

from __future__ import annotations

import random
import sys
from ipaddress import IPv4Address, IPv6Address

import pytest

from dsrlb import jhash as J
from dsrlb.jhash import bucket, jhash
from dsrlb.vocabulary import DEFAULTS

SEED = DEFAULTS["set"]["hashseed"]
PATTERN = bytes((i * 37 + 11) & 0xFF for i in range(40))  # the C program's key bytes


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def test_lookup3_published_vectors():
    """lookup3.c's driver: hashlittle("Four score and seven years ago", 30, 0 and 1); longer than one
    block, so read in the CPU's byte order, as on a little-endian machine."""
    if sys.byteorder != "little":
        pytest.skip("the published values are for little-endian machines")
    assert jhash(b"Four score and seven years ago", 0) == 0x17770551
    assert jhash(b"Four score and seven years ago", 1) == 0xCD628161


@pytest.mark.parametrize(
    ("seed", "values"),
    [
        (0, {0: 0xDEADBEEF, 1: 3116429366, 4: 1155639086, 12: 947476729}),
        (SEED, {0: 1126248795, 1: 47173014, 4: 700525466, 12: 7817440}),
        (0xFFFFFFFF, {0: 0xDEADBEEE, 1: 795586925, 4: 1459960252, 12: 3157118917}),
    ],
)
def test_one_block_keys(seed, values):
    """Up to 12 bytes: the kernel's switch alone (no byte order involved); 0 bytes: no final mix."""
    assert {n: jhash(PATTERN[:n], seed) for n in values} == values


@pytest.mark.skipif(sys.byteorder != "little", reason="blocks before the last are read in CPU order")
@pytest.mark.parametrize(
    ("seed", "values"),
    [
        (0, {13: 223622768, 24: 764879783, 25: 1136466598, 40: 1313736492}),
        (0xFFFFFFFF, {13: 707250722, 24: 3256809689, 25: 3649839529, 40: 2742564819}),
    ],
)
def test_multi_block_keys(seed, values):
    """A 12-byte block goes through __jhash_mix only when more bytes follow it (`length > 12`)."""
    assert {n: jhash(PATTERN[:n], seed) for n in values} == values


@pytest.mark.parametrize(
    ("client", "seed", "h", "b211", "b401"),
    [
        ("0.0.0.0", 0, 76781240, 3, 7),
        ("10.0.0.1", 0, 799405953, 39, 74),
        ("198.18.0.10", 0, 903447007, 44, 84),
        ("255.255.255.255", 0, 2601633627, 127, 242),
        ("192.0.2.1", SEED, 174910199, 8, 16),
        ("172.16.1.100", SEED, 3763937677, 184, 351),
        ("198.18.0.10", 0xFFFFFFFF, 435364560, 21, 40),
        ("10.0.0.1", 0xFFFFFFFF, 3761059390, 184, 351),
    ],
)
def test_client_addresses_and_buckets(client, seed, h, b211, b401):
    """The key is `ip saddr` as nft loads it: 4 bytes in network order."""
    assert jhash(ip(client), seed) == h
    assert (bucket(ip(client), seed, 211), bucket(ip(client), seed, 401)) == (b211, b401)


@pytest.mark.skipif(sys.byteorder != "little", reason="the first 12 bytes are read in CPU order")
@pytest.mark.parametrize(
    ("client", "seed", "h", "b211", "b401"),
    [
        ("2001:db8:c::a", 0, 1035722318, 50, 96),
        ("2001:db8:c::a", SEED, 3605396204, 177, 336),
        ("::", SEED, 3738180859, 183, 349),
        ("fe80::1", 0, 321041325, 15, 29),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", SEED, 2637738781, 129, 246),
    ],
)
def test_ipv6_client_addresses_and_buckets(client, seed, h, b211, b401):
    """`jhash ip6 saddr`: the 16-byte key, one block mixed and a 4-byte tail (values from the C build)."""
    key = IPv6Address(client).packed
    assert jhash(key, seed) == h
    assert (bucket(key, seed, 211), bucket(key, seed, 401)) == (b211, b401)


def test_bucket_is_reciprocal_scale_not_modulo():
    key = ip("10.0.0.1")
    h = jhash(key, 0)
    assert bucket(key, 0, 211) == h * 211 >> 32 != h % 211
    assert bucket(b"\xff\xff\xff\xff", 0xFFFFFFFF, 2) in (0, 1)
    buckets = {bucket(ip(f"198.18.{i >> 8}.{i & 255}"), SEED, 211) for i in range(5000)}
    assert buckets == set(range(211))


@pytest.mark.parametrize("seed", [0, 1, 0x6473726C, 0xFFFFFFFF])
@pytest.mark.parametrize("size", [101, 211, 65537])
def test_bucketer_is_bucket_for_addresses(seed, size):
    pick = J.bucketer(seed, size)
    rng = random.Random(seed ^ size)
    for _ in range(2000):
        key = rng.randbytes(4)
        assert pick(key) == bucket(key, seed, size)
