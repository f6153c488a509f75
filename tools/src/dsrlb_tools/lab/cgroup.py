"""The lab's cgroup v2 subtree: one cgroup per host, so every process a host starts can be found and
killed even after a crashed run, and systemd inside gets a writable hierarchy of its own (cgroup ns)."""

from __future__ import annotations

import os
import time
from pathlib import Path


class CgroupError(RuntimeError):
    """No usable cgroup v2 hierarchy on this machine."""


def base() -> Path:
    """Mount point of the cgroup v2 hierarchy (pure v2, or the `unified` mount of hybrid setups)."""
    mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    found = [Path(f[4]) for f in mounts if f[f.index("-") + 1] == "cgroup2"]
    if found:
        return min(found, key=lambda p: len(p.parts))
    raise CgroupError("no cgroup2 hierarchy is mounted (the lab needs cgroup v2 for systemd in the hosts)")


def pids(path: Path) -> set[int]:
    """Every process in the subtree rooted at ``path``."""
    found: set[int] = set()
    for procs in path.rglob("cgroup.procs") if path.is_dir() else ():
        try:
            found.update(int(p) for p in procs.read_text().split())
        except OSError:
            continue  # removed while walking
    return found


def remove(path: Path, timeout: float = 10.0) -> None:
    """Remove a cgroup subtree once its processes are gone (they exit asynchronously after SIGKILL)."""
    deadline = time.monotonic() + timeout
    while path.is_dir():
        for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
        if not path.is_dir():
            return
        if time.monotonic() > deadline:
            raise CgroupError(f"cannot remove {path}: processes {sorted(pids(path))} do not exit")
        time.sleep(0.05)
