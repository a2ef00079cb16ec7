"""The rescore file: a killed run's torn tail is cut before a resume appends (it was appended to,
corrupting the file, and the next `vote --scores` failed without naming it); a resume with other
settings is refused naming them; what the checked reader drops it names."""
from __future__ import annotations

import json

import pytest

from pipeline.core.files import read_jsonl
from pipeline.core.scores import ScoresError, open_scores, read_scores, scored_candidate

META = {"model": "m", "views": 2, "max_candidates": 16, "seed": 0}


def line(task="t", idx=0, grid=((1,),)):
    return json.dumps({"task_id": task, "test_index": idx, "views": [{}, {}],
                       "candidates": [scored_candidate([list(r) for r in grid], 2, float("-inf"), [-1.0, -2.0])]})


def test_a_resume_cuts_the_torn_tail_and_the_file_stays_readable(tmp_path, capsys):
    path = tmp_path / "scores.jsonl"
    whole = line("a") + "\n"
    path.write_text(whole + line("b")[:25])  # killed mid-write
    assert open_scores(path, META) == {("a", 0)}
    assert path.read_text() == whole and "cut a torn last line" in capsys.readouterr().err
    with open(path, "a") as f:  # what the resumed run appends
        f.write(line("b") + "\n")
    scores = read_scores(path)
    assert set(scores) == {("a", 0), ("b", 0)}
    assert scores[("a", 0)][0]["mean_logprob"] == float("-inf")  # written as null: strict JSON has no -Infinity


def test_a_whole_last_line_without_newline_is_kept_and_completed(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text(line("a") + "\n" + line("b"))  # written by another tool: no final newline
    assert open_scores(path, META) == {("a", 0), ("b", 0)}
    assert path.read_text().endswith("\n") and len(list(read_jsonl(path))) == 2


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text(line("a") + "\n")
    open_scores(path, META)
    with pytest.raises(ValueError, match=r"other settings \(views: 2 -> 4; seed: 0 -> 1\)"):
        open_scores(path, {**META, "views": 4, "seed": 1})
    assert open_scores(path, META) == {("a", 0)}


def test_a_corrupt_scores_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text("garbage\n")
    with pytest.raises(ScoresError, match=rf"{path}:1: not a JSON line"):
        open_scores(path, META)
    path.write_text(json.dumps([json.loads(line("a"))]) + "\n")
    with pytest.raises(ScoresError, match=rf"{path}:1: a JSON list"):
        read_scores(path)


def test_a_test_input_scored_twice_keeps_the_first(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text(line("a", grid=((1,),)) + "\n" + line("a", grid=((2,),)) + "\n")
    counts = {}
    assert read_scores(path, counts)[("a", 0)][0]["grid"] == [[1]]
    assert counts["duplicates"] == 1 and counts["records"] == 1
