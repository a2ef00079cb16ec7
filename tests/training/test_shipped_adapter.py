"""The shipped ARC adapter: it loads onto the embedded model through the normal loading path, its
cfg.json matches its encoder and prompt version, and greedy decoding with it reproduces one small
training task's output exactly (a real-model end-to-end check)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.prompts import build_inference_prompt, parse_response
from pipeline.core.model_cfg import DEFAULT_PROMPT_VERSION, config_encoder, config_prompt_version, find_run_config, \
    shipped_adapter
from pipeline.core.tasks import load_tasks

from conftest import DATA

ADAPTER = shipped_adapter()
# A small training task (ConceptARC "Center", 302 prompt tokens) the shipped adapter solves
# greedily in the task's own view and the bare model does not (found after the export by
# decoding the 40 smallest single-test training tasks; checked again on every run).
SOLVED_TRAINING_TASK = "concept/Center2_2"


def test_the_adapter_is_a_small_16_bit_peft_lora_with_its_run_config():
    weights = load_file(str(ADAPTER / "adapter_model.safetensors"))
    assert weights and all(t.dtype == torch.float16 for t in weights.values())
    size = sum(p.stat().st_size for p in ADAPTER.iterdir()) / 2**20
    assert size <= 40, f"{size:.1f} MiB"
    cfg, path = find_run_config(ADAPTER)
    assert path == ADAPTER / "cfg.json"
    assert config_encoder(cfg) == DEFAULT_ENCODER and config_prompt_version(cfg) == DEFAULT_PROMPT_VERSION
    assert json.loads((ADAPTER / "adapter_config.json").read_text())["r"] == cfg["lora"]["r"]
    assert (ADAPTER / "README.md").is_file() and (ADAPTER / "loss.png").is_file()


@pytest.mark.slow
def test_greedy_decoding_with_the_adapter_solves_a_small_training_task(embedded_model_dir):
    from pipeline.sampling.generation import Request
    from pipeline.sampling.transformers_engine import TransformersEngine
    from pipeline.core.prompts import answer_stop

    task = load_tasks(DATA / "training" / "arc-train.json")[SOLVED_TRAINING_TASK]
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    engine = TransformersEngine(embedded_model_dir, batch_size=1)  # the sampling stage's loading path
    prompt = build_inference_prompt(task, encoder, engine.tokenizer, DEFAULT_PROMPT_VERSION)
    ids = tuple(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    [with_adapter] = engine.generate([Request(ids, 200, str(ADAPTER), stop=answer_stop(encoder))])
    [bare] = engine.generate([Request(ids, 200, None, stop=answer_stop(encoder))])
    engine.close()
    assert parse_response(with_adapter.text, encoder) == task["test"][0]["output"]
    assert bare.text != with_adapter.text  # the bare model does not: the answer is the adapter's
