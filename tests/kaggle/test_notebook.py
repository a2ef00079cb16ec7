"""The built Kaggle notebooks, and the local notebook executed headless like Kaggle would run it.

    python -m pytest tests/test_notebook.py -q -s     # -s shows the 2025 notebook's size

The two execution tests start a real Jupyter kernel (nbclient) in a Kaggle-like tree under
tmp_path whose input folder is read-only, with the Hugging Face offline switches set.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from notebook_builder.build import (build_notebook, kernel_metadata, notebook_processes, notebook_sources, notebook_text,
                                    pipeline_sources, resolve_config)
from notebook_builder.strip import code_changes
from notebook_builder.run import prepare_local_layout, run_local
from pipeline.core.files import read_json, read_jsonl
from pipeline.core.settings import config_dict, load_config, read_config_file
from pipeline.core.submission import submission_problems
from pipeline.kaggle.paths import resolve_paths

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "kaggle" / "configs" / "local.yaml"
CONFIGS = sorted((REPO / "kaggle" / "configs").glob("*.yaml"))
WRITEFILE = re.compile(r"^%%writefile src/(\S+)\n")


def code_cells(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_builds_a_valid_notebook_deterministically(path):
    config, header, name = resolve_config(path)
    first = notebook_text(build_notebook(config, header, name))
    nbformat.validate(nbformat.reads(first, as_version=4))
    assert notebook_text(build_notebook(*resolve_config(path))) == first
    assert f"--config kaggle/configs/{path.name}" in first  # the header says how it was built


def test_2025_notebook_from_the_cli_is_self_contained_and_free_of_build_machine_paths(tmp_path, record_property):
    out = [tmp_path / "a" / "arc-prize-2025.ipynb", tmp_path / "b" / "arc-prize-2025.ipynb"]
    for path in out:
        subprocess.run([sys.executable, "-m", "notebook_builder", "build", "--config",
                        "kaggle/configs/arc-prize-2025.yaml", "--output", str(path)], cwd=REPO, check=True,
                       capture_output=True)
    data = out[0].read_bytes()
    assert data == out[1].read_bytes()
    nb = nbformat.reads(data.decode(), as_version=4)
    nbformat.validate(nb)
    text = data.decode()
    for local_path in {str(REPO), str(Path.home()) + "/", str(tmp_path)}:
        assert local_path not in text, f"the notebook holds the build machine's path {local_path}"
    record_property("notebook_bytes", len(data))
    print(f"\narc-prize-2025.ipynb: {len(data):,} bytes, {len(nb.cells)} cells")
    # self-contained: every module the run imports is embedded, its code line for line (notebook_builder/strip.py),
    # and the run cells call into it
    embedded = {m.group(1): src[m.end():] for src in code_cells(nb) if (m := WRITEFILE.match(src))}
    config, _, _ = resolve_config(REPO / "kaggle" / "configs" / "arc-prize-2025.yaml")
    assert embedded == notebook_sources(notebook_processes(config), REPO)
    whole = pipeline_sources(notebook_processes(config), REPO)
    assert sorted(embedded) == sorted(whole) and all(code_changes(whole[p], embedded[p]) is None
                                                     for p in whole if p.endswith(".py"))
    calls = [src for src in code_cells(nb) if not WRITEFILE.match(src)]
    assert all(len(src.splitlines()) <= 6 for src in calls[2:]), "call cells stay one-liners: logic lives in pipeline/"
    assert not any(re.search(r"\bpip\b|subprocess", src) for src in calls)  # the install is kaggle_run's (--no-index)
    assert "'devices': ['cuda:0', 'cuda:1', 'cuda:2', 'cuda:3']" in text


def test_wheels_notebook_pins_the_runtime_packages():
    config, header, name = resolve_config(REPO / "kaggle" / "configs" / "wheels.yaml")
    assert any(r.startswith("vllm==") for r in config.requirements)
    assert not any(r.startswith(("nbformat", "ipykernel")) for r in config.requirements)
    text = notebook_text(build_notebook(config, header, name))
    assert "install.download_wheels(CONFIG" in text


def test_kernel_metadata_names_the_competition_and_datasets():
    config, _, _ = resolve_config(REPO / "kaggle" / "configs" / "arc-prize-2024.yaml")
    meta = kernel_metadata(config, "someone", "build/arc-prize-2024.ipynb")
    assert meta["code_file"] == "arc-prize-2024.ipynb" and meta["id"].startswith("someone/")
    assert meta["competition_sources"] == ["arc-prize-2024"]
    assert meta["dataset_sources"] == ["someone/arc-ttft-wheels", "someone/arc-ttft-model"]
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True


# ----------------------------------------------------------------------------- headless execution

def local_overrides(model_dir: Path, **extra) -> dict:
    # local.yaml's model dataset made from the tiny model (shrink-vocab for local.yaml's format, by the
    # layout, as for the embedded one), very few steps and predictions: the plumbing, not accuracy
    shrink = load_config(LOCAL).local_model_shrink_vocab
    return {"local_model_shrink_vocab": {**shrink, "source": str(model_dir)}, "adapter": None,
            "local_adapter_source": None, "ttft_steps": 2, "smoke_ttft_steps": 2, "ttft_max_seq_len": 1024,
            "predictions_per_task": 2, "smoke_predictions_per_task": 2,
            "sample_settings": {**load_config(LOCAL).sample_settings, "max_tokens": 16},  # a random model never
            **extra}                                                                       # stops on its own


def timing_records(result) -> list[dict]:
    return list(read_jsonl(Path(result["working_dir"]) / "run" / "timing.jsonl"))


def check_complete_submission(result):
    working = Path(result["working_dir"])
    challenges = read_json(working.parent / "input" / "arc-prize-local" / "arc-agi_test_challenges.json")
    assert sorted(challenges) == ["00576224", "66e6c45b", "6ea4a07e"]
    submission = json.loads((working / "submission.json").read_text())
    assert submission_problems(submission, challenges) == []
    assert sum(len(v) for v in submission.values()) == 4  # every test input
    assert result["input_unchanged"], "the read-only input folder was written to"


def test_the_local_layout_makes_the_model_dataset_once_read_only_where_the_config_points(tmp_path, embedded_model_dir):
    """local.yaml's model is the shrink-vocab stage's model of the embedded one for its format, made by
    the layout (the real stage, a few CPU seconds) where `model` points, read-only like a Kaggle dataset,
    and kept by the next layout while its cfg.json names the same source and format."""
    config = load_config(LOCAL)
    working = prepare_local_layout(config, tmp_path)
    paths = resolve_paths(config, env={}, cwd=working)
    made = Path(paths.model)
    assert made == tmp_path / "kaggle" / "input" / "arc-ttft-model" / "model" and paths.adapter is None
    cfg = read_json(made / "cfg.json")
    shrink = config.local_model_shrink_vocab
    assert (cfg["stage"], cfg["source_model"], cfg["format"]) == ("shrink-vocab", shrink["source"], shrink["format"])
    assert cfg["tasks"] == 0  # synthetic grids only: a Kaggle user does not know the hidden tasks
    assert (made / "config.json").stat().st_mode & 0o222 == 0 and (made / "model.safetensors").stat().st_mode & 0o222 == 0
    weights = (made / "model.safetensors").stat()
    prepare_local_layout(config, tmp_path)  # a second layout keeps it: the same file, not made again
    again = (made / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (weights.st_ino, weights.st_mtime_ns)
    assert (made / "config.json").stat().st_mode & 0o222 == 0
    # the stages' loader reads it as the reduced nvarc model, its format from cfg.json
    from pipeline.core.model_cfg import find_run_config, resolve_prompting
    from pipeline.core.models import load_tokenizer
    tokenizer = load_tokenizer(made)
    assert len(tokenizer) == cfg["vocab_size"] < len(load_tokenizer(embedded_model_dir))
    assert resolve_prompting(find_run_config(made)[0], tokenizer=tokenizer).format == shrink["format"]


def test_the_local_layout_remakes_another_model_and_mounts_an_adapter(tmp_path, tiny_model_dir):
    """A folder made for another format is made again; local_adapter_source is copied read-only to
    `adapter` (the arc24 adapter with the embedded model: the older local recipe)."""
    tiny = {"source": str(tiny_model_dir), "format": "architects"}
    config = load_config({**read_config_file(LOCAL), "local_model_shrink_vocab": tiny,
                          "adapter": "../input/arc-ttft-model/adapter",
                          "local_adapter_source": "models/smollm2-135m-arc-lora"})
    working = prepare_local_layout(config, tmp_path)
    made = Path(resolve_paths(config, env={}, cwd=working).model)
    assert read_json(made / "cfg.json")["format"] == "architects"
    nvarc = load_config({**config_dict(config), "local_model_shrink_vocab": {**tiny, "format": "nvarc"}})
    paths = resolve_paths(nvarc, env={}, cwd=prepare_local_layout(nvarc, tmp_path))
    assert read_json(made / "cfg.json")["format"] == "nvarc" and (made / "config.json").stat().st_mode & 0o222 == 0
    mounted, shipped = Path(paths.adapter), REPO / config.local_adapter_source
    assert mounted == tmp_path / "kaggle" / "input" / "arc-ttft-model" / "adapter"
    assert sorted(p.name for p in mounted.iterdir()) == sorted(p.name for p in shipped.iterdir())
    assert (mounted / "adapter_model.safetensors").read_bytes() == (shipped / "adapter_model.safetensors").read_bytes()
    assert (mounted / "adapter_config.json").stat().st_mode & 0o222 == 0  # read-only, like a Kaggle dataset


@pytest.mark.parametrize("shrink, message", [
    ({"source": "embedded", "format": "mit"}, "local_model_shrink_vocab: format 'mit' is not one of"),
    ({"source": "models/no-such-model", "format": "nvarc"}, "local_model_shrink_vocab: source model path"),
])
def test_a_bad_local_model_is_one_line_before_anything_runs(tmp_path, capsys, shrink, message):
    from notebook_builder.__main__ import main as builder

    rc = builder(["run", "--config", str(LOCAL), "--workdir", str(tmp_path),
                  "--set", f"local_model_shrink_vocab={json.dumps(shrink)}"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "kaggle" / "input" / "arc-ttft-model" / "model").exists()


def test_a_local_model_key_with_other_keys_is_refused_at_load():
    with pytest.raises(ValueError, match="'local_model_shrink_vocab'.*must give exactly source and format"):
        load_config({"local_model_shrink_vocab": {"source": "embedded", "fromat": "nvarc"}})


@pytest.mark.slow
def test_local_notebook_runs_headless_in_a_kaggle_like_tree(tmp_path, tiny_model_dir):
    config, header, name = resolve_config(REPO / "kaggle" / "configs" / "local.yaml", local_overrides(tiny_model_dir))
    result = run_local(config, tmp_path, timeout=900, header=header, name=name)
    assert result["error"] is None, result["error"]
    check_complete_submission(result)
    working = Path(result["working_dir"])
    built = nbformat.read(result["notebook"], as_version=4)
    embedded = {m.group(1): src[m.end():] for src in code_cells(built) if (m := WRITEFILE.match(src))}
    assert "pipeline/kaggle/run.py" in embedded
    for rel, text in embedded.items():
        assert (working / "src" / rel).read_text() == text  # %%writefile wrote the package verbatim
    records = timing_records(result)
    ended = {r["stage"]: r["event"] for r in records if "task_id" not in r and r["event"] != "start"}
    assert ended["start"] == "end" and ended["install"] == "skipped"  # already importable here
    for stage in ("ttft", "sample", "vote"):
        assert ended.get(stage) == "end", [r for r in records if r["stage"] == stage]
    assert ended["score"] == "end" and "score:" in result["final_output"]  # placeholder: self-scored
    assert "timing profile" in result["final_output"]
    walls = {r["stage"]: r["seconds"] for r in records if r["event"] == "end" and "task_id" not in r}
    for stage in ("ttft", "sample"):  # each stage process timed its own start-up, once
        startups = [r["seconds"] for r in records if r["stage"] == stage and r.get("phase") == "startup"]
        assert len(startups) == 1 and 0 < startups[0] < walls[stage], (stage, startups, walls)


@pytest.mark.slow
def test_local_notebook_with_a_deadline_too_short_still_ends_with_a_complete_submission(tmp_path, tiny_model_dir):
    overrides = local_overrides(tiny_model_dir, deadline_hours=0.002, safety_margin_minutes=0, vote_reserve_minutes=0,
                                min_stage_seconds=30)  # no margins: a deadline within them is refused at load
    config, header, name = resolve_config(REPO / "kaggle" / "configs" / "local.yaml", overrides)
    result = run_local(config, tmp_path, timeout=300, header=header, name=name)
    assert result["error"] is None, result["error"]
    check_complete_submission(result)
    skipped = {r["stage"]: r.get("reason", "") for r in timing_records(result) if r["event"] == "skipped"}
    assert {"ttft", "sample", "vote"} <= set(skipped), skipped
    assert all(skipped[s].startswith("deadline") for s in ("ttft", "sample", "vote"))
    assert "skipped" in result["final_output"]  # the printed profile shows what was skipped
