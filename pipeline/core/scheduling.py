"""Largest-first scheduling: the one rule that deals work to workers (standard library only).

Each item, heaviest first (ties by key, so the result is deterministic), goes to the worker with
the least work so far (LPT, within 4/3 of the optimal makespan).  Used by the notebook to split
sampling over GPUs (`kaggle_run.shard_tasks`), by the planner to project TTFT and sampling over
workers, and by the accuracy benchmark to split tasks over parallel chains.  (The TTFT stage's own
queue hands the next unit to whichever worker is free: the same rule, decided at run time.)
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
