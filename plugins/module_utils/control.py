# Copyright: (c) 2025, dsrlb developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client for the dsrlb daemon's control socket.

The protocol is one JSON object per line: the client sends one request, the daemon answers with one
object and closes the connection. Errors are raised as ControlError so that modules can turn them into
`fail_json` results that say what to fix, including the daemon's FILE:LINE:COL lines.
"""

from __future__ import annotations

import json
import socket
import typing as t

from ansible_collections.dsrlb.fleet.plugins.module_utils.vocabulary import (
    DEFAULT_CONTROL,
    SHOW_VIEWS,
    TARGET_ACTIONS,
)

# The daemon's words (vocabulary.py is generated from dsrlb's), under the names the modules import.
DEFAULT_CONTROL_SOCKET = DEFAULT_CONTROL
SHOW_WHAT = SHOW_VIEWS
DEFAULT_TIMEOUT = 10.0


class ControlError(Exception):
    """A request that failed; `unreachable` is true when no daemon listens on the socket."""

    def __init__(
        self, message: str, errors: t.Sequence[str] | None = None, unreachable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = [str(line) for line in (errors or [])]
        self.unreachable = unreachable


class ControlClient:
    """One connection per request, as the daemon closes the socket after each answer."""

    def __init__(self, path: str = DEFAULT_CONTROL_SOCKET, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, payload: dict[str, t.Any]) -> t.Any:
        """Send one request and return the answer's `data`, or raise ControlError."""
        raw = self._exchange(json.dumps(payload, sort_keys=True).encode("utf-8") + b"\n")
        line = raw.split(b"\n", 1)[0].strip()
        if not line:
            raise ControlError(f"the daemon on {self.path} closed the connection without an answer")
        try:
            answer = json.loads(line.decode("utf-8"))
        except ValueError as err:
            raise ControlError(f"the daemon on {self.path} sent an answer that is not JSON: {err}") from None
        if not isinstance(answer, dict) or "ok" not in answer:
            raise ControlError(
                f"the daemon on {self.path} sent an answer without an 'ok' field: {line[:200]!r}"
            )
        if not answer["ok"]:
            raise ControlError(str(answer.get("error") or "request rejected"), answer.get("errors") or [])
        return answer.get("data")

    def show(self, what: str) -> t.Any:
        if what not in SHOW_WHAT:
            raise ValueError(f"cannot show {what!r}; known: {', '.join(SHOW_WHAT)}")
        return self.request({"cmd": "show", "what": what})

    def target(self, action: str, target_id: int) -> dict[str, t.Any]:
        if action not in TARGET_ACTIONS:
            raise ValueError(f"unknown target action {action!r}; known: {', '.join(TARGET_ACTIONS)}")
        return self.request({"cmd": "target", "action": action, "id": int(target_id)})

    def reload(self) -> dict[str, t.Any]:
        return self.request({"cmd": "reload"})

    def _exchange(self, request: bytes) -> bytes:
        chunks = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.sendall(request)
                while True:
                    chunk = sock.recv(65536)
                    if not chunk or b"\n" in chunk:
                        chunks.append(chunk)
                        break
                    chunks.append(chunk)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise ControlError(
                f"no dsrlb daemon listens on {self.path} ({err.strerror}): start the daemon, "
                "or point control_socket at the path of its `set control` setting",
                unreachable=True,
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {self.path}: run as root or as a member of the socket's group"
            ) from None
        except TimeoutError:
            raise ControlError(
                f"the daemon on {self.path} did not answer within {self.timeout:g} s"
            ) from None
        except OSError as err:
            raise ControlError(f"cannot talk to the daemon on {self.path}: {err}") from None
        return b"".join(chunks)
