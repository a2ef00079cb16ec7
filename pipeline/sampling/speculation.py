"""Speculative DFS: verify whole proposed answers in one forward pass, search token by token only off them.

The DFS (`search.py`, `batched_search.py`) pays one one-token forward per expanded node, and most
nodes lie on a few paths: the answers the search finds.  The views of one test input mostly find
the same answers (a view is the task transformed, and the answer transforms with it), so once
one view is searched the others' answers are known in advance up to the transformation.  Here a
view's *proposals* -- the answers other views of its test input found, mapped into this view's
frame (`Proposals`) -- are fed after the prompt as one teacher-forced pass (`verify_proposals`):
the next-token distribution after every prefix of every proposal comes out of that one pass, and
those are exactly the distributions the DFS would compute when it expands those nodes.  The search
then runs unchanged, best first, and takes a node's distribution from the pass where it has one;
only nodes off the proposals need a one-token forward of their own (their KV cache: the prompt
and the proposals' columns up to the branch point, as any node's).

Why it is exact: speculation changes where a distribution comes from, never which nodes are
expanded or how a path's log-prob is summed.  A wrong proposal costs its tokens in the pass and
nothing else (its distributions are simply not used past the first token the search does not
take); a right one saves all of its one-token forwards.  Several proposals of a view share their
common prefix (a trie, fed once): each token attends to the prompt and its own ancestors in the
trie through the same 4-D mask as the batched search's steps.  The children of a verified node
are kept a little below the search's floor (`SLACK`) and filtered again with the search's own
budget when it expands the node, so no rounding difference can add or drop a child.

Where proposals come from (`Proposals`, fed by the run loop as each view's records are written):
the distinct answers found so far for the test input (in the task's frame), most often found
first, then most probable; each is mapped into the view (its augmentation) and tokenized as the
completion training taught the model (`plan.answer_completion`).  The first view of a test input
has none: it is searched alone, so the views after it have its answers to verify
(`batched_search.search_views`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pipeline.core.encoders import GridEncoder
from pipeline.core.tasks import valid_grid_key
from pipeline.sampling.plan import PlanItem, answer_completion

SLACK = 1e-3         # a verified node's children are kept this far below the floor, filtered again when used
VERIFY_CHUNK = 128   # trie tokens per row fed in one forward pass (bounds the logits' memory: rows x chunk x vocab)
MAX_PROPOSALS = 4    # distinct answers proposed to a view


@dataclass(frozen=True)
class Known:
    """A node whose next-token distribution the verification pass computed: the column its last
    token was fed in, and its children above the floor (with `SLACK`), best first."""
    column: int
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]


def proposal_trie(proposals: Sequence[Sequence[int]], max_tokens: int, ends: Callable[[tuple], bool]
                  ) -> list[tuple[tuple[int, ...], int]]:
    """The nodes to feed, parents first: (path, index of its parent, -1 for a first token).  A
    node is fed when the search could expand it: it has not ended (`ends`: end-of-turn or stop)
    and is shorter than the answer budget; a proposal is cut there."""
    index: dict[tuple[int, ...], int] = {}
    nodes: list[tuple[tuple[int, ...], int]] = []
    for proposal in proposals:
        for depth in range(1, len(proposal) + 1):
            path = tuple(proposal[:depth])
            if ends(path) or depth >= max_tokens:
                break
            if path not in index:
                index[path] = len(nodes)
                nodes.append((path, index.get(path[:-1], -1)))
    return nodes


def verify_proposals(model, cache, rows: Sequence[tuple[int, int, int, object, list]], floor: float,
                     pad_id: int = 0) -> list[dict[tuple[int, ...], Known]]:
    """Feed every row's proposal trie after its prompt, in passes of `VERIFY_CHUNK` tokens per
    row, into `cache` (the batched search's in-place cache, its `length` the first free column,
    grown as needed).  `rows[r]`: (first prompt column, prompt end column, prompt length, the
    log-probs after the prompt, `proposal_trie` nodes).  Trie node k of every row goes in column
    `base + k`; a row with fewer nodes feeds pads that attend only to themselves (no real token
    attends them).  Returns per row the `Known` of every trie node the search can reach (its path
    log-prob >= `floor`).  Run with the batched search's attention (`batched_search._Attention`)."""
    import torch

    size = max((len(trie) for *_, trie in rows), default=0)
    if size == 0:
        return [{} for _ in rows]
    base = cache.length
    if base + size > cache.slab_keys[0].shape[-2]:
        cache.grow(base + size)
    device, dtype = cache.slab_keys[0].device, cache.slab_keys[0].dtype
    ancestors = []  # per row: [node, node] True where node j is node k or an ancestor of it
    for *_, trie in rows:
        seen = torch.zeros((len(trie), len(trie)), dtype=torch.bool)
        for k, (_, parent) in enumerate(trie):
            if parent >= 0:
                seen[k] = seen[parent]
            seen[k, k] = True
        ancestors.append(seen)
    path_logprob = [dict() for _ in rows]  # node -> its path's log-prob (set by its parent)
    for r, (_, _, _, root, trie) in enumerate(rows):
        for k, (path, parent) in enumerate(trie):
            if parent < 0:
                path_logprob[r][k] = float(root[path[0]])
    children = [[[] for _ in trie] for *_, trie in rows]
    for r, (*_, trie) in enumerate(rows):
        for k, (_, parent) in enumerate(trie):
            if parent >= 0:
                children[r][parent].append(k)
    known: list[dict] = [{} for _ in rows]
    for a in range(0, size, VERIFY_CHUNK):
        b = min(a + VERIFY_CHUNK, size)
        ids = torch.full((len(rows), b - a), pad_id, dtype=torch.long)
        positions = torch.zeros((len(rows), b - a), dtype=torch.long)
        mask = torch.full((len(rows), 1, b - a, base + b), torch.finfo(dtype).min, dtype=dtype)
        for r, (start, end, prompt_len, _, trie) in enumerate(rows):
            for k in range(a, b):
                if k < len(trie):
                    path = trie[k][0]
                    ids[r, k - a], positions[r, k - a] = path[-1], prompt_len + len(path) - 1
                    mask[r, 0, k - a, start:end] = 0
                    n = min(b, len(trie))  # its ancestors are fed before it
                    mask[r, 0, k - a, base:base + n][ancestors[r][k, :n]] = 0
                else:
                    positions[r, k - a] = prompt_len
                    mask[r, 0, k - a, base + k] = 0
        cache.length = base + a
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    past_key_values=cache, use_cache=True)
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        for r, (*_, trie) in enumerate(rows):
            for k in range(a, min(b, len(trie))):
                lp = path_logprob[r].get(k)
                if lp is None or lp < floor:
                    continue  # below P: the search never expands it (nor anything under it)
                dist = logprobs[r, k - a]
                keep = torch.nonzero(dist >= floor - lp - SLACK).flatten()
                values = dist[keep]
                order = torch.argsort(values, descending=True, stable=True)
                known[r][trie[k][0]] = Known(base + k, tuple(keep[order].tolist()), tuple(values[order].tolist()))
                for c in children[r][k]:
                    path_logprob[r][c] = lp + float(dist[trie[c][0][-1]])
    cache.length = base + size
    return known


