"""Build a Kaggle notebook from the `pipeline` package source and one `kaggle/configs/*.yaml`.

    python -m notebook_builder build --config kaggle/configs/arc-prize-2025.yaml --output build/arc-prize-2025.ipynb

The notebook holds no logic of its own: a config cell (the resolved config as a dict literal), one
`%%writefile` cell per module of `pipeline/` that the notebook's run imports (written to
`./src/pipeline/`), then short cells that call `pipeline.kaggle.run`. Edit the source or the
config, never the built notebook.  Each module is its code line for line, without comments and
multi-line function and class docstrings (notebook_builder/strip.py; checked at build time; `docs`
keeps them): the notebook carries the code, the repository its documentation.

Which modules: what the notebook's processes (`notebook_processes`) reach in the package's import
graph (notebook_builder/imports.py: every import form, in-function ones too, and the `__init__` of
every package on the way), computed from the source and the config, not listed by hand. A
submission notebook runs `pipeline.kaggle.run` in the kernel and launches `python -m pipeline
COMMAND` for the stage commands its config's run builds (`kaggle.commands.launched_commands`); the
dispatcher (`pipeline/__main__.py`) imports a command's module only when that command runs, so the
other commands' modules (training, input generation, planning, ...) stay out, and an import inside
an `if` on a stage option counts only when the options the command's own parser reads from its
argv take that branch (`command_options`: no DFS, rescore reader or transformers engine for a
config whose commands use none). The wheels notebook only calls `download_wheels`.

Deterministic: the same source and config give the same bytes (sorted files and keys, cell ids
from the cell index, no timestamps, no outputs). Paths in the notebook are the config's (Kaggle
paths, or paths relative to the notebook's working directory): nothing of the build machine.
"""
from __future__ import annotations

import importlib
import json
import pprint
import re
from pathlib import Path
from typing import Mapping, Sequence

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from notebook_builder.imports import closure, conditional_graph, package_modules
from notebook_builder.strip import code_changes, code_only
from pipeline.__main__ import STAGES
from pipeline.core.competitions import config_hardware
from pipeline.core.files import write_text_atomic
from pipeline.core.settings import (SubmissionConfig, WheelsConfig, config_dict, load_config, override_config,
                                    read_config_file)
from pipeline.core.scheduling import sample_gpus
from pipeline.kaggle import install, run as kaggle_run
from pipeline.kaggle.preflight import machine_shape
from pipeline.core.stage_args import PARSERS
from pipeline.kaggle.commands import command_problems, launched_commands
from pipeline.kaggle.run import STEPS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"
DISPATCHER = f"{PACKAGE}.__main__"  # `python -m pipeline COMMAND`
SOURCE_SUFFIXES = (".py", ".json", ".yaml", ".txt", ".jinja")
KERNEL_METADATA_TEMPLATE = REPO / "kaggle" / "kernel-metadata.json"


# ----------------------------------------------------------------------------- inputs

def command_module(command: str) -> str:
    """The module `python -m pipeline COMMAND` runs (`pipeline.__main__.STAGES`)."""
    return STAGES[command][0].split(":")[0]


def command_options(command: str, argv: Sequence | None) -> dict | None:
    """The stage options of `python -m pipeline COMMAND argv` as its own parser reads them, defaults
    included (the light parsers of `core/stage_args.PARSERS`, else the command module's
    `build_parser`): the names the imports' `if` tests wait on (notebook_builder/imports.py).  None
    (no argv, or no parser to read it with): unknown, every branch counts."""
    if argv is None:
        return None
    make = PARSERS.get(command) or getattr(importlib.import_module(command_module(command)), "build_parser", None)
    return None if make is None else vars(make().parse_args([str(a) for a in argv]))


def notebook_processes(config) -> list[tuple[list[str], dict | None]]:
    """The processes a notebook runs, each (the modules it starts from, its stage options): the
    kernel's `pipeline.kaggle.run` (options unknown: every branch), then, for each stage command the
    config's run launches (`kaggle.commands.launched_commands`), the dispatcher and the command's
    module with the options its argv gives (`command_options`).  The wheels notebook runs
    `download_wheels` only."""
    if isinstance(load_config(config), WheelsConfig):
        return [([install.__name__], None)]  # download_wheels: pip, no stage
    return [([kaggle_run.__name__], None), *[([DISPATCHER, command_module(command)], command_options(command, argv))
                                             for command, argv in launched_commands(config).values()]]


