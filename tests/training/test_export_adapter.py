"""export-adapter: a finetune run -> a 16-bit adapter folder that the normal loading path reads,
with its cfg.json, training facts summed over the log history, a loss curve and a model card."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from pipeline.training import finetune
from pipeline.training.export_adapter import main as export_main
from pipeline.core.models import load_model
from pipeline.core.model_cfg import config_encoder, config_prompt_version, find_run_config
from pipeline.training.lora import load_lora_model

from conftest import DATA


def test_exported_adapter_loads_and_matches_the_checkpoint_in_float16(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune.main([
        "--model_path", str(tiny_model_dir), "--train_datasets", str(DATA / "external" / "MINI-ARC.json"),
        "output-from-examples-v1", "--train_datasets", str(DATA / "external" / "MINI-ARC.json"),
        "input-from-inputs-v0", "--output_dir", str(run), "--max_steps", "4", "--batch_size", "2",
        "--max_seq_len", "1024", "--logging_steps", "2", "--eval_steps", "0", "--save_steps", "2", "--lora_r", "4",
        "--lora_alpha", "8", "--lora_target", "all-linear", "--no-verbose"]) == 0
    benchmark = tmp_path / "bench.md"
    benchmark.write_text("| row | vote_2 |\n|---|---|\n| adapter | 5.0 % |\n")
    output = tmp_path / "models" / "tiny-arc-lora"

    assert export_main([str(run), "--output", str(output), "--benchmark", str(benchmark)]) == 0
    assert "export-adapter:" in capsys.readouterr().out

    checkpoint = run / "checkpoint-4"
    saved, exported = load_file(str(checkpoint / "adapter_model.safetensors")), load_file(
        str(output / "adapter_model.safetensors"))
    assert saved.keys() == exported.keys() and all(v.dtype == torch.float16 for v in exported.values())
    assert all(torch.allclose(saved[k], exported[k].float(), rtol=1e-3, atol=1e-4) for k in saved)

    cfg, _ = find_run_config(output)
    assert config_encoder(cfg) == finetune.DEFAULT_ENCODER and config_prompt_version(cfg) == "output-from-examples-v1"
    model = load_lora_model(load_model(tiny_model_dir), output, trainable=False)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)

    facts = json.loads((output / "training.json").read_text())
    assert facts["steps"] == 4 and len(facts["train_loss"]) == 2
    assert facts["tokens_trained"] > 0 and facts["training_seconds"] > 0
    card = (output / "README.md").read_text()
    assert "4 optimizer steps of batch 2" in card and "| adapter | 5.0 % |" in card
    assert "as `input-from-inputs-v0`" in card and "No ARC-AGI-1 evaluation task is in it" in card
    assert (output / "loss.png").stat().st_size > 1000
    assert not list(output.parent.glob(".*tmp*"))


def test_a_run_without_checkpoints_is_a_one_line_error(tmp_path, capsys):
    assert export_main([str(tmp_path), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no complete LoRA checkpoint" in err and not (tmp_path / "out").exists()
