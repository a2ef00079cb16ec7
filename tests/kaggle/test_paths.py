"""Where the run finds its inputs: every Kaggle input layout, the search by a named file, two
matches refused (pipeline/kaggle/paths.py).

    python -m pytest tests/kaggle/test_paths.py -q

Each test lays out a tmp tree as Kaggle mounts it under /kaggle/input (the config's `input_root`
points there) and resolves a shipped-style config against it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.settings import load_config
from pipeline.kaggle.paths import resolve_paths

REPO = Path(__file__).resolve().parents[2]
TEST_FILE = "arc-agi_test_challenges.json"

# the inputs a shipped config names: competition, wheels dataset, model dataset (model/ and adapter/)
CONFIGURED = {"input_dir": "/kaggle/input/arc-prize-2026-arc-agi-2",
              "wheels_dir": "/kaggle/input/arc-ttft-wheels/wheels",
              "model": "/kaggle/input/arc-ttft-model/model",
              "adapter": "/kaggle/input/arc-ttft-model/adapter"}

# where Kaggle mounts the same inputs in each of its layouts (competition data, then the two datasets)
LAYOUTS = {
    "until 2025": ("arc-prize-2026-arc-agi-2", "arc-ttft-wheels", "arc-ttft-model"),
    "2026": ("competitions/arc-prize-2026-arc-agi-2", "datasets/someone/arc-ttft-wheels",
             "datasets/someone/arc-ttft-model"),
    "models": ("competitions/arc-prize-2026-arc-agi-2", "datasets/someone/arc-ttft-wheels",
               "models/someone/arc-ttft-model/transformers/default/3"),
}


def make_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    return folder


def make_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return folder


def make_wheels(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "requirements.txt").write_text("vllm==0.0.1\n")
    (folder / "vllm-0.0.1-py3-none-any.whl").write_bytes(b"")
    return folder


def make_competition(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TEST_FILE).write_text("{}")
    return folder


def kaggle_config(root: Path, **overrides) -> dict:
    """The config's /kaggle/input/... paths moved under `root`, which stands for /kaggle/input."""
    values = {k: v.replace("/kaggle/input", str(root)) for k, v in CONFIGURED.items()}
    return load_config({"input_root": str(root), **values, **overrides})


@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_every_input_is_found_in_every_kaggle_layout_and_the_run_says_where(tmp_path, layout):
    root = tmp_path / "input"
    competition, wheels, models = (root / p for p in LAYOUTS[layout])
    make_competition(competition)
    make_wheels(wheels / "wheels")
    make_model(models / "model")
    make_adapter(models / "adapter")
    paths = resolve_paths(kaggle_config(root), env={}, cwd=tmp_path)
    assert paths.input_dir == competition and paths.test_challenges == competition / TEST_FILE
    assert paths.wheels_dir == wheels / "wheels"
    assert paths.model == str(models / "model") and paths.adapter == str(models / "adapter")
    said = {l.what: l.describe() for l in paths.located}
    assert set(said) == {"competition data", "wheels", "model", "adapter"}
    for what, where in said.items():
        if layout == "until 2025":  # the configured layout
            assert where.endswith("(as configured)"), where
        else:
            assert "found in another input layout; configured " in where, where
    assert paths.problem("competition data", "wheels", "model", "adapter") == ""


def test_an_input_mounted_under_another_name_is_found_by_its_file(tmp_path):
    """A Kaggle Model attached under its own slug (not the configured dataset's), and an adapter
    dataset with another name: each is the only folder under the input root with its file."""
    root = tmp_path / "input"
    make_competition(root / "arc-prize-2026-arc-agi-2")
    model = make_model(root / "models" / "nvidia" / "nvarc-qwen3-4b" / "transformers" / "default" / "1")
    adapter = make_adapter(root / "datasets" / "someone" / "my-lora" / "checkpoint")
    paths = resolve_paths(kaggle_config(root), env={}, cwd=tmp_path)
    assert paths.model == str(model) and paths.adapter == str(adapter)
    said = {l.what: l.describe() for l in paths.located}
    assert said["model"] == (f"model: {model} (found by its config.json under {root}; "
                             f"configured {root / 'arc-ttft-model' / 'model'})")
    assert "found by its adapter_config.json" in said["adapter"]
    # a requirements.txt without wheels beside it is no wheels folder
    (root / "datasets" / "someone" / "my-lora" / "requirements.txt").write_text("peft==0.1\n")
    paths = resolve_paths(kaggle_config(root), env={}, cwd=tmp_path)
    assert paths.problem("wheels").startswith("wheels not found: no requirements.txt in ")


