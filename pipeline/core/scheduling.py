"""Scheduling rules shared by the notebook run and the planner (standard library only).

Largest first, the one rule that deals work to workers: each item, heaviest first (ties by key,
so the result is deterministic), goes to the worker with the least work so far (LPT, within 4/3
of the optimal makespan).  Used by the notebook to split sampling over GPUs
(`kaggle/run.py:shard_tasks` on `shard_ids`), by the planner to project TTFT and sampling over
workers, and by the accuracy benchmark to split tasks over parallel chains.  (The TTFT stage's own
queue hands the next unit to whichever worker is free: the same rule, decided at run time.)

The run's worker count (`sampling_workers`) and TTFT's share of the time left (`ttft_share_s`)
live here too, so the planner projects a run with the rules the run itself applies.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence


def largest_first(weights: Mapping[Hashable, float], workers: int, start: float = 0.0
                  ) -> tuple[list[list], list[float]]:
    """(the keys each worker gets, in the order they were dealt; each worker's total), every
    worker starting at `start` (a fixed cost paid once per worker)."""
    shards: list[list] = [[] for _ in range(max(1, workers))]
    loads = [start] * len(shards)
    for key in sorted(weights, key=lambda k: (-weights[k], str(k))):
        i = loads.index(min(loads))
        shards[i].append(key)
        loads[i] += weights[key]
    return shards, loads


def makespan(durations: Sequence[float], workers: int, start: float = 0.0) -> tuple[float, list[float]]:
    """(the longest worker's total, every worker's total) of anonymous durations dealt largest first."""
    _, loads = largest_first(dict(enumerate(durations)), workers, start)
    return max(loads), loads


def sample_gpus(devices: Sequence[str]) -> list[str]:
    """CUDA_VISIBLE_DEVICES values of the sampling workers: one per `cuda:N` device (none on CPU)."""
    return [d.split(":", 1)[1] for d in devices if d.startswith("cuda:")]


def sampling_workers(devices: Sequence[str]) -> int:
    """Sampling processes a run starts: one per CUDA device (`sample_gpus`), else one."""
    return max(1, len(sample_gpus(devices)))


def shard_ids(sizes: Mapping[str, int], n: int) -> list[list[str]]:
    """Task ids in `n` shards of similar total size (`largest_first`); empty shards dropped."""
    shards, _ = largest_first(sizes, n)
    return [s for s in shards if s]


# ----------------------------------------------------------------------------- time shares

SAMPLING_NEED_MARGIN = 1.2  # sampling's measured need is kept with this much to spare


def ttft_share_s(remaining_s: float, reserve_s: float, sampling_need: float | None, config) -> tuple[float, str]:
    """Seconds TTFT may use of `remaining_s`, and why.  With a measured sampling need, TTFT gets
    what sampling (with SAMPLING_NEED_MARGIN) and the vote reserve leave, between
    `ttft_min_fraction` and `ttft_max_fraction` of the time left: a fast sampler lets TTFT train
    more, a slow one keeps the time that gives every test input its predictions.  Without one,
    the fixed `ttft_budget_fraction`."""
    if sampling_need is None:
        return remaining_s * config.ttft_budget_fraction, f"fixed {config.ttft_budget_fraction:.0%} of the time left"
    wanted = remaining_s - reserve_s - SAMPLING_NEED_MARGIN * sampling_need
    share = min(remaining_s * config.ttft_max_fraction, max(remaining_s * config.ttft_min_fraction, wanted))
    return share, (f"measured: sampling needs ~{sampling_need:.0f} s, TTFT gets {share:.0f} s "
                   f"({share / max(remaining_s, 1e-9):.0%} of {remaining_s:.0f} s left)")
