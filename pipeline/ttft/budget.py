"""TTFT's time budget: units of work, their order, and the steps a unit may take before the deadline.

* `Unit` / `plan_units`: what one adapter is trained on (a task, or a group of `group_size`
  tasks), largest estimated step first, and its share of the run's steps (`length_share`: the
  length gate, `ttft --max_task_tokens`).
* `anytime_order`: largest first when everything is estimated to fit over several workers, else
  smallest first (the run degrades by dropping the largest tasks, not most of them).
* `Budget`: a worker's time estimates (a prior of 6 x params / PRIOR_FLOPS per token, then its
  own measurements) and the fair-share step scaling of a unit (docs/ttft.md, "Deadline and step
  scaling").
* `unit_seeds`: a unit's seeds, fixed by the run seed and its task ids.

Pure arithmetic on profiles and the clock: no model, no torch.  Imports no stage module.
"""
from __future__ import annotations

import dataclasses
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.core.files import read_json
from pipeline.ttft.data import TaskProfile

# First-task estimate, before any step was measured: 6 × parameters FLOPs per trained token
# (forward + backward of the whole model, conservative for LoRA) at this sustained rate.
# Measured: SmolLM2-135M LoRA trains at ~70 GFLOP/s on 2 CPU cores; a T4 reaches ~12 TFLOP/s.
PRIOR_FLOPS = {"cpu": 2e10, "cuda": 5e12}
PRIOR_OVERHEAD_S = 2.0    # per unit: Trainer setup, saving, records
SAFETY_S = 2.0            # kept free before the deadline


@dataclass(frozen=True)
class Unit:
    """What one adapter is trained on: one task, or a group of tasks sharing an adapter."""
    index: int                      # position in the queue (largest first)
    task_ids: tuple[str, ...]
    tokens_per_step: float          # estimated tokens of one optimizer step
    step_share: float = 1.0         # of the run's steps it trains (< 1: scaled by the length gate)

    @property
    def size(self) -> int:
        return len(self.task_ids)

    def steps(self, steps: int) -> int:
        """Its optimizer steps when the run trains `steps` per task (before any deadline scaling)."""
        return max(1, math.floor(steps * self.size * self.step_share))


def length_share(longest_tokens: int, max_task_tokens: int | None, long_tasks: str = "skip") -> float:
    """TTFT's length gate: the share of the run's steps a task trains whose longest leave-one-out
    sample has `longest_tokens`.  1 within the gate (or with none); over it, 0 (`skip`: no TTFT,
    sampling serves the task the base model or adapter) or `max_task_tokens / longest_tokens`
    (`scale`: a long task's steps cost about what a task at the gate costs)."""
    if max_task_tokens is None or longest_tokens <= max_task_tokens:
        return 1.0
    return 0.0 if long_tasks == "skip" else max_task_tokens / longest_tokens


def plan_units(profiles: Sequence[TaskProfile], group_size: int, batch_size: int,
               shares: Mapping[str, float] | None = None) -> list[Unit]:
    """Trainable tasks, largest estimated step first (then task_size, then id), cut into
    consecutive groups of `group_size` (similar sizes end up together).  `shares`: a task's
    `length_share` (default 1); a group trains its smallest member's share."""
    ordered = sorted(profiles, key=lambda p: (-p.sample_tokens, -p.size, p.task_id))
    units = []
    for start in range(0, len(ordered), group_size):
        group = ordered[start:start + group_size]
        units.append(Unit(len(units), tuple(p.task_id for p in group),
                          batch_size * float(np.mean([p.sample_tokens for p in group])),
                          min((shares or {}).get(p.task_id, 1.0) for p in group)))
    return units


