"""What a run leaves for its reader in `run/`: each task's stage outcomes (in `run/summary.json`,
beside the test inputs still on the fallback, `submission_file.fallback_inputs`), and TTFT's
task records.

TTFT writes its adapters and per-task `record.json` to the scratch folder (/tmp/arc-ttft on
Kaggle), which Kaggle does not keep: `keep_records` copies the records, configs and summaries
(every .json and .jsonl file, not the adapter weights) to `run/ttft/`, where the notebook's
output keeps them. Standard library only.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from pipeline.core.adapters import read_record
from pipeline.core.files import read_jsonl

KEPT_SUFFIXES = (".json", ".jsonl")   # records, configs, summaries: small; adapter weights are not kept


def keep_records(source: Path, target: Path) -> int:
    """Copy every .json/.jsonl file under `source` to the same place under `target` (hidden
    work folders left out); returns how many."""
    n = 0
    for path in sorted(source.rglob("*")) if source.is_dir() else ():
        relative = path.relative_to(source)
        if path.is_file() and path.suffix in KEPT_SUFFIXES and not any(p.startswith(".") for p in relative.parts):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative)
            n += 1
    return n


def predictions_by_task(records: Iterable[Mapping]) -> Counter:
    return Counter(r.get("task_id") for r in records)


def task_outcomes(challenges: Mapping, work: Mapping, first_shot: Path, predictions: Path, ttft_dir: Path,
                  on_fallback: Mapping[str, list[int]]) -> dict[str, dict]:
    """Each task's outcome per stage: predictions of the first shot and of the sampling, TTFT's
    status (and reason) from its record, the test inputs left on the fallback. Tasks outside
    `work` (the placeholder's smoke run takes a few) say `worked: false`."""
    first, sampled = predictions_by_task(read_jsonl(first_shot)), predictions_by_task(read_jsonl(predictions))
    out = {}
    for task_id in challenges:
        row: dict = {"worked": task_id in work}
        if task_id in work:
            record = read_record(ttft_dir, task_id) or {}
            row.update(first_shot=first[task_id], ttft=record.get("status", "no record"), sample=sampled[task_id])
            why = record.get("reason") or record.get("error")
            if why:
                row["ttft_reason"] = str(why)[:300]
        row["on_fallback"] = list(on_fallback.get(task_id, []))
        out[task_id] = row
    return out