def test_two_matching_folders_are_an_error_naming_both(tmp_path):
    root = tmp_path / "input"
    make_competition(root / "competitions" / "arc-prize-2026-arc-agi-2")
    first = make_model(root / "models" / "a" / "qwen" / "transformers" / "default" / "1")
    second = make_model(root / "datasets" / "b" / "other-model")
    paths = resolve_paths(kaggle_config(root), env={}, cwd=tmp_path)
    problem = paths.problem("model")
    assert str(first) in problem and str(second) in problem and "2 folders hold config.json" in problem
    assert paths.model == str(root / "arc-ttft-model" / "model")  # nothing guessed
    # the same dataset attached in two layouts (two versions of a Kaggle Model, say)
    for version in ("1", "2"):
        make_adapter(root / "models" / "me" / "arc-ttft-model" / "transformers" / "default" / version / "adapter")
    paths = resolve_paths(kaggle_config(root), env={}, cwd=tmp_path)
    assert "2 folders hold adapter_config.json (found in another input layout)" in paths.problem("adapter")
    # the configured path, when it holds the file, wins over any other match
    configured = make_model(root / "arc-ttft-model" / "model")
    assert resolve_paths(kaggle_config(root), env={}, cwd=tmp_path).model == str(configured)


def test_a_run_with_an_ambiguous_model_says_so_and_runs_no_model_stage(kaggle_tree):
    """The model stages fail with the error (no subprocess that would load the wrong model); the
    fallback submission stands."""
    from pipeline.kaggle.run import KaggleRun
    from test_kaggle_run import local_config

    root = kaggle_tree / "input"
    make_model(root / "datasets" / "a" / "m1")
    make_model(root / "datasets" / "b" / "m2")
    run = KaggleRun(local_config(input_root="../input", model="../input/arc-ttft-model/model", first_shot_predictions=1),
                    env={}, cwd=kaggle_tree / "working")
    for step in ("start", "preflight", "first_shot", "ttft", "sample"):
        getattr(run, step)()
    assert run.results["start"].status == "ok"
    for stage in ("preflight", "first_shot", "ttft", "sample"):
        assert run.results[stage].status == "failed" and "2 folders hold config.json" in run.results[stage].reason
    assert not (kaggle_tree / "working" / "run" / "logs").exists()  # no stage was started


def test_paths_outside_the_input_root_are_taken_as_they_are(tmp_path):
    """Local runs and tests: a model or wheels folder elsewhere is never searched for."""
    root = make_competition(tmp_path / "input" / "arc").parent
    make_model(root / "datasets" / "x" / "some-model")
    paths = resolve_paths(load_config({"input_root": str(root), "input_dir": str(root / "arc"),
                                       "model": str(tmp_path / "elsewhere"), "wheels_dir": str(tmp_path / "w")}),
                          env={}, cwd=tmp_path)
    assert paths.model == str(tmp_path / "elsewhere") and paths.wheels_dir == tmp_path / "w"
    assert paths.problem("model", "wheels") == ""  # not a Kaggle input: the stage says what is missing
    assert load_config({}).input_root == "/kaggle/input"


def test_the_local_config_resolves_inside_its_kaggle_like_tree(tmp_path, tiny_model_dir):
    """local.yaml's input_root is the tree's kaggle/input: the dry run's competition folder and
    model dataset (here made from the tiny model) are found there as configured."""
    from notebook_builder.run import prepare_local_layout
    from pipeline.core.settings import read_config_file

    values = read_config_file(REPO / "kaggle" / "configs" / "local.yaml")
    config = load_config({**values, "local_model_shrink_vocab": {**values["local_model_shrink_vocab"],
                                                                 "source": str(tiny_model_dir)}})
    working = prepare_local_layout(config, tmp_path)
    paths = resolve_paths(config, env={}, cwd=working)
    assert paths.input_root == tmp_path / "kaggle" / "input"
    how = {l.what: l.how for l in paths.located}
    assert how == {"competition data": "as configured", "model": "as configured", "wheels": "not found"}
    assert paths.model == str(tmp_path / "kaggle" / "input" / "arc-ttft-model" / "model") and paths.adapter is None
    assert resolve_paths(load_config({"model": "embedded"}), env={}, cwd=working).model == "embedded"  # an alias:
                                                                                                       # never looked up
