"""The notebook's modules are the repository's code, line for line, without their documentation
(notebook_builder/strip.py): what is blanked, what stays, and the build-time check that refuses a
stripped module whose code moved or changed."""
from __future__ import annotations

import traceback
from pathlib import Path

import pytest

import notebook_builder.build as build
from notebook_builder.build import build_notebook, notebook_processes, notebook_sources, notebook_text, resolve_config
from notebook_builder.strip import code_changes, code_only

REPO = Path(__file__).resolve().parents[2]

SOURCE = '''"""The module's docstring stays."""
import math  # a trailing comment goes


def area(r):
    """Several lines
    of docstring go.
    """
    # a whole-line comment goes
    return math.pi * r * r  # so does this one


def short(x):
    """One line stays."""
    return x + 1


def only_doc():
    """The body's only statement stays,
    or the body would be empty."""


class Grid:
    """A class docstring
    goes too."""

    HASH = "#not a comment"  # but this is

    def fail(self):
        """Raises on the line below."""
        values = [1,  # inside brackets
                  2]
        raise ValueError(values)


def shared():
    """Shares its line"""; return 3
'''


def run(text: str) -> dict:
    namespace = {}
    exec(compile(text, "m.py", "exec"), namespace)
    return namespace


def test_code_only_blanks_comments_and_multi_line_docstrings_and_keeps_every_line():
    stripped = code_only(SOURCE)
    assert stripped.count("\n") == SOURCE.count("\n")
    assert '"""The module\'s docstring stays."""' in stripped
    assert '"""One line stays."""' in stripped and '"""Shares its line"""; return 3' in stripped
    assert "The body's only statement stays" in stripped
    for gone in ("Several lines", "of docstring go", "whole-line comment", "trailing comment", "A class docstring",
                 "so does this one", "but this is", "inside brackets"):
        assert gone not in stripped
    assert '    HASH = "#not a comment"\n' in stripped and "    values = [1,\n" in stripped
    assert code_changes(SOURCE, stripped) is None


def test_the_stripped_module_behaves_the_same_and_its_tracebacks_name_the_same_lines():
    original, stripped = run(SOURCE), run(code_only(SOURCE))
    assert stripped["area"](2) == original["area"](2) and stripped["short"](1) == 2 and stripped["shared"]() == 3
    assert stripped["Grid"].HASH == "#not a comment" and stripped["area"].__doc__ is None
    lines = []
    for namespace in (original, stripped):
        with pytest.raises(ValueError) as info:
            namespace["Grid"]().fail()
        lines.append(traceback.extract_tb(info.value.__traceback__)[-1].lineno)
    assert lines[0] == lines[1] == SOURCE.splitlines().index("        raise ValueError(values)") + 1


def test_code_changes_names_a_moved_line_a_changed_statement_and_a_dropped_one():
    stripped = code_only(SOURCE)
    assert "lines became" in code_changes(SOURCE, stripped.replace("\n\n\n", "\n\n", 1))
    assert "syntax tree differs" in code_changes(SOURCE, stripped.replace("x + 1", "x + 2"))
    assert "syntax tree differs" in code_changes(SOURCE, stripped.replace("        raise ValueError(values)", ""))
    assert "syntax tree differs" in code_changes(SOURCE, stripped.replace('"""One line stays."""', ""))
    assert "not Python" in code_changes(SOURCE, stripped.replace("def short(x):", "def short(x)"))


def test_every_module_of_the_package_strips_to_its_own_code():
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert code_changes(text, code_only(text)) is None, path


def test_the_build_refuses_a_stripped_module_whose_code_changed(monkeypatch):
    config, header, name = resolve_config(REPO / "kaggle" / "configs" / "arc-prize-2026-arc-agi-2.yaml")
    monkeypatch.setattr(build, "code_only", lambda text: code_only(text).replace("\n\n\n", "\n\n", 1))
    with pytest.raises(ValueError, match=r"^pipeline/\S+\.py: stripping its documentation changed its code: "):
        build_notebook(config, header, name)


def test_docs_embeds_the_files_whole_and_the_default_says_what_it_left_out():
    config, header, name = resolve_config(REPO / "kaggle" / "configs" / "arc-prize-2026-arc-agi-2.yaml")
    whole = notebook_sources(notebook_processes(config), REPO, docs=True)
    stripped = notebook_sources(notebook_processes(config), REPO)
    assert sorted(whole) == sorted(stripped)
    assert all(whole[p] == (REPO / p).read_text(encoding="utf-8") for p in whole)
    assert all(stripped[p].count("\n") == whole[p].count("\n") for p in whole)
    assert sum(map(len, stripped.values())) < 0.85 * sum(map(len, whole.values()))
    assert "`python -m notebook_builder build --docs` keeps them" in notebook_text(build_notebook(config, header, name))
    assert "--docs` keeps them" not in notebook_text(build_notebook(config, header, name, docs=True))
