"""Augmented sampling: tasks -> augmented prompts -> engine -> parsed, inverted predictions (JSONL).

The plan and the prediction record (steps 1 and 3 below) are `sampling/plan.py`; the predictions
file (resume) and the run loop (chunks, deadline, watchdog; generate-inputs runs its own plan
through it) are `sampling/run_loop.py`; this module is the stage and its CLI.

    python -m pipeline sample --model MODEL --dataset CHALLENGES.json --output PRED.jsonl \\
        --predictions_per_task 8 [--adapters_dir DIR] [--adapter_path A] [--engine auto|vllm|transformers]

1. **Plan** (`build_plan`): for every task, `predictions_per_task` views spread evenly over the 8
   dihedral transforms (view i uses transform i % 8), each with its own colour map and train
   order, drawn from a generator seeded by (seed, task id): the same seed gives the same plan
   whatever tasks are selected.  Each view gives one prompt per test input (no train/test
   swap).  A prompt too long for `max_model_len` drops trailing train pairs until it fits;
   one that never fits becomes an error record.  `max_tokens` is derived, not a constant:
   "max" = the tokens of the largest 30×30 answer for this encoder and tokenizer, "task" = of the
   largest answer this task plausibly has (see `task_answer_side`), or a number.
2. **Generate** in chunks of `--batch_size` prompts (one engine `generate` per chunk: vLLM
   batches the whole chunk, mixing tasks and their LoRAs); every chunk is appended to the
   predictions file as soon as it returns, under a watchdog and the `--deadline`.  Under a
   deadline the anytime rule (`sampling/anytime.py`) orders and sizes the chunks: a first chunk
   of one item, the shortest, then chunks grown from the measured speed.  Fenced
   answers stop at their closing ``` (a stop string), not only at the end-of-turn token.
3. **Records**, one per sample: `{"task_id", "test_index", "sample_index", "augmentation"
   (Augmentation.to_dict()), "text", "grid" (original frame, or None), "error" (None, or why
   there is no grid), "cumulative_logprob", "n_tokens", "finish_reason", "prompt_tokens"}`.
   Unparseable output is a record, never a crash.  A rerun resumes: it skips the (task_id,
   test_index, sample_index) already in the file (a torn last line is cut off first) and
   refuses to mix settings (`<output>.meta.json`).

`python -m pipeline eval-checkpoint CHECKPOINT --predictions_per_task 8 [--dataset ...]` reads
the checkpoint's cfg.json, samples, votes, and prints the metric line of the raw predictions and
of the vote, caching its files in `<checkpoint parent>/evaluations/<checkpoint name>/`.

Exit codes of `sample`: 0 done, or stopped by `--deadline` (what finished is kept; unfinished
tasks are "skipped" timing records); 3 when the watchdog caught a hung generate (also kept).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Mapping, Sequence

from pipeline.core.adapters import find_adapters
from pipeline.core.settings import (SAMPLE, SAMPLE_METHODS, SampleSettings, VLLMSettings, settings_from,
                                    stage_setting_range_problem)
from pipeline.core.stage_args import add_sampling_args, sample_parser
from pipeline.core.determinism import make_deterministic
from pipeline.core.encoders import create_grid_encoder
from pipeline.core.files import check_output
from pipeline.core.model_cfg import find_run_config, read_tokenizer_facts, resolve_prompting
from pipeline.core.models import load_tokenizer, resolve_model_path
from pipeline.sampling.anytime import item_tokens
from pipeline.sampling.engines import choose_engine_noted, make_engine
from pipeline.sampling.generation import cuda_available
from pipeline.sampling.plan import build_plan, model_max_len  # the plan and its records
from pipeline.sampling.run_loop import SampleResult, default_watchdog, open_predictions, run_plan
from pipeline.core.tasks import load_tasks, select_tasks
from pipeline.core.timing import TimingLog

METHODS = SAMPLE_METHODS
EXIT_HUNG = 3


# ----------------------------------------------------------------------------- the stage

def sample(model: str, dataset, output: str | os.PathLike, settings: SampleSettings = SAMPLE, *,
           adapters_dir=None, adapter_path=None, deadline: float | None = None, timing_log=None,
           task_ids: Sequence[str] | None = None, first_n: int | None = None, vllm_options: Mapping | None = None,
           progress: bool = True, engine_instance=None, started_at: float | None = None, log=print,
           timing_stage: str = "sample", search=None) -> SampleResult:
    """The whole stage as a function (the CLI, eval-checkpoint and the tests call it).

    `settings`: the stage's settings (config.SampleSettings, what its CLI is generated from).
    `dataset`: a tasks file/directory or a `{task_id: task}` dict.  `engine_instance`: an
    already started engine (tests share one vLLM engine); it is not closed here.  `search`: the DFS
    that `--method dfs` runs (default `batched_search.search_engine`; tests give a stand-in).  `method`
    "dfs": each augmented prompt is searched instead of sampled (`pipeline.sampling.search`): every
    completion with probability >= `min_prob`, at most `max_candidates`, transformers engine only,
    `dfs_batch_views` prompts of a task together under the `dfs_batch_seconds` / `dfs_task_seconds`
    caps (`pipeline.sampling.batched_search`), each prompt's records written as it finishes;
    `dfs_speculative`: each view first verifies the answers its test input's other views found
    (`pipeline.sampling.speculation`: the same result, fewer one-token forwards)."""
    s = settings
    if s.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {s.method!r}")
    if s.method == "dfs":
        for name in ("min_prob", "max_candidates", "dfs_batch_views", "dfs_batch_seconds", "dfs_task_seconds"):
            problem = stage_setting_range_problem("sample_settings", name, getattr(s, name))
            if problem:
                raise ValueError(f"--{problem}")

    started_at = time.time() if started_at is None else started_at
    deadline_at = started_at + deadline if deadline else None
    timing = TimingLog(timing_log, timing_stage)

    tasks = dataset if isinstance(dataset, Mapping) else load_tasks(dataset, solutions=None)
    tasks = select_tasks(select_tasks(tasks, task_ids, first_n), sort_by_size=True)  # small first: most tasks per deadline

    model_dir = resolve_model_path(model)
    cfg, cfg_path = find_run_config(adapter_path, model_dir, adapters_dir)
    prompting = resolve_prompting(cfg, s.format, s.grid_encoder, s.prompt_version, read_tokenizer_facts(model_dir))
    version = prompting.prompt_version
    encoder = create_grid_encoder(prompting.grid_encoder)
    adapters, fell_back = find_adapters(tasks, adapters_dir, adapter_path)
    n_own = len(tasks) - len(fell_back)
    max_len = model_max_len(model_dir, s.max_model_len)

    with timing.measure("phase", phase="load_tokenizer"):  # the first transformers import, when the engine is not up
        tokenizer = engine_instance.tokenizer if engine_instance is not None else load_tokenizer(model_dir)
    with timing.measure("phase", phase="plan") as fields:
        plan = build_plan(tasks, tokenizer, encoder, version, s.predictions_per_task, s.seed, adapters, s.max_tokens, max_len)
        fields.update(predictions=len(plan), prompt_tokens=sum(len(i.prompt_ids) for i in plan))
    meta = {"model": str(model_dir), "adapters_dir": str(adapters_dir) if adapters_dir else None,
            "adapter_path": str(adapter_path) if adapter_path else None, "format": prompting.format,
            "grid_encoder": encoder.spec,
            "prompt_version": version, "seed": s.seed, "predictions_per_task": s.predictions_per_task,
            "temperature": s.temperature, "max_tokens": str(s.max_tokens), "max_model_len": max_len, "dtype": s.dtype}
    if s.method == "dfs":
        meta.update(method=s.method, min_prob=s.min_prob, max_candidates=s.max_candidates)
    done = open_predictions(output, meta)
    pending = sum(1 for item in plan if item.key not in done)
    log(f"sample: {len(tasks)} tasks, {len(plan)} samples ({s.predictions_per_task} per test input), "
        f"{len(done)} already in {output}, {pending} to do; format {prompting.format} ({prompting.source}), encoder {encoder.spec}, prompt {version}"
        f"{f' (from {cfg_path})' if cfg_path else ''}; adapters: {n_own} per-task, {len(fell_back)} on "
        f"{'--adapter_path' if adapter_path else 'the base model'}; max_tokens {s.max_tokens} "
        f"(up to {max((i.max_tokens for i in plan), default=0)}), max_model_len {max_len}")
    owned = engine_instance is None
    if engine_instance is not None:
        name = engine_instance.name
    else:  # under a deadline the engine's start counts against the time left (anytime.py)
        first = min((item_tokens(i) for i in plan if i.key not in done and i.error is None), default=0)
        name, note = choose_engine_noted(s.engine, any(adapters.values()),
                                         None if deadline_at is None else deadline_at - time.time(), first)
        if note:
            log(f"sample: {note}")
    proposals = None
    if s.method == "dfs":
        if s.engine == "vllm":
            raise ValueError("--method dfs needs the transformers engine (vLLM has no such search)")
        name = engine_instance.name if engine_instance is not None else "transformers"
        if search is None:  # the search's modules are imported here only: a notebook whose commands never search leaves them out
            from pipeline.sampling.batched_search import search_engine as search
        # imported under `--method dfs` only, like the search (which imports it too): not under the
        # `dfs_speculative` test, which is on by default and would embed it in every notebook
        from pipeline.sampling.speculation import Proposals
        if s.dfs_speculative:
            proposals = Proposals(tokenizer, encoder, version)
    if not pending:
        return SampleResult("complete", 0, len(done), len(plan), [], time.time() - started_at, 0, name)
    if deadline_at is not None and time.time() >= deadline_at:
        unfinished = sorted({i.task_id for i in plan if i.key not in done})
        for task_id in unfinished:
            timing.record("skipped", 0.0, task_id, reason="deadline before the engine started")
        return SampleResult("deadline", 0, len(done), len(plan), unfinished, time.time() - started_at, 0, name)
    if engine_instance is None:
        if s.deterministic:
            make_deterministic()
        with timing.measure("phase", phase="load_model", engine=name):
            engine_instance = make_engine(name, model_dir, tokenizer, adapters=sorted({a for a in adapters.values() if a}),
                                          max_model_len=max_len, batch_size=s.batch_size, seed=s.seed,
                                          vllm_options=dict(vllm_options or {}), dtype=s.dtype)
    chunk = s.batch_size or (512 if name == "vllm" else getattr(engine_instance, "batch_size", 8))
    on_cuda = cuda_available()
    watchdog = s.watchdog if s.watchdog is not None else \
        default_watchdog(chunk, max((i.max_tokens for i in plan), default=1), on_cuda)
    result = None
    try:
        with timing.measure("stage", engine=name) as fields:
            result = run_plan(plan, engine_instance, output, encoder, temperature=s.temperature, batch_size=chunk,
                              deadline_at=deadline_at, watchdog_s=watchdog if watchdog > 0 else None,
                              timing=timing, done=done, progress=progress,
                              min_prob=s.min_prob if s.method == "dfs" else None, max_candidates=s.max_candidates,
                              search=search,
                              search_caps={"batch_views": s.dfs_batch_views, "batch_seconds": s.dfs_batch_seconds,
                                           "task_seconds": s.dfs_task_seconds},
                              proposals=proposals)
            fields.update(predictions=result.written, generated_tokens=result.generated_tokens, status=result.status)
    finally:
        if owned and not (result is not None and result.abandoned):  # an engine still busy cannot be closed
            engine_instance.close()
    rate = result.generated_tokens / result.seconds if result.seconds else 0.0
    log(f"sample: {result.status}: wrote {result.written} predictions ({result.generated_tokens} generated tokens, "
        f"{rate:.1f} tokens/s) in {result.seconds:.0f} s with {name}"
        + (f"; {len(result.skipped_tasks)} task(s) unfinished" if result.skipped_tasks else "") + f" -> {output}")
    return result


# ----------------------------------------------------------------------------- CLI

def vllm_options_from(args) -> dict:
    """The vLLM engine's options from the flags `add_sampling_args` adds (VLLMSettings; the unset
    optional ones left to the engine)."""
    return {k: v for k, v in dataclasses.asdict(settings_from(VLLMSettings, args)).items() if v is not None}


def exit_code_after(result: SampleResult, stage: str = "sample", records: str = "predictions") -> int:
    """0, or leave at once when a generate call is still running in its thread: it cannot be
    stopped, and letting the interpreter shut down under it aborts the process (a C++
    "terminate called without an active exception", seen when the deadline fell mid-call).
    `result`: anything with `status` and `abandoned` (generate-inputs' result too)."""
    code = EXIT_HUNG if result.status == "hung" else 0
    if result.status == "hung":
        print(f"{stage}: the watchdog caught a hung generate; the {records} written so far are kept "
              "(rerun to resume)", file=sys.stderr)
    if result.abandoned:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # every record and timing line is already flushed and fsynced
    return code


def main(argv: Sequence[str] | None = None) -> int:
    started_at = time.time()
    parser = sample_parser()  # pipeline/core/stage_args.py: the Kaggle run checks its commands with it
    args = parser.parse_args(argv)
    if args.predictions_per_task < 1:
        parser.error("--predictions_per_task must be >= 1")
    try:
        check_output(args.output, {"--dataset": args.dataset, "--adapter_path": args.adapter_path})
        result = sample(args.model, args.dataset, args.output, adapters_dir=args.adapters_dir,
                        adapter_path=args.adapter_path, deadline=args.deadline, timing_log=args.timing_log,
                        task_ids=args.task_ids, first_n=args.first_n, vllm_options=vllm_options_from(args),
                        progress=not args.quiet, started_at=started_at, timing_stage=args.timing_stage,
                        settings=settings_from(SampleSettings, args))
    except (OSError, ValueError) as e:
        print(f"sample: {e}", file=sys.stderr)
        return 1
    return exit_code_after(result)


__all__ = ["sample", "add_sampling_args", "vllm_options_from", "exit_code_after", "main"]
