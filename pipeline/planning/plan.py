"""Budget planner: project a competition run's time (and GPU memory) before submitting.

    python -m pipeline plan --config kaggle/configs/NAME.yaml [--profile RUN_DIR] [--model NAME|PATH]
        [--profiled_model NAME|PATH] [--tasks N] [--dataset FILE] [--task_ids A,B,...]
        [--select random|smallest|first] [--smoke] [--steps S] [--predictions_per_task P]
        [--hardware T4|L4|A100|H100|H200|cpu] [--workers W] [--model_scale X] [--margin 0.15] [--fit]
        [--compare RUN_DIR] [--json OUT.json]

The model a plan is for is the config's (or `--model`'s), never the profile's by default
(`pipeline/planning/planned_model.py`); the target tasks are the competition's size (the config's
`kaggle_competition`, `pipeline/core/competitions.py`: its hidden set's task count drawn from its
size-proxy file); without `--profile` the cost model is `planning/datasheet.py`'s (not steps 1, 3).

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
`--fit` chooses memory knobs (`memory_plan.fit_memory`), then searches steps and predictions per
task (multiples of 8) for the largest that fit (`fit_search.fit`). `--compare RUN_DIR` puts a
measured run beside the projection. This module reads the settings from a config
(`settings_from_config`), prepares and runs a projection (`prepare`, `plan`) and holds the CLI. The
cost model (step 1 and 3) is `pipeline/planning/cost_model.py`, the token counts (step 2)
`pipeline/planning/token_counts.py`, the settings and the projection itself (steps 4 and 5)
`pipeline/planning/projection.py`, the text and the comparison with a measured run
`pipeline/planning/plan_report.py`. It is over 400 lines because it is the one place that puts a
plan's inputs together (config, profile or datasheet, model, competition tasks, memory) for the
CLI, the notebook's header and the tests; every rule it applies lives in those modules.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.competitions import competition, config_hardware, size_proxy
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
from pipeline.planning.datasheet import Recipe, achieved, datasheet_cost_model, recipe_of
from pipeline.planning.fit_search import fit  # noqa: F401 (plan.fit: the search, re-exported)
from pipeline.planning.memory_plan import fit_memory, stage_memory, with_knobs
from pipeline.planning.plan_report import compare, format_plan
from pipeline.planning.planned_model import PlannedModel, model_scale, planned_model, profiled_model
from pipeline.planning.profile import load_records, profile, split_killed, timing_files
from pipeline.planning.projection import CONFIG_KEYS, DEFAULT_MARGIN, Settings, project
from pipeline.planning.token_counts import SELECTIONS, TaskTokens, select_targets, target_selection, task_tokens

REPO = Path(__file__).resolve().parents[2]
# ----------------------------------------------------------------------------- settings

def config_values(config: str | Path | Mapping | None) -> dict:
    """A config's keys as `settings.load_config` reads and checks them (as the notebook reads it)."""
    return {} if config is None else dataclasses.asdict(load_config(config))


def settings_from_config(config: str | Path | Mapping | None, smoke: bool = False, **overrides) -> Settings:
    """Settings from a `kaggle/configs/*.yaml` (or its dict); `overrides` that are not None win.

    The keys named in CONFIG_KEYS, `devices` (one TTFT worker per entry; one sampling worker per
    cuda device, as `kaggle/run.py` shards), the machine by `competitions.config_hardware` (the
    rule the run and the builder use), the competition's hidden-set size and size-proxy file (an
    unknown competition is an error: its tasks are never silently the profile's), `ttft_settings`
    and `sample_settings` (the recipe). With `smoke`, the placeholder smoke settings
    (smoke_tasks, smoke_ttft_steps, ...) apply."""
    values = config_values(config)
    kw = {k: values[k] for k in CONFIG_KEYS if values.get(k) is not None}
    if (values.get("sample_settings") or {}).get("method"):  # DFS is priced per node (cost_model.fit_dfs)
        kw["sample_method"] = values["sample_settings"]["method"]
    devices = [str(d) for d in values.get("devices") or []]
    if devices:
        kw["ttft_workers"] = len(devices)
        kw["sample_workers"] = sampling_workers(devices)
    entry = competition(values.get("kaggle_competition"))
    machine = config_hardware(values.get("hardware"), values.get("kaggle_competition"), devices)
    if machine:
        kw["hardware"] = machine
    if entry:
        kw["n_tasks"], kw["dataset"] = entry.tasks, str(size_proxy(entry, REPO).relative_to(REPO))
    if values.get("local_source_dir") and not entry:  # the local dry run: its evaluation tasks
        kw["dataset"] = str(Path(values["local_source_dir"]) / "arc-agi_evaluation_challenges.json")
    ttft_options = dict(values.get("ttft_settings") or {})
    kw["ttft_options"] = tuple(sorted(ttft_options.items()))
    kw["sample_options"] = tuple(sorted((values.get("sample_settings") or {}).items()))
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


