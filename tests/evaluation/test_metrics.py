"""Metric definitions (spec §8) on hand-built examples, aggregation, Kaggle score vs a naive
re-implementation, solution loading."""
from __future__ import annotations

import json
import random

import pytest

from pipeline.evaluation.metrics import METRICS, evaluate, format_summary, grid_metrics, test_input_metrics, vote_metrics
from pipeline.evaluation.score import kaggle_score, load_solutions
from pipeline.core.tasks import TaskError

C = [[1, 2], [3, 4]]


def rec(grid, task="t", idx=0, lp=-1.0, n=1):
    return {"task_id": task, "test_index": idx, "augmentation": {}, "text": "", "grid": grid,
            "error": None, "cumulative_logprob": lp, "n_tokens": n}


# ----------------------------------------------------------------------------- per test input

def test_grid_metrics_hand_built():
    preds = [
        [[1, 2], [3, 4]],   # exact
        [[1, 2], [3, 0]],   # 3/4 pixels
        [[1, 2]],           # wrong shape
        None,               # unanswered
        [],                 # unanswered
    ]
    m = grid_metrics(preds, C)
    assert m == pytest.approx({
        "accuracy": 1 / 5, "correct_pixels": (1 + 0.75) / 5, "max_correct_pixels": 1.0,
        "correct_size": 2 / 5, "any_correct_size": 1.0, "pass_n": 1.0, "unanswered": 2 / 5})


def test_grid_metrics_no_exact_answer():
    m = grid_metrics([[[0, 2], [3, 0]], [[1, 2], [3, 0]], [[1, 2], [3, 0]], [[1], [2]]], C)
    assert m == pytest.approx({
        "accuracy": 0.0, "correct_pixels": (0.5 + 0.75 + 0.75) / 4, "max_correct_pixels": 0.75,
        "correct_size": 3 / 4, "any_correct_size": 1.0, "pass_n": 0.0, "unanswered": 0.0})


def test_grid_metrics_wrong_shapes_contribute_nothing():
    # the transposed shape has the same cell count: still wrong
    m = grid_metrics([[[1, 3, 2, 4]], [[1], [2], [3], [4]], [[1, 2, 3], [4, 5, 6]]], C)
    assert m == dict.fromkeys(m, 0.0)


def test_grid_metrics_invalid_and_empty():
    m = grid_metrics([[[10, 2], [3, 4]], [[1, 2], [3]], "x", [[True, 2], [3, 4]]], C)
    assert m["unanswered"] == 1.0 and m["accuracy"] == 0.0 and m["correct_size"] == 0.0
    m = grid_metrics([], C)
    assert m["unanswered"] == 1.0 and sum(m.values()) == 1.0
    with pytest.raises(ValueError):
        grid_metrics([C], [[10]])


def test_vote_metrics_and_test_input_metrics():
    assert vote_metrics([C, [[1]]], C) == {"vote_1": 1.0, "vote_2": 1.0}
    assert vote_metrics([[[1]], C], C) == {"vote_1": 0.0, "vote_2": 1.0}
    assert vote_metrics([[[1]], [[2]], C], C) == {"vote_1": 0.0, "vote_2": 0.0}
    assert vote_metrics([], C) == {"vote_1": 0.0, "vote_2": 0.0}
    # C once, W twice: C is second by count; v1 vs v2 differ on a tie
    W = [[9, 9], [9, 9]]
    records = [rec(W, lp=-5.0), rec(C, lp=-0.1), rec(W, lp=-5.0), rec(None)]
    m = test_input_metrics(records, C)
    assert (m["vote_1"], m["vote_2"], m["n_predictions"]) == (0.0, 1.0, 4)
    assert m["accuracy"] == 0.25 and m["unanswered"] == 0.25
    tie = [rec(W, lp=-5.0), rec(C, lp=-0.1)]
    assert test_input_metrics(tie, C, "v2")["vote_1"] == 1.0
    assert test_input_metrics(tie, C, "v1")["vote_1"] == 0.0


# ----------------------------------------------------------------------------- aggregation

SOLUTIONS = {"A": [[[1]], [[2]]], "B": [[[3]]], "C": [[[4]]]}


