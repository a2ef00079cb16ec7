"""Augmented sampling: tasks -> augmented prompts -> engine -> parsed, inverted predictions (JSONL).

The plan and the prediction record (steps 1 and 3 below) are `sampling/plan.py`; this module is
the predictions file (resume), the run loop (chunks, deadline, watchdog; generate-inputs runs
its own plan through it), the stage and its CLI.

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
   predictions file as soon as it returns, under a watchdog and the `--deadline`.  Fenced
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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from pipeline.core.adapters import find_adapters
from pipeline.core.settings import SAMPLE, SAMPLE_METHODS, SampleSettings, VLLMSettings, settings_from
from pipeline.core.stage_args import add_sampling_args, sample_parser
from pipeline.core.encoders import GridEncoder, create_grid_encoder
from pipeline.core.files import append_jsonl, read_json, write_json_atomic
from pipeline.core.predictions import read_predictions
from pipeline.core.prompts import answer_stop
from pipeline.core.model_cfg import find_run_config, resolve_prompting
from pipeline.sampling.plan import PlanItem, build_plan, make_record, model_max_len  # the plan and its records
from pipeline.core.tasks import load_tasks, select_tasks
from pipeline.core.timing import TimingLog

METHODS = SAMPLE_METHODS
EXIT_HUNG = 3


# ----------------------------------------------------------------------------- the predictions file

def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut an unterminated last line (a killed writer) so appends start on a fresh line.
    Returns the number of bytes removed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            if pos == size and chunk.endswith(b"\n"):
                return 0
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


def open_predictions(path: str | os.PathLike, meta: Mapping) -> set:
    """Prepare `path` for appending and return the keys already done.

    The settings that decide what a sample is (model, adapters, encoder, prompt version, seed,
    predictions per task, temperature) are kept in `<path>.meta.json`; resuming a file made with
    other settings raises ValueError instead of mixing two runs."""
    path = Path(path)
    meta_path = path.with_name(path.name + ".meta.json")
    cut = repair_torn_tail(path)
    if cut:
        print(f"sample: {path}: cut a torn last line ({cut} bytes) left by a killed run; its sample is redone",
              file=sys.stderr)
    done = {(r["task_id"], r["test_index"], r.get("sample_index")) for r in read_predictions(path)} \
        if path.exists() else set()
    if done and meta_path.exists():
        old = read_json(meta_path)
        changed = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{path} holds {len(done)} predictions made with other settings ({detail}); "
                             f"use another --output or delete it")
    write_json_atomic(meta_path, dict(meta), indent=1)
    return done


# ----------------------------------------------------------------------------- the sampling loop

@dataclass
class SampleResult:
    status: str                 # "complete" | "deadline" | "hung"
    written: int                # records written by this run
    already_done: int           # records found from an earlier run
    planned: int
    skipped_tasks: list
    seconds: float
    generated_tokens: int
    engine: str
    abandoned: bool = False     # a generate call was left running in its thread (watchdog/deadline)


def coverage_first(items: Sequence[PlanItem], done: Iterable = ()) -> list[PlanItem]:
    """The items in plan order, except that the first item of every test input that has no
    prediction yet comes first, shortest prompt first: under a deadline every test input gets one
    prediction before any gets a second, and the cheapest ones before the dearest (on a CPU an
    ARC-AGI-2 prompt of 6,000 tokens costs as much prefill as 20 small ones), so a deadline
    that cannot cover every input covers the most.  The rest keeps the plan's task-by-task order,
    which batches a task's adapter together.  Runs without a deadline keep the plan order."""
    covered = {(key[0], key[1]) for key in done}
    first, rest = [], []
    for item in items:
        key = (item.task_id, item.test_index)
        if key in covered:
            rest.append(item)
        else:
            covered.add(key)
            first.append(item)
    return sorted(first, key=lambda item: len(item.prompt_ids)) + rest  # stable: ties keep plan order


def _merged(found: Sequence):
    """One Completion standing for a searched item in the accounting: its tokens are every
    candidate's (what the search generated at the least)."""
    from pipeline.sampling.engines import Completion
    tokens = [t for c in found for t in c.token_ids]
    return Completion(tokens, "", None, "stop")


