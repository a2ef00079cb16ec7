"""The preflight (the GPUs, the devices the stages get, the GPU memory check), the accelerator in
kernel-metadata.json, and what a run leaves in run/ (pipeline/kaggle/preflight.py, outcomes.py).

    python -m pytest tests/kaggle/test_preflight.py -q

The GPUs are injected (`Probes`): a 4x L4 config on a machine with 2 GPUs runs real
subprocesses (the stand-in stages of test_kaggle_run) on the two, without a GPU here.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from notebook_builder.build import kernel_metadata, resolve_config
from pipeline.core.files import read_jsonl
from pipeline.core.settings import load_config
from pipeline.kaggle.preflight import (FRESH_LORA, GPU, KAGGLE_ACCELERATORS, hardware_warnings, machine_shape,
                                       memory_check, parse_nvidia_smi, probe_gpus, usable_devices, visible_gpus)
from pipeline.core.hardware import HARDWARE
from pipeline.planning.memory import ARCHITECTURES

from test_kaggle_run import fake_gpus, fake_run, hidden_set, submission_of

REPO = Path(__file__).resolve().parents[2]
FOUR = ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


# ----------------------------------------------------------------------------- the GPUs

def test_nvidia_smi_output_becomes_gpus_with_memory_and_bf16(monkeypatch):
    text = "0, Tesla T4, 15360, 7.5\n1, NVIDIA L4, 23034, 8.9\n"
    t4, l4 = parse_nvidia_smi(text)
    assert (t4.index, t4.name, t4.memory_mib, t4.bf16) == (0, "Tesla T4", 15360, False)
    assert l4.bf16 is True and l4.describe() == "cuda:1 NVIDIA L4, 22 GiB, bf16"
    assert GPU(0, "old", 1024).bf16 is None  # a driver without compute_cap: unknown, not guessed
    calls = []

    def old_driver(cmd, **kw):  # refuses the compute_cap field, answers without it
        calls.append(cmd[1])
        refused = "compute_cap" in cmd[1]
        return subprocess.CompletedProcess(cmd, 2 if refused else 0, "" if refused else "0, Tesla P100, 16280\n", "")
    [p100] = probe_gpus(old_driver)
    assert p100.name == "Tesla P100" and p100.compute_capability is None and len(calls) == 2

    def missing(cmd, **kw):
        raise FileNotFoundError("nvidia-smi")
    assert probe_gpus(missing) == []
    gpus = parse_nvidia_smi("0, A, 1, 8.0\n1, B, 1, 8.0\n2, C, 1, 8.0\n")
    assert [g.name for g in visible_gpus(gpus, {"CUDA_VISIBLE_DEVICES": "2,0"})] == ["C", "A"]
    assert [g.index for g in visible_gpus(gpus, {"CUDA_VISIBLE_DEVICES": "2,0"})] == [0, 1]  # as a stage numbers them
    assert visible_gpus(gpus, {}) == gpus


def test_fewer_gpus_than_devices_run_on_those_present_and_cpu_is_unchanged():
    assert usable_devices(FOUR, 4) == (tuple(FOUR), [])
    devices, [warning] = usable_devices(FOUR, 2)
    assert devices == ("cuda:0", "cuda:1") and "2 GPU(s) present, the config names 4" in warning
    assert usable_devices(["cuda:2", "cuda:3"], 1)[0] == ("cuda:0",)  # none of the named ones exists
    devices, [warning] = usable_devices(FOUR, 0)
    assert devices == ("cpu",) and warning.startswith("no GPU found")
    assert usable_devices(["cpu"], 0) == (("cpu",), []) and usable_devices(["cpu"], 4) == (("cpu",), [])


def test_another_gpu_kind_than_the_configs_hardware_is_a_warning():
    l4s = [GPU(i, "NVIDIA L4", 23034, "8.9") for i in range(4)]
    assert hardware_warnings("L4", l4s) == []
    [warning] = hardware_warnings("T4", l4s + [GPU(4, "Tesla T4")])
    assert warning.startswith("the config's hardware is T4 but this machine has NVIDIA L4:")
    assert hardware_warnings(None, l4s) == [] and hardware_warnings("cpu", l4s) == []
    assert hardware_warnings("H100", [GPU(0, "Some Future GPU")])  # unknown kind: not the H100


def test_a_4xl4_config_on_two_gpus_trains_and_samples_on_the_two_with_a_warning(kaggle_tree):
    """The stand-in TTFT is called with the two GPUs present (the real one would exit with
    "cuda:2 is not available"); sampling makes two shards, not four; summary.json says why."""
    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "ok"}, fake_gpus(2, "Tesla T4"), devices=FOUR, hardware="L4")
    assert run.results["preflight"].status == "ok" and run.devices == ("cuda:0", "cuda:1")
    working = kaggle_tree / "working"
    assert "--devices cuda:0,cuda:1 " in (working / "run" / "logs" / "ttft.log").read_text()
    assert sorted(p.name for p in (working / "run" / "logs").glob("sample.gpu*.log")) == ["sample.gpu0.log",
                                                                                          "sample.gpu1.log"]
    assert run.results["sample"].status == "ok"
    summary = json.loads((working / "run" / "summary.json").read_text())
    assert summary["devices"] == ["cuda:0", "cuda:1"]
    assert any("2 GPU(s) present, the config names 4" in w for w in summary["warnings"])
    assert any("hardware is L4 but this machine has Tesla T4" in w for w in summary["warnings"])
    [record] = [r for r in read_jsonl(working / "run" / "timing.jsonl") if r["stage"] == "preflight" and r["event"] == "end"]
    assert record["gpus"] == ["cuda:0 Tesla T4, 22 GiB, bf16", "cuda:1 Tesla T4, 22 GiB, bf16"]


def test_a_cpu_run_keeps_its_devices_and_warns_of_nothing(kaggle_tree):
    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "ok"}, fake_gpus(0))
    assert run.devices == ("cpu",) and run.warnings == []
    assert "--devices cpu " in (kaggle_tree / "working" / "run" / "logs" / "ttft.log").read_text()


# ----------------------------------------------------------------------------- GPU memory

def model_folder(tmp_path: Path, name: str) -> str:
    """A model folder holding only a named architecture's config.json (all the check reads)."""
    folder = tmp_path / "models" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(ARCHITECTURES[name]))
    return str(folder)


