"""The live view and the summary of `dsrlb deploy`, fed with events ansible-runner recorded on the lab
(events/*.jsonl, trimmed to the fields the view reads), and its answers to bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from deployrun import REPO, deploy, parse_summary

from dsrlb_tools.deploy import BAD_INPUT, Progress, summary_table

EVENTS = Path(__file__).parent / "events"


def replay(name: str, live: bool, show_diff: bool = False) -> tuple[Progress, str]:
    out = io.StringIO()
    progress = Progress(out, live=live, show_diff=show_diff)
    for line in (EVENTS / f"{name}.jsonl").read_text().splitlines():
        assert progress(json.loads(line)) is True  # the event stays in the artifacts
    progress.finish()
    return progress, out.getvalue()


def screen(text: str) -> tuple[list[str], str]:
    """What a terminal shows: the finished lines, and the line still being redrawn."""
    finished: list[str] = []
    current = ""
    for chunk in text.split("\r\x1b[K"):  # each clears the line being drawn
        current, *rest = chunk.split("\n")
        for line in rest:
            finished.append(current)
            current = line
    return finished, current


def test_lines_per_task_with_failures_as_they_happen() -> None:
    progress, text = replay("verify-failed", live=False)
    lines = text.splitlines()
    first_failure = lines.index(
        "FAILED lb2: Read the balancer state: no dsrlb daemon listens on /run/dsrlb/control.sock "
        "(No such file or directory): start the daemon, or point control_socket at the path of its "
        "`set control` setting"
    )
    # Printed when lb2's result came in, before the task's own line (written when the task ended).
    assert lines[first_failure + 1] == "  [####################] 2/2  Read the balancer state"
    assert "  [##########..........] 1/2  Every target is up" in lines
    assert [line for line in lines if line.startswith("PLAY ")] == [
        "PLAY Verify the balancers - targets healthy, one VRRP master",
        "PLAY Verify the virtual servers from the clients",
        "PLAY Verify forwarding and ARP on the segment",
    ]
    assert len(progress.failures) == 2 and progress.failures[1].startswith("FAILED lb1: Probe ARP")
    assert "\r" not in text


def test_live_bar_keeps_only_plays_and_failures_on_screen() -> None:
    progress, text = replay("verify-failed", live=True)
    assert "\r\x1b[K  [##########..........] 1/2  Read the balancer state" in text
    finished, current = screen(text)
    assert current == ""  # the bar is cleared at the end, before the summary
    assert [line.split()[0] for line in finished] == ["PLAY", "FAILED", "PLAY", "PLAY", "FAILED"]
    assert finished[1] == progress.failures[0]


def test_changed_hosts_and_summary_of_a_limited_run() -> None:
    progress, text = replay("site-limit-web2", live=False)
    assert "  [####################] 1/1  target : Own the VIPs on the loopback  changed: web2" in text
    assert text.count("  no hosts matched") == 4  # balancers and the three verification plays
    assert progress.stats is not None
    assert parse_summary(summary_table(progress.stats)) == {
        "web2": {"ok": 9, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 0}
    }


def test_diffs_of_changes_only_with_diff() -> None:
    _, text = replay("site-check-diff-web1", live=False, show_diff=True)
    diff = text.split("--- before: /etc/sysctl.d/90-dsrlb-arp.conf\n", 1)[1].splitlines()
    assert diff[:3] == [
        "+++ after: /etc/sysctl.d/90-dsrlb-arp.conf",
        "@@ -0,0 +1,3 @@",
        "+# managed by Ansible (dsrlb.fleet.arp_sysctl): a DSR target must not answer ARP for its VIPs",
    ]
    assert "\r" not in text
    _, text = replay("site-check-diff-web1", live=False)
    assert "--- before" not in text


def test_summary_of_failures() -> None:
    progress, _ = replay("verify-failed", live=False)
    assert progress.stats is not None
    summary = parse_summary(summary_table(progress.stats))
    assert summary["lb2"] == {"ok": 0, "changed": 0, "failed": 1, "unreachable": 0, "skipped": 0}
    assert summary["lb1"]["failed"] == 1 and summary["client"]["ok"] == 1


def test_ansible_errors_outside_tasks_are_shown_warnings_are_not() -> None:
    progress, text = replay("limit-no-match", live=False)
    assert text.splitlines() == [
        "[ERROR]: Specified inventory, host pattern and/or --limit leaves us with no hosts to target."
    ]
    assert progress.stats is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "-i", "inventory/lab"], "argument playbook: invalid choice: 'nope'"),
        (["site"], "the following arguments are required: -i/--inventory"),
        (["site", "-i", "inventory/nope"], "inventory inventory/nope: no such file or directory"),
        (["site", "-i", "inventory/lab", "-e", "batch"], "-e batch: expected KEY=VALUE"),
        (["site", "-i", "inventory/lab", "-e", "=1"], "-e =1: expected KEY=VALUE"),
        (["site", "-i", "inventory/lab", "--project-dir", "/"], "--project-dir /: no site.yml there"),
        (["verify", "-i", "inventory/lab", "--artifacts", str(REPO)], f"--artifacts {REPO}: not empty"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    proc = deploy(None, *args)
    assert proc.returncode == BAD_INPUT
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"dsrlb deploy: {message}"), proc.stderr


def test_without_ansible_runner_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['ansible_runner'] = None\n"  # what an install without the extra sees
        "from dsrlb.cli import main; sys.exit(main(['deploy', 'site', '-i', 'inventory/lab']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == BAD_INPUT
    assert proc.stderr == "dsrlb deploy: ansible-runner is not installed: pip install './tools[deploy]'\n"
