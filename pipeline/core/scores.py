"""Rescore records (the `rescore` stage's output): their shape, the one checked reader, and the
file's resume.

One JSON object per line and per test input:
`{"task_id", "test_index", "views": [view, ...], "candidates": [{"grid", "count", "mean_logprob",
"view_logprobs": [one log-probability per view]}, ...]}` (candidates in vote order).

`read_scores` reads them the way `predictions.read_predictions` reads predictions (a bad line
dropped and named `FILE:LINE`, a torn last line skipped, a JSON array or a file without one good
line an error; NaN and Infinity parse only so that the candidate holding one is dropped alone, not
its whole line), and checks each candidate: a valid grid by the one grid rule
(`tasks.valid_grid_key`), an int count >= 1, a finite `mean_logprob` <= 0 or null (null: a member
had no log-probability, voting's -inf), and one finite log-probability <= 0 per view (no string,
no NaN, no empty list).  A bad candidate is dropped and counted with its place, the record's other
candidates are kept: one bad grid never sends the test input to the fallback, and a bad score
never outranks a good one.  A test input scored twice keeps its first record (counted).

`open_scores` prepares the file for a resumed run: the torn tail of a killed run is cut
(`files.repair_jsonl_tail`), the settings the scores depend on are kept in `<output>.meta.json`
and a resume with other settings is refused, naming each one that differs.
"""
from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.files import check_resume_meta, repair_jsonl_tail, strict_loads
from pipeline.core.predictions import MAX_PROBLEMS, check_path, checked_lines, is_count, is_logprob, new_counts
from pipeline.core.tasks import valid_grid_key


class ScoresError(ValueError):
    """A scores file that cannot be trusted; the message names the file (and the line)."""


def record_problem(record: Any) -> str | None:
    """Why `record` is not a rescore record at all (its candidates are checked one by one)."""
    if not isinstance(record, dict):
        hint = " (scores are JSON lines: one object per line)" if isinstance(record, list) else ""
        return f"a JSON {type(record).__name__}, not a scores object{hint}"
    if not isinstance(record.get("task_id"), str) or not record["task_id"]:
        return f"no string 'task_id' (keys: {', '.join(sorted(map(str, record))[:8]) or 'none'})"
    where = f"task {record['task_id']}"
    if not is_count(record.get("test_index")):
        return f"{where}: 'test_index' must be an int >= 0, got {record.get('test_index')!r:.40}"
    views = record.get("views")
    if not isinstance(views, list) or not views:
        return f"{where}: 'views' must be a non-empty list, got {views!r:.40}"
    candidates = record.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return f"{where}: 'candidates' must be a non-empty list, got {candidates!r:.40}"
    return None


def candidate_problem(candidate: Any, n_views: int) -> str | None:
    """Why one candidate of a rescore record cannot be ranked, or None."""
    if not isinstance(candidate, dict):
        return f"a JSON {type(candidate).__name__}, not a candidate object"
    if valid_grid_key(candidate.get("grid")) is None:
        return "'grid' is not a 1-30 x 1-30 grid of ints 0-9"
    count = candidate.get("count")
    if not is_count(count) or count < 1:
        return f"'count' must be an int >= 1, got {count!r:.40}"
    mean = candidate.get("mean_logprob")
    if mean is not None and not is_logprob(mean):
        return f"'mean_logprob' must be a finite number <= 0 or null, got {mean!r:.40}"
    views = candidate.get("view_logprobs")
    if not isinstance(views, list) or len(views) != n_views or not all(map(is_logprob, views)):
        return f"'view_logprobs' must be {n_views} finite number(s) <= 0 (one per view), got {views!r:.60}"
    return None


def scored_candidate(grid: list, count: int, mean_logprob: float, view_logprobs) -> dict:
    """A candidate as `rescore` writes it: a non-finite mean log-prob (voting's -inf for a group
    with a member without a log-prob) is null, as strict JSON has no -Infinity."""
    return {"grid": grid, "count": count, "mean_logprob": mean_logprob if math.isfinite(mean_logprob) else None,
            "view_logprobs": list(view_logprobs)}


