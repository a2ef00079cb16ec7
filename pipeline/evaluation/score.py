"""`python -m pipeline score --submission S.json --solutions SOL.json [--output score.json]`: the
official Kaggle score of a submission (`pipeline.evaluation.metrics.kaggle_score`)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipeline.core.files import check_output, write_json_atomic
from pipeline.core.submission import read_submission, submission_problems, summarize_problems
from pipeline.evaluation.metrics import kaggle_score, load_solutions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline score",
        description="Official Kaggle score of a submission: a test output counts if attempt_1 or "
                    "attempt_2 equals it exactly; missing tasks/entries and empty or malformed "
                    "attempts count 0; mean over all test outputs of the solutions.")
    parser.add_argument("--submission", required=True, help="submission.json")
    parser.add_argument("--solutions", required=True,
                        help="Kaggle solutions file, or a tasks file/directory whose test pairs have outputs")
    parser.add_argument("--output", help="score JSON to write (atomically), with per-task results")
    args = parser.parse_args(argv)
    try:
        if args.output:
            check_output(args.output, {"--submission": args.submission, "--solutions": args.solutions})
        solutions = load_solutions(args.solutions)
        submission = read_submission(args.submission)
        result = kaggle_score(submission, solutions)
        if args.output:
            write_json_atomic(args.output, result, indent=1)
    except (OSError, ValueError) as e:
        print(f"score: {e}", file=sys.stderr)
        return 1
    problems = submission_problems(submission, {t: {"test": grids} for t, grids in solutions.items()})
    if problems:  # Kaggle would refuse such a file; here the gaps score 0 and the rest is scored
        print(f"score: warning: {args.submission} is not a valid submission for these solutions, "
              f"{summarize_problems(problems)}", file=sys.stderr)
    print(f"score: {100 * result['score']:.2f}% ({result['n_correct']}/{result['n_outputs']} test outputs)  "
          f"per-task mean: {100 * result['score_per_task']:.2f}% ({len(solutions)} tasks)"
          + (f" -> {args.output}" if args.output else ""))
    return 0
