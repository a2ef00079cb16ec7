"""What the notebooks embed: the modules their run imports, computed from the import graph.

The embedded subset is checked the way the notebook uses it: written to a folder that is the only
copy of the package on the path, then `python -m pipeline COMMAND --help` for every command the
run launches and an import of every embedded module (so every module-level import resolves inside
the copy).  A test of that check removes one module the run needs and expects the check to fail.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from notebook_builder.build import (build_notebook, command_module, notebook_roots, notebook_text, pipeline_sources,
                                    resolve_config)
from pipeline.__main__ import STAGES
from pipeline.kaggle.run import STAGE_COMMANDS

from conftest import one_line_error

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "kaggle" / "configs"
# arc-prize-2026-arc-agi-2.ipynb built at f12de3e (before issue 21), when every file of pipeline/
# was embedded: `python -m notebook_builder build --config kaggle/configs/arc-prize-2026-arc-agi-2.yaml`
NOTEBOOK_BYTES_BEFORE = 790_197


def module_of(path: str) -> str:
    """pipeline/a/b.py -> pipeline.a.b; pipeline/a/__init__.py -> pipeline.a"""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def embedded_tree_problems(sources: dict[str, str], folder: Path) -> list[str]:
    """Write `sources` to folder/src, the only copy of the package on the path, and run there:
    `python -m pipeline --help`, `python -m pipeline COMMAND --help` for every command the run
    launches, and an import of every embedded module.  One line per failure."""
    src = folder / "src"
    for rel, text in sources.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(src)}
    modules = sorted(module_of(p) for p in sources if p.endswith(".py"))
    imports = "; ".join(f"import {m}" for m in modules if not m.endswith("__main__"))
    checks = {"--help": ["-m", "pipeline", "--help"],
              **{f"{c} --help": ["-m", "pipeline", c, "--help"] for c in sorted(set(STAGE_COMMANDS.values()))},
              "import": ["-c", f"{imports}; import pipeline; assert pipeline.__file__.startswith({str(src)!r})"]}
    problems = []
    for name, argv in checks.items():
        proc = subprocess.run([sys.executable, *argv], cwd=src, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            problems.append(f"{name}: exit {proc.returncode}: {last}")
    return problems


def submission_sources() -> dict[str, str]:
    config, _, _ = resolve_config(CONFIGS / "arc-prize-2026-arc-agi-2.yaml")
    return pipeline_sources(notebook_roots(config), REPO)


def test_the_2026_notebook_embeds_at_most_two_thirds_of_the_package(monkeypatch):
    """Measured against the same commit's package, built by the same writer with every module
    embedded (as before issue 21): the package grows with every issue, the share the run needs is
    what this guards.  Issue 21 asked for 65 % of the 790,197 bytes of f12de3e; with issue 22's
    preflight, paths, install checks, typed stage settings and determinism and issue 26's checked
    readers and anytime loop in the run, the run's modules are 65 % of the package (2026-12-06:
    543,870 bytes, 65.2 % of 834,407 with every file, 68.8 % of f12de3e's; docs: kaggle/README.md).
    Issue 24's batched DFS (`sampling/batched_search.py`, which `sample --method dfs` runs) took it to
    66.2 % (569,475 of 860,012 bytes, 2026-12-06): the bound is 67 %."""
    import notebook_builder.build as build
    from notebook_builder.imports import package_modules

    config, header, name = resolve_config(CONFIGS / "arc-prize-2026-arc-agi-2.yaml")
    size = len(notebook_text(build_notebook(config, header, name)).encode("utf-8"))
    monkeypatch.setattr(build, "notebook_roots", lambda config: list(package_modules(REPO)))
    every = len(notebook_text(build_notebook(config, header, name)).encode("utf-8"))
    print(f"\narc-prize-2026-arc-agi-2.ipynb: {size:,} bytes, {size / every:.1%} of the {every:,} with every file "
          f"embedded, {size / NOTEBOOK_BYTES_BEFORE:.1%} of the {NOTEBOOK_BYTES_BEFORE:,} of f12de3e")
    assert size <= 0.67 * every


def test_the_roots_are_the_run_the_dispatcher_and_every_launched_command():
    config, _, _ = resolve_config(CONFIGS / "arc-prize-2026-arc-agi-2.yaml")
    roots = notebook_roots(config)
    assert roots[:2] == ["pipeline.kaggle.run", "pipeline.__main__"]
    assert set(STAGE_COMMANDS.values()) <= set(STAGES)  # every launched command is a command
    assert set(roots[2:]) == {command_module(c) for c in STAGE_COMMANDS.values()}
    embedded = submission_sources()
    assert "pipeline/ttft/ttft.py" in embedded and "pipeline/sampling/sample.py" in embedded
    # commands the run never launches stay out, with what only they import
    for absent in ("pipeline/training/finetune.py", "pipeline/inputs/generate_inputs.py", "pipeline/planning/plan.py",
                   "pipeline/kaggle/dry_run.py"):
        assert absent in pipeline_sources([module_of(absent)], REPO) and absent not in embedded


def test_the_wheels_notebook_embeds_only_what_download_wheels_imports():
    config, header, name = resolve_config(CONFIGS / "wheels.yaml")
    assert notebook_roots(config) == ["pipeline.kaggle.install"]
    embedded = pipeline_sources(notebook_roots(config), REPO)
    assert "pipeline/kaggle/install.py" in embedded and "pipeline/kaggle/run.py" not in embedded
    assert "pipeline/__main__.py" not in embedded
    assert set(embedded) < set(submission_sources())
    text = notebook_text(build_notebook(config, header, name))
    assert text.count("%%writefile src/") == len(embedded)


def test_the_closure_follows_in_function_imports_and_keeps_the_packages_and_their_data(tmp_path):
    files = {"pipeline/__init__.py": "",
             "pipeline/a.py": "def f():\n    from pipeline.b import g\n    return g()\n",
             "pipeline/b.py": "from .sub import d\n\ndef g():\n    return d.X\n",
             "pipeline/c.py": "import pipeline.a\n",  # imports a, but nothing imports it
             "pipeline/sub/__init__.py": "", "pipeline/sub/d.py": "X = 1\n", "pipeline/sub/table.json": "{}",
             "pipeline/other/__init__.py": "", "pipeline/other/e.py": "", "pipeline/other/table.json": "{}"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert sorted(pipeline_sources(["pipeline.a"], tmp_path)) == [
        "pipeline/__init__.py", "pipeline/a.py", "pipeline/b.py", "pipeline/sub/__init__.py", "pipeline/sub/d.py",
        "pipeline/sub/table.json"]


def test_the_embedded_modules_run_every_launched_command_without_the_rest_of_the_package(tmp_path):
    sources = submission_sources()
    assert embedded_tree_problems(sources, tmp_path) == []
    # a command the run never launches is named as missing, in one line, not a traceback
    proc = subprocess.run([sys.executable, "-m", "pipeline", "finetune", "--help"], cwd=tmp_path / "src",
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "src")}, capture_output=True, text=True)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "finetune", "pipeline.training.finetune", "not in this copy")


def test_the_check_fails_when_a_module_the_run_needs_is_left_out(tmp_path):
    sources = submission_sources()
    del sources["pipeline/ttft/budget.py"]  # imported by ttft.ttft and ttft.worker at module level
    problems = embedded_tree_problems(sources, tmp_path)
    assert any(p.startswith("ttft --help") and "pipeline.ttft.budget" in p for p in problems), problems
    assert any(p.startswith("import") for p in problems), problems