@dataclass
class Proposals:
    """The answers found so far for each test input (task frame), proposed to its other views.

    `add(item, records)` takes a searched item's prediction records (the run loop calls it as
    they are written); `for_item(item)` is None while no view of the item's test input has been
    searched (the item is a *first view*), else the token ids of up to `limit` answers in the
    item's frame: most often found first, then most probable."""
    tokenizer: object
    encoder: GridEncoder
    version: str
    limit: int = MAX_PROPOSALS
    found: dict = field(default_factory=dict)    # (task_id, test_index) -> {grid key: [count, best log-prob, grid]}
    mapped: dict = field(default_factory=dict)   # (sample_index-ish augmentation, grid key) -> token ids

    def add(self, item: PlanItem, records: Sequence[dict]) -> None:
        answers = self.found.setdefault((item.task_id, item.test_index), {})
        for record in records:
            if record.get("grid") is None:
                continue
            key = valid_grid_key(record["grid"])
            lp = record.get("cumulative_logprob")
            entry = answers.setdefault(key, [0, -math.inf, record["grid"]])
            entry[0] += 1
            entry[1] = max(entry[1], lp if lp is not None else -math.inf)

    def for_item(self, item: PlanItem) -> list[tuple[int, ...]] | None:
        answers = self.found.get((item.task_id, item.test_index))
        if answers is None:
            return None
        best = sorted(answers.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[:self.limit]
        proposals = []
        for key, (_, _, grid) in best:
            cache_key = (repr(item.augmentation.to_dict()), key)
            if cache_key not in self.mapped:
                text = answer_completion(item.augmentation.apply_grid(grid), self.encoder, self.tokenizer, self.version)
                self.mapped[cache_key] = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            proposals.append(self.mapped[cache_key])
        return proposals
