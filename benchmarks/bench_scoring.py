"""Candidate scoring cost: one prefill per view reused by every candidate, against a full forward per candidate.

    .venv/bin/python benchmarks/bench_scoring.py [--candidates 8] [--views 2] [--task 2072aba6] [--threads N]

For one ARC-AGI-1 evaluation task, with the embedded SmolLM2-135M, scores N candidate answers
(the right one and N-1 perturbed copies) under K augmented views twice: `scoring.score_candidates`
(the view's prompt prefilled once, its KV cache repeated over the batch of candidates) and the
naive way (prompt + answer as one full forward per candidate and view).  Prints the tokens each
way processes, the seconds (same run, same process), their ratio and the largest log-prob
difference, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.augment import inference_augmentations  # noqa: E402
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder  # noqa: E402
from pipeline.core.models import load_model_and_tokenizer  # noqa: E402
from pipeline.core.model_cfg import DEFAULT_PROMPT_VERSION  # noqa: E402
from pipeline.sampling.plan import task_rng  # noqa: E402
from pipeline.selection.rescore import score_candidates, view_prompt_and_answers  # noqa: E402
from pipeline.core.tasks import load_tasks  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"


def naive_scores(model, prompt_ids, answers) -> list[float]:
    out = []
    for answer in answers:
        ids = torch.tensor([list(prompt_ids) + list(answer)])
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        out.append(sum(float(logprobs[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(answer)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="2072aba6")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = load_tasks(DATA)[args.task]
    model, tokenizer = load_model_and_tokenizer("embedded")
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    right = task["test"][0]["output"]
    candidates = [right] + [[[(c + k) % 10 for c in row] for row in right] for k in range(1, args.candidates)]
    views = inference_augmentations(args.views, task_rng(0, args.task), len(task["train"]))

    score_candidates(model, tokenizer, encoder, DEFAULT_PROMPT_VERSION, task, 0, candidates[:1], views[:1])  # warm-up
    t0 = time.perf_counter()
    cached = score_candidates(model, tokenizer, encoder, DEFAULT_PROMPT_VERSION, task, 0, candidates, views,
                              batch_size=args.candidates)
    cached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive, tokens_naive, tokens_cached = [], 0, 0
    for view in views:
        prompt_ids, answers = view_prompt_and_answers(task, 0, candidates, view, encoder, tokenizer,
                                                      DEFAULT_PROMPT_VERSION)
        naive.append(naive_scores(model, prompt_ids, answers))
        tokens_naive += sum(len(prompt_ids) + len(a) for a in answers)
        tokens_cached += len(prompt_ids) + sum(len(a) for a in answers)
    naive_s = time.perf_counter() - t0
    diff = max(abs(cached[c][v] - naive[v][c]) for c in range(len(candidates)) for v in range(len(views)))
    result = {"task": args.task, "candidates": len(candidates), "views": len(views),
              "tokens_cached": tokens_cached, "tokens_naive": tokens_naive,
              "seconds_cached": round(cached_s, 2), "seconds_naive": round(naive_s, 2),
              "speedup": round(naive_s / cached_s, 2), "max_abs_logprob_diff": diff,
              "threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    print(f"{len(candidates)} candidates x {len(views)} views of {args.task}: cached {tokens_cached} tokens "
          f"{cached_s:.1f} s, naive {tokens_naive} tokens {naive_s:.1f} s -> {result['speedup']}x; "
          f"max |log-prob difference| {diff:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
