"""The combine command (pipeline/selection/combine.py): the spec §7.5 rule and its CLI."""
from __future__ import annotations

import copy
import json

import pytest

from pipeline.__main__ import main as pipeline_main
from pipeline.core.files import read_json
from pipeline.selection.combine import combine_submissions

from conftest import SUBMISSION_TASKS as TASKS, assert_complete


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
