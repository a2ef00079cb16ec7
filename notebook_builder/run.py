"""Execute a built notebook headless with nbclient inside a Kaggle-like folder tree: the local dry run.

    python -m notebook_builder run --config kaggle/configs/local.yaml --workdir runs/dry-run

WORKDIR/kaggle/input/<...>/   the competition files (made read-only, and checked unchanged afterwards)
WORKDIR/kaggle/working/       the kernel's working directory, as /kaggle/working on Kaggle
WORKDIR/jupyter/              JUPYTER_RUNTIME_DIR, JUPYTER_DATA_DIR, JUPYTER_CONFIG_DIR, IPYTHONDIR
WORKDIR/notebook.ipynb        the built notebook; WORKDIR/executed.ipynb: the same with its outputs

The kernel is the current interpreter (`python3` resolves to it once the Jupyter folders are
project-local) and runs with the Hugging Face offline switches set, so nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Mapping

import nbformat

from pipeline.core.files import read_json, write_json_atomic
from pipeline.kaggle.paths import resolve_paths
from pipeline.core.models import CACHE_ENV, cache_root
from pipeline.core.submission import submission_problems
from pipeline.core.tasks import without_test_outputs

from notebook_builder.build import REPO, build_notebook, write_notebook

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "PYDEVD_DISABLE_FILE_VALIDATION": "1", "TOKENIZERS_PARALLELISM": "false"}
JUPYTER_DIRS = {"JUPYTER_RUNTIME_DIR": "runtime", "JUPYTER_DATA_DIR": "data",
                "JUPYTER_CONFIG_DIR": "config", "IPYTHONDIR": "ipython"}


# ----------------------------------------------------------------------------- the Kaggle-like tree

def _make_writable(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(Path(root) / name, 0o644)


def make_read_only(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for name in files:
            os.chmod(Path(root) / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(root, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file: compared before and after a run (root ignores chmod)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def place_reduced_model(config, model: str, workdir: Path, repo: Path = REPO) -> None:
    """The model dataset a Kaggle user would ship, made here: `model` (the config's, resolved inside
    the tree) becomes the shrink-vocab stage's model of `local_model_shrink_vocab`'s source (the
    alias `embedded` or a repo-relative model) for its format, read-only.  Made once: a folder that
    already is that model stays (`shrink_vocab.local_model`); the run never knows it was made."""
    from pipeline.training.shrink_vocab import local_model

    target = Path(model)
    if workdir not in target.parents:
        raise ValueError(f"model {config.model!r} must resolve inside the workdir to receive local_model_shrink_vocab")
    if target.is_dir():
        _make_writable(target)  # to be replaced if it is not that model
    local_model(config.local_model_shrink_vocab, target, repo)
    make_read_only(target)


def prepare_local_layout(config, workdir: str | Path, repo: Path = REPO) -> Path:
    """Create WORKDIR/kaggle/{input,working}; returns the working directory (the kernel's cwd).

    The input folder gets every `*_challenges.json`/`*_solutions.json` of `local_source_dir`
    except the test file, and as the test file the `local_tasks` without their outputs; the model
    dataset gets `local_model_shrink_vocab`'s model at `model` and `local_adapter_source` at `adapter`."""
    workdir = Path(workdir).resolve()
    working = workdir / "kaggle" / "working"
    working.mkdir(parents=True, exist_ok=True)
    paths = resolve_paths(config, env={}, cwd=working)
    if workdir not in paths.input_dir.parents:
        raise ValueError(f"input_dir {config.input_dir!r} resolves outside the workdir: {paths.input_dir}")
    if not config.local_source_dir or not config.local_tasks:
        raise ValueError("a local run needs local_source_dir and local_tasks in its config")
    if paths.input_dir.exists():
        _make_writable(paths.input_dir)
        shutil.rmtree(paths.input_dir)
    paths.input_dir.mkdir(parents=True)
    known = {}
    for src in sorted((repo / config.local_source_dir).glob("*_*.json")):
        if src.name == paths.test_challenges.name or not src.stem.endswith(("_challenges", "_solutions")):
            continue
        shutil.copyfile(src, paths.input_dir / src.name)
        if src.stem.endswith("_challenges"):
            known.update(read_json(src))
    missing = [t for t in config.local_tasks if t not in known]
    if missing:
        raise ValueError(f"local_tasks not found in {config.local_source_dir}: {', '.join(missing)}")
    write_json_atomic(paths.test_challenges, without_test_outputs({t: known[t] for t in config.local_tasks}))
    make_read_only(paths.input_dir)
    if config.local_model_shrink_vocab:
        place_reduced_model(config, paths.model, workdir, repo)
    if config.local_adapter_source:  # the adapter dataset Kaggle would mount
        source = repo / config.local_adapter_source
        target = Path(paths.adapter) if paths.adapter else None
        if target is None or workdir not in target.parents:
            raise ValueError(f"adapter {config.adapter!r} must resolve inside the workdir to receive "
                             f"local_adapter_source {config.local_adapter_source}")
        if not (source / "adapter_config.json").is_file():
            raise ValueError(f"local_adapter_source {source} is not a LoRA adapter (no adapter_config.json)")
        if target.exists():
            _make_writable(target)
            shutil.rmtree(target)
        shutil.copytree(source, target)
        make_read_only(target)
    return working


# ----------------------------------------------------------------------------- execution

@contextlib.contextmanager
def _environ(values: Mapping[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kernel_env(workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the client and the kernel: project-local Jupyter folders, offline switches."""
    env = dict(OFFLINE_ENV)
    for var, sub in JUPYTER_DIRS.items():
        folder = workdir / "jupyter" / sub
        folder.mkdir(parents=True, exist_ok=True)
        env[var] = str(folder)
    env.update(extra or {})
    return env


def execute_notebook(nb, cwd: Path, env: Mapping[str, str], timeout: int = 3600):
    """Run every cell like Kaggle does (top to bottom, stop at the first error); returns the notebook
    with its outputs. Raises nbclient's CellExecutionError when a cell raises."""
    from nbclient import NotebookClient
    with _environ(env):
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}})
        return client.execute(env={**os.environ})


def cell_text(cell) -> str:
    """The stream output (stdout/stderr) of one executed code cell."""
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def run_local(config, workdir: str | Path, timeout: int = 3600, header: str = "", name: str = "notebook",
              repo: Path = REPO, extra_env: Mapping[str, str] | None = None) -> dict:
    """Build, lay out, execute; returns {"ok", "error", "submission_problems", "input_unchanged",
    "final_output", "working_dir", "notebook", "executed"}; writes the executed notebook."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    nb = build_notebook(config, header, name, repo)
    write_notebook(nb, workdir / "notebook.ipynb")
    working = prepare_local_layout(config, workdir, repo)
    paths = resolve_paths(config, env={}, cwd=working)
    paths.submission.unlink(missing_ok=True)
    before = snapshot(paths.input_dir)
    # the converted embedded model is cached outside the notebook's tree: reuse this checkout's cache
    env = {CACHE_ENV: os.environ.get(CACHE_ENV) or str(cache_root()), **(extra_env or {})}
    error = None
    try:
        nb = execute_notebook(nb, working, kernel_env(workdir, env), timeout)
    except Exception as e:  # CellExecutionError, a dead kernel, a cell timeout: report, then check the submission
        error = f"{type(e).__name__}: {str(e)[-2000:]}"
    nbformat.write(nb, workdir / "executed.ipynb")
    challenges = read_json(paths.test_challenges)
    problems = (submission_problems(read_json(paths.submission), challenges)
                if paths.submission.exists() else [f"{paths.submission.name} was not written"])
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    return {"ok": error is None and not problems, "error": error, "submission_problems": problems,
            "input_unchanged": snapshot(paths.input_dir) == before,
            "final_output": cell_text(code_cells[-1]) if code_cells else "",
            "working_dir": str(working), "notebook": str(workdir / "notebook.ipynb"),
            "executed": str(workdir / "executed.ipynb")}
