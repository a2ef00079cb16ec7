"""Budget planner: project a competition run's time from a measured profile, before submitting.

    python -m pipeline plan --config kaggle/configs/NAME.yaml --profile RUN_DIR [--tasks N]
        [--dataset FILE] [--task_ids A,B,...] [--select random|smallest|first] [--smoke]
        [--steps S] [--predictions_per_task P] [--hardware T4|L4|A100|H100|H200|cpu] [--workers W]
        [--model_scale X] [--margin 0.15] [--fit] [--compare RUN_DIR] [--json OUT.json]

What it does, in order (kaggle/PLANNER.md has the sources and the hand arithmetic):
  1. Fit a cost model per stage to the profile's records (`pipeline/planning/cost_model.py`):
       TTFT:     task_s = task_fixed + steps x per_step + tokens_trained x per_train_token
       sampling: task_s = task_fixed + predictions x per_prediction
                          + prompt_tokens x per_prompt_token + generated_tokens x per_generated_token
     plus, per stage, `fixed` seconds paid once per worker (process start, model load): the
     stage's worker-seconds minus what the observations account for. TTFT is fitted on its task
     records (compute = their `train` phases), sampling on its per-`generate`-call phases.
     `task_fixed` is the median per-task time outside compute phases. The compute part is a
     non-negative least-squares fit on the richest feature set the records identify (enough
     observations, sizes that vary, columns not collinear, every coefficient positive);
     otherwise a plain per-token rate (see `regression.fit_compute`).
  2. Count the target task set's tokens with the real prompt builder and tokenizer
     (`token_counts.task_tokens`): TTFT samples are leave-one-out (n-1 train pairs as examples, the held-out
     pair as the target, train pairs dropped from the end to fit max_seq_len); sampling uses
     the inference prompt of each test input and the answer length (the known test output, else
     the test input as its proxy) or sampling's max_tokens cap for the task, whichever explains
     the recorded generated tokens better (an untrained model runs to the cap). Counts are
     calibrated against the profile's recorded tokens for the profiled tasks (`regression.calibrate`).
  3. Scale the coefficients to the target hardware by documented factors (`core/hardware.HARDWARE`: compute
     throughput for training and prompt tokens, memory bandwidth for generated tokens; fixed
     costs unscaled) and by `--model_scale` (target/profiled parameter count).
  4. Schedule tasks over workers: TTFT largest-first list scheduling (each worker pays `fixed`
     once); sampling with the orchestrator's shards (as `kaggle/run.py:shard_tasks` makes them). Add the
     orchestrator's fixed stages (start, install, vote, ...) as measured. The first shot
     (`first_shot_predictions` > 0) is the sampling model at that many predictions, one process,
     before TTFT, capped at its budget; rescoring (`rescore_views` > 0) is its prefill tokens
     (views x (prompt + candidates x answer) per test input, `rescore_prefill_tokens`) at its own
     rates (`fit_rescore`) or sampling's prompt-token rate, over the sampling shards; DFS per node (`fit_dfs`).
  5. Compare with the config's deadline the way `kaggle/run.py` spends it: the safety margin off the
     top, the first shot capped at `first_shot_budget_fraction` of the time left, TTFT at
     `ttft_budget_fraction` of what is left after it (with a first shot, which measures sampling's
     speed: what the projected sampling leaves, within `ttft_min_fraction`..`ttft_max_fraction`,
     `scheduling.ttft_share_s`), `vote_reserve_minutes` kept back from
     sampling, `rescore_budget_fraction` of sampling's share kept for rescoring, and the
     planner's own `--margin` for projection error on top.
`--fit` searches steps (multiples of 8) and predictions per task (multiples of 8) for the largest
settings that still fit. `--compare RUN_DIR` puts a measured run beside the projection.

This module reads the settings from a config (`settings_from_config`), prepares and runs a
projection (`prepare`, `plan`), searches for settings that fit (`fit`) and holds the CLI. The
cost model (step 1 and 3) is `pipeline/planning/cost_model.py`, the token counts (step 2)
`pipeline/planning/token_counts.py`, the settings and the projection itself (steps 4 and 5)
`pipeline/planning/projection.py`, the text and the comparison with a measured run
`pipeline/planning/plan_report.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.files import check_output, write_json_atomic
from pipeline.core.formats import FORMAT_NAMES
from pipeline.core.hardware import HARDWARE, hardware_of
from pipeline.core.model_cfg import DEFAULT_PROMPT_VERSION, find_run_config, resolve_prompting
from pipeline.core.models import load_tokenizer, resolve_model_path
from pipeline.core.scheduling import sampling_workers
from pipeline.core.settings import config_problems, load_config
from pipeline.core.tasks import load_tasks
from pipeline.planning.cost_model import (COEFFICIENTS, DFS_COST, FIXED, SAMPLE_STAGE, TTFT_STAGE, CostModel, StageCost,
                                          fit_cost_model, hardware_name)
from pipeline.planning.plan_report import compare, format_plan
from pipeline.planning.profile import load_records, profile, split_killed, timing_files
from pipeline.planning.projection import CONFIG_KEYS, DEFAULT_MARGIN, Settings, project
from pipeline.planning.token_counts import SELECTIONS, TaskTokens, select_targets, target_selection, task_tokens

REPO = Path(__file__).resolve().parents[2]

# Kaggle competitions: machine and hidden test set size (anchors.md, intro table).
COMPETITIONS = {
    "arc-prize-2024": {"hardware": "T4", "tasks": 100, "dataset": "data/arc-agi-1/arc-agi_evaluation_challenges.json"},
    "arc-prize-2025": {"hardware": "L4", "tasks": 240, "dataset": "data/arc-agi-2/arc-agi_training_challenges.json"},
}


# ----------------------------------------------------------------------------- settings

def settings_from_config(config: str | Path | Mapping | None, smoke: bool = False, **overrides) -> Settings:
    """Settings from a `kaggle/configs/*.yaml` (or its dict); `overrides` that are not None win.

    The config is read and checked by `settings.load_config` (as the notebook reads it): the keys
    named in CONFIG_KEYS, `devices` (one TTFT worker per entry; one sampling worker per cuda
    device, as `kaggle/run.py` shards), `hardware`, else the hardware of `kaggle_competition`
    (COMPETITIONS) or "cpu" when every device is a CPU.  With `smoke`, the placeholder smoke
    settings (smoke_tasks, smoke_ttft_steps, ...) apply."""
    values = {} if config is None else dataclasses.asdict(load_config(config))
    kw = {k: values[k] for k in CONFIG_KEYS if values.get(k) is not None}
    if (values.get("sample_settings") or {}).get("method"):  # DFS is priced per node (cost_model.fit_dfs)
        kw["sample_method"] = values["sample_settings"]["method"]
    devices = list(values.get("devices") or [])
    if devices:
        kw["ttft_workers"] = len(devices)
        kw["sample_workers"] = sampling_workers([str(d) for d in devices])
    competition = COMPETITIONS.get(str(values.get("kaggle_competition")), {})
    if values.get("hardware"):
        kw["hardware"] = values["hardware"]
    elif devices and all(str(d).startswith("cpu") for d in devices):
        kw["hardware"] = "cpu"
    elif competition:
        kw["hardware"] = competition["hardware"]
    if competition:
        kw["n_tasks"], kw["dataset"] = competition["tasks"], competition["dataset"]
    if values.get("local_source_dir") and not competition:  # the local dry run: its evaluation tasks
        kw["dataset"] = str(Path(values["local_source_dir"]) / "arc-agi_evaluation_challenges.json")
    if smoke:  # as KaggleRun.start does on the placeholder test set
        defaults = Settings()
        for key, target in (("smoke_ttft_steps", "ttft_steps"), ("smoke_predictions_per_task", "predictions_per_task")):
            if values.get(key) is not None:
                kw[target] = min(values[key], kw.get(target, getattr(defaults, target)))
        if values.get("smoke_tasks") is not None:
            kw["n_tasks"] = values["smoke_tasks"]
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if hardware_of(kw.get("hardware", "T4")) is None:
        raise ValueError(f"unknown hardware {kw['hardware']!r}; known: {', '.join(HARDWARE)}")
    kw["hardware"] = hardware_of(kw.get("hardware", "T4")).name
    return Settings(**kw)


def steps_grid(limit: int = 4096) -> list[int]:
    return list(range(8, limit + 1, 8))


def predictions_grid(limit: int = 512) -> list[int]:
    return list(range(8, limit + 1, 8))


def _largest(grid: Sequence[int], fits) -> int | None:
    """The largest grid value for which fits(value) holds, assuming it is monotone (binary search)."""
    lo, hi, best = 0, len(grid) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(grid[mid]):
            best, lo = grid[mid], mid + 1
        else:
            hi = mid - 1
    return best


def fit(model: CostModel, targets: Sequence[TaskTokens], s: Settings,
        steps_values: Sequence[int] | None = None, predictions_values: Sequence[int] | None = None) -> dict:
    """The largest settings that fit (time grows with steps and predictions, so each is a search):
      max_steps:        the largest steps with the settings' predictions per task;
      max_predictions:  the largest predictions with the settings' steps;
      proposal:         the largest point on both grids at the settings' steps:predictions ratio
                        (both scaled by the same factor, rounded down to the grids);
      frontier:         for every predictions value, the largest steps that fits.
    Each is None when nothing on the grid fits."""
    steps_values = sorted(steps_values or steps_grid())
    predictions_values = sorted(predictions_values or predictions_grid())
    fits = lambda st, pr: project(model, targets, dataclasses.replace(s, ttft_steps=st, predictions_per_task=pr))["fits"]

    max_steps = _largest(steps_values, lambda st: fits(st, s.predictions_per_task))
    max_predictions = _largest(predictions_values, lambda pr: fits(s.ttft_steps, pr))

    def on_ray(scale: float) -> tuple[int, int] | None:
        st = max((v for v in steps_values if v <= s.ttft_steps * scale), default=None)
        pr = max((v for v in predictions_values if v <= s.predictions_per_task * scale), default=None)
        return None if st is None or pr is None else (st, pr)

    scales = sorted({v / s.ttft_steps for v in steps_values} | {v / s.predictions_per_task for v in predictions_values})
    points = [p for p in dict.fromkeys(on_ray(x) for x in scales) if p is not None]
    best = _largest(list(range(len(points))), lambda i: fits(*points[i]))
    proposal = None if best is None else {"ttft_steps": points[best][0], "predictions_per_task": points[best][1]}
    frontier = {pr: _largest(steps_values, lambda st, pr=pr: fits(st, pr)) for pr in predictions_values}
    frontier = {pr: st for pr, st in frontier.items() if st is not None}
    if proposal:
        proposal["projection"] = project(model, targets, dataclasses.replace(s, **{k: proposal[k] for k in (
            "ttft_steps", "predictions_per_task")}))
    return {"max_steps": max_steps, "max_predictions": max_predictions, "proposal": proposal, "frontier": frontier,
            "grid_max": {"steps": steps_values[-1], "predictions": predictions_values[-1]}}


def prepare(s: Settings, profile_records: Sequence[dict], tasks: Mapping, n_tasks: int | None = None, *,
            tokenizer=None, profile_tasks: Mapping | None = None, select: str = "random", seed: int = 0,
            encoder: str | None = None, prompt_version: str = DEFAULT_PROMPT_VERSION
            ) -> tuple[CostModel, list[TaskTokens], dict[str, TaskTokens]]:
    """(cost model, target TaskTokens, profiled tasks' TaskTokens) for `project` and `fit`.

    `tasks` and `profile_tasks` are task JSON dicts or {id: TaskTokens}; JSON is counted with
    `tokenizer` (default: the embedded SmolLM2 tokenizer). Without `profile_tasks` the profiled
    tasks are looked up in `tasks`."""
    def as_tokens(ts: Mapping) -> dict[str, TaskTokens]:
        nonlocal tokenizer
        if not ts:
            return {}
        if all(isinstance(v, TaskTokens) for v in ts.values()):
            return dict(ts)
        if tokenizer is None:
            tokenizer = load_tokenizer("embedded")
        return task_tokens(ts, tokenizer, s.ttft_max_seq_len, encoder, prompt_version)

    chosen = select_targets(tasks, n_tasks if n_tasks is not None else s.n_tasks, select, seed)
    counted = as_tokens({tid: tasks[tid] for tid in dict.fromkeys(chosen)})
    repeats = len(chosen) != len(set(chosen))
    targets = [dataclasses.replace(counted[tid], task_id=f"{tid}#{i}" if repeats else tid)
               for i, tid in enumerate(chosen)]
    profiled_ids = {str(r["task_id"]) for r in profile_records if r.get("task_id") is not None}
    source = profile_tasks if profile_tasks is not None else tasks
    calib = as_tokens({t: v for t, v in source.items() if t in profiled_ids})
    return fit_cost_model(profile_records, calib, s.ttft_batch_size), targets, calib


def plan(config, profile_records: Sequence[dict], tasks: Mapping, n_tasks: int | None = None, *,
         smoke: bool = False, **kwargs) -> dict:
    """Project a run of `config` (a YAML path, a dict or Settings; `kwargs` that are Settings
    fields override it) from a profile's records onto N of `tasks` (see `prepare`; with `smoke`,
    the tasks the smoke run takes)."""
    kwargs["select"] = target_selection(kwargs.get("select"), smoke)
    fields = {f.name for f in dataclasses.fields(Settings)}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    if isinstance(config, Settings):
        s = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    else:
        s = settings_from_config(config, smoke=smoke, **overrides)
    model, targets, calib = prepare(s, profile_records, tasks, n_tasks, **kwargs)
    result = project(model, targets, s)
    result["task_ids"] = [t.task_id for t in targets]
    result["model"] = _model_dict(model, s)
    result["notes"] = _notes(model, s, calib)
    return result


def _model_dict(model: CostModel, s: Settings) -> dict:
    def stage(c: StageCost | None):
        if c is None:
            return None
        d = {k: v for k, v in dataclasses.asdict(c).items() if k != "calibration"}
        d["calibration"] = {k: dataclasses.asdict(v) for k, v in c.calibration.items()}
        scaled = c.scaled(s.hardware, s.model_scale)
        d["scaled_to_" + s.hardware] = {k: getattr(scaled, k) for k in FIXED + COEFFICIENTS}
        return d
    return {"profiled_hardware": model.hardware, "target_hardware": s.hardware, "model_scale": s.model_scale,
            "ttft": stage(model.ttft), "sample": stage(model.sample), "rescore": stage(model.rescore),
            DFS_COST: stage(model.dfs), "pre_fixed": model.pre_fixed, "post_fixed": model.post_fixed}


def _notes(model: CostModel, s: Settings, calib_tokens: Mapping) -> list[str]:
    notes = []
    if model.ttft is None:
        notes.append("no TTFT task records in the profile: TTFT projected as 0 s")
    if model.sample is None:
        notes.append("no sampling task records in the profile: sampling projected as 0 s")
    if s.sample_method == "dfs" and model.dfs is None:
        notes.append("method dfs, but the profile has no DFS records counting nodes: projected at greedy rates")
    if s.rescore_views > 0 and model.rescore is None:
        notes.append("no rescore task records in the profile: rescoring projected at sampling's prompt-token rate")
    if not calib_tokens:
        notes.append("no task JSON for the profiled tasks (RUN_DIR/challenges.json or --profile_dataset): "
                     "token counts uncalibrated")
    if model.hardware != s.hardware:
        src, dst = HARDWARE[model.hardware], HARDWARE[s.hardware]
        notes.append(f"profile on {src.name}, plan for {dst.name}: training x{src.train / dst.train:.4g}, "
                     f"generation x{src.decode / dst.decode:.4g} (estimates; fixed costs unscaled)")
    if s.model_scale != 1.0:
        notes.append(f"model terms x{s.model_scale:g} (--model_scale)")
    if not model.pre_fixed and not model.post_fixed:
        notes.append("no orchestrator records (start/install/vote): only TTFT and sampling are projected")
    return notes


# ----------------------------------------------------------------------------- CLI

def _find_challenges(run_dir: str | Path) -> Path | None:
    run_dir = Path(run_dir)
    if run_dir.is_file():
        run_dir = run_dir.parent
    found = sorted(run_dir.rglob("challenges.json"))
    return found[0] if found else None


def flag_problems(args) -> list[str]:
    """The flags out of range, one phrase each: the config keys they override by the config's own ranges
    (`settings.config_problems`), `--model_scale` finite > 0, `--margin` finite >= 0, `--workers`, `--tasks` >= 1."""
    overrides = {"ttft_steps": args.steps, "predictions_per_task": args.predictions_per_task,
                 "deadline_hours": args.deadline_hours, "ttft_max_seq_len": args.max_seq_len, "hardware": args.hardware}
    flags = {"ttft_steps": "--steps", "ttft_max_seq_len": "--max_seq_len"}
    problems = [p.replace("config key ", "", 1).replace(f"'{key}'", flags.get(key, f"--{key}"), 1)
                for key, value in overrides.items() if value is not None
                for p in config_problems({key: value})]
    for flag, value, low in (("--model_scale", args.model_scale, ">"), ("--margin", args.margin, ">=")):
        if not (math.isfinite(value) and (value > 0 if low == ">" else value >= 0)):
            problems.append(f"{flag} must be a finite number {low} 0, got {value}")
    for flag in ("workers", "tasks"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            problems.append(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline plan", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="kaggle/configs/NAME.yaml (deadline, devices, steps, predictions, ...)")
    parser.add_argument("--profile", required=True, help="run directory (or timing.jsonl) measured on some machine")
    parser.add_argument("--dataset", help="target task file (default: the competition's proxy set, else the "
                                          "profile's challenges.json)")
    parser.add_argument("--tasks", type=int, help="number of target tasks (default: the competition's, else all)")
    parser.add_argument("--task_ids", help="comma-separated target task ids (instead of --tasks/--select)")
    parser.add_argument("--select", choices=SELECTIONS, help="which N tasks of the dataset (default random, seeded; "
                                                             "with --smoke the smoke run's pick, the smallest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile_dataset", help="task file of the profiled tasks (default: challenges.json "
                                                  "under --profile, else --dataset)")
    parser.add_argument("--smoke", action="store_true", help="plan the placeholder smoke run (smoke_* settings)")
    parser.add_argument("--steps", type=int, help="TTFT steps per task (overrides the config)")
    parser.add_argument("--predictions_per_task", type=int, help="predictions per test input (overrides the config)")
    parser.add_argument("--hardware", help=f"target hardware: {', '.join(HARDWARE)} (overrides the config)")
    parser.add_argument("--workers", type=int, help="TTFT and sampling workers (GPUs) (overrides the config)")
    parser.add_argument("--deadline_hours", type=float)
    parser.add_argument("--max_seq_len", type=int, help="TTFT max_seq_len (overrides the config)")
    parser.add_argument("--model_scale", type=float, default=1.0,
                        help="target model parameters / profiled model parameters (e.g. 494/134.5 = 3.67 for "
                             "Qwen2.5-0.5B planned from a SmolLM2-135M profile)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="projection error allowance (0.15 = 15 %%)")
    parser.add_argument("--format", choices=FORMAT_NAMES,
                        help="prompt format the run uses (default: from --tokenizer's cfg.json, else arc24)")
    parser.add_argument("--encoder", help="arc24 format: grid encoder spec (default: the project's default encoder)")
    parser.add_argument("--prompt_version", help=f"arc24 format: prompt version (default {DEFAULT_PROMPT_VERSION})")
    parser.add_argument("--tokenizer", default="embedded",
                        help="tokenizer to count tokens with: the run's model (default: embedded)")
    parser.add_argument("--fit", action="store_true", help="also propose the largest steps/predictions that fit")
    parser.add_argument("--compare", help="a measured run directory to compare the projection with")
    parser.add_argument("--json", help="write the plan (and fit, comparison) as JSON to this file")
    args = parser.parse_args(argv)
    problems = flag_problems(args)
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2

    try:
        if args.json:
            check_output(args.json, {"--config": args.config, "--profile": args.profile, "--dataset": args.dataset,
                                     "a timing file": timing_files(args.profile)}, what="--json")
        overrides = dict(ttft_steps=args.steps, predictions_per_task=args.predictions_per_task, hardware=args.hardware,
                         deadline_hours=args.deadline_hours, ttft_max_seq_len=args.max_seq_len,
                         margin=args.margin, model_scale=args.model_scale)
        if args.workers is not None:
            overrides.update(ttft_workers=args.workers, sample_workers=args.workers)
        select = target_selection(args.select, args.smoke)
        settings = settings_from_config(args.config, smoke=args.smoke, **overrides)
        records, _ = split_killed(load_records(args.profile))
        if not records:
            print(f"error: no timing records under {args.profile}", file=sys.stderr)
            return 1
        if args.hardware is None and args.config is None:  # plan for the profile's own machine
            prof_hw = hardware_name(next((s for n, s in profile(records)["stages"].items()
                                           if n in (TTFT_STAGE, SAMPLE_STAGE)), None))
            settings = dataclasses.replace(settings, hardware=prof_hw)

        compare_records = split_killed(load_records(args.compare))[0] if args.compare else None
        dataset = args.dataset
        if dataset is None and args.compare and _find_challenges(args.compare):
            dataset = _find_challenges(args.compare)        # plan exactly the measured run's tasks
        if dataset is None and settings.dataset and (REPO / settings.dataset).exists():
            dataset = REPO / settings.dataset
        if dataset is None:
            dataset = _find_challenges(args.profile)
        if dataset is None:
            print("error: no target tasks: pass --dataset", file=sys.stderr)
            return 2
        tasks = all_tasks = load_tasks(dataset)
        n = args.tasks
        if args.task_ids:
            ids = [t.strip() for t in args.task_ids.split(",") if t.strip()]
            missing = [t for t in ids if t not in tasks]
            if missing:
                print(f"error: task ids not in {dataset}: {', '.join(missing)}", file=sys.stderr)
                return 2
            tasks, n = {t: tasks[t] for t in ids}, len(ids)
        profile_source = args.profile_dataset or _find_challenges(args.profile)
        profile_tasks = load_tasks(profile_source) if profile_source else all_tasks

        tokenizer = load_tokenizer(args.tokenizer)
        prompting = resolve_prompting(find_run_config(resolve_model_path(args.tokenizer))[0], args.format,
                                      args.encoder, args.prompt_version, tokenizer)
        model, targets, calib = prepare(settings, records, tasks, n, tokenizer=tokenizer, profile_tasks=profile_tasks,
                                        select=select, seed=args.seed, encoder=prompting.grid_encoder,
                                        prompt_version=prompting.prompt_version)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    result = project(model, targets, settings)
    result.update(task_ids=[t.task_id for t in targets], model=_model_dict(model, settings),
                  notes=_notes(model, settings, calib))
    fitted = fit(model, targets, settings) if args.fit else None
    comparison = compare(result, compare_records) if compare_records else None
    print(format_plan(result, fitted, comparison))
    if args.json:
        write_json_atomic(args.json, {"plan": result, "fit": fitted, "compare": comparison}, indent=1)
    return 0
