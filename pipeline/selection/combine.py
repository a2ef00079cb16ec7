"""`python -m pipeline combine SUB1 SUB2 --output OUT [--no-prefer-second] [--dataset TASKS]`.

`combine_submissions` is the spec §7.5 rule (preference for the second submission on the second
attempt), but pure: it never mutates its inputs (the original mutated sub_1 through shallow
copies, spec §12.14).
"""
from __future__ import annotations

import argparse
import copy
import sys
from typing import Mapping, Sequence

from pipeline.core.files import check_output, write_json_atomic
from pipeline.core.submission import (attempts_from_submission, build_submission, is_empty_attempt, read_submission,
                                      summarize_problems, without_invalid_attempts, write_submission)
from pipeline.core.tasks import load_tasks


def combine_submissions(sub_1: Mapping, sub_2: Mapping, prefer_second_on_second_attempt: bool = True) -> dict:
    """Combine two submissions (spec §7.5), returning a new dict; the inputs are never mutated.

    1. Start from the union of tasks, sub_1's entries taking precedence.
    2. For each task of sub_2 and each of its test indices: if sub_1's attempt_1 is empty (missing,
       None or `[]`, or sub_1 lacks that test index), take sub_2's entry wholesale.
    3. Otherwise, if sub_1's attempt_2 is empty or the flag is set, set attempt_2 to sub_2's
       attempt_1 when non-empty and different from the combined attempt_1, failing that to sub_2's
       attempt_2 when non-empty and different from the combined attempt_1 (else keep sub_1's).
    4. Otherwise (flag off and sub_1 complete) keep sub_1's entry.
    """
    combined = copy.deepcopy(dict(sub_2))
    combined.update(copy.deepcopy(dict(sub_1)))
    for task_id, entries_2 in sub_2.items():
        if task_id not in sub_1 or not isinstance(entries_2, list):
            continue
        entries = combined[task_id]
        if not isinstance(entries, list):
            combined[task_id] = copy.deepcopy(entries_2)
            continue
        for index, entry_2 in enumerate(entries_2):
            if not isinstance(entry_2, Mapping):
                continue
            entry_1 = entries[index] if index < len(entries) else None
            if not isinstance(entry_1, Mapping) or is_empty_attempt(entry_1.get("attempt_1")):
                new_entry = copy.deepcopy(dict(entry_2))
                if index < len(entries):
                    entries[index] = new_entry
                else:
                    entries.extend([{} for _ in range(index - len(entries))] + [new_entry])
                continue
            if not (is_empty_attempt(entry_1.get("attempt_2")) or prefer_second_on_second_attempt):
                continue
            first = entry_1.get("attempt_1")
            for name in ("attempt_1", "attempt_2"):
                candidate = entry_2.get(name)
                if not is_empty_attempt(candidate) and candidate != first:
                    entry_1["attempt_2"] = copy.deepcopy(candidate)
                    break
    return combined


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline combine",
        description="Combine two submissions (spec §7.5): SUB1 keeps attempt_1 (and its whole entry "
                    "where SUB2 has nothing better); SUB2 fills SUB1's empty attempt_1 entries and, "
                    "by default, provides attempt_2 (its first answer that differs from attempt_1). "
                    "With --dataset the result is completed (gaps filled with the fallback: the test "
                    "input, then a blank grid) and validated.")
    parser.add_argument("sub_1", metavar="SUB1", help="first submission.json (precision-oriented, e.g. the 2020 solution)")
    parser.add_argument("sub_2", metavar="SUB2", help="second submission.json (e.g. the LLM's votes)")
    parser.add_argument("--output", required=True, help="combined submission.json (written atomically)")
    parser.add_argument("--no-prefer-second", dest="prefer_second", action="store_false",
                        help="only use SUB2 for attempt_2 where SUB1's attempt_2 is empty")
    parser.add_argument("--dataset", help="tasks file: complete the result for every task/test input and validate it")
    args = parser.parse_args(argv)
    try:
        check_output(args.output, {"SUB1": args.sub_1, "SUB2": args.sub_2, "--dataset": args.dataset})
        (sub_1, bad_1), (sub_2, bad_2) = (without_invalid_attempts(read_submission(p), p) for p in (args.sub_1, args.sub_2))
        if bad_1 or bad_2:
            print(f"combine: warning: invalid attempts dropped (the other submission or the fallback fills them), "
                  f"{summarize_problems(bad_1 + bad_2)}", file=sys.stderr)
        combined = combine_submissions(sub_1, sub_2, args.prefer_second)
        if args.dataset:
            tasks = load_tasks(args.dataset)
            stats = {}
            combined = build_submission(tasks, attempts_from_submission(combined), 2, stats)
            write_submission(args.output, combined, tasks)
            print(f"combine: {len(combined)} tasks, {stats['test_inputs']} test inputs, "
                  f"{stats['fallback']} used the fallback -> {args.output}")
        else:
            write_json_atomic(args.output, combined)
            print(f"combine: {len(combined)} tasks -> {args.output}")
    except (OSError, ValueError) as e:  # TaskError, SubmissionError, JSONDecodeError are ValueErrors
        print(f"combine: {e}", file=sys.stderr)
        return 1
    return 0
