"""Submissions: fallback, always-complete build, validator, atomic write, combine (spec §7.5, §11)."""
from __future__ import annotations

import copy
import json

import pytest

from pipeline.__main__ import main as pipeline_main
from pipeline.core.files import read_json
from pipeline.core.submission import (SubmissionError, attempts_from_submission, build_submission,
                                 combine_submissions, fallback_attempts, fill_attempts,
                                 submission_problems, write_submission)
from pipeline.core.tasks import is_valid_grid

TASKS = {
    "t1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1, 2], [3, 4]]}]},
    "t2": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[0]]}, {"input": [[5, 5]]}]},
    "t3": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[7]]}]},
}


def assert_complete(sub, tasks=TASKS, n=2):
    assert submission_problems(sub, tasks) == []
    for task_id, task in tasks.items():
        assert len(sub[task_id]) == len(task["test"])
        for entry in sub[task_id]:
            grids = [entry[f"attempt_{k}"] for k in range(1, n + 1)]
            assert all(is_valid_grid(g) for g in grids)
            assert len({json.dumps(g) for g in grids}) == n, "attempts must differ"


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


# ----------------------------------------------------------------------------- combine (spec §11)

def entry(a1, a2):
    return {"attempt_1": a1, "attempt_2": a2}


G1, G2, G3 = [[1]], [[2]], [[3]]
# (sub_1, sub_2, expected with preference, expected without preference)
COMBINE_CASES = {
    "1: [1],[] + [2],[]": ({"t": [entry(G1, [])]}, {"t": [entry(G2, [])]},
                           {"t": [entry(G1, G2)]}, {"t": [entry(G1, G2)]}),
    "2: [1],[] + [1],[2]": ({"t": [entry(G1, [])]}, {"t": [entry(G1, G2)]},
                            {"t": [entry(G1, G2)]}, {"t": [entry(G1, G2)]}),
    "3: [1],[3] + [2],[]": ({"t": [entry(G1, G3)]}, {"t": [entry(G2, [])]},
                            {"t": [entry(G1, G2)]}, {"t": [entry(G1, G3)]}),
    "4: [1],[3] + [1],[2]": ({"t": [entry(G1, G3)]}, {"t": [entry(G1, G2)]},
                             {"t": [entry(G1, G2)]}, {"t": [entry(G1, G3)]}),
    "5: [1],[3] + empty": ({"t": [entry(G1, G3)]}, {},
                           {"t": [entry(G1, G3)]}, {"t": [entry(G1, G3)]}),
    "6: empty + [1],[2]": ({}, {"t": [entry(G1, G2)]},
                           {"t": [entry(G1, G2)]}, {"t": [entry(G1, G2)]}),
    "7: disjoint ids": ({"a": [entry(G1, G3)]}, {"b": [entry(G2, G1)]},
                        {"a": [entry(G1, G3)], "b": [entry(G2, G1)]},
                        {"a": [entry(G1, G3)], "b": [entry(G2, G1)]}),
}


@pytest.mark.parametrize("prefer", [True, False], ids=["prefer-second", "no-preference"])
@pytest.mark.parametrize("case", list(COMBINE_CASES))
def test_combine_truth_table(case, prefer):
    sub_1, sub_2, with_pref, without_pref = copy.deepcopy(COMBINE_CASES[case])
    before_1, before_2 = copy.deepcopy(sub_1), copy.deepcopy(sub_2)
    result = combine_submissions(sub_1, sub_2, prefer_second_on_second_attempt=prefer)
    assert result == (with_pref if prefer else without_pref)
    assert sub_1 == before_1 and sub_2 == before_2, "inputs must not be mutated"


def test_combine_variants_of_empty():
    # empty attempts in sub_2 never replace anything
    assert combine_submissions({"t": [entry(G1, G3)]}, {"t": [entry([], [])]}) == {"t": [entry(G1, G3)]}
    # sub_1 with an empty attempt_1 takes sub_2's entry wholesale
    assert combine_submissions({"t": [entry([], G3)]}, {"t": [entry(G2, [])]}) == {"t": [entry(G2, [])]}
    # sub_2 attempts equal to attempt_1 are skipped; missing keys count as empty
    assert combine_submissions({"t": [{"attempt_1": G1}]}, {"t": [entry(G1, G1)]}) == {"t": [{"attempt_1": G1}]}
    # multi-output: per test index; extra sub_2 test entries are appended
    assert combine_submissions({"t": [entry(G1, [])]}, {"t": [entry(G2, []), entry(G3, G1)]}) == \
        {"t": [entry(G1, G2), entry(G3, G1)]}


