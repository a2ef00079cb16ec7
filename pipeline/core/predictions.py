"""Prediction records: the one definition of their shape and the one checked reader.

The sampling stage appends one JSON object per line (`PredictionRecord`); `vote`, `evaluate`,
`report`, the dry run and sampling's own resume read them back through `read_predictions`, which
refuses what it cannot trust with a one-line error naming the file and the line: a missing path,
a directory, a JSON array instead of JSON lines, a garbage line, a record without `task_id` or
with a non-numeric log-probability.  A torn last line (a killed writer) is the one thing skipped,
and it is counted.  Records whose grid is not a valid grid are kept (they are the model's
unparseable or malformed answers) and counted, so that every reader can say what it dropped.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TypedDict

from pipeline.core.tasks import is_valid_grid


class PredictionRecord(TypedDict, total=False):
    task_id: str               # required
    test_index: int            # required, >= 0
    sample_index: int
    augmentation: dict         # the view's JSON value (augment.Augmentation.to_dict)
    text: str                  # raw generation
    grid: list | None          # parsed and mapped back to the task's frame; None if unparseable
    error: str | None          # why grid is None
    cumulative_logprob: float | None
    n_tokens: int
    prompt_tokens: int
    finish_reason: str         # "stop" or "length"


class PredictionsError(ValueError):
    """A predictions file that cannot be trusted; the message names the file (and the line)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def record_problem(record: Any) -> str | None:
    """Why `record` is not a usable prediction record, or None."""
    if not isinstance(record, dict):
        kind = type(record).__name__
        hint = " (predictions are JSON lines: one object per line, not one JSON array)" if kind == "list" else ""
        return f"a JSON {kind}, not a prediction object{hint}"
    if not isinstance(record.get("task_id"), str):
        return f"no string 'task_id' (keys: {', '.join(sorted(map(str, record))[:8]) or 'none'})"
    index = record.get("test_index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return f"task {record['task_id']}: 'test_index' must be an int >= 0, got {index!r:.40}"
    logprob = record.get("cumulative_logprob")
    if logprob is not None and not _is_number(logprob):
        return f"task {record['task_id']}: 'cumulative_logprob' must be a number or null, got {logprob!r:.40}"
    n_tokens = record.get("n_tokens")
    if n_tokens is not None and (isinstance(n_tokens, bool) or not isinstance(n_tokens, int)):
        return f"task {record['task_id']}: 'n_tokens' must be an int, got {n_tokens!r:.40}"
    return None


def check_path(path: str | os.PathLike, what: str = "predictions file") -> Path:
    """`path` as a Path if it is an existing file, else PredictionsError naming it."""
    path = Path(path)
    if not path.exists():
        raise PredictionsError(f"{path}: no such {what}")
    if not path.is_file():
        raise PredictionsError(f"{path}: is a directory, not a {what}")
    return path


def read_predictions(path: str | os.PathLike, counts: dict | None = None) -> list[PredictionRecord]:
    """Every record of a predictions JSONL file, checked (see the module docstring).

    `counts`, if given, receives `records`, `torn_lines` (0 or 1), `unparsed` (grid null) and
    `invalid_grids` (a grid that is not a 1-30 x 1-30 grid of ints 0-9)."""
    path = check_path(path)
    records: list[PredictionRecord] = []
    tally = {"records": 0, "torn_lines": 0, "unparsed": 0, "invalid_grids": 0}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                tally["torn_lines"] += 1  # a killed writer's last line: the resume redoes it
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PredictionsError(f"{path}:{number}: not a JSON line ({e.msg} at column {e.colno})") from None
            problem = record_problem(record)
            if problem:
                raise PredictionsError(f"{path}:{number}: {problem}")
            grid = record.get("grid")
            if grid is None:
                tally["unparsed"] += 1
            elif not is_valid_grid(grid):
                tally["invalid_grids"] += 1
            records.append(record)
    tally["records"] = len(records)
    if counts is not None:
        counts.update(tally)
    return records


def describe_counts(counts: dict) -> str:
    """`120 predictions (3 unparseable, 1 invalid grid dropped, torn last line skipped)`."""
    extra = [f"{counts['unparsed']} unparseable" if counts.get("unparsed") else "",
             f"{counts['invalid_grids']} invalid grid(s) dropped" if counts.get("invalid_grids") else "",
             "a torn last line skipped" if counts.get("torn_lines") else ""]
    extra = [e for e in extra if e]
    return f"{counts.get('records', 0)} predictions" + (f" ({', '.join(extra)})" if extra else "")
