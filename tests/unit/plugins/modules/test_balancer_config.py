# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import sys

import pytest
import yaml
from ansible_collections.dsrlb.fleet.plugins.module_utils.vocabulary import (
    ACCESS,
    METHODS,
    MODULES,
    PROTOCOLS,
)
from ansible_collections.dsrlb.fleet.plugins.modules.balancer_config import DOCUMENTATION, argument_spec, main

SERVERS = [dict(id=1, ipaddr="172.16.1.10", port=80, protocol="tcp", targets=[1, 2])]
TARGETS = [
    dict(id=1, ipaddr="172.16.1.100", port=80, protocol="tcp", tcpopen="80,3,10"),
    dict(id=2, ipaddr="172.16.1.101", port=80, protocol="tcp", tcpopen="80,3,10"),
]


@pytest.fixture
def fake_check(tmp_path):
    """A `dsrlb check` stand-in: rejects files containing 'weight 13', like a parser would."""
    script = tmp_path / "dsrlb"
    script.write_text(
        "#!/bin/sh\n"
        'line=$(grep -n "weight 13" "$2" | cut -d: -f1)\n'
        '[ -z "$line" ] && { echo "$2: ok"; exit 0; }\n'
        'echo "$2:$line:5: weight 13 is unlucky" >&2\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    return str(script)


def args(tmp_path, **extra):
    base = dict(
        path=str(tmp_path / "dsrlb.conf"), servers=SERVERS, targets=TARGETS, validate=False, reload=False
    )
    return dict(base, **extra)


def test_install_then_idempotent(tmp_path, run_module):
    result, failed = run_module(main, args(tmp_path, mode="0640"), diff=True)
    assert not failed and result["changed"], result
    text = (tmp_path / "dsrlb.conf").read_text()
    assert text == result["config"] and "target 2 {\n    ipaddr 172.16.1.101\n" in text
    assert oct(os.stat(tmp_path / "dsrlb.conf").st_mode & 0o777) == "0o640"
    assert result["diff"]["before"] == "" and result["diff"]["after"] == text
    assert result["modules"] == ["arp", "hc", "slb"]

    again, failed = run_module(main, args(tmp_path, mode="0640"))
    assert not failed and not again["changed"]


def test_check_mode_writes_nothing(tmp_path, run_module):
    run_module(main, args(tmp_path))
    before = (tmp_path / "dsrlb.conf").read_text()
    targets = [dict(TARGETS[0], weight=5), TARGETS[1]]
    result, failed = run_module(main, args(tmp_path, targets=targets), check_mode=True, diff=True)
    assert not failed and result["changed"]
    assert "    weight 5\n" in result["diff"]["after"] and "weight" not in result["diff"]["before"]
    assert (tmp_path / "dsrlb.conf").read_text() == before


def test_rejected_config_changes_nothing_and_returns_the_errors(tmp_path, run_module, fake_check):
    run_module(main, args(tmp_path))
    before = (tmp_path / "dsrlb.conf").read_text()
    targets = [dict(TARGETS[0], weight=13), TARGETS[1]]
    result, failed = run_module(main, args(tmp_path, targets=targets, validate=True, dsrlb_bin=fake_check))
    assert failed
    path = str(tmp_path / "dsrlb.conf")
    assert result["errors"] == [
        f"{path}:{result['config'].splitlines().index('    weight 13') + 1}:5: weight 13 is unlucky"
    ]
    assert "dsrlb check rejected the config, nothing was installed" in result["msg"]
    assert (tmp_path / "dsrlb.conf").read_text() == before

    ok, failed = run_module(main, args(tmp_path, validate=True, dsrlb_bin=fake_check, targets=TARGETS[:1]))
    assert not failed and ok["changed"] and ok["validated"]


def test_warnings_of_dsrlb_check_reach_the_play(tmp_path, run_module, monkeypatch):
    """The real `dsrlb check` of the venv: a config without an interface is accepted with a warning."""
    from ansible.module_utils import basic

    dsrlb = os.path.join(os.path.dirname(sys.executable), "dsrlb")
    if not os.access(dsrlb, os.X_OK):
        pytest.skip("no dsrlb beside this Python")
    said: list[str] = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, warning: said.append(warning))
    result, failed = run_module(main, args(tmp_path, validate=True, dsrlb_bin=dsrlb))
    assert not failed and result["validated"], result
    path = str(tmp_path / "dsrlb.conf")
    assert said and all(w.startswith(f"dsrlb check: {path}:") and ": warning: " in w for w in said), said
    assert any("no interface is registered and enabled" in w for w in said), said


