"""The words dsrlb and its Ansible collection must agree on: config vocabulary, control protocol.

A leaf module (it imports nothing), the one source of these names. The collection cannot import
dsrlb, so `plugins/module_utils/vocabulary.py` is generated from this file
(`python -m dsrlb.vocabulary > plugins/module_utils/vocabulary.py`) and a fast-lane test keeps the two
in sync.
"""

from __future__ import annotations

# --- config language -----------------------------------------------------------------------------
MODULES = ("vrrp", "arp", "ping", "hc", "master", "slb", "tnat", "nat", "rt")  # canonical order
METHODS = ("maglev", "rr", "random", "hash", "leastsessions", "first")  # the first is the default
PROTOCOLS = {"tcp": 6, "udp": 17}  # name -> IP protocol number
ACCESS = ("raw",)  # interface access modes
HEALTH_CHECKS = ("tcpopen", "ping", "http")
SETTINGS = ("control", "metrics", "arprefresh", "arpexpire", "drainidle")  # `set` keys

# --- control protocol ----------------------------------------------------------------------------
DEFAULT_CONTROL = "/run/dsrlb/control.sock"
DEFAULT_METRICS = "127.0.0.1:9410"
COMMANDS = ("show", "target", "reload")
SHOW_VIEWS = ("servers", "targets", "sessions", "stats", "vrrp")
TARGET_ACTIONS = ("enable", "disable", "drain")
