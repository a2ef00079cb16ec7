"""Candidate scoring across augmentations, and the selection rules built on it.

A candidate answer to a test input (from sampling, DFS or both) is scored under K views of the
task (augmentations): in each view the candidate is transformed like the task, and the model's
log-probability of writing exactly that answer after the view's prompt is computed.  This is a
prefill only: no generation.  The view's prompt is computed once and its KV cache reused by every
candidate (repeated along the batch), so K views of N candidates cost K prompt prefills plus the
candidates' own tokens, not K x N prefills (`benchmarks/bench_scoring.py` measures both).

Selection rules (`pipeline.selection.rules.select`: vote, poe, nvarc) then rank the scored
candidates; `read_scores` there reads this stage's output.

Under `--deadline` the test inputs are scored cheapest first (prompt + answer tokens,
`rescore_tokens`) and one that the speed measured so far says cannot finish in the time left is
not started (the anytime rule, `pipeline/sampling/anytime.py`); each is written as it finishes.

The answer's tokens are exactly those training taught the model to write (the completion of
`prompts.build_train_sample`: the grid after the assistant prefix and the end-of-turn token).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from tqdm.auto import tqdm

from pipeline.core.adapters import find_adapters
from pipeline.core.augment import Augmentation, inference_augmentations
from pipeline.core.determinism import make_deterministic
from pipeline.core.encoders import create_grid_encoder
from pipeline.core.files import append_jsonl, check_output
from pipeline.core.model_cfg import find_run_config, read_tokenizer_facts, resolve_prompting
from pipeline.core.models import load_tokenizer, resolve_model_path
from pipeline.core.predictions import read_predictions
from pipeline.core.scores import open_scores
from pipeline.core.prompts import build_inference_prompt, build_train_sample
from pipeline.core.settings import DEFAULT_SELECTION, RESCORE, RescoreSettings, add_arguments, settings_from
from pipeline.core.tasks import load_tasks, select_tasks
from pipeline.core.timing import TimingLog
from pipeline.sampling.anytime import ChunkCost
from pipeline.sampling.transformers_engine import TransformersEngine
from pipeline.sampling.plan import task_rng
from pipeline.selection.rules import group_predictions, rank_predictions, scores_record


def answer_logprobs(model, prompt_ids: Sequence[int], answers: Sequence[Sequence[int]],
                    batch_size: int = RESCORE.batch_size) -> list[float]:
    """log P(answer | prompt) for every answer (lists of token ids), with one prefill of the
    prompt whose KV cache every batch of answers reuses."""
    import copy

    import torch
    from transformers import DynamicCache

    if not answers:
        return []
    device = next(model.parameters()).device
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    cache = DynamicCache()
    with torch.inference_mode():
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # the answer's first token
    scores = []
    for start in range(0, len(answers), batch_size):
        batch = answers[start:start + batch_size]
        width = max(len(a) for a in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(batch), len(prompt_ids) + width), dtype=torch.long, device=device)
        mask[:, :len(prompt_ids)] = 1
        for row, answer in enumerate(batch):
            ids[row, :len(answer)] = torch.tensor(list(answer), dtype=torch.long)
            mask[row, len(prompt_ids):len(prompt_ids) + len(answer)] = 1
        rows = copy.deepcopy(cache)
        rows.batch_repeat_interleave(len(batch))
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, past_key_values=rows, use_cache=True).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, answer in enumerate(batch):
            total = float(first[answer[0]])
            if len(answer) > 1:
                targets = torch.tensor(list(answer[1:]), dtype=torch.long, device=device)
                total += float(logprobs[row, torch.arange(len(answer) - 1, device=device), targets].double().sum())
            scores.append(total)
    return scores


def view_prompt_and_answers(task: dict, test_index: int, candidates: Sequence[list], view: Augmentation,
                            encoder, tokenizer, version: str) -> tuple[list[int], list[list[int]]]:
    """The view's inference prompt ids and every candidate's answer ids in that view (the exact
    completion a training sample with that answer has)."""
    seen = view.apply_task({"train": task["train"], "test": [{"input": task["test"][test_index]["input"]}]})
    prompt_text = build_inference_prompt(seen, encoder, tokenizer, version, 0)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answers = []
    for grid in candidates:
        pair = {"input": seen["test"][0]["input"], "output": view.apply_grid(grid)}
        sample = build_train_sample({"train": seen["train"], "test": [pair]}, encoder, tokenizer, version, 0)
        assert sample.prompt == prompt_text, "the training prompt and the inference prompt differ"
        answers.append(tokenizer(sample.completion, add_special_tokens=False)["input_ids"])
    return prompt_ids, answers


def score_candidates(model, tokenizer, encoder, version: str, task: dict, test_index: int,
                     candidates: Sequence[list], views: Sequence[Augmentation],
                     batch_size: int = RESCORE.batch_size) -> list[list[float]]:
    """`scores[c][v]`: log-probability of candidate c (a grid in the task's frame) under view v."""
    per_view = []
    for view in views:
        prompt_ids, answers = view_prompt_and_answers(task, test_index, candidates, view, encoder, tokenizer, version)
        per_view.append(answer_logprobs(model, prompt_ids, answers, batch_size))
    return [list(row) for row in zip(*per_view)] if per_view else [[] for _ in candidates]


# ----------------------------------------------------------------------------- the stage

def rescore(model: str, dataset, predictions: Sequence, output, settings: RescoreSettings = RESCORE, *,
            adapters_dir=None, adapter_path=None, deadline: float | None = None, timing_log=None,
            progress: bool = True, log=print) -> dict:
    """Score the distinct valid candidates of every test input (the top `settings.max_candidates`
    by vote v2 over `predictions`, one or more JSONL files) under `settings.views` augmented views, with each
    task's own adapter; one JSON line per test input in `output` (resumable).  Views are spread
    over the 8 dihedral transforms with their own colours and train order, seeded per task."""
    s = settings
    if s.deterministic:
        make_deterministic()
    started = time.time()
    timing = TimingLog(timing_log, "rescore")
    tasks = dataset if isinstance(dataset, Mapping) else load_tasks(dataset, solutions=None)
    tasks = select_tasks(tasks, sort_by_size=True)
    records = read_predictions(predictions)  # checked and de-duplicated across the files
    groups = group_predictions(records)
    model_dir = resolve_model_path(model)
    cfg, _ = find_run_config(adapter_path, model_dir, adapters_dir)
    # the weights' own format unless told (candidates are scored as trained)
    prompting = resolve_prompting(cfg, s.format, tokenizer=read_tokenizer_facts(model_dir))
    encoder = create_grid_encoder(prompting.grid_encoder)
    version = prompting.prompt_version
    adapters, _ = find_adapters(tasks, adapters_dir, adapter_path)
    meta = {"model": str(model_dir), "adapters_dir": str(adapters_dir) if adapters_dir else None,
            "adapter_path": str(adapter_path) if adapter_path else None, "format": prompting.format,
            "grid_encoder": encoder.spec, "prompt_version": version, "views": s.views,
            "max_candidates": s.max_candidates, "seed": s.seed}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    done = open_scores(output, meta)  # a killed run's torn tail cut; other settings refused
    Path(output).touch()  # the stage ran: an empty file says "nothing to score", a missing one "not run"
    todo = [(t, i) for t, task in tasks.items() for i in range(len(task["test"]))
            if (t, i) not in done and groups.get((t, i))]
    log(f"rescore: {len(todo)} test inputs to score under {s.views} views ({len(done)} already in {output}), "
        f"up to {s.max_candidates} candidates each; format {prompting.format} ({prompting.source})")
    counts = {"scored": 0, "candidates": 0, "skipped": 0, "already": len(done)}
    ranked = {key: rank_predictions(groups[key], DEFAULT_SELECTION)[:s.max_candidates] for key in todo}
    todo = [key for key in todo if ranked[key]]
    if not todo:
        return counts
    tokenizer = load_tokenizer(model_dir)
    sizes = {}
    if deadline is not None:  # the anytime rule (sampling/anytime.py): the cheapest test input first
        sizes = {key: rescore_tokens(tasks[key[0]], key[1], [c["grid"] for c in ranked[key]], encoder, tokenizer,
                                     version) for key in todo}
        todo.sort(key=lambda key: sizes[key])  # stable: ties keep the smallest-task order
    cost = ChunkCost()  # seconds per token of the test inputs scored so far
    engine = TransformersEngine(model_dir, tokenizer, dtype=s.dtype, batch_size=s.batch_size)  # resolved on its device
    try:
        for task_id, index in tqdm(todo, desc="rescore", disable=not progress, file=sys.stderr):
            if deadline is not None:
                left = deadline - (time.time() - started)
                estimate = cost.seconds_for(1, sizes[(task_id, index)])
                if left <= 0 or (estimate is not None and estimate > left):  # it would not finish: not started
                    counts["skipped"] += 1
                    continue
            task, candidates = tasks[task_id], ranked[(task_id, index)]
            views = inference_augmentations(s.views, task_rng(s.seed + 1, task_id), len(task["train"]))
            t0 = time.time()
            with engine.serving(adapters.get(task_id)) as served:
                scores = score_candidates(served, engine.tokenizer, encoder, version, task, index,
                                          [c["grid"] for c in candidates], views, s.batch_size)
            append_jsonl(output, [scores_record(task_id, index, [v.to_dict() for v in views], candidates, scores)])
            seconds = time.time() - t0
            timing.record("task", seconds, task_id, test_index=index, candidates=len(candidates), views=s.views)
            if deadline is not None:
                cost.add_tokens(1, sizes[(task_id, index)], 0, seconds)
            counts["scored"] += 1
            counts["candidates"] += len(candidates)
    finally:
        engine.close()
    return counts


def rescore_tokens(task: dict, test_index: int, candidates: Sequence[list], encoder, tokenizer, version: str) -> int:
    """A test input's size before it is scored: the prompt and every candidate's answer tokens of
    its unaugmented view (every view has about as many: a view moves and recolours cells)."""
    prompt_ids, answers = view_prompt_and_answers(task, test_index, candidates, Augmentation(), encoder,
                                                  tokenizer, version)
    return len(prompt_ids) + sum(len(a) for a in answers)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pipeline rescore",
        description="Score every test input's candidates (from sample/dfs predictions) under augmented views: "
                    "the log-probability of each answer in each view, one prefill per view. `vote --method poe` "
                    "or `--method nvarc --scores FILE` then selects with them.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True, help="tasks file (challenges)")
    parser.add_argument("--predictions", required=True, nargs="+", help="predictions JSONL file(s)")
    parser.add_argument("--output", required=True, help="scores JSONL (appended; resumes)")
    parser.add_argument("--adapters_dir")
    parser.add_argument("--adapter_path")
    add_arguments(parser.add_argument_group("rescoring"), RescoreSettings)  # one flag per setting (core/settings.py)
    parser.add_argument("--deadline", type=float, help="seconds; cheapest test inputs first, and one estimated not to finish in "
                                                       "the time left is skipped")
    parser.add_argument("--timing_log")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from(RescoreSettings, args)
    if settings.views < 1 or settings.max_candidates < 1:
        parser.error("--views and --max_candidates must be >= 1")
    try:
        check_output(args.output, {"--dataset": args.dataset, "--predictions": args.predictions,
                                   "--adapter_path": args.adapter_path})
        counts = rescore(args.model, args.dataset, args.predictions, args.output, settings,
                         adapters_dir=args.adapters_dir, adapter_path=args.adapter_path, deadline=args.deadline,
                         timing_log=args.timing_log, progress=not args.quiet)
    except (OSError, ValueError) as e:
        print(f"rescore: {e}", file=sys.stderr)
        return 1
    print(f"rescore: {counts['scored']} test inputs scored ({counts['candidates']} candidates), "
          f"{counts['already']} already done, {counts['skipped']} skipped at the deadline -> {args.output}")
    return 0
