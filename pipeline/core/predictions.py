"""Prediction records: the one definition of their shape and the one checked reader.

The sampling stage appends one JSON object per line (`PredictionRecord`); `vote`, `evaluate`,
`report`, `rescore`, the dry run and sampling's own resume read them back through
`read_predictions`, which trusts nothing it has not checked:

* the file: a missing path, a folder, or JSON lines that are one JSON array are errors naming it;
* each line, strict JSON (`files.strict_loads`: NaN and Infinity are not numbers here) with typed
  fields (`record_problem`: a string `task_id`, an int `test_index` >= 0, a finite log-probability
  <= 0 or null, an int `n_tokens` >= 0).  A bad line is dropped and counted, and the message names
  it (`FILE:LINE: why`): it never becomes a vote, so it cannot displace a good candidate.  A file
  with bad lines and not one good record is an error (it is not a predictions file);
* a record seen twice (the same line twice, or the same file given twice) counts once: votes and
  accuracy are not inflated by a copy;
* a last line without its newline is a record when it parses and a torn write of a killed run
  when it does not (skipped and counted; the resume cuts it: `files.repair_jsonl_tail`).

Records whose grid is not a valid grid are kept (they are the model's unparseable or malformed
answers) and counted, so that every reader can say what it dropped.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence, TypedDict

from pipeline.core.files import complete_line, jsonl_lines, strict_loads
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


def is_number(value: Any) -> bool:
    """A finite JSON number (bools are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_logprob(value: Any) -> bool:
    """A log-probability: a finite number <= 0."""
    return is_number(value) and value <= 0


def is_count(value: Any) -> bool:
    """An int >= 0 (bools are not ints)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def record_problem(record: Any) -> str | None:
    """Why `record` is not a usable prediction record, or None."""
    if not isinstance(record, dict):
        kind = type(record).__name__
        hint = " (predictions are JSON lines: one object per line, not one JSON array)" if kind == "list" else ""
        return f"a JSON {kind}, not a prediction object{hint}"
    if not isinstance(record.get("task_id"), str) or not record["task_id"]:
        return f"no string 'task_id' (keys: {', '.join(sorted(map(str, record))[:8]) or 'none'})"
    task = f"task {record['task_id']}"
    for key in ("test_index", "sample_index"):
        if (key == "test_index" or key in record) and not is_count(record.get(key)):
            return f"{task}: {key!r} must be an int >= 0, got {record.get(key)!r:.40}"
    logprob = record.get("cumulative_logprob")
    if logprob is not None and not is_logprob(logprob):
        return f"{task}: 'cumulative_logprob' must be a finite number <= 0 or null, got {logprob!r:.40}"
    n_tokens = record.get("n_tokens")
    if n_tokens is not None and not is_count(n_tokens):
        return f"{task}: 'n_tokens' must be an int >= 0, got {n_tokens!r:.40}"
    return None


def check_path(path: str | os.PathLike, what: str = "predictions file") -> Path:
    """`path` as a Path if it is an existing file, else PredictionsError naming it."""
    path = Path(path)
    if not path.exists():
        raise PredictionsError(f"{path}: no such {what}")
    if not path.is_file():
        raise PredictionsError(f"{path}: is a directory, not a {what}")
    return path


def new_counts() -> dict:
    """What a checked reader tells: kept `records`; skipped `torn_lines`; dropped `duplicates` and
    `bad_records` (the first few `problems`, `FILE:LINE: why`); kept but unusable `unparsed`
    (grid null) and `invalid_grids`."""
    return {"records": 0, "torn_lines": 0, "unparsed": 0, "invalid_grids": 0, "duplicates": 0,
            "bad_records": 0, "problems": []}


MAX_PROBLEMS = 5  # `FILE:LINE: why` kept per reader for its message


def checked_lines(path: Path, problem, counts: dict, error=PredictionsError, what: str = "predictions file",
                  loads=strict_loads):
    """`(line number, record)` of every good line of a JSON-lines file: strict JSON, `problem(record)`
    None.  Bad lines are counted in `counts` (the first few named), a torn last line too; a JSON
    array, or bad lines without one good record, are `error`s naming the file."""
    good, first_bad = 0, None
    for number, line, terminated in jsonl_lines(path):
        if not terminated and not complete_line(line):
            counts["torn_lines"] += 1  # a killed writer's last line: the resume redoes it
            break
        try:
            record = loads(line)
            why = problem(record)
        except json.JSONDecodeError as e:
            why, record = f"not a JSON line ({e.msg} at column {e.colno})", None
        except ValueError as e:  # strict_loads: NaN, Infinity, a key twice
            why, record = str(e), None
        if isinstance(record, list):
            raise error(f"{path}:{number}: {why}")
        if why:
            place = f"{path}:{number}: {why}"
            first_bad = first_bad or place
            counts["bad_records"] += 1
            if len(counts["problems"]) < MAX_PROBLEMS:
                counts["problems"].append(place)
            continue
        good += 1
        yield number, record
    if first_bad and not good:
        raise error(f"{first_bad} (and no good line: not a {what})")


def read_predictions(paths: str | os.PathLike | Sequence[str | os.PathLike], counts: dict | None = None
                     ) -> list[PredictionRecord]:
    """Every good record of one or more predictions JSONL files, checked and de-duplicated across
    them (see the module docstring).  `counts`, if given, is updated with `new_counts`' keys."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    records: list[PredictionRecord] = []
    tally, seen = new_counts(), set()
    for path in map(check_path, paths):
        for _, record in checked_lines(path, record_problem, tally):
            identity = json.dumps(record, sort_keys=True)
            if identity in seen:
                tally["duplicates"] += 1
                continue
            seen.add(identity)
            grid = record.get("grid")
            if grid is None:
                tally["unparsed"] += 1
            elif not is_valid_grid(grid):
                tally["invalid_grids"] += 1
            records.append(record)
    tally["records"] = len(records)
    if counts is not None:
        for key, value in tally.items():
            counts[key] = counts.get(key, type(value)()) + value
    return records


def describe_counts(counts: dict, noun: str = "predictions") -> str:
    """`120 predictions (3 unparseable, 1 invalid grid(s) dropped, 2 duplicate(s) dropped, 1 bad
    record(s) dropped: p.jsonl:7: not a JSON line (...), a torn last line skipped)`."""
    extra = [f"{counts['unparsed']} unparseable" if counts.get("unparsed") else "",
             f"{counts['invalid_grids']} invalid grid(s) dropped" if counts.get("invalid_grids") else "",
             f"{counts['duplicates']} duplicate(s) dropped" if counts.get("duplicates") else "",
             f"{counts['bad_records']} bad record(s) dropped: {'; '.join(counts['problems'][:2])}"
             + ("; ..." if counts["bad_records"] > 2 else "") if counts.get("bad_records") else "",
             "a torn last line skipped" if counts.get("torn_lines") else ""]
    extra = [e for e in extra if e]
    return f"{counts.get('records', 0)} {noun}" + (f" ({', '.join(extra)})" if extra else "")
