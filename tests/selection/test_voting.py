"""Voting v1/v2: ranking rules, tie-breaks, invalid grids, any prediction count, speed, CLI."""
from __future__ import annotations

import json
import random

import pytest

from pipeline.__main__ import main as pipeline_main
from pipeline.core.files import append_jsonl, read_json
from pipeline.core.submission import submission_problems
from pipeline.core.tasks import valid_grid_key
from pipeline.selection.rules import group_predictions, rank_candidates, rank_predictions
from pipeline.selection.vote import select_attempts, vote_v1, vote_v2

A, B, C, D = [[1]], [[2]], [[3]], [[1, 2], [3, 4]]


def rec(grid, lp=-1.0, n=1, task="t", idx=0):
    return {"task_id": task, "test_index": idx, "augmentation": {}, "text": "", "grid": grid,
            "error": None, "cumulative_logprob": lp, "n_tokens": n}


# ----------------------------------------------------------------------------- v1

def test_v1_ranks_by_count():
    assert vote_v1([A, B, B, C, B, A]) == [B, A, C]


def test_v1_ties_keep_first_occurrence():
    assert vote_v1([C, A, B, A, C, B]) == [C, A, B]
    assert vote_v1([B, A]) == [B, A]
    assert vote_v1([A, B]) == [A, B]


def test_v1_compares_shape_and_values():
    assert vote_v1([[[1, 2]], [[1], [2]], [[1, 2]]]) == [[[1, 2]], [[1], [2]]]


@pytest.mark.parametrize("bad", [
    None, [], [[]], "[[1]]", [[1, 2], [3]], [[10]], [[-1]], [[True]], [[1.0]], [["1"]], [[None]],
    [[1]] * 31, [[0] * 31], [(1, 2)], [[[1]]], {"a": 1}, 7])
def test_invalid_grids_are_dropped(bad):
    assert vote_v1([bad, bad, bad, A]) == [A]
    assert valid_grid_key(bad) is None
    assert vote_v2([rec(bad, 0.0)] * 3 + [rec(A, -5.0)]) == [A]


def test_invalid_first_does_not_hide_equal_valid_later():
    # [[1.0]] is invalid, [[1]] is valid: the valid one still counts
    assert vote_v1([[[1.0]], B, [[1]], [[1]]]) == [[[1]], B]


def test_all_invalid_gives_nothing():
    assert vote_v1([None, [], None]) == []
    assert vote_v1([]) == []
    assert vote_v2([rec(None), rec([])]) == []


# ----------------------------------------------------------------------------- v2

def test_v2_count_beats_logprob():
    preds = [rec(A, -0.0), rec(B, -100.0), rec(B, -100.0)]
    assert vote_v2(preds) == [B, A]


def test_v2_tie_broken_by_per_token_mean_not_cumulative():
    # A: -10 over 100 tokens = -0.1 per token; B: -5 over 10 tokens = -0.5 per token
    preds = [rec(B, -5.0, 10), rec(A, -10.0, 100)]
    assert vote_v2(preds) == [A, B]


def test_v2_tie_uses_mean_over_the_group():
    # A per-token: -0.1, -0.9 -> mean -0.5; B: -0.4, -0.4 -> -0.4 (A has the single best sample)
    preds = [rec(A, -0.1), rec(B, -0.4), rec(A, -0.9), rec(B, -0.4)]
    assert vote_v2(preds) == [B, A]
    ranked = rank_predictions(preds)
    assert [c["count"] for c in ranked] == [2, 2]
    assert ranked[0]["mean_logprob"] == pytest.approx(-0.4)
    assert ranked[1]["mean_logprob"] == pytest.approx(-0.5)


def test_v2_equal_logprob_keeps_first_occurrence():
    assert vote_v2([rec(C, -1.0), rec(A, -1.0), rec(B, -1.0)]) == [C, A, B]


def test_v2_missing_logprob_counts_as_minus_infinity():
    preds = [rec(A, None), rec(B, -1000.0, 1)]
    assert vote_v2(preds) == [B, A]
    # one missing member sinks the whole group's mean
    preds = [rec(A, -0.1), rec(A, None), rec(B, -50.0), rec(B, -50.0)]
    assert vote_v2(preds) == [B, A]
    # all missing: first occurrence
    assert vote_v2([rec(C, None), rec(A, None)]) == [C, A]
    assert vote_v2([{"grid": A}, {"grid": B, "cumulative_logprob": float("nan"), "n_tokens": 3}]) == [A, B]


