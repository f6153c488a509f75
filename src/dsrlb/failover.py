"""The daemon's side of VRRP: which role this node plays, and how it changes roles without loss.

`VrrpRouter` (vrrp.py) speaks the protocol; this module turns its state into what the daemon does:
answer ARP and ping for the shared addresses, forward, keep forwarding for a grace period after
stepping down (make before break), hand over on a clean stop, and keep a priority-0 advert ready for
`dsrlb resign` should the process die as master. Frames reach the router through `post`, a bounded,
rate-limited inbox the packet thread fills and the event loop drains.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import subprocess
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Protocol

from dsrlb import resign
from dsrlb.config.model import Vrrp
from dsrlb.vrrp import MASTER, VrrpRouter

log = logging.getLogger("dsrlb")

INBOX = 64  # frames waiting for the event loop, and the burst the rate limit allows
INBOX_RATE = 64.0  # frames per second at least; more with short adverts (INBOX_PER_ADVERT per interval)
INBOX_PER_ADVERT = 8


class Host(Protocol):
    """What failover needs of the daemon."""

    mac: bytes
    interface_name: str
    control_path: str

    def send(self, frame: bytes) -> None: ...
    def rebuild(self) -> None: ...
    def announce_burst(self) -> None: ...
    def ready(self) -> bool: ...


class Failover:
    """Role of this node: alone (answer and forward), or a VRRP master or backup."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.router: VrrpRouter | None = None
        self.answering = True  # answer ARP and ping for our addresses: VRRP master, or alone
        self.forwarding = True  # forward to targets: as answering, and while handing over on stop
        self._handing_over = False
        self._sentinel: subprocess.Popen | None = None  # resigns for us should we be killed as master
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: collections.deque[bytes] = collections.deque()
        self._draining = False  # a drain is scheduled on the loop
        self._tokens = float(INBOX)
        self._refilled = time.monotonic()

    def configure(
        self,
        wanted: Vrrp | None,
        source: IPv4Address | IPv6Address,
        addresses: Sequence[IPv4Address | IPv6Address],
    ) -> None:
        """Create the VRRP router on first load; later loads update it in place where they can (not a
        new vrid, version, family or source: those make a new router)."""
        self._loop = asyncio.get_running_loop()
        router = self.router
        if wanted is None:
            if router is not None:
                router.shutdown()
                self.router = None
            self.answering = self.forwarding = True
            return
        if router is not None and (
            router.config.vrid,
            router.config.version,
            router.config.family,
            router.source,
        ) == (wanted.vrid, wanted.version, wanted.family, source):
            router.reconfigure(wanted, addresses)
            self.keep_resignation()
            return
        if router is not None:
            router.shutdown()
        self.router = VrrpRouter(
            wanted,
            source,
            addresses,
            self.host.mac,
            self.host.send,
            self._state_changed,
            self.host.announce_burst,
            ready=self.host.ready,
        )
        self.answering = self.forwarding = False
        if router is not None:
            self.router.start()

    def start(self) -> None:
        if self.router is not None:
            self.router.start()

    def receive(self, frame: bytes) -> None:
        if self.router is not None:
            self.router.receive(frame)

    def post(self, frame: bytes) -> None:
        """A VRRP frame from the packet thread (any thread): adverts from non-peers are dropped here,
        the rest queue for the event loop, at most INBOX at a time and at a bounded rate, with one
        wake-up of the loop per batch. Excess frames are dropped as `rate_limited`, so a flood costs
        neither memory nor a callback per frame on the loop."""
        router, loop = self.router, self._loop
        if router is None or loop is None:
            return
        if not router.from_peer(frame):
            router.counters.drops["not_a_peer"] += 1
            return
        now = time.monotonic()
        rate = max(INBOX_RATE, INBOX_PER_ADVERT / router.advert_interval)
        self._tokens = min(float(INBOX), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1 or len(self._inbox) >= INBOX:
            router.counters.drops["rate_limited"] += 1
            return
        self._tokens -= 1
        self._inbox.append(frame)
        if not self._draining:
            self._draining = True
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: we are stopping
                self._draining = False

    def _drain(self) -> None:
        self._draining = False  # frames posted from now on schedule another drain
        for _ in range(len(self._inbox)):
            self.receive(self._inbox.popleft())

    def _state_changed(self, state: str) -> None:
        """Master answers and forwards. A master that steps down keeps forwarding for a grace period
        (make before break: the network may still send to it until the new master's gratuitous ARP
        has landed; both pick the same target for a client); one that is stopping (priority 0) also
        keeps answering ARP until a new master is heard (see `hand_over`)."""
        was_forwarding = self.forwarding
        self.answering = state == MASTER or self._handing_over
        self.forwarding = self.answering
        if was_forwarding and not self.forwarding and self.router is not None:
            self.forwarding = True
            asyncio.get_running_loop().call_later(self._grace(), self._end_grace)
        self.host.rebuild()
        self.keep_resignation()

    def keep_resignation(self) -> None:
        """While master, leave the priority-0 advert for `dsrlb resign` should this process die
        without a clean stop (see resign.py); otherwise make sure none is left."""
        path = resign.path_for(self.host.control_path)
        try:
            if self.router is not None and self.router.state == MASTER:
                resign.arm(path, self.host.interface_name, self.router.advert(priority=0))
                if self._sentinel is None or self._sentinel.poll() is not None:
                    self._sentinel = resign.start_sentinel(path)
            else:
                resign.disarm(path)
        except OSError as err:
            log.warning("cannot keep the VRRP resignation in %s: %s", path.parent, err)

    def _grace(self) -> float:
        assert self.router is not None
        return max(0.2, 2 * self.router.advert_interval)

    def _end_grace(self) -> None:
        if not self.answering and self.forwarding:
            self.forwarding = False
            self.host.rebuild()

    async def hand_over(self) -> None:
        """Clean stop of a master: announce priority 0 and keep forwarding until the backup has
        taken over, so no request is lost."""
        router = self.router
        if router is None:
            return
        self._handing_over = router.state == MASTER
        asked = time.monotonic()
        router.shutdown()
        if not self._handing_over:
            return
        deadline = asked + router.master_down_interval() + 1.0
        while router.peer_master_seen < asked and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.answering = False  # the new master answers from now on; we only forward what still comes
        self.host.rebuild()
        await asyncio.sleep(self._grace())
        log.info("handed over after %.2f s", time.monotonic() - asked)

    def view(self) -> dict[str, Any]:
        return self.router.view() if self.router else {"state": "disabled"}
