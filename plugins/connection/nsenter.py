# Copyright: dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection to a host of the dsrlb lab, through its namespaces (nsenter) and its root (/proc/PID/root)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: nsenter
short_description: Run tasks on a dsrlb lab host through its Linux namespaces
description:
  - Connects to a host of the embedded dsrlb lab (C(dsrlb lab up)), a systemd system running as PID 1
    of its own mount, PID, network, UTS, IPC and cgroup namespaces on the controller machine.
  - Commands run with C(nsenter -t PID -a) followed by C(/bin/sh -c), so they see exactly what the
    host's own processes see. Files are copied through C(/proc/PID/root), resolving symbolic links
    inside the host's root so that a link never leads outside it.
  - The host's PID 1 is looked up in the lab state directory by host name at every command, so a
    host rebooted with C(dsrlb lab reboot) is reached again without reconnecting.
  - Only a process that is the init of its own PID namespace is ever entered, never a process of the
    controller's own namespaces.
author: dsrlb developers (@dsrlb)
version_added: "0.1.0"
requirements:
  - C(nsenter) from util-linux on the controller, which must run as root on the lab machine.
options:
  remote_addr:
    description:
      - Name of the lab host, as in the lab topology (C(web1), C(lb1), ...).
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: dsrlb_lab_host
  pid:
    description:
      - PID (as seen from the controller) of the host's init process. When set, the lab state
        directory is not consulted. The process must be the init of a PID namespace.
    type: int
    vars:
      - name: ansible_nsenter_pid
  lab_state_dir:
    description:
      - State directory of the lab (the C(--state-dir) of C(dsrlb lab up)); the PID of host C(NAME)
        is read from C(LAB_STATE_DIR/hosts/NAME/pid).
    type: path
    default: /var/lib/dsrlb-lab
    env:
      - name: DSRLB_LAB_STATE_DIR
    vars:
      - name: dsrlb_lab_state_dir
extends_documentation_fragment:
  - connection_pipelining
notes:
  - The remote user is ignored; everything runs as root inside the host. Privilege escalation is not
    needed.
  - Commands get a clean environment (C(PATH), C(HOME=/root), C(LANG=C.UTF-8)), not the controller's.
"""

EXAMPLES = r"""
# inventory/lab/hosts.yml
all:
  vars:
    ansible_connection: dsrlb.fleet.nsenter
  hosts:
    web1:

# A lab with a non-default state directory:
#   DSRLB_LAB_STATE_DIR=/tmp/mylab ansible all -m ansible.builtin.ping
"""

import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound  # noqa: E402
from ansible.module_utils.common.text.converters import to_bytes, to_native  # noqa: E402
from ansible.plugins.connection import ConnectionBase  # noqa: E402
from ansible.utils.display import Display  # noqa: E402

display = Display()

ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
MAX_SYMLINKS = 40


def namespace_init(pid):
    """Whether pid is alive and PID 1 of its own PID namespace (so not a controller process)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return False
    alive = not fields.get("State", "").strip().startswith(("Z", "X"))
    return alive and fields.get("NSpid", "").split()[-1:] == ["1"]


def resolve_in_root(root, path):
    """Path under root for path as the host sees it: absolute links restart at root, '..' stops there."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise AnsibleError(f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


class Connection(ConnectionBase):
    """Runs commands and moves files into a dsrlb lab host."""

    transport = "dsrlb.fleet.nsenter"
    has_pipelining = True

    def _host(self):
        return self.get_option("remote_addr") or self._play_context.remote_addr

    def _pid(self):
        """The host's init PID, checked at each use (a rebooted host has a new one)."""
        host = self._host()
        pid = self.get_option("pid")
        if pid is None:
            pidfile = os.path.join(self.get_option("lab_state_dir"), "hosts", host, "pid")
            try:
                with open(pidfile) as f:
                    pid = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
        if pid is None or not namespace_init(pid):
            raise AnsibleConnectionFailure(f"lab host {host} is not running: dsrlb lab up")
        return pid

    def _connect(self):
        if not self._connected:
            display.vvv(f"ESTABLISH NSENTER CONNECTION TO LAB HOST (pid {self._pid()})", host=self._host())
            self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):
        """Run cmd with /bin/sh -c inside every namespace of the host."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        argv = ["nsenter", "-t", str(self._pid()), "-a", "--", "/bin/sh", "-c", cmd]
        display.vvv(f"EXEC {argv}", host=self._host())
        try:
            proc = subprocess.Popen(
                [to_bytes(a) for a in argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=ENV,
            )
        except OSError as err:
            raise AnsibleConnectionFailure(f"cannot run nsenter: {to_native(err)}") from err
        stdout, stderr = proc.communicate(in_data)
        return proc.returncode, stdout, stderr

    def _copy(self, src, dst, remote_path):
        try:
            shutil.copyfile(src, dst)
        except FileNotFoundError as err:
            raise AnsibleFileNotFound(f"file or directory not found: {to_native(err.filename)}") from err
        except OSError as err:
            raise AnsibleError(
                f"failed to copy {remote_path} on lab host {self._host()}: {to_native(err)}"
            ) from err

    def put_file(self, in_path, out_path):
        """Copy a controller file to out_path inside the host, through /proc/PID/root."""
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._host())
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"file or module does not exist: {to_native(in_path)}")
        self._copy(in_path, resolve_in_root(f"/proc/{self._pid()}/root", out_path), out_path)

    def fetch_file(self, in_path, out_path):
        """Copy in_path of the host to out_path on the controller."""
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._host())
        self._copy(resolve_in_root(f"/proc/{self._pid()}/root", in_path), out_path, in_path)

    def close(self):
        self._connected = False
