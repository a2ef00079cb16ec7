"""The dry run's config is kaggle/configs/local.yaml's, read by the one config loader: the dry run
sets only its paths, the command line's choices and the deadline."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.settings import config_dict, load_config
from pipeline.kaggle import dry_run

# what the dry run sets itself; every other key must be local.yaml's
OWN_KEYS = {"title", "input_dir", "test_challenges", "working_dir", "scratch_dir", "wheels_dir", "model", "adapter",
            "devices", "ttft_steps", "ttft_learning_rate", "ttft_max_seq_len", "predictions_per_task", "engine",
            "sample_settings", "deadline_hours", "local_source_dir", "local_tasks", "local_adapter_source",
            "local_model_shrink_vocab"}


def test_the_dry_run_config_is_local_yaml_with_its_paths_and_command_line(tmp_path):
    local = config_dict(load_config(dry_run.LOCAL_CONFIG))
    args = dry_run.build_parser().parse_args(["--bare"])
    config = config_dict(load_config(dry_run.kaggle_config(args, tmp_path, on_cuda=False)))
    assert {k for k in config if config[k] != local[k]} <= OWN_KEYS
    # the keys the old hand-written copy had drifted on are local.yaml's now
    for key in ("ttft_budget_fraction", "vote_reserve_minutes", "stage_grace_seconds", "safety_margin_minutes",
                "stage_env", "watchdog_minutes", "smoke_tasks"):
        assert config[key] == local[key], key
    # the command line's defaults are local.yaml's values: the same run unless a flag says otherwise
    for key in ("ttft_steps", "ttft_learning_rate", "ttft_max_seq_len", "predictions_per_task", "engine", "devices",
                "sample_settings"):
        assert config[key] == local[key], key
    assert config["input_dir"] == str(tmp_path / "input") and config["working_dir"] == str(tmp_path)
    assert config["adapter"] is None and config["deadline_hours"] == 40 / 60


def test_the_dry_run_command_line_overrides_local_yaml(tmp_path):
    args = dry_run.build_parser().parse_args(["--bare", "--ttft_steps", "3", "--max_tokens", "max",
                                              "--deadline_minutes", "12"])
    config = dry_run.kaggle_config(args, tmp_path, on_cuda=True)
    assert config["ttft_steps"] == 3 and config["deadline_hours"] == 0.2 and config["devices"] == ["cuda:0"]
    assert config["sample_settings"]["max_tokens"] == "max"  # the command line's, over local.yaml's
    local = load_config(dry_run.LOCAL_CONFIG)
    assert local.sample_settings["max_tokens"] == "task"
    numeric = dry_run.kaggle_config(dry_run.build_parser().parse_args(["--max_tokens", "64"]), tmp_path, False)
    assert load_config(numeric).sample_settings["max_tokens"] == 64  # a number, as the setting's type wants
    assert Path(config["scratch_dir"]).parent == tmp_path


def test_the_dry_run_makes_local_yamls_model_dataset_once_in_its_folder(tmp_path, tiny_model_dir):
    """No --model: local.yaml's model dataset (its local_model_shrink_vocab, here from the tiny model)
    made in OUT/model, kept by the next run and by the folder's wipe; --model is taken as given."""
    local = load_config(dry_run.LOCAL_CONFIG)
    args = dry_run.build_parser().parse_args([])
    model, shrink = dry_run.default_model(args, tmp_path)
    assert model == str(tmp_path / dry_run.MODEL_DIR) and shrink == local.local_model_shrink_vocab
    assert dry_run.kaggle_config(args, tmp_path, on_cuda=False)["model"] == model
    assert dry_run.default_adapter(args) is None and local.local_adapter_source is None  # the recipe has none
    tiny = {**shrink, "source": str(tiny_model_dir)}
    dry_run.make_model(model, tiny)
    cfg = json.loads((Path(model) / "cfg.json").read_text())
    assert (cfg["source_model"], cfg["format"]) == (str(tiny_model_dir), shrink["format"])
    weights = (Path(model) / "model.safetensors").stat()
    task = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]], "output": [[2]]}]}
    dry_run.prepare_run_dir(tmp_path, {"t": task})  # the next run's wipe leaves the model
    dry_run.make_model(model, tiny)
    again = (Path(model) / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (weights.st_ino, weights.st_mtime_ns)
    given = dry_run.build_parser().parse_args(["--model", "embedded"])
    assert dry_run.default_model(given, tmp_path) == ("embedded", {}) and dry_run.default_adapter(given) is None
