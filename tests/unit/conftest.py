# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures shared by the collection's unit tests."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.dsrlb.fleet.tests.unit.fake_control import FakeControl


@pytest.fixture
def control():
    """A fake daemon on a short socket path (Unix socket paths are limited to 107 bytes)."""
    tmpdir = tempfile.mkdtemp(prefix="dsrlb-ut-")
    try:
        with FakeControl(os.path.join(tmpdir, "control.sock")) as server:
            yield server
    finally:
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)


class ModuleExit(Exception):
    """Raised instead of sys.exit so that tests can look at the module's result."""

    def __init__(self, result: dict, failed: bool) -> None:
        super().__init__(result.get("msg", ""))
        self.result = result
        self.failed = failed


@pytest.fixture
def run_module(monkeypatch):
    """Run a module's main() with args and return (result, failed)."""

    def runner(main, args: dict, check_mode: bool = False, diff: bool = False) -> tuple[dict, bool]:
        from ansible.module_utils import basic

        def exit_json(self, **kwargs):
            raise ModuleExit(kwargs, failed=False)

        def fail_json(self, msg, **kwargs):
            raise ModuleExit(dict(kwargs, msg=msg), failed=True)

        monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
        monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
        full = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
        with patch_module_args(full):
            try:
                main()
            except ModuleExit as done:
                return json.loads(json.dumps(done.result)), done.failed
        raise AssertionError("the module returned without exit_json or fail_json")

    return runner
