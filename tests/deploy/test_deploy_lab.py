"""`dsrlb deploy` against the lab: site.yml converges the fleet and verify.yml passes, each with exit
status 0 and a summary without failures; a rollout limited to web1 changes nothing on web2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from deployrun import deploy, parse_summary
from labrun import LabRun

pytestmark = pytest.mark.root

FLEET = {"router", "lb1", "lb2", "web1", "web2", "client"}
SYSCTL_FILE = "/etc/sysctl.d/90-dsrlb-arp.conf"  # written by the target role (arp_sysctl, persist)
UNIT = "dsrlb-vip.service"  # the target role's boot-time unit


@pytest.fixture(scope="module")
def site(lab: LabRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    artifacts = tmp_path_factory.mktemp("site") / "artifacts"
    return deploy(lab.state_dir, "site", "-i", "inventory/lab", artifacts=artifacts), artifacts


def test_site_converges_the_fleet(site: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, artifacts = site
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = parse_summary(proc.stdout)
    assert set(summary) == FLEET - {"router"}  # site.yml has no play for the router
    assert all(row["failed"] == 0 and row["unreachable"] == 0 for row in summary.values()), summary
    assert all(summary[h]["changed"] > 0 for h in ("lb1", "lb2", "web1", "web2")), summary  # a fresh lab
    assert (artifacts / "rc").read_text() == "0"
    assert any((artifacts / "job_events").iterdir())
    assert f"artifacts in {artifacts}" in proc.stdout
    assert "PLAY DSR balancers" in proc.stdout and "Install dsrlb offline into its venv" in proc.stdout


def test_verify_passes_on_the_converged_fleet(
    lab: LabRun, site: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    assert site[0].returncode == 0
    proc = deploy(lab.state_dir, "verify", "-i", "inventory/lab", artifacts=tmp_path / "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = parse_summary(proc.stdout)
    assert set(summary) == {"lb1", "lb2", "client"}
    assert all(r["failed"] == r["unreachable"] == r["changed"] == 0 for r in summary.values()), summary
    assert "FAILED" not in proc.stdout


def test_rollout_limited_to_web1_leaves_web2_untouched(
    lab: LabRun, site: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    """Both targets lose their persisted ARP sysctls; the rollout of the target role on web1 restores
    web1's only, web2 keeps every file as it was, and the summary has no row for it."""
    assert site[0].returncode == 0
    for host in ("web1", "web2"):
        lab.exec(host, "rm", SYSCTL_FILE)
    files = f"/etc/sysctl.d/* /etc/systemd/system/{UNIT} /srv/lab-web/*"
    stamp = ["sh", "-c", f"stat -c '%n %s %y' {files}"]
    web2_before = lab.exec("web2", *stamp).stdout

    # --check --diff shows the file web1 lacks, and writes nothing.
    proc = deploy(
        lab.state_dir, "site", "-i", "inventory/lab", "--limit", "web1", "--check", "--diff",
        artifacts=tmp_path / "check",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"+++ after: {SYSCTL_FILE}" in proc.stdout, proc.stdout
    assert set(parse_summary(proc.stdout)) == {"web1"}
    assert lab.exec("web1", "test", "-f", SYSCTL_FILE, check=False).returncode != 0

    proc = deploy(
        lab.state_dir, "rollout", "-i", "inventory/lab", "--limit", "web1",
        "-e", "dsrlb_rollout_batch=1", "-e", "dsrlb_rollout_update=dsrlb.fleet.target",
        artifacts=tmp_path / "rollout",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = parse_summary(proc.stdout)
    assert set(summary) == {"web1"}, summary
    assert summary["web1"]["changed"] > 0 and summary["web1"]["failed"] == 0
    assert lab.exec("web1", "test", "-f", SYSCTL_FILE, check=False).returncode == 0
    assert lab.exec("web2", "test", "-f", SYSCTL_FILE, check=False).returncode != 0
    assert lab.exec("web2", *stamp).stdout == web2_before

    # The same limit the other way round puts web2 back, touching web2 only.
    proc = deploy(
        lab.state_dir, "site", "-i", "inventory/lab", "--limit", "web2", artifacts=tmp_path / "web2"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(parse_summary(proc.stdout)) == {"web2"}
    assert lab.exec("web2", "test", "-f", SYSCTL_FILE, check=False).returncode == 0
