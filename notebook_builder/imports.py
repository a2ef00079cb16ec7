"""The package's import graph, read from the source: every import form counts.

One reader for the two things that depend on it: the notebook embeds the modules the Kaggle run
reaches (`closure` of `import_graph(..., dispatched=False)`, notebook_builder/build.py), and
`tests/test_layout.py` checks the structure (no circle, no arrow from a lower family to a higher
one, no private name taken from another module).  The families are the package's folders
(`families`, `family_of`).

Counted: `import pipeline.a.b`, `from pipeline.a import b` (b a module or a name), relative
imports at any level, imports inside functions, and the `"pipeline.a.b:function"` strings the
command dispatcher (`pipeline/__main__.py`) imports by name. Those last are marked `dispatched`:
the dispatcher imports a command's module only when that command runs, so a copy of the package
without it still works for the other commands (the notebook's embedded subset).

An import in the body of an `if` that tests a stage option against string literals
(`if settings.method == "dfs":`, `if engine in ("vllm", ...):`) or its truth (`if args.scores:`)
is marked `when` (the option's name, the values that take the branch; `TRUTHY` for a truth test):
a process whose stage command gives the option another value never imports it, so the notebook
leaves it out for a config whose commands never take the branch (`closure`'s `options`;
notebook_builder/build.py).  The option is named by the tested name's last part, as the stage's
parser names it; a value of `auto` is decided at run time and takes every branch.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

PACKAGE = "pipeline"
DISPATCH = re.compile(rf"^{PACKAGE}(\.\w+)+:\w+$")  # "pipeline.x.y:main" in __main__'s command table
TRUTHY = ()      # `when` values of a truth test (`if args.scores:`): any value that is not empty
RUN_TIME = "auto"  # an option value chosen when the stage runs (`--engine auto`): every branch may be taken


@dataclass(frozen=True)
class Import:
    """One arrow: `source` imports `target` (a module), taking `name` from it (None: the module itself);
    `dispatched`: named in a command table, imported only when that command runs; `when`: (option,
    values) of the `if` it sits in, imported only when the stage's option takes one of the values."""
    source: str
    target: str
    name: str | None
    line: int
    dispatched: bool = False
    when: tuple[str, tuple[str, ...]] | None = None


def option_test(test: ast.expr) -> tuple[str, tuple[str, ...]] | None:
    """(option, values) of an `if` test on a stage option: `x.opt == "v"`, `opt in ("v", "w")`,
    `x.opt` (TRUTHY); None for any other test."""
    def option(node):
        return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None

    if isinstance(test, (ast.Name, ast.Attribute)):
        return option(test), TRUTHY
    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.In))
            and option(test.left)):
        right = test.comparators[0]
        items = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
        if items and all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in items):
            return option(test.left), tuple(v.value for v in items)
    return None


def _conditions(tree: ast.AST) -> dict[int, tuple[str, tuple[str, ...]]]:
    """{id(node): the innermost option test whose `if` body holds the node}."""
    found = {}

    def visit(node, when):
        found[id(node)] = when
        if isinstance(node, ast.If):
            visit(node.test, when)
            inner = option_test(node.test) or when
            for child in node.body:
                visit(child, inner)
            for child in node.orelse:
                visit(child, when)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, when)

    visit(tree, None)
    return found


def module_name(path: Path, root: Path) -> str:
    """pipeline/a/b.py -> pipeline.a.b; pipeline/a/__init__.py -> pipeline.a (root holds `pipeline/`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path) -> dict[str, Path]:
    """{dotted name: path} of every module of the package under `root`."""
    return {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py")) if "__pycache__" not in p.parts}


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, source: str, modules: set[str]) -> list[Import]:
    """Every arrow out of one module, to modules of the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    conditions = _conditions(tree)
    found = []
    for node in ast.walk(tree):
        when = conditions.get(id(node))
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.append(Import(source, alias.name, None, node.lineno, when=when))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, source, is_package)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:  # `from pipeline.a import b`, b a module
                    found.append(Import(source, f"{base}.{alias.name}", None, node.lineno, when=when))
                elif base in modules:
                    found.append(Import(source, base, alias.name, node.lineno, when=when))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DISPATCH.match(node.value):
            target, name = node.value.split(":")
            if target in modules:
                found.append(Import(source, target, name, node.lineno, dispatched=True))
    return [i for i in found if i.target != source]


def all_imports(root: Path) -> list[Import]:
    modules = package_modules(root)
    names = set(modules)
    return [i for name, path in modules.items() for i in imports_of(path, name, names)]


def import_graph(root: Path, dispatched: bool = True) -> dict[str, set[str]]:
    """{module: the package modules it imports}, every module a key; without the command table's
    arrows when not `dispatched` (what a process needs, rather than what the package holds)."""
    graph = {name: set() for name in package_modules(root)}
    for i in all_imports(root):
        if dispatched or not i.dispatched:
            graph[i.source].add(i.target)
    return graph


def takes(when: tuple[str, tuple[str, ...]] | None, options: Mapping | None) -> bool:
    """Whether a process whose stage options are `options` may import through an arrow marked
    `when`: always for an unconditional arrow, for unknown options (None) or an option they do not
    hold, or a value chosen at run time (RUN_TIME); else when the option's value is one of `when`'s
    (any value that is not empty or False, for a truth test)."""
    if when is None or options is None or when[0] not in options:
        return True
    option, values = when
    value = options[option]
    if value == RUN_TIME:
        return True
    return bool(value) if values == TRUTHY else str(value) in values


def conditional_graph(root: Path) -> dict[str, list[tuple[str, tuple | None]]]:
    """{module: [(imported module, its `when`)]} without the command table's arrows: what a
    process needs, each arrow with the stage option it waits on."""
    graph = {name: [] for name in package_modules(root)}
    for i in all_imports(root):
        if not i.dispatched:
            graph[i.source].append((i.target, i.when))
    return graph


def parents(module: str) -> list[str]:
    """The packages Python imports before a module: pipeline.a.b -> [pipeline, pipeline.a]."""
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def closure(graph: Mapping[str, Sequence], roots, options: Mapping | None = None) -> set[str]:
    """The modules `roots` reach, with the packages that hold them (their `__init__`).  `graph`: an
    `import_graph`, or a `conditional_graph` whose arrows are followed when `takes(when, options)`
    (`options`: the parsed stage options of the process that starts from `roots`)."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in graph:
            raise KeyError(f"{name} is not a module of {PACKAGE}")
        seen.add(name)
        arrows = [a if isinstance(a, tuple) else (a, None) for a in graph[name]]
        todo += [p for p in parents(name) if p in graph] + sorted(t for t, when in arrows if takes(when, options))
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    done, path = set(), []

    def visit(name):
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        path.append(name)
        for dep in sorted(graph.get(name, ())):
            cycle = visit(dep)
            if cycle:
                return cycle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return None


def families(root: Path) -> list[str]:
    """The package's families: its sub-packages (folders with an `__init__.py` under `pipeline/`)."""
    return sorted(p.parent.name for p in (root / PACKAGE).glob("*/__init__.py"))


def family_of(module: str, known: Sequence[str]) -> str | None:
    """pipeline.a.b -> a when `a` is one of the `known` families; None for the package's own top
    modules (pipeline, pipeline.__main__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in known else None
