"""The lab's client load against a real HTTP server on 127.0.0.1: attempts, failures, the gap, stop file."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from dsrlb_tools.lab import load


class Named(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = b"web9\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_load_counts_replies_and_stops_at_the_stop_file(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Named)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = tmp_path / "stop"
    argv = [
        sys.executable,
        "-m",
        "dsrlb_tools.lab.load",
        "127.0.0.1",
        "--port",
        str(server.server_address[1]),
    ]
    proc = subprocess.Popen(
        [*argv, "--interval", "0.02", "--sources", "127.0.0.2,127.0.0.3", "--stop-file", str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    server.shutdown()
    server.server_close()
    time.sleep(0.3)  # attempts now fail: connection refused
    stop.touch()
    report = json.loads(proc.communicate(timeout=10)[0])
    summary = report["summary"]
    assert summary["sent"] == len(report["attempts"]) >= 30
    assert 0 < summary["failed"] < summary["sent"]
    assert set(summary["served"]) == {"web9"}  # the server's name, per source address
    assert set(summary["served"]["web9"]) == {"127.0.0.2", "127.0.0.3"}
    assert 250 <= summary["gap_ms"] <= 1000  # from the last reply to the last attempt


def test_gap_counts_the_window_edges() -> None:
    attempts = [[0.0, 0.01, True, "a", ""], [0.02, 0.32, False, "", ""], [0.5, 0.51, True, "a", ""]]
    assert abs(load.gap(attempts) - 0.5) < 1e-9
    assert load.summary(attempts)["failed"] == 1
