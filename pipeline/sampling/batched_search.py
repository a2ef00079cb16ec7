"""Batched exact DFS: the views of a task searched together, one batched forward pass per step.

`search.dfs_completions` searches one augmented view at a time at batch 1: one one-token forward
per expanded node, so the weights are read once per node.  Here `dfs_batch_views` views (of one
adapter: the views and test inputs of a task) form a *wave*: each view's prompt is prefilled once
(at batch 1, the same forward as the batch-1 search), then every step expands one node of every
view of the wave in one forward pass of one token per row, reading the weights once for all.
Each view keeps its own frontier, best first (priority = cumulative log-prob), so a cut by a cap
leaves the most probable answers found; the result of a view is exactly the batch-1 search's
(the same completions above P, the same log-probs within 1e-4; tests/sampling/test_search.py
checks both against a brute-force enumeration by full forward passes).

The cache, and why it is exact and simple: one row per view, left-padded to the widest prompt
(`_Slab`, preallocated, written in place).  Each step appends one column to every row: the KV
of the token each row feeds.  A node's path is the set of columns its ancestors were fed in, so
expanding any node of the frontier -- a sibling after a deep branch, a backtrack -- needs no
copy and no recomputation: the row's attention mask shows the prompt, the node's ancestors'
columns and the new one, and the token's position id is its position in the view's own
sequence.  Masked columns (padding, abandoned branches) get exactly zero weight, so a row
computes what the unpadded batch-1 forward computes (fp32: within 1e-6).  When a view finishes,
its row is dropped (one copy of the remaining rows), so no step computes an idle row.

Decode steps attend with `grouped_attention`: grouped-query heads share their KV head through a
reshape (transformers' masked SDPA path repeats every KV head per query head, copying the whole
cache each step, which on a CPU costs more than the batching saves).  The model is switched to it
only for the decode steps; the prefill runs the model's own attention.  The transformers
contracts used are only these: a 4-D attention mask is used as given, the attention layers call
`past_key_values.update(key, value, layer_idx)` and attend over what it returns, and an
attention function registered with `AttentionInterface` is used when the config names it.

Caps (sampling settings `dfs_batch_views`, `dfs_batch_seconds`, `dfs_task_seconds`; NVARC 2025
searched 16 views in batches of 4 with 540 s per batch and 1,200 s per task): a wave stops at
`batch_seconds`, a task's views stop when its waves together reach `task_seconds`, each with
what it found; `deadline` stops everything.  The clock is injected (`clock`), so tests need no
wall time.  `dfs_batch_views: 1` runs the batch-1 search itself (the reference).

`search_engine` runs it over a transformers engine's model, adapter by adapter (the sampling stage
under `--method dfs`, the only place these modules are imported: a notebook whose commands never
search does not embed them); that entry sits beside the search it drives rather than in the engine, which every sampling run
imports.

Speculative DFS (`speculation.py`) plugs into the wave: after the prefills, each view's proposed
answers are verified in one pass into the same cache, and a node whose distribution that pass
computed is expanded without a forward (`_Row.next_unknown`); `waves` asks each wave's
proposals when it starts, so later waves verify what earlier waves found.  The module is over 400 lines because the cache,
the wave's step loop, the waves and their caps are one mechanism (and `search_engine` its entry) that is tested as one: split,
each part would only make sense with the others' private state.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

from pipeline.core.settings import SAMPLE
from pipeline.sampling.generation import Completion, decode_completion
from pipeline.sampling.search import Found, dfs_completions, stop_at_strings
from pipeline.sampling.speculation import STEP_TOKENS, Continuations, Known, known_children, proposal_trie, \
    verify_proposals

GROUPED_ATTENTION = "arc_ttft_grouped"  # the name `grouped_attention` is registered under
SPARE_COLUMNS = 64  # a wave's cache starts this many columns (steps) past its widest prompt, then doubles


@dataclass(frozen=True)
class View:
    """One prompt to search (an augmented view of a test input) and its answer budget."""
    prompt_ids: tuple[int, ...]
    max_tokens: int


# ----------------------------------------------------------------------------- the model side

def grouped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Masked attention for grouped-query heads without repeating the KV heads: the query heads
    of a KV head are folded into its rows (transformers orders them so: head = kv_head * groups + j).
    `attention_mask`: additive, [batch, 1, queries, keys].  Returns (output [b, q, heads, d], None)
    as transformers' attention functions do."""
    import torch

    batch, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups * queries, dim)
    scores = torch.matmul(folded, key.transpose(-1, -2)).float() * (scaling if scaling is not None else dim ** -0.5)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :key.shape[-2]].float()
        scores = scores + (mask.repeat(1, 1, groups, 1) if queries > 1 else mask)
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(weights, value).reshape(batch, heads, queries, dim)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)