def recipe(s: Settings) -> Recipe:  # what the datasheet cost model and the memory model read
    return recipe_of(dict(s.ttft_options), dict(s.sample_options), s.engine, s.predictions_per_task, s.hardware)


def prepare(s: Settings, profile_records: Sequence[dict], tasks: Mapping, n_tasks: int | None = None, *,
            tokenizer=None, profile_tasks: Mapping | None = None, select: str = "random", seed: int = 0,
            encoder: str | None = None, prompt_version: str = DEFAULT_PROMPT_VERSION,
            cost_model: CostModel | None = None
            ) -> tuple[CostModel, list[TaskTokens], dict[str, TaskTokens]]:
    """(cost model, target TaskTokens, profiled tasks' TaskTokens) for `project` and `fit`.

    `tasks` and `profile_tasks` are task JSON dicts or {id: TaskTokens}; JSON is counted with
    `tokenizer` (default: the embedded SmolLM2 tokenizer). Without `profile_tasks` the profiled
    tasks are looked up in `tasks`. With `cost_model` (the datasheet's) nothing is fitted."""
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
    if cost_model is not None:
        return cost_model, targets, {}
    profiled_ids = {str(r["task_id"]) for r in profile_records if r.get("task_id") is not None}
    source = profile_tasks if profile_tasks is not None else tasks
    calib = as_tokens({t: v for t, v in source.items() if t in profiled_ids})
    return fit_cost_model(profile_records, calib, s.ttft_batch_size), targets, calib


def plan(config, profile_records: Sequence[dict] | None, tasks: Mapping, n_tasks: int | None = None, *,
         smoke: bool = False, planned: PlannedModel | None = None, **kwargs) -> dict:
    """Project a run of `config` (a YAML path, a dict or Settings; `kwargs` that are Settings
    fields override it) from a profile's records, or without one (None) from the datasheet for
    the `planned` model, onto N of `tasks` (see `prepare`; with `smoke`, the tasks the smoke run
    takes). With `planned`, the plan names it and holds its GPU memory per stage."""
    kwargs["select"] = target_selection(kwargs.get("select"), smoke)
    fields = {f.name for f in dataclasses.fields(Settings)}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    if isinstance(config, Settings):
        s = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    else:
        s = settings_from_config(config, smoke=smoke, **overrides)
    if not profile_records:
        if planned is None:
            raise ValueError("a plan without a profile needs the model it projects (--model or the config's)")
        kwargs["cost_model"] = datasheet_cost_model(planned, s.hardware, recipe(s))
    model, targets, calib = prepare(s, profile_records or [], tasks, n_tasks, **kwargs)
    return finish(project(model, targets, s), model, targets, s, calib, planned, datasheet=not profile_records)


def finish(result: dict, model: CostModel, targets: Sequence[TaskTokens], s: Settings, calib: Mapping,
           planned: PlannedModel | None, datasheet: bool) -> dict:
    """A projection with what the printed plan adds: task ids, the cost model, notes, the model and its memory."""
    result.update(task_ids=[t.task_id for t in targets], model=_model_dict(model, s),
                  notes=_notes(model, s, calib, datasheet))
    result["planned_model"] = planned.describe() if planned else None
    result["memory"] = stage_memory(planned, recipe(s), s) if planned else None
    for stage, row in ((result["memory"] or {}).items()):
        if stage in (TTFT_STAGE, SAMPLE_STAGE) and row.get("fits") is not None:   # a stage that OOMs does not fit
            result["checks"][f"{stage}_fits_gpu_memory"] = row["fits"]
    result["fits"] = all(result["checks"].values())
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


