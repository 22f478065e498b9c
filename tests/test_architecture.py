"""Data flows one way: exporter → store → trainer → registry → bot. No package imports one
downstream of it, so each can be run, tested and replaced on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each package must never import.
FORBIDDEN = {
    "exporter": {"trainer", "bot"},
    "trainer": {"bot", "exporter"},
    "mimic": {"bot", "exporter", "trainer"},
}


def imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_reaches_back_up_the_stream(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {bad}"
        for path in (ROOT / package).rglob("*.py")
        if path.name != "cli.py"  # the command line wires every stage together
        for bad in imported_packages(path) & FORBIDDEN[package]
    }
    assert not offenders
