"""`dsrlb deploy` as a user runs it, against a lab under test, and its summary table read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def deploy(
    state_dir: Path | None, *args: str, artifacts: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run from the repository; DSRLB_LAB_STATE_DIR points the nsenter connection at the lab, and the
    artifacts go to a test's directory rather than the checkout's .dsrlb/."""
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
    if state_dir is not None:
        env["DSRLB_LAB_STATE_DIR"] = str(state_dir)
    where = ["--artifacts", str(artifacts)] if artifacts is not None else []
    return subprocess.run(
        [str(BIN / "dsrlb"), "deploy", *args, *where],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_summary(text: str) -> dict[str, dict[str, int]]:
    """{host: {column: count}} from the table that starts at the `host ok changed ...` heading."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["host", "ok"])
    columns = lines[start].split()[1:]
    table = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        host, *counts = line.split()
        table[host] = dict(zip(columns, map(int, counts), strict=True))
    return table
