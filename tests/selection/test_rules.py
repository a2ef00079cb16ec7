"""The selection rules over rescored candidates (vote, poe, nvarc) and the rescore file's record."""
from __future__ import annotations

import json

import pytest

from pipeline.selection.rules import Candidate, RULES, select
from pipeline.selection.scored import read_scores, scores_record


def test_selection_rules_rank_as_documented():
    a = Candidate([[1]], count=3, mean_logprob=-0.5, view_logprobs=(-9.0, -9.0))    # often found, unlikely
    b = Candidate([[2]], count=1, mean_logprob=-0.1, view_logprobs=(-0.5, -0.7))    # rare, likely in every view
    c = Candidate([[3]], count=3, mean_logprob=-0.2, view_logprobs=(-2.0, -2.4))
    assert [x.grid for x in select([a, b, c], "vote")] == [[[3]], [[1]], [[2]]]
    assert [x.grid for x in select([a, b, c], "poe")] == [[[2]], [[3]], [[1]]]
    # nvarc: a 3 - 9 = -6, b 1 - 0.6 = 0.4, c 3 - 2.2 = 0.8
    assert [x.grid for x in select([a, b, c], "nvarc")] == [[[3]], [[2]], [[1]]]
    with pytest.raises(ValueError, match="unknown selection rule"):
        select([a], "best")
    assert set(RULES) == {"vote", "poe", "nvarc"}


def test_a_scores_record_reads_back_as_its_candidates(tmp_path):
    ranked = [{"grid": [[1]], "count": 2, "mean_logprob": -0.5}, {"grid": [[2]], "count": 1, "mean_logprob": -1.0}]
    record = scores_record("t1", 0, [{"transpose": False}], ranked, [[-0.25], [-3.0]])
    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert read_scores(path) == {("t1", 0): [Candidate([[1]], 2, -0.5, (-0.25,)), Candidate([[2]], 1, -1.0, (-3.0,))]}


def test_a_malformed_scores_line_is_dropped_and_counted_with_its_file_and_line(tmp_path):
    path = tmp_path / "scores.jsonl"
    good = scores_record("t2", 0, [{"transpose": False}], [{"grid": [[2]], "count": 1, "mean_logprob": -1.0}], [[-3.0]])
    path.write_text(json.dumps({"task_id": "t1", "test_index": 0, "candidates": [{"grid": [[1]]}]}) + "\n"
                    + json.dumps(good) + "\n")
    counts = {}
    assert read_scores(path, counts) == {("t2", 0): [Candidate([[2]], 1, -1.0, (-3.0,))]}
    assert counts["bad_records"] == 1 and any(p.startswith(f"{path}:1:") for p in counts["problems"])
