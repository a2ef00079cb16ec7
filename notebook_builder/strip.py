"""The code of a module without its documentation, line for line: what a notebook embeds.

A notebook carries the package's code; the repository carries its documentation.  `code_only`
blanks the multi-line docstrings of functions and classes and every comment, and keeps every line
where it was, so a traceback from a Kaggle run (`src/pipeline/x.py`, line N) points at line N of
the same file in the repository.  Kept: the module's docstring (each file's map at the top of its
cell, and `__doc__` feeds some commands' `--help`), one-line docstrings (a function's summary for
the price of a line), and a docstring that is its body's only statement (the body would be empty
without it).  The 2026 notebook: 478,799 bytes stripped, 584,696 whole (kaggle/README.md).

`code_changes` is the check the builder runs on every module it embeds: the syntax tree of the
stripped text, positions included, must be the original's less the blanked docstrings.  A
stripper that moved a line or dropped a statement fails the build in one line naming the module.
"""
from __future__ import annotations

import ast
import io
import tokenize

DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def blanked_docstrings(tree: ast.AST) -> list[ast.Expr]:
    """The docstrings `code_only` blanks: those of functions and classes that span several lines and
    whose body has another statement."""
    return [node.body[0] for node in ast.walk(tree)
            if isinstance(node, DEFINITIONS) and len(node.body) > 1 and _is_docstring(node.body[0])
            and node.body[0].end_lineno > node.body[0].lineno]


def _owns_its_lines(node: ast.Expr, lines: list[str]) -> bool:
    """Whether nothing but indentation precedes the docstring on its first line and nothing but a
    comment follows it on its last (a docstring followed by `; x = 1` is kept).  Offsets are UTF-8 bytes."""
    before = lines[node.lineno - 1].encode("utf-8")[:node.col_offset]
    after = lines[node.end_lineno - 1].encode("utf-8")[node.end_col_offset:].strip()
    return not before.strip() and (not after or after.startswith(b"#"))


def code_only(source: str) -> str:
    """`source` with its multi-line function and class docstrings and its comments blanked, every line kept
    (a blanked line is empty; a line's trailing comment is cut with the spaces before it)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    blank = set()
    for node in blanked_docstrings(tree):
        if _owns_its_lines(node, lines):
            blank.update(range(node.lineno - 1, node.end_lineno))
    cut = {}  # line index -> the column (characters) its comment starts at
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            cut[token.start[0] - 1] = token.start[1]
    out = []
    for i, line in enumerate(lines):
        ending = line[len(line.rstrip("\r\n")):]
        if i in blank:
            line = ending
        elif i in cut:
            line = line[:cut[i]].rstrip() + ending
        out.append(line)
    return "".join(out)


def _without_blanked_docstrings(tree: ast.AST, blanked: set[tuple[int, int]]) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, DEFINITIONS) and node.body and (node.body[0].lineno, node.body[0].col_offset) in blanked:
            node.body = node.body[1:]
    return tree


def code_changes(original: str, stripped: str) -> str | None:
    """None when `stripped` is `original`'s code at the same positions, less the docstrings that
    `blanked_docstrings` names and only those; else what differs, in one line."""
    if original.count("\n") != stripped.count("\n"):
        return f"{original.count(chr(10))} lines became {stripped.count(chr(10))}"
    try:
        after = ast.parse(stripped)
    except SyntaxError as e:
        return f"not Python any more (line {e.lineno}: {e.msg})"
    before = ast.parse(original)
    kept = {(d.lineno, d.col_offset) for d in blanked_docstrings(after)}
    blanked = {(d.lineno, d.col_offset) for d in blanked_docstrings(before)} - kept
    expected = ast.dump(_without_blanked_docstrings(before, blanked), include_attributes=True)
    if ast.dump(after, include_attributes=True) != expected:
        return "its syntax tree differs from the original's less its docstrings"
    return None
