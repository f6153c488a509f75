"""Health probes and monitors against real listeners on 127.0.0.1 (no traffic leaves the host)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv6Address

import pytest

from dsrlb.config.model import HealthCheck
from dsrlb.health import HealthMonitor, deadline, probe

LOCAL = IPv4Address("127.0.0.1")
NOT_HERE = IPv4Address("192.0.2.1")  # TEST-NET-1: never an address of this host, so bind() fails
INTERVAL, TIMEOUT = 0.2, 0.6
SLACK = 0.25
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need CAP_NET_RAW")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((str(LOCAL), 0))
        return sock.getsockname()[1]


class Http:
    """A tiny HTTP server whose answer can change; status None accepts but never answers."""

    def __init__(self, status: int | None = 200) -> None:
        self.status = status
        self.peers: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> Http:
        self.server = await asyncio.start_server(self._serve, str(LOCAL), port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])
        try:
            if self.status is None:
                await reader.read()  # until the client gives up
                return
            while (await reader.readline()).strip():
                pass
            writer.write(f"HTTP/1.0 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


class Watch:
    """Runs a monitor and records its transitions with the time they happened."""

    def __init__(self, checks: list[HealthCheck], source: IPv4Address | None = None) -> None:
        self.events: asyncio.Queue[tuple[float, bool, str]] = asyncio.Queue()
        self.calls: list[tuple[int, bool]] = []
        self.monitor = HealthMonitor(7, LOCAL, checks, source, self._changed)
        self.task = asyncio.create_task(self.monitor.run())

    def _changed(self, target_id: int, up: bool, detail: str) -> None:
        self.calls.append((target_id, up))
        self.events.put_nowait((time.monotonic(), up, detail))

    async def next(self, within: float) -> tuple[float, bool, str]:
        return await asyncio.wait_for(self.events.get(), within)

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def tcpopen(port: int) -> HealthCheck:
    return HealthCheck("tcpopen", INTERVAL, TIMEOUT, port=port)


def http(port: int) -> HealthCheck:
    return HealthCheck("http", INTERVAL, TIMEOUT, port=port, path="/health")


@pytest.mark.parametrize("make_check", [tcpopen, http])
def test_monitor_follows_a_server_that_stops_and_restarts(make_check):
    async def scenario() -> None:
        server = await Http().start()
        watch = Watch([make_check(server.port)])
        assert watch.monitor.up is False  # targets start down
        assert watch.monitor.since_success() is None
        _, up, _ = await watch.next(INTERVAL + SLACK)
        assert up and watch.monitor.up
        assert 0 <= watch.monitor.since_success() < INTERVAL

        await server.stop()
        stopped = time.monotonic()
        when, up, detail = await watch.next(TIMEOUT + INTERVAL + SLACK)
        assert not up and not watch.monitor.up
        assert when - stopped >= TIMEOUT - INTERVAL - 0.05  # not before `timeout` without success
        assert "refused" in detail

        await server.start(server.port)
        restarted = time.monotonic()
        when, up, _ = await watch.next(INTERVAL + SLACK)
        assert up and when - restarted <= INTERVAL + SLACK
        await watch.stop()
        await server.stop()
        assert watch.calls == [(7, True), (7, False), (7, True)]

    asyncio.run(scenario())


def test_http_error_status_takes_the_target_down():
    async def scenario() -> None:
        server = await Http(200).start()
        watch = Watch([http(server.port)])
        assert (await watch.next(INTERVAL + SLACK))[1] is True
        server.status = 500
        failing = time.monotonic()
        when, up, detail = await watch.next(TIMEOUT + INTERVAL + SLACK)
        assert not up and "status 500" in detail and when - failing >= TIMEOUT - INTERVAL - 0.05
        await watch.stop()
        await server.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, True), (404, False), (500, False)])
def test_http_probe_status(status, ok):
    async def scenario() -> None:
        server = await Http(status).start()
        assert await probe(http(server.port), LOCAL, None) == (
            ok,
            f"http {server.port} /health: status {status}",
        )
        await server.stop()

    asyncio.run(scenario())


def test_http_probe_never_outlives_its_deadline():
    async def scenario() -> None:
        server = await Http(status=None).start()  # accepts, never answers
        started = time.monotonic()
        ok, detail = await probe(HealthCheck("http", 0.3, 10.0, port=server.port, path="/"), LOCAL, None)
        assert (ok, detail) == (False, f"http {server.port} /: timeout after 0.3 s")
        assert 0.3 <= time.monotonic() - started <= 0.3 + 0.15
        await server.stop()

    asyncio.run(scenario())


def test_tcpopen_probe_never_outlives_its_deadline():
    """A listener whose accept queue is full drops further SYNs, so connect() hangs."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((str(LOCAL), 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect((str(LOCAL), port))
        started = time.monotonic()
        result = asyncio.run(probe(HealthCheck("tcpopen", 5.0, 0.3, port=port), LOCAL, None))
        assert result == (False, f"tcpopen {port}: timeout after 0.3 s")
        assert 0.3 <= time.monotonic() - started <= 0.3 + 0.15
    assert deadline(HealthCheck("tcpopen", 30.0, 60.0, port=80)) == 5.0


