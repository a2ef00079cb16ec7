"""The sampling run loop, shared by `sample` and `generate-inputs` (which runs its own plan through
it): the predictions file and its resume, chunks under a deadline and a watchdog.

* The predictions file (`open_predictions`): a torn last line (a killed writer) is cut off
  first (a whole last line without its newline is a record and gets one), a rerun skips the (task_id, test_index, sample_index) already in it, and
  `<output>.meta.json` refuses a rerun with other settings.
* `run_plan`: the plan's items in chunks of `batch_size` prompts (one engine call per chunk),
  every chunk appended to the file as soon as it returns.  Under a deadline the anytime rule of
  `sampling/anytime.py` orders and sizes the chunks: the least-covered test inputs first, a first
  chunk of one item (the shortest), then chunks that grow from the measured speed and shrink as
  the deadline nears.  A call that does not return within the watchdog (`default_watchdog`) is
  abandoned ("hung"); at the deadline, or when not even one more item is estimated to finish
  before it, the loop stops ("deadline") and the unfinished tasks are "skipped" timing records.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.core.encoders import GridEncoder
from pipeline.core.files import append_jsonl, check_resume_meta, repair_jsonl_tail
from pipeline.core.predictions import read_predictions
from pipeline.core.prompts import answer_stop
from pipeline.core.timing import TimingLog
from pipeline.sampling.anytime import ChunkCost, chunk_size, coverage_first
from pipeline.sampling.generation import Completion, GenerationTimeout, Request, call_with_watchdog
from pipeline.sampling.plan import PlanItem, make_record


# ----------------------------------------------------------------------------- the predictions file

def open_predictions(path: str | os.PathLike, meta: Mapping) -> set:
    """Prepare `path` for appending and return the keys already done.

    A killed run's torn last line is cut (a whole line without its newline gets one:
    `files.repair_jsonl_tail`).  The settings that decide what a sample is (model, adapters,
    encoder, prompt version, seed, predictions per task, temperature, context length, precision)
    are kept in `<path>.meta.json`; resuming a file made with other settings raises ValueError
    naming them instead of mixing two runs (`files.check_resume_meta`)."""
    path = Path(path)
    action, size = repair_jsonl_tail(path)
    if action == "cut":
        print(f"sample: {path}: cut a torn last line ({size} bytes) left by a killed run; its sample is redone",
              file=sys.stderr)
    counts = {}
    done = {(r["task_id"], r["test_index"], r.get("sample_index")) for r in read_predictions(path, counts)} \
        if path.exists() else set()
    if counts.get("bad_records"):
        print(f"sample: {path}: {counts['bad_records']} bad record(s) are not counted as done and will be "
              f"redone: {'; '.join(counts['problems'][:2])}", file=sys.stderr)
    check_resume_meta(path, meta, len(done), "predictions")
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


def _merged(found: Sequence):
    """One Completion standing for a searched item in the accounting: its tokens are every
    candidate's (what the search generated at the least)."""
    tokens = [t for c in found for t in c.token_ids]
    return Completion(tokens, "", None, "stop")


