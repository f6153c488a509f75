# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The control_socket option of the modules that talk to the daemon, and their action group.

    One text for all of them, and one group (meta/runtime.yml) through which a play sets the socket once.
    The default is module_utils/control.py's DEFAULT_CONTROL_SOCKET; a unit test keeps the two equal.
    """

    DOCUMENTATION = r"""
options:
  control_socket:
    description: The daemon's control socket (C(set control) in its config).
    type: path
    default: /run/dsrlb/control.sock
"""

    # Membership of the action group; every module that talks to the daemon extends this one too.
    ACTION_GROUP = r"""
attributes:
  action_group:
    description: A play sets O(control_socket) once with C(module_defaults) for C(group/dsrlb.fleet.control).
    support: full
    membership: [dsrlb.fleet.control]
"""