def test_probe_errors_are_reasons_not_exceptions():
    async def scenario() -> None:
        closed = free_port()
        assert await probe(tcpopen(closed), LOCAL, None) == (False, f"tcpopen {closed}: connection refused")
        server = await Http().start()
        ok, detail = await probe(tcpopen(server.port), LOCAL, NOT_HERE)
        assert not ok and detail.endswith("cannot assign requested address")
        await server.stop()

    asyncio.run(scenario())


def test_source_address_is_bound():
    async def scenario() -> None:
        server = await Http().start()
        for source in (IPv4Address("127.0.0.1"), IPv4Address("127.0.0.2")):
            assert (await probe(http(server.port), LOCAL, source))[0]
            assert server.peers[-1] == str(source)
        await server.stop()

    asyncio.run(scenario())


def test_target_is_up_only_when_all_checks_are_up():
    async def scenario() -> None:
        first, second = await Http().start(), Http()
        port = free_port()
        watch = Watch([tcpopen(first.port), http(port)])
        assert not watch.monitor.settled  # nothing checked yet: `up` is only the starting assumption
        with pytest.raises(TimeoutError):
            await watch.next(3 * INTERVAL)
        assert watch.monitor.up is False
        assert watch.monitor.settled  # both checks have answered, one of them "no"
        assert watch.monitor.detail == f"http {port} /health: connection refused"  # the failing check
        await second.start(port)
        assert (await watch.next(INTERVAL + SLACK))[1] is True
        await watch.stop()
        await first.stop()
        await second.stop()

    asyncio.run(scenario())


def test_target_without_checks_is_always_up():
    async def scenario() -> None:
        watch = Watch([])
        assert watch.monitor.up
        with pytest.raises(TimeoutError):
            await watch.next(0.1)
        await watch.stop()

    asyncio.run(scenario())


def test_cancelling_leaves_no_sockets_or_tasks():
    fds_before = set(os.listdir("/proc/self/fd"))

    async def scenario() -> None:
        server = await Http(status=None).start()
        slow = HealthCheck("http", 2.0, 4.0, port=server.port, path="/")
        monitors = [Watch([slow, tcpopen(server.port)]) for _ in range(5)]
        await asyncio.sleep(2.0 * 0.5 + 0.1)  # some probes are hanging in the silent server now
        for watch in monitors:
            await watch.stop()
        await server.stop()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())
    assert set(os.listdir("/proc/self/fd")) <= fds_before


def test_unknown_check_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown health check kind"):
        HealthMonitor(1, LOCAL, [HealthCheck("smtp", 1, 3, port=25)], None, lambda *_: None)
    with pytest.raises(ValueError, match="path must start with /"):
        HealthMonitor(1, LOCAL, [HealthCheck("http", 1, 3, port=80, path="/a b")], None, lambda *_: None)
    with pytest.raises(ValueError, match="needs a port"):
        HealthMonitor(1, LOCAL, [HealthCheck("tcpopen", 1, 3)], None, lambda *_: None)


@needs_root
def test_ping_matches_its_own_replies():
    async def scenario() -> None:
        check = HealthCheck("ping", 1.0, 2.0)
        results = await asyncio.gather(*(probe(check, LOCAL, LOCAL) for _ in range(8)))
        assert all(ok for ok, _ in results), results
        assert (await probe(check, LOCAL, None))[0]
        ok, detail = await probe(check, LOCAL, NOT_HERE)
        assert not ok and detail == "ping: cannot assign requested address"

    asyncio.run(scenario())


