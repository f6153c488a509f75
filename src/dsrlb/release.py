"""Which build of dsrlb runs: the version alone does not tell two builds of one version apart, and the
balancer role must know whether the running daemon is the installed code (a reload hands the new config
to the running code, which may be older and not know its keys)."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from dsrlb import __version__


@cache
def build() -> str:
    """Digest of the package's Python sources as installed: equal for equal code, whatever the version."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def describe() -> str:
    """What `dsrlb --version` prints and the balancer role compares with the running daemon's."""
    return f"dsrlb {__version__} (build {build()})"