def test_on_four_l4s_ttft_gets_gradient_checkpointing_and_vllm_a_shorter_context(kaggle_tree, tmp_path):
    """Qwen3-4B, LoRA r 64 on every linear layer at 8,192 tokens, vLLM at 52 % of the card: the
    degraded settings reach the stage commands, and the run says why."""
    model = model_folder(tmp_path, "qwen3-4b")
    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "ok"}, fake_gpus(4), devices=FOUR, hardware="L4", model=model,
                   ttft_max_seq_len=8192, ttft_settings={"lora_r": 64, "lora_target": ["all-linear"]},
                   sample_settings={"gpu_memory_utilization": 0.52})
    logs = kaggle_tree / "working" / "run" / "logs"
    assert run.results["ttft"].status == "ok" and "--gradient_checkpointing" in (logs / "ttft.log").read_text()
    length = run.config.sample_settings["max_model_len"]
    assert 2048 <= length < 10240 and f"--max_model_len {length} " in (logs / "sample.gpu0.log").read_text()
    assert any("gradient checkpointing switched on" in w for w in run.warnings)
    assert any(f"max_model_len lowered to {length}" in w for w in run.warnings)
    [record] = [r for r in read_jsonl(kaggle_tree / "working" / "run" / "timing.jsonl")
                if r["stage"] == "preflight" and r["event"] == "end"]
    assert record["memory"]["gpu_gib"] == 22.0 and 0 < record["memory"]["ttft_gib"] <= 22.0


