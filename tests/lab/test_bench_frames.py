"""`dsrlb bench` offers what it says: TCP SYNs to the family's VIP from distinct sources, every checksum
right (the targets' TCP counts only those), each frame as long as the generator is told."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from dsrlb_tools.bench import FAMILIES, PORT, SOURCES, build_frames

DST, SRC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_frames_are_valid_syns_to_the_vip_from_distinct_sources(name: str) -> None:
    family = FAMILIES[name]
    blob = build_frames(family, DST, SRC)
    size = family.frame_bytes
    assert len(blob) == SOURCES * size
    layer = IPv6 if name == "ipv6" else IP
    sources = set()
    for i in range(0, len(blob), size * 97):  # a sample across the ring
        frame = Ether(blob[i : i + size])
        assert (frame.dst, frame.src) == ("02:00:00:00:00:01", "02:00:00:00:00:02")
        ip, tcp = frame[layer], frame[TCP]
        assert ip.dst == family.vip and (tcp.dport, tcp.flags) == (PORT, "S")
        sent = tcp.chksum
        del tcp.chksum
        if layer is IP:
            sent_ip = ip.chksum
            del ip.chksum
            assert Ether(bytes(frame))[IP].chksum == sent_ip
        assert Ether(bytes(frame))[TCP].chksum == sent, (name, i // size)
        sources.add((ip.src, tcp.sport))
    assert len(sources) == len(range(0, len(blob), size * 97))