def read_scores(path: str | os.PathLike, counts: dict | None = None) -> dict:
    """`{(task_id, test_index): [{"grid", "count", "mean_logprob", "view_logprobs": tuple}, ...]}` in
    vote order, checked (module docstring); `mean_logprob` null is -inf.  `counts` (if given)
    receives `records` (test inputs), `candidates`, `bad_candidates`, `duplicates`, `bad_records`,
    `torn_lines` and the first few `problems` (`FILE:LINE: why`)."""
    path = check_path(path, "scores file")
    tally = {**new_counts(), "candidates": 0, "bad_candidates": 0}
    out: dict = {}
    lenient = functools.partial(strict_loads, constants=True)  # every number is checked below, candidate by candidate
    for number, record in checked_lines(path, record_problem, tally, ScoresError, "scores file", lenient):
        key = (record["task_id"], record["test_index"])
        if key in out:
            tally["duplicates"] += 1
            continue
        kept = []
        for i, candidate in enumerate(record["candidates"]):
            why = candidate_problem(candidate, len(record["views"]))
            if why:
                tally["bad_candidates"] += 1
                if len(tally["problems"]) < MAX_PROBLEMS:
                    tally["problems"].append(f"{path}:{number}: task {key[0]} test {key[1]} candidate {i}: {why}")
                continue
            mean = candidate.get("mean_logprob")
            kept.append({"grid": candidate["grid"], "count": candidate["count"],
                         "mean_logprob": float("-inf") if mean is None else float(mean),
                         "view_logprobs": tuple(map(float, candidate["view_logprobs"]))})
        tally["candidates"] += len(kept)
        if kept:
            out[key] = kept
    tally["records"] = len(out)
    if counts is not None:
        counts.update(tally)
    return out


def describe_scores(path, counts: dict) -> str:
    """`scores.jsonl: 12 test inputs, 40 candidates (2 bad candidate(s) dropped: ...)`."""
    extra = [f"{counts['bad_candidates']} bad candidate(s) dropped" if counts.get("bad_candidates") else "",
             f"{counts['bad_records']} bad record(s) dropped" if counts.get("bad_records") else "",
             f"{counts['duplicates']} test input(s) scored twice (first kept)" if counts.get("duplicates") else "",
             "a torn last line skipped" if counts.get("torn_lines") else ""]
    extra = [e for e in extra if e]
    first = f": {counts['problems'][0]}" + ("; ..." if len(counts["problems"]) > 1 else "") if counts.get("problems") else ""
    return (f"{path}: {counts.get('records', 0)} test input(s), {counts.get('candidates', 0)} candidates"
            + (f" ({', '.join(extra)}{first})" if extra else ""))


def open_scores(path: str | os.PathLike, meta: Mapping) -> set:
    """Prepare a scores file for appending (a killed run's torn tail cut, a whole unterminated line
    given its newline), refuse other settings (`files.check_resume_meta`) and return the test inputs already
    scored."""
    path = Path(path)
    action, size = repair_jsonl_tail(path)
    if action == "cut":
        print(f"rescore: {path}: cut a torn last line ({size} bytes) left by a killed run; its test input is redone",
              file=sys.stderr)
    done = set(read_scores(path)) if path.exists() and path.stat().st_size else set()
    check_resume_meta(path, meta, len(done), "scores")
    return done


def scores_problems(path, scores: Mapping, counts: dict, tasks: Mapping) -> list[str]:
    """What a reader of `scores` (from `read_scores(path, counts)`) should warn about before using
    them for `tasks`: dropped records or candidates, no scored test input at all, scores of test
    inputs that are not in the tasks (each one line)."""
    problems = []
    if counts.get("bad_records") or counts.get("bad_candidates") or counts.get("duplicates") or counts.get("torn_lines"):
        problems.append(describe_scores(path, counts))
    if not scores:
        problems.append(f"{path} holds no scored test input: every test input is voted v2")
    unknown = [k for k in scores if k[0] not in tasks or not k[1] < len(tasks[k[0]]["test"])]
    if unknown:
        problems.append(f"{path}: {len(unknown)} scored test input(s) not in the dataset were ignored, e.g. {unknown[0]}")
    return problems
