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
completion training taught the model (`plan.answer_completion`).  The first wave of a test
input's views has none; every later wave verifies what the earlier ones found
(`batched_search.waves`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pipeline.core.encoders import GridEncoder
from pipeline.core.tasks import valid_grid_key
from pipeline.sampling.plan import PlanItem, answer_completion

SLACK = 1e-3         # a verified node's children are kept this far below the floor, filtered again when used
VERIFY_DEPTH = 32    # trie levels a verification round feeds past the last node known to be above P
MAX_PROPOSALS = 4    # distinct answers proposed to a view
STEP_TOKENS = 16     # tokens a search step feeds over all its rows (a node and its guessed continuation each)
ALIGN = 4            # tokens before a branch's own that must agree with a source at the same positions
NGRAM = 3            # the longest context a continuation is looked up by
# the algorithm's version: 2 = proposals verified, then branches continued (`Continuations`);
# benchmarks name their stages by it, so a changed search is not read from an older run's files
VERSION = 2


@dataclass(frozen=True)
class Known:
    """A node whose next-token distribution the verification pass computed: the column its last
    token was fed in, and its children above the floor (with `SLACK`), best first."""
    column: int
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    continued: bool = False  # computed by a step's guessed continuation, not the verification pass


def known_children(dist, logprob: float, floor: float, column: int, continued: bool = False) -> Known:
    """The `Known` of a node of path log-prob `logprob` whose next-token log-probs `dist` a pass
    computed: its children above `floor` with `SLACK`, best first."""
    import torch

    keep = torch.nonzero(dist >= floor - logprob - SLACK).flatten()
    values = dist[keep]
    order = torch.argsort(values, descending=True, stable=True)
    return Known(column, tuple(keep[order].tolist()), tuple(values[order].tolist()), continued)


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
                     pad_id: int = 0) -> tuple[list[dict[tuple[int, ...], Known]], list[int]]:
    """Feed every row's proposal trie after its prompt into `cache` (the batched search's
    in-place cache, its `length` the first free column, grown as needed), all rows in one forward
    pass per round.  `rows[r]`: (first prompt column, prompt end column, prompt length, the
    log-probs after the prompt, `proposal_trie` nodes).  A round feeds, per row, the trie nodes
    the search can still reach (path log-prob >= `floor`, known once the parent's distribution
    is) and up to `VERIFY_DEPTH` levels below them whose log-prob is not known yet: a proposal
    that leaves P costs at most that many tokens past the point, a right one `len / VERIFY_DEPTH`
    rounds.  Each fed token attends to its row's prompt and its trie ancestors' columns; a row
    with fewer tokens feeds pads that attend only to themselves (no real token attends them).
    Returns per row the `Known` of every trie node the search can reach, and the tokens fed
    (pads not counted).  Run with the batched
    search's attention (`batched_search._Attention`)."""
    import torch

    tries = [trie for *_, trie in rows]
    known: list[dict] = [{} for _ in rows]
    if not any(tries):
        return known, [0] * len(rows)
    device, dtype = cache.slab_keys[0].device, cache.slab_keys[0].dtype
    logprob = [{k: float(root[path[0]]) for k, (path, parent) in enumerate(trie) if parent < 0}
               for (*_, root, trie) in rows]          # node -> its path's log-prob, once known
    column: list[dict[int, int]] = [{} for _ in rows]  # node -> the column it was fed in
    children = [[[] for _ in trie] for trie in tries]
    for r, trie in enumerate(tries):
        for k, (_, parent) in enumerate(trie):
            if parent >= 0:
                children[r][parent].append(k)
    while True:
        chosen = []
        for r, trie in enumerate(tries):
            ahead, picked = {}, []  # ahead: levels below the last node whose log-prob is known
            for k, (_, parent) in enumerate(trie):
                if k in column[r]:
                    continue
                if k in logprob[r]:
                    if logprob[r][k] < floor:
                        continue  # below P: never expanded, nor anything under it
                    ahead[k] = 0
                elif parent in ahead and ahead[parent] + 1 < VERIFY_DEPTH:
                    ahead[k] = ahead[parent] + 1
                else:
                    continue
                picked.append(k)
            chosen.append(picked)
        size = max(len(picked) for picked in chosen)
        if size == 0:
            break
        first = cache.length
        if first + size > cache.slab_keys[0].shape[-2]:
            cache.grow(first + size)
        ids = torch.full((len(rows), size), pad_id, dtype=torch.long)
        positions = torch.zeros((len(rows), size), dtype=torch.long)
        mask = torch.full((len(rows), 1, size, first + size), torch.finfo(dtype).min, dtype=dtype)
        for r, ((start, end, prompt_len, _, trie), picked) in enumerate(zip(rows, chosen)):
            for j, k in enumerate(picked):
                column[r][k] = first + j
            for j in range(size):
                if j >= len(picked):
                    positions[r, j] = prompt_len
                    mask[r, 0, j, first + j] = 0
                    continue
                path, ancestor = trie[picked[j]][0], picked[j]
                ids[r, j], positions[r, j] = path[-1], prompt_len + len(path) - 1
                mask[r, 0, j, start:end] = 0
                seen = []
                while ancestor >= 0:
                    seen.append(column[r][ancestor])
                    ancestor = trie[ancestor][1]
                mask[r, 0, j, seen] = 0
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    past_key_values=cache, use_cache=True)
        cache.length = first + size
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        for r, (trie, picked) in enumerate(zip(tries, chosen)):
            for j, k in enumerate(picked):  # trie order: a parent before its children
                lp = logprob[r].get(k)
                if lp is None or lp < floor:
                    continue  # its proposal left P above it: fed in vain
                dist = logprobs[r, j]
                known[r][trie[k][0]] = known_children(dist, lp, floor, column[r][k])
                for c in children[r][k]:
                    logprob[r][c] = lp + float(dist[trie[c][0][-1]])
    return known, [len(fed) for fed in column]