def test_evaluate_macro_vs_per_output_and_absent_task():
    records = [rec([[1]], "A", 0), rec([[1]], "A", 0),           # A/0 solved by both
               rec([[0]], "A", 1), rec(None, "A", 1),            # A/1 wrong + unanswered
               rec([[0]], "B", 0),                               # B wrong
               rec([[1]], "Z", 0), rec([[1]], "A", 7)]           # outside the solutions
    result = evaluate(records, SOLUTIONS)
    assert result["n_tasks"] == 3 and result["n_outputs"] == 4 and result["n_predictions"] == 7
    assert result["ignored_predictions"] == 2
    assert result["tasks_without_predictions"] == ["C"]
    po, pt = result["per_output_mean"], result["per_task_mean"]
    assert po["accuracy"] == pytest.approx(1 / 4)
    assert pt["accuracy"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert po["unanswered"] == pytest.approx((0 + 0.5 + 0 + 1) / 4)
    assert pt["unanswered"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert po["correct_size"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert pt["pass_n"] == pytest.approx(0.5 / 3) and po["vote_2"] == pytest.approx(1 / 4)
    assert result["per_task"]["C"]["mean"]["unanswered"] == 1.0
    assert result["per_task"]["C"]["outputs"][0]["n_predictions"] == 0
    assert result["per_task"]["A"]["outputs"][1]["unanswered"] == 0.5
    assert set(pt) == set(METRICS)
    json.dumps(result)  # JSON-native


def test_evaluate_empty_everything():
    result = evaluate([], SOLUTIONS)
    assert result["per_output_mean"]["unanswered"] == 1.0 and result["per_task_mean"]["accuracy"] == 0.0
    assert evaluate([], {})["per_task_mean"]["accuracy"] == 0.0


def test_format_summary_exact():
    m = {"accuracy": 0.032, "correct_pixels": 0.688, "max_correct_pixels": 0.774, "correct_size": 0.901,
         "any_correct_size": 0.91, "pass_n": 0.095, "unanswered": 0.02, "vote_1": 0.07, "vote_2": 0.0949}
    assert format_summary(m) == ("accuracy: 3.2%  correct_pixels: 68.8%  max_correct_pixels: 77.4%  "
                                 "correct_size: 90.1%  any_correct_size: 91.0%  pass_n: 9.5%  "
                                 "unanswered: 2.0%  vote_1: 7.0%  vote_2: 9.5%")
    result = evaluate([rec([[1]], "A", 0)], SOLUTIONS)
    assert format_summary(result).startswith("accuracy: 16.7%  ")
    assert format_summary(result, "per_output").startswith("accuracy: 25.0%  ")
    with pytest.raises(ValueError):
        format_summary(result, "per_pixel")


# ----------------------------------------------------------------------------- Kaggle score

def test_kaggle_score_hand_built():
    sols = {"A": [[[1]], [[2]]], "B": [[[3]]], "C": [[[4, 4]]]}
    sub = {"A": [{"attempt_1": [[0]], "attempt_2": [[1]]}, {"attempt_1": [], "attempt_2": []}],
           "B": [{"attempt_1": [[3]], "attempt_2": [[3]]}],
           "X": [{"attempt_1": [[4, 4]], "attempt_2": [[4, 4]]}]}
    s = kaggle_score(sub, sols)
    assert (s["n_correct"], s["n_outputs"]) == (2, 4)
    assert s["score"] == 0.5
    assert s["score_per_task"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert s["per_task"]["A"] == {"score": 0.5, "correct": [True, False]}
    assert s["per_task"]["C"] == {"score": 0.0, "correct": [False]}
    assert "X" not in s["per_task"]
    # malformed variants never count
    for bad in ([[True]], [[1.0]], "[[1]]", [[1], []], None, {"0": [1]}):
        assert kaggle_score({"A": [{"attempt_1": bad, "attempt_2": bad}]}, {"A": [[[1]]]})["score"] == 0.0
    assert kaggle_score([], sols)["score"] == 0.0
    assert kaggle_score({}, {})["score"] == 0.0
    # attempt_3 does not count
    assert kaggle_score({"A": [{"attempt_1": [[0]], "attempt_2": [[0]], "attempt_3": [[1]]}]},
                        {"A": [[[1]]]})["score"] == 0.0


def naive_score(submission, solutions):
    """Independent, deliberately plain re-implementation of the official rule."""
    def is_grid(g):
        if type(g) is not list or len(g) == 0:
            return False
        for row in g:
            if type(row) is not list or len(row) != len(g[0]) or len(row) == 0:
                return False
            for v in row:
                if type(v) is not int or v < 0 or v > 9:
                    return False
        return True

    total, hits, per_task = 0, 0, []
    for task_id in solutions:
        task_hits = 0
        for i in range(len(solutions[task_id])):
            total += 1
            try:
                attempts = submission[task_id][i]
                ok = False
                for name in ["attempt_1", "attempt_2"]:
                    if name in attempts and is_grid(attempts[name]) and attempts[name] == solutions[task_id][i]:
                        ok = True
            except (KeyError, IndexError, TypeError):
                ok = False
            hits += ok
            task_hits += ok
        per_task.append(task_hits / len(solutions[task_id]))
    return (hits / total if total else 0.0), (sum(per_task) / len(per_task) if per_task else 0.0)


def random_grid(rng, max_side=4):
    h, w = rng.randint(1, max_side), rng.randint(1, max_side)
    return [[rng.randrange(10) for _ in range(w)] for _ in range(h)]


def random_attempt(rng, truth):
    r = rng.random()
    if r < 0.35:
        return [list(row) for row in truth]
    if r < 0.5:
        return random_grid(rng, 3)
    if r < 0.6:
        return []
    if r < 0.65:
        return None
    if r < 0.7:
        g = [list(row) for row in truth]
        g[0][0] = 10
        return g
    if r < 0.75:
        return [list(row) for row in truth] + [[1]]          # ragged / wrong shape
    if r < 0.8:
        return [row[::-1] for row in truth]
    if r < 0.85:
        return rng.choice(["x", 3, {"a": 1}, [[["1"]]], [1, 2]])
    return [list(row) for row in truth][:1] if len(truth) > 1 else [[(truth[0][0] + 1) % 10]]


def random_case(rng):
    solutions = {f"t{i}": [random_grid(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
                 for i in range(rng.randint(0, 8))}
    submission = {}
    for task_id, outs in solutions.items():
        r = rng.random()
        if r < 0.1:
            continue                                           # missing task
        if r < 0.13:
            submission[task_id] = rng.choice([None, "x", {}, 5])  # malformed task entry
            continue
        entries = []
        for out in outs[: rng.choice([len(outs), len(outs), max(len(outs) - 1, 0), len(outs) + 1])]:
            if rng.random() < 0.05:
                entries.append(rng.choice([None, [], "x", [out]]))  # malformed entry
                continue
            e = {}
            for name in ("attempt_1", "attempt_2"):
                if rng.random() < 0.93:
                    e[name] = random_attempt(rng, out)
            entries.append(e)
        submission[task_id] = entries
    if rng.random() < 0.3:
        submission["extra"] = [{"attempt_1": [[1]], "attempt_2": [[2]]}]
    return submission, solutions


def test_kaggle_score_agrees_with_naive_on_random_submissions():
    rng = random.Random(1234)
    seen_partial = 0
    for _ in range(600):
        submission, solutions = random_case(rng)
        got = kaggle_score(submission, solutions)
        expected, expected_per_task = naive_score(submission, solutions)
        assert got["score"] == pytest.approx(expected)
        assert got["score_per_task"] == pytest.approx(expected_per_task)
        assert got["n_outputs"] == sum(len(v) for v in solutions.values())
        seen_partial += 0 < expected < 1
    assert seen_partial > 200


# ----------------------------------------------------------------------------- loading

TASKS = {"A": {"train": [{"input": [[0]], "output": [[1]]}],
               "test": [{"input": [[0]], "output": [[1]]}, {"input": [[3]], "output": [[2]]}]},
         "B": {"train": [{"input": [[0]], "output": [[1]]}], "test": [{"input": [[5]], "output": [[3]]}]}}


def test_load_solutions_all_layouts(tmp_path):
    expected = {"A": [[[1]], [[2]]], "B": [[[3]]]}
    (tmp_path / "sol.json").write_text(json.dumps(expected))
    assert load_solutions(tmp_path / "sol.json") == expected
    (tmp_path / "tasks.json").write_text(json.dumps(TASKS))
    assert load_solutions(tmp_path / "tasks.json") == expected
    hidden = {t: {"train": v["train"], "test": [{"input": p["input"]} for p in v["test"]]} for t, v in TASKS.items()}
    (tmp_path / "x_challenges.json").write_text(json.dumps(hidden))
    (tmp_path / "x_solutions.json").write_text(json.dumps(expected))
    assert load_solutions(tmp_path / "x_challenges.json") == expected
    (tmp_path / "hidden.json").write_text(json.dumps(hidden))
    with pytest.raises(TaskError, match="no task has test outputs"):
        load_solutions(tmp_path / "hidden.json")
    (tmp_path / "bad.json").write_text(json.dumps({"A": [[[1]], [[11]]]}))
    with pytest.raises(TaskError, match=r"task 'A' test 1: row 0 col 0: colour 11"):
        load_solutions(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(TaskError, match="not valid JSON"):
        load_solutions(tmp_path / "broken.json")
