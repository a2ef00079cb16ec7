"""Kaggle submissions: build (always complete), validate, write.

A submission is `{task_id: [{"attempt_1": grid, "attempt_2": grid}, ... one per test input, in
order]}` (spec §1.1).  The original code wrote `[]` for "no answer"; here every submission that
`build_submission` makes is *complete*: every task of the dataset, every test input, and two valid
grids per test input.  Gaps are filled from `fallback_attempts` (the test input itself, the most
common partial baseline, then a tiny blank grid), and attempt_2 never repeats attempt_1 when that
can be avoided.

Combining two submissions (spec §7.5) is `pipeline/selection/combine.py`.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from pipeline.core.files import write_json_atomic
from pipeline.core.tasks import grid_problems, read_json_file, valid_grid_key

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


def without_invalid_attempts(submission: Mapping, source="") -> tuple[dict, list[str]]:
    """A copy of `submission` without the attempts that are not valid grids (string or bool cells,
    ragged, over 30 x 30, ...: the one grid rule), so that what is combined from it holds only int
    grids; an empty attempt (`[]`, null) stays, as the combine rule reads it.  Returns the copy and
    one problem per dropped attempt (`SOURCE: task T test I attempt_N: why`)."""
    clean, problems = copy.deepcopy(dict(submission)), []
    head = f"{source}: " if source else ""
    for task_id, entries in clean.items():
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict):
                continue
            for name in [k for k in entry if isinstance(k, str) and ATTEMPT_KEY.match(k)]:
                if not is_empty_attempt(entry[name]) and valid_grid_key(entry[name]) is None:
                    why = (grid_problems(entry[name]) or ["not a valid grid"])[0]
                    problems.append(f"{head}task {task_id!r} test {index} {name}: {why}")
                    del entry[name]
    return clean, problems


def summarize_problems(problems: Sequence[str], limit: int = 3) -> str:
    """`N problem(s): first; second; third; ...` on one line."""
    shown = "; ".join(problems[:limit]) + ("; ..." if len(problems) > limit else "")
    return f"{len(problems)} problem(s): {shown}"


def write_submission(path, submission, tasks: Mapping):
    """Validate against `tasks` (raise SubmissionError listing the problems), then write atomically."""
    validate_submission(submission, tasks, str(path))
    return write_json_atomic(path, submission)
