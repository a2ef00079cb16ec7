"""Grid encoders: grid <-> text, reproducing the original system's formats byte for byte.

Encoders compose by wrapping and are built from the same string form the original used, e.g.
`create_grid_encoder("GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))")`, but parsed
with `ast` and a registry of known names: nothing is ever evaluated.

`to_grid(text)` returns a rectangular grid of ints 0-9 or raises GridParseError saying what is
wrong.  With `strict=True` it also checks what the text declares against the body: the
`shape: HxW` header and the 1-based row numbers (the original ignored both).
"""
from __future__ import annotations

import ast
import re

DEFAULT_ENCODER = "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))"
REPLACEMENT_SYMBOLS = ["ñ", "ò", "÷", "û", "ą", "ć", "ď", "ę", "Ě", "Ğ"]


class GridParseError(ValueError):
    """A text that does not decode to a grid."""


def _check_rectangular(grid: list[list[int]]) -> list[list[int]]:
    if not grid or not grid[0]:
        raise GridParseError("empty grid")
    width = len(grid[0])
    for r, row in enumerate(grid):
        if len(row) != width:
            raise GridParseError(f"row {r + 1} has {len(row)} cells but row 1 has {width}")
    return grid


def _digits(line: str, line_no: int) -> list[int]:
    if not line.isascii() or not line.isdigit():
        raise GridParseError(f"line {line_no}: {line[:40]!r} is not a row of digits")
    return [int(c) for c in line]


class GridEncoder:
    spec: str

    def to_text(self, grid) -> str:
        raise NotImplementedError

    def to_grid(self, text: str, strict: bool = False) -> list[list[int]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.spec


class MinimalGridEncoder(GridEncoder):
    """`012\\n345`: one digit per cell, one line per row."""

    def __init__(self):
        self.spec = "MinimalGridEncoder()"

    def to_text(self, grid) -> str:
        return "\n".join("".join(str(int(x)) for x in row) for row in grid)

    def to_grid(self, text, strict=False):
        lines = text.strip().split("\n")
        return _check_rectangular([_digits(line, i + 1) for i, line in enumerate(lines)])


class GridWithSeparationEncoder(GridEncoder):
    """`0|1|2`: cells joined by a separator."""

    def __init__(self, split_symbol: str):
        self.split_symbol = split_symbol
        self.spec = f"GridWithSeparationEncoder({split_symbol!r})"

    def to_text(self, grid) -> str:
        return "\n".join(self.split_symbol.join(str(int(x)) for x in row) for row in grid)

    def to_grid(self, text, strict=False):
        rows = []
        for i, line in enumerate(text.strip().split("\n")):
            cells = line.split(self.split_symbol)
            if not all(c.isascii() and c.isdigit() and len(c) == 1 for c in cells):
                raise GridParseError(f"line {i + 1}: {line[:40]!r} is not digits separated by {self.split_symbol!r}")
            rows.append([int(c) for c in cells])
        return _check_rectangular(rows)


class RepeatNumberEncoder(GridEncoder):
    """`000111`: each cell written n times (one token per cell for Llama-3 tokenizers)."""

    def __init__(self, n: int = 3):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"RepeatNumberEncoder needs a positive int, got {n!r}")
        self.n = n
        self.spec = f"RepeatNumberEncoder({n})"

    def to_text(self, grid) -> str:
        return "\n".join("".join(str(int(x)) * self.n for x in row) for row in grid)

    def to_grid(self, text, strict=False):
        rows = []
        for i, line in enumerate(text.strip().split("\n")):
            digits = _digits(line, i + 1)
            if strict and (len(digits) % self.n or any(
                    len(set(digits[j:j + self.n])) != 1 for j in range(0, len(digits), self.n))):
                raise GridParseError(f"line {i + 1}: {line[:40]!r} is not each digit repeated {self.n} times")
            rows.append(digits[::self.n])
        return _check_rectangular(rows)


class ReplaceNumberEncoder(GridEncoder):
    """Replaces the digits of the wrapped encoder's text with single-token symbols."""

    def __init__(self, base: GridEncoder):
        self.base = base
        self.spec = f"ReplaceNumberEncoder({base.spec})"
        self._encode = str.maketrans({str(i): s for i, s in enumerate(REPLACEMENT_SYMBOLS)})
        self._decode = str.maketrans({s: str(i) for i, s in enumerate(REPLACEMENT_SYMBOLS)})

    def to_text(self, grid) -> str:
        return self.base.to_text(grid).translate(self._encode)

    def to_grid(self, text, strict=False):
        return self.base.to_grid(text.translate(self._decode), strict)


