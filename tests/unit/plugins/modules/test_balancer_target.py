# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.dsrlb.fleet.plugins.modules import balancer_target
from ansible_collections.dsrlb.fleet.plugins.modules.balancer_target import main


def actions(control):
    return [request for request in control.requests if request["cmd"] == "target"]


def test_drain_and_wait_until_drained(control, run_module):
    args = dict(id=1, state="drained", wait=True, timeout=10, poll_interval=0.05, control_socket=control.path)
    result, failed = run_module(main, args, diff=True)
    assert not failed, result
    assert result["changed"] and result["admin_before"] == "enabled" and result["admin"] == "drained"
    assert result["target"]["connections"] == 0
    assert result["diff"] == {"before": "admin: enabled\n", "after": "admin: drained\n"}
    assert actions(control) == [{"cmd": "target", "action": "drain", "id": 1}]

    again, failed = run_module(main, args)
    assert not failed and not again["changed"] and again["admin"] == "drained"
    assert len(actions(control)) == 1


def test_check_mode_reports_without_acting(control, run_module):
    result, failed = run_module(
        main, dict(id=2, state="disabled", control_socket=control.path), check_mode=True
    )
    assert not failed and result["changed"] and result["admin"] == "disabled"
    assert actions(control) == [] and control.targets[2]["admin"] == "enabled"


def test_enable_is_idempotent(control, run_module):
    result, failed = run_module(main, dict(id=2, state="enabled", control_socket=control.path))
    assert not failed and not result["changed"]
    assert actions(control) == []


def test_drain_timeout_fails_with_counts(control, run_module):
    control.drain_polls = 10**6
    args = dict(id=1, state="drained", wait=True, timeout=1, poll_interval=0.1, control_socket=control.path)
    result, failed = run_module(main, args)
    assert failed
    assert "target 1 is still draining after 1 s (1 connections, 1 sessions)" in result["msg"]
    assert control.targets[1]["admin"] == "draining"


def test_unknown_target_lists_the_known_ones(control, run_module):
    result, failed = run_module(main, dict(id=9, state="disabled", control_socket=control.path))
    assert failed and "target 9 is not in the running config (known targets: 1, 2)" in result["msg"]


def test_no_daemon(tmp_path, run_module):
    result, failed = run_module(main, dict(id=1, control_socket=str(tmp_path / "none.sock")))
    assert failed and "no dsrlb daemon listens on" in result["msg"]


def test_default_socket_is_module_utils_constant(control, run_module, monkeypatch):
    monkeypatch.setattr(balancer_target, "DEFAULT_CONTROL_SOCKET", control.path)
    result, failed = run_module(main, dict(id=2, state="disabled"))
    assert not failed and result["admin"] == "disabled"
