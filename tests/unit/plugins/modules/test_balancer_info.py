# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.dsrlb.fleet.plugins.modules import balancer_info
from ansible_collections.dsrlb.fleet.plugins.modules.balancer_info import main


def test_gathers_everything_with_sessions_as_a_count(control, run_module):
    control.targets[2]["health"] = "down"
    result, failed = run_module(main, dict(control_socket=control.path), check_mode=True)
    assert not failed and not result["changed"]
    assert [(t["id"], t["health"]) for t in result["targets"]] == [(1, "up"), (2, "down")]
    assert result["sessions"] == 2
    assert result["vrrp"]["state"] == "master"
    assert result["servers"][0]["vip"] == "172.16.1.10"
    assert result["stats"]["forwarded"] == 20


def test_gather_subset(control, run_module):
    result, failed = run_module(main, dict(control_socket=control.path, gather=["vrrp"]))
    assert not failed and "targets" not in result and result["vrrp"] == {"state": "master"}
    assert [request["what"] for request in control.requests] == ["vrrp"]


def test_no_daemon(tmp_path, run_module):
    result, failed = run_module(main, dict(control_socket=str(tmp_path / "none.sock")))
    assert failed and "start the daemon" in result["msg"]


def test_default_socket_is_module_utils_constant(control, run_module, monkeypatch):
    monkeypatch.setattr(balancer_info, "DEFAULT_CONTROL_SOCKET", control.path)
    result, failed = run_module(main, dict(gather=["vrrp"]))
    assert not failed and result["vrrp"] == {"state": "master"}