def search_records(item: PlanItem, found: Sequence, encoder: GridEncoder, min_prob: float,
                   stopped: str | None = None) -> list[dict]:
    """The records of one searched item: one per completion found (`candidate_index` 0, 1, ...;
    0 = the most probable), or one error record when nothing reached `min_prob` (`stopped`: the
    cap that cut the search, named in the error)."""
    if not found:
        record = make_record(item, "", None, 0, encoder, None)
        cut = f" before the {stopped} cap" if stopped in ("batch_seconds", "task_seconds") else ""
        record["grid"], record["error"] = None, f"dfs: no completion with probability >= {min_prob}{cut}"
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
             search_caps: Mapping | None = None, search: Callable | None = None, record: Callable | None = None,
             desc: str = "sample", proposals=None) -> SampleResult:
    """Generate every pending plan item in chunks, appending records as each chunk returns.

    A plan item needs `key` (what a resume skips), `task_id`, `test_index`, `prompt_ids`,
    `max_tokens`, `adapter`, `seed` and `error` (no prompt: written at once, never generated).
    `record(item, completion)` makes an item's record (`completion` None for an item with an
    error); default: the prediction record (`make_record`).  generate-inputs runs its own plan
    and records through this loop.  `desc` labels the progress bar.

    With `min_prob` set `search(engine, requests, ...)` runs instead of sampling
    (`batched_search.search_engine`, DFS, which the caller imports only then): every
    completion above `min_prob` (at most `max_candidates`) becomes a record, written as soon as
    its item's search ends (the search's `on_done`); `search_caps` (batch_views, batch_seconds,
    task_seconds) go to the search, with each task's search seconds kept across chunks; the
    expanded `nodes` (one-token forwards) go to the `generate` phase and task timing records (the
    planner's `fit_dfs`).  `proposals` (`speculation.Proposals`): speculative DFS, fed with
    every searched item's records and asked for each item's answers to verify.  An
    item the deadline cut before it found anything is not written (a resume redoes it).  `deadline_at`
    (epoch seconds) orders and sizes the chunks by the anytime rule (`sampling/anytime.py`) and
    stops the loop cleanly; `watchdog_s` bounds one generate call (None: no watchdog). A
    timed-out call abandons its chunk (its thread cannot be stopped)."""
    if min_prob is not None and search is None:
        raise ValueError("run_plan: min_prob (DFS) needs the search (batched_search.search_engine)")
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
    if deadline_at is not None:  # only a deadline makes the order matter; without one, batch by task
        runnable = coverage_first(runnable, done)
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
    cost, size, i = ChunkCost(), 0, 0
    batch_size = max(1, batch_size)
    search_spent: dict = {}  # DFS: seconds each task has searched (its per-task cap spans chunks)
    closed: list = []        # set when a call was abandoned: its thread must not write any more

    def write_found(chunk, k, found, stopped, ended, stats=None):
        """An item's search ended: its records go to the file at once (the anytime rule)."""
        nonlocal written
        if closed:
            return
        records = search_records(chunk[k], found, encoder, min_prob, stopped)
        append_jsonl(output, records)
        written += len(records)
        ended[k] = found
        nodes[k] = int((stats or {}).get("nodes") or 0)
        if proposals is not None:
            proposals.add(chunk[k], records)

    def time_left():
        return None if deadline_at is None else deadline_at - time.time()

    def account(items, completions, seconds, searched=None):
        """Apportion a chunk's seconds to its tasks by tokens (prompt + generated); `searched`:
        each item's expanded nodes (DFS), counted per task."""
        weights = [len(it.prompt_ids) + (c.n_tokens if c else 0) for it, c in zip(items, completions)]
        total = sum(weights) or 1
        for j, (it, c, w) in enumerate(zip(items, completions, weights)):
            s = task_stats.setdefault(it.task_id, {"seconds": 0.0, "prompt_tokens": 0, "generated_tokens": 0,
                                                   "predictions": 0})
            s["seconds"] += seconds * w / total
            s["prompt_tokens"] += len(it.prompt_ids)
            s["generated_tokens"] += c.n_tokens if c else 0
            s["predictions"] += 1
            if searched is not None:
                s["nodes"] = s.get("nodes", 0) + searched[j]

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

    try:
        while i < len(runnable):
            left = time_left()
            if left is not None and left <= 0:
                status = "deadline"
                break
            # without a deadline: batch_size; with one: the anytime rule (a probe of one item, then
            # growing from the measured speed; 0 = not even one more item would finish in time)
            size = batch_size if left is None else chunk_size(runnable[i:i + batch_size], size, batch_size, cost, left)
            if size == 0:
                status = "deadline"
                break
            chunk, i = runnable[i:i + size], i + size
            requests = [Request(item.prompt_ids, item.max_tokens, item.adapter, item.seed, stop) for item in chunk]
            timeout = watchdog_s
            if left is not None:
                timeout = left if timeout is None else min(timeout, left)
            t0 = time.perf_counter()
            ended: dict[int, list] = {}  # DFS: chunk position -> completions, as each item's search ends
            nodes: dict[int, int] = {}   # DFS: chunk position -> the nodes its search expanded
            try:
                if min_prob is None:
                    completions = call_with_watchdog(lambda: engine.generate(requests, temperature), timeout)
                else:
                    search_deadline = None if left is None else time.monotonic() + left
                    call_with_watchdog(lambda: search(
                        engine, requests, min_prob, max_candidates, search_deadline, groups=[it.task_id for it in chunk],
                        spent=search_spent,
                        on_done=lambda k, found, why, stats=None: write_found(chunk, k, found, why, ended, stats),
                        **dict(search_caps or {}),
                        **({} if proposals is None else {"propose": lambda k: proposals.for_item(chunk[k])})), timeout)
            except GenerationTimeout:
                closed.append(True)  # a search still running in its thread writes nothing more
                left = time_left()
                status = "deadline" if left is not None and left <= 1.0 else "hung"
                abandoned = True
                break
            seconds = time.perf_counter() - t0
            if min_prob is None:
                records = [record(item, c) for item, c in zip(chunk, completions)]
                append_jsonl(output, records)
                written += len(records)
                searched = None
            else:  # written by `write_found`; the items the deadline cut before they found anything stay to do
                chunk = [chunk[k] for k in sorted(ended)]
                completions = [_merged(ended[k]) for k in sorted(ended)]
                searched = [nodes[k] for k in sorted(ended)]
            generated += sum(c.n_tokens for c in completions)
            cost.add(chunk, sum(c.n_tokens for c in completions), seconds)
            account(chunk, completions, seconds, searched)
            timing.record("phase", seconds, None, phase="generate", predictions=len(chunk),
                          prompt_tokens=sum(len(i.prompt_ids) for i in chunk),
                          generated_tokens=sum(c.n_tokens for c in completions),
                          **({} if searched is None else {"nodes": sum(searched)}))
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


def default_watchdog(batch_size: int, max_tokens: int, on_cuda: bool) -> float:
    """Seconds one generate call may take before it counts as hung: generous (the original's
    5 minutes was too short, spec §9.4) and growing with the work of the call, at a floor
    throughput far below what either engine reaches (CPU 2 tokens/s, CUDA 50 tokens/s)."""
    floor = 50.0 if on_cuda else 2.0
    return 600.0 + batch_size * max_tokens / floor