def test_v2_zero_tokens_divides_by_one():
    preds = [rec(A, -3.0, 0), rec(B, -2.0, 0)]
    assert vote_v2(preds) == [B, A]
    assert rank_predictions(preds)[0]["mean_logprob"] == -2.0


def test_v1_ignores_logprob_but_reports_it():
    preds = [rec(A, -9.0), rec(B, -0.1)]
    ranked = rank_candidates(preds, method="v1")[("t", 0)]
    assert [c["grid"] for c in ranked] == [A, B]
    assert ranked[1]["mean_logprob"] == pytest.approx(-0.1)
    assert [c["grid"] for c in rank_candidates(preds, method="v2")[("t", 0)]] == [B, A]
    with pytest.raises(ValueError):
        rank_candidates(preds, method="v3")


@pytest.mark.parametrize("n", [1, 3, 7, 13, 37, 96, 100])
def test_any_number_of_predictions(n):
    rng = random.Random(n)
    grids = [rng.choice([A, B, C, None]) for _ in range(n)]
    counts = {}
    for g in grids:
        if g is not None:
            counts[str(g)] = counts.get(str(g), 0) + 1
    ranked = rank_candidates([rec(g, idx=1) for g in grids])[("t", 1)]
    assert sum(c["count"] for c in ranked) == sum(counts.values())
    assert {str(c["grid"]): c["count"] for c in ranked} == counts
    assert [c["count"] for c in ranked] == sorted((c["count"] for c in ranked), reverse=True)


def naive_v2(preds):
    """Deliberately different: quadratic scan, explicit first-index tiebreak."""
    uniq = []
    for p in preds:
        g = p["grid"]
        if g is None or g == [] or valid_grid_key(g) is None:
            continue
        if not any(u == g for u in uniq):
            uniq.append(g)

    def score(u):
        members = [p for p in preds if p["grid"] == u and valid_grid_key(p["grid"]) is not None]
        lps = [p["cumulative_logprob"] / max(p["n_tokens"], 1) if p["cumulative_logprob"] is not None
               else float("-inf") for p in members]
        return (-len(members), -(sum(lps) / len(lps)), uniq.index(u))
    return sorted(uniq, key=score)


def test_v2_agrees_with_naive_on_random_inputs():
    rng = random.Random(0)
    pool = [A, B, C, D, [[1, 2]], [[0, 0], [0, 0]], None]
    for _ in range(300):
        preds = [rec(rng.choice(pool), rng.choice([None, -1.0, -2.0, -0.5 * rng.randint(0, 6)]),
                     rng.randint(0, 4)) for _ in range(rng.randint(0, 20))]
        assert vote_v2(preds) == naive_v2(preds)


# ----------------------------------------------------------------------------- grouping / selection

def test_group_and_select_keep_file_order():
    records = [rec(A, task="b"), rec(B, task="a", idx=1), rec(C, task="a"), rec(B, task="b"), rec(B, task="b")]
    groups = group_predictions(records)
    assert list(groups) == [("b", 0), ("a", 1), ("a", 0)]
    assert [r["grid"] for r in groups[("b", 0)]] == [A, B, B]
    assert select_attempts(records) == {("b", 0): [B, A], ("a", 1): [B], ("a", 0): [C]}
    assert select_attempts(records, n=1) == {("b", 0): [B], ("a", 1): [B], ("a", 0): [C]}
    assert select_attempts([rec(None)]) == {("t", 0): []}


# ----------------------------------------------------------------------------- CLI

def _tasks():
    return {
        "aa": {"train": [{"input": [[1]], "output": [[2]]}],
               "test": [{"input": [[1, 1]], "output": [[2, 2]]}, {"input": [[3]], "output": [[4]]}]},
        "bb": {"train": [{"input": [[0]], "output": [[0]]}], "test": [{"input": [[5]], "output": [[6]]}]},
        "cc": {"train": [{"input": [[0]], "output": [[0]]}], "test": [{"input": [[7]], "output": [[8]]}]},
    }


