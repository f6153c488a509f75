"""AF_PACKET socket with mmap'd TPACKET_V2 receive and transmit rings.

Frames are read from and written to shared memory, so the only system calls on the packet path are
one poll when the receive ring is empty and one send per transmitted batch.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import socket
import struct

from dsrlb.dataplane.bpf import Insn

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
SO_ATTACH_FILTER = 26

TP_STATUS_USER = 0x1  # RX slot filled by the kernel (TX: 0x1 is SEND_REQUEST)
TP_STATUS_CSUMNOTREADY = 0x8  # the frame's transport checksum is still to be computed

TPACKET2_HDR = struct.Struct("<IIIHHIIHH")  # status len snaplen mac net sec nsec vlan_tci vlan_tpid
TX_DATA_OFFSET = 32  # TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): where the kernel reads a TX frame

FRAME_SIZE = 2048  # holds a 1514-byte frame plus headers
BLOCK_SIZE = 1 << 20

# Send/receive errors that mean the link went down or away or its MTU changed: the ring is reopened
# once the link is up again (a fresh socket, mapping and MTU), everything else is a bug.
LINK_ERRORS = frozenset({errno.ENETDOWN, errno.ENXIO, errno.ENODEV, errno.EMSGSIZE})


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def interface_mac(ifname: str) -> bytes:
    """The interface's own hardware address, from sysfs."""
    with open(f"/sys/class/net/{ifname}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def interface_mtu(ifname: str) -> int:
    with open(f"/sys/class/net/{ifname}/mtu") as f:
        return int(f.read())


def link_up(ifname: str) -> bool:
    """The interface exists, is up and has a carrier: known at once, where operstate lags up to 1 s."""
    try:
        with open(f"/sys/class/net/{ifname}/carrier") as f:
            return f.read().strip() == "1"
    except OSError:  # EINVAL while the interface is down, ENOENT while it is gone
        return False


def _attach(sock: socket.socket, program: list[Insn]) -> None:
    insns = (SockFilter * len(program))(*[SockFilter(*i) for i in program])
    fprog = SockFprog(len(program), insns)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(memoryview(fprog)))


def check_filter(program: list[Insn]) -> None:
    """Have the kernel validate a filter without touching the ring (a reload checks it before it
    swaps anything): any socket takes a classic BPF program, so a throwaway UDP one does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _attach(sock, program)


class PacketRing:
    """One AF_PACKET socket bound to an interface with an RX ring and a TX ring in one mapping."""

    def __init__(self, ifname: str, rx_frames: int = 4096, tx_frames: int = 1024) -> None:
        self.ifname = ifname
        self.program: list[Insn] | None = None  # replayed by reopen()
        self.groups: list[bytes] = []
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self._setup(rx_frames, tx_frames)
        except BaseException:
            self.sock.close()
            raise

    def _setup(self, rx_frames: int, tx_frames: int) -> None:
        s = self.sock
        # Drop everything until the real filter is attached, so no stray frame sneaks in first.
        self.attach_filter([(0x06, 0, 0, 0)])
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        frames_per_block = BLOCK_SIZE // FRAME_SIZE
        rx_blocks = max(1, rx_frames // frames_per_block)
        tx_blocks = max(1, tx_frames // frames_per_block)
        s.setsockopt(
            SOL_PACKET,
            PACKET_RX_RING,
            struct.pack("IIII", BLOCK_SIZE, rx_blocks, FRAME_SIZE, rx_blocks * frames_per_block),
        )
        s.setsockopt(
            SOL_PACKET,
            PACKET_TX_RING,
            struct.pack("IIII", BLOCK_SIZE, tx_blocks, FRAME_SIZE, tx_blocks * frames_per_block),
        )
        self.rx_frames = rx_blocks * frames_per_block
        self.tx_frames = tx_blocks * frames_per_block
        self.tx_base = rx_blocks * BLOCK_SIZE
        self.map = mmap.mmap(
            s.fileno(),
            (rx_blocks + tx_blocks) * BLOCK_SIZE,
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )
        s.bind((self.ifname, ETH_P_ALL))
        self.poller = select.poll()
        self.poller.register(s.fileno(), select.POLLIN | select.POLLERR)
        self.mac = interface_mac(self.ifname)
        self.max_frame = interface_mtu(self.ifname) + 14

    def attach_filter(self, program: list[Insn]) -> None:
        """Replace the socket's classic BPF filter; the kernel swaps it atomically."""
        _attach(self.sock, program)
        self.program = program

    def join(self, mac: bytes) -> None:
        """Receive frames sent to a multicast MAC (VRRP adverts) even on NICs that filter them."""
        ifindex = socket.if_nametoindex(self.ifname)
        mreq = struct.pack("iHH8s", ifindex, PACKET_MR_MULTICAST, len(mac), mac)
        self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        self.groups.append(mac)

    def reopen(self) -> PacketRing:
        """A new ring on the same interface with this one's filter and multicast groups: after the link
        went away the old socket may be unbound, its TX ring stuck and its MTU stale."""
        ring = PacketRing(self.ifname, self.rx_frames, self.tx_frames)
        try:
            if self.program is not None:
                ring.attach_filter(self.program)
            for mac in self.groups:
                ring.join(mac)
        except BaseException:
            ring.close()
            raise
        return ring

    def kernel_drops(self) -> int:
        """Frames the kernel dropped because the RX ring was full, since the last call."""
        _packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return drops

    def wait(self, timeout_ms: int) -> None:
        """Sleep until a frame arrives or `timeout_ms` passed. A pending socket error (ENETDOWN when the
        link goes down) is raised: unread, it would also make every later poll return at once."""
        for _fd, events in self.poller.poll(timeout_ms):
            if events & select.POLLERR:
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))

    def flush(self) -> None:
        """Ask the kernel to send every TX slot marked SEND_REQUEST (one system call per batch).

        Raises OSError for anything but a busy socket: see LINK_ERRORS."""
        try:
            self.sock.send(b"", socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.map.close()
        self.sock.close()