def model_params(model_dir) -> float | None:
    """A transformer's parameter count from its config.json (embeddings + attention + MLP), or
    None without one: the prior of the time estimate before anything was measured."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    c = read_json(path)
    c = c.get("text_config", c)
    try:
        h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inter = c.get("intermediate_size", 4 * h)
    except KeyError:
        return None
    return float(vocab * h + layers * (4 * h * h + 3 * h * inter))


def anytime_order(units: list[Unit], steps: int, workers: int, seconds_left: float | None,
                  seconds_per_token: float | None) -> tuple[list[Unit], str]:
    """The queue order and why.  Largest first minimises the makespan over several workers when
    everything fits; when it does not (estimated from the prior `seconds_per_token`), or with one
    worker (where the order cannot change the makespan), smallest first trains the most tasks
    before the deadline: the run degrades by dropping the largest tasks, not most of them."""
    if seconds_left is None or not units:
        return units, "largest first (no deadline)"
    if workers > 1 and seconds_per_token is not None:
        needed = sum(PRIOR_OVERHEAD_S * u.size + steps * u.size * u.tokens_per_step * seconds_per_token
                     for u in units) / workers
        if needed <= seconds_left:
            return units, f"largest first (estimated {needed:.0f} s of {seconds_left:.0f} s per worker)"
        why = f"smallest first (estimated {needed:.0f} s per worker, {seconds_left:.0f} s left)"
    else:
        why = "smallest first (one worker under a deadline)"
    return [dataclasses.replace(u, index=i) for i, u in enumerate(reversed(units))], why


def unit_seeds(seed: int, task_ids: Sequence[str]) -> tuple[int, int]:
    """(Trainer seed, data seed) of a unit: fixed by the run seed and the task ids, whatever the
    order, the worker or a restart."""
    entropy = [seed, *(zlib.crc32(t.encode()) for t in task_ids)]
    a, b = np.random.SeedSequence(entropy).generate_state(2)
    return int(a) % 2**31, int(b)


class Budget:
    """A worker's time estimates and the steps a unit may take before the deadline.

    A unit of `n` steps is estimated at `overhead + n × tokens_per_step × seconds_per_token`.
    `seconds_per_token` starts at the conservative prior 6 × params / PRIOR_FLOPS[device] and is
    replaced by this worker's measurement (training seconds / tokens over its finished units)
    after the first unit; `overhead` likewise (task seconds minus training seconds).

    Scaling: the units not started yet (this one included) share the time left × workers; when
    their full cost does not fit, every unit gets the same fraction of its steps.  A unit whose
    share is below `min_steps` still runs `min_steps` if that fits the time left, else it is
    skipped.  No deadline: every unit gets its full steps.
    """

    def __init__(self, deadline_at: float | None, workers: int, prior_seconds_per_token: float):
        self.deadline_at, self.workers = deadline_at, workers
        self.prior = prior_seconds_per_token
        self.train_seconds = self.tokens = self.overhead_seconds = 0.0
        self.units = 0

    @property
    def seconds_per_token(self) -> float:
        return self.train_seconds / self.tokens if self.tokens else self.prior

    @property
    def overhead(self) -> float:
        return self.overhead_seconds / self.units if self.units else PRIOR_OVERHEAD_S

    def left(self) -> float:
        return math.inf if self.deadline_at is None else self.deadline_at - time.time() - SAFETY_S

    def seconds(self, steps: int, tokens_per_step: float) -> float:
        return self.overhead + steps * tokens_per_step * self.seconds_per_token

    def plan(self, steps: int, min_steps: int, tokens_per_step: float, remaining_tokens: float,
             remaining_units: int) -> tuple[int, str | None]:
        """(steps to train, None) or (0, why the unit is skipped).  `remaining_tokens`: the tokens
        of the units not started yet (this one included) at their full steps."""
        left = self.left()
        if left == math.inf:
            return steps, None
        spt = self.seconds_per_token
        share = left * self.workers - remaining_units * self.overhead
        factor = 1.0 if remaining_tokens * spt <= share else max(0.0, share) / (remaining_tokens * spt)
        fits_alone = math.floor(max(0.0, left - self.overhead) / max(tokens_per_step * spt, 1e-9))
        planned = min(steps, math.floor(steps * factor), fits_alone)
        if planned >= min_steps:
            return planned, None
        if fits_alone >= min_steps:
            return min_steps, None
        return 0, (f"deadline: {min_steps} steps need ~{self.seconds(min_steps, tokens_per_step):.0f} s, "
                   f"{max(left, 0.0):.0f} s left")

    def update(self, train_seconds: float, tokens: float, unit_seconds: float) -> None:
        if tokens > 0 and train_seconds > 0:
            self.train_seconds += train_seconds
            self.tokens += tokens
            self.overhead_seconds += max(0.0, unit_seconds - train_seconds)
            self.units += 1
