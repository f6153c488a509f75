"""`dsrlb deploy site|rollout|verify`: the repository's playbooks run through ansible-runner, with a live
view of each play (hosts done of total, current task, failures as they happen), a per-host summary at
the end, the run's artifacts (events, stdout, command) kept in a directory it names, and ansible's
exit status as its own. ansible-runner is imported only here: balancers install dsrlb without it."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

PLAYBOOKS = {"site": "site.yml", "rollout": "playbooks/rollout.yml", "verify": "playbooks/verify.yml"}
# Summary columns: (heading, key of ansible's playbook_on_stats event).
COLUMNS = (
    ("ok", "ok"),
    ("changed", "changed"),
    ("failed", "failures"),
    ("unreachable", "dark"),
    ("skipped", "skipped"),
)
RESULTS = {"runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable"}
BAR = 20
# ansible-playbook's own status for "bad or incomplete options": 2 stays "a host failed".
BAD_INPUT = 5
# The checkout this module runs from, when it is installed from one (editable install).
CHECKOUT = Path(__file__).resolve().parents[3]  # tools/src/dsrlb_tools/deploy.py


class DeployError(Exception):
    """Bad input or a missing piece: printed as one line, exit status BAD_INPUT."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise DeployError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dsrlb deploy",
        description="Run site.yml, playbooks/rollout.yml or playbooks/verify.yml through ansible-runner: "
        "live progress, a per-host summary, the artifacts kept, ansible's exit status.",
        epilog="Exit status: ansible-playbook's (0 ok, 2 a host failed, 4 a host unreachable, ...); "
        "5 for bad input to dsrlb deploy itself, as ansible-playbook for bad options.",
    )
    parser.add_argument(
        "playbook", choices=list(PLAYBOOKS), help="site.yml, playbooks/rollout.yml or playbooks/verify.yml"
    )
    parser.add_argument(
        "-i", "--inventory", required=True, help="inventory file or directory (or host list 'a,b,')"
    )
    parser.add_argument("-l", "--limit", help="host pattern: only this part of the fleet is touched")
    parser.add_argument("-C", "--check", action="store_true", help="change nothing, report what would change")
    parser.add_argument(
        "-D", "--diff", action="store_true", help="show the differences of changed files and settings"
    )
    parser.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        metavar="KEY=VALUE|@FILE|JSON",
        help="extra variables, as ansible-playbook takes them (repeatable; later ones win)",
    )
    parser.add_argument("-t", "--tags", action="append", default=[], help="only tasks with these tags")
    parser.add_argument("--skip-tags", action="append", default=[], help="not the tasks with these tags")
    ssh = parser.add_argument_group("connection and privileges (as ansible-playbook)")
    ssh.add_argument("-u", "--user", help="remote user (default: the inventory's or your own)")
    ssh.add_argument("--private-key", metavar="FILE", help="SSH private key file")
    ssh.add_argument("-f", "--forks", type=_forks, help="hosts handled in parallel (default: ansible.cfg's)")
    ssh.add_argument("-b", "--become", action="store_true", help="run tasks with privileges (sudo)")
    ssh.add_argument(
        "-K", "--ask-become-pass", action="store_true", help="ask for the privilege (sudo) password"
    )
    ssh.add_argument(
        "--vault-password-file", action="append", default=[], metavar="FILE", help="vault password file"
    )
    ssh.add_argument("-J", "--ask-vault-pass", action="store_true", help="ask for the vault password")
    parser.add_argument(
        "--project-dir",
        help="repository with site.yml (default: the current directory if it has one, else dsrlb's checkout)",
    )
    parser.add_argument(
        "--artifacts", help="directory for the run's artifacts (default: PROJECT/.dsrlb/deploy/TIME-PLAYBOOK)"
    )
    return parser


