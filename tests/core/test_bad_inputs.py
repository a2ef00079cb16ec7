"""No silent mistakes: every CLI that reads predictions, adapters or submissions refuses a missing,
wrong-kind or malformed file with one line naming it (and the line, for JSONL), exit 1, no
traceback; what it drops it counts.  Each case here passed silently (exit 0) or crashed before."""
from __future__ import annotations

import json

import pytest

from pipeline.__main__ import main as pipeline_main
from pipeline.core.files import append_jsonl
from pipeline.core.predictions import PredictionsError, read_predictions
from pipeline.sampling.run_loop import open_predictions

from conftest import DATA, one_line_error

EVAL = DATA / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
TASK = "66e6c45b"  # one test input


@pytest.fixture()
def dataset(tmp_path, eval_tasks):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({TASK: eval_tasks[TASK]}))
    return path


def record(grid, lp=-1.0, **extra):
    return {"task_id": TASK, "test_index": 0, "sample_index": 0, "grid": grid, "cumulative_logprob": lp,
            "n_tokens": 4, **extra}


def run(capsys, *argv):
    code = pipeline_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("stage", ["vote", "evaluate"])
def test_missing_predictions_file_is_an_error_naming_it(stage, tmp_path, dataset, capsys):
    missing = tmp_path / "nope.jsonl"
    extra = ["--dataset", dataset, "--output", tmp_path / "out.json"] if stage == "vote" else ["--solutions", dataset]
    code, _, err = run(capsys, stage, "--predictions", missing, *extra)
    assert code == 1
    one_line_error(err, str(missing), "no such predictions file")
    assert not (tmp_path / "out.json").exists()


def test_a_json_array_and_a_garbage_line_are_named_with_their_line(tmp_path, dataset, capsys):
    array = tmp_path / "array.jsonl"
    array.write_text(json.dumps([record([[1]]), record([[2]])]) + "\n")
    code, _, err = run(capsys, "vote", "--predictions", array, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 1
    one_line_error(err, f"{array}:1:", "JSON list", "one object per line")

    garbage = tmp_path / "garbage.jsonl"
    append_jsonl(garbage, [record([[1]])] * 6)
    with open(garbage, "a") as f:
        f.write("{not json\n")
    code, _, err = run(capsys, "vote", "--predictions", garbage, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 1
    one_line_error(err, f"{garbage}:7:", "not a JSON line")


def test_a_non_numeric_logprob_is_refused_not_ranked(tmp_path, dataset, capsys):
    path = tmp_path / "p.jsonl"
    append_jsonl(path, [record([[1]]), record([[2]], lp="-0.1")])
    code, _, err = run(capsys, "vote", "--predictions", path, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 1
    one_line_error(err, f"{path}:2:", "cumulative_logprob")


def test_vote_counts_what_it_drops(tmp_path, dataset, capsys):
    path = tmp_path / "p.jsonl"
    append_jsonl(path, [record([[1]]), record(None, error="unparseable"), record([[1, 2], [3]]), record([[12]])])
    with open(path, "a") as f:
        f.write('{"task_id": "66e6')  # a killed writer's torn line
    code, out, err = run(capsys, "vote", "--predictions", path, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 0, err
    assert "4 predictions (1 unparseable, 2 invalid grid(s) dropped, a torn last line skipped)" in out


def test_sample_resume_onto_a_record_without_task_id_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    append_jsonl(path, [record([[1]]), {"test_index": 0, "sample_index": 1, "grid": [[1]]}])
    with pytest.raises(PredictionsError, match=r"p\.jsonl:2: no string 'task_id'"):
        open_predictions(path, {"seed": 0})


def test_sample_refuses_an_adapters_dir_that_is_missing_or_a_file(tmp_path, dataset, tiny_model_dir, capsys):
    not_a_dir = tmp_path / "adapters.txt"
    not_a_dir.write_text("x")
    for bad, why in ((tmp_path / "nope", "no such folder"), (not_a_dir, "is a file")):
        code, _, err = run(capsys, "sample", "--model", tiny_model_dir, "--dataset", dataset,
                           "--adapters_dir", bad, "--output", tmp_path / "p.jsonl", "--quiet")
        assert code == 1
        one_line_error(err, str(bad), why)
    assert not (tmp_path / "p.jsonl").exists()


def test_score_refuses_a_list_or_empty_submission_and_reports_a_wrong_shape(tmp_path, dataset, eval_tasks, capsys):
    for name, text in (("list.json", "[]"), ("empty.json", ""), ("torn.json", '{"66e6c45b": [{"attempt_1"')):
        path = tmp_path / name
        path.write_text(text)
        code, _, err = run(capsys, "score", "--submission", path, "--solutions", dataset)
        assert code == 1
        one_line_error(err, str(path))

    grid = eval_tasks[TASK]["test"][0]["output"]
    extra = tmp_path / "extra.json"  # right answer, plus a second entry and an unknown task
    extra.write_text(json.dumps({TASK: [{"attempt_1": grid, "attempt_2": [[0]]}] * 2, "zzz": []}))
    code, out, err = run(capsys, "score", "--submission", extra, "--solutions", dataset)
    assert code == 0
    assert "score: 100.00%" in out
    warning = one_line_error(err, "not a valid submission", "2 problem(s)")
    assert "'zzz': not in the dataset" in warning and "has 2 test entries" in warning


def test_render_refuses_a_list_submission(tmp_path, dataset, capsys):
    path = tmp_path / "list.json"
    path.write_text("[]")
    code, _, err = run(capsys, "render", "--dataset", dataset, "--submission", path, "--output_dir", tmp_path / "png")
    assert code == 1
    one_line_error(err, str(path), "JSON list")


def test_finetune_with_a_hub_name_stops_before_loading(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        pipeline_main(["finetune", "--model_path", "Qwen/Qwen2-0.5B-Instruct", "--train_datasets", str(EVAL),
                       "output-from-examples-v1", "--output_dir", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "'Qwen/Qwen2-0.5B-Instruct' does not exist" in err
    assert not (tmp_path / "out").exists()


def test_reader_keeps_bad_grids_and_counts_them(tmp_path):
    path = tmp_path / "p.jsonl"
    append_jsonl(path, [record([[1]]), record(None), record([[True]])])
    counts = {}
    records = read_predictions(path, counts)
    assert len(records) == 3
    assert counts == {"records": 3, "torn_lines": 0, "unparsed": 1, "invalid_grids": 1}
