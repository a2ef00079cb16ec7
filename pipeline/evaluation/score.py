"""`python -m pipeline score --submission S.json --solutions SOL.json [--output score.json]`: the
official Kaggle score of a submission (`kaggle_score`), and the solutions it is scored against
(`load_solutions`).  The notebook's run scores its smoke run with this command, so it holds only
what the score needs (the other metrics are `pipeline.evaluation.metrics`'s)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.files import check_output, write_json_atomic
from pipeline.core.submission import read_submission, submission_problems, summarize_problems
from pipeline.core.tasks import (TaskError, grid_problems, load_tasks, raise_problems, read_json_file, solutions_of,
                                 valid_grid_key)


# ----------------------------------------------------------------------------- Kaggle score

def _attempt_matches(attempt, correct_key) -> bool:
    return correct_key is not None and valid_grid_key(attempt) == correct_key


def kaggle_score(submission, solutions: Mapping) -> dict:
    """The official score of `submission` against `{task_id: [output grid, ...]}` (see module doc).

    Returns `{"score", "score_per_task", "n_outputs", "n_correct", "per_task": {task_id:
    {"score", "correct": [bool per test output]}}}`; scores are fractions in [0, 1]."""
    if not isinstance(submission, Mapping):
        submission = {}
    per_task, n_outputs, n_correct = {}, 0, 0
    for task_id, correct_grids in solutions.items():
        entries = submission.get(task_id)
        if not isinstance(entries, list):
            entries = []
        correct = []
        for index, grid in enumerate(correct_grids):
            entry = entries[index] if index < len(entries) else None
            key = valid_grid_key(grid)
            ok = isinstance(entry, Mapping) and any(
                _attempt_matches(entry.get(name), key) for name in ("attempt_1", "attempt_2"))
            correct.append(ok)
        n_outputs += len(correct)
        n_correct += sum(correct)
        per_task[task_id] = {"score": sum(correct) / len(correct) if correct else 0.0, "correct": correct}
    return {
        "score": n_correct / n_outputs if n_outputs else 0.0,
        "score_per_task": sum(t["score"] for t in per_task.values()) / len(per_task) if per_task else 0.0,
        "n_outputs": n_outputs,
        "n_correct": n_correct,
        "per_task": per_task,
    }


# ----------------------------------------------------------------------------- loading

def _solution_problems(solutions: Mapping) -> list[str]:
    problems = []
    for task_id, grids in solutions.items():
        if not isinstance(grids, list) or not grids:
            problems.append(f"task {task_id!r}: solutions must be a non-empty list of grids")
            continue
        for i, grid in enumerate(grids):
            problems += [f"task {task_id!r} test {i}: {p}" for p in grid_problems(grid)]
    return problems


def load_solutions(path) -> dict:
    """`{task_id: [test output grid, ...]}` from a Kaggle solutions file, or from a tasks file or
    directory whose test pairs carry outputs (a `*_challenges.json` with its `*_solutions.json`
    beside it works too).  Raises TaskError naming every bad grid, or if there are no outputs."""
    path = Path(path)
    data = None
    if path.is_file():
        data = read_json_file(path)
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        raise_problems(path, _solution_problems(data))
        return data
    solutions = solutions_of(load_tasks(path))
    if not solutions:
        raise TaskError(f"{path}: no task has test outputs (pass a solutions file)")
    return solutions


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
