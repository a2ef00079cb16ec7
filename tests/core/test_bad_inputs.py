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


def test_a_json_array_is_refused_and_a_garbage_line_is_dropped_and_named(tmp_path, dataset, capsys):
    for newline in ("\n", ""):  # without its newline the array was taken for a torn line: fallback only, exit 0
        array = tmp_path / "array.jsonl"
        array.write_text(json.dumps([record([[1]]), record([[2]])]) + newline)
        code, _, err = run(capsys, "vote", "--predictions", array, "--dataset", dataset, "--output", tmp_path / "s.json")
        assert code == 1
        one_line_error(err, f"{array}:1:", "JSON list", "one object per line")
        code, _, err = run(capsys, "evaluate", "--predictions", array, "--solutions", dataset)
        assert code == 1
        one_line_error(err, f"{array}:1:", "JSON list")
    assert not (tmp_path / "s.json").exists()

    garbage = tmp_path / "garbage.jsonl"
    append_jsonl(garbage, [record([[1]], sample_index=i) for i in range(6)])
    with open(garbage, "a") as f:
        f.write("{not json\n")
    code, out, err = run(capsys, "vote", "--predictions", garbage, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 0, err
    assert "6 predictions (1 bad record(s) dropped: " in out and f"{garbage}:7: not a JSON line" in out
    assert json.loads((tmp_path / "s.json").read_text())[TASK][0]["attempt_1"] == [[1]]

    only_garbage = tmp_path / "only-garbage.jsonl"
    only_garbage.write_text("Traceback (most recent call last):\n")
    code, _, err = run(capsys, "vote", "--predictions", only_garbage, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 1
    one_line_error(err, f"{only_garbage}:1: not a JSON line", "not a predictions file")


def test_bad_logprobs_are_dropped_and_named_never_ranked(tmp_path, dataset, capsys):
    """A string, NaN, Infinity or positive log-prob (with zero tokens it ranked first) never
    outranks a good prediction: [[1]] has the better real log-prob and must stay attempt_1."""
    path = tmp_path / "p.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps(record([[1]], lp=-0.5)) + "\n")
        f.write(json.dumps(record([[2]], lp=-3.0, sample_index=1)) + "\n")
        for i, lp in enumerate(('"-0.1"', "NaN", "Infinity", "5.0"), 2):
            f.write(json.dumps(record([[2]], sample_index=i, n_tokens=0)).replace('"cumulative_logprob": -1.0',
                                                                                  f'"cumulative_logprob": {lp}') + "\n")
    code, out, err = run(capsys, "vote", "--predictions", path, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 0, err
    assert "2 predictions (4 bad record(s) dropped: " in out and f"{path}:3: " in out and "cumulative_logprob" in out
    [entry] = json.loads((tmp_path / "s.json").read_text())[TASK]
    assert entry == {"attempt_1": [[1]], "attempt_2": [[2]]}


def test_duplicated_records_count_once_in_vote_and_evaluate(tmp_path, dataset, eval_tasks, capsys):
    """The same record twice, or the same file given twice, used to add votes (a wrong grid
    outvoted the right one) and inflate evaluate's accuracy."""
    right = eval_tasks[TASK]["test"][0]["output"]
    path = tmp_path / "p.jsonl"
    append_jsonl(path, [record(right, sample_index=0), record([[7]], sample_index=1), record([[7]], sample_index=1)])
    code, out, err = run(capsys, "vote", "--predictions", path, path, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 0, err
    assert "2 predictions (4 duplicate(s) dropped)" in out
    assert json.loads((tmp_path / "s.json").read_text())[TASK][0]["attempt_1"] == right  # 1 vote each: first wins

    wrong = tmp_path / "wrong.jsonl"
    append_jsonl(wrong, [record(right, sample_index=0)] + [record([[7]], sample_index=i) for i in (1, 2)] * 3)
    code, out, err = run(capsys, "evaluate", "--predictions", wrong, "--solutions", dataset, "--output",
                         tmp_path / "m.json")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_predictions"] == 3 and "4 duplicate(s) dropped" in out


def test_a_last_line_without_its_newline_is_a_record_when_it_parses(tmp_path, dataset, capsys):
    """A file written by another tool often lacks the final newline: its last record used to be
    taken for a torn line (7 of 8 predictions voted)."""
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(record([[i % 2]], sample_index=i)) for i in range(8)))  # no final newline
    counts = {}
    assert len(read_predictions(path, counts)) == 8 and counts["torn_lines"] == 0
    code, out, err = run(capsys, "vote", "--predictions", path, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 0 and "8 predictions" in out and "torn" not in out, (out, err)


def test_vote_counts_what_it_drops(tmp_path, dataset, capsys):
    path = tmp_path / "p.jsonl"
    append_jsonl(path, [record([[1]]), record(None, error="unparseable"), record([[1, 2], [3]]), record([[12]])])
    with open(path, "a") as f:
        f.write('{"task_id": "66e6')  # a killed writer's torn line
    code, out, err = run(capsys, "vote", "--predictions", path, "--dataset", dataset, "--output", tmp_path / "s.json")
    assert code == 0, err
    assert "4 predictions (1 unparseable, 2 invalid grid(s) dropped, a torn last line skipped)" in out


def test_sample_resume_onto_a_record_without_task_id_names_the_line_and_redoes_it(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    append_jsonl(path, [record([[1]]), {"test_index": 0, "sample_index": 1, "grid": [[1]]}])
    assert open_predictions(path, {"seed": 0}) == {(TASK, 0, 0)}
    one_line_error(capsys.readouterr().err, f"{path}:2: no string 'task_id'", "will be redone")
    with pytest.raises(PredictionsError, match=r"p\.jsonl:1: no string 'task_id'.*not a predictions file"):
        path.write_text(json.dumps({"test_index": 0}) + "\n")
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
    assert counts == {"records": 3, "torn_lines": 0, "unparsed": 1, "invalid_grids": 1, "duplicates": 0,
                      "bad_records": 0, "problems": []}


def test_a_truncated_cfg_json_is_named(tmp_path, dataset, tiny_model_dir, capsys):
    """Before: `Expecting value: line 1 column 12 (char 11)`, no file named."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "cfg.json").write_text('{"format": ')
    code, _, err = run(capsys, "sample", "--model", tiny_model_dir, "--dataset", dataset, "--adapter_path", adapter,
                       "--output", tmp_path / "p.jsonl", "--quiet")
    assert code == 1
    one_line_error(err, f"{adapter / 'cfg.json'}: not valid JSON (Expecting value at line 1 column 12)")
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("command", ["sample", "rescore", "generate-inputs", "report", "profile", "plan"])
def test_no_command_overwrites_its_input(command, tmp_path, dataset, tiny_model_dir, capsys):
    """Each output named like one of the command's inputs (through a link: the same file by inode,
    not by spelling) is refused before anything loads, and the input is left as it was."""
    predictions = tmp_path / "p.jsonl"
    append_jsonl(predictions, [record([[1]])])
    timing = tmp_path / "run" / "timing.jsonl"
    append_jsonl(timing, [{"stage": "sample", "event": "stage", "seconds": 1.0, "time": 1.0, "pid": 1}])
    (tmp_path / "same").symlink_to(predictions if command in ("rescore", "report") else
                                   timing if command in ("profile", "plan") else dataset)
    same = tmp_path / "same"
    argv = {"sample": ["sample", "--model", tiny_model_dir, "--dataset", dataset, "--output", same, "--quiet"],
            "rescore": ["rescore", "--model", tiny_model_dir, "--dataset", dataset, "--predictions", predictions,
                        "--output", same],
            "generate-inputs": ["generate-inputs", "--model", tiny_model_dir, "--dataset", dataset, "--output", same],
            "report": ["report", "--predictions", predictions, "--submission", dataset, "--dataset", dataset,
                       "--output_dir", same],
            "profile": ["profile", tmp_path / "run", "--json", same],
            "plan": ["plan", "--profile", tmp_path / "run", "--json", same]}[command]
    before = {p: p.read_bytes() for p in (dataset, predictions, timing)}
    code, _, err = run(capsys, *argv)
    assert code in (1, 2)
    one_line_error(err, str(same), "is the same file as", "refusing to overwrite an input")
    assert {p: p.read_bytes() for p in before} == before
