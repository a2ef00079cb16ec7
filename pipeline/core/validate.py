"""`python -m pipeline validate FILE...`: check ARC task files, one line per problem.

The rules are `pipeline.core.tasks`'s (grids, pairs, tasks, the three file layouts); this is the
command that prints them and exits non-zero when any file has a problem.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipeline.core.tasks import TaskError, read_task_file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline validate",
        description="Check ARC task files: prints one line per problem (task, pair, row) and exits "
                    "non-zero if any file has one.")
    parser.add_argument("files", nargs="+", help="task files (Kaggle challenges, combined) or directories")
    parser.add_argument("--solutions", default="auto",
                        help="solutions file for a single challenges file ('auto': the *_solutions.json "
                             "beside it; 'none': do not merge)")
    args = parser.parse_args(argv)
    solutions = None if args.solutions == "none" else args.solutions
    failed = 0
    for path in args.files:
        try:
            tasks, problems = read_task_file(path, solutions)
        except TaskError as e:
            print(e)
            failed += 1
            continue
        for p in problems:
            print(f"{path}: {p}")
        n_test = sum(len(t["test"]) for t in tasks.values() if isinstance(t, dict) and isinstance(t.get("test"), list))
        print(f"{path}: {len(tasks)} tasks, {n_test} test inputs, {len(problems)} problem(s)",
              file=sys.stderr)
        failed += bool(problems)
    return 1 if failed else 0