class _Attention:
    """Inside the block the model's configs name `grouped_attention` (restored after).  Every
    module's config is switched: a peft wrapper's and its base model's are the same object, but
    that is peft's detail."""

    def __init__(self, model):
        configs = (getattr(m, "config", None) for m in model.modules())
        self.configs = list({id(c): c for c in configs if hasattr(c, "_attn_implementation")}.values())

    def __enter__(self):
        _register_attention()
        self.saved = [c._attn_implementation for c in self.configs]
        for c in self.configs:
            c._attn_implementation = GROUPED_ATTENTION

    def __exit__(self, *exc):
        for c, saved in zip(self.configs, self.saved):
            c._attn_implementation = saved


_SLAB_CLASS = None


def _slab_class():
    """`_Slab`, a transformers `DynamicCache` whose `update` writes in place into preallocated
    [rows, kv_heads, columns, dim] buffers at column `length` and returns views of them."""
    global _SLAB_CLASS
    if _SLAB_CLASS is None:
        from transformers import DynamicCache

        class _Slab(DynamicCache):
            def __init__(self, keys: list, values: list, length: int):
                super().__init__()
                self.slab_keys, self.slab_values, self.length = keys, values, length

            def update(self, key_states, value_states, layer_idx, *args, **kwargs):
                end = self.length + key_states.shape[-2]
                if end > self.slab_keys[layer_idx].shape[-2]:
                    self.grow(end)
                self.slab_keys[layer_idx][:, :, self.length:end] = key_states
                self.slab_values[layer_idx][:, :, self.length:end] = value_states
                return self.slab_keys[layer_idx][:, :, :end], self.slab_values[layer_idx][:, :, :end]

            def get_seq_length(self, layer_idx: int = 0) -> int:
                return self.length

            def grow(self, columns: int) -> None:
                """At least `columns` columns (doubling: a copy now and then, never per step)."""
                for buffers in (self.slab_keys, self.slab_values):
                    for i, old in enumerate(buffers):
                        new = old.new_zeros((*old.shape[:2], max(columns, 2 * old.shape[2]), old.shape[3]))
                        new[:, :, :self.length] = old[:, :, :self.length]
                        buffers[i] = new

            def keep_rows(self, rows: list[int]) -> None:
                import torch

                index = torch.tensor(rows, device=self.slab_keys[0].device)
                for buffers in (self.slab_keys, self.slab_values):
                    for i, old in enumerate(buffers):
                        buffers[i] = old.index_select(0, index)

        _SLAB_CLASS = _Slab
    return _SLAB_CLASS


def _prefill(model, prompt_ids: Sequence[int]):
    """The prompt's forward at batch 1 with the model's own attention, as the batch-1 search
    does: (log-probs of the first answer token, [(key, value)] per layer)."""
    import torch
    from transformers import DynamicCache

    class Recorder(DynamicCache):  # keeps what each layer caches: the prompt's keys and values
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            self.recorded[layer_idx] = (key_states, value_states)
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    cache = Recorder()
    cache.recorded = {}
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return torch.log_softmax(out.logits[0, -1].float(), dim=-1), [cache.recorded[i] for i in sorted(cache.recorded)]


# ----------------------------------------------------------------------------- one wave