@dataclass
class ChunkCost:
    """What the chunks so far cost, to estimate the next one: seconds per token, a token being a
    prompt token or a generated one (a long ARC-AGI-2 prompt costs its prefill, and the generated
    tokens per item are about the same across items)."""
    items: int = 0
    tokens: int = 0
    generated: int = 0
    seconds: float = 0.0

    def add(self, chunk: Sequence[PlanItem], generated: int, seconds: float) -> None:
        self.items += len(chunk)
        self.generated += generated
        self.tokens += sum(len(item.prompt_ids) for item in chunk) + generated
        self.seconds += seconds

    def estimate(self, chunk: Sequence[PlanItem]) -> float | None:
        """Seconds `chunk` should take; None before anything was measured."""
        if not self.items or not self.tokens:
            return None
        tokens = sum(len(item.prompt_ids) for item in chunk) + len(chunk) * self.generated / self.items
        return tokens * self.seconds / self.tokens


def _chunks(items: list, batch_size: int, cost: ChunkCost, time_left: Callable[[], float | None] | None,
            first: int = 0):
    """Yield chunks of at most `batch_size` items, smaller near the deadline (as estimated from the
    chunks so far, `cost`): a chunk that cannot finish is not started whole.  Before anything was
    measured, under a deadline, at most `first` items (the coverage items: one per test input):
    a first chunk of every prediction that cannot finish would leave every input without one."""
    i = 0
    while i < len(items):
        size = batch_size
        left = time_left() if time_left else None
        if left is not None and first and not cost.items:
            size = min(size, first)
        if left is not None:
            while size > 1 and (cost.estimate(items[i:i + size]) or 0.0) > 0.9 * left:
                size -= 1
        yield items[i:i + size]
        i += size


def search_records(item: PlanItem, found: Sequence, encoder: GridEncoder, min_prob: float) -> list[dict]:
    """The records of one plan item searched by DFS: one per completion found (`candidate_index`
    0 = the most probable), or one error record when nothing reached `min_prob`."""
    if not found:
        record = make_record(item, "", None, 0, encoder, None)
        record["grid"], record["error"] = None, f"dfs: no completion with probability >= {min_prob}"
        return [record]
    records = []
    for k, c in enumerate(found):
        record = make_record(item, c.text, c.cumulative_logprob, c.n_tokens, encoder, c.finish_reason)
        record["candidate_index"] = k
        records.append(record)
    return records