def notebook_roots(config) -> list[str]:
    """The modules a notebook starts from (`notebook_processes`'), each once, in order."""
    return list(dict.fromkeys(m for roots, _ in notebook_processes(config) for m in roots))


def pipeline_sources(processes, repo: Path = REPO) -> dict[str, str]:
    """{"pipeline/x.py": text}, sorted by path: the modules the `processes` reach in the import
    graph (with the packages holding them), and any data file (SOURCE_SUFFIXES) in those packages'
    folders.  A process: (root modules, stage options), its conditional imports followed as
    `imports.takes` says; a bare module name: a root whose options are unknown (every import)."""
    modules = package_modules(repo)
    graph = conditional_graph(repo)
    reached = set()
    for process in processes:
        roots, options = ([process], None) if isinstance(process, str) else process
        reached |= closure(graph, roots, options)
    needed = {modules[m] for m in reached}
    folders = {p.parent for p in needed if p.name == "__init__.py"}
    files = sorted(p for p in (repo / PACKAGE).rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and (p in needed or p.suffix in SOURCE_SUFFIXES[1:] and p.parent in folders))
    return {p.relative_to(repo).as_posix(): p.read_text(encoding="utf-8") for p in files}


def notebook_sources(processes, repo: Path = REPO, docs: bool = False) -> dict[str, str]:
    """What a notebook writes to `src/`: `pipeline_sources`, each module's code without its
    function and class docstrings and comments, line for line (`strip.code_only`; the module's
    docstring stays), unless `docs`.  A module whose stripped code is not its original code at the
    same lines is a one-line ValueError naming it (`strip.code_changes`)."""
    sources = pipeline_sources(processes, repo)
    if docs:
        return sources
    out = {}
    for path, text in sources.items():
        if path.endswith(".py"):
            out[path] = code_only(text)
            changed = code_changes(text, out[path])
            if changed:
                raise ValueError(f"{path}: stripping its documentation changed its code: {changed}")
        else:
            out[path] = text
    return out