@needs_root
def test_ping_monitor_comes_up():
    async def scenario() -> None:
        watch = Watch([HealthCheck("ping", INTERVAL, TIMEOUT)], source=LOCAL)
        assert (await watch.next(INTERVAL + SLACK))[1] is True
        await watch.stop()

    asyncio.run(scenario())


# Runs inside a throwaway network namespace (`unshare --net`), so sysctls and lo are its own.
PING_FAILURES = """
import asyncio, json, socket, struct, subprocess
from ipaddress import IPv4Address, IPv6Address
from dsrlb.config.model import HealthCheck
from dsrlb.health import probe

LOCAL, CHECK = IPv4Address("127.0.0.1"), HealthCheck("ping", 0.3, 0.3)

async def forged_replies():
    # echo replies from 127.0.0.1 that answer somebody else's ping: a probe must not take them
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for n in range(1000):
            sock.sendto(struct.pack("!BBHHH", 0, 0, 0, n, n) + bytes(8), ("127.0.0.1", 0))
            await asyncio.sleep(0.005)

async def main():
    results = {"lo down": await probe(CHECK, LOCAL, None)}
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/icmp_echo_ignore_all", "w") as f:
        f.write("1")
    forger = asyncio.create_task(forged_replies())
    results["no answer"] = await probe(CHECK, LOCAL, None)
    forger.cancel()
    with open("/proc/sys/net/ipv4/icmp_echo_ignore_all", "w") as f:
        f.write("0")
    results["answer"] = (await probe(CHECK, LOCAL, None))[0]
    print(json.dumps(results))

asyncio.run(main())
"""


@needs_root
@pytest.mark.root
@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None, reason="needs unshare, ip")
def test_ping_failures_are_reported():
    """No route, and no reply of its own among other people's replies: both are failures, not exceptions."""
    command = ["unshare", "--net", sys.executable, "-c", PING_FAILURES]
    out = subprocess.run(command, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "lo down": [False, "ping: network is unreachable"],
        "no answer": [False, "ping: timeout after 0.3 s"],
        "answer": True,
    }


def test_a_monitor_that_replaces_an_up_one_keeps_the_target_up():
    """A reload that changes a target's checks: no down-until-checked gap, and a new check that fails
    still takes it down after its timeout."""

    async def scenario() -> None:
        server = await Http().start()
        old = Watch([tcpopen(server.port)])
        _, up, _ = await old.next(INTERVAL + SLACK)
        assert up
        await old.stop()
        calls: list[bool] = []
        new = HealthMonitor(7, LOCAL, [http(server.port)], None, lambda _t, up, _d: calls.append(up))
        new.inherit(old.monitor)
        assert new.up
        task = asyncio.create_task(new.run())
        await asyncio.sleep(TIMEOUT + INTERVAL)
        assert new.up and calls == []  # the new check answered in time: never down
        await server.stop()
        await asyncio.sleep(TIMEOUT + INTERVAL + SLACK)
        assert not new.up and calls == [False]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        down = HealthMonitor(8, LOCAL, [tcpopen(free_port())], None, lambda *_: None)
        down.inherit(old.monitor)  # up before, but nothing listens now
        task = asyncio.create_task(down.run())
        await asyncio.sleep(TIMEOUT + SLACK)
        assert not down.up
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


LOCAL6 = IPv6Address("::1")


def test_tcpopen_and_http_probe_ipv6_targets_with_a_bracketed_host():
    async def scenario() -> None:
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.0 204 No Content\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        assert await probe(HealthCheck("tcpopen", 1, 2, port=port), LOCAL6, LOCAL6) == (
            True,
            f"tcpopen {port}: connected",
        )
        assert (await probe(HealthCheck("http", 1, 2, port=port, path="/"), LOCAL6, None))[0]
        assert f"Host: [::1]:{port}\r\n".encode() in seen[-1]
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


@needs_root
def test_ping6_matches_its_own_replies():
    async def scenario() -> None:
        check = HealthCheck("ping", 1.0, 2.0)
        results = await asyncio.gather(*(probe(check, LOCAL6, LOCAL6) for _ in range(4)))
        assert all(ok for ok, _ in results), results
        ok, detail = await probe(check, LOCAL6, IPv6Address("2001:db8::99"))
        assert not ok and detail == "ping: cannot assign requested address"

    asyncio.run(scenario())
