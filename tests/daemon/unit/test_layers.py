"""The import rules of docs/architecture.md, checked on the source: a layer that reaches up fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src" / "dsrlb"

# module (dotted, relative to dsrlb) or package prefix -> what it may import from dsrlb
ALLOWED = {
    "vocabulary": set(),
    "config": {"config", "vocabulary"},
    "dataplane": {"dataplane"},
    "jhash": set(),
    "maglev": set(),
    "selection": {"jhash", "maglev", "vocabulary"},
    "tables": {"config", "dataplane", "maglev", "selection", "vocabulary"},
    "views": {"config", "dataplane"},
    "control": {"views", "vocabulary"},
    "metrics": {"views"},
    "release": {"__version__"},  # the package's version string, for `dsrlb --version` and show stats
}


def dsrlb_imports(path: Path) -> set[str]:
    """The dsrlb modules a file imports, as top-level names under dsrlb (`config`, `views`, ...)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "dsrlb" else [f"dsrlb.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n.split(".")[1] for n in names if n.startswith("dsrlb."))
    return found


def layer_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_layers(path: Path) -> None:
    layer = layer_of(path)
    imported = dsrlb_imports(path) - {layer}
    if layer in ALLOWED:
        assert imported <= ALLOWED[layer], f"{path.name} may not import {sorted(imported - ALLOWED[layer])}"


def test_the_daemon_never_imports_the_tools() -> None:
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in modules if m.startswith("dsrlb_tools")], path
