"""How `dsrlb deploy` options reach ansible-runner and ansible-playbook: passed through as ansible-playbook
takes them (-e @file, --tags, -b/-K, -u, --private-key, --forks, vault), files made absolute, passwords
asked here and answered to the prompts. No ansible run: ansible-runner is replaced by a recorder."""

from __future__ import annotations

import argparse
import io
import re
import shlex
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from deployrun import REPO, deploy

from dsrlb_tools import deploy as dep


def parse(*argv: str) -> argparse.Namespace:
    return dep.build_parser().parse_args(["site", "-i", "inventory/lab", *argv])


def test_defaults_pass_nothing() -> None:
    args = parse()
    assert dep.ansible_args(args) == []
    assert dep.ask_passwords(args, ask=pytest.fail) == {}


def test_every_option_maps_to_ansible_playbook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("vars.yml", "more.json", "id_ed25519", "vault.txt", "vault2.txt"):
        (tmp_path / name).write_text("x\n")
    args = parse(
        "-C",
        "-D",
        "-e",
        "@vars.yml",
        "-e",
        "batch=2",
        "--extra-vars",
        '{"dsrlb_vrid": 7}',
        "-e",
        f"@{tmp_path / 'more.json'}",
        "-t",
        "config",
        "--tags",
        "install,service",
        "--skip-tags",
        "verify",
        "-b",
        "-K",
        "-u",
        "admin",
        "--private-key",
        "id_ed25519",
        "-f",
        "10",
        "--vault-password-file",
        "vault.txt",
        "--vault-password-file",
        "vault2.txt",
        "-J",
    )
    assert dep.ansible_args(args) == [
        "--check",
        "--diff",
        "-e",
        f"@{tmp_path / 'vars.yml'}",
        "-e",
        '{"batch": "2"}',
        "-e",
        '{"dsrlb_vrid": 7}',
        "-e",
        f"@{tmp_path / 'more.json'}",
        "--tags",
        "config,install,service",
        "--skip-tags",
        "verify",
        "--user",
        "admin",
        "--private-key",
        str(tmp_path / "id_ed25519"),
        "--forks",
        "10",
        "--become",
        "--ask-become-pass",
        "--vault-password-file",
        str(tmp_path / "vault.txt"),
        "--vault-password-file",
        str(tmp_path / "vault2.txt"),
        "--ask-vault-pass",
    ]
    asked: list[str] = []
    passwords = dep.ask_passwords(args, ask=lambda prompt: asked.append(prompt) or f"pw{len(asked)}")
    assert asked == ["BECOME password: ", "Vault password: "]
    assert passwords == {dep.BECOME_PROMPT: "pw1", dep.VAULT_PROMPT: "pw2"}
    assert re.search(dep.BECOME_PROMPT, "BECOME password: ", re.M)
    assert re.search(dep.VAULT_PROMPT, "Vault password: ", re.M)


class Recorder:
    """ansible_runner as dep.run uses it: run_async records its keyword arguments and returns at once."""

    exceptions = SimpleNamespace(AnsibleRunnerException=RuntimeError)

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def run_async(self, **kwargs: Any) -> tuple[threading.Thread, Any]:
        self.kwargs = kwargs
        thread = threading.Thread(target=lambda: None)
        thread.start()
        return thread, SimpleNamespace(rc=0, status="successful")


def test_run_hands_the_options_to_ansible_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(dep, "_ansible_runner", lambda: recorder)
    monkeypatch.setattr(dep.getpass, "getpass", lambda prompt: "s3cret with space")
    vars_file = tmp_path / "my vars.yml"
    vars_file.write_text("a: 1\n")
    argv = [
        "-e",
        f"@{vars_file}",
        "-e",
        "x=a 'b' c",
        "--tags",
        "config",
        "-b",
        "-K",
        "-u",
        "deploy",
        "--forks",
        "3",
    ]
    args = dep.build_parser().parse_args(
        [
            "site",
            "-i",
            str(REPO / "inventory/lab"),
            "--project-dir",
            str(REPO),
            "--artifacts",
            str(tmp_path / "a"),
        ]
        + argv
    )
    out = io.StringIO()
    assert dep.run(args, out=out) == 0
    kw = recorder.kwargs
    assert kw["playbook"] == "site.yml" and "extravars" not in kw
    assert shlex.split(kw["cmdline"]) == [
        "-e",
        f"@{vars_file}",
        "-e",
        '{"x": "a \'b\' c"}',
        "--tags",
        "config",
        "--user",
        "deploy",
        "--forks",
        "3",
        "--become",
        "--ask-become-pass",
    ]
    assert kw["passwords"] == {dep.BECOME_PROMPT: "s3cret with space"}
    assert "s3cret" not in out.getvalue()
    assert not any(
        "s3cret" in p.read_text(errors="replace") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-e", "@missing.yml"], "-e @missing.yml: no such file"),
        (["-e", "batch"], "-e batch: expected KEY=VALUE"),
        (["--private-key", "nope"], "--private-key nope: no such file"),
        (["--vault-password-file", "nope"], "--vault-password-file nope: no such file"),
        (["--forks", "0"], "argument -f/--forks: invalid value '0': expected 1..1000"),
        (["-f", "many"], "argument -f/--forks: invalid value 'many'"),
    ],
)
def test_bad_pass_through_input_is_one_line(argv: list[str], message: str) -> None:
    proc = deploy(None, "site", "-i", "inventory/lab", *argv)
    assert proc.returncode == dep.BAD_INPUT
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"dsrlb deploy: {message}"), proc.stderr


def test_help_lists_the_pass_through_options() -> None:
    text = dep.build_parser().format_help()
    for option in (
        "--tags",
        "--skip-tags",
        "--become",
        "--ask-become-pass",
        "--user",
        "--private-key",
        "--forks",
        "--vault-password-file",
        "--ask-vault-pass",
        "KEY=VALUE|@FILE|JSON",
    ):
        assert option in text
