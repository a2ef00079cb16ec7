"""The GPU memory model (pipeline/planning/memory.py) against real tensors on this CPU.

    python -m pytest -q tests/planning/test_memory.py

* Parameter, gradient and AdamW-state bytes are exact: tiny random Llama / Qwen2 / Qwen3 models
  with a peft LoRA (ranks, targets, with and without the embeddings) or fully trained, one real
  optimizer step, every tensor counted.
* The named architectures' parameters by kind equal a model built from their config on the meta
  device (no memory), and the model cards' published totals.
* Saved activations: the bytes of the tensors autograd saves for the backward pass
  (`torch.autograd.graph.saved_tensors_hooks`, each storage once, parameters left out), for a
  float32 step and a bf16 autocast step, at two sequence lengths, within `TOLERANCE`; with
  gradient checkpointing (whose layers save through hooks of their own) the heap's growth.
* The published facts: NVARC's recipe does not fit a T4, fits an L4 with gradient checkpointing;
  arc24's 0.5B TTFT fits a T4; a KV cache is the formula's size.
"""
from __future__ import annotations

import pytest

from pipeline.core.hardware import HARDWARE
from pipeline.planning.memory import (ARCHITECTURES, GIB, LINEAR_MODULES, ModelShape, ShapeError, attention_kernel,
                                      model_shape, resolve_lora_targets, sampling_memory, ttft_memory,
                                      vllm_max_num_seqs)

# Saved activations are modelled tensor by tensor; what is left out is a few bytes per token
# (position ids, index tensors, the first layer's partly untrained inputs). Measured 2026-12-06
# (torch 2.13 CPU, transformers 5.19, peft 0.21): within 0.4 % without LoRA dropout, 4-5 % with it
# (the CPU's dropout keeps float32 noise where CUDA keeps a 1-byte mask: corrected below as 3
# bytes per LoRA input, which the CPU's deduplicated inputs make a slight overcount).
TOLERANCE = 0.06
VOCAB = 512  # the tiny models' vocabulary: small, so the loss's logits do not hide the layers


