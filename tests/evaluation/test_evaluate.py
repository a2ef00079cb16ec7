"""The evaluate command (pipeline/evaluation/evaluate.py): summary lines, metrics file, errors."""
from __future__ import annotations

import json
import re

import pytest

from pipeline.__main__ import main as pipeline_main
from pipeline.core.files import append_jsonl, read_json

from conftest import one_line_error

TASKS = {"A": {"train": [{"input": [[0]], "output": [[1]]}],
               "test": [{"input": [[0]], "output": [[1]]}, {"input": [[3]], "output": [[2]]}]},
         "B": {"train": [{"input": [[0]], "output": [[1]]}], "test": [{"input": [[5]], "output": [[3]]}]}}


def rec(grid, task="t", idx=0, lp=-1.0, n=1):
    return {"task_id": task, "test_index": idx, "augmentation": {}, "text": "", "grid": grid,
            "error": None, "cumulative_logprob": lp, "n_tokens": n}


def test_evaluate_cli(tmp_path, capsys):
    (tmp_path / "tasks.json").write_text(json.dumps(TASKS))
    append_jsonl(tmp_path / "p.jsonl", [rec([[1]], "A", 0), rec([[9]], "A", 0), rec([[2]], "A", 1), rec(None, "A", 1)])
    rc = pipeline_main(["evaluate", "--predictions", str(tmp_path / "p.jsonl"), "--solutions",
                        str(tmp_path / "tasks.json"), "--output", str(tmp_path / "m" / "metrics.json")])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    pattern = (r"accuracy: \d+\.\d%  correct_pixels: \d+\.\d%  max_correct_pixels: \d+\.\d%  correct_size: "
               r"\d+\.\d%  any_correct_size: \d+\.\d%  pass_n: \d+\.\d%  unanswered: \d+\.\d%  "
               r"vote_1: \d+\.\d%  vote_2: \d+\.\d%")
    assert re.fullmatch(pattern, lines[0])
    # A: (0.5 + 0.5) / 2 = 0.5, B: 0 -> macro 25.0%; per output (0.5 + 0.5 + 0) / 3 = 33.3%
    assert lines[0].startswith("accuracy: 25.0%  ")
    assert lines[1].startswith("per test output: accuracy: 33.3%  ")
    assert "2 tasks, 3 test outputs, 4 predictions" in lines[2] and "1 task(s) without predictions" in lines[2]
    saved = read_json(tmp_path / "m" / "metrics.json")
    assert saved["per_task"]["B"]["mean"]["unanswered"] == 1.0
    assert saved["per_task_mean"]["vote_1"] == pytest.approx(0.5)


def test_evaluate_cli_errors(tmp_path, capsys):
    (tmp_path / "sol.json").write_text(json.dumps({"A": [[[1]]]}))
    (tmp_path / "sub.json").write_text(json.dumps({"B": []}))
    missing = tmp_path / "nope.json"  # score's own errors: tests/evaluation/test_score.py
    assert pipeline_main(["evaluate", "--predictions", str(tmp_path / "p.jsonl"), "--solutions", str(missing),
                          "--output", str(tmp_path / "m.json")]) == 1
    assert one_line_error(capsys.readouterr().err) == f"evaluate: {missing}: file not found"
    assert pipeline_main(["evaluate", "--predictions", str(tmp_path / "p.jsonl"), "--solutions",
                          str(tmp_path / "sol.json"), "--output", str(tmp_path / "m.json")]) == 1
    assert one_line_error(capsys.readouterr().err) == f"evaluate: {tmp_path / 'p.jsonl'}: no such predictions file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sol.json", "sub.json"]  # nothing written


def test_evaluate_and_score_refuse_an_output_that_is_an_input(tmp_path, capsys):
    """`evaluate --solutions s.json --output s.json` replaced the solutions with the metrics."""
    (tmp_path / "tasks.json").write_text(json.dumps(TASKS))
    (tmp_path / "sub.json").write_text(json.dumps({"A": []}))
    append_jsonl(tmp_path / "p.jsonl", [rec([[1]], "A", 0)])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for argv in (["evaluate", "--predictions", "p.jsonl", "--solutions", "tasks.json", "--output", "tasks.json"],
                 ["evaluate", "--predictions", "p.jsonl", "--solutions", "tasks.json", "--output", "p.jsonl"],
                 ["score", "--submission", "sub.json", "--solutions", "tasks.json", "--output", "sub.json"]):
        assert pipeline_main([str(tmp_path / a) if a.endswith(("json", "jsonl")) else a for a in argv]) == 1
        one_line_error(capsys.readouterr().err, "is the same file as", "refusing to overwrite an input")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