def run_plan(plan: Sequence[PlanItem], engine, output: str | os.PathLike, encoder: GridEncoder, *,
             temperature: float = 0.0, batch_size: int = 512, deadline_at: float | None = None,
             watchdog_s: float | None = None, timing: TimingLog | None = None, done: set = frozenset(),
             progress: bool = True, min_prob: float | None = None, max_candidates: int | None = None,
             record: Callable | None = None, desc: str = "sample") -> SampleResult:
    """Generate every pending plan item in chunks, appending records as each chunk returns.

    A plan item needs `key` (what a resume skips), `task_id`, `test_index`, `prompt_ids`,
    `max_tokens`, `adapter`, `seed` and `error` (no prompt: written at once, never generated).
    `record(item, completion)` makes an item's record (`completion` None for an item with an
    error); default: the prediction record (`make_record`).  generate-inputs runs its own plan
    and records through this loop.  `desc` labels the progress bar.

    With `min_prob` set the engine searches instead of sampling (`engine.search`, DFS): every
    completion above `min_prob` (at most `max_candidates`) becomes a record.  `deadline_at`
    (epoch seconds) stops the loop cleanly; `watchdog_s` bounds one generate call (None: no
    watchdog). A timed-out call abandons its chunk (its thread cannot be stopped)."""
    timing = timing or TimingLog(None, "sample")
    start = time.time()
    stop = answer_stop(encoder)
    if record is None:
        def record(item, c):
            if c is None:
                return make_record(item, "", None, 0, encoder, None)
            return make_record(item, c.text, c.cumulative_logprob, c.n_tokens, encoder, c.finish_reason)
    pending = [item for item in plan if item.key not in done]
    broken = [item for item in pending if item.error is not None]
    runnable = [item for item in pending if item.error is None]
    uncovered = 0
    if deadline_at is not None:  # only a deadline makes the order matter; without one, batch by task
        runnable = coverage_first(runnable, done)
        uncovered = len({(i.task_id, i.test_index) for i in runnable} - {(k[0], k[1]) for k in done})
    per_task_left = Counter(item.task_id for item in pending)
    task_stats: dict[str, dict] = {}
    written, generated, status, abandoned = 0, 0, "complete", False
    if broken:
        append_jsonl(output, [record(item, None) for item in broken])
        written += len(broken)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(runnable), desc=f"{desc} ({engine.name})", unit="pred", file=sys.stderr,
                   mininterval=1.0, dynamic_ncols=True)
    cost = ChunkCost()

    def time_left():
        return None if deadline_at is None else deadline_at - time.time()

    def account(items, completions, seconds):
        """Apportion a chunk's seconds to its tasks by tokens (prompt + generated)."""
        weights = [len(it.prompt_ids) + (c.n_tokens if c else 0) for it, c in zip(items, completions)]
        total = sum(weights) or 1
        for it, c, w in zip(items, completions, weights):
            s = task_stats.setdefault(it.task_id, {"seconds": 0.0, "prompt_tokens": 0, "generated_tokens": 0,
                                                   "predictions": 0})
            s["seconds"] += seconds * w / total
            s["prompt_tokens"] += len(it.prompt_ids)
            s["generated_tokens"] += c.n_tokens if c else 0
            s["predictions"] += 1

    def item_done(item):
        """Count the item off its task; a task's timing record is written with its last item."""
        per_task_left[item.task_id] -= 1
        if per_task_left[item.task_id] == 0:
            s = task_stats.pop(item.task_id)
            timing.record("task", s.pop("seconds"), item.task_id, **s)
            del per_task_left[item.task_id]

    for item in broken:
        account([item], [None], 0.0)
        item_done(item)

    from pipeline.sampling.engines import GenerationTimeout, Request, call_with_watchdog

    try:
        for chunk in _chunks(runnable, max(1, batch_size), cost, time_left if deadline_at else None, uncovered):
            left = time_left()
            if left is not None and left <= 0:
                status = "deadline"
                break
            requests = [Request(item.prompt_ids, item.max_tokens, item.adapter, item.seed, stop) for item in chunk]
            timeout = watchdog_s
            if left is not None:
                timeout = left if timeout is None else min(timeout, left)
            t0 = time.perf_counter()
            try:
                if min_prob is None:
                    completions = call_with_watchdog(lambda: engine.generate(requests, temperature), timeout)
                else:
                    search_deadline = None if left is None else time.monotonic() + left
                    found = call_with_watchdog(lambda: engine.search(requests, min_prob, max_candidates,
                                                                     search_deadline), timeout)
                    completions = [_merged(f) for f in found]
            except GenerationTimeout:
                left = time_left()
                status = "deadline" if left is not None and left <= 1.0 else "hung"
                abandoned = True
                break
            seconds = time.perf_counter() - t0
            if min_prob is None:
                records = [record(item, c) for item, c in zip(chunk, completions)]
            else:
                records = [r for item, f in zip(chunk, found) for r in search_records(item, f, encoder, min_prob)]
            append_jsonl(output, records)
            written += len(records)
            generated += sum(c.n_tokens for c in completions)
            cost.add(chunk, sum(c.n_tokens for c in completions), seconds)
            account(chunk, completions, seconds)
            timing.record("phase", seconds, None, phase="generate", predictions=len(chunk),
                          prompt_tokens=sum(len(i.prompt_ids) for i in chunk),
                          generated_tokens=sum(c.n_tokens for c in completions))
            for item in chunk:
                item_done(item)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    skipped = list(per_task_left)
    reason = {"deadline": "deadline", "hung": "watchdog: generate hung"}.get(status, "not finished")
    for task_id in skipped:
        timing.record("skipped", 0.0, task_id, reason=reason, predictions_missing=per_task_left[task_id])
    return SampleResult(status, written, len(done), len(plan), skipped, time.time() - start, generated, engine.name,
                        abandoned)


# ----------------------------------------------------------------------------- the stage

def default_watchdog(batch_size: int, max_tokens: int, on_cuda: bool) -> float:
    """Seconds one generate call may take before it counts as hung: generous (the original's
    5 minutes was too short, spec §9.4) and growing with the work of the call, at a floor
    throughput far below what either engine reaches (CPU 2 tokens/s, CUDA 50 tokens/s)."""
    floor = 50.0 if on_cuda else 2.0
    return 600.0 + batch_size * max_tokens / floor


