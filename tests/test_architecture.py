"""Data flows one way: exporter → store → trainer → registry → bot, with the command line and
the demo (`mimic/`) above them all. No package imports one downstream of it, so each can be
run, tested and replaced on its own; and every import names the installed `mimic.` namespace,
never a generic top-level `bot` or `trainer` that an installed copy does not have."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each folder, the `mimic.` name it is installed under, and what it must never import.
LAYERS = {
    "core": {"mimic.exporter", "mimic.trainer", "mimic.bot", "mimic.cli", "mimic.demo"},
    "exporter": {"mimic.trainer", "mimic.bot", "mimic.cli", "mimic.demo"},
    "trainer": {"mimic.exporter", "mimic.bot", "mimic.cli", "mimic.demo"},
    "bot": {"mimic.cli", "mimic.demo"},
}
UNINSTALLED = {"core", "exporter", "trainer", "bot"}  # only `mimic.<name>` exists installed


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_package_reaches_back_up_the_stream(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / package).rglob("*.py")
        for module in imported_modules(path)
        if any(_under(module, bad) for bad in LAYERS[package])
    }
    assert not offenders


def test_every_import_names_the_installed_namespace() -> None:
    sources = [p for folder in ("mimic", "alembic", "bench", "tests", *LAYERS)
               for p in (ROOT / folder).rglob("*.py")]
    offenders = {
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources
        for module in imported_modules(path)
        if module.split(".")[0] in UNINSTALLED
    }
    assert sources and not offenders