def tiny(arch: str, dtype, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    from devtools.random_models import tiny_config

    config = tiny_config(arch, vocab_size=VOCAB, **{"num_hidden_layers": 3, "tie_word_embeddings": arch != "qwen2",
                                                    **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model, ModelShape.from_config(config.to_dict(), arch)


def with_lora(model, r: int, targets, embeddings: bool, dropout: float):
    import peft

    modules = list(targets) + (["embed_tokens", "lm_head"] if embeddings else [])
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=modules, bias="none",
                             task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def step_tensors(model, seq_len: int) -> dict:
    """One training step (forward, backward, AdamW step): the bytes of every kind of tensor."""
    import torch

    ids = torch.randint(0, VOCAB, (1, seq_len))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=False)
    optimizer.step()
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    return {"weights": sum(size(p) for p in model.parameters() if not p.requires_grad),
            "trainable": sum(size(p) for p in trainable), "gradients": sum(size(p.grad) for p in trainable),
            "optimizer": sum(size(v) for state in optimizer.state.values() for k, v in state.items() if k != "step"),
            "parameters": sum(p.numel() for p in trainable)}


LORA_CASES = [  # (arch, rank, targets, embeddings)
    ("llama", 8, ("q_proj", "v_proj"), False),
    ("qwen2", 4, LINEAR_MODULES, True),
    ("qwen3", 16, ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"), True),
]


@pytest.mark.parametrize("arch,r,targets,embeddings", LORA_CASES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_lora_parameter_gradient_and_adamw_bytes_are_the_tensors_sizes(arch, r, targets, embeddings, dtype):
    """peft keeps a 16-bit model's adapter in float32 (its autocast_adapter_dtype default): the
    model's LORA_PARAM_BYTES, checked here with the real peft."""
    import torch

    model, shape = tiny(arch, getattr(torch, dtype))
    measured = step_tensors(with_lora(model, r, targets, embeddings, 0.0), 16)
    estimate = ttft_memory(shape, dtype=dtype, lora_r=r, lora_targets=targets, train_embeddings=embeddings, seq_len=16)
    assert estimate.details["trainable_parameters"] == measured["parameters"]
    assert (estimate.weights, estimate.trainable, estimate.gradients, estimate.optimizer) == (
        measured["weights"], measured["trainable"], measured["gradients"], measured["optimizer"])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_full_finetuning_bytes_are_the_tensors_sizes(arch, dtype):
    import torch

    model, shape = tiny(arch, getattr(torch, dtype), tie_word_embeddings=arch == "llama")
    measured = step_tensors(model, 16)
    estimate = ttft_memory(shape, dtype=dtype, full_finetune=True, seq_len=16)
    assert measured["weights"] == 0 and measured["parameters"] == shape.total
    assert (estimate.weights, estimate.trainable, estimate.gradients, estimate.optimizer) == (
        measured["trainable"], 0, measured["gradients"], measured["optimizer"])


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_named_architectures_count_the_parameters_of_the_model_they_build(name):
    """Built on the meta device (shapes only), from the one table devtools' benchmarks build from."""
    import torch
    from transformers import AutoModelForCausalLM

    from devtools.random_models import architecture_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture_config(name))
    shape = model_shape(name)
    kinds = {"embeddings": 0, "lm_head": 0, "attention": 0, "mlp": 0, "norms": 0}
    for param_name, p in model.named_parameters():  # tied: lm_head.weight is not listed twice
        kind = ("embeddings" if "embed_tokens" in param_name else "lm_head" if "lm_head" in param_name else
                "norms" if "norm" in param_name else "attention" if "self_attn" in param_name else "mlp")
        kinds[kind] += p.numel()
    assert kinds == {k: getattr(shape, k) for k in kinds}
    assert sum(kinds.values()) == shape.total == sum(p.numel() for p in model.parameters())
    published = {"qwen2.5-0.5b": 0.49e9, "qwen2.5-1.5b": 1.54e9, "qwen3-4b": 4.02e9, "qwen3-1.7b": 1.72e9,
                 "smollm2-135m": 0.135e9, "nvarc-qwen3-4b": 4.02e9 - 151920 * 2560}  # model cards; 16 tokens
    assert shape.total == pytest.approx(published[name], rel=0.01)


def saved_activation_bytes(model, seq_len: int, logits_tokens: int, autocast: bool, kernel: str = "flash") -> int:
    """Bytes of what autograd saves in one forward pass of the trainer's loss (the completion's
    logits only), each storage once, parameters left out."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pipeline.training.trainer import completion_loss

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (1, seq_len), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[:, seq_len - logits_tokens + 1:] = ids[:, seq_len - logits_tokens + 1:]
    model.train()
    math = sdpa_kernel(SDPBackend.MATH) if kernel == "math" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), math, \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=logits_tokens, use_cache=False)
        loss = completion_loss(out.logits, labels[:, seq_len - logits_tokens:], torch.ones(1), "sample", 1.0)
    loss.backward()
    return sum(storages.values())


ACTIVATION_CASES = [  # (arch, mode, dtype): the stages' LoRA and full fine-tuning, float32 and bf16 autocast
    ("llama", "lora", "float32"), ("qwen2", "lora-dropout", "float32"), ("qwen3", "lora", "float32"),
    ("qwen3", "lora-dropout", "bfloat16"), ("llama", "lora-embeddings", "bfloat16"), ("qwen2", "full", "float32"),
    ("qwen3", "full", "float32"), ("qwen2", "lora-math", "float32"),
]


@pytest.mark.parametrize("arch,mode,dtype", ACTIVATION_CASES)
def test_saved_activations_are_the_models_count_within_the_tolerance(arch, mode, dtype):
    import torch

    model, shape = tiny(arch, getattr(torch, dtype))
    dropout = 0.1 if mode == "lora-dropout" else 0.0
    if mode != "full":
        model = with_lora(model, 8, LINEAR_MODULES, mode == "lora-embeddings", dropout)
    for seq_len in (128, 512):
        logits_tokens = seq_len // 4
        kernel = "math" if mode == "lora-math" else "flash"  # math: what a T4 runs (attention_kernel)
        measured = saved_activation_bytes(model, seq_len, logits_tokens, autocast=dtype != "float32", kernel=kernel)
        estimate = ttft_memory(shape, dtype=dtype, lora_r=8, lora_targets=LINEAR_MODULES,
                               train_embeddings=mode == "lora-embeddings", full_finetune=mode == "full",
                               lora_dropout=dropout, seq_len=seq_len, logits_tokens=logits_tokens, attention=kernel)
        modelled = estimate.details["saved"] + estimate.details["autocast_copies"]
        if dropout:  # CUDA's fused dropout keeps a 1-byte mask; the CPU's keeps the float32 noise it multiplied
            modelled += 3 * sum(i for i, _ in shape.linear_shapes().values()) * shape.num_layers * seq_len
        assert modelled == pytest.approx(measured, rel=TOLERANCE), (seq_len, modelled, measured)


def heap_bytes() -> int | None:
    """Bytes glibc's malloc has handed out (mallinfo2: heap + mmapped), None elsewhere."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def retained_after_forward(model, seq_len: int, logits_tokens: int) -> int:
    """Heap bytes one forward pass (the trainer's loss) leaves alive for the backward pass."""
    import gc

    import torch

    from pipeline.training.trainer import completion_loss

    ids = torch.randint(0, VOCAB, (1, seq_len), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, -100)
    labels[:, seq_len - logits_tokens + 1:] = ids[:, seq_len - logits_tokens + 1:]
    gc.collect()
    before = heap_bytes()
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=logits_tokens, use_cache=False)
    loss = completion_loss(out.logits, labels[:, seq_len - logits_tokens:], torch.ones(1), "sample", 1.0)
    del out
    gc.collect()
    retained = heap_bytes() - before
    loss.backward()
    model.zero_grad(set_to_none=True)
    return retained


@pytest.mark.skipif(heap_bytes() is None, reason="needs glibc's mallinfo2")
def test_gradient_checkpointing_keeps_one_hidden_state_per_layer_and_token():
    """Checkpointed layers save through their own hooks, so the heap tells what a forward pass
    leaves alive: its growth from 512 to 2,048 tokens (which cancels the allocator's own bytes)
    against the model's saved bytes less the one layer recomputed during the backward pass."""
    import torch

    model, shape = tiny("qwen3", torch.float32, num_hidden_layers=4)
    model = with_lora(model, 8, LINEAR_MODULES, False, 0.0)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()  # as the trainer does for a LoRA with checkpointing
    grown, modelled = [], []
    for seq_len in (512, 2048):
        grown.append(retained_after_forward(model, seq_len, seq_len // 4))
        estimate = ttft_memory(shape, dtype="float32", lora_r=8, lora_targets=LINEAR_MODULES, seq_len=seq_len,
                               logits_tokens=seq_len // 4, gradient_checkpointing=True)
        modelled.append(estimate.details["saved"] - estimate.details["layer_bytes_per_token"] * seq_len)
    assert modelled[1] - modelled[0] == pytest.approx(grown[1] - grown[0], rel=0.05)
    plain = ttft_memory(shape, dtype="float32", lora_r=8, lora_targets=LINEAR_MODULES, seq_len=2048)
    assert plain.details["saved"] > 3 * modelled[1]


def test_a_kv_cache_is_the_formulas_size():
    import torch

    model, shape = tiny("qwen3", torch.float32)
    with torch.no_grad():
        cache = model(input_ids=torch.zeros((2, 40), dtype=torch.long), use_cache=True).past_key_values
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    assert sum(t.numel() * t.element_size() for t in tensors) == 2 * 40 * shape.kv_bytes_per_token("float32")
    estimate = sampling_memory(shape, engine="transformers", dtype="float32", max_model_len=40, max_num_seqs=2)
    assert estimate.kv_cache == 2 * 40 * shape.kv_bytes_per_token("float32")


# ----------------------------------------------------------------------------- the published facts

def nvarc(hardware: str, gradient_checkpointing: bool):
    """NVARC's TTFT: Qwen3-4B with its 16-token vocabulary, bf16, LoRA r 256 on every linear layer and
    the embeddings and LM head, batch 1, sequences up to 8,192 (anchors.md, section 12)."""
    estimate = ttft_memory(model_shape("nvarc-qwen3-4b"), dtype="bfloat16", lora_r=256, lora_targets="all-linear",
                           train_embeddings=True, seq_len=8192, gradient_checkpointing=gradient_checkpointing)
    return estimate, estimate.fits(HARDWARE[hardware].memory_bytes)


def test_the_nvarc_recipe_does_not_fit_a_t4_and_fits_an_l4_with_gradient_checkpointing():
    """Published: it fits an L4 (NVARC's unsloth kernels) and runs out of memory on a T4 (users'
    logs). This pipeline's HF layers and peft save ~173 KB per token and layer: at 8,192 tokens
    they fit an L4 only with gradient checkpointing (the run's preflight switches it on)."""
    assert not nvarc("T4", False)[1] and not nvarc("T4", True)[1]
    estimate, fits = nvarc("L4", True)
    assert fits and estimate.total > 0.8 * HARDWARE["L4"].memory_bytes
    assert not nvarc("L4", False)[1]
    # the weights, adapter, gradients and AdamW states alone exceed a T4 (float32 adapter)
    static = estimate.weights + estimate.trainable + estimate.gradients + estimate.optimizer
    assert static > HARDWARE["T4"].memory_bytes - estimate.overhead


def test_arc24s_half_billion_ttft_fits_a_t4():
    """arc24: Qwen2.5-0.5B, LoRA r 128 on q/k/v/o (dropout 0.1), fp16, max_seq_len 5120 on a T4."""
    estimate = ttft_memory(model_shape("qwen2.5-0.5b"), dtype="float16", lora_r=128, lora_targets="attention",
                           lora_dropout=0.1, seq_len=5120, logits_tokens=1024)
    assert estimate.fits(HARDWARE["T4"].memory_bytes)


def test_on_a_t4_grouped_attention_runs_on_the_math_kernel_and_needs_checkpointing():
    """No flash kernel below compute capability 8.0, and the memory-efficient one takes no grouped
    KV heads: arc24's T4 TTFT (which repeated the KV heads itself) fits; this pipeline's needs
    gradient checkpointing there (the preflight switches it on)."""
    shape = model_shape("qwen2.5-0.5b")
    assert (attention_kernel(shape, 7.5), attention_kernel(shape, 8.9), attention_kernel(shape, None)) == (
        "math", "flash", "flash")
    assert attention_kernel(ModelShape.from_config({**ARCHITECTURES["qwen2.5-0.5b"], "num_key_value_heads": 14}),
                            7.5) == "flash"  # no grouping: the memory-efficient kernel takes it
    t4 = HARDWARE["T4"].memory_bytes
    recipe = dict(dtype="float16", lora_r=128, lora_targets="attention", lora_dropout=0.1, seq_len=5120,
                  logits_tokens=1024)
    flash, math = ttft_memory(shape, **recipe), ttft_memory(shape, attention="math", **recipe)
    assert math.activations - flash.activations >= shape.num_layers * shape.num_heads * 5120 ** 2 * 2
    assert flash.fits(t4) and not math.fits(t4)
    assert ttft_memory(shape, attention="math", gradient_checkpointing=True, **recipe).fits(t4)


def test_vllm_keeps_room_for_its_kv_cache_under_gpu_memory_utilization():
    shape, l4 = model_shape("qwen3-4b"), HARDWARE["L4"].memory_bytes
    estimate = sampling_memory(shape, engine="vllm", max_model_len=8192, max_num_seqs=255, gpu_bytes=l4, lora_r=256)
    assert not estimate.fits(l4) and estimate.share == 0.9
    seqs = vllm_max_num_seqs(estimate, l4, 8192)
    fitted = sampling_memory(shape, engine="vllm", max_model_len=8192, max_num_seqs=seqs, gpu_bytes=l4, lora_r=256)
    too_many = sampling_memory(shape, engine="vllm", max_model_len=8192, max_num_seqs=seqs + 1, gpu_bytes=l4,
                               lora_r=256)
    assert seqs >= 1 and fitted.fits(l4) and not too_many.fits(l4)
    assert estimate.details["lora_slots"] == 4 * 2 * 256 * shape.num_layers * sum(
        i + o for i, o in shape.linear_shapes().values())
    assert vllm_max_num_seqs(estimate, HARDWARE["T4"].memory_bytes // 2, 8192) == 0


# ----------------------------------------------------------------------------- reading shapes

def test_a_shape_comes_from_a_name_a_folder_a_config_file_or_a_dict(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(ARCHITECTURES["qwen3-4b"]))
    by_name, by_folder = model_shape("Qwen3-4B"), model_shape(tmp_path)
    assert by_name.total == by_folder.total == model_shape(tmp_path / "config.json").total
    assert model_shape({"text_config": ARCHITECTURES["qwen3-1.7b"]}).total == model_shape("qwen3-1.7b").total
    broken = {k: v for k, v in ARCHITECTURES["qwen3-4b"].items() if k != "num_hidden_layers"}
    with pytest.raises(ShapeError, match=r"config: has no 'num_hidden_layers'"):
        model_shape(broken)
    with pytest.raises(ShapeError, match="nowhere: neither a named architecture"):
        model_shape("nowhere")
    assert "4.02 B parameters, 36 layers" in by_name.describe()
    named_by_class = {k: v for k, v in ARCHITECTURES["qwen3-4b"].items() if k != "model_type"}
    assert model_shape(named_by_class) == ModelShape.from_config(ARCHITECTURES["qwen3-4b"], "config")  # q/k norms


def test_lora_targets_are_names_or_presets_and_agree_with_the_trainers_presets():
    from pipeline.training.lora import LORA_TARGET_PRESETS

    for preset, modules in LORA_TARGET_PRESETS.items():
        expected = LINEAR_MODULES if modules == ("all-linear",) else modules
        assert set(resolve_lora_targets(preset)[0]) == set(m for m in expected if m in LINEAR_MODULES), preset
    assert resolve_lora_targets("all-linear+embeddings") == (LINEAR_MODULES, True)
    assert resolve_lora_targets(["q_proj", "lm_head"]) == (("q_proj",), True)
    with pytest.raises(ValueError, match="'c_attn': not a module"):
        resolve_lora_targets(["c_attn"])


def test_memory_estimate_fits_within_its_share_of_the_card():
    estimate = sampling_memory(model_shape("smollm2-135m"), engine="vllm", max_model_len=2048, max_num_seqs=8)
    assert estimate.fits(estimate.total / 0.9 + 1) and not estimate.fits(estimate.total) and not estimate.fits(None)
    assert estimate.describe().endswith("GiB)") and estimate.total > estimate.allocated
    assert HARDWARE["T4"].memory_bytes == int(14.56 * GIB) and HARDWARE["cpu"].memory_bytes is None
