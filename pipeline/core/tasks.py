"""ARC tasks: load, validate and select (the `validate` command: `pipeline/core/validate.py`).

A *grid* is a list of rows, each a list of ints 0-9, 1-30 rows × 1-30 columns (numpy arrays are
accepted where noted).  A *pair* is `{"input": grid, "output": grid}` (test pairs may lack the
output).  A *task* is `{"train": [pair, ...], "test": [pair, ...]}` and a task set is a plain dict
`{task_id: task}`, exactly the JSON of the Kaggle files, so tasks travel between stages as JSON.

Three file layouts load the same way:
  * a Kaggle challenges file, with its solutions file merged in when given (or found beside it:
    `*_challenges.json` -> `*_solutions.json`);
  * a combined file whose test pairs carry their outputs (the rs7 partitions, MINI-ARC, ...);
  * a directory with one `<task_id>.json` per task.
"""
from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from pipeline.core.files import FileFormatError, read_json

MAX_SIDE = 30


class TaskError(ValueError):
    """Bad task data; the message names the task and every problem found."""


# ----------------------------------------------------------------------------- validation

def grid_problems(grid) -> list[str]:
    """Everything wrong with one grid, as short phrases (empty list: the grid is valid)."""
    if isinstance(grid, np.ndarray):
        grid = grid.tolist()
    if not isinstance(grid, list):
        return [f"is a {type(grid).__name__}, not a list of rows"]
    if len(grid) == 0:
        return ["has 0 rows"]
    problems = []
    if len(grid) > MAX_SIDE:
        problems.append(f"has {len(grid)} rows (max {MAX_SIDE})")
    width = None
    for r, row in enumerate(grid):
        if not isinstance(row, list):
            problems.append(f"row {r} is a {type(row).__name__}, not a list")
            continue
        if width is None:
            width = len(row)
            if width == 0:
                problems.append("row 0 has 0 cells")
            elif width > MAX_SIDE:
                problems.append(f"has {width} columns (max {MAX_SIDE})")
        elif len(row) != width:
            problems.append(f"row {r} has {len(row)} cells but row 0 has {width} (not rectangular)")
        for c, v in enumerate(row):
            if type(v) is not int:  # JSON ints only (a numpy array is converted above; bools are not colours)
                problems.append(f"row {r} col {c}: {v!r} is not an int")
            elif not 0 <= v <= 9:
                problems.append(f"row {r} col {c}: colour {v} outside 0-9")
    return problems


def is_valid_grid(grid) -> bool:
    return valid_grid_key(grid) is not None


_DIGIT_BYTES = bytes(range(10))


def loose_grid_key(grid):
    """`(width, bytes of the cells)` for a rectangular list-of-lists grid of 1-30 × 1-30 ints 0-9,
    else None.  Equal keys <=> equal grids (shape and values).  The per-cell work runs in C, so a
    30×30 grid costs ~15 µs.  Bools pass here (bool is an int); `valid_grid_key` rejects them."""
    if type(grid) is not list or not 0 < len(grid) <= MAX_SIDE:
        return None
    if set(map(type, grid)) != {list}:
        return None
    widths = set(map(len, grid))
    width = widths.pop()
    if widths or not 0 < width <= MAX_SIDE:  # ragged, or too wide/empty
        return None
    try:
        cells = bytes(chain.from_iterable(grid))  # TypeError: non-int cell; ValueError: outside 0-255
    except (TypeError, ValueError):
        return None
    if cells.translate(None, _DIGIT_BYTES):  # something left after deleting 0-9
        return None
    return width, cells


def valid_grid_key(grid):
    """Hashable key of a valid grid, or None for anything else: the fast form of the one validity
    rule (`grid_problems` lists the problems; tests check the two agree).  Equal keys <=> equal
    grids."""
    if isinstance(grid, np.ndarray):
        grid = grid.tolist()
    key = loose_grid_key(grid)
    return key if key is not None and int_cells(grid) else None


def int_cells(grid) -> bool:
    """Every cell of a list-of-lists grid is exactly an int (no bool, no float): the check
    `loose_grid_key` leaves out."""
    return set(map(type, chain.from_iterable(grid))) == {int}




def task_problems(task_id: str, task) -> list[str]:
    """Every problem of one task, each line naming the task, the pair and the row."""
    where = f"task {task_id!r}"
    if not isinstance(task, dict):
        return [f"{where}: is a {type(task).__name__}, not an object with 'train' and 'test'"]
    problems = []
    for split in ("train", "test"):
        if split not in task:
            problems.append(f"{where}: missing '{split}'")
            continue
        pairs = task[split]
        if not isinstance(pairs, list):
            problems.append(f"{where}: '{split}' is a {type(pairs).__name__}, not a list")
            continue
        if not pairs:
            problems.append(f"{where}: '{split}' is empty")
        for i, pair in enumerate(pairs):
            if not isinstance(pair, dict):
                problems.append(f"{where} {split}[{i}]: not an object")
                continue
            keys = ("input", "output") if split == "train" else ("input",)
            for key in keys:
                if key not in pair:
                    problems.append(f"{where} {split}[{i}]: missing '{key}'")
            for key in ("input", "output"):
                if key in pair:
                    problems += [f"{where} {split}[{i}].{key}: {p}" for p in grid_problems(pair[key])]
    return problems


def tasks_problems(tasks: dict) -> list[str]:
    return [p for task_id, task in tasks.items() for p in task_problems(task_id, task)]


def raise_problems(source, problems: Sequence[str]) -> None:
    """TaskError listing every problem of `source` (a file), if there is any."""
    if problems:
        raise TaskError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(problems))


