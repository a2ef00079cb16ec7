"""`ttft --full_finetune` (issue 25): no LoRA, every weight trained per task, the task's weights
saved as their bf16 difference from the base model; the transformers engine serves them (and
restores the base bit for bit), vLLM refuses them in one line.  The tiny random Llama, one task."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.core import adapters
from pipeline.core.tasks import task_size
from pipeline.sampling.engines import make_engine
from pipeline.sampling.generation import Request
from pipeline.sampling.transformers_engine import TransformersEngine
from pipeline.ttft import ttft

REPO = Path(__file__).resolve().parents[2]
EVAL = REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, eval_tasks):
    """One task fully fine-tuned: one augmented copy trained 6 epochs (the same sample every step,
    so the loss must fall)."""
    task_id = min((t for t in eval_tasks if len(eval_tasks[t]["train"]) >= 2),
                  key=lambda t: (task_size(eval_tasks[t]), t))
    out = tmp_path_factory.mktemp("full")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = ttft.main(["--model", str(tiny_model_dir), "--dataset", str(EVAL), "--task_ids", task_id,
                          "--output_dir", str(out), "--copies", "1", "--epochs", "6", "--learning_rate", "1e-3",
                          "--warmup_ratio", "0", "--max_seq_len", "1024", "--full_finetune", "--devices", "cpu",
                          "--no_progress", "--torch_dtype", "float32"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out, task_id


def test_every_weight_trains_the_loss_falls_and_the_task_weights_are_saved_as_a_delta(trained, tiny_model_dir):
    out, task_id = trained
    folder = adapters.adapter_dir(out, task_id)
    record = adapters.read_record(out, task_id)
    assert record["status"] == "done" and record["steps"] == 6 and record["lora"] is None
    losses = [loss for _, loss in record["loss_curve"]]
    assert len(losses) == 6 and all(b < a for a, b in zip(losses, losses[1:])), losses  # it memorises the copy
    assert json.loads((folder / "cfg.json").read_text())["full_finetune"] is True
    assert not (folder / "adapter_config.json").exists() and adapters.is_complete(out, task_id)
    delta = adapters.full_delta(folder)
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), torch_dtype=torch.float32)
    names = {n for n, _ in base.named_parameters()}
    assert set(delta) == names and all(d.dtype == torch.bfloat16 for d in delta.values())
    assert all(d.abs().max() > 0 for d in delta.values())  # every weight moved (MLP, attention, norms, embedding)


def test_the_transformers_engine_serves_the_task_weights_and_restores_the_base(trained, tiny_model_dir, tokenizer):
    out, task_id = trained
    folder = str(adapters.adapter_dir(out, task_id))
    engine = TransformersEngine(tiny_model_dir, dtype="float32", device="cpu")
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    prompt = torch.tensor([tokenizer.encode("0 1 2\n3 4 5\n", add_special_tokens=False)])
    with torch.no_grad():
        base_logits = engine.model(prompt).logits
        with engine.serving(folder) as model:
            served = model(prompt).logits
    # what the task's weights are: the base plus the saved difference
    from transformers import AutoModelForCausalLM
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), torch_dtype=torch.float32)
    delta = adapters.full_delta(folder)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.add_(delta[name].float())
        expected = reference(prompt).logits
    assert torch.allclose(served, expected, atol=1e-5) and not torch.allclose(served, base_logits, atol=1e-3)
    assert all(torch.equal(p, before[n]) for n, p in engine.model.named_parameters())  # bit for bit
    [completion] = engine.generate([Request(tuple(prompt[0].tolist()), 4, adapter=folder)])
    assert len(completion.token_ids) >= 1


def test_vllm_refuses_full_task_weights_in_one_line(trained, tiny_model_dir):
    out, task_id = trained
    folder = str(adapters.adapter_dir(out, task_id))
    with pytest.raises(ValueError, match=r"full fine-tuned task weights .* not served by vLLM.*--engine transformers"):
        make_engine("vllm", tiny_model_dir, adapters=[folder])


def test_full_finetune_with_a_lora_setting_is_refused(tmp_path, tiny_model_dir, capsys):
    code = ttft.main(["--model", str(tiny_model_dir), "--dataset", str(EVAL), "--output_dir", str(tmp_path / "o"),
                      "--full_finetune", "--lora_r", "8", "--devices", "cpu"])
    assert code == 1
    assert "--full_finetune trains every weight, no LoRA: --lora_r" in capsys.readouterr().err
