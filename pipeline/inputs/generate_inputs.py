"""New grids that follow a task's input (or output) distribution, validated, as an expanded dataset.

    python -m pipeline generate-inputs --model MODEL [--adapter_path A] --dataset TASKS.json \\
        --n_per_task 8 [--temperature 0.9] --output NEW.json [--deadline SECONDS] \\
        [--label_with OUTPUT_MODEL [--label_adapter A] --label_predictions 8 --min_vote_margin 2]

(spec §10, the seed's Iteration 22 "learn the input distribution" and its next step: an expanded
evaluation set "similar to RE-ARC, but using my model".)  See docs/generate-inputs.md.

1. **Plan.**  For every task the model sees *all* known inputs (train and test; the original
   found that leaving the test input out makes the model copy it) in the `input-from-inputs-v0`
   prompt, i.e. the task `{"train": [every known input], "test": [a dummy]}` whose template only
   renders the train inputs.  `--mode outputs` does the same with `output-from-outputs-v0` and
   the known outputs (train outputs, plus test outputs when the dataset has them).  Each of the
   `n_per_task` samples is drawn under its own augmentation (`augment.inference_augmentations`:
   spread over the 8 dihedral transforms, each with its own colour map and context order) with
   its own seed, at `--temperature` (default 0.9, the seed's notebook 015).
2. **Generate** through the sampling stage's run loop (`run_loop.run_plan`): chunks of
   `--batch_size` prompts, each appended to `NEW.generations.jsonl` as it returns (the raw
   samples, `generation_record`), under the watchdog and `--deadline` (with a deadline, the
   anytime rule of `sampling/anytime.py`: one item first, the shortest).  A rerun with the same
   `--output` resumes: the samples already in the file are not generated again, and other
   settings are refused (`NEW.generations.jsonl.meta.json`).
3. **Validate** every generated sample, read back from that file in sample order, with the named
   rules of `generated_grids` (mapped back with `Augmentation.invert_grid`); rejects are kept with
   their reasons.  Optionally **label** the accepted new inputs with an output model (the sampling
   stage + voting v2) and keep only labels with a clear vote margin.
4. **Write** the expanded dataset in the combined task format, the rejects, a Markdown summary and
   one picture per task (`expanded_dataset`).  A run stopped by the deadline or the watchdog
   writes them too, from what was generated; the summary says how many samples are missing.

Outputs: `NEW.json` (the dataset), `NEW.rejects.json`, `NEW.summary.md`, `NEW.generations.jsonl`
(+ `.meta.json`), `NEW.labels.jsonl` (label predictions, when labelling) and
`<pictures_dir>/<task_id>.png` (default `NEW.pictures/`).  Settings: `GenerateSettings` (its
fields generate the CLI).  Exit codes: 0 done or stopped by `--deadline`; 3 when the watchdog
caught a hung generate (what was generated is kept and written).

The plan, its records and their verdicts are `pipeline/inputs/generation_plan.py`; labelling is
`pipeline/inputs/labels.py`; the named rules of a generated grid are `pipeline/inputs/grids.py`.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.files import check_output, write_json_atomic, write_text_atomic
from pipeline.core.formats import ARC24
from pipeline.core.model_cfg import choose_format, config_encoder, find_run_config, read_tokenizer_facts
from pipeline.core.models import load_tokenizer, resolve_model_path
from pipeline.core.settings import add_arguments, setting, settings_from
from pipeline.core.tasks import load_tasks, select_tasks
from pipeline.core.timing import TimingLog
from pipeline.inputs.dataset import build_expanded_dataset, model_trained_for, render_pictures, rule_counts, summary_markdown
from pipeline.inputs.generation_plan import AUGMENTATIONS, build_generation_plan, generation_record, read_generations, validate_plan
from pipeline.inputs.grids import LABEL_RULE, MODES, RULE_HELP
from pipeline.inputs.labels import DEFAULT_LABEL_PROMPT_VERSION, label_generations
from pipeline.sampling.anytime import item_tokens
from pipeline.sampling.engines import choose_engine_noted, make_engine
from pipeline.sampling.generation import cuda_available
from pipeline.sampling.plan import model_max_len
from pipeline.sampling.run_loop import default_watchdog, open_predictions, run_plan
from pipeline.sampling.sample import exit_code_after

GENERATIONS_SUFFIX = ".generations.jsonl"


# ----------------------------------------------------------------------------- settings

def _budget(value: str) -> str | int:
    """A max_tokens flag: a number, or the name of a policy."""
    return int(value) if value.isdigit() else value


@dataclass(frozen=True)
class GenerateSettings:
    """generate-inputs' settings: `python -m pipeline generate-inputs --help` is generated from these
    fields, and `generate_inputs()` is called with one (default `GENERATE`)."""
    mode: str = setting("inputs", "inputs: new inputs (input-from-inputs-v0); outputs: new outputs "
                                  "(output-from-outputs-v0; no labelling)", choices=tuple(MODES))
    n_per_task: int = setting(8, "samples per task; each may be rejected")
    temperature: float = setting(0.9, "sampling temperature (as the seed's notebook 015; lower gives fewer broken "
                                      "grids and more copies)")
    seed: int = setting(0, "seeds the augmentations (per task) and sampling")
    augmentation: str = setting("full", "per sample: full = dihedral x colour map x context order (notebook 021), "
                                        "dihedral = the same with the task's own colours, none = the prompt as is "
                                        "(notebook 015)", choices=AUGMENTATIONS)
    engine: str = setting("auto", "auto: the rule of engines.choose_engine (vLLM on CUDA; on CPU vLLM without an "
                                  "adapter, transformers with one)", choices=("auto", "vllm", "transformers"))
    grid_encoder: str | None = setting(None, f"default: from cfg.json, else {DEFAULT_ENCODER}")
    max_tokens: str | int = setting("pool", "per sample: 'pool' (a square grid of the task's longest known side "
                                            "+ 2), 'max' (30x30) or a number", type=_budget)
    max_model_len: int | None = setting(None, "context length (default 10240 capped by the model's)")
    batch_size: int | None = setting(None, "prompts per engine call, the unit appended to the generations file "
                                           "(default: vLLM 512, transformers 8)")
    watchdog: float | None = setting(None, "seconds one generate call may take before it counts as hung (default: "
                                           "as the sampling stage's; 0 disables)")
    label_predictions: int = setting(8, "--label_with: augmented predictions per new input")
    min_votes: int = setting(2, "--label_with: the top label needs at least this many votes")
    min_vote_margin: int = setting(2, "--label_with: ... and this many more than the runner-up")
    label_temperature: float = setting(0.0, "--label_with: sampling temperature (greedy, spec 6.7)")
    label_prompt_version: str | None = setting(None, "--label_with: default the label model's output-from-examples "
                                                     f"version (cfg.json), else {DEFAULT_LABEL_PROMPT_VERSION}")
    label_max_tokens: str | int = setting("task", "--label_with: the sampling stage's max_tokens policy", type=_budget)
    max_picture_columns: int = setting(10, "grids per picture row")


GENERATE = GenerateSettings()


# ----------------------------------------------------------------------------- the stage

def side_paths(output) -> dict:
    output = Path(output)
    stem = output.name.removesuffix(".json")
    return {"rejects": output.with_name(stem + ".rejects.json"), "summary": output.with_name(stem + ".summary.md"),
            "labels": output.with_name(stem + ".labels.jsonl"), "pictures": output.with_name(stem + ".pictures"),
            "generations": output.with_name(stem + GENERATIONS_SUFFIX)}


@dataclass
class GenerateResult:
    dataset: dict
    generations: dict
    paths: dict
    seconds: float
    summary_line: str
    status: str = "complete"    # "complete" | "deadline" | "hung" (generating or labelling)
    pending: int = 0            # planned samples not generated yet (a rerun generates them)
    written: int = 0            # generation records written by this run
    abandoned: bool = False     # a generate call was left running in its thread (the watchdog)


def generate_inputs(model: str, dataset, output, settings: GenerateSettings = GENERATE, *, adapter_path=None,
                    task_ids: Sequence[str] | None = None, first_n: int | None = None, smallest_first: bool = False,
                    label_with: str | None = None, label_adapter=None, pictures_dir=None, pictures: bool = True,
                    deadline: float | None = None, started_at: float | None = None, timing_log=None,
                    progress: bool = True, engine_instance=None, label_engine_instance=None,
                    log: Callable = print) -> GenerateResult:
    """The whole stage as a function (the CLI and the tests call it).  `dataset`: a tasks
    file/directory or a `{task_id: task}` dict.  `engine_instance` / `label_engine_instance`: already
    started engines (not closed here).  `deadline`: seconds from `started_at` (default: now) after
    which it stops generating (and labelling) and writes what it has; `watchdog`: see
    `GenerateSettings`.  A rerun with the same `output` resumes the generations file."""
    s = settings

    started = time.time() if started_at is None else started_at
    deadline_at = started + deadline if deadline else None
    if s.mode not in MODES:
        raise ValueError(f"unknown mode {s.mode!r}; known: {', '.join(MODES)}")
    if label_with and s.mode != "inputs":
        raise ValueError("--label_with labels new inputs: it only applies to --mode inputs (generated outputs "
                         "join the output pool unlabelled)")
    if s.n_per_task < 1:
        raise ValueError("n_per_task must be >= 1")
    version = MODES[s.mode][0]
    timing = TimingLog(timing_log, "generate-inputs")
    tasks = dataset if isinstance(dataset, Mapping) else load_tasks(dataset)
    tasks = select_tasks(dict(tasks), task_ids, first_n, sort_by_size=smallest_first)
    if s.mode == "outputs":
        tasks = {tid: t for tid, t in tasks.items() if any("output" in p for p in t["train"] + t["test"])}
    paths = side_paths(output)
    if pictures_dir:
        paths["pictures"] = Path(pictures_dir)

    model_dir = resolve_model_path(model)
    cfg, cfg_path = find_run_config(adapter_path, model_dir)
    weights_format = choose_format(cfg, read_tokenizer_facts(model_dir))
    if weights_format.format != ARC24:
        raise ValueError(f"{cfg_path or model_dir}: format {weights_format.format!r} ({weights_format.source}) has no "
                         f"input-from-inputs prompt; generating inputs needs weights in the arc24 format")
    encoder = create_grid_encoder(s.grid_encoder or config_encoder(cfg) or DEFAULT_ENCODER)
    max_len = model_max_len(model_dir, s.max_model_len)
    label_dir = resolve_model_path(label_with) if label_with else None
    share_engine = label_with is not None and label_dir == model_dir
    adapters = [str(Path(a).resolve()) for a in (adapter_path, label_adapter if share_engine else None) if a]

    with timing.measure("phase", phase="load_tokenizer"):  # the first transformers import, when the engine is not up
        tokenizer = engine_instance.tokenizer if engine_instance is not None else load_tokenizer(model_dir)
    with timing.measure("phase", phase="plan") as fields:
        plan = build_generation_plan(tasks, tokenizer, encoder, s.mode, s.n_per_task, s.seed, s.max_tokens, max_len,
                                     adapters[0] if adapter_path else None, augmentation=s.augmentation)
        fields.update(predictions=len(plan), prompt_tokens=sum(len(i.prompt_ids) for i in plan))
    # what decides a sample: a resume with other values would mix two runs in one file
    meta = {"model": str(model_dir), "adapter_path": adapters[0] if adapter_path else None, "mode": s.mode,
            "prompt_version": version, "grid_encoder": encoder.spec, "n_per_task": s.n_per_task,
            "temperature": s.temperature, "seed": s.seed, "augmentation": s.augmentation,
            "max_tokens": str(s.max_tokens),
            "max_model_len": max_len}
    done = open_predictions(paths["generations"], meta)
    to_do = sum(1 for item in plan if item.key not in done)
    if engine_instance is not None:
        name = engine_instance.name
    else:  # under a deadline the engine's start counts against the time left (sampling/anytime.py)
        first = min((item_tokens(i) for i in plan if i.key not in done and i.error is None), default=0)
        name, note = choose_engine_noted(s.engine, bool(adapters),
                                         None if deadline_at is None else deadline_at - time.time(), first)
        if note:
            log(f"generate-inputs: {note}")
    log(f"generate-inputs: {len(tasks)} tasks x {s.n_per_task} samples ({version}), encoder {encoder.spec}"
        f"{f' (from {cfg_path})' if cfg_path else ''}, temperature {s.temperature}, max_tokens {s.max_tokens} "
        f"(up to {max((i.max_tokens for i in plan), default=0)}), engine {name}; {len(done)} already in "
        f"{paths['generations']}, {to_do} to do")
    owned = engine_instance is None
    watchdog = s.watchdog  # resolved once the engine's chunk is known; labelling gets the same
    status, written, abandoned = "complete", 0, False
    try:
        if to_do and deadline_at is not None and time.time() >= deadline_at:
            status = "deadline"
            for task_id in sorted({i.task_id for i in plan if i.key not in done}):
                timing.record("skipped", 0.0, task_id, reason="deadline before the engine started")
        elif to_do:
            if owned:
                with timing.measure("phase", phase="load_model", engine=name):
                    engine_instance = make_engine(name, model_dir, tokenizer, adapters=adapters, max_model_len=max_len,
                                                  batch_size=s.batch_size, seed=s.seed)
            chunk = s.batch_size or (512 if name == "vllm" else getattr(engine_instance, "batch_size", 8))
            if watchdog is None:
                watchdog = default_watchdog(chunk, max((i.max_tokens for i in plan), default=1), cuda_available())
            with timing.measure("stage", engine=name) as fields:
                run = run_plan(plan, engine_instance, paths["generations"], encoder, temperature=s.temperature,
                               batch_size=chunk, deadline_at=deadline_at, watchdog_s=watchdog if watchdog > 0 else None,
                               timing=timing, done=done, progress=progress, record=generation_record,
                               desc="generate")
                fields.update(predictions=run.written, generated_tokens=run.generated_tokens, status=run.status)
            status, written, abandoned = run.status, run.written, run.abandoned
        records = read_generations(paths["generations"], plan)
        generations = validate_plan(tasks, plan, records, encoder, s.mode)
        if label_with and status == "hung":  # the engine is still busy in its thread: no labels this run
            for g in (g for gens in generations.values() for g in gens if g.accepted):
                g.verdict.failures.append((LABEL_RULE, "not labelled: the watchdog caught a hung generate "
                                                       "(a rerun labels it)"))
        elif label_with:
            if owned and not share_engine and engine_instance is not None:
                engine_instance.close()
                engine_instance, owned = None, False
            with timing.measure("phase", phase="label"):
                labelling = label_generations(
                    tasks, generations, label_with, paths["labels"], label_adapter=label_adapter,
                    predictions=s.label_predictions, min_votes=s.min_votes, min_margin=s.min_vote_margin,
                    engine=s.engine,
                    temperature=s.label_temperature, seed=s.seed, prompt_version=s.label_prompt_version,
                    max_tokens=s.label_max_tokens, max_model_len=s.max_model_len, batch_size=s.batch_size,
                    engine_instance=label_engine_instance or (engine_instance if share_engine else None),
                    progress=progress, log=log, deadline=deadline, started_at=started, watchdog=watchdog or None)
            if labelling is not None and labelling.status != "complete":
                abandoned = abandoned or labelling.abandoned
                status = "hung" if "hung" in (status, labelling.status) else labelling.status
    finally:
        if owned and engine_instance is not None and not abandoned:  # an engine still busy cannot be closed
            engine_instance.close()

    pending = sum(1 for item, record in zip(plan, records) if record is None and item.error is None)
    labelled = label_with is not None
    expanded = build_expanded_dataset(tasks, generations, s.mode, labelled)
    seconds = time.time() - started
    facts = {"model": str(model), "adapter_path": str(adapter_path) if adapter_path else None,
             "dataset": str(dataset) if not isinstance(dataset, Mapping) else "<in memory>", "mode": s.mode,
             "prompt_version": version, "n_per_task": s.n_per_task, "temperature": s.temperature, "seed": s.seed,
             "augmentation": s.augmentation, "grid_encoder": encoder.spec, "engine": name,
             "max_tokens": str(s.max_tokens), "max_model_len": max_len,
             "label_with": label_with, "label_adapter": str(label_adapter) if label_adapter else None,
             "label_predictions": s.label_predictions, "min_votes": s.min_votes,
             "min_vote_margin": s.min_vote_margin,
             "output": str(output), "rejects": str(paths["rejects"]), "generations": str(paths["generations"]),
             "status": status, "planned": len(plan), "pending": pending}
    rejects = {tid: [g.to_reject_record() for g in gens if not g.accepted]
               for tid, gens in generations.items()}
    with timing.measure("phase", phase="write"):
        write_json_atomic(output, expanded)
        write_json_atomic(paths["rejects"], {"settings": facts, "rules": RULE_HELP, "tasks": rejects}, indent=1)
        trained = model_trained_for(cfg, version)
        write_text_atomic(paths["summary"], summary_markdown(generations, facts, seconds, trained, labelled))
        if pictures:
            render_pictures(tasks, generations, paths["pictures"], s.mode, s.max_picture_columns, labelled)
    all_gens = [g for gens in generations.values() for g in gens]
    counts = rule_counts(all_gens)
    n_acc = sum(1 for g in all_gens if g.accepted)
    per_rule = ", ".join(f"{r} {n}" for r, n in counts.items() if n)
    line = (f"generate-inputs: {len(tasks)} tasks, {len(all_gens)} samples: {n_acc} accepted"
            + (" and labelled" if labelled else "") + f", {len(all_gens) - n_acc} rejected"
            + (f" ({per_rule})" if per_rule else "")
            + (f"; {pending} not generated ({status}: rerun with the same --output to resume)" if pending else "")
            + f" -> {output} ({len(expanded)} tasks) in {time.time() - started:.0f} s")
    log(line)
    return GenerateResult(expanded, generations, paths, time.time() - started, line, status, pending, written,
                          abandoned)


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline generate-inputs",
        description="Generate new input grids per task (input-from-inputs-v0, all known inputs in context, one "
                    "augmentation per sample), validate them with named rules, and write an expanded dataset "
                    "(combined task format), the rejects, a Markdown summary and one PNG per task. The raw "
                    "samples go to NEW.generations.jsonl as they are generated: a rerun with the same --output "
                    "resumes.")
    parser.add_argument("--model", required=True, help="'embedded', a transformers directory or a .gguf")
    parser.add_argument("--adapter_path", help="LoRA adapter of the generating model (its cfg.json gives the encoder)")
    parser.add_argument("--dataset", required=True, help="tasks file or directory (solutions merged when found)")
    parser.add_argument("--task_ids", nargs="+", metavar="ID", help="only these tasks")
    parser.add_argument("--first_n", type=int, metavar="N", help="only the first N tasks (after --task_ids)")
    parser.add_argument("--smallest_first", action="store_true",
                        help="sort the tasks by size (cells of all grids) before --first_n: the N smallest")
    parser.add_argument("--output", required=True,
                        help="expanded dataset NEW.json (+ NEW.rejects.json, NEW.summary.md, NEW.generations.jsonl)")
    parser.add_argument("--pictures_dir", help="PNG folder (default: NEW.pictures beside the output)")
    parser.add_argument("--no_pictures", dest="pictures", action="store_false", help="skip the PNGs")
    parser.add_argument("--deadline", type=float,
                        help="wall seconds this stage may use; then it stops cleanly (exit 0) and writes what was "
                             "generated (a rerun with the same --output resumes)")
    parser.add_argument("--timing_log", help="timing JSONL to append to")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    g = parser.add_argument_group("labelling (--mode inputs)")
    g.add_argument("--label_with", metavar="OUTPUT_MODEL",
                   help="label each accepted new input with this output model (sampling + voting v2)")
    g.add_argument("--label_adapter", help="LoRA adapter of the label model")
    add_arguments(parser.add_argument_group("settings"), GenerateSettings)  # one flag per field, with its default
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    started_at = time.time()
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from(GenerateSettings, args)
    if settings.n_per_task < 1:
        parser.error("--n_per_task must be >= 1")
    if args.label_with is None and (args.label_adapter):
        parser.error("--label_adapter needs --label_with")
    if args.label_with and settings.mode != "inputs":
        parser.error("--label_with applies to --mode inputs only")
    if args.deadline is not None and args.deadline <= 0:
        parser.error(f"--deadline must be positive, got {args.deadline}")
    try:
        check_output(args.output, {"--dataset": args.dataset, "--adapter_path": args.adapter_path})
        result = generate_inputs(args.model, args.dataset, args.output, adapter_path=args.adapter_path,
                                 task_ids=args.task_ids, first_n=args.first_n, smallest_first=args.smallest_first,
                                 label_with=args.label_with, label_adapter=args.label_adapter,
                                 pictures_dir=args.pictures_dir, pictures=args.pictures, deadline=args.deadline,
                                 started_at=started_at, timing_log=args.timing_log, progress=not args.quiet,
                                 settings=settings)
    except (OSError, ValueError) as e:
        print(f"generate-inputs: {e}", file=sys.stderr)
        return 1
    return exit_code_after(result, "generate-inputs", "generations")


__all__ = ["GenerateSettings", "GENERATE", "build_generation_plan", "generation_record",
           "read_generations", "validate_plan", "label_generations", "generate_inputs",
           "build_parser", "main"]