def test_vote_cli_then_score(tmp_path, capsys):
    tasks = _tasks()
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    preds = [rec([[2, 2]], task="aa", idx=0), rec([[2, 2]], task="aa", idx=0), rec([[9, 9]], task="aa", idx=0),
             rec(None, task="aa", idx=1), rec([[6]], task="bb"), rec([[1]], task="zz")]  # cc: nothing
    append_jsonl(tmp_path / "p.jsonl", preds)
    out = tmp_path / "sub" / "submission.json"
    rc = pipeline_main(["vote", "--predictions", str(tmp_path / "p.jsonl"), "--dataset", str(tmp_path / "tasks.json"),
                        "--output", str(out)])
    text = capsys.readouterr()
    assert rc == 0
    assert "3 tasks, 4 test inputs, 2 with a valid prediction, 3 used the fallback" in text.out
    assert "not in the dataset" in text.err
    sub = read_json(out)
    assert submission_problems(sub, tasks) == []
    assert sub["aa"][0] == {"attempt_1": [[2, 2]], "attempt_2": [[9, 9]]}
    assert sub["aa"][1] == {"attempt_1": [[3]], "attempt_2": [[0]]}  # fallback: identity, blank
    assert sub["bb"][0] == {"attempt_1": [[6]], "attempt_2": [[5]]}  # one vote + identity
    rc = pipeline_main(["score", "--submission", str(out), "--solutions", str(tmp_path / "tasks.json"),
                        "--output", str(tmp_path / "score.json")])
    assert rc == 0
    assert "score: 50.00% (2/4 test outputs)" in capsys.readouterr().out
    assert read_json(tmp_path / "score.json")["n_correct"] == 2


def test_vote_cli_top1_and_v1(tmp_path, capsys):
    tasks = _tasks()
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    # one vote each: v1 keeps the first seen ([[9, 9]]), v2 the better log-prob ([[2, 2]])
    append_jsonl(tmp_path / "p.jsonl", [rec([[9, 9]], -9.0, task="aa"), rec([[2, 2]], -0.1, task="aa")])
    out = tmp_path / "s.json"
    args = ["vote", "--predictions", str(tmp_path / "p.jsonl"), "--dataset", str(tmp_path / "tasks.json"), "--output", str(out)]
    assert pipeline_main(args + ["--method", "v1", "--top", "1"]) == 0
    assert read_json(out)["aa"][0] == {"attempt_1": [[9, 9]], "attempt_2": [[1, 1]]}
    assert pipeline_main(args + ["--method", "v1", "--top", "3"]) == 0
    assert read_json(out)["aa"][0] == {"attempt_1": [[9, 9]], "attempt_2": [[2, 2]], "attempt_3": [[1, 1]]}
    assert pipeline_main(args + ["--method", "v2", "--top", "1"]) == 0
    assert read_json(out)["aa"][0] == {"attempt_1": [[2, 2]], "attempt_2": [[1, 1]]}
    capsys.readouterr()