def _forks(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected 1..1000")
    return int(text)


def find_project(explicit: str | None) -> Path:
    """The playbooks' repository: it carries ansible.cfg, the in-repo collection and the inventories."""
    if explicit is not None:
        project = Path(explicit).resolve()
        if not (project / "site.yml").is_file():
            raise DeployError(f"--project-dir {explicit}: no site.yml there")
        return project
    for candidate in (Path.cwd(), CHECKOUT):
        if (candidate / "site.yml").is_file():
            return candidate
    raise DeployError("no project: run from the repository or pass --project-dir")


def resolve_inventory(inventory: str) -> str:
    """An absolute path (ansible runs in the project directory), or an inline host list as it is."""
    path = Path(inventory)
    if path.exists():
        return str(path.resolve())
    if "," in inventory:
        return inventory
    raise DeployError(f"inventory {inventory}: no such file or directory")


def _existing(path: str, label: str) -> str:
    """A file named on the command line, absolute: ansible-playbook runs in the project directory."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise DeployError(f"{label}: no such file")
    return str(resolved)


def extra_var_args(items: list[str]) -> list[str]:
    """`-e` options for ansible-playbook's command line, in the user's order, so that later ones win as
    with ansible-playbook: @FILE made absolute (and checked), {...} as it is, KEY=VALUE as a JSON mapping
    (the value stays one string, spaces and quotes included)."""
    args = []
    for item in items:
        if item.startswith("@"):
            args += ["-e", "@" + _existing(item[1:], f"-e {item}")]
        elif item.startswith("{"):
            args += ["-e", item]
        else:
            key, sep, value = item.partition("=")
            if not sep or not key.isidentifier():
                raise DeployError(
                    f"-e {item}: expected KEY=VALUE with KEY a variable name, @FILE or a {{...}} mapping"
                )
            args += ["-e", json.dumps({key: value})]
    return args


def ansible_args(args: argparse.Namespace) -> list[str]:
    """The ansible-playbook options dsrlb deploy passes through, as a list of arguments."""
    out = [flag for flag, on in (("--check", args.check), ("--diff", args.diff)) if on]
    out += extra_var_args(args.extra_vars)
    for option, values in (("--tags", args.tags), ("--skip-tags", args.skip_tags)):
        out += [option, ",".join(values)] if values else []
    if args.user:
        out += ["--user", args.user]
    if args.private_key:
        out += ["--private-key", _existing(args.private_key, f"--private-key {args.private_key}")]
    if args.forks:
        out += ["--forks", str(args.forks)]
    out += [
        flag for flag, on in (("--become", args.become), ("--ask-become-pass", args.ask_become_pass)) if on
    ]
    for path in args.vault_password_file:
        out += ["--vault-password-file", _existing(path, f"--vault-password-file {path}")]
    if args.ask_vault_pass:
        out.append("--ask-vault-pass")
    return out


# ansible-playbook's prompts for -K and --ask-vault-pass, as ansible-runner's expect patterns.
BECOME_PROMPT = r"^BECOME password.*:\s*?$"
VAULT_PROMPT = r"^Vault password.*:\s*?$"


def ask_passwords(args: argparse.Namespace, ask: Callable[[str], str] | None = None) -> dict[str, str]:
    """-K and --ask-vault-pass: asked here, on this terminal, and answered to ansible-playbook's prompts
    by ansible-runner (which runs it without one); kept in memory only, never in the artifacts."""
    ask = ask or getpass.getpass
    passwords = {}
    if args.ask_become_pass:
        passwords[BECOME_PROMPT] = ask("BECOME password: ")
    if args.ask_vault_pass:
        passwords[VAULT_PROMPT] = ask("Vault password: ")
    return passwords


def artifacts_dir(explicit: str | None, project: Path, playbook: str) -> Path:
    """A fresh directory per run; the default tree ignores itself so it never shows up in git."""
    if explicit is not None:
        path = Path(explicit).resolve()
        if path.is_dir() and any(path.iterdir()):
            raise DeployError(f"--artifacts {explicit}: not empty")
    try:
        if explicit is None:
            root = project / ".dsrlb"
            root.mkdir(exist_ok=True)
            (root / ".gitignore").write_text("*\n")
            path = root / "deploy" / f"{time.strftime('%Y%m%d-%H%M%S')}-{playbook}"
            path = path.with_name(f"{path.name}-{os.getpid()}") if path.exists() else path
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DeployError(f"artifacts: {err} (choose a directory with --artifacts)") from None
    return path


class Progress:
    """ansible-runner's event handler: one bar line per play redrawn in place on a terminal, or one line
    per finished task otherwise (logs, CI); failures are printed when they happen, not at the end."""

    def __init__(self, out: TextIO, live: bool, show_diff: bool = False) -> None:
        self.out, self.live, self.show_diff = out, live, show_diff
        self.lock = threading.Lock()
        self.play = ""
        self.task = ""
        self.hosts: set[str] = set()  # hosts the current play has started tasks on
        self.done: set[str] = set()  # hosts with a result for the current task
        self.changed: set[str] = set()
        self.failures: list[str] = []
        self.stats: dict[str, Any] | None = None
        self.on_screen = False  # a live line is drawn and has no newline yet

    def __call__(self, event: dict[str, Any]) -> bool:
        with self.lock:
            self.handle(event)
        return True  # ansible-runner keeps the event in the artifacts

    def handle(self, event: dict[str, Any]) -> None:
        kind, data = event.get("event", ""), event.get("event_data") or {}
        host = data.get("host", "")
        if kind == "playbook_on_play_start":
            self.end_task()
            self.play, self.hosts = data.get("name") or data.get("play") or "", set()
            self.print(f"PLAY {self.play}")
        elif kind in ("playbook_on_task_start", "playbook_on_handler_task_start"):
            self.end_task()
            name = data.get("task") or data.get("name") or data.get("task_action", "")
            self.task = f"{data['role']} : {name}" if data.get("role") else name
            self.draw()
        elif kind == "runner_on_start":
            self.hosts.add(host)
            self.draw()
        elif kind in RESULTS:
            self.result(kind, host, data)
        elif kind == "runner_on_file_diff" and self.show_diff:
            self.print((event.get("stdout") or "").replace("\r\n", "\n").rstrip())
        elif kind == "playbook_on_no_hosts_matched":
            self.print("  no hosts matched")
        elif kind == "playbook_on_stats":
            self.end_task()
            self.stats = data
        elif kind in ("verbose", "error"):
            # ansible's own messages outside any task: a bad limit, a syntax error, a missing file.
            for line in (event.get("stdout") or "").splitlines():
                if re.match(r"\s*(ERROR!|\[ERROR\])", line):
                    self.print(line.strip())

    def result(self, kind: str, host: str, data: dict[str, Any]) -> None:
        self.hosts.add(host)
        self.done.add(host)
        res = data.get("res") or {}
        if res.get("changed"):
            self.changed.add(host)
        failed = kind == "runner_on_failed" and not data.get("ignore_errors")
        if failed or kind == "runner_on_unreachable":
            what = "UNREACHABLE" if kind == "runner_on_unreachable" else "FAILED"
            message = f"{what} {host}: {self.task}: {failure_message(res)}"
            self.failures.append(message)
            self.print(message)
        self.draw()

    def line(self) -> str:
        total = len(self.hosts)
        filled = BAR * len(self.done) // total if total else 0
        changed = f"  changed: {','.join(sorted(self.changed))}" if self.changed else ""
        return f"  [{'#' * filled}{'.' * (BAR - filled)}] {len(self.done)}/{total}  {self.task}{changed}"

    def draw(self) -> None:
        if self.live and self.task:
            width = shutil.get_terminal_size().columns - 1
            self.out.write(f"\r\x1b[K{self.line()[:width]}")
            self.out.flush()
            self.on_screen = True

    def end_task(self) -> None:
        if self.task:
            if self.live:
                self.clear()
            else:
                self.print(self.line())
        self.task, self.done, self.changed = "", set(), set()

    def clear(self) -> None:
        if self.on_screen:
            self.out.write("\r\x1b[K")
            self.on_screen = False

    def print(self, text: str) -> None:
        self.clear()
        print(text, file=self.out, flush=True)
        self.draw()

    def finish(self) -> None:
        with self.lock:
            self.end_task()


def failure_message(res: dict[str, Any]) -> str:
    """The first line that says why, the way ansible's own output would."""
    for key in ("msg", "stderr", "stdout", "reason"):
        text = str(res.get(key) or "").strip()
        if text:
            first = text.splitlines()[0]
            return first if len(first) <= 300 else first[:297] + "..."
    return "(no message)"


def summary_table(stats: dict[str, Any]) -> str:
    """The play recap, one row per host of the run, with the columns in COLUMNS."""
    hosts: set[str] = set()
    for key in ("processed", *(key for _, key in COLUMNS)):
        hosts.update(stats.get(key) or {})
    width = max([len("host"), *map(len, hosts)])
    rows = [f"{'host':<{width}}" + "".join(f" {heading:>11}" for heading, _ in COLUMNS)]
    for host in sorted(hosts):
        counts = "".join(f" {(stats.get(key) or {}).get(host, 0):>11}" for _, key in COLUMNS)
        rows.append(f"{host:<{width}}{counts}")
    return "\n".join(rows)


def _ansible_runner() -> Any:
    try:
        import ansible_runner
    except ImportError:
        raise DeployError("ansible-runner is not installed: pip install './tools[deploy]'") from None
    return ansible_runner


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """One playbook run; returns ansible-playbook's exit status."""
    runner_lib = _ansible_runner()
    project = find_project(args.project_dir)
    playbook = PLAYBOOKS[args.playbook]
    if not (project / playbook).is_file():
        raise DeployError(f"{project / playbook}: no such playbook")
    inventory = resolve_inventory(args.inventory)
    cmdline = ansible_args(args)
    artifacts = artifacts_dir(args.artifacts, project, args.playbook)
    passwords = ask_passwords(args)
    progress = Progress(out, live=out.isatty(), show_diff=args.diff)
    cancel = threading.Event()
    limit = f" --limit {args.limit}" if args.limit else ""
    print(
        f"dsrlb deploy: {playbook} on {args.inventory}{limit}; artifacts in {artifacts}", file=out, flush=True
    )
    try:
        thread, runner = runner_lib.run_async(
            private_data_dir=str(artifacts),
            artifact_dir=str(artifacts.parent),
            ident=artifacts.name,
            project_dir=str(project),
            playbook=playbook,
            inventory=inventory,
            limit=args.limit,
            cmdline=shlex.join(cmdline) or None,
            passwords=passwords or None,
            # The Ansible CLIs next to this Python, whatever PATH says; no colours in the captured text.
            envvars={
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "ANSIBLE_NOCOLOR": "1",
            },
            event_handler=progress,
            cancel_callback=cancel.is_set,
            quiet=True,
        )
    except runner_lib.exceptions.AnsibleRunnerException as err:
        raise DeployError(f"ansible-runner: {err}") from None
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        cancel.set()
        thread.join()
        progress.finish()
        print(f"dsrlb deploy: interrupted; artifacts in {artifacts}", file=out)
        return 130
    progress.finish()
    if progress.stats is not None:
        print(f"\n{summary_table(progress.stats)}", file=out)
    rc = runner.rc if isinstance(runner.rc, int) else 1
    status = f"failed ({len(progress.failures)} failures)" if progress.failures else runner.status
    print(f"\ndsrlb deploy: {playbook} {status}, rc={rc}; artifacts in {artifacts}", file=out, flush=True)
    return rc


def main(argv: list[str]) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except DeployError as err:
        print(f"dsrlb deploy: {err}", file=sys.stderr)
        return BAD_INPUT