def test_on_t4s_the_nvarc_recipe_is_refused_by_name_and_the_fallback_stays(kaggle_tree, tmp_path):
    """NVARC's Qwen3-4B recipe on 2x T4: TTFT does not fit even checkpointed, vLLM's rank-256
    LoRA slots leave no KV cache: both fail at once with the reason; the submission is complete."""
    model = model_folder(tmp_path, "nvarc-qwen3-4b")
    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "ok"}, fake_gpus(2, "Tesla T4"), devices=FOUR[:2],
                   hardware="T4", model=model, ttft_max_seq_len=8192,
                   ttft_settings={"lora_r": 256, "lora_target": ["all-linear"]})
    assert run.results["ttft"].status == "failed" and run.results["ttft"].reason.startswith("GPU memory: TTFT needs")
    assert "even with gradient checkpointing" in run.results["ttft"].reason
    assert run.results["sample"].status == "failed" and "vLLM's KV cache holds" in run.results["sample"].reason
    assert not (kaggle_tree / "working" / "run" / "logs" / "ttft.log").exists()
    assert submission_problems_of(kaggle_tree) == []


def submission_problems_of(tree: Path) -> list:
    from pipeline.core.submission import submission_problems
    return submission_problems(submission_of(tree), hidden_set(tree))


def test_on_a_t4_the_math_attention_kernel_switches_gradient_checkpointing_on(tmp_path):
    """arc24's recipe (Qwen2.5-0.5B, LoRA r 128, fp16, 5,120 tokens) on a compute-capability-7.5
    card: grouped KV heads run on SDPA's math kernel, named, and TTFT is checkpointed."""
    model = model_folder(tmp_path, "qwen2.5-0.5b")
    config = load_config({"model": model, "ttft_max_seq_len": 5120, "sample_settings": {"dtype": "float16"},
                          "ttft_settings": {"torch_dtype": "float16", "lora_r": 128}})
    check = memory_check(config, model, None, [GPU(0, "Tesla T4", 15360, "7.5"), GPU(1, "Tesla T4", 15360, "7.5")])
    assert any(line.startswith("attention: compute capability 7.5") for line in check.lines)
    assert check.config.ttft_settings["gradient_checkpointing"] is True and not check.refused
    l4 = memory_check(config, model, None, [GPU(0, "NVIDIA L4", 23034, "8.9")])  # flash kernel: fits as it is
    assert "gradient_checkpointing" not in l4.config.ttft_settings and not l4.warnings


def test_the_memory_check_says_what_it_did_not_check_and_keeps_the_config(tmp_path):
    config = load_config({"model": "/nowhere"})
    assert memory_check(config, "/nowhere", None, []).lines == ("not checked: no GPU memory known",)
    check = memory_check(config, "/nowhere", None, [GPU(0, "NVIDIA L4", 23034, "8.9")])
    assert check.config is config and check.lines[0].startswith("not checked: /nowhere: neither a named architecture")
    # an unknown GPU kind: nvidia-smi's memory; the embedded model fits it
    check = memory_check(load_config({}), "embedded", None, [GPU(0, "Future GPU", 40960, "9.0")])
    assert check.record["gpu_gib"] == 40.0 and not check.warnings and not check.refused


def test_the_fresh_loras_defaults_are_the_trainers():
    from pipeline.training.lora import LORA, LORA_TARGET_PRESETS

    assert (LORA.r, LORA.dropout) == (FRESH_LORA["lora_r"], FRESH_LORA["lora_dropout"])
    assert LORA.target_modules == LORA_TARGET_PRESETS[FRESH_LORA["lora_target"][0]]


# ----------------------------------------------------------------------------- kernel-metadata.json