class RowNumberEncoder(GridEncoder):
    """`1 012\\n2 345`: 1-based row number and a space before each row."""

    def __init__(self, base: GridEncoder):
        self.base = base
        self.spec = f"RowNumberEncoder({base.spec})"

    def to_text(self, grid) -> str:
        lines = self.base.to_text(grid).split("\n")
        return "\n".join(f"{i + 1} {line}" for i, line in enumerate(lines)).strip()

    def to_grid(self, text, strict=False):
        rows = []
        for i, line in enumerate(text.strip().split("\n")):
            number, sep, row = line.partition(" ")
            if not sep:
                raise GridParseError(f"line {i + 1}: {line[:40]!r} has no row number")
            if strict and number != str(i + 1):
                raise GridParseError(f"line {i + 1}: row number {number!r}, expected {i + 1}")
            rows.append(row)
        return self.base.to_grid("\n".join(rows), strict)


class GridCodeBlockEncoder(GridEncoder):
    """```` ```grid\\n...\\n``` ````: a fenced block."""

    def __init__(self, base: GridEncoder):
        self.base = base
        self.spec = f"GridCodeBlockEncoder({base.spec})"

    def to_text(self, grid) -> str:
        return "```grid\n" + self.base.to_text(grid) + "\n```"

    def to_grid(self, text, strict=False):
        if "```grid\n" not in text:
            raise GridParseError("no ```grid block")
        body = text.split("```grid\n", 1)[1]
        if "\n```" not in body and strict:
            raise GridParseError("the ```grid block is not closed")
        return self.base.to_grid(body.split("\n```", 1)[0], strict)


_SHAPE_RE = re.compile(r"^```grid shape: (\d+)x(\d+)\s*$")


class GridShapeEncoder(GridEncoder):
    """```` ```grid shape: HxW\\n...\\n``` ````: a fenced block with the grid's shape."""

    def __init__(self, base: GridEncoder):
        self.base = base
        self.spec = f"GridShapeEncoder({base.spec})"

    def to_text(self, grid) -> str:
        return f"```grid shape: {len(grid)}x{len(grid[0])}\n" + self.base.to_text(grid) + "\n```"

    def to_grid(self, text, strict=False):
        lines = text.split("\n")
        start = next((i for i, line in enumerate(lines) if line.startswith("```grid shape:")), None)
        if start is None:
            raise GridParseError("no ```grid shape: header")
        body = []
        for line in lines[start + 1:]:
            if line.startswith("```"):
                break
            body.append(line)
        else:
            if strict:
                raise GridParseError("the ```grid block is not closed")
        grid = self.base.to_grid("\n".join(body), strict)
        if strict:
            match = _SHAPE_RE.match(lines[start])
            if not match:
                raise GridParseError(f"malformed shape header {lines[start][:40]!r}")
            declared = (int(match[1]), int(match[2]))
            if declared != (len(grid), len(grid[0])):
                raise GridParseError(f"header says {declared[0]}x{declared[1]} but the body is "
                                     f"{len(grid)}x{len(grid[0])}")
        return grid


ENCODERS = {cls.__name__: cls for cls in (
    MinimalGridEncoder, GridWithSeparationEncoder, RepeatNumberEncoder, ReplaceNumberEncoder,
    RowNumberEncoder, GridCodeBlockEncoder, GridShapeEncoder)}


def _build(node: ast.AST, spec: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, str)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder {name!r} in {spec!r}; known: {', '.join(ENCODERS)}")
        args = [_build(a, spec) for a in node.args]
        kwargs = {k.arg: _build(k.value, spec) for k in node.keywords}
        try:
            return ENCODERS[name](*args, **kwargs)
        except TypeError as e:
            raise ValueError(f"bad arguments for {name} in {spec!r}: {e}") from None
    raise ValueError(f"unsupported expression {ast.unparse(node)!r} in encoder spec {spec!r}")


def create_grid_encoder(spec: str) -> GridEncoder:
    """Build an encoder from its string form, e.g. `"GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))"`."""
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse encoder spec {spec!r}: {e.msg}") from None
    encoder = _build(tree.body, spec)
    if not isinstance(encoder, GridEncoder):
        raise ValueError(f"{spec!r} is not an encoder")
    return encoder