def _notes(model: CostModel, s: Settings, calib_tokens: Mapping, datasheet: bool = False) -> list[str]:
    notes = []
    if datasheet:
        a = achieved(s.hardware)
        notes.append(f"no profile: projected from the {s.hardware} datasheet at {a.train:.0%} of its peak FLOP/s "
                     f"({a.source}); trust it to a factor {a.uncertainty:g} either way (kaggle/PLANNER.md)")
    if model.ttft is None:
        notes.append("no TTFT task records in the profile: TTFT projected as 0 s")
    if model.sample is None:
        notes.append("no sampling task records in the profile: sampling projected as 0 s")
    if s.sample_method == "dfs" and model.dfs is None and not datasheet:
        notes.append("method dfs, but the profile has no DFS records counting nodes: projected at greedy rates")
    if s.rescore_views > 0 and model.rescore is None and not datasheet:
        notes.append("no rescore task records in the profile: rescoring projected at sampling's prompt-token rate")
    if not calib_tokens and not datasheet:
        notes.append("no task JSON for the profiled tasks (RUN_DIR/challenges.json or --profile_dataset): "
                     "token counts uncalibrated")
    if model.hardware != s.hardware:
        src, dst = HARDWARE[model.hardware], HARDWARE[s.hardware]
        notes.append(f"profile on {src.name}, plan for {dst.name}: training x{src.train / dst.train:.4g}, "
                     f"generation x{src.decode / dst.decode:.4g} (estimates; fixed costs unscaled)")
    if s.model_scale != 1.0:
        notes.append(f"model terms x{s.model_scale:g} (planned / profiled parameters)")
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
        if value is not None and not (math.isfinite(value) and (value > 0 if low == ">" else value >= 0)):
            problems.append(f"{flag} must be a finite number {low} 0, got {value}")
    for flag in ("workers", "tasks"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            problems.append(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline plan", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="kaggle/configs/NAME.yaml (deadline, devices, steps, predictions, ...)")
    parser.add_argument("--profile", help="run directory (or timing.jsonl) measured on some machine; without "
                                          "one, the projection is the hardware's datasheet's (PLANNER.md)")
    parser.add_argument("--model", help="the model the plan is for: an architecture name or a folder with a "
                                        "config.json (default: the config's model, else its model_architecture)")
    parser.add_argument("--profiled_model", help="the profile's model (default: its predictions.jsonl.meta.json's)")
    parser.add_argument("--dataset", help="target task file (default: the competition's size proxy, else the "
                                          "profile's challenges.json)")
    parser.add_argument("--tasks", type=int, help="number of target tasks, drawn from the dataset's tasks (seeded; "
                                                  "default: the competition's, else all)")
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
    parser.add_argument("--model_scale", type=float,
                        help="target / profiled model parameters (default: from --model and --profiled_model)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="projection error allowance (0.15 = 15 %%)")
    parser.add_argument("--format", choices=FORMAT_NAMES, help="prompt format the run uses (default: the "
                                                                "config's, else --tokenizer's cfg.json, else arc24)")
    parser.add_argument("--encoder", help="arc24 format: grid encoder spec (default: the project's default encoder)")
    parser.add_argument("--prompt_version", help=f"arc24 format: prompt version (default {DEFAULT_PROMPT_VERSION})")
    parser.add_argument("--tokenizer", default="embedded",
                        help="tokenizer to count tokens with: the run's model (default: embedded)")
    parser.add_argument("--fit", action="store_true", help="also choose memory knobs and propose the largest "
                                                           "steps/predictions that fit")
    parser.add_argument("--compare", help="a measured run directory to compare the projection with")
    parser.add_argument("--json", help="write the plan (and fit, comparison) as JSON to this file")
    args = parser.parse_args(argv)
    problems = flag_problems(args)
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2

    try:
        if args.json:
            timing = timing_files(args.profile) if args.profile else None
            check_output(args.json, {"--config": args.config, "--profile": args.profile, "--dataset": args.dataset,
                                     "a timing file": timing}, what="--json")
        values = config_values(args.config)      # a bad config is the first error, as in the notebook builder
        records = []
        if args.profile:
            records, _ = split_killed(load_records(args.profile))
            if not records:
                print(f"error: no timing records under {args.profile}", file=sys.stderr)
                return 1
        select = target_selection(args.select, args.smoke)
        planned = planned_model(args.model, values)
        scale = args.model_scale
        if records and scale is None:
            scale = model_scale(planned, profiled_model(args.profiled_model, args.profile))
        overrides = dict(ttft_steps=args.steps, predictions_per_task=args.predictions_per_task, hardware=args.hardware,
                         deadline_hours=args.deadline_hours, ttft_max_seq_len=args.max_seq_len,
                         margin=args.margin, model_scale=scale)
        if args.workers is not None:
            overrides.update(ttft_workers=args.workers, sample_workers=args.workers)
        settings = settings_from_config(args.config, smoke=args.smoke, **overrides)
        if records and args.hardware is None and args.config is None:  # plan for the profile's own machine
            prof_hw = hardware_name(next((s for n, s in profile(records)["stages"].items()
                                           if n in (TTFT_STAGE, SAMPLE_STAGE)), None))
            settings = dataclasses.replace(settings, hardware=prof_hw)
        memory_fit = fit_memory(planned, recipe(settings), settings) if args.fit else None
        if memory_fit:   # the time search and the plan use the chosen knobs
            settings = with_knobs(settings, memory_fit["changes"])
        compare_records = split_killed(load_records(args.compare))[0] if args.compare else None
        dataset = args.dataset
        if dataset is None and args.compare and _find_challenges(args.compare):
            dataset = _find_challenges(args.compare)        # plan exactly the measured run's tasks
        if dataset is None and settings.dataset and (REPO / settings.dataset).exists():
            dataset = REPO / settings.dataset
        if dataset is None and args.profile:
            dataset = _find_challenges(args.profile)
        if dataset is None:
            print("error: no target tasks: pass --dataset (or a config naming a competition)", file=sys.stderr)
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
        profile_source = args.profile_dataset or (_find_challenges(args.profile) if args.profile else None)
        profile_tasks = load_tasks(profile_source) if profile_source else all_tasks

        tokenizer = load_tokenizer(args.tokenizer)
        prompting = resolve_prompting(find_run_config(resolve_model_path(args.tokenizer))[0],
                                      args.format or values.get("format"), args.encoder, args.prompt_version, tokenizer)
        cost = None if records else datasheet_cost_model(planned, settings.hardware, recipe(settings))
        model, targets, calib = prepare(settings, records, tasks, n, tokenizer=tokenizer, profile_tasks=profile_tasks,
                                        select=select, seed=args.seed, encoder=prompting.grid_encoder,
                                        prompt_version=prompting.prompt_version, cost_model=cost)
        result = finish(project(model, targets, settings), model, targets, settings, calib, planned,
                        datasheet=not records)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    distinct = len(set(t.split("#")[0] for t in result["task_ids"]))
    if distinct < len(result["task_ids"]):
        result["notes"].append(f"{len(result['task_ids'])} tasks drawn with replacement from only {distinct} "
                               f"of {dataset}: pass a larger --dataset for the size distribution")
    result["dataset"] = str(dataset)
    fitted = fit(model, targets, settings) if args.fit else None
    if fitted is not None:
        fitted["memory"] = None if memory_fit is None else {k: v for k, v in memory_fit.items() if k != "recipe"}
    comparison = compare(result, compare_records) if compare_records else None
    print(format_plan(result, fitted, comparison))
    if args.json:
        write_json_atomic(args.json, {"plan": result, "fit": fitted, "compare": comparison}, indent=1)
    return 0