@dataclass
class _Row:
    """One view of a wave: its frontier (a heap of (-log-prob, order, tokens, columns)), what it found."""
    index: int
    view: View
    stop_at: float | None
    stop_reason: str | None
    start: int = 0                      # the row's first prompt column (left padding before it)
    frontier: list = field(default_factory=list)
    found: list = field(default_factory=list)
    stats: dict = field(default_factory=lambda: {"expanded": 0, "forwards": 1, "nodes": 0, "speculated": 0,
                                                 "continued": 0, "verified_tokens": 0, "guessed_tokens": 0,
                                                 "stopped_early": None})
    pushed: int = 0
    known: dict = field(default_factory=dict)  # path -> Known: distributions a pass computed (verification, guesses)
    continuations: Continuations | None = None  # speculative: what a step feeds after a node's own token

    def floor_for_top(self, max_candidates: int | None) -> float:
        """Log-prob below which no node can reach the top `max_candidates` found so far."""
        if max_candidates is None or len(self.found) < max_candidates:
            return -math.inf
        return sorted((f.logprob for f in self.found), reverse=True)[max_candidates - 1]

    def grow(self, logprobs, tokens: tuple, logprob: float, columns: tuple, floor: float, eos_id: int,
             stop, max_candidates: int | None) -> None:
        """The children of a node (next-token `logprobs` after `tokens`) above the floor: an ended
        one is found, one at the answer budget without an end is dropped (as the batch-1 search)."""
        import torch

        keep = torch.nonzero(logprobs >= floor - logprob).flatten()
        self.grow_from(keep.tolist(), logprobs[keep].tolist(), tokens, logprob, columns, floor, eos_id, stop)

    def grow_from(self, next_tokens, next_logprobs, tokens: tuple, logprob: float, columns: tuple, floor: float,
                  eos_id: int, stop) -> None:
        for token, lp in zip(next_tokens, next_logprobs):
            if lp < floor - logprob:
                continue  # a verified node's children are kept with some slack (speculation.SLACK)
            child, total = tokens + (token,), logprob + lp
            if token == eos_id or (stop is not None and stop(child)):
                self.found.append(Found(child, total))
                if self.continuations is not None:
                    self.continuations.add(child)  # its branches are guessed to continue like it
            elif len(child) < self.view.max_tokens:
                self.pushed += 1
                heapq.heappush(self.frontier, (-total, self.pushed, child, columns))

    def next_node(self, max_candidates: int | None):
        """The most probable node that can still matter, or None when the view is done."""
        floor = self.floor_for_top(max_candidates)
        while self.frontier:
            neg, _, tokens, columns = heapq.heappop(self.frontier)
            if -neg >= floor:
                return -neg, tokens, columns
            self.stats["stopped_early"] = "max_candidates"  # pruned: below the top answers found
            self.frontier.clear()
        return None

    def next_unknown(self, max_candidates: int | None, floor: float, eos_id: int, stop):
        """`next_node`, expanding on the way every node the verification pass computed (no
        forward: its children come from the pass), until a node that needs a forward."""
        node = self.next_node(max_candidates)
        while node is not None and node[1] in self.known:
            logprob, tokens, columns = node
            known: Known = self.known[tokens]
            self.stats["expanded"] += 1
            self.stats["speculated"] += 1
            self.stats["continued"] += known.continued
            self.grow_from(known.tokens, known.logprobs, tokens, logprob, columns + (known.column,), floor, eos_id, stop)
            node = self.next_node(max_candidates)
        return node

    def chain(self, tokens: tuple, limit: int, ends: Callable[[tuple], bool]) -> tuple[int, ...]:
        """What a step feeds for the node `tokens`: its last token, then up to `limit - 1` guessed
        ones (`Continuations`), cut before a token that would end the path or reach the answer
        budget (such a node is never expanded)."""
        guess = self.continuations.guess(tokens, limit - 1) if self.continuations is not None else ()
        for j, token in enumerate(guess):
            path = tokens + guess[:j + 1]
            if ends(path) or len(path) >= self.view.max_tokens:
                guess = guess[:j]
                break
        return (tokens[-1],) + tuple(guess)

    def result(self, max_candidates: int | None) -> list[Found]:
        found = sorted(self.found, key=lambda f: -f.logprob)
        if max_candidates is not None and len(found) > max_candidates:
            found = found[:max_candidates]
            self.stats["stopped_early"] = self.stats["stopped_early"] or "max_candidates"
        return found


