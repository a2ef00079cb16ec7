"""Candidate scoring across augmentations, and the selection rules built on it.

A candidate answer to a test input (from sampling, DFS or both) is scored under K views of the
task (augmentations): in each view the candidate is transformed like the task, and the model's
log-probability of writing exactly that answer after the view's prompt is computed.  This is a
prefill only: no generation.  The view's prompt is computed once and its KV cache reused by every
candidate (selected along the batch), so K views of N candidates cost K prompt prefills plus the
candidates' own tokens, not K x N prefills (`benchmarks/bench_scoring.py` measures both).  Views
go `view_batch` at a time: their prompts prefilled in one forward pass, then their candidate-views
`batch_size` rows per forward pass across the views (`views_answer_logprobs`; `answer_logprobs`,
one view at a time, is the reference it equals within 1e-4, tests/selection/test_rescore.py).

Selection rules (`pipeline.selection.rules.select`: vote, poe, nvarc) then rank the scored
candidates; `pipeline.selection.scored.read_scores` reads this stage's output.

Under `--deadline` the test inputs are scored cheapest first (prompt + answer tokens,
`rescore_tokens`) and one that the speed measured so far says cannot finish in the time left is
not started (the anytime rule, `pipeline/sampling/anytime.py`); each is written as it finishes.
Its timing record counts the tokens prefilled (`prompt_tokens`) and the candidate-views
(`predictions`): the planner's rescoring cost (`planning/cost_model.fit_rescore`).  The Kaggle run
starts one rescore process per GPU over sampling's task shards (`kaggle/run.py`).

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
from pipeline.selection.rules import group_predictions, rank_predictions
from pipeline.selection.scored import scores_record


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


def views_answer_logprobs(model, views: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                          batch_size: int = RESCORE.batch_size, view_batch: int = RESCORE.view_batch
                          ) -> list[list[float]]:
    """`answer_logprobs` of several views at once: `views` is a list of (prompt ids, answers),
    from one or more test inputs of the same model (adapter).  `view_batch` views' prompts are
    prefilled together in one forward pass, each computed once; then the candidate-views of those
    views (one row each, the row's KV cache selected from its view's) go `batch_size` rows per
    forward pass, whichever view they belong to, so a view with few candidates does not leave a
    forward pass half empty.

    Padding that cannot change a score: prompts of different lengths are padded on the right
    and masked, and each answer row continues its own prompt's positions (explicit position ids),
    so no real token attends a pad and no pad is a query with nothing to attend (left padding's
    all-masked rows, NaN under some attention kernels).  The prompt's last token is fed again
    with the answer rather than kept as the prefill's logits, because a padded prefill's last
    real token sits at a different place in every row."""
    import copy

    import torch
    from transformers import DynamicCache

    scores = [[0.0] * len(answers) for _, answers in views]
    live = [v for v, (prompt, answers) in enumerate(views) if answers]
    if not live:
        return scores
    device = next(model.parameters()).device
    for g in range(0, len(live), max(1, view_batch)):
        group = live[g:g + max(1, view_batch)]
        heads = [list(views[v][0][:-1]) for v in group]  # the prompt less its last token, prefilled once
        width = max(len(h) for h in heads)
        head_mask = torch.zeros((len(group), width), dtype=torch.long, device=device)
        cache = DynamicCache()
        if width:
            ids = torch.zeros((len(group), width), dtype=torch.long, device=device)
            for r, head in enumerate(heads):
                ids[r, :len(head)] = torch.tensor(head, dtype=torch.long)
                head_mask[r, :len(head)] = 1
            positions = torch.arange(width, device=device).expand(len(group), width)
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=head_mask, position_ids=positions, past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
        rows = [(r, v, c) for r, v in enumerate(group) for c in range(len(views[v][1]))]
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            tails = [[views[v][0][-1], *views[v][1][c]] for _, v, c in batch]
            tail = max(len(t) for t in tails)
            ids = torch.zeros((len(batch), tail), dtype=torch.long, device=device)
            mask = torch.zeros((len(batch), width + tail), dtype=torch.long, device=device)
            positions = torch.zeros((len(batch), tail), dtype=torch.long, device=device)
            for i, ((r, _, _), row) in enumerate(zip(batch, tails)):
                ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
                mask[i, :width] = head_mask[r]
                mask[i, width:width + len(row)] = 1
                positions[i] = len(heads[r]) + torch.arange(tail, device=device)
            past = copy.deepcopy(cache)
            past.reorder_cache(torch.tensor([r for r, _, _ in batch], dtype=torch.long, device=device))
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                               use_cache=True).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, (_, v, c) in enumerate(batch):
                answer = torch.tensor(list(views[v][1][c]), dtype=torch.long, device=device)
                picked = logprobs[i, torch.arange(len(answer), device=device), answer]
                scores[v][c] = float(picked.double().sum())
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


def per_view_logprobs(model, inputs: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                      batch_size: int = RESCORE.batch_size, view_batch: int = RESCORE.view_batch) -> list[list[float]]:
    """`scores[v][c]` of (prompt ids, answers) per view: `view_batch` views per prefill
    (`views_answer_logprobs`), or with 0 view after view (`answer_logprobs`: the path before views
    were batched, kept as the reference the batched one is tested and benchmarked against)."""
    if view_batch < 1:
        return [answer_logprobs(model, prompt_ids, answers, batch_size) for prompt_ids, answers in inputs]
    return views_answer_logprobs(model, inputs, batch_size, view_batch)


def score_candidates(model, tokenizer, encoder, version: str, task: dict, test_index: int,
                     candidates: Sequence[list], views: Sequence[Augmentation],
                     batch_size: int = RESCORE.batch_size, view_batch: int = RESCORE.view_batch) -> list[list[float]]:
    """`scores[c][v]`: log-probability of candidate c (a grid in the task's frame) under view v."""
    inputs = [view_prompt_and_answers(task, test_index, candidates, view, encoder, tokenizer, version)
              for view in views]
    per_view = per_view_logprobs(model, inputs, batch_size, view_batch)
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
            grids = [c["grid"] for c in candidates]
            inputs = [view_prompt_and_answers(task, index, grids, view, encoder, engine.tokenizer, version)
                      for view in views]
            with engine.serving(adapters.get(task_id)) as served:
                per_view = per_view_logprobs(served, inputs, s.batch_size, s.view_batch)
            scores = [list(row) for row in zip(*per_view)]
            append_jsonl(output, [scores_record(task_id, index, [v.to_dict() for v in views], candidates, scores)])
            seconds = time.time() - t0
            # the planner's units (cost_model.fit_rescore): every token prefilled, and the candidate-views
            timing.record("task", seconds, task_id, test_index=index, candidates=len(candidates), views=s.views,
                          prompt_tokens=sum(len(p) + sum(map(len, a)) for p, a in inputs),
                          predictions=len(candidates) * len(views))
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
    if settings.views < 1 or settings.max_candidates < 1 or settings.batch_size < 1:
        parser.error("--views, --max_candidates and --batch_size must be >= 1")
    if settings.view_batch < 0:
        parser.error("--view_batch must be >= 0")
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
