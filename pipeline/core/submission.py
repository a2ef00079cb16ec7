"""Kaggle submissions: build (always complete), validate, write, combine.

A submission is `{task_id: [{"attempt_1": grid, "attempt_2": grid}, ... one per test input, in
order]}` (spec §1.1).  The original code wrote `[]` for "no answer"; here every submission that
`build_submission` makes is *complete*: every task of the dataset, every test input, and two valid
grids per test input.  Gaps are filled from `fallback_attempts` (the test input itself, the most
common partial baseline, then a tiny blank grid), and attempt_2 never repeats attempt_1 when that
can be avoided.

`combine_submissions` is the spec §7.5 rule (preference for the second submission on the second
attempt), but pure: it never mutates its inputs (the original mutated sub_1 through shallow
copies, spec §12.14).

CLI: `python -m pipeline combine SUB1 SUB2 --output OUT [--no-prefer-second] [--dataset TASKS]`.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from pipeline.core.files import write_json_atomic
from pipeline.core.tasks import grid_problems, load_tasks, read_json_file, valid_grid_key

ATTEMPT_KEY = re.compile(r"^attempt_[1-9][0-9]*$")


class SubmissionError(ValueError):
    """An invalid submission; the message lists every problem (task and test index named)."""


# ----------------------------------------------------------------------------- helpers

def copy_grid(grid) -> list:
    """A fresh JSON-native copy (lists of ints) of a grid or numpy array."""
    if hasattr(grid, "tolist"):
        grid = grid.tolist()
    return [list(row) for row in grid]


def is_empty_attempt(attempt) -> bool:
    """Spec §7.5 "empty": missing (None) or `[]`; anything else counts as an answer."""
    return attempt is None or (isinstance(attempt, list) and len(attempt) == 0)


def attempt_names(n: int) -> list[str]:
    return [f"attempt_{i}" for i in range(1, n + 1)]


# ----------------------------------------------------------------------------- fallback & build

def fallback_attempts(test_input) -> list[list]:
    """Two distinct valid grids used when the model gave too few answers: attempt_1 is a copy of
    the test input (identity), attempt_2 is `[[0]]` (`[[0, 0], [0, 0]]` if the input is `[[0]]`)."""
    identity = copy_grid(test_input)
    blank = [[0, 0], [0, 0]] if identity == [[0]] else [[0]]
    return [identity, blank]


def _fill_grids(test_input) -> Iterable[list]:
    """Fallback grids in order of preference, endless enough for any sane n_attempts."""
    yield from fallback_attempts(test_input)
    for side in range(1, 31):
        for colour in range(10):
            yield [[colour] * side for _ in range(side)]


def fill_attempts(test_input, candidates: Sequence, n_attempts: int = 2) -> tuple[list[list], int]:
    """The first `n_attempts` distinct valid grids among `candidates` (ranked, best first), padded
    from the fallback.  Invalid/empty candidates and repeats are skipped.  Returns
    `(attempts, how many came from the fallback)`."""
    chosen, seen = [], set()
    for grid in candidates or ():
        if len(chosen) == n_attempts:
            break
        key = valid_grid_key(grid)
        if key is None or key in seen:
            continue
        seen.add(key)
        chosen.append(copy_grid(grid))
    n_model = len(chosen)
    if n_model < n_attempts:
        for grid in _fill_grids(test_input):
            key = valid_grid_key(grid)
            if key in seen:
                continue
            seen.add(key)
            chosen.append(grid)
            if len(chosen) == n_attempts:
                break
    return chosen, n_attempts - n_model


def build_submission(tasks: Mapping, attempts_by_key: Mapping, n_attempts: int = 2,
                     stats: dict | None = None) -> dict:
    """A complete, valid submission for every task and test input of `tasks`.

    `attempts_by_key`: `{(task_id, test_index): [grid, ...]}`, ranked best first (missing keys,
    invalid grids and duplicates are fine: the gaps come from `fallback_attempts`).  Keys that
    are not in `tasks` are ignored.  If `stats` is a dict it receives counts: `test_inputs`,
    `with_candidate` (at least one valid candidate), `fallback` (at least one attempt from the
    fallback) and `fallback_all` (every attempt from the fallback).
    """
    if n_attempts < 1:
        raise ValueError("n_attempts must be >= 1")
    names = attempt_names(n_attempts)
    counts = {"test_inputs": 0, "with_candidate": 0, "fallback": 0, "fallback_all": 0}
    submission = {}
    for task_id, task in tasks.items():
        entries = []
        for index, pair in enumerate(task["test"]):
            grids, n_fallback = fill_attempts(pair["input"], attempts_by_key.get((task_id, index)), n_attempts)
            entries.append(dict(zip(names, grids)))
            counts["test_inputs"] += 1
            counts["with_candidate"] += n_fallback < n_attempts
            counts["fallback"] += n_fallback > 0
            counts["fallback_all"] += n_fallback == n_attempts
        submission[task_id] = entries
    if stats is not None:
        stats.update(counts)
    return submission


def attempts_from_submission(submission: Mapping) -> dict:
    """`{(task_id, test_index): [attempt_1, attempt_2, ...]}` from a submission (any attempts, even
    malformed ones, in attempt-number order) — the input `build_submission` takes."""
    out = {}
    if not isinstance(submission, Mapping):
        return out
    for task_id, entries in submission.items():
        if not isinstance(entries, list):
            continue
        for index, entry in enumerate(entries):
            if isinstance(entry, Mapping):
                keys = sorted((k for k in entry if isinstance(k, str) and ATTEMPT_KEY.match(k)),
                              key=lambda k: int(k.split("_")[1]))
                out[(task_id, index)] = [entry[k] for k in keys]
    return out


# ----------------------------------------------------------------------------- validation & I/O

def submission_problems(submission, tasks: Mapping) -> list[str]:
    """Everything that keeps `submission` from being a complete, valid Kaggle submission for
    `tasks`: missing/extra task ids, a wrong number of test entries, entries that are not objects,
    missing or invalid attempt_1/attempt_2, unknown keys.  Each message names the task and the
    test index.  An empty list means the submission is valid."""
    if not isinstance(submission, Mapping):
        return [f"submission is a {type(submission).__name__}, not an object {{task_id: [...]}}"]
    problems = []
    for task_id in tasks:
        if task_id not in submission:
            problems.append(f"task {task_id!r}: missing")
    for task_id in submission:
        if task_id not in tasks:
            problems.append(f"task {task_id!r}: not in the dataset (extra task)")
    for task_id, task in tasks.items():
        if task_id not in submission:
            continue
        entries = submission[task_id]
        n_test = len(task["test"])
        if not isinstance(entries, list):
            problems.append(f"task {task_id!r}: is a {type(entries).__name__}, not a list of {n_test} entries")
            continue
        if len(entries) != n_test:
            problems.append(f"task {task_id!r}: has {len(entries)} test entries but the task has {n_test} test input(s)")
        for index, entry in enumerate(entries):
            where = f"task {task_id!r} test {index}"
            if not isinstance(entry, Mapping):
                problems.append(f"{where}: is a {type(entry).__name__}, not an object with attempt_1/attempt_2")
                continue
            for key in entry:
                if not (isinstance(key, str) and ATTEMPT_KEY.match(key)):
                    problems.append(f"{where}: unknown key {key!r}")
            for name in attempt_names(2):
                if name not in entry:
                    problems.append(f"{where}: missing {name}")
            for name in entry:
                if isinstance(name, str) and ATTEMPT_KEY.match(name):
                    problems += [f"{where} {name}: {p}" for p in grid_problems(entry[name])]
    return problems


def validate_submission(submission, tasks: Mapping, source: str = "") -> dict:
    problems = submission_problems(submission, tasks)
    if problems:
        head = f"{source}: " if source else ""
        raise SubmissionError(f"{head}invalid submission, {len(problems)} problem(s):\n" + "\n".join(problems))
    return submission


def read_submission(path) -> dict:
    """A submission file, checked for what every reader needs (score, render, report, combine):
    it exists and is JSON (else an error naming the file and the position) and is an object
    `{task_id: [...]}` (a JSON list, the original's other layout, is refused).  Its content
    against a task set is `submission_problems`'s job."""
    submission = read_json_file(Path(path))
    if not isinstance(submission, dict):
        raise SubmissionError(f"{path}: a JSON {type(submission).__name__}, not a submission object "
                              f"{{task_id: [{{attempt_1, attempt_2}}, ...]}}")
    return submission


def summarize_problems(problems: Sequence[str], limit: int = 3) -> str:
    """`N problem(s): first; second; third; ...` on one line."""
    shown = "; ".join(problems[:limit]) + ("; ..." if len(problems) > limit else "")
    return f"{len(problems)} problem(s): {shown}"


def write_submission(path, submission, tasks: Mapping):
    """Validate against `tasks` (raise SubmissionError listing the problems), then write atomically."""
    validate_submission(submission, tasks, str(path))
    return write_json_atomic(path, submission)


# ----------------------------------------------------------------------------- combine

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


def combine_main(argv: Sequence[str] | None = None) -> int:
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
        sub_1, sub_2 = read_submission(args.sub_1), read_submission(args.sub_2)
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
