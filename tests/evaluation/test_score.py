"""The score command (pipeline/evaluation/score.py): the Kaggle score line, warnings, errors."""
from __future__ import annotations

import json

from pipeline.__main__ import main as pipeline_main

from conftest import one_line_error


def test_score_cli_warns_about_an_invalid_submission_and_names_a_missing_file(tmp_path, capsys):
    (tmp_path / "sol.json").write_text(json.dumps({"A": [[[1]]]}))
    (tmp_path / "sub.json").write_text(json.dumps({"B": []}))
    assert pipeline_main(["score", "--submission", str(tmp_path / "sub.json"), "--solutions", str(tmp_path / "sol.json")]) == 0
    captured = capsys.readouterr()
    assert "score: 0.00% (0/1 test outputs)" in captured.out
    assert "2 problem(s): task 'A': missing; task 'B': not in the dataset" in captured.err
    missing = tmp_path / "nope.json"
    assert pipeline_main(["score", "--submission", str(missing), "--solutions", str(tmp_path / "sol.json"),
                          "--output", str(tmp_path / "score.json")]) == 1
    assert one_line_error(capsys.readouterr().err) == f"score: {missing}: file not found"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sol.json", "sub.json"]  # nothing written