def test_combine_is_pure_and_result_unaliased():
    sub_1 = {"t": [entry(G1, [])], "only1": [entry(G3, G2)]}
    sub_2 = {"t": [entry(G2, G3)], "only2": [entry(G1, G2)]}
    snapshot = copy.deepcopy((sub_1, sub_2))
    result = combine_submissions(sub_1, sub_2)
    assert (sub_1, sub_2) == snapshot
    result["t"][0]["attempt_1"][0][0] = 9
    result["only1"][0]["attempt_2"][0][0] = 9
    result["only2"][0]["attempt_1"][0][0] = 9
    result["t"][0]["attempt_2"][0][0] = 9
    assert (sub_1, sub_2) == snapshot


def test_attempts_from_submission_orders_attempts():
    sub = {"t": [{"attempt_10": G3, "attempt_2": G2, "attempt_1": G1, "x": G1}, "junk"], "u": "junk"}
    assert attempts_from_submission(sub) == {("t", 0): [G1, G2, G3]}


def test_combine_cli(tmp_path, capsys):
    s1 = {"t1": [entry([[9]], [])], "t2": [entry([], []), entry([[5, 5]], [[8, 8]])]}
    s2 = {"t1": [entry([[9]], [[8]])], "t3": [entry([[4]], [[7]])]}
    (tmp_path / "s1.json").write_text(json.dumps(s1))
    (tmp_path / "s2.json").write_text(json.dumps(s2))
    (tmp_path / "tasks.json").write_text(json.dumps(TASKS))
    args = ["combine", str(tmp_path / "s1.json"), str(tmp_path / "s2.json"), "--output", str(tmp_path / "o.json")]
    assert pipeline_main(args) == 0
    assert read_json(tmp_path / "o.json") == {"t1": [entry([[9]], [[8]])], "t2": s1["t2"], "t3": s2["t3"]}
    assert pipeline_main(args + ["--dataset", str(tmp_path / "tasks.json")]) == 0
    out = read_json(tmp_path / "o.json")
    assert_complete(out)
    assert out["t1"] == [entry([[9]], [[8]])]
    assert out["t2"] == [entry([[0]], [[0, 0], [0, 0]]), entry([[5, 5]], [[8, 8]])]
    assert out["t3"] == [entry([[4]], [[7]])]
    assert "3 tasks, 4 test inputs, 1 used the fallback" in capsys.readouterr().out
    before = (tmp_path / "o.json").read_bytes()
    (tmp_path / "s1.json").write_text(json.dumps(s1["t1"]))
    assert pipeline_main(args) == 1
    err = capsys.readouterr().err
    assert err == f"combine: {tmp_path / 's1.json'}: a JSON list, not a submission object " \
                  "{task_id: [{attempt_1, attempt_2}, ...]}\n"
    assert (tmp_path / "o.json").read_bytes() == before  # the earlier output is left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "s1.json", "s2.json", "tasks.json"]


def test_combine_without_dataset_keeps_int_cells_and_never_overwrites_an_input(tmp_path, capsys):
    """Before: SUB1's string cells went into the output as they were, and --output SUB2 replaced SUB2."""
    (tmp_path / "s1.json").write_text(json.dumps({"t1": [entry([["1"]], [[2]])], "t2": [entry([[True]], [[3]])]}))
    (tmp_path / "s2.json").write_text(json.dumps({"t1": [entry([[4]], [[5]])], "t2": [entry([[6]], [[7]])]}))
    args = ["combine", str(tmp_path / "s1.json"), str(tmp_path / "s2.json"), "--output"]
    assert pipeline_main(args + [str(tmp_path / "o.json")]) == 0
    out = read_json(tmp_path / "o.json")
    assert out == {"t1": [entry([[4]], [[5]])], "t2": [entry([[6]], [[7]])]}  # SUB2 fills the dropped attempt_1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 problem(s)" in err and "task 't1' test 0 attempt_1" in err
    before = (tmp_path / "s2.json").read_bytes()
    assert pipeline_main(args + [str(tmp_path / "s2.json")]) == 1
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert (tmp_path / "s2.json").read_bytes() == before
