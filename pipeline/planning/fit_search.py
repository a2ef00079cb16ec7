"""`plan --fit`'s search for the largest TTFT steps and predictions per task that fit the deadline
(time grows with both, so each is a binary search over a grid of multiples of 8). The memory
knobs it chooses first are `pipeline/planning/memory_plan.py`'s `fit_memory`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from pipeline.planning.cost_model import CostModel
from pipeline.planning.projection import Settings, project
from pipeline.planning.token_counts import TaskTokens


def steps_grid(limit: int = 4096) -> list[int]:
    return list(range(8, limit + 1, 8))


def predictions_grid(limit: int = 512) -> list[int]:
    return list(range(8, limit + 1, 8))


def largest(grid: Sequence[int], fits) -> int | None:
    """The largest grid value for which fits(value) holds, assuming it is monotone (binary search)."""
    lo, hi, best = 0, len(grid) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(grid[mid]):
            best, lo = grid[mid], mid + 1
        else:
            hi = mid - 1
    return best


def fit(model: CostModel, targets: Sequence[TaskTokens], s: Settings,
        steps_values: Sequence[int] | None = None, predictions_values: Sequence[int] | None = None) -> dict:
    """The largest settings that fit (time grows with steps and predictions, so each is a search):
      max_steps:        the largest steps with the settings' predictions per task;
      max_predictions:  the largest predictions with the settings' steps;
      proposal:         the largest point on both grids at the settings' steps:predictions ratio
                        (both scaled by the same factor, rounded down to the grids);
      frontier:         for every predictions value, the largest steps that fits.
    Each is None when nothing on the grid fits."""
    steps_values = sorted(steps_values or steps_grid())
    predictions_values = sorted(predictions_values or predictions_grid())
    fits = lambda st, pr: project(model, targets, dataclasses.replace(s, ttft_steps=st, predictions_per_task=pr))["fits"]

    max_steps = largest(steps_values, lambda st: fits(st, s.predictions_per_task))
    max_predictions = largest(predictions_values, lambda pr: fits(s.ttft_steps, pr))

    def on_ray(scale: float) -> tuple[int, int] | None:
        st = max((v for v in steps_values if v <= s.ttft_steps * scale), default=None)
        pr = max((v for v in predictions_values if v <= s.predictions_per_task * scale), default=None)
        return None if st is None or pr is None else (st, pr)

    scales = sorted({v / s.ttft_steps for v in steps_values} | {v / s.predictions_per_task for v in predictions_values})
    points = [p for p in dict.fromkeys(on_ray(x) for x in scales) if p is not None]
    best = largest(list(range(len(points))), lambda i: fits(*points[i]))
    proposal = None if best is None else {"ttft_steps": points[best][0], "predictions_per_task": points[best][1]}
    frontier = {pr: largest(steps_values, lambda st, pr=pr: fits(st, pr)) for pr in predictions_values}
    frontier = {pr: st for pr, st in frontier.items() if st is not None}
    if proposal:
        proposal["projection"] = project(model, targets, dataclasses.replace(s, **{k: proposal[k] for k in (
            "ttft_steps", "predictions_per_task")}))
    return {"max_steps": max_steps, "max_predictions": max_predictions, "proposal": proposal, "frontier": frontier,
            "grid_max": {"steps": steps_values[-1], "predictions": predictions_values[-1]}}


