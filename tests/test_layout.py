"""The package's shape, read from its source with every import form (absolute, relative, inside
functions, the command table's "module:function" strings; `notebook_builder/imports.py`):

* the families are the folders under `pipeline/`, each placed in `LAYERS` (lowest first);
* no import circle between modules;
* no arrow from a family to a higher one (core imports no family);
* no module takes another module's `_private` name;
* a module over `MAX_LINES` lines says why in its docstring ("over N lines because ...", N at
  least MAX_LINES and at most the module's length, so a stale reason is caught);
* every command is the module named after it, and the tests mirror the families.

Each check takes a repository root and returns its problems (one line each), so the checks are
themselves tested on a small planted tree.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Sequence

from notebook_builder.imports import (PACKAGE, all_imports, families, family_of, find_cycle, import_graph,
                                      package_modules)

REPO = Path(__file__).resolve().parents[1]
# The layer order, lowest first: a family may import itself and the families before it, never one
# after it. A new folder under pipeline/ must be placed here (test_every_folder_is_a_placed_family).
LAYERS = ("core", "training", "ttft", "sampling", "selection", "inputs", "evaluation", "planning", "kaggle")
MAX_LINES = 400
TOP_MODULES = {PACKAGE, f"{PACKAGE}.__main__"}  # the package itself and its command dispatcher: above every family


# ----------------------------------------------------------------------------- the checks

def family_problems(root: Path, layers: Sequence[str] = LAYERS) -> list[str]:
    """The declared layers must be exactly the package's folders, and every module in one of them."""
    found, declared = set(families(root)), list(layers)
    problems = [f"pipeline/{name}/ is not placed in LAYERS" for name in sorted(found - set(declared))]
    problems += [f"LAYERS names {name!r}, which is no folder under pipeline/" for name in declared if name not in found]
    problems += [f"LAYERS names {name!r} twice" for name in sorted({n for n in declared if declared.count(n) > 1})]
    problems += [f"{path.relative_to(root)}: a module outside every family" for name, path in package_modules(root).items()
                 if name not in TOP_MODULES and family_of(name, declared) is None]
    return problems


def cycle_problems(root: Path) -> list[str]:
    cycle = find_cycle(import_graph(root))
    return [f"import circle: {' -> '.join(cycle)}"] if cycle else []


def layer_problems(root: Path, layers: Sequence[str] = LAYERS) -> list[str]:
    """Arrows from a family to a higher one, or from a family up to the package's top modules."""
    rank = {name: i for i, name in enumerate(layers)}
    problems = {}  # one line per import statement, whatever it takes
    for i in all_imports(root):
        source, target = family_of(i.source, layers), family_of(i.target, layers)
        if source is None:
            continue  # the dispatcher (and the package itself) sits above every family
        if target is None or rank[target] > rank[source]:
            problems[f"{i.source}:{i.line} imports {i.target} ({source} -> {target or 'the top'}, upwards)"] = None
    return list(problems)