def header_comment(path: str | Path) -> str:
    """The comment block a config file opens with, without the `# ` markers."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines).strip("\n")


def pinned_requirements(files: Sequence[str], packages: Sequence[str], repo: Path = REPO) -> tuple[str, ...]:
    """The `name==version` lines of `packages` found in the requirement files, in `packages` order."""
    pins = {}
    for name in files:
        for line in (repo / name).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                pins[line.split("==")[0].strip().lower()] = line
    missing = [p for p in packages if p.lower() not in pins]
    if missing:
        raise ValueError(f"no pinned version for {', '.join(missing)} in {', '.join(files)}")
    return tuple(pins[p.lower()] for p in packages)


def resolve_config(source: str | Path | Mapping, overrides: Mapping | None = None, repo: Path = REPO):
    """(config, header comment, name) from a YAML path (with what it `extends`) or a dict, with
    `overrides` applied. A config whose stage commands a stage's own parser refuses is a one-line
    ValueError naming the config key (`kaggle.commands.command_problems`)."""
    if isinstance(source, Mapping):
        values, header, name = dict(source), "", str(source.get("title", "notebook"))
    else:
        path = Path(source)
        values = read_config_file(path)  # one-line errors: YAML syntax (line, column), not a mapping
        header = header_comment(path)
        try:
            name = path.resolve().relative_to(repo).as_posix()
        except ValueError:
            name = path.name
    values = override_config(values, overrides or {})  # an override of ttft_steps replaces ttft_copies
    try:
        config = load_config(values)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    refused = command_problems(config) if isinstance(config, SubmissionConfig) else {}
    if refused:  # a stage would exit 2 on every run: no notebook (kaggle/commands.py)
        raise ValueError(f"{name}: {next(iter(refused.values()))}")
    if isinstance(config, WheelsConfig) and not config.requirements:
        config = load_config({**values, "requirements": list(
            pinned_requirements(config.requirement_files, config.packages, repo))})
    return config, header, name


# ----------------------------------------------------------------------------- cells

def _header_markdown(config, header: str, name: str) -> str:
    lines = [f"# {config.title}", "",
             f"Generated by `python -m notebook_builder build --config {name}` from the `pipeline` "
             "package: edit the source or the config, not this notebook.", ""]
    if isinstance(config, SubmissionConfig):
        c = config
        lines += [
            "What it runs, each stage a subprocess under one global deadline "
            f"({c.deadline_hours:g} h minus {c.safety_margin_minutes:g} min, from the first cell):", "",
            "1. a fallback `submission.json` for every test input (attempt 1 = the input, attempt 2 = `[[0]]`);",
            "2. the preflight: where the model, adapter and wheels were found (every Kaggle input layout), "
            f"the GPUs, and the devices the stages get (the GPUs present when fewer than {len(c.devices)});",
            f"3. the offline install from `{c.wheels_dir}` when the installed versions differ from its pins;",
            f"4. test-time fine-tuning of `{c.model}`" + (f" from the adapter `{c.adapter}`" if c.adapter else "")
            + f": {c.ttft_steps} steps per task"
            + (f" ({c.ttft_copies} augmented copies x {c.ttft_epochs or 1} epoch(s))" if c.ttft_copies else "")
            + f", lr {c.ttft_learning_rate:g}, batch {c.ttft_batch_size}, "
            f"max_seq_len {c.ttft_max_seq_len}, on {', '.join(c.devices)} (one worker each), "
            f"at most {c.ttft_budget_fraction:.0%} of the time left;",
            f"5. sampling: {c.predictions_per_task} predictions per task, engine `{c.engine}`, "
            f"temperature {c.temperature:g}, tasks split across {max(len(sample_gpus(c.devices)), 1)} worker(s);",
            "6. voting into 2 attempts, merged atomically into `submission.json` (valid grids only);",
            f"7. on the public placeholder test set (a copy of known tasks): a smoke run of {c.smoke_tasks} "
            f"tasks ({c.smoke_ttft_steps} steps, {c.smoke_predictions_per_task} predictions), scored "
            "against the known solutions; then the timing profile.", "",
            f"A stage that crashes, prints nothing for {c.watchdog_minutes:g} min or overruns its time is "
            "killed; the best valid submission so far stays. `run/summary.json` lists the warnings, the test "
            "inputs still on the fallback and each task's outcome per stage.", ""]
    else:
        lines += ["Builds the offline wheels (run with internet on):", "",
                  *[f"- `{r}`" for r in config.requirements], ""]
    if header:
        lines += ["From the config:", "", "```", header, "```"]
    return "\n".join(lines).rstrip() + "\n"


STEP_NOTES = {  # a comment for each of kaggle_run.STEPS
    "start": "Fallback first: from here on `submission.json` is complete and valid, whatever happens.",
    "preflight": "What this run uses: where the inputs were found, the GPUs, the devices the stages get.",
    "install": "Offline install from the wheels dataset, when the installed versions differ from its pins.",
    "first_shot": "Anytime: one cheap greedy answer per test input (no TTFT), voted into the submission at once.",
    "ttft": "Test-time fine-tuning: one adapter per task; one worker per GPU inside the stage.",
    "sample": "Augmented sampling: tasks split across the GPUs, one worker process each.",
    "rescore": "Candidates scored under augmented views (rescore_views > 0), for product-of-experts or NVARC selection.",
    "vote": "Voting into 2 attempts; valid results replace the fallback atomically.",
    "finish": "Self-score (placeholder test set only) and the timing profile.",
}


def build_notebook(config, header: str = "", name: str = "notebook", repo: Path = REPO,
                   docs: bool = False) -> nbformat.NotebookNode:
    """The notebook for `config`; its modules without their function and class docstrings and
    comments (`notebook_sources`) unless `docs`."""
    config = load_config(config)
    sources = notebook_sources(notebook_processes(config), repo, docs)
    folders = sorted({str(Path("src") / Path(p).parent) for p in sources})
    cells = [
        new_markdown_cell(_header_markdown(config, header, name)),
        new_code_cell("# The notebook's clock (the global deadline counts from here) and the source folder.\n"
                      "import os, sys, time\n"
                      "STARTED_AT = time.time()\n"
                      f"for folder in {folders!r}:\n"
                      "    os.makedirs(folder, exist_ok=True)\n"
                      "sys.path.insert(0, os.path.abspath('src'))"),
        new_markdown_cell("## Config\n\nThe resolved config (defaults of `pipeline.core.settings` plus the YAML "
                          "overrides). Relative paths are relative to this notebook's working directory."),
        new_code_cell("CONFIG = " + pprint.pformat(config_dict(config), width=100, sort_dicts=True)),
        new_markdown_cell(f"## Source\n\nThe modules of the `{PACKAGE}` package that this notebook runs "
                          f"({len(sources)} files: what its steps and the commands they launch import), "
                          f"written to `./src/{PACKAGE}/` (the stages run as `python -m {PACKAGE} STAGE` "
                          "from there)." + ("" if docs else
                          " Each is the repository's file line for line, its code unchanged, without its "
                          "comments and multi-line function and class docstrings (blank lines hold their "
                          "place, so a traceback's line numbers are the repository's; `python -m "
                          "notebook_builder build --docs` keeps them).")),
        *[new_code_cell(f"%%writefile src/{path}\n{text}") for path, text in sources.items()],
        new_markdown_cell("## Run"),
    ]
    if isinstance(config, SubmissionConfig):
        cells.append(new_code_cell("from pipeline.kaggle import run as kaggle_run\n"
                                   "run = kaggle_run.KaggleRun(CONFIG, started_at=STARTED_AT)"))
        cells += [new_code_cell(f"# {STEP_NOTES[step]}\nrun.{step}()" + (";" if step == "finish" else ""))
                  for step in STEPS]
    else:
        cells.append(new_code_cell("from pipeline.kaggle import install\n"
                                   "install.download_wheels(CONFIG, started_at=STARTED_AT);"))
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i:03d}"
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    })
    nbformat.validate(nb)
    return nb


def notebook_text(nb) -> str:
    """The notebook as .ipynb JSON, each cell's source one JSON string.  nbformat's writer splits a
    source into one string per line, which costs ~10 bytes a line (indent, quotes, comma) and is
    ~20 % of a notebook that embeds ~13,000 lines of code; both forms are valid nbformat 4 and read
    back to the same notebook (tested)."""
    nbformat.validate(nb)
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_notebook(nb, path: str | Path) -> int:
    """Write atomically; returns the size in bytes."""
    text = notebook_text(nb)
    write_text_atomic(path, text)
    return len(text.encode("utf-8"))


def kernel_metadata(config, user: str, code_file: str, template: Path = KERNEL_METADATA_TEMPLATE) -> dict:
    """`kernel-metadata.json` for `kaggle kernels push`, from the template and the config: the
    accelerator (`machine_shape`) from the config's hardware (`competitions.config_hardware`: the
    rule the planner and the run's preflight use too) or `kaggle_accelerator`, and the Kaggle Models it attaches."""
    config = load_config(config)
    meta = json.loads(template.read_text(encoding="utf-8"))
    slug = re.sub(r"[^a-z0-9]+", "-", config.title.lower()).strip("-")  # Kaggle derives the slug from the title
    shape = None
    if isinstance(config, SubmissionConfig):
        shape = machine_shape(config_hardware(config.hardware, config.kaggle_competition, config.devices),
                              config.kaggle_accelerator)
    meta.update(id=f"{user}/{slug}", title=config.title, code_file=Path(code_file).name,
                dataset_sources=[d.format(user=user) for d in config.kaggle_datasets],
                competition_sources=[config.kaggle_competition] if config.kaggle_competition else [],
                model_sources=[m.format(user=user) for m in getattr(config, "kaggle_models", ())],
                enable_internet=isinstance(config, WheelsConfig), enable_gpu=shape is not None)
    if shape:  # without one, Kaggle runs a GPU notebook on its default GPU
        meta["machine_shape"] = shape
    return meta
