# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from pathlib import Path

import yaml
from ansible_collections.dsrlb.fleet.plugins.doc_fragments.control import ModuleDocFragment
from ansible_collections.dsrlb.fleet.plugins.module_utils.control import DEFAULT_CONTROL_SOCKET

COLLECTION = Path(__file__).resolve().parents[4]


def test_documented_default_is_the_argspec_default():
    """The fragment's default is a literal for ansible-doc; the modules' argspec uses the constant."""
    option = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]["control_socket"]
    assert option["default"] == DEFAULT_CONTROL_SOCKET


def test_documented_action_group_is_in_runtime_metadata():
    membership = yaml.safe_load(ModuleDocFragment.ACTION_GROUP)["attributes"]["action_group"]["membership"]
    groups = yaml.safe_load((COLLECTION / "meta" / "runtime.yml").read_text())["action_groups"]
    assert membership == ["dsrlb.fleet.control"]
    assert {"balancer_info", "balancer_target", "balancer_config"} == set(groups["control"])