def test_missing_dsrlb_binary_says_what_to_do(tmp_path, run_module):
    result, failed = run_module(main, args(tmp_path, validate=True, dsrlb_bin=str(tmp_path / "nope")))
    assert (
        failed and "install the dsrlb package, point dsrlb_bin at it, or set validate=false" in result["msg"]
    )
    assert not (tmp_path / "dsrlb.conf").exists()


def test_reload_and_backup(tmp_path, run_module, control):
    run_module(main, args(tmp_path))
    result, failed = run_module(
        main, args(tmp_path, targets=TARGETS[:1], reload=True, backup=True, control_socket=control.path)
    )
    assert not failed and result["reloaded"] and result["generation"] == 2
    assert control.requests == [{"cmd": "reload"}]
    assert "target 2" in open(result["backup_file"]).read()

    unchanged, failed = run_module(
        main, args(tmp_path, targets=TARGETS[:1], reload=True, control_socket=control.path)
    )
    assert not failed and not unchanged["reloaded"] and len(control.requests) == 1


def test_reload_rejected_puts_the_old_file_back(tmp_path, run_module, control):
    run_module(main, args(tmp_path))
    before = (tmp_path / "dsrlb.conf").read_text()
    control.reload_errors = [f"{tmp_path}/dsrlb.conf:20:5: interface eth9 not found"]
    result, failed = run_module(
        main, args(tmp_path, targets=TARGETS[:1], reload=True, control_socket=control.path)
    )
    assert failed and result["restored"] and not result["changed"]
    assert result["errors"] == control.reload_errors
    assert "the running daemon rejected the new config (config has errors)" in result["msg"]
    assert (tmp_path / "dsrlb.conf").read_text() == before


def test_daemon_not_running_is_not_an_error(tmp_path, run_module):
    result, failed = run_module(main, args(tmp_path, reload=True, control_socket=str(tmp_path / "none.sock")))
    assert not failed and result["changed"] and not result["reloaded"]


def test_bad_data_fails_before_touching_anything(tmp_path, run_module):
    targets = [dict(TARGETS[0], tcpopen="80 3 10")]
    result, failed = run_module(main, args(tmp_path, targets=targets))
    assert failed and "cannot render the config: targets[id=1].tcpopen" in result["msg"]
    assert not (tmp_path / "dsrlb.conf").exists()


def test_missing_directory(tmp_path, run_module):
    result, failed = run_module(main, args(tmp_path, path=str(tmp_path / "etc" / "dsrlb.conf")))
    assert failed and f"directory {tmp_path}/etc does not exist" in result["msg"]


@pytest.mark.parametrize(
    "option, words",
    [
        ("modules", MODULES),
        ("interfaces.access", ACCESS),
        ("servers.protocol", PROTOCOLS),
        ("servers.method", METHODS),
        ("targets.protocol", PROTOCOLS),
    ],
)
def test_choices_are_the_vocabulary(option, words):
    """validate-modules holds the documented choices equal to the argspec's; this holds both to the
    vocabulary, from which the argspec takes them."""
    doc, spec = yaml.safe_load(DOCUMENTATION)["options"], argument_spec()
    for name in option.split("."):
        doc, spec = doc.get("suboptions", doc)[name], spec.get("options", spec)[name]
    assert doc["choices"] == spec["choices"] == list(words)
