"""The shared training core: LoRA helpers, encoding, collator, loss, trainer.
`python -m pytest tests/test_training.py`

All on the conftest tiny model (2 layers, hidden 128) and the real SmolLM2 tokenizer.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.prompts import PromptSample, build_inference_prompt, build_train_sample
from pipeline.training.lora import (LoraSettings, build_lora_model, load_lora_model, lora_settings_of,
                                   restore_trainable_state, trainable_state)
from pipeline.training.trainer import (IGNORE_INDEX, LOSS_REDUCTIONS, CompletionCollator, CompletionTrainer,
                                      TrainerCallback, completion_loss, encode_sample, loss_normalizer,
                                      training_arguments)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from pipeline.core.models import load_model
    return load_model(tiny_model_dir)


def fresh_lora(model, **overrides):
    settings = LoraSettings(**{"r": 4, "dropout": 0.0, **overrides})
    return build_lora_model(copy.deepcopy(model), settings)


# ----------------------------------------------------------------------------- LoRA

def test_lora_defaults_are_real_booleans_with_dora_off():
    s = LoraSettings()
    assert (s.r, s.alpha, s.dropout, s.target_modules) == (32, 64, 0.1, ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert s.use_rslora is True and s.use_dora is False
    assert s.to_dict()["use_dora"] is False
    with pytest.raises(TypeError, match="use_dora"):
        LoraSettings(use_dora=(True,))  # the original's trailing-comma bug


def test_build_lora_model_applies_the_settings(tiny_model):
    model = fresh_lora(tiny_model, r=8, alpha=16, target_modules=("q_proj", "v_proj"))
    config = model.peft_config["default"]
    assert config.r == 8 and config.lora_alpha == 16 and config.use_rslora is True and config.use_dora is False
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert lora_settings_of(model).target_modules == ("q_proj", "v_proj")


def test_build_lora_model_rejects_absent_modules(tiny_model):
    with pytest.raises(ValueError, match="qkv_proj.*linear and embedding layers are:.*down_proj.*embed_tokens"):
        fresh_lora(tiny_model, target_modules=("q_proj", "qkv_proj"))


def test_a_lora_on_the_embedding_and_the_head_trains_both_through_the_tied_weight(tiny_model):
    """NVARC's TTFT LoRA (`all-linear+embeddings`) on the tiny model, whose head is tied to its
    embedding: both get a LoRA of their own, both get gradients, the shared base weight none."""
    from pipeline.training.lora import lora_target_modules

    targets = lora_target_modules(["all-linear+embeddings"])
    assert {"embed_tokens", "lm_head", "q_proj", "down_proj"} <= set(targets)
    model = fresh_lora(tiny_model, target_modules=targets)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25]])
    model(input_ids=ids, labels=ids).loss.backward()
    for module in ("embed_tokens", "lm_head"):
        grads = [p.grad for n, p in trainable.items() if f"{module}." in n]
        assert len(grads) == 2, f"{module}: one A and one B factor"
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{module} gets no gradient"
    base = model.get_base_model().get_input_embeddings()
    assert base.base_layer.weight.grad is None and not base.base_layer.weight.requires_grad


def test_load_lora_model_continues_the_saved_adapter(tiny_model, tmp_path):
    model = fresh_lora(tiny_model, r=8, alpha=32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    saved = trainable_state(model)
    model.save_pretrained(tmp_path)
    loaded = load_lora_model(copy.deepcopy(tiny_model), tmp_path, trainable=True)
    state = trainable_state(loaded)
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert lora_settings_of(loaded).r == 8 and lora_settings_of(loaded).alpha == 32
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_lora_model(copy.deepcopy(tiny_model), tmp_path / "nowhere")


def test_trainable_state_restores_the_adapter_exactly(tiny_model):
    model = fresh_lora(tiny_model)
    before = trainable_state(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    assert not all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    restore_trainable_state(model, before)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(KeyError, match="does not match"):
        restore_trainable_state(model, {k: v for k, v in list(before.items())[1:]})


# ----------------------------------------------------------------------------- encoding

def test_labels_cover_exactly_the_completion_tokens(tokenizer, training_tasks):
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    task = training_tasks["6150a2bd"]
    for version in ("output-from-examples-v1", "input-from-inputs-v0"):
        sample = build_train_sample(task, encoder, tokenizer, version)
        encoded = encode_sample(tokenizer, sample, weight=2.5)
        ids, labels = encoded["input_ids"], encoded["labels"]
        prompt_ids = tokenizer(build_inference_prompt(task, encoder, tokenizer, version), add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(sample.completion, add_special_tokens=False)["input_ids"]
        n_prompt = len(prompt_ids)
        assert ids[:n_prompt] == prompt_ids  # exactly what inference conditions on
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:] == completion_ids
        assert tokenizer.decode(ids[n_prompt:]) == sample.completion
        assert ids[-1] == tokenizer.eos_token_id  # the end-of-turn token is trained
        assert encoded["weight"] == 2.5


def test_collator_right_pads_with_masked_labels():
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "weight": 2.0},
                {"input_ids": [8], "labels": [8], "weight": 0.5}]
    batch = CompletionCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["weight"].tolist() == [2.0, 0.5]
    assert CompletionCollator(0, pad_to_multiple_of=8)(features)["input_ids"].shape == (2, 8)


# ----------------------------------------------------------------------------- loss

def test_completion_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 5]])
    weights = torch.tensor([2.0, 0.5])
    ce = [[torch.nn.functional.cross_entropy(logits[i, t - 1], labels[i, t]).item()
           for t in range(1, 5) if labels[i, t] != -100] for i in range(2)]
    token = (2.0 * sum(ce[0]) + 0.5 * sum(ce[1])) / (2.0 * 2 + 0.5 * 4)
    sample = (2.0 * sum(ce[0]) / 2 + 0.5 * sum(ce[1]) / 4) / (2.0 + 0.5)
    for reduction, expected in (("token", token), ("sample", sample)):
        normalizer = loss_normalizer(labels, weights, reduction)
        assert completion_loss(logits, labels, weights, reduction, normalizer).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="known: sample, token"):
        completion_loss(logits, labels, weights, "mean", 1.0)


class CaptureGradients(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("reduction", LOSS_REDUCTIONS)
def test_gradient_accumulation_is_exact(reduction, tiny_model, tokenizer, tmp_path):
    """One optimizer step of 4 samples: per-device 1 × GA 4 == per-device 4 × GA 1 == the loss
    of the whole batch computed by hand (proves the normalizer and that GA scaling is applied once)."""
    shapes = [(5, 3, 1.0), (9, 7, 2.0), (2, 1, 0.5), (12, 20, 1.0)]  # prompt words, answer words, weight
    samples = [encode_sample(tokenizer, PromptSample("grid " * n, "1 0\n" * m + "<|im_end|>"), w) for n, m, w in shapes]
    base = fresh_lora(tiny_model)
    collator = CompletionCollator(tokenizer.pad_token_id)
    grads, logs = {}, {}
    for per_device in (1, 4):
        model = copy.deepcopy(base)
        capture = CaptureGradients()
        args = training_arguments(tmp_path / f"pd{per_device}", max_steps=1, batch_size=4,
                                  per_device_batch_size=per_device, warmup_ratio=0.0, logging_steps=1,
                                  use_cpu=True, max_grad_norm=0.0, disable_tqdm=True)
        trainer = CompletionTrainer(model=model, args=args, train_dataset=samples, data_collator=collator,
                                    processing_class=tokenizer, loss_reduction=reduction, callbacks=[capture])
        trainer.train()
        grads[per_device], logs[per_device] = capture.grads, trainer.state.log_history[0]
    model = copy.deepcopy(base)
    batch = collator(samples)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = completion_loss(logits, batch["labels"], batch["weight"], reduction,
                           loss_normalizer(batch["labels"], batch["weight"], reduction))
    loss.backward()
    manual = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, grad in manual.items():
        torch.testing.assert_close(grads[1][name], grad, atol=2e-5, rtol=1e-3)
        torch.testing.assert_close(grads[4][name], grad, atol=2e-5, rtol=1e-3)
    assert logs[1]["loss"] == pytest.approx(loss.item(), rel=1e-4)
    assert logs[4]["loss"] == pytest.approx(loss.item(), rel=1e-4)
    assert logs[1]["padded_share"] == 0.0 and 0.3 < logs[4]["padded_share"] < 0.7
    assert logs[1]["tok_per_s"] > 0


# ----------------------------------------------------------------------------- arguments

def test_training_arguments(tmp_path):
    args = training_arguments(tmp_path, max_steps=10, batch_size=16, per_device_batch_size=2, n_processes=2,
                              lr_scheduler_type="constant", eval_steps=5, use_cpu=True)
    assert args.gradient_accumulation_steps == 4
    assert args.lr_scheduler_type == "constant_with_warmup"  # plain "constant" would ignore the warmup
    assert args.get_warmup_steps(100) == 5
    assert (args.eval_strategy, args.eval_steps, args.save_strategy, args.save_steps) == ("steps", 5, "steps", 5)
    assert args.ignore_data_skip and not args.remove_unused_columns and args.prediction_loss_only
    assert args.accelerator_config.dispatch_batches is False
    none = training_arguments(tmp_path, max_steps=10, batch_size=1, use_cpu=True)
    assert none.eval_strategy == "no" and none.save_strategy == "no"
    with pytest.raises(ValueError, match="multiple of per_device_batch_size 4"):
        training_arguments(tmp_path, max_steps=1, batch_size=6, per_device_batch_size=4, use_cpu=True)
