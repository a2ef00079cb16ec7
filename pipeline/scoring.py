"""Candidate scoring across augmentations, and the selection rules built on it.

A candidate answer to a test input (from sampling, DFS or both) is scored under K views of the
task (augmentations): in each view the candidate is transformed like the task, and the model's
log-probability of writing exactly that answer after the view's prompt is computed.  This is a
prefill only: no generation.  The view's prompt is computed once and its KV cache reused by every
candidate (repeated along the batch), so K views of N candidates cost K prompt prefills plus the
candidates' own tokens, not K x N prefills (`benchmarks/bench_scoring.py` measures both).

Selection rules (`select`), all on the same candidates:

* `vote`: voting v2 (count, then mean per-token log-prob), what `vote` does;
* `poe`: product of experts, the ARChitects' rule: the sum over the views of the candidate's
  log-probability (the product of the views' probabilities), highest first;
* `nvarc`: NVARC's (ARC Prize 2025) "times found minus mean negative log-likelihood": the
  candidate's count among the predictions minus the mean over the views of its NLL.

The answer's tokens are exactly those training taught the model to write (the completion of
`prompts.build_train_sample`: the grid after the assistant prefix and the end-of-turn token).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .augment import Augmentation
from .prompts import build_inference_prompt, build_train_sample

RULES = ("vote", "poe", "nvarc")


def answer_logprobs(model, prompt_ids: Sequence[int], answers: Sequence[Sequence[int]],
                    batch_size: int = 16) -> list[float]:
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
                     batch_size: int = 16) -> list[list[float]]:
    """`scores[c][v]`: log-probability of candidate c (a grid in the task's frame) under view v."""
    per_view = []
    for view in views:
        prompt_ids, answers = view_prompt_and_answers(task, test_index, candidates, view, encoder, tokenizer, version)
        per_view.append(answer_logprobs(model, prompt_ids, answers, batch_size))
    return [list(row) for row in zip(*per_view)] if per_view else [[] for _ in candidates]


@dataclass
class Candidate:
    grid: list
    count: int = 0                  # times found among the predictions
    mean_logprob: float = float("-inf")  # voting v2's tiebreak: mean per-token log-prob of its predictions
    view_logprobs: tuple[float, ...] = ()

    @property
    def poe(self) -> float:
        return sum(self.view_logprobs) if self.view_logprobs else float("-inf")

    @property
    def nvarc(self) -> float:
        if not self.view_logprobs:
            return float("-inf")
        return self.count - (-sum(self.view_logprobs) / len(self.view_logprobs))


def select(candidates: Sequence[Candidate], rule: str) -> list[Candidate]:
    """The candidates ranked by `rule` (see the module docstring), best first; ties keep the
    input order (the vote order)."""
    if rule == "vote":
        key = lambda c: (-c.count, -c.mean_logprob)  # noqa: E731
    elif rule == "poe":
        key = lambda c: -c.poe  # noqa: E731
    elif rule == "nvarc":
        key = lambda c: -c.nvarc  # noqa: E731
    else:
        raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(RULES)}")
    return sorted(candidates, key=key)


def candidates_from_ranked(ranked: Sequence[Mapping]) -> list[Candidate]:
    """Candidates from `voting.rank_predictions` rows (grid, count, mean_logprob), vote order."""
    return [Candidate(r["grid"], r["count"], r["mean_logprob"]) for r in ranked]