def search_wave(model, views: Sequence[View], min_prob: float, eos_id: int, stop=None,
                max_candidates: int | None = None, stops: Sequence[tuple[float | None, str | None]] = (),
                clock: Callable[[], float] = time.monotonic,
                on_done: Callable[[int, list[Found], dict], None] | None = None,
                proposals: Sequence[Sequence[Sequence[int]] | None] | None = None) -> list[tuple[list[Found], dict]]:
    """Search `views` together (the module docstring): per view (completions best first, stats:
    `nodes` one-token forwards, `speculated` nodes expanded from the verification pass,
    `verified_tokens` fed in it).

    `stops[i]`: (a `clock()` time, the reason) at which view i stops with what it found (None: no
    cap).  `on_done(i, found, stats)` is called as each view finishes.  `proposals[i]`: token
    sequences to verify for view i before its search (speculative DFS, `speculation.py`; the
    result is the same with or without them)."""
    import torch

    if not 0 < min_prob <= 1:
        raise ValueError(f"min_prob must be in (0, 1], got {min_prob}")
    floor = math.log(min_prob)
    stops = list(stops) or [(None, None)] * len(views)
    rows = [_Row(i, v, *stops[i]) for i, v in enumerate(views)]
    if proposals is not None:  # speculative: every step also feeds each node's guessed continuation
        for row, offered in zip(rows, proposals):
            row.continuations = Continuations(row.view.prompt_ids, offered)
    width = max(len(v.prompt_ids) for v in views)
    slab, done, roots = None, {}, []

    def ends(path: tuple) -> bool:
        return path[-1] == eos_id or (stop is not None and stop(path))

    def finish(row: _Row, reason: str | None = None) -> None:
        if reason is not None:
            row.stats["stopped_early"] = reason
        done[row.index] = (row.result(max_candidates), row.stats)
        if on_done is not None:
            on_done(row.index, *done[row.index])

    with torch.inference_mode():
        for row in rows:
            root, layers = _prefill(model, row.view.prompt_ids)
            row.start = width - len(row.view.prompt_ids)
            if slab is None:
                capacity = width + SPARE_COLUMNS
                keys = [k.new_zeros((len(rows), k.shape[1], capacity, k.shape[3])) for k, _ in layers]
                values = [v.new_zeros((len(rows), v.shape[1], capacity, v.shape[3])) for _, v in layers]
                slab = _slab_class()(keys, values, width)
            for i, (k, v) in enumerate(layers):
                slab.slab_keys[i][row.index, :, row.start:width] = k[0]
                slab.slab_values[i][row.index, :, row.start:width] = v[0]
            row.grow(root, (), 0.0, (), floor, eos_id, stop, max_candidates)
            roots.append(root)
        live = list(rows)  # live[r] is the slab's row r
        device = slab.slab_keys[0].device
        dtype = slab.slab_keys[0].dtype
        with _Attention(model):
            if proposals is not None and any(proposals):
                tries = [proposal_trie(p or (), row.view.max_tokens, ends) for row, p in zip(rows, proposals)]
                pad = eos_id if eos_id is not None else 0
                known, fed = verify_proposals(model, slab, [(row.start, width, len(row.view.prompt_ids), root, trie)
                                                            for row, root, trie in zip(rows, roots, tries)], floor, pad)
                for row, row_known, row_fed in zip(rows, known, fed):
                    row.known, row.stats["verified_tokens"] = row_known, row_fed
            del roots
            while live:
                now = clock()
                nodes, keep = [], []
                for r, row in enumerate(live):
                    node = None if row.stop_at is not None and now >= row.stop_at else \
                        row.next_unknown(max_candidates, floor, eos_id, stop)
                    if node is None:
                        finish(row, row.stop_reason if row.frontier else None)
                    else:
                        nodes.append(node)
                        keep.append(r)
                if len(keep) < len(live):
                    live = [live[r] for r in keep]
                    if not live:
                        break
                    slab.keep_rows(keep)
                # each row feeds its node's token, then (speculative) a guessed continuation: one
                # chain per row, sharing `STEP_TOKENS` (the step's width is its longest chain)
                limit = max(1, STEP_TOKENS // len(live))
                chains = [row.chain(tokens, limit, ends) for row, (_, tokens, _) in zip(live, nodes)]
                span, column = max(map(len, chains)), slab.length
                # a fed token sees its row's prompt, its node's ancestors' columns and its chain up
                # to itself; a pad (a shorter chain) sees only itself and nothing sees it
                mask = torch.full((len(live), 1, span, column + span), torch.finfo(dtype).min, dtype=dtype)
                ids = torch.full((len(live), span), eos_id if eos_id is not None else 0, dtype=torch.long)
                positions = torch.zeros((len(live), span), dtype=torch.long)
                for r, (row, (_, tokens, columns), chain) in enumerate(zip(live, nodes, chains)):
                    first = len(row.view.prompt_ids) + len(tokens) - 1
                    for j in range(span):
                        if j >= len(chain):
                            positions[r, j] = first
                            mask[r, 0, j, column + j] = 0
                            continue
                        ids[r, j], positions[r, j] = chain[j], first + j
                        mask[r, 0, j, row.start:width] = 0
                        mask[r, 0, j, list(columns) + list(range(column, column + j + 1))] = 0
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                            position_ids=positions.to(device), past_key_values=slab, use_cache=True)
                slab.length += span
                logprobs = torch.log_softmax(out.logits.float(), dim=-1)
                for r, (row, (logprob, tokens, columns), chain) in enumerate(zip(live, nodes, chains)):
                    row.stats["expanded"] += 1
                    row.stats["forwards"] += 1
                    row.stats["nodes"] += 1
                    row.stats["guessed_tokens"] += len(chain) - 1
                    row.grow(logprobs[r, 0], tokens, logprob, columns + (column,), floor, eos_id, stop, max_candidates)
                    path, lp = tokens, logprob  # the guessed nodes: their distributions came with the step
                    for j in range(1, len(chain)):
                        lp += float(logprobs[r, j - 1, chain[j]])
                        path += (chain[j],)
                        if lp < floor:
                            break  # below P: never expanded, nor anything under it
                        row.known[path] = known_children(logprobs[r, j], lp, floor, column + j, continued=True)
    return [done[i] for i in range(len(views))]


