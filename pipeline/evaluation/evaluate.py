"""`python -m pipeline evaluate --predictions P.jsonl --solutions SOL.json [--output M.json]`:
every metric of sampled predictions (`pipeline.evaluation.metrics`), one summary line per average."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipeline.core.files import check_output, write_json_atomic
from pipeline.core.predictions import describe_counts, read_predictions
from pipeline.core.settings import DEFAULT_SELECTION
from pipeline.evaluation.metrics import evaluate, format_summary
from pipeline.evaluation.score import load_solutions
from pipeline.selection.vote import METHODS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline evaluate",
        description="Score sampled predictions against the solutions: accuracy, correct_pixels, "
                    "max_correct_pixels, correct_size, any_correct_size, pass_n, unanswered, vote_1, "
                    "vote_2.  Prints the one-line summary (macro average per task, as the original), "
                    "then the same averaged per test output (Kaggle's weighting).  Tasks of the "
                    "solutions without predictions count as unanswered.")
    parser.add_argument("--predictions", required=True, help="predictions JSONL written by the sampling stage")
    parser.add_argument("--solutions", required=True,
                        help="Kaggle solutions file, or a tasks file/directory whose test pairs have outputs")
    parser.add_argument("--output", help="metrics JSON to write (atomically), with per-task results")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_SELECTION,
                        help=f"voting method for vote_1/vote_2 (default {DEFAULT_SELECTION})")
    args = parser.parse_args(argv)
    try:
        if args.output:
            check_output(args.output, {"--predictions": args.predictions, "--solutions": args.solutions})
        solutions = load_solutions(args.solutions)
        counts = {}
        records = read_predictions(args.predictions, counts)  # checked and de-duplicated
        result = evaluate(records, solutions, args.method)
        if args.output:
            write_json_atomic(args.output, result, indent=1)
    except (OSError, ValueError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 1
    print(format_summary(result))
    print("per test output: " + format_summary(result, "per_output"))
    print(f"{result['n_tasks']} tasks, {result['n_outputs']} test outputs, {result['n_predictions']} predictions "
          f"({result['ignored_predictions']} outside the solutions), "
          f"{len(result['tasks_without_predictions'])} task(s) without predictions"
          + (f" -> {args.output}" if args.output else ""))
    print(f"read {describe_counts(counts)} from {args.predictions}")
    return 0
