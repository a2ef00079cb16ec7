"""The fine-tuning set: no ARC-AGI-1 evaluation task in it, by id or by content; deterministic."""
from __future__ import annotations

import hashlib
import json

from pipeline.training import build_training_data as training_data
from pipeline.core.tasks import load_tasks

from conftest import DATA


def _pair(a, b):
    return {"input": a, "output": b}


def _write(path, tasks):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tasks))


def test_excludes_evaluation_tasks_by_id_and_by_content(tmp_path, tokenizer):
    evaluation = {"e0000001": {"train": [_pair([[1, 2]], [[2, 1]]), _pair([[3, 4]], [[4, 3]])],
                               "test": [_pair([[5, 6]], [[6, 5]])]}}
    clean = {"train": [_pair([[1]], [[2]]), _pair([[3]], [[4]])], "test": [_pair([[5]], [[6]])]}
    # the evaluation task under another id, with only its test pair kept: caught by content alone
    renamed = {"train": [_pair([[7]], [[7]])], "test": [_pair([[5, 6]], [[6, 5]])]}
    other = {"train": [_pair([[1]], [[3]]), _pair([[2]], [[4]])], "test": [_pair([[5]], [[7]])]}
    big = [[1] * 30 for _ in range(30)]
    too_long = {"train": [_pair(big, big), _pair(big, big)], "test": [_pair(big, big)]}
    _write(tmp_path / "eval.json", evaluation)
    _write(tmp_path / "a.json", {"e0000001": clean, "c0000001": clean})
    # d0000001 repeats a/c0000001 under another id (as ARC-AGI-2 repeats ARC-AGI-1 training tasks)
    _write(tmp_path / "b.json", {"r0000001": renamed, "t0000001": too_long, "c0000002": other, "d0000001": clean})

    tasks, manifest = training_data.build(tmp_path, tokenizer, max_tokens=1024,
                                          sources=(("a", "a.json"), ("b", "b.json")), evaluation_file="eval.json")

    assert list(tasks) == ["a/c0000001", "b/c0000002"]
    assert manifest["excluded"]["a/e0000001"].startswith("id e0000001 is an ARC-AGI-1 evaluation task")
    assert manifest["excluded"]["b/r0000001"] == "shares a grid pair with evaluation task(s) e0000001"
    assert manifest["excluded"]["b/d0000001"] == "same grid pairs as a/c0000001"
    assert manifest["sources"]["a"] == {"path": "a.json", "tasks": 2, "evaluation_overlap": 1, "duplicate": 0,
                                        "too_long": 0, "no_test_output": 0, "kept": 1}
    assert manifest["sources"]["b"]["too_long"] == 1 and manifest["sources"]["b"]["kept"] == 1
    assert manifest["sources"]["b"]["duplicate"] == 1
    assert manifest["kept"] == 2


def test_shipped_training_set_has_no_evaluation_task_and_rebuilds_identically(tmp_path, tokenizer):
    """The committed data/training/arc-train.json: no evaluation id, no evaluation grid pair,
    every task small enough, and the command rebuilds it byte for byte."""
    shipped = (DATA / training_data.OUTPUT).read_text()
    manifest = json.loads((DATA / training_data.MANIFEST).read_text())
    assert manifest["sha256"] == hashlib.sha256(shipped.encode()).hexdigest()
    tasks = json.loads(shipped)
    evaluation = load_tasks(DATA / training_data.EVALUATION)
    eval_pairs = {key for task in evaluation.values() for key in training_data.pair_keys(task)}
    assert len(tasks) == manifest["kept"] > 900
    contents = [frozenset(training_data.pair_keys(task)) for task in tasks.values()]
    assert len(set(contents)) == len(contents), "a task is in the set twice"
    assert not {tid.split("/", 1)[1] for tid in tasks} & set(evaluation)
    assert not any(training_data.pair_keys(task) & eval_pairs for task in tasks.values())
    # ARC-AGI-2 training repeats hundreds of evaluation tasks: all gone
    assert manifest["sources"]["arc2"]["evaluation_overlap"] > 300

    output = tmp_path / "arc-train.json"
    assert training_data.main(["--output", str(output), "--max_tokens", str(manifest["max_tokens"])]) == 0
    assert output.read_text() == shipped
    assert json.loads((tmp_path / "manifest.json").read_text())["sha256"] == manifest["sha256"]
