"""bngsync (dsrlb.sync): the wire format round-trips and refuses damage, and two endpoints on loopback
exchange sessions and admin states, acknowledge, resend, resync a restarted peer and bound what they keep."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from ipaddress import IPv4Address

import pytest

from dsrlb import sync

A, B = IPv4Address("127.0.0.2"), IPv4Address("127.0.0.3")


def session(i: int, size: int = 4) -> sync.Session:
    vip = bytes(size - 1) + b"\x0a"
    return sync.Session(vip, 6, 80, i.to_bytes(size, "big"), bytes(size - 1) + b"\x64", 600)


def test_sessions_and_admin_round_trip_in_datagrams_that_fit() -> None:
    sessions = [session(i) for i in range(200)] + [session(i, 16) for i in range(50)]
    bodies = list(sync.encode_sessions(sessions))
    assert all(len(b) + sync.HEADER.size <= sync.MAX_DATAGRAM for b in bodies) and len(bodies) > 2
    assert [s for b in bodies for s in sync.decode_sessions(b)] == sessions
    flows = [
        sync.Flow(bytes([10, 0, 0, i]), 1000 + i, b"\x0a\x00\x00\x0a", 80, b"\x0a\x00\x00\x64", 30)
        for i in range(90)
    ]
    assert [f for b in sync.encode_flows(flows) for f in sync.decode_flows(b)] == flows
    admin = [sync.Admin(b"\x0a\x00\x00\x01", "draining"), sync.Admin(bytes(16), "disabled")]
    assert [a for b in sync.encode_admin(admin) for a in sync.decode_admin(b)] == admin


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"DSRS",
        b"XXXX\x01\x03\x00\x00" + bytes(8),
        sync.pack(9, 0, 1, 1),
        sync.pack(1, 0, 1, 1, b"\x01\x02"),
    ],
)
def test_damaged_datagrams_are_refused(data: bytes) -> None:
    with pytest.raises(sync.SyncError):
        message = sync.unpack(data)
        if message.kind == sync.HELLO and len(message.body) != sync.HELLO_BODY.size:
            raise sync.SyncError("bad hello")


def test_random_damage_never_raises_anything_but_sync_error() -> None:
    body = next(sync.encode_sessions([session(i) for i in range(10)]))
    rng = random.Random(7)
    for _ in range(2000):
        damaged = bytearray(body[: rng.randrange(len(body) + 1)])
        for _ in range(rng.randrange(4)):
            if damaged:
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            sync.decode_sessions(bytes(damaged))
            sync.decode_admin(bytes(damaged))
            sync.decode_flows(bytes(damaged))
        except sync.SyncError:
            pass


class Node:
    def __init__(self, local: IPv4Address, peer: IPv4Address, port: int, **options: object) -> None:
        self.admin: list[sync.Admin] = []
        self.sessions: list[sync.Session] = []
        self.flows: list[sync.Flow] = []
        self.resyncs = 0
        settings = {"autoresync": True, "acks": True, "capacity": 1000, **options}
        self.peer = sync.SyncPeer(
            local,
            peer,
            on_admin=self.admin.extend,
            on_resync=self.resync,
            on_sessions=self.sessions.extend,
            on_flows=self.flows.extend,
            forwarding=lambda: True,
            port=port,
            **settings,  # type: ignore[arg-type]
        )

    def resync(self) -> None:
        self.resyncs += 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        return s.getsockname()[1]


async def until(condition, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


def test_two_endpoints_sync_acknowledge_and_resync_a_restarted_peer() -> None:
    async def scenario() -> None:
        port = free_port()
        a, b = Node(A, B, port), Node(B, A, port, capacity=150)
        a.peer.start()
        b.peer.start()
        await until(lambda: a.peer.peer_up() and b.peer.peer_up())
        assert a.resyncs == 1 and b.resyncs == 1  # each is new to the other
        a.peer.send_sessions([session(i) for i in range(200)], full=True)
        a.peer.send_admin([sync.Admin(b"\x0a\x00\x00\x64", "draining")])
        a.peer.send_flows(
            [sync.Flow(b"\x0a\x00\x00\x01", 5000, b"\x0a\x00\x00\x0a", 80, b"\x0a\x00\x00\x64", 9)]
        )
        await until(lambda: len(b.sessions) == 200 and b.admin and b.flows)
        await until(lambda: not a.peer._unacked)  # every batch acknowledged
        assert len(b.peer.table) == 150 and b.peer.counters.overflow == 50  # bounded, counted
        assert b.peer.last_full_received is not None and a.peer.view()["full_resyncs_sent"] == 1
        assert b.admin == [sync.Admin(b"\x0a\x00\x00\x64", "draining")]
        # b restarts: a sees a new boot id and is asked for the whole table
        b.peer.close()
        b2 = Node(B, A, port)
        b2.peer.start()
        await until(lambda: a.resyncs == 2)
        # a datagram from elsewhere than the syncpeer's address and port is dropped
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind((str(B), 0))
            stranger.sendto(sync.pack(sync.HELLO, 0, 0, 5, b"\x01"), (str(A), port))
            await until(lambda: a.peer.counters.drops["not_syncpeer"] == 1)
        a.peer.close()
        b2.peer.close()

    asyncio.run(scenario())


def test_unacknowledged_batches_are_resent_then_given_up() -> None:
    async def scenario() -> None:
        port = free_port()
        a = Node(A, B, port)  # nobody listens at B
        a.peer.start()
        a.peer.send_sessions([session(1)])
        await until(lambda: a.peer.counters.lost == 1, timeout=sync.ACK_TIMEOUT * (sync.RETRIES + 3))
        assert a.peer.counters.resent == sync.RETRIES and not a.peer._unacked
        a.peer.close()

    asyncio.run(scenario())


def test_peer_sessions_expire_oldest_first() -> None:
    node = Node(A, B, 1)
    node.peer._keep([sync.Session(b"v", 6, 80, b"c1", b"t", 0), sync.Session(b"v", 6, 80, b"c2", b"t", 60)])
    node.peer._prune(time.monotonic())
    assert list(node.peer.table) == [(b"v", 6, 80, b"c2")]
