# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.dsrlb.fleet.plugins.modules.arp_sysctl import (
    ArpSysctl,
    effective,
    render_file,
    sysctl_name,
)


def fake_proc(tmp_path, values):
    for entry, keys in values.items():
        (tmp_path / entry).mkdir()
        for key, value in keys.items():
            (tmp_path / entry / key).write_text(f"{value}\n")
    return ArpSysctl(str(tmp_path))


def test_effective_value_is_the_maximum_of_all_and_the_interface():
    values = {
        "all": {"arp_ignore": 1, "arp_announce": 0},
        "default": {"arp_ignore": 8, "arp_announce": 2},
        "eth0": {"arp_ignore": 0, "arp_announce": 2},
        "eth1": {"arp_ignore": 2, "arp_announce": 1},
    }
    assert effective(values) == {
        "eth0": {"arp_ignore": 1, "arp_announce": 2},
        "eth1": {"arp_ignore": 2, "arp_announce": 1},
    }


def test_reads_and_writes_the_proc_tree(tmp_path):
    sysctl = fake_proc(
        tmp_path, {"all": {"arp_ignore": 0, "arp_announce": 0}, "lo": {"arp_ignore": 0, "arp_announce": 1}}
    )
    assert sysctl.read() == {
        "all": {"arp_ignore": 0, "arp_announce": 0},
        "lo": {"arp_ignore": 0, "arp_announce": 1},
    }
    sysctl.write("all", "arp_ignore", 1)
    assert (tmp_path / "all" / "arp_ignore").read_text() == "1\n"
    assert effective(sysctl.read())["lo"] == {"arp_ignore": 1, "arp_announce": 1}


def test_persisted_file_uses_the_slash_form_for_vlan_names():
    assert sysctl_name("eth0.100", "arp_ignore") == "net/ipv4/conf/eth0.100/arp_ignore"
    text = render_file(["all", "eth0.100"], {"arp_ignore": 1, "arp_announce": 2})
    assert text.splitlines()[1:] == [
        "net.ipv4.conf.all.arp_ignore = 1",
        "net.ipv4.conf.all.arp_announce = 2",
        "net/ipv4/conf/eth0.100/arp_ignore = 1",
        "net/ipv4/conf/eth0.100/arp_announce = 2",
    ]
    assert text.startswith("# managed by Ansible")
