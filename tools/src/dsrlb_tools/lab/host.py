"""One lab host: new namespaces, an overlay of `/` as root, systemd as PID 1.

Boot is a handshake so that a host's network exists before its systemd starts, like hardware does:
`start` runs `unshare` into new namespaces with a small shell "pre-init" that mounts the host's root
and then reports its PID; the caller wires the host's interfaces from outside and `release`s it; the
pre-init then pivots into the new root and execs systemd. Identity checks on PIDs (a namespace init
in the host's cgroup) keep the lab from ever signalling or entering a process it did not start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# $1 new root mount point, $2 upper, $3 work, $4 hostname, $5 lab state dir (hidden inside the host).
# /proc/sys is read-only except /proc/sys/net (per network namespace): a host must not change the
# shared kernel. /sys is read-only too (its net view is the host's own), with the host's cgroup
# namespace root mounted writable for systemd.
PREINIT = r"""
set -eu
root=$1
read -r pid _ < /proc/self/stat  # still the machine's /proc: the PID seen from outside
ro() { mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; }
mount -t overlay overlay -o "lowerdir=/,upperdir=$2,workdir=$3" "$root"
mount -t proc proc "$root/proc"
ro "$root/proc/sys"
mount --bind "$root/proc/sys/net" "$root/proc/sys/net"
mount -o remount,bind,rw "$root/proc/sys/net"
if [ -e "$root/proc/sysrq-trigger" ]; then ro "$root/proc/sysrq-trigger"; fi
mount -t sysfs -o ro sysfs "$root/sys"
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for d in null zero full random urandom tty; do
    touch "$root/dev/$d"
    mount --bind "/dev/$d" "$root/dev/$d"
done
mkdir "$root/dev/pts" "$root/dev/shm" "$root/dev/net"
# TUN devices (the daemon's dsrlb0 in HA mode bgp): a node of the host's own, 0666 as udev makes it on a
# Debian host (a bind mount of this machine's would share its mode).
mknod -m 0666 "$root/dev/net/tun" c 10 200
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
if [ -d "$root$5" ]; then mount -t tmpfs -o ro,mode=755 tmpfs "$root$5"; fi
hostname "$4"
echo "$pid"
read -r go
[ "$go" = go ]
cd "$root"
pivot_root . .
umount -l .
cd /
exec </dev/null >&2 env -i container=dsrlb-lab PATH="$PATH" "$6"
"""


class HostError(RuntimeError):
    """A host failed to boot or stop; the message says which and why."""


@dataclass(frozen=True)
class HostDirs:
    """Where a host keeps its disk and boot records inside the lab state directory."""

    base: Path

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def mnt(self) -> Path:
        return self.base / "root"

    @property
    def pidfile(self) -> Path:
        return self.base / "pid"

    @property
    def console(self) -> Path:
        return self.base / "console.log"


def is_init(pid: int, cgroup: str) -> bool:
    """Whether ``pid`` is a live PID-namespace init inside the lab cgroup ``cgroup`` (e.g.
    ``/dsrlab-1a2b3c/web1``): a recycled PID never passes, so it is never signalled or entered."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        groups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    alive = not fields.get("State", "").strip().startswith(("Z", "X"))
    ns_init = fields.get("NSpid", "").split()[-1:] == ["1"]
    in_cgroup = any(
        line.startswith("0::") and (line[3:] + "/").startswith(cgroup + "/") for line in groups.splitlines()
    )
    return alive and ns_init and in_cgroup


