"""The package's shape: no import circle (every import form counts), and no module over ~600
lines without its docstring saying why."""
from __future__ import annotations

import ast

from pathlib import Path

from notebook_builder.imports import find_cycle, import_graph

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph(REPO)) is None


def test_long_modules_say_why():
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            assert f"over {MAX_LINES} lines" in " ".join(doc.lower().split()), f"{path.name}: {text.count(chr(10))} lines"
