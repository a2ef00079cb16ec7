"""Depth-first search of a model's completions: every answer whose total probability is at least P.

Sampling draws answers one at a time and may draw the same one many times; a greedy answer is
only the locally best path.  The ARChitects (ARC Prize 2024) and NVARC (2025) instead enumerate
*all* completions above a probability threshold with a depth-first search over the next-token
distribution: since a completion's probability is the product of its tokens' probabilities, a
prefix below P can never grow into an answer above P, so the search prunes it.  At most 1/P
answers can exist, so the search is small, and most of its cost is the greedy path itself.

`dfs_completions` is exact (tests/test_search.py compares it with a brute-force enumeration by
full forward passes): children are explored best first, the KV cache of the current path is
kept and cropped when the search backs up, so every expansion costs one one-token forward pass.
A completion ends at the end-of-turn token or where `stop` says so (the closing fence of a grid);
a path that reaches `max_tokens` without ending is dropped.  The result is sorted by probability,
best first, and capped by `max_candidates`; `deadline` (a `time.monotonic()` value) stops the
search early and keeps what it found.

This is the batch-1 search (`dfs_batch_views: 1`) and the reference of the batched search,
`pipeline/sampling/batched_search.py`, which searches several views of a task together, one
batched forward pass per step, with the same result.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Found:
    token_ids: tuple[int, ...]
    logprob: float          # sum of the tokens' log-probabilities
    finish_reason: str = "stop"


class CachedPath:
    """A model, a prompt's KV cache and the tokens of the current search path on top of it."""

    def __init__(self, model, prompt_ids: Sequence[int]):
        import torch
        from transformers import DynamicCache

        self.model, self.torch = model, torch
        self.device = next(model.parameters()).device
        self.prompt_len = len(prompt_ids)
        self.cache = DynamicCache()
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.root = self._logprobs(out)
        self.forwards = 1

    def _logprobs(self, out):
        return self.torch.log_softmax(out.logits[0, -1].float(), dim=-1)

    def extend(self, path_len: int, token: int):
        """Log-probs of the next token after prompt + (the first `path_len` tokens of the current
        path) + `token`: the cache is cropped back to that prefix, then `token` is fed."""
        torch = self.torch
        surplus = self.cache.get_seq_length() - (self.prompt_len + path_len)
        if surplus > 0:
            self.cache.crop(-surplus)  # a negative count removes tokens (a positive length is deprecated)
        ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True)
        self.forwards += 1
        return self._logprobs(out)


def children(logprobs, budget: float) -> list[tuple[int, float]]:
    """(token, log-prob) of every next token whose log-prob is >= `budget`, best first."""
    torch = __import__("torch")
    keep = torch.nonzero(logprobs >= budget).flatten()
    if keep.numel() == 0:
        return []
    values = logprobs[keep]
    order = torch.argsort(values, descending=True, stable=True)
    return [(int(keep[i]), float(values[i])) for i in order]


def dfs_completions(model, prompt_ids: Sequence[int], min_prob: float, max_tokens: int, eos_id: int,
                    stop: Callable[[tuple[int, ...]], bool] | None = None, max_candidates: int | None = None,
                    deadline: float | None = None, clock: Callable[[], float] = time.monotonic
                    ) -> tuple[list[Found], dict]:
    """Every completion of `prompt_ids` with probability >= `min_prob` (see the module docstring):
    the batch-1 search, one view at a time (`dfs_batch_views: 1`), and the reference the batched
    search is tested against.  `deadline` is a `clock()` value.

    Returns (completions best first, stats: forwards, expanded, nodes (one-token forwards), stopped_early)."""
    if not 0 < min_prob <= 1:
        raise ValueError(f"min_prob must be in (0, 1], got {min_prob}")
    floor = math.log(min_prob)
    path = CachedPath(model, prompt_ids)
    found: list[Found] = []
    # the stack holds (path tokens, path log-prob); a node's children are pushed worst first,
    # so the best child is expanded next (best-first order within the depth-first search)
    stack = [(tok, lp) for tok, lp in reversed(children(path.root, floor))]
    stack = [((tok,), lp) for tok, lp in stack]
    stats = {"expanded": 0, "stopped_early": None}
    while stack:
        if deadline is not None and clock() > deadline:
            stats["stopped_early"] = "deadline"
            break
        tokens, logprob = stack.pop()
        stats["expanded"] += 1
        if tokens[-1] == eos_id or (stop is not None and stop(tokens)):
            found.append(Found(tokens, logprob))
            continue
        if len(tokens) >= max_tokens:
            continue  # no end within the budget: not an answer
        next_logprobs = path.extend(len(tokens) - 1, tokens[-1])
        for tok, lp in reversed(children(next_logprobs, floor - logprob)):
            stack.append((tokens + (tok,), logprob + lp))
    found.sort(key=lambda f: -f.logprob)
    if max_candidates is not None and len(found) > max_candidates:
        found, stats["stopped_early"] = found[:max_candidates], stats["stopped_early"] or "max_candidates"
    stats["forwards"] = path.forwards
    stats["nodes"] = path.forwards - 1  # one-token forwards (the prompt's is not a node)
    return found, stats


def stop_at_strings(tokenizer, stop: Sequence[str]) -> Callable[[tuple[int, ...]], bool] | None:
    """A `stop` test for `dfs_completions`: the decoded path contains one of `stop` (as the
    engines check stop strings).  Only paths whose last token holds a stop string's last
    character are decoded."""
    if not stop:
        return None
    last_chars = {s[-1] for s in stop}
    pieces: dict[int, str] = {}

    def check(tokens: tuple[int, ...]) -> bool:
        piece = pieces.get(tokens[-1])
        if piece is None:
            piece = pieces[tokens[-1]] = tokenizer.decode([tokens[-1]])
        if not any(ch in piece for ch in last_chars):
            return False
        text = tokenizer.decode(list(tokens))
        return any(s in text for s in stop)

    return check