def sample(model: str, dataset, output: str | os.PathLike, settings: SampleSettings = SAMPLE, *,
           adapters_dir=None, adapter_path=None, deadline: float | None = None, timing_log=None,
           task_ids: Sequence[str] | None = None, first_n: int | None = None, vllm_options: Mapping | None = None,
           progress: bool = True, engine_instance=None, started_at: float | None = None, log=print,
           timing_stage: str = "sample") -> SampleResult:
    """The whole stage as a function (the CLI, eval-checkpoint and the tests call it).

    `settings`: the stage's settings (config.SampleSettings, what its CLI is generated from).
    `dataset`: a tasks file/directory or a `{task_id: task}` dict.  `engine_instance`: an
    already started engine (tests share one vLLM engine); it is not closed here.  `method`
    "dfs": each augmented prompt is searched instead of sampled (`pipeline.sampling.search`): every
    completion with probability >= `min_prob`, at most `max_candidates`, transformers engine only."""
    s = settings
    if s.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {s.method!r}")
    if s.method == "dfs" and not 0 < s.min_prob <= 1:
        raise ValueError(f"--min_prob must be in (0, 1], got {s.min_prob}")
    from pipeline.sampling.engines import choose_engine, cuda_available, make_engine
    from pipeline.core.models import load_tokenizer, resolve_model_path

    started_at = time.time() if started_at is None else started_at
    deadline_at = started_at + deadline if deadline else None
    timing = TimingLog(timing_log, timing_stage)

    tasks = dataset if isinstance(dataset, Mapping) else load_tasks(dataset, solutions=None)
    tasks = select_tasks(select_tasks(tasks, task_ids, first_n), sort_by_size=True)  # small first: most tasks per deadline

    model_dir = resolve_model_path(model)
    cfg, cfg_path = find_run_config(adapter_path, model_dir, adapters_dir)
    prompting = resolve_prompting(cfg, s.format, s.grid_encoder, s.prompt_version)
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
            "temperature": s.temperature, "max_tokens": str(s.max_tokens)}
    if s.method == "dfs":
        meta.update(method=s.method, min_prob=s.min_prob, max_candidates=s.max_candidates)
    done = open_predictions(output, meta)
    pending = sum(1 for item in plan if item.key not in done)
    log(f"sample: {len(tasks)} tasks, {len(plan)} samples ({s.predictions_per_task} per test input), "
        f"{len(done)} already in {output}, {pending} to do; format {prompting.format}, encoder {encoder.spec}, prompt {version}"
        f"{f' (from {cfg_path})' if cfg_path else ''}; adapters: {n_own} per-task, {len(fell_back)} on "
        f"{'--adapter_path' if adapter_path else 'the base model'}; max_tokens {s.max_tokens} "
        f"(up to {max((i.max_tokens for i in plan), default=0)}), max_model_len {max_len}")
    owned = engine_instance is None
    name = engine_instance.name if engine_instance is not None else choose_engine(s.engine, adapters=any(adapters.values()))
    if s.method == "dfs":
        if s.engine == "vllm":
            raise ValueError("--method dfs needs the transformers engine (vLLM has no such search)")
        name = engine_instance.name if engine_instance is not None else "transformers"
    if not pending:
        return SampleResult("complete", 0, len(done), len(plan), [], time.time() - started_at, 0, name)
    if deadline_at is not None and time.time() >= deadline_at:
        unfinished = sorted({i.task_id for i in plan if i.key not in done})
        for task_id in unfinished:
            timing.record("skipped", 0.0, task_id, reason="deadline before the engine started")
        return SampleResult("deadline", 0, len(done), len(plan), unfinished, time.time() - started_at, 0, name)
    if engine_instance is None:
        if s.deterministic:
            from pipeline.core.determinism import make_deterministic
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
                              min_prob=s.min_prob if s.method == "dfs" else None, max_candidates=s.max_candidates)
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
        result = sample(args.model, args.dataset, args.output, adapters_dir=args.adapters_dir,
                        adapter_path=args.adapter_path, deadline=args.deadline, timing_log=args.timing_log,
                        task_ids=args.task_ids, first_n=args.first_n, vllm_options=vllm_options_from(args),
                        progress=not args.quiet, started_at=started_at, timing_stage=args.timing_stage,
                        settings=settings_from(SampleSettings, args))
    except (OSError, ValueError) as e:
        print(f"sample: {e}", file=sys.stderr)
        return 1
    return exit_code_after(result)


__all__ = ["run_plan", "sample", "open_predictions", "repair_torn_tail", "add_sampling_args", "vllm_options_from",
           "exit_code_after", "main"]
