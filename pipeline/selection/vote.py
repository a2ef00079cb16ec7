"""Prediction selection by voting (spec §7.1, §7.2).  Pure functions plus the `vote` CLI.

Predictions are the sampling stage's JSONL records, one per sample:
`{"task_id", "test_index", "augmentation", "text", "grid" (original frame, None if unparseable),
"error", "cumulative_logprob", "n_tokens"}`.

* v1 (`vote_v1`): unique valid grids ranked by vote count; ties go to the grid seen **first**
  (prompt order).  The original's message said ties were broken randomly, but its stable sort used
  prompt order; this implementation documents and keeps that deterministic rule.
* v2 (`vote_v2`, production): ranked by `(count, mean over the group of the per-token mean
  log-prob)` where a sample's per-token mean is `cumulative_logprob / max(n_tokens, 1)`; a sample
  without a log-prob counts as -inf (so its group loses ties); remaining ties go to first occurrence.

Any number of predictions per test input works (the original silently needed multiples of 8).
Grids (JSON-native lists of lists) are compared exactly (shape and values) through a compact
hashable key, so ranking is linear in the number of predictions.  Invalid grids (None, [],
ragged, colours outside 0-9, non-int cells) are dropped, by the rules of
`pipeline.core.tasks.grid_problems`; the one shortcut is that a grid holding JSON `true`/`false`
counts as a vote for an equal 1/0 grid seen earlier (the check for bools runs once per distinct
grid).

CLI: `python -m pipeline vote --predictions P.jsonl --dataset TASKS.json --output submission.json
[--method v2|v1] [--top N]` writes a complete, validated submission (gaps from the fallback).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Iterable, Mapping, Sequence

from pipeline.core.settings import SCORED_METHODS, VOTE_METHODS, VoteSettings, add_arguments, settings_from
from pipeline.core.files import check_output
from pipeline.core.predictions import describe_counts, read_predictions
from pipeline.core.scores import scores_problems
from pipeline.core.submission import build_submission, write_submission
from pipeline.core.tasks import _int_cells, _shape_key, load_tasks

METHODS = VOTE_METHODS  # ("v2", "v1"); SCORED_METHODS: pipeline.selection.rescore's rules that need a rescore file
_NEG_INF = float("-inf")


def _token_logprob(record: Mapping) -> float:
    """cumulative_logprob / max(n_tokens, 1); -inf when missing or not a finite number."""
    lp = record.get("cumulative_logprob")
    if isinstance(lp, bool) or not isinstance(lp, (int, float)) or math.isnan(lp):
        return _NEG_INF
    n = record.get("n_tokens")
    n = n if isinstance(n, int) and not isinstance(n, bool) else 0
    return float(lp) / max(n, 1)


def _rank(items: Iterable[tuple], method: str) -> list[dict]:
    """items: (grid, per-token log-prob) in prompt order -> ranked candidate dicts."""
    if method not in METHODS:
        raise ValueError(f"unknown voting method {method!r} (expected one of {', '.join(METHODS)})")
    groups = {}  # key -> [grid, count, logprob sum]; the dict keeps first-occurrence order
    for grid, logprob in items:
        key = _shape_key(grid)
        if key is None:
            continue
        group = groups.get(key)
        if group is None:
            if not _int_cells(grid):  # the exact type check runs once per distinct grid
                continue
            groups[key] = group = [grid, 0, 0.0]
        group[1] += 1
        group[2] += logprob
    ranked = [{"grid": g[0], "count": g[1], "mean_logprob": g[2] / g[1]} for g in groups.values()]
    if method == "v2":
        # stable sort: groups are in first-occurrence order, so ties keep it
        ranked.sort(key=lambda c: (-c["count"], -c["mean_logprob"]))
    else:
        ranked.sort(key=lambda c: -c["count"])
    return ranked


# ----------------------------------------------------------------------------- public API

def vote_v1(grids: Iterable) -> list:
    """Unique valid grids ranked by count; ties keep first-occurrence (prompt) order."""
    return [c["grid"] for c in _rank(((g, 0.0) for g in grids), "v1")]


def vote_v2(predictions: Iterable[Mapping]) -> list:
    """Unique valid grids of prediction records, ranked by (count, mean per-token log-prob of the
    group), then first occurrence.  Records without a log-prob count as -inf in the tiebreak."""
    return [c["grid"] for c in rank_predictions(predictions, "v2")]


def group_predictions(records: Iterable[Mapping]) -> dict:
    """`{(task_id, test_index): [records in file order]}`, keys in first-occurrence order."""
    groups = {}
    for record in records:
        groups.setdefault((record["task_id"], record["test_index"]), []).append(record)
    return groups


def rank_predictions(predictions: Iterable[Mapping], method: str = "v2") -> list[dict]:
    """`[{"grid", "count", "mean_logprob"}, ...]` best first, for the records of one test input."""
    return _rank(((r.get("grid"), _token_logprob(r)) for r in predictions), method)


def rank_candidates(records: Iterable[Mapping], method: str = "v2") -> dict:
    """`{(task_id, test_index): [{"grid", "count", "mean_logprob"}, ...]}` best first.

    `mean_logprob` is the group's mean per-token log-prob (-inf if any member lacks one); v1
    reports it but ranks by count only.  A test input whose predictions are all invalid maps to [].
    """
    return {key: rank_predictions(group, method) for key, group in group_predictions(records).items()}


def select_attempts(records: Iterable[Mapping], n: int = 2, method: str = "v2") -> dict:
    """`{(task_id, test_index): [grid, ...]}`: the top `n` voted grids (fewer if fewer exist)."""
    return {key: [c["grid"] for c in ranked[:n]] for key, ranked in rank_candidates(records, method).items()}


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline vote",
        description="Vote over sampled predictions and write a complete Kaggle submission: every task "
                    "and test input of --dataset gets attempt_1/attempt_2 (the top voted grids; gaps "
                    "filled with the test input, then a blank grid).  Ties: v2 by mean per-token "
                    "log-prob then first occurrence; v1 by first occurrence.")
    parser.add_argument("--predictions", required=True, nargs="+",
                        help="predictions JSONL file(s) written by the sampling stage (several are voted together)")
    parser.add_argument("--dataset", required=True, help="tasks file (challenges) the predictions are for")
    parser.add_argument("--output", required=True, help="submission.json to write (atomically)")
    parser.add_argument("--scores", help="rescore output; needed by --method poe/nvarc (test inputs it lacks are "
                                         "voted v2)")
    add_arguments(parser.add_argument_group("selection"), VoteSettings)  # one flag per setting (core/settings.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from(VoteSettings, args)
    if settings.top < 1:
        parser.error("--top must be >= 1")
    if (settings.method in SCORED_METHODS) != bool(args.scores):
        parser.error("--scores goes with --method poe or nvarc, and they need it")
    try:
        check_output(args.output, {"--predictions": args.predictions, "--dataset": args.dataset, "--scores": args.scores})
        tasks = load_tasks(args.dataset)
        counts = {}
        records = read_predictions(args.predictions, counts)  # checked, de-duplicated across the files
        ranked = rank_candidates(records, "v2" if settings.method in SCORED_METHODS else settings.method)
        rescored = 0
        if args.scores:
            from pipeline.selection.rescore import read_scores, select
            score_counts = {}
            scores = read_scores(args.scores, score_counts)
            for problem in scores_problems(args.scores, scores, score_counts, tasks):
                print(f"vote: warning: {problem}", file=sys.stderr)
            for key in ranked:
                if key in scores:
                    ranked[key] = [{"grid": c.grid} for c in select(scores[key], settings.method)]
                    rescored += 1
        unknown = [k for k in ranked if k[0] not in tasks or not 0 <= k[1] < len(tasks[k[0]]["test"])]
        if unknown:
            print(f"vote: warning: {len(unknown)} (task, test index) pair(s) in the predictions are not in "
                  f"the dataset and were ignored, e.g. {unknown[0]}", file=sys.stderr)
        attempts = {key: [c["grid"] for c in cands[:settings.top]] for key, cands in ranked.items()}
        stats = {}
        submission = build_submission(tasks, attempts, max(2, settings.top), stats)
        write_submission(args.output, submission, tasks)
    except (OSError, ValueError) as e:  # TaskError, SubmissionError, JSONDecodeError are ValueErrors
        print(f"vote: {e}", file=sys.stderr)
        return 1
    print(f"vote ({settings.method}{f', {rescored} test inputs rescored' if args.scores else ''}): {len(tasks)} tasks, {stats['test_inputs']} test inputs, "
          f"{stats['with_candidate']} with a valid prediction, {stats['fallback']} used the fallback "
          f"({stats['fallback_all']} for every attempt), {describe_counts(counts)} -> {args.output}")
    return 0