def test_vote_cli_errors(tmp_path, capsys):
    (tmp_path / "tasks.json").write_text(json.dumps(_tasks()))
    (tmp_path / "p.jsonl").write_text(json.dumps({"grid": [[1]]}) + "\n")
    rc = pipeline_main(["vote", "--predictions", str(tmp_path / "p.jsonl"), "--dataset", str(tmp_path / "tasks.json"),
                        "--output", str(tmp_path / "s.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vote: {tmp_path / 'p.jsonl'}:1: ") and "'task_id'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "tasks.json"]  # no s.json, no temp file
    with pytest.raises(SystemExit):
        pipeline_main(["vote", "--help"])
    assert "--method" in capsys.readouterr().out


# ----------------------------------------------------------------------------- rescored selection (--scores)

RIGHT, WRONG = [[2, 2]], [[9, 9]]


def scored(grid, views, count=1, mean="-1.0"):
    """One candidate of a rescore record as raw JSON text (to plant NaN and strings)."""
    return f'{{"grid": {json.dumps(grid)}, "count": {count}, "mean_logprob": {mean}, "view_logprobs": {views}}}'


def scores_line(candidates, task="aa", idx=0, views='[{"k": 0}, {"k": 1}]'):
    return f'{{"task_id": "{task}", "test_index": {idx}, "views": {views}, "candidates": [{", ".join(candidates)}]}}\n'


def vote_with_scores(tmp_path, capsys, lines, method="poe"):
    (tmp_path / "tasks.json").write_text(json.dumps(_tasks()))
    append_jsonl(tmp_path / "p.jsonl", [rec(RIGHT, task="aa") for _ in range(3)] + [rec(WRONG, -2.0, task="aa")])
    (tmp_path / "scores.jsonl").write_text("".join(lines))
    out = tmp_path / "s.json"
    code = pipeline_main(["vote", "--predictions", str(tmp_path / "p.jsonl"), "--dataset", str(tmp_path / "tasks.json"),
                          "--output", str(out), "--method", method, "--scores", str(tmp_path / "scores.jsonl")])
    captured = capsys.readouterr()
    return code, (read_json(out)["aa"][0] if out.exists() else None), captured.err


@pytest.mark.parametrize("bad", [
    scored([[1, 2], [3]], "[0.0, 0.0]"),              # ragged
    scored([[1] * 31] * 31, "[0.0, 0.0]"),            # 31 x 31
    scored([["2", "2"]], "[0.0, 0.0]"),               # string cells
    scored([[5, 5]], "[NaN, -1.0]"),                  # NaN ranked first
    scored([[5, 5]], '"12"'),                         # a string read as views 1.0 and 2.0
    scored([[5, 5]], "[-1.0]"),                       # one score for two views
    scored([[5, 5]], "[0.0, 0.0]", mean="Infinity"),  # not JSON
])
@pytest.mark.parametrize("method", ["poe", "nvarc"])
def test_a_bad_scored_candidate_is_dropped_never_ranked(bad, method, tmp_path, capsys):
    """Before: one bad candidate ranked first (NaN, the coerced string) or, being invalid, sent the
    voted answer (found 3 times) to the fallback.  Now it is dropped, counted and named."""
    good = [scored(RIGHT, "[-1.0, -1.0]", count=3), scored(WRONG, "[-5.0, -5.0]")]
    code, entry, err = vote_with_scores(tmp_path, capsys, [scores_line([bad] + good)], method)
    assert code == 0, err
    assert entry == {"attempt_1": RIGHT, "attempt_2": WRONG}
    assert f"{tmp_path / 'scores.jsonl'}:1: " in err and "bad candidate(s) dropped" in err


def test_scores_without_views_unknown_tasks_and_empty_files_are_warned(tmp_path, capsys):
    code, entry, err = vote_with_scores(tmp_path, capsys, [scores_line([scored(WRONG, "[]")], views="[]"),
                                                           scores_line([scored(WRONG, "[-1.0, -1.0]")], task="zz")])
    assert code == 0 and entry["attempt_1"] == RIGHT  # aa is voted v2
    assert "'views' must be a non-empty list" in err and "1 scored test input(s) not in the dataset" in err

    code, entry, err = vote_with_scores(tmp_path, capsys, [])
    assert code == 0 and entry["attempt_1"] == RIGHT
    assert "holds no scored test input: every test input is voted v2" in err


def test_a_garbage_scores_file_is_an_error_naming_it(tmp_path, capsys):
    code, entry, err = vote_with_scores(tmp_path, capsys, ["not json at all\n"])
    assert code == 1 and entry is None
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path / 'scores.jsonl'}:1: not a JSON line" in lines[0], err


@pytest.mark.parametrize("output", ["p.jsonl", "tasks.json", "scores.jsonl"])
def test_vote_refuses_to_overwrite_an_input(output, tmp_path, capsys):
    (tmp_path / "tasks.json").write_text(json.dumps(_tasks()))
    append_jsonl(tmp_path / "p.jsonl", [rec(RIGHT, task="aa")])
    (tmp_path / "scores.jsonl").write_text(scores_line([scored(RIGHT, "[-1.0, -1.0]")]))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "link").symlink_to(tmp_path / output)  # the same file under another name
    code = pipeline_main(["vote", "--predictions", str(tmp_path / "p.jsonl"), "--dataset", str(tmp_path / "tasks.json"),
                          "--output", str(tmp_path / "link"), "--method", "poe", "--scores", str(tmp_path / "scores.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and "refusing to overwrite an input" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "link"} == before
