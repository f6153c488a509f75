"""Lab wiring: one bridge per segment in its own "switch" network namespace, one veth per host interface.

Nothing here touches the root network namespace: bridges live in named switch namespaces, veths are
created inside the switch namespace with their peer placed straight into the host's namespace, and a
host's addresses and routes are applied from inside its own namespace.
"""

from __future__ import annotations

import hashlib
import subprocess

from dsrlb_tools.lab.topology import Host


class NetError(RuntimeError):
    """An `ip` command of the lab failed."""


def run(argv: list[str], stdin: str | None = None) -> str:
    """Run a command, raising NetError with its stderr on failure."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def switches(prefix: str) -> list[str]:
    """Named network namespaces whose name starts with ``prefix`` (the lab's switches)."""
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def create_switch(name: str) -> None:
    """A namespace holding bridge ``br0``; kept as is when it already exists (idempotent up)."""
    if name not in switches(name):
        run(["ip", "netns", "add", name])
    batch = "link set lo up\n"
    if subprocess.run(["ip", "-n", name, "link", "show", "br0"], capture_output=True).returncode != 0:
        batch += "link add br0 type bridge\nlink set br0 up\n"
    run(["ip", "-n", name, "-batch", "-"], stdin=batch)


def delete_switch(name: str) -> None:
    """Remove a switch namespace (its bridge and the switch-side veths go with it)."""
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def mac(lab_id: str, host: str, ifname: str) -> str:
    """A stable locally administered MAC, so neighbours' ARP caches stay right across reboots."""
    digest = hashlib.sha1(f"{lab_id}/{host}/{ifname}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def wire(lab_id: str, switch_of: dict[str, str], host: Host, pid: int) -> None:
    """Plug a freshly booted host in: veths to its segments' bridges, then addresses, routes,
    forwarding and the topology's network sysctls inside its namespace (the lab's "hardware and
    DHCP", redone at every boot)."""
    for iface in host.interfaces:
        switch = switch_of[iface.segment]
        # A veth from the host's previous boot disappears with its namespace; a leftover of a
        # crashed `up` in between would block the name.
        subprocess.run(["ip", "-n", switch, "link", "del", host.name], capture_output=True)
        run(
            [
                "ip",
                "-n",
                switch,
                "link",
                "add",
                host.name,
                "type",
                "veth",
                "peer",
                "name",
                iface.name,
                "address",
                mac(lab_id, host.name, iface.name),
                "netns",
                str(pid),
            ]
        )
        run(["ip", "-n", switch, "link", "set", host.name, "master", "br0", "up"])
    batch = ["link set lo up"]
    for iface in host.interfaces:
        batch.append(f"link set {iface.name} up")
        # nodad: an IPv6 address is usable at once, not after duplicate address detection (the lab
        # hands out each address once: the topology refuses duplicates).
        batch += [
            f"addr add {addr} dev {iface.name}" + (" nodad" if addr.version == 6 else "")
            for addr in iface.addresses
        ]
    if host.gateway:
        batch.append(f"route add default via {host.gateway}")
    if host.gateway6:
        batch.append(f"route add ::/0 via {host.gateway6}")
    batch += [f"route add {r.to} via {r.via}" for r in host.routes]
    inside = ["nsenter", "-t", str(pid), "-n"]
    run([*inside, "ip", "-batch", "-"], stdin="\n".join(batch) + "\n")
    forward = int(host.forward)
    settings = [
        f"net.ipv4.ip_forward={forward}",
        f"net.ipv6.conf.all.forwarding={forward}",
        *(f"{k}={v}" for k, v in host.sysctl),
    ]
    run([*inside, "sysctl", "-q", "-w", *settings])
