"""The anytime rule of the sampling-like stages under a deadline: nothing large is started before
the speed is measured, and nothing is started that the measured speed says cannot finish.

`sample` (and `sample --method dfs`) and generate-inputs run it through `run_loop.run_plan`;
`rescore` runs it per test input.  Without a deadline none of it applies: chunks of
`batch_size` items in plan order, as before.

* **Order** (`coverage_first`): every test input without a prediction gets one first, its
  cheapest view, cheapest inputs first; the rest keeps the plan's order.  An item's size before
  it runs is its prompt plus its answer budget (`item_tokens`).
* **The probe**: the first chunk is one item, the shortest, so the first real answer costs the
  least there is and the seconds per token are measured before anything larger starts.
* **Growth** (`chunk_size`): each later chunk holds at most twice the last one (and at most
  `batch_size`), cut to what the measured speed (`ChunkCost`) says takes at most
  `GROW_SHARE` of the time left.  A chunk is one engine call and is written when it returns, so
  the deadline loses at most the chunk in flight, and the chunks shrink as the deadline nears.
* **The end**: when even one more item is estimated not to finish in the time left, the stage
  stops instead of starting work the deadline would throw away (and leaves that time to the
  stages after it).

Why (issue 26): before anything was measured the loop took the cost of a chunk as 0 s and
started a whole one (all 167 first predictions in one vLLM call, or 8 long ARC-AGI-2 prompts in
one padded batch); on a shared CPU none of them finished and the deadline lost them all: 0 of
167 test inputs answered.  No clock and no engine here: the callers measure and ask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

# A chunk is started only when its estimate fits this share of the time left ("fits
# comfortably": the estimate may be off by 2x, e.g. when the machine's load rises, and the chunk
# still finishes; near the deadline the chunks halve instead of risking one big loss).
GROW_SHARE = 0.5


def item_tokens(item) -> int:
    """An item's size before it runs: its prompt and its answer budget (`max_tokens`)."""
    return len(item.prompt_ids) + item.max_tokens


def coverage_first(items: Sequence, done: Iterable = ()) -> list:
    """`items` (plan items: `task_id`, `test_index`, `prompt_ids`, `max_tokens`) for a run under a
    deadline: for every test input that has no prediction yet (none in `done`, keys
    (task_id, test_index, sample_index)), its cheapest item (`item_tokens`) comes first,
    cheapest inputs first: every input gets one prediction before any gets a second, and the
    cheapest ones before the dearest (on a CPU an ARC-AGI-2 prompt of 6,000 tokens costs as much
    prefill as 20 small ones), so a deadline that cannot cover every input covers the most.  The
    rest keeps the plan's task-by-task order, which batches a task's adapter together; when every
    input already has a prediction (a resumed run), the cheapest item comes first all the same
    (the probe)."""
    covered = {(key[0], key[1]) for key in done}
    cheapest: dict[tuple, int] = {}
    for pos, item in enumerate(items):
        key = (item.task_id, item.test_index)
        if key not in covered and (key not in cheapest or item_tokens(item) < item_tokens(items[cheapest[key]])):
            cheapest[key] = pos
    first = sorted(cheapest.values(), key=lambda pos: (item_tokens(items[pos]), pos))  # ties keep plan order
    chosen = set(first)
    rest = [item for pos, item in enumerate(items) if pos not in chosen]
    if not first and rest:
        probe = min(range(len(rest)), key=lambda pos: (item_tokens(rest[pos]), pos))
        rest.insert(0, rest.pop(probe))
    return [items[pos] for pos in first] + rest


@dataclass
class ChunkCost:
    """What the chunks so far cost, to estimate the next one: seconds per token, a token being a
    prompt token or a generated one (a long ARC-AGI-2 prompt costs its prefill, and the generated
    tokens per item are about the same across items).  The rate is the larger of the whole run's
    and the last chunk's: a machine that slows down (another job starts) shows in the last chunk
    first."""
    items: int = 0
    tokens: int = 0
    generated: int = 0
    seconds: float = 0.0
    last_rate: float = 0.0      # seconds per token of the last chunk

    def add_tokens(self, items: int, known_tokens: int, generated: int, seconds: float) -> None:
        """A measured chunk of `items` items: `known_tokens` known before it ran (prompts, or
        rescore's prompts and answers), `generated` by it, in `seconds`."""
        self.items += items
        self.generated += generated
        self.tokens += known_tokens + generated
        self.seconds += seconds
        if known_tokens + generated:
            self.last_rate = seconds / (known_tokens + generated)

    def add(self, chunk: Sequence, generated: int, seconds: float) -> None:
        self.add_tokens(len(chunk), sum(len(item.prompt_ids) for item in chunk), generated, seconds)

    def seconds_for(self, items: int, known_tokens: int) -> float | None:
        """Seconds a chunk of `items` items with `known_tokens` known tokens should take (its
        generated tokens: the mean so far); None before anything was measured."""
        if not self.items or not self.tokens:
            return None
        rate = max(self.seconds / self.tokens, self.last_rate)
        return (known_tokens + items * self.generated / self.items) * rate

    def estimate(self, chunk: Sequence) -> float | None:
        """Seconds `chunk` (plan items) should take; None before anything was measured."""
        return self.seconds_for(len(chunk), sum(len(item.prompt_ids) for item in chunk))


def chunk_size(items: Sequence, last: int, batch_size: int, cost: ChunkCost, left: float) -> int:
    """How many of `items` (the pending plan items, in run order) the next chunk takes under a
    deadline, with `left` seconds left and `last` items in the previous chunk:

    * 1 before anything was measured (the probe);
    * 0 when even one item is estimated not to finish in `left` (stop);
    * else the most, up to min(2 x `last`, `batch_size`), whose estimate fits `GROW_SHARE` of
      `left`, and at least 1 (one item that fits `left` is still worth starting)."""
    if not items:
        return 0
    one = cost.estimate(items[:1])
    if one is None:
        return 1
    if one > left:
        return 0
    cap = min(len(items), max(1, batch_size), max(1, 2 * last))
    size, known = 1, len(items[0].prompt_ids)
    for n in range(2, cap + 1):
        known += len(items[n - 1].prompt_ids)
        if cost.seconds_for(n, known) > GROW_SHARE * left:
            break
        size = n
    return size
