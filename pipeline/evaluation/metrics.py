"""Evaluation metrics (spec §8) and the official Kaggle score.

Per test input, over its P predictions (a prediction whose grid is None, `[]` or otherwise invalid
is *unanswered*; it still counts in P):

* `accuracy`           fraction of the P predictions that equal the solution exactly;
* `correct_pixels`     mean over the P predictions of the fraction of matching cells (0 for a
                       wrong shape or an unanswered prediction);
* `max_correct_pixels` best fraction of matching cells among same-shape predictions (0 if none);
* `correct_size`       fraction of the P predictions with the solution's shape;
* `any_correct_size`   1 if any prediction has the solution's shape;
* `pass_n`             1 if any prediction is exactly right (pass@P);
* `unanswered`         fraction of the P predictions that are unanswered;
* `vote_1` / `vote_2`  1 if the solution is among the top-1 / top-2 voted grids (voting v2 by
                       default, v1 as an option; `pipeline.selection.vote`).  vote_2 is the Kaggle proxy.

A test input with no predictions at all (P = 0) scores 0 everywhere and `unanswered` = 1.

Aggregation: both the original **macro average per task** (mean over tasks of the mean over their
test inputs, `per_task_mean`) and Kaggle's **average per test output** (`per_output_mean`).  Every
task of the solutions counts: unlike the original, which silently ignored tasks missing from the
predictions and so inflated its scores (spec §12.8), a task without predictions counts as fully
unanswered (all metrics 0, unanswered 1).  Predictions for tasks or test indices that are not in
the solutions are ignored (and counted).

`kaggle_score`: each test output of the solutions scores 1 if attempt_1 or attempt_2 of the
submission's entry equals it exactly; a missing task or entry, an empty `[]` or malformed attempt
scores 0; the score is the mean over all test outputs (`score`), with the per-task mean beside it.

The commands: `evaluate` (`pipeline/evaluation/evaluate.py`) and `score`
(`pipeline/evaluation/score.py`).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from pipeline.core.settings import DEFAULT_SELECTION
from pipeline.core.submission import attempts_from_submission
from pipeline.core.tasks import grid_problems, valid_grid_key
from pipeline.selection.rules import group_predictions, rank_predictions
from pipeline.evaluation.score import kaggle_score
from pipeline.selection.vote import METHODS

GRID_METRICS = ("accuracy", "correct_pixels", "max_correct_pixels", "correct_size",
                "any_correct_size", "pass_n", "unanswered")
VOTE_METRICS = ("vote_1", "vote_2")
METRICS = GRID_METRICS + VOTE_METRICS


# ----------------------------------------------------------------------------- per test input

def grid_metrics(grids: Sequence, correct) -> dict:
    """The §8.1 metrics of the predicted `grids` (None/invalid = unanswered) against `correct`."""
    out = dict.fromkeys(GRID_METRICS, 0.0)
    n = len(grids)
    if n == 0:
        out["unanswered"] = 1.0
        return out
    correct_key = valid_grid_key(correct)
    if correct_key is None:
        raise ValueError(f"the solution grid is invalid: {'; '.join(grid_problems(correct))}")
    height, target = len(correct), np.frombuffer(correct_key[1], dtype=np.uint8)
    pixel_cache = {}
    for grid in grids:
        key = valid_grid_key(grid)
        if key is None:
            out["unanswered"] += 1
            continue
        if key[0] != correct_key[0] or len(grid) != height:
            continue  # wrong shape: contributes 0 everywhere
        pix = pixel_cache.get(key)
        if pix is None:
            pix = pixel_cache[key] = float(np.mean(np.frombuffer(key[1], dtype=np.uint8) == target))
        out["correct_size"] += 1
        out["any_correct_size"] = 1.0
        out["correct_pixels"] += pix
        out["max_correct_pixels"] = max(out["max_correct_pixels"], pix)
        if key == correct_key:
            out["accuracy"] += 1
            out["pass_n"] = 1.0
    for name in ("accuracy", "correct_pixels", "correct_size", "unanswered"):
        out[name] /= n
    return out


def vote_metrics(ranked_grids: Sequence, correct) -> dict:
    """vote_1 / vote_2: whether `correct` is among the first 1 / 2 of the ranked grids."""
    target = valid_grid_key(correct)
    keys = [valid_grid_key(g) for g in ranked_grids[:2]]
    return {"vote_1": float(target in keys[:1]), "vote_2": float(target in keys[:2])}


def test_input_metrics(records: Sequence[Mapping], correct, method: str = DEFAULT_SELECTION) -> dict:
    """All metrics of one test input from its prediction records (see the module docstring)."""
    ranked = rank_predictions(records, method)
    out = grid_metrics([r.get("grid") for r in records], correct)
    out.update(vote_metrics([c["grid"] for c in ranked], correct))
    out["n_predictions"] = len(records)
    return out


test_input_metrics.__test__ = False  # not a pytest test, even when imported into a test module


# ----------------------------------------------------------------------------- aggregation

def _mean(rows: Sequence[Mapping], names=METRICS) -> dict:
    return {name: (sum(r[name] for r in rows) / len(rows) if rows else 0.0) for name in names}


def evaluate(records: Iterable[Mapping], solutions: Mapping, method: str = DEFAULT_SELECTION) -> dict:
    """Metrics of prediction records against `{task_id: [solution grid, ...]}`.

    Returns `{"method", "n_tasks", "n_outputs", "n_predictions", "ignored_predictions",
    "tasks_without_predictions": [...], "per_task_mean": {metric: v}, "per_output_mean":
    {metric: v}, "per_task": {task_id: {"mean": {metric: v}, "outputs": [{metric: v,
    "n_predictions": P}, ...]}}}` with metrics as fractions in [0, 1].  Every task of `solutions`
    counts (absent ones as unanswered); predictions outside the solutions are ignored.
    """
    if method not in METHODS:
        raise ValueError(f"unknown voting method {method!r}")
    groups = group_predictions(records)
    per_task, outputs, used, missing = {}, [], 0, []
    for task_id, correct_grids in solutions.items():
        task_outputs = []
        for index, correct in enumerate(correct_grids):
            group = groups.get((task_id, index), [])
            used += len(group)
            task_outputs.append(test_input_metrics(group, correct, method))
        if not any(row["n_predictions"] for row in task_outputs):
            missing.append(task_id)
        per_task[task_id] = {"mean": _mean(task_outputs), "outputs": task_outputs}
        outputs += task_outputs
    n_predictions = sum(map(len, groups.values()))
    return {
        "method": method,
        "n_tasks": len(per_task),
        "n_outputs": len(outputs),
        "n_predictions": n_predictions,
        "ignored_predictions": n_predictions - used,
        "tasks_without_predictions": missing,
        "per_task_mean": _mean([t["mean"] for t in per_task.values()]),
        "per_output_mean": _mean(outputs),
        "per_task": per_task,
    }


def format_summary(metrics: Mapping, average: str = "per_task") -> str:
    """The one-line summary `accuracy: 3.2%  correct_pixels: 68.8%  ...  vote_1: 7.0%  vote_2: 9.0%`.

    `metrics` is an `evaluate` result (`average` picks "per_task", the original macro average, or
    "per_output", Kaggle's weighting) or a flat `{metric: fraction}` dict.  Missing vote metrics
    are left out."""
    if "per_task_mean" in metrics:
        key = {"per_task": "per_task_mean", "per_output": "per_output_mean"}.get(average)
        if key is None:
            raise ValueError(f"average must be 'per_task' or 'per_output', not {average!r}")
        metrics = metrics[key]
    return "  ".join(f"{name}: {100 * metrics[name]:.1f}%" for name in METRICS if name in metrics)


def attempt_records(submission: Mapping) -> list[dict]:
    """The submission's attempts as prediction records (attempt order), to score the vote with
    the same metrics as the raw predictions."""
    return [{"task_id": task_id, "test_index": index, "grid": grid, "cumulative_logprob": 0.0, "n_tokens": 1}
            for (task_id, index), attempts in attempts_from_submission(submission).items() for grid in attempts]


def score_run(records: Iterable[Mapping], submission: Mapping, solutions: Mapping,
              method: str = DEFAULT_SELECTION) -> dict:
    """A run's three views against the solutions: the raw predictions (`raw`) and the submitted
    attempts (`vote`), both `evaluate` results, and the official Kaggle score (`kaggle`)."""
    return {"raw": evaluate(records, solutions, method),
            "vote": evaluate(attempt_records(submission), solutions, method),
            "kaggle": kaggle_score(submission, solutions)}
