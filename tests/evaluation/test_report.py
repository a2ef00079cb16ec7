"""The report stage: `python -m pipeline report` on predictions voted by `python -m pipeline vote`."""
from __future__ import annotations

import json

from pipeline.__main__ import main as pipeline_main
from pipeline.evaluation.metrics import load_solutions
from pipeline.core.tasks import load_tasks, select_tasks

from conftest import DATA, one_line_error

CHALLENGES = DATA / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
SOLVED, PARTLY, UNSOLVED = "00576224", "6ea4a07e", "8b28cd80"  # 1, 2 and 2 test inputs


def write_run(tmp_path):
    """Challenges of three real tasks, the unsolved one first, and predictions that solve SOLVED,
    one of PARTLY's two test outputs and nothing of UNSOLVED (its only prediction does not parse)."""
    tasks = select_tasks(load_tasks(CHALLENGES, solutions=None), [UNSOLVED, PARTLY, SOLVED])
    solutions = load_solutions(CHALLENGES)
    dataset = tmp_path / "challenges.json"
    dataset.write_text(json.dumps(tasks))
    wrong = [[0]]
    records = [
        {"task_id": SOLVED, "test_index": 0, "grid": solutions[SOLVED][0]},
        {"task_id": SOLVED, "test_index": 0, "grid": solutions[SOLVED][0]},
        {"task_id": SOLVED, "test_index": 0, "grid": wrong},
        {"task_id": PARTLY, "test_index": 0, "grid": solutions[PARTLY][0]},
        {"task_id": PARTLY, "test_index": 1, "grid": wrong},
        {"task_id": UNSOLVED, "test_index": 0, "grid": None, "error": "unparseable: no grid"},
    ]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({**r, "sample_index": i}) + "\n" for i, r in enumerate(records)))
    return dataset, predictions


def test_report_cli_scores_and_draws_a_voted_run(tmp_path, capsys):
    dataset, predictions = write_run(tmp_path)
    submission, out = tmp_path / "submission.json", tmp_path / "report"
    assert pipeline_main(["vote", "--predictions", str(predictions), "--dataset", str(dataset),
                          "--output", str(submission)]) == 0
    # the solutions sit in the original solutions file, not beside the copied challenges
    assert pipeline_main(["report", "--predictions", str(predictions), "--submission", str(submission),
                          "--dataset", str(dataset), "--solutions", str(CHALLENGES.with_name(
                              "arc-agi_evaluation_solutions.json")), "--output_dir", str(out),
                          "--pictures", "2"]) == 0
    printed = capsys.readouterr().out.split()
    report = (out / "report.md").read_text()
    # tasks with a solved output are drawn first (in task order), 2 asked: not the unsolved first task
    assert printed[-3:] == [str(out / "report.md"), str(out / "pictures" / f"{PARTLY}.png"),
                            str(out / "pictures" / f"{SOLVED}.png")]
    for name in (SOLVED, PARTLY):
        assert (out / "pictures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "pictures" / f"{UNSOLVED}.png").exists()
    # 2 of the 5 test outputs right in an attempt: the score counts test outputs (40 %), not the
    # per-task mean (1 + 0.5 + 0) / 3 = 50 %
    assert report.splitlines()[2] == "**2/5 test outputs solved** (Kaggle score 40.0%)."
    assert "| **Kaggle score** | | **40.0%** | 2/5 test outputs right" in report
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report.splitlines() if line.startswith("| ")}
    assert rows[SOLVED].split(" | ")[1:4] == ["1", "3", "3"]  # 1 test output, 3 predictions, 3 valid
    assert rows[SOLVED].split(" | ")[7] == "1/1"
    assert rows[PARTLY].split(" | ")[7] == "1/2" and rows[UNSOLVED].split(" | ")[7] == "0/2"
    assert "1 of 6 predictions have no valid grid" in report and "`unparseable: no grid`" in report


def test_report_cli_names_a_missing_file(tmp_path, capsys):
    dataset, predictions = write_run(tmp_path)
    missing = tmp_path / "no-submission.json"
    assert pipeline_main(["report", "--predictions", str(predictions), "--submission", str(missing),
                          "--dataset", str(dataset), "--output_dir", str(tmp_path / "report")]) == 1
    one_line_error(capsys.readouterr().err, "report: ", str(missing), "file not found")
    assert not (tmp_path / "report").exists()  # neither the report nor any picture
