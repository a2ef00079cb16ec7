"""A Markdown report of a scored run: metrics table, per-task results, timing, PNG pictures.

    python -m pipeline report --predictions PRED.jsonl --submission submission.json \\
        --dataset CHALLENGES.json [--solutions SOL.json] --output_dir REPORT_DIR [--pictures N]

`write_report` takes what the scoring stages computed (`metrics.evaluate` results for the raw
predictions and for the two voted attempts, `score.kaggle_score`) and only formats it: it
computes no metric of its own.  Pictures come from `render.render_task` (train pairs, test
input, solution, the two attempts framed green/red), for solved tasks first, then the rest in
task order, up to `n_pictures`.  When nothing is solved the report says so in its first lines.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.files import check_output, write_text_atomic
from pipeline.core.predictions import read_predictions
from pipeline.core.submission import read_submission
from pipeline.core.tasks import load_tasks, merge_solutions
from pipeline.evaluation.metrics import METRICS, score_run
from pipeline.evaluation.score import load_solutions

METRIC_NOTES = {
    "accuracy": "share of all predictions exactly right",
    "correct_pixels": "mean share of right cells (wrong shape = 0)",
    "max_correct_pixels": "best prediction's share of right cells",
    "correct_size": "share of predictions with the right shape",
    "any_correct_size": "some prediction has the right shape",
    "pass_n": "some prediction exactly right (pass@P)",
    "unanswered": "share of predictions without a valid grid",
    "vote_1": "the top voted grid is right",
    "vote_2": "one of the 2 top voted grids is right (Kaggle proxy)",
}


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def metrics_table(raw: Mapping | None, vote: Mapping | None, kaggle: Mapping | None, n_predictions: int | None = None) -> str:
    """Markdown table: one row per metric, columns raw predictions / the 2 voted attempts
    (macro average per task, as the original reported them)."""
    head = f"raw predictions{f' ({n_predictions}/test input)' if n_predictions else ''}"
    lines = [f"| metric | {head} | vote (2 attempts) | meaning |", "|---|---:|---:|---|"]
    for name in METRICS:
        r = raw["per_task_mean"].get(name) if raw else None
        v = vote["per_task_mean"].get(name) if vote else None
        lines.append(f"| {name} | {_pct(r)} | {_pct(v)} | {METRIC_NOTES.get(name, '')} |")
    if kaggle:
        lines.append(f"| **Kaggle score** | | **{_pct(kaggle['score'])}** | {kaggle['n_correct']}/{kaggle['n_outputs']} "
                     f"test outputs right in attempt_1 or attempt_2 |")
    return "\n".join(lines)


def timing_table(rows: Sequence[Mapping]) -> str:
    """Markdown table of `{"stage", "status", "seconds", "detail"?}` rows."""
    lines = ["| stage | status | seconds | detail |", "|---|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r.get('stage', '?')} | {r.get('status', '')} | {float(r.get('seconds') or 0):.1f} | "
                     f"{str(r.get('detail') or '').replace('|', '/')} |")
    return "\n".join(lines)


def _per_task_rows(records: Sequence[Mapping], raw: Mapping | None, kaggle: Mapping | None, pictures: Mapping) -> str:
    by_task: dict[str, list] = {}
    for r in records:
        by_task.setdefault(r["task_id"], []).append(r)
    task_ids = list(raw["per_task"]) if raw else list(by_task)
    lines = ["| task | test outputs | predictions | valid grids | accuracy | pass_n | vote_2 | Kaggle | picture |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for task_id in task_ids:
        recs = by_task.get(task_id, [])
        valid = sum(r.get("grid") is not None for r in recs)
        mean = raw["per_task"][task_id]["mean"] if raw else {}
        k = kaggle["per_task"].get(task_id) if kaggle else None
        solved = f"{sum(k['correct'])}/{len(k['correct'])}" if k else "–"
        picture = f"[png]({pictures[task_id]})" if task_id in pictures else ""
        lines.append(f"| {task_id} | {len(raw['per_task'][task_id]['outputs']) if raw else '–'} | {len(recs)} | {valid} | "
                     f"{_pct(mean.get('accuracy'))} | {_pct(mean.get('pass_n'))} | {_pct(mean.get('vote_2'))} | "
                     f"{solved} | {picture} |")
    return "\n".join(lines)


def _error_summary(records: Sequence[Mapping], top: int = 5) -> str:
    errors = Counter()
    for r in records:
        if r.get("error"):
            errors[str(r["error"]).split(":", 1)[0] + ": " + str(r["error"]).split(":", 1)[-1].strip()[:60]] += 1
    if not errors:
        return "Every prediction parsed into a valid grid."
    total = len(records)
    lines = [f"{sum(errors.values())} of {total} predictions have no valid grid. Most common reasons:", ""]
    lines += [f"* {n} × `{msg}`" for msg, n in errors.most_common(top)]
    return "\n".join(lines)


def headline(kaggle: Mapping | None, raw: Mapping | None, model_note: str = "") -> str:
    """One honest sentence about what was solved."""
    if not kaggle:
        return "No solutions were given: the predictions are not scored."
    solved, total = kaggle["n_correct"], kaggle["n_outputs"]
    if solved == 0:
        any_right = raw and raw["per_task_mean"].get("pass_n", 0) > 0
        return (f"**No test output was solved ({solved}/{total}).**"
                + (" Some raw prediction was right, but the vote did not pick it." if any_right else "")
                + (f" {model_note}" if model_note else ""))
    return f"**{solved}/{total} test outputs solved** (Kaggle score {_pct(kaggle['score'])}).{(' ' + model_note) if model_note else ''}"


def write_report(output_dir: str | Path, tasks: Mapping, records: Sequence[Mapping], submission: Mapping,
                 raw: Mapping | None, vote: Mapping | None, kaggle: Mapping | None, *,
                 timing_rows: Sequence[Mapping] = (), settings: Mapping | None = None, title: str = "Run report",
                 model_note: str = "", n_pictures: int = 6) -> dict:
    """Write `output_dir/report.md` and `output_dir/pictures/<task_id>.png`; returns their paths.

    `tasks`: `{task_id: task}` with test outputs when known (drawn beside the attempts)."""
    from pipeline.core.render import render_task  # matplotlib (~0.25 s) only when pictures are drawn

    output_dir = Path(output_dir)
    picture_dir = output_dir / "pictures"
    solved = [t for t in tasks if kaggle and kaggle["per_task"].get(t, {}).get("score", 0) > 0]
    chosen = (solved + [t for t in tasks if t not in solved])[:max(0, n_pictures)]
    pictures = {}
    for task_id in chosen:
        path = render_task(tasks[task_id], picture_dir / f"{task_id}.png", title=task_id,
                           attempts=submission.get(task_id, []))
        pictures[task_id] = f"pictures/{path.name}"
    n_pred = None
    if records:
        counts = Counter((r["task_id"], r["test_index"]) for r in records)
        n_pred = max(counts.values())
    parts = [f"# {title}", "", headline(kaggle, raw, model_note), ""]
    if settings:
        parts += ["## Settings", "", "| setting | value |", "|---|---|"]
        parts += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in settings.items()]
        parts += [""]
    parts += ["## Metrics", "",
              "Macro average per task (each task weighs the same; a task's test outputs share its weight), "
              "as the original reported them; the Kaggle score averages over test outputs.", "",
              metrics_table(raw, vote, kaggle, n_pred), ""]
    parts += ["## Per-task results", "", _per_task_rows(records, raw, kaggle, pictures), ""]
    parts += ["## Parsing", "", _error_summary(records), ""]
    if timing_rows:
        parts += ["## Timing", "", timing_table(timing_rows), ""]
    if pictures:
        parts += ["## Pictures", "",
                  "Train pairs, then each test input with its solution and the two submitted attempts "
                  "(green frame: right, red: wrong).", ""]
        parts += [f"### {task_id}\n\n![{task_id}]({rel})\n" for task_id, rel in pictures.items()]
    report = write_text_atomic(output_dir / "report.md", "\n".join(parts).rstrip() + "\n")
    return {"report": report, "pictures": [output_dir / rel for rel in pictures.values()]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline report",
                                     description="Score predictions and a submission, and write a Markdown "
                                                 "report with pictures.")
    parser.add_argument("--predictions", required=True, help="predictions JSONL")
    parser.add_argument("--submission", required=True, help="submission.json")
    parser.add_argument("--dataset", required=True, help="tasks (a *_challenges.json picks up its *_solutions.json)")
    parser.add_argument("--solutions", help="solutions file (default: from --dataset)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--pictures", type=int, default=6, help="tasks drawn (solved ones first)")
    args = parser.parse_args(argv)
    try:
        check_output(args.output_dir, {"--predictions": args.predictions, "--submission": args.submission,
                                       "--dataset": args.dataset, "--solutions": args.solutions},
                     folder=True, what="--output_dir")
        records = read_predictions(args.predictions)
        submission = read_submission(args.submission)
        solutions = load_solutions(args.solutions or args.dataset)
        tasks = load_tasks(args.dataset, solutions=None)
        tasks = {t: tasks[t] for t in submission if t in tasks}
        tasks, _ = merge_solutions(tasks, solutions)
        solutions = {t: s for t, s in solutions.items() if t in tasks}
        scores = score_run(records, submission, solutions)
        out = write_report(args.output_dir, tasks, records, submission, scores["raw"], scores["vote"],
                           scores["kaggle"], n_pictures=args.pictures)
    except (OSError, ValueError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    print(out["report"])
    for p in out["pictures"]:
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
