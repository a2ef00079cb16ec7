"""Commands that write a model or adapter folder (shrink-vocab, merge, export-adapter, finetune,
convert-model) replace only their own kind of folder: a folder holding anything else, a file, or
a folder holding an input is refused with one line, before any model loads, and left as it was.
Before, `shrink-vocab --output DIR` deleted what DIR held and `--output tasks.json` replaced the
task file with a model folder."""
from __future__ import annotations

import json

import pytest

from pipeline.__main__ import main as pipeline_main

from conftest import DATA, one_line_error

EVAL = DATA / "arc-agi-1" / "arc-agi_evaluation_challenges.json"


@pytest.fixture()
def targets(tmp_path):
    """A user's folder with notes, a task file, and an adapter-like folder."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({"t": {"train": [], "test": []}}))
    return mine, tasks


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def commands(tiny_model_dir, tmp_path, output):
    adapter = tmp_path / "adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text("{}")
    return {
        "shrink-vocab": ["shrink-vocab", "--model", tiny_model_dir, "--format", "nvarc", "--output", output],
        "merge": ["merge", "--model", tiny_model_dir, "--adapter", adapter, "--output", output],
        "export-adapter": ["export-adapter", adapter, "--output", output],
        "convert-model": ["convert-model", "--gguf", tmp_path / "nope.gguf", "--output", output],
    }


@pytest.mark.parametrize("command", ["shrink-vocab", "merge", "export-adapter", "convert-model"])
def test_a_model_folder_output_never_replaces_a_foreign_folder_or_a_file(command, tiny_model_dir, tmp_path,
                                                                           targets, capsys):
    mine, tasks = targets
    for output, why in ((mine, "did not make (it holds notes.txt"), (tasks, "is a file, not a folder")):
        argv = commands(tiny_model_dir, tmp_path, output)[command]
        before = snapshot(tmp_path)
        assert pipeline_main([str(a) for a in argv]) == 1
        one_line_error(capsys.readouterr().err, str(output), why, "refusing to replace it")
        assert snapshot(tmp_path) == before


def test_shrink_vocab_refuses_to_replace_its_own_source_model(tiny_model_dir, capsys):
    before = snapshot(tiny_model_dir)
    argv = ["shrink-vocab", "--model", str(tiny_model_dir), "--format", "nvarc", "--output", str(tiny_model_dir)]
    assert pipeline_main(argv) == 1
    one_line_error(capsys.readouterr().err, "is the same file as --model", "refusing to overwrite an input")
    assert snapshot(tiny_model_dir) == before


def test_finetune_refuses_a_foreign_output_dir(tiny_model_dir, targets, capsys):
    mine, _ = targets
    with pytest.raises(SystemExit) as stop:
        pipeline_main(["finetune", "--model_path", str(tiny_model_dir), "--train_datasets", str(EVAL),
                       "output-from-examples-v1", "--output_dir", str(mine)])
    assert stop.value.code == 2
    assert "--output_dir" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
