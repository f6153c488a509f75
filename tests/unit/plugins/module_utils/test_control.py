# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import socket
import threading

import pytest
from ansible_collections.dsrlb.fleet.plugins.module_utils.control import ControlClient, ControlError


def test_show_and_target_actions_round_trip(control):
    client = ControlClient(control.path)
    targets = client.show("targets")
    assert [target["admin"] for target in targets] == ["enabled", "enabled"]
    assert client.target("disable", 2)["admin"] == "disabled"
    assert control.targets[2]["admin"] == "disabled"
    assert control.requests[-1] == {"cmd": "target", "action": "disable", "id": 2}
    assert client.reload() == {"generation": 2}


def test_rejection_carries_the_daemons_error_lines(control):
    control.reload_errors = ["/etc/dsrlb/dsrlb.conf:3:5: unknown key 'prot'"]
    with pytest.raises(ControlError) as info:
        ControlClient(control.path).reload()
    assert info.value.message == "config has errors"
    assert info.value.errors == control.reload_errors
    assert not info.value.unreachable


def test_missing_socket_is_unreachable(tmp_path):
    with pytest.raises(ControlError, match="no dsrlb daemon listens on") as info:
        ControlClient(str(tmp_path / "nothing.sock")).show("stats")
    assert info.value.unreachable


def test_unknown_requests_are_refused_before_sending(tmp_path):
    with pytest.raises(ValueError, match="cannot show 'config'"):
        ControlClient(str(tmp_path / "x.sock")).show("config")
    with pytest.raises(ValueError, match="unknown target action 'pause'"):
        ControlClient(str(tmp_path / "x.sock")).target("pause", 1)


def _one_shot_server(path: str, reply: bytes) -> threading.Thread:
    """Accept one connection, read the request, send `reply` and close."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        conn = server.accept()[0]
        with conn:
            conn.recv(65536)
            if reply:
                conn.sendall(reply)
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "reply, message",
    [
        (b"", "closed the connection without an answer"),
        (b"<html>\n", "not JSON"),
        (b'{"data": 1}\n', "without an 'ok' field"),
    ],
)
def test_broken_answers_are_errors(reply, message):
    path = f"/tmp/dsrlb-ut-{os.getpid()}.sock"
    try:
        thread = _one_shot_server(path, reply)
        with pytest.raises(ControlError, match=message):
            ControlClient(path, timeout=5).show("vrrp")
        thread.join(5)
    finally:
        os.unlink(path)


def test_silent_daemon_times_out():
    path = f"/tmp/dsrlb-ut-{os.getpid()}-silent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(1)
        with pytest.raises(ControlError, match="did not answer within 0.2 s"):
            ControlClient(path, timeout=0.2).show("vrrp")
    finally:
        server.close()
        os.unlink(path)
