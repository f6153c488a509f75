"""The repository as an AWX project: the execution environment's build context, the external collections
of collections/requirements.yml installed through the Galaxy API, and playbooks/awx_setup.yml checked
against the awx.awx that this install brought."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from local_galaxy import Galaxy, serve

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REQUIREMENTS = REPO / "collections" / "requirements.yml"


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300
    )


def test_requirements_name_every_external_collection_of_the_playbooks() -> None:
    """Every FQCN a playbook uses is ansible.builtin, this repository's dsrlb.fleet, or listed."""
    listed = {c["name"] for c in yaml.safe_load(REQUIREMENTS.read_text())["collections"]}
    used = set()
    for path in [REPO / "site.yml", *(REPO / "playbooks").rglob("*.yml"), *(REPO / "roles").rglob("*.yml")]:
        used |= _collections_of(yaml.safe_load(path.read_text()))
    assert used - {"ansible.builtin", "dsrlb.fleet"} == listed


def _collections_of(node: object) -> set[str]:
    """namespace.name of every `a.b.c:` key (a module, or an action group in module_defaults)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            parts = str(key).removeprefix("group/").split(".")
            if len(parts) == 3 and all(p.isidentifier() for p in parts):
                found.add(".".join(parts[:2]))
            found |= _collections_of(value)
    elif isinstance(node, list):
        for item in node:
            found |= _collections_of(item)
    return found


def test_execution_environment_build_context(tmp_path: Path) -> None:
    """`ansible-builder create` on the repository's definition, with a freshly built dsrlb wheel."""
    definition = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert definition["version"] == 3
    project = tmp_path / "project"
    for rel in (definition["dependencies"]["system"], definition["dependencies"]["galaxy"]):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, project / rel)
    shutil.copy(REPO / "execution-environment.yml", project)
    wheels = project / Path(definition["additional_build_files"][0]["src"]).parent
    built = run([str(BIN / "pip"), "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)])
    assert built.returncode == 0, built.stderr
    context = tmp_path / "context"
    created = run(
        [str(BIN / "ansible-builder"), "create", "-c", str(context), "--output-filename", "Containerfile"],
        cwd=project,
    )
    assert created.returncode == 0, created.stdout + created.stderr

    containerfile = (context / "Containerfile").read_text()
    assert "ansible-core>=2.19,<2.20" in containerfile and "ansible-runner>=2.4" in containerfile
    assert "ansible-galaxy collection install" in containerfile
    assert "COPY _build/wheels/ /build/wheels/" in containerfile
    build = context / "_build"
    assert (build / "requirements.yml").read_text() == REQUIREMENTS.read_text()
    assert (build / "bindep.txt").read_text() == (REPO / "bindep.txt").read_text()
    python = (build / "requirements.txt").read_text().split("\n")
    assert {"dsrlb", "pyroute2>=0.9", "--find-links /build/wheels"} <= set(python)
    assert [p.name for p in (build / "wheels").iterdir()] == [p.name for p in wheels.iterdir()]
    assert next((build / "wheels").iterdir()).name.startswith("dsrlb-")


@pytest.fixture(scope="module")
def galaxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Galaxy]:
    """awx.awx as Galaxy would serve it, from the PyPI `ansible` package (scripts/awx-collection)."""
    artifacts = tmp_path_factory.mktemp("galaxy")
    made = run([sys.executable, str(REPO / "scripts" / "awx-collection"), "--artifacts", str(artifacts)])
    assert made.returncode == 0, made.stderr
    with serve(artifacts) as server:
        yield server


@pytest.fixture(scope="module")
def requirements_installed(galaxy: Galaxy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """collections/requirements.yml installed into an empty path, as AWX does when it syncs the project."""
    target = tmp_path_factory.mktemp("collections")
    installed = run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "-r", str(REQUIREMENTS), "-p", str(target)]
        + ["-s", galaxy.url, "--no-cache"],
        # Collections already in the venv (scripts/awx-collection) would count as installed.
        {"ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_COLLECTIONS_PATH": str(target)},
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return target


def test_requirements_install_through_the_galaxy_api(requirements_installed: Path, galaxy: Galaxy) -> None:
    for req in yaml.safe_load(REQUIREMENTS.read_text())["collections"]:
        namespace, name = req["name"].split(".")
        manifest = requirements_installed / "ansible_collections" / namespace / name / "MANIFEST.json"
        assert manifest.is_file(), f"{req['name']} not installed"
    assert galaxy.downloads, "nothing was downloaded from the Galaxy API"


def test_awx_setup_syntax_with_the_installed_requirements(requirements_installed: Path) -> None:
    """Only the collections from requirements.yml and the repository's own are visible to the check."""
    argv = [str(BIN / "ansible-playbook"), "--syntax-check", "playbooks/awx_setup.yml"]
    visible = {"ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false"}
    without = run(argv, {**visible, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "collections")})
    assert without.returncode != 0 and "awx.awx" in without.stdout + without.stderr
    paths = f"{requirements_installed}{os.pathsep}{REPO / 'collections'}"
    checked = run(argv, {**visible, "ANSIBLE_COLLECTIONS_PATH": paths})
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_awx_setup_lint() -> None:
    linted = run(
        [str(BIN / "ansible-lint"), "--offline", "playbooks/awx_setup.yml"],
        {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