# ----------------------------------------------------------------------------- loading

def read_json_file(path: Path):
    """The strict JSON of `path` (`files.strict_loads`: a task id given twice is an error, not the
    second silently replacing the first); TaskError naming the file when it is missing or not JSON."""
    try:
        return read_json(path, strict=True)
    except FileNotFoundError:
        raise TaskError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise TaskError(f"{path}: is a folder, not a JSON file") from None
    except FileFormatError as e:
        raise TaskError(str(e)) from None


def default_solutions_path(challenges_path: str | Path) -> Path | None:
    """`x_challenges.json` -> `x_solutions.json` when that file exists (the Kaggle convention)."""
    path = Path(challenges_path)
    if "challenges" not in path.name:
        return None
    candidate = path.with_name(path.name.replace("challenges", "solutions"))
    return candidate if candidate.exists() else None


def merge_solutions(tasks: dict, solutions: dict, source: str = "") -> tuple[dict, list[str]]:
    """Copy solution grids into the test pairs (new dicts; inputs untouched). Returns problems."""
    merged, problems = {}, []
    for task_id, task in tasks.items():
        if task_id not in solutions or not isinstance(task, dict) or not isinstance(task.get("test"), list):
            merged[task_id] = task
            continue
        outputs = solutions[task_id]
        if not isinstance(outputs, list) or len(outputs) != len(task["test"]):
            n = len(outputs) if isinstance(outputs, list) else "no list of"
            problems.append(f"task {task_id!r}: solutions{' in ' + source if source else ''} have {n} "
                            f"output(s) but the task has {len(task['test'])} test input(s)")
            merged[task_id] = task
            continue
        merged[task_id] = {**task, "test": [{**pair, "output": out} for pair, out in zip(task["test"], outputs)]}
    return merged, problems


def read_task_file(path: str | Path, solutions: str | Path | None = "auto") -> tuple[dict, list[str]]:
    """Read one file or directory without raising on bad tasks: (tasks, problems)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise TaskError(f"{path}: directory holds no .json task files")
        tasks = {f.stem: read_json_file(f) for f in files}
    else:
        tasks = read_json_file(path)
        if not isinstance(tasks, dict):
            raise TaskError(f"{path}: expected an object {{task_id: task}}, got {type(tasks).__name__}")
    problems = []
    sol_path = default_solutions_path(path) if solutions == "auto" else solutions
    if sol_path:
        sols = read_json_file(Path(sol_path))
        tasks, problems = merge_solutions(tasks, sols, str(sol_path))
    return tasks, problems + tasks_problems(tasks)


def load_tasks(paths: str | Path | Sequence[str | Path], solutions: str | Path | None = "auto") -> dict:
    """Load and validate one or several task files/directories into one `{task_id: task}` dict.

    `solutions` applies to a single path: "auto" looks for the Kaggle sibling file, None disables.
    Raises TaskError naming every bad task, pair and row, or a task id found in two files.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if len(paths) > 1 and solutions not in ("auto", None):
        raise TaskError("an explicit solutions file needs exactly one tasks file")
    tasks, origin = {}, {}
    for path in paths:
        loaded, problems = read_task_file(path, solutions)
        raise_problems(path, problems)
        for task_id, task in loaded.items():
            if task_id in tasks:
                raise TaskError(f"task {task_id!r} is in both {origin[task_id]} and {path}")
            tasks[task_id], origin[task_id] = task, path
    return tasks


def has_test_outputs(task: dict) -> bool:
    return all("output" in pair for pair in task["test"])


def solutions_of(tasks: dict) -> dict:
    """`{task_id: [test output grid, ...]}` for the tasks whose test pairs carry outputs."""
    return {tid: [p["output"] for p in t["test"]] for tid, t in tasks.items() if has_test_outputs(t)}


def without_test_outputs(tasks: dict) -> dict:
    """The tasks as the hidden test set shows them: test pairs carry only their input."""
    return {tid: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]}
            for tid, t in tasks.items()}


# ----------------------------------------------------------------------------- selection

def task_size(task: dict) -> int:
    """Cells plus rows over all grids: close to the token count of a digit-per-token encoding."""
    return sum(len(g) * (len(g[0]) + 1) for split in ("train", "test")
               for pair in task[split] for g in pair.values())


def select_tasks(tasks: dict, ids: Iterable[str] | None = None, first_n: int | None = None,
                 sort_by_size: bool = False, size: Callable[[dict], int] = task_size) -> dict:
    """Keep `ids` (in the given order; unknown ids are an error), sort smallest first if asked,
    then keep the first `first_n` (a negative `first_n` is an error, not Python's "all but the
    last": `render --first_n -1` drew one of two tasks)."""
    if first_n is not None and first_n < 0:
        raise TaskError(f"first_n must be >= 0, got {first_n}")
    if ids is not None:
        ids = list(ids)
        missing = [i for i in ids if i not in tasks]
        if missing:
            raise TaskError(f"unknown task id(s): {', '.join(missing)}")
        tasks = {i: tasks[i] for i in ids}
    if sort_by_size:
        tasks = dict(sorted(tasks.items(), key=lambda kv: (size(kv[1]), kv[0])))
    if first_n is not None:
        tasks = dict(list(tasks.items())[:first_n])
    return tasks


def smallest_tasks(tasks: dict, n: int, size: Callable[[dict], int] = task_size) -> dict:
    """The `n` smallest tasks (by `size`, then id): the smoke run's tasks on the placeholder test set
    (pipeline.kaggle.run), and so what `plan --smoke` projects."""
    return select_tasks(tasks, first_n=n, sort_by_size=True, size=size)