# ----------------------------------------------------------------------------- waves and caps

def waves(count: int, batch_views: int, propose: Callable[[int], list | None] | None = None):
    """The views' waves, in order: `batch_views` consecutive views each.  With speculation
    (`propose`) each view's proposals are asked when its wave is formed, after the waves before it
    ended: the first wave of a test input has none (nothing found yet), the later ones verify what
    the earlier found.  (Not a first view alone, then the rest: a wave's steps are as many as its
    slowest view's nodes, so a lone first view adds its whole search in steps on top of the
    waves after it.)  A generator.  Yields (view indices, their proposals or None)."""
    for first in range(0, count, batch_views):
        wave = list(range(first, min(first + batch_views, count)))
        yield wave, None if propose is None else [propose(i) for i in wave]


def search_views(model, views: Sequence[View], min_prob: float, eos_id: int, stop=None,
                 max_candidates: int | None = None, *, batch_views: int = 4, batch_seconds: float | None = None,
                 task_seconds: float | None = None, groups: Sequence[Hashable] | None = None,
                 spent: dict | None = None, deadline: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_done: Callable[[int, list[Found], str | None, dict], None] | None = None,
                 propose: Callable[[int], list | None] | None = None) -> list:
    """Every view's completions above `min_prob`, in waves of `batch_views` consecutive views.

    `groups[i]`: the task of view i; `spent`: seconds each task has searched so far (updated
    here, so the caller keeps it across calls).  A wave's views stop at `batch_seconds` after
    it starts, or when their task's `task_seconds` are spent; a task with none left gets no
    search (its views end with nothing, reason "task_seconds").  `deadline` (a `clock()` time)
    stops the wave in flight and starts no other.  `on_done(i, found, stopped, stats)` is called
    for every view that ends: searched to the end (stopped None), cut by a cap with what it found,
    or cut by the deadline having found something; a view the deadline cut with nothing, or
    never started, is not reported (it is still to do).  `stats["nodes"]`: the one-token forwards
    its search took.  `propose(i)`: speculative DFS (`speculation.py`, `waves`): the token
    sequences to verify for view i (None or empty: none yet); with it every wave
    runs the batched search (a wave of one view too), without it `batch_views` 1 is the batch-1
    search.  Returns per view its completions, or None when it was not reported."""
    if batch_views < 1:
        raise ValueError(f"dfs_batch_views must be >= 1, got {batch_views}")
    groups = list(groups) if groups is not None else [None] * len(views)
    spent = {} if spent is None else spent
    results: list = [None] * len(views)

    def report(i: int, found: list[Found], stopped: str | None, stats: dict) -> None:
        if stopped == "deadline" and not found:
            return
        results[i] = found
        if on_done is not None:
            on_done(i, found, stopped, stats)

    for wave, proposals in waves(len(views), batch_views, propose):
        started = clock()
        if deadline is not None and started >= deadline:
            break
        members, stops, offered = [], [], []
        for i, offer in zip(wave, proposals or [None] * len(wave)):
            left = None if task_seconds is None else task_seconds - spent.get(groups[i], 0.0)
            if left is not None and left <= 0:
                report(i, [], "task_seconds", {"nodes": 0})
                continue
            caps = [(deadline, "deadline"), (None if batch_seconds is None else started + batch_seconds, "batch_seconds"),
                    (None if left is None else started + left, "task_seconds")]
            members.append(i)
            offered.append(offer)
            stops.append(min(((t, why) for t, why in caps if t is not None), default=(None, None)))
        if not members:
            continue
        if batch_views == 1 and propose is None:  # the batch-1 search itself
            [i], [(stop_at, why)] = members, stops
            found, stats = dfs_completions(model, views[i].prompt_ids, min_prob, views[i].max_tokens, eos_id, stop,
                                           max_candidates, stop_at, clock)
            report(i, found, why if stats["stopped_early"] == "deadline" else stats["stopped_early"], stats)
        else:
            search_wave(model, [views[i] for i in members], min_prob, eos_id, stop, max_candidates, stops, clock,
                        lambda k, found, stats: report(members[k], found, stats["stopped_early"], stats),
                        offered if propose is not None else None)
        seconds = clock() - started
        for group in {groups[i] for i in members}:
            spent[group] = spent.get(group, 0.0) + seconds
    return results


