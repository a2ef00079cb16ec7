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


def test_every_command_lives_in_a_module_named_after_it():
    """`python -m pipeline --help` lists the commands; each one's code is pipeline/<family>/<command>.py
    (dashes as underscores), and that module defines the function the dispatcher calls."""
    from pipeline.__main__ import STAGES

    for command, (target, _) in STAGES.items():
        module, function = target.split(":")
        path = REPO / Path(*module.split(".")).with_suffix(".py")
        assert path.stem == command.replace("-", "_"), f"{command}: its code is in {path.relative_to(REPO)}"
        assert len(path.relative_to(REPO / "pipeline").parts) == 2, f"{command}: {path} is not in a family folder"
        defined = {n.name for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.FunctionDef)}
        assert function in defined, f"{command}: {module} defines no {function}()"
