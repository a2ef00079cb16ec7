"""Prediction selection by voting (spec §7.1, §7.2): the `vote` CLI and its shortcuts.

Predictions are the sampling stage's JSONL records, one per sample:
`{"task_id", "test_index", "augmentation", "text", "grid" (original frame, None if unparseable),
"error", "cumulative_logprob", "n_tokens"}`.  The rules (grouping, ranking, the rescored rules
poe and nvarc) live in `pipeline.selection.rules`.

* v1 (`vote_v1`): unique valid grids ranked by vote count; ties go to the grid seen **first**
  (prompt order).  The original's message said ties were broken randomly, but its stable sort used
  prompt order; this implementation documents and keeps that deterministic rule.
* v2 (`vote_v2`, production): ranked by `(count, mean over the group of the per-token mean
  log-prob)` where a sample's per-token mean is `cumulative_logprob / max(n_tokens, 1)`; a sample
  without a log-prob counts as -inf (so its group loses ties); remaining ties go to first occurrence.

Any number of predictions per test input works (the original silently needed multiples of 8).

CLI: `python -m pipeline vote --predictions P.jsonl --dataset TASKS.json --output submission.json
[--method v2|v1|poe|nvarc] [--scores S.jsonl] [--top N]` writes a complete, validated submission
(gaps from the fallback).
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterable, Mapping, Sequence

from pipeline.core.settings import (DEFAULT_SELECTION, SCORED_METHODS, VOTE_METHODS, VoteSettings, add_arguments,
                                    settings_from)
from pipeline.core.files import check_output
from pipeline.core.predictions import describe_counts, read_predictions
from pipeline.core.submission import build_submission, write_submission
from pipeline.core.tasks import load_tasks
from pipeline.selection.rules import rank_candidates, rank_grids, rank_predictions, select

METHODS = VOTE_METHODS  # ("v2", "v1"); SCORED_METHODS: the rules of pipeline.selection.rules that need a rescore file


# ----------------------------------------------------------------------------- public API

def vote_v1(grids: Iterable) -> list:
    """Unique valid grids ranked by count; ties keep first-occurrence (prompt) order."""
    return [c["grid"] for c in rank_grids(((g, 0.0) for g in grids), "v1")]


def vote_v2(predictions: Iterable[Mapping]) -> list:
    """Unique valid grids of prediction records, ranked by (count, mean per-token log-prob of the
    group), then first occurrence.  Records without a log-prob count as -inf in the tiebreak."""
    return [c["grid"] for c in rank_predictions(predictions, DEFAULT_SELECTION)]


def select_attempts(records: Iterable[Mapping], n: int = 2, method: str = DEFAULT_SELECTION) -> dict:
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
        ranked = rank_candidates(records, DEFAULT_SELECTION if settings.method in SCORED_METHODS else settings.method)
        rescored = 0
        if args.scores:  # the rescore file's reader is imported only here (a run without rescoring never needs it)
            from pipeline.core.scores import scores_problems
            from pipeline.selection.scored import read_scores

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