class Continuations:
    """Guessed continuations of one view's search nodes: what a search step feeds after a node's
    own token, teacher-forced in the same forward (`batched_search.search_wave`), so that where
    the guess is right the next nodes' distributions come from that step and need no forward.

    Most nodes that need a forward left a known answer: a proposal, or an answer this view already
    found (the greedy path, then its branches).  A branch that changes one cell keeps the answer's
    token positions (one token per cell), so the first guess is a *source aligned by position*:
    an answer that agrees with the node's path on the `ALIGN` tokens before its last one, read
    from the node's depth on.  Otherwise (a first view, a branch that changed the grid's width) the
    node's last tokens (up to `NGRAM`) are looked up where they occurred last -- in the path
    itself, then in the answers, then in the prompt (whose last grid is the test input, which an
    answer often copies row by row: the row numbers make the context) -- and what followed there
    is the guess.  A wrong guess costs its tokens in a step and nothing else."""

    def __init__(self, prompt: Sequence[int], proposals: Sequence[Sequence[int]] | None = None):
        self.prompt = tuple(prompt)
        self.sources: list[tuple[int, ...]] = []
        self.index: dict[tuple[int, ...], tuple[tuple[int, ...], int]] = {}  # context -> (text, end), last wins
        self._index(self.prompt)
        for proposal in proposals or ():
            self.add(proposal)

    def _index(self, text: tuple[int, ...]) -> None:
        for size in range(1, NGRAM + 1):
            for end in range(size, len(text)):
                self.index[text[end - size:end]] = (text, end)

    def add(self, answer: Sequence[int]) -> None:
        """A source: a proposal, or an answer the view found (its n-grams outrank the prompt's)."""
        answer = tuple(answer)
        if answer not in self.sources:
            self.sources.append(answer)
            self._index(answer)

    def guess(self, path: tuple[int, ...], limit: int) -> tuple[int, ...]:
        """At most `limit` tokens guessed to follow `path` (empty: no guess)."""
        if limit <= 0 or not path:
            return ()
        n = len(path)
        window = path[max(0, n - 1 - ALIGN):n - 1]
        for source in self.sources:
            if len(source) > n and source[max(0, n - 1 - ALIGN):n - 1] == window:
                return source[n:n + limit]
        text = self.prompt[-NGRAM:] + path
        for size in range(min(NGRAM, len(text) - 1), 0, -1):
            context = text[-size:]
            for end in range(n - 1, size - 1, -1):  # the path itself, latest first
                if path[end - size:end] == context:
                    return path[end:end + limit]
            hit = self.index.get(context)
            if hit is not None:
                found, end = hit
                return found[end:end + limit]
        return ()


@dataclass
class Proposals:
    """The answers found so far for each test input (task frame), proposed to its other views.

    `add(item, records)` takes a searched item's prediction records (the run loop calls it as
    they are written); `for_item(item)` is None while no view of the item's test input has been
    searched, else the token ids of up to `limit` answers in the item's frame: most often found
    first, then most probable."""
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