# ----------------------------------------------------------------------------- over an engine

def search_engine(engine, requests: Sequence, min_prob: float, max_candidates: int | None = None,
                  deadline: float | None = None, *, batch_views: int = SAMPLE.dfs_batch_views,
                  batch_seconds: float | None = None, task_seconds: float | None = None, groups=None,
                  spent: dict | None = None, on_done=None, clock=time.monotonic, propose=None
                  ) -> list[list[Completion] | None]:
    """Exact DFS (`search_views`) over a `TransformersEngine`'s model: every completion of each
    request (`generation.Request`) with probability >= `min_prob`, best first, `batch_views`
    requests of one adapter searched together (1: one at a time, the batch-1 search).  `deadline`:
    a `clock()` value.  `groups[i]` (the task of request i), `spent`, `batch_seconds`,
    `task_seconds`: the caps; `on_done(i, completions, stopped, stats)` is called as each request
    finishes (stats: `nodes`, the one-token forwards its search took).  `propose(i)`: speculative
    DFS, the answers to verify for request i (`speculation`; None: a first view).  Returns per
    request its completions, or None for one the deadline left unfinished."""
    results: list[list[Completion] | None] = [None] * len(requests)
    by_adapter: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        by_adapter.setdefault((r.adapter, tuple(r.stop)), []).append(i)
    spent = {} if spent is None else spent
    for (adapter, stop), indices in by_adapter.items():
        check = stop_at_strings(engine.tokenizer, stop)

        def done(k, found, stopped, stats, indices=indices):
            i = indices[k]
            results[i] = [Completion(list(f.token_ids), decode_completion(engine.tokenizer, list(f.token_ids), engine.eos_id),
                                     f.logprob, f.finish_reason) for f in found]
            if on_done is not None:
                on_done(i, results[i], stopped, stats)

        with engine.serving(adapter) as model:
            search_views(model, [View(tuple(requests[i].prompt_ids), requests[i].max_tokens) for i in indices],
                         min_prob, engine.eos_id, check, max_candidates, batch_views=batch_views,
                         batch_seconds=batch_seconds, task_seconds=task_seconds,
                         groups=None if groups is None else [groups[i] for i in indices], spent=spent,
                         deadline=deadline, clock=clock, on_done=done,
                         propose=None if propose is None else (lambda k, indices=indices: propose(indices[k])))
    return results
