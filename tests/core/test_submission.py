"""Submissions: fallback, always-complete build, validator, atomic write (spec §11)."""
from __future__ import annotations

import copy

import pytest

from pipeline.core.files import read_json
from pipeline.core.submission import (SubmissionError, attempts_from_submission, build_submission,
                                 fallback_attempts, fill_attempts,
                                 submission_problems, write_submission)

from conftest import SUBMISSION_TASKS as TASKS, assert_complete



# ----------------------------------------------------------------------------- fallback / build

def test_fallback_attempts():
    test_input = [[1, 2], [3, 4]]
    first, second = fallback_attempts(test_input)
    assert first == test_input and first is not test_input and first[0] is not test_input[0]
    assert second == [[0]]
    assert fallback_attempts([[0]]) == [[[0]], [[0, 0], [0, 0]]]


def test_build_with_no_predictions_at_all():
    sub = build_submission(TASKS, {})
    assert_complete(sub)
    assert sub["t1"][0] == {"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[0]]}
    assert sub["t2"][0] == {"attempt_1": [[0]], "attempt_2": [[0, 0], [0, 0]]}


def test_build_fills_gaps_and_skips_bad_candidates():
    stats = {}
    attempts = {
        ("t1", 0): [[[9]]],                                 # one candidate -> attempt_2 from fallback
        ("t2", 0): [[[0]]],                                 # candidate == identity -> blank 2x2
        ("t2", 1): [None, [], [[1, 2], [3]], [[10]], [[4]], [[4]], [[6]]],  # invalid & duplicates skipped
        ("t3", 0): [[[0]]],                                 # candidate == fallback blank -> identity
        ("zz", 0): [[[1]]],                                 # unknown task: ignored
        ("t1", 5): [[[1]]],                                 # unknown test index: ignored
    }
    before = copy.deepcopy(attempts)
    sub = build_submission(TASKS, attempts, stats=stats)
    assert attempts == before
    assert_complete(sub)
    assert sub["t1"][0] == {"attempt_1": [[9]], "attempt_2": [[1, 2], [3, 4]]}
    assert sub["t2"][0] == {"attempt_1": [[0]], "attempt_2": [[0, 0], [0, 0]]}
    assert sub["t2"][1] == {"attempt_1": [[4]], "attempt_2": [[6]]}
    assert sub["t3"][0] == {"attempt_1": [[0]], "attempt_2": [[7]]}
    assert list(sub) == ["t1", "t2", "t3"]
    assert stats == {"test_inputs": 4, "with_candidate": 4, "fallback": 3, "fallback_all": 0}
    # the submission does not alias the candidates
    sub["t1"][0]["attempt_1"][0][0] = 5
    assert attempts[("t1", 0)][0] == [[9]]


def test_build_more_attempts_and_fill_attempts():
    sub = build_submission(TASKS, {("t3", 0): [[[3]]]}, n_attempts=4)
    assert_complete(sub, n=4)
    assert sub["t3"][0] == {"attempt_1": [[3]], "attempt_2": [[7]], "attempt_3": [[0]], "attempt_4": [[1]]}
    assert fill_attempts([[1]], [[[2]], [[3]], [[4]]], 2) == ([[[2]], [[3]]], 0)
    assert fill_attempts([[1]], None, 2) == ([[[1]], [[0]]], 2)
    with pytest.raises(ValueError):
        build_submission(TASKS, {}, n_attempts=0)


# ----------------------------------------------------------------------------- validator / write

def _valid():
    return build_submission(TASKS, {})


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s.pop("t2"), ["task 't2': missing"]),
    (lambda s: s.update(extra=[]), ["task 'extra': not in the dataset"]),
    (lambda s: s.update(t1={"attempt_1": [[1]]}), ["task 't1': is a dict, not a list"]),
    (lambda s: s["t2"].pop(), ["task 't2': has 1 test entries but the task has 2"]),
    (lambda s: s["t2"].append(s["t2"][0]), ["task 't2': has 3 test entries"]),
    (lambda s: s["t2"].__setitem__(1, [[1]]), ["task 't2' test 1: is a list, not an object"]),
    (lambda s: s["t2"][1].pop("attempt_1"), ["task 't2' test 1: missing attempt_1"]),
    (lambda s: s["t2"][1].pop("attempt_2"), ["task 't2' test 1: missing attempt_2"]),
    (lambda s: s["t2"][1].update(attempt_2=[]), ["task 't2' test 1 attempt_2: has 0 rows"]),
    (lambda s: s["t1"][0].update(attempt_1=[[1, 2], [3]]), ["task 't1' test 0 attempt_1: row 1 has 1 cells"]),
    (lambda s: s["t1"][0].update(attempt_2=[[12]]), ["task 't1' test 0 attempt_2: row 0 col 0: colour 12"]),
    (lambda s: s["t1"][0].update(attempt_2=None), ["task 't1' test 0 attempt_2: is a NoneType"]),
    (lambda s: s["t3"][0].update(note="x"), ["task 't3' test 0: unknown key 'note'"]),
])
def test_validator_catches_each_problem(mutate, expected):
    sub = _valid()
    assert submission_problems(sub, TASKS) == []
    mutate(sub)
    problems = submission_problems(sub, TASKS)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected):
        assert problem.startswith(start), problem


def test_validator_not_a_dict_and_extra_attempts_ok():
    assert submission_problems([], TASKS)[0].startswith("submission is a list")
    sub = _valid()
    sub["t3"][0]["attempt_3"] = [[1]]
    assert submission_problems(sub, TASKS) == []
    sub["t3"][0]["attempt_3"] = []
    assert submission_problems(sub, TASKS) == ["task 't3' test 0 attempt_3: has 0 rows"]


def test_write_submission(tmp_path):
    bad = _valid()
    bad["t1"][0]["attempt_1"] = []
    with pytest.raises(SubmissionError, match=r"t1' test 0 attempt_1"):
        write_submission(tmp_path / "s.json", bad, TASKS)
    assert list(tmp_path.iterdir()) == []
    write_submission(tmp_path / "s.json", _valid(), TASKS)
    assert read_json(tmp_path / "s.json") == _valid()
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_attempts_from_submission_orders_attempts():
    G1, G2, G3 = [[1]], [[2]], [[3]]
    sub = {"t": [{"attempt_10": G3, "attempt_2": G2, "attempt_1": G1, "x": G1}, "junk"], "u": "junk"}
    assert attempts_from_submission(sub) == {("t", 0): [G1, G2, G3]}