def _module_aliases(tree: ast.AST, source: str, modules: set[str]) -> dict[str, str]:
    """{local name: package module} for `import pipeline.a.b as m` and `from pipeline.a import b`."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                            if f"{node.module}.{a.name}" in modules})
    return {name: module for name, module in aliases.items() if module != source}


def private_problems(root: Path) -> list[str]:
    """A module taking another's `_name`: imported by name (`from m import _x`, "m:_x") or read
    through an imported module (`m._x`)."""
    problems = [f"{i.source}:{i.line} imports {i.target}.{i.name}" for i in all_imports(root)
                if i.name and i.name.startswith("_") and not i.name.startswith("__")]
    modules = package_modules(root)
    for source, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = _module_aliases(tree, source, set(modules))
        problems += [f"{source}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}" for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")]
    return problems


def length_problems(root: Path, max_lines: int = MAX_LINES) -> list[str]:
    problems = []
    for path in package_modules(root).values():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        doc = " ".join((ast.get_docstring(ast.parse(text)) or "").lower().split())
        said = [int(n) for n in re.findall(r"over (\d+) lines because", doc)]
        if lines > max_lines and not any(max_lines <= n <= lines for n in said):
            problems.append(f"{path.relative_to(root)}: {lines} lines and its docstring does not say why "
                            f"(\"over {max_lines} lines because ...\")")
    return problems


# ----------------------------------------------------------------------------- the package

def test_every_folder_is_a_placed_family():
    assert family_problems(REPO) == []


def test_the_import_graph_has_no_cycle():
    assert cycle_problems(REPO) == []


def test_no_family_imports_a_higher_one():
    assert layer_problems(REPO) == []


def test_no_module_takes_another_modules_private_name():
    assert private_problems(REPO) == []


def test_long_modules_say_why():
    assert length_problems(REPO) == []


def test_every_command_lives_in_a_module_named_after_it():
    """`python -m pipeline --help` lists the commands; each one's code is pipeline/<family>/<command>.py
    (dashes as underscores), and that module defines the function the dispatcher calls."""
    from pipeline.__main__ import STAGES

    for command, (target, _) in STAGES.items():
        module, function = target.split(":")
        path = REPO / Path(*module.split(".")).with_suffix(".py")
        assert path.stem == command.replace("-", "_"), f"{command}: its code is in {path.relative_to(REPO)}"
        assert len(path.relative_to(REPO / PACKAGE).parts) == 2, f"{command}: {path} is not in a family folder"
        defined = {n.name for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.FunctionDef)}
        assert function in defined, f"{command}: {module} defines no {function}()"


def test_the_tests_mirror_the_families():
    """tests/<family>/ for each family, and no test folder that is not one."""
    folders = {p.parent.name for p in (REPO / "tests").glob("*/test_*.py")}
    assert folders == set(families(REPO))


# ----------------------------------------------------------------------------- the checks, on a planted tree

def plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


GOOD = {
    "pipeline/__init__.py": "",
    "pipeline/__main__.py": 'STAGES = {"b": ("pipeline.kaggle.b:main", "")}\n',
    "pipeline/core/__init__.py": "",
    "pipeline/core/a.py": '"""A."""\n\ndef helper():\n    return 1\n',
    "pipeline/kaggle/__init__.py": "",
    "pipeline/kaggle/b.py": "from pipeline.core.a import helper\n\n\ndef main():\n    return helper()\n",
}


def test_a_clean_tree_has_no_problems(tmp_path):
    root = plant(tmp_path, GOOD)
    layers = ("core", "kaggle")
    assert family_problems(root, layers) == cycle_problems(root) == layer_problems(root, layers) == []
    assert private_problems(root) == length_problems(root) == []


def test_the_checks_find_a_circle_through_a_function_an_upward_arrow_and_private_names(tmp_path):
    """core/a imports kaggle/b inside a function (an upward arrow closing a circle with b's
    absolute import of a); kaggle/c takes a's private names by a relative import and through the
    module; core/d is long without saying why."""
    root = plant(tmp_path, {**GOOD,
        "pipeline/core/a.py": '"""A."""\n\ndef _hidden():\n    return 0\n\n\ndef helper():\n'
                              "    from pipeline.kaggle.b import main  # upwards, and a circle\n    return main\n",
        "pipeline/kaggle/c.py": "from ..core.a import _hidden\nfrom pipeline.core import a\n\n\n"
                                "def use():\n    return _hidden(), a._hidden()\n",
        "pipeline/core/d.py": '"""Long."""\n' + "x = 1\n" * 12})
    layers = ("core", "kaggle")
    assert cycle_problems(root) == ["import circle: pipeline.kaggle.b -> pipeline.core.a -> pipeline.kaggle.b"]
    assert layer_problems(root, layers) == ["pipeline.core.a:8 imports pipeline.kaggle.b (core -> kaggle, upwards)"]
    assert sorted(private_problems(root)) == ["pipeline.kaggle.c:1 imports pipeline.core.a._hidden",
                                              "pipeline.kaggle.c:6 reads pipeline.core.a._hidden"]
    assert length_problems(root, max_lines=10) == [
        "pipeline/core/d.py: 13 lines and its docstring does not say why (\"over 10 lines because ...\")"]
    (root / "pipeline/core/d.py").write_text('"""Long: over 20 lines because it is a test."""\n' + "x = 1\n" * 12)
    assert len(length_problems(root, max_lines=10)) == 1  # a stale reason: it is not over 20 lines
    (root / "pipeline/core/d.py").write_text('"""Long: over 10 lines because it is a test."""\n' + "x = 1\n" * 12)
    assert length_problems(root, max_lines=10) == []


def test_a_new_folder_must_be_placed_and_a_stray_layer_is_named(tmp_path):
    root = plant(tmp_path, {**GOOD, "pipeline/extra/__init__.py": "", "pipeline/loose.py": ""})
    assert family_problems(root, ("core", "kaggle", "gone")) == [
        "pipeline/extra/ is not placed in LAYERS", "LAYERS names 'gone', which is no folder under pipeline/",
        "pipeline/extra/__init__.py: a module outside every family", "pipeline/loose.py: a module outside every family"]


# ----------------------------------------------------------------------------- the README's map

def readme_map(readme: Path) -> dict[str, tuple[set[str], set[str]]]:
    """{family: (commands, imported families)} from README's "Where things live" table."""
    text = readme.read_text(encoding="utf-8")
    section = text[text.index("## Where things live"):]
    section = section[:section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `pipeline/(\w+)/` \| (.*?) \| .*? \| (.*?) \|$", line)
        if m:
            rows[m.group(1)] = (set(re.findall(r"`([\w-]+)`", m.group(2))),
                                {f.strip() for f in m.group(3).split(",") if f.strip() not in ("", "—")})
    return rows


def test_the_readme_map_matches_the_tree():
    """Every family is a row; its commands are the dispatcher's commands that live there; its
    imports are the families its modules import (the dispatcher's by-name arrows aside)."""
    from pipeline.__main__ import STAGES

    found = readme_map(REPO / "README.md")
    assert list(found) == list(LAYERS)
    fams = families(REPO)
    commands = {f: {c for c, (target, _) in STAGES.items() if family_of(target.split(":")[0], fams) == f} for f in fams}
    arrows = {f: set() for f in fams}
    for source, targets in import_graph(REPO, dispatched=False).items():
        for target in targets:
            a, b = family_of(source, fams), family_of(target, fams)
            if a and b and a != b:
                arrows[a].add(b)
    assert {f: found[f][0] for f in found} == commands
    assert {f: found[f][1] for f in found} == arrows