def test_kernel_metadata_names_the_accelerator_of_the_configs_hardware():
    for name, shape, user in (("arc-prize-2024", "NvidiaTeslaT4", "someone"), ("arc-prize-2025", "NvidiaL4", "x"),
                              ("arc-prize-2026-arc-agi-2", "NvidiaL4", "x")):
        config, _, _ = resolve_config(REPO / "kaggle" / "configs" / f"{name}.yaml")
        meta = kernel_metadata(config, user, f"build/{name}.ipynb")
        assert meta["machine_shape"] == shape and meta["enable_gpu"] is True, name
    wheels, _, _ = resolve_config(REPO / "kaggle" / "configs" / "wheels.yaml")
    meta = kernel_metadata(wheels, "x", "wheels.ipynb")
    assert "machine_shape" not in meta and meta["enable_gpu"] is False and meta["enable_internet"] is True
    assert set(KAGGLE_ACCELERATORS) <= set(HARDWARE)  # one set of hardware names (the planner's)
    assert machine_shape("Tesla T4") == "NvidiaTeslaT4" and machine_shape("cpu") is None
    assert machine_shape("H100", override="NvidiaL4X1") == "NvidiaL4X1"
    with pytest.raises(ValueError, match="'H200' has no Kaggle accelerator.*set kaggle_accelerator"):
        machine_shape("H200")


def test_kernel_metadata_attaches_kaggle_models_and_refuses_a_malformed_one():
    config = load_config({"hardware": "H100", "kaggle_models": ["{user}/nvarc-qwen3-4b/transformers/default/1"],
                          "kaggle_accelerator": None})
    meta = kernel_metadata(config, "me", "run.ipynb")
    assert meta["model_sources"] == ["me/nvarc-qwen3-4b/transformers/default/1"]
    assert meta["machine_shape"] == "NvidiaH100"
    with pytest.raises(ValueError, match="'kaggle_models': 'me/nvarc-qwen3-4b' is not owner/model/framework"):
        load_config({"kaggle_models": ["me/nvarc-qwen3-4b"]})
    # no hardware: the planner's rule (cpu devices -> no GPU)
    meta = kernel_metadata(load_config({"devices": ["cpu"]}), "me", "run.ipynb")
    assert meta["enable_gpu"] is False and "machine_shape" not in meta


# ----------------------------------------------------------------------------- after the run

def test_summary_lists_the_inputs_left_on_the_fallback_and_each_tasks_outcomes(kaggle_tree):
    """Every stage answered: nothing on the fallback, each task's outcome per stage (a sampler
    that hung half-way: test_kaggle_run). TTFT's records are kept in run/ttft/, not its weights."""
    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "ok", "vote": "ok"}, fake_gpus(0))
    assert run.results["vote"].status == "ok"
    working = kaggle_tree / "working"
    summary = json.loads((working / "run" / "summary.json").read_text())
    assert summary["on_fallback"] == {} and summary["on_fallback_count"] == 0 and summary["test_inputs"] == 4
    outcomes = summary["task_outcomes"]
    assert set(outcomes) == set(hidden_set(kaggle_tree))
    for task_id, outcome in outcomes.items():
        n_inputs = len(hidden_set(kaggle_tree)[task_id]["test"])
        assert outcome == {"worked": True, "first_shot": 0, "ttft": "done", "sample": 3 * n_inputs, "on_fallback": []}
    kept = working / "run" / "ttft"
    assert (kept / "summary.json").is_file()
    for task_id in outcomes:
        assert json.loads((kept / "adapters" / task_id / "record.json").read_text())["status"] == "done"
        assert not (kept / "adapters" / task_id / "adapter_model.safetensors").exists()  # weights stay in scratch


def test_inputs_no_stage_answered_are_listed_as_on_the_fallback(kaggle_tree):
    run = fake_run(kaggle_tree, {"ttft": "fail", "sample": "fail"}, fake_gpus(0))
    assert run.results["vote"].status == "skipped"
    summary = json.loads((kaggle_tree / "working" / "run" / "summary.json").read_text())
    challenges = hidden_set(kaggle_tree)
    assert summary["on_fallback"] == {t: list(range(len(task["test"]))) for t, task in challenges.items()}
    assert summary["on_fallback_count"] == 4
    assert all(o["ttft"] == "no record" and o["sample"] == 0 for o in summary["task_outcomes"].values())
    assert submission_of(kaggle_tree)  # the fallback stands
