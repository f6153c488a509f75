"""loopback_alias and arp_sysctl against the real kernel, inside a throwaway network namespace."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import run_module

pytestmark = pytest.mark.root


def lo_info(netns: str) -> list[dict]:
    out = subprocess.run(
        ["ip", "-j", "-n", netns, "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)[0]["addr_info"]


def lo_addresses(netns: str) -> set[str]:
    return {f"{info['local']}/{info['prefixlen']}" for info in lo_info(netns)}


def lo_labels(netns: str) -> dict[str, str]:
    return {info["local"]: info.get("label", "") for info in lo_info(netns) if info["family"] == "inet"}


def proc_value(netns: str, entry: str, key: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", f"/proc/sys/net/ipv4/conf/{entry}/{key}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out)


def test_loopback_alias_adds_removes_and_is_idempotent(netns):
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.9.9.9/32", "dev", "lo"], check=True)
    args = {"addresses": ["172.16.1.10", "2001:db8::10/128"]}

    check = run_module("loopback_alias", args, netns, check=True, diff=True)
    assert check.changed and check.result["added"] == ["172.16.1.10/32", "2001:db8::10/128"], check.output
    assert "+172.16.1.10/32" in check.diff and "+2001:db8::10/128" in check.diff
    assert "172.16.1.10/32" not in lo_addresses(netns)

    first = run_module("loopback_alias", args, netns)
    assert first.changed, first.output
    assert {"127.0.0.1/8", "10.9.9.9/32", "172.16.1.10/32", "2001:db8::10/128"} <= lo_addresses(netns)
    assert lo_labels(netns)["172.16.1.10"] == "lo:0"

    second = run_module("loopback_alias", args, netns)
    assert not second.changed and second.result["added"] == [], second.output

    gone = run_module("loopback_alias", dict(args, state="absent"), netns, diff=True)
    assert gone.changed and gone.result["removed"] == ["172.16.1.10/32", "2001:db8::10/128"]
    assert "-172.16.1.10/32" in gone.diff
    remaining = lo_addresses(netns)
    assert "172.16.1.10/32" not in remaining and "2001:db8::10/128" not in remaining
    assert {"127.0.0.1/8", "10.9.9.9/32", "::1/128"} <= remaining  # other addresses untouched
    assert not run_module("loopback_alias", dict(args, state="absent"), netns).changed


@pytest.mark.parametrize(
    "args, message",
    [
        ({"addresses": ["172.16.1.0/24"]}, "not a host address: use /32"),
        ({"addresses": ["172.16.1.10"], "label": "eth0:1"}, "must be 'lo' or start with 'lo:'"),
        (
            {"addresses": ["172.16.1.10"], "interface": "nosuch0", "label": "nosuch0:1"},
            "'nosuch0' does not exist",
        ),
    ],
)
def test_loopback_alias_bad_input(netns, args, message):
    run = run_module("loopback_alias", args, netns)
    assert run.failed and message in run.result["msg"], run.output
    assert "172.16.1.10/32" not in lo_addresses(netns)


def test_arp_sysctl_sets_runtime_and_file(netns, tmp_path: Path):
    subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.conf.dum0.arp_announce=1"], check=True
    )
    args = {"interfaces": ["all", "dum0"], "sysctl_dir": str(tmp_path)}

    check = run_module("arp_sysctl", args, netns, check=True, diff=True)
    assert check.changed, check.output
    assert check.result["effective_before"]["dum0"] == {"arp_ignore": 0, "arp_announce": 1}
    assert "dum0" in check.result["wrong_before"] and "lo" in check.result["wrong_before"]
    assert "+net.ipv4.conf.all.arp_ignore = 1" in check.diff
    assert proc_value(netns, "all", "arp_ignore") == 0 and not list(tmp_path.iterdir())

    first = run_module("arp_sysctl", args, netns)
    assert first.changed, first.output
    for entry in ("all", "dum0"):
        assert (proc_value(netns, entry, "arp_ignore"), proc_value(netns, entry, "arp_announce")) == (1, 2)
    assert first.result["effective_after"]["lo"] == {"arp_ignore": 1, "arp_announce": 2}
    persisted = (tmp_path / "90-dsrlb-arp.conf").read_text()
    assert "net.ipv4.conf.dum0.arp_announce = 2\n" in persisted

    second = run_module("arp_sysctl", args, netns)
    assert not second.changed and second.result["wrong_before"] == [], second.output


def test_arp_sysctl_reports_effective_values_and_warns_about_stricter(netns, tmp_path: Path):
    subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.conf.dum0.arp_ignore=2"], check=True
    )
    run = run_module("arp_sysctl", {"sysctl_dir": str(tmp_path), "persist": False}, netns)
    assert run.changed and run.result["changed_keys"] == [
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_announce",
    ]
    assert run.result["effective_after"]["dum0"] == {"arp_ignore": 2, "arp_announce": 2}
    assert "dum0 is stricter than requested (arp_ignore=2)" in run.output
    assert not list(tmp_path.iterdir())


def test_arp_sysctl_unknown_interface(netns, tmp_path: Path):
    run = run_module("arp_sysctl", {"interfaces": ["all", "eth7"], "sysctl_dir": str(tmp_path)}, netns)
    assert run.failed and "no such interface: eth7" in run.result["msg"], run.output
    assert proc_value(netns, "all", "arp_ignore") == 0