def running_pid(dirs: HostDirs, cgroup: str) -> int | None:
    """PID of the host's systemd when it is up, else None."""
    try:
        pid = int(dirs.pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if is_init(pid, cgroup) else None


class Boot:
    """A host between `unshare` and the exec of systemd (see the module docstring)."""

    def __init__(self, name: str, dirs: HostDirs, cgroup_dir: Path, state_dir: Path) -> None:
        self.name = name
        self.dirs = dirs
        for d in (dirs.upper, dirs.work, dirs.mnt):
            d.mkdir(parents=True, exist_ok=True)
        cgroup_dir.mkdir(parents=True, exist_ok=True)
        procs = cgroup_dir / "cgroup.procs"
        argv = ["unshare", "-m", "-n", "-p", "-u", "-i", "-C", "--fork", "--propagation", "private", "--",
                "/bin/sh", "-c", PREINIT, "preinit", str(dirs.mnt), str(dirs.upper), str(dirs.work), name,
                str(state_dir), SYSTEMD]  # fmt: skip
        try:
            with dirs.console.open("ab") as console:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=console,
                    env={"PATH": PATH},
                    start_new_session=True,  # a Ctrl-C of `dsrlb lab` must not reach the hosts
                    # Enter the host's cgroup before unshare -C, so it becomes the root of the host's view.
                    preexec_fn=lambda: procs.write_text(str(os.getpid())),
                )
        except subprocess.SubprocessError as err:  # preexec_fn failed: no cgroup
            raise HostError(f"{name}: cannot start in cgroup {cgroup_dir}: {err}") from None
        line = self.proc.stdout.readline() if self.proc.stdout else b""
        if not line.strip().isdigit():
            self.proc.wait()
            raise HostError(f"{name}: pre-init failed before systemd: {self.tail()}")
        self.pid = int(line)

    def release(self) -> None:
        """Let the pre-init exec systemd (the host's network is in place)."""
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            raise HostError(f"{self.name}: pre-init died: {self.tail()}") from None
        self.proc.stdout.close()
        self.dirs.pidfile.write_text(f"{self.pid}\n")

    def abort(self) -> None:
        """Kill a host whose wiring failed (its PID namespace dies with its init)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def tail(self) -> str:
        return self.dirs.console.read_text(errors="replace")[-2000:].strip() or "(no output)"


def nsenter(pid: int, argv: list[str]) -> list[str]:
    """Command line running ``argv`` inside every namespace of host ``pid``, with a clean environment."""
    env = [
        "env",
        "-i",
        f"PATH={PATH}",
        "HOME=/root",
        "LANG=C.UTF-8",
        f"TERM={os.environ.get('TERM', 'dumb')}",
    ]
    return ["nsenter", "-t", str(pid), "-a", "--", *env, *argv]


def system_state(pid: int) -> str:
    """`systemctl is-system-running` inside the host (initializing, starting, running, degraded, ...)."""
    try:
        proc = subprocess.run(
            nsenter(pid, ["systemctl", "is-system-running"]), capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return "unresponsive"
    return proc.stdout.strip() or "offline"


def wait_running(name: str, pid: int, deadline: float) -> str:
    """Wait until systemd finished booting; `degraded` is returned too (the caller reports it)."""
    while True:
        state = system_state(pid)
        if state in ("running", "degraded"):
            return state
        if time.monotonic() > deadline:
            jobs = subprocess.run(
                nsenter(pid, ["systemctl", "list-jobs", "--no-legend"]), capture_output=True, text=True
            ).stdout
            raise HostError(f"{name}: systemd did not finish booting (state {state}); pending jobs:\n{jobs}")
        time.sleep(0.2)


def failed_units(pid: int) -> list[str]:
    """Units systemd reports as failed inside the host."""
    out = subprocess.run(
        nsenter(pid, ["systemctl", "list-units", "--failed", "--plain", "--no-legend"]),
        capture_output=True,
        text=True,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def poweroff(pid: int, cgroup: str, timeout: float) -> bool:
    """Ask systemd to shut down cleanly; True when it exited within ``timeout``."""
    if not is_init(pid, cgroup):
        return True
    os.kill(pid, signal.SIGRTMIN + 4)  # systemd: start poweroff.target
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_init(pid, cgroup):
            return True
        time.sleep(0.1)
    return False
