"""LoRA, shared by `finetune` and `ttft`: target presets, the settings (`LoraSettings`), a fresh or
a saved adapter around a model, and the trainable state a TTFT worker restores between tasks.

A LoRA may include the input embedding and the output head (`all-linear+embeddings`, or the names
`embed_tokens` / `lm_head`: NVARC's TTFT).  peft then trains `lora_embedding_A/B` on the embedding
and a linear LoRA on the head (separate deltas even where the model ties the two weights); the
adapter is saved without copies of the base embedding (`core/adapters.save_adapter`), served
unmerged by the transformers engine and refused by vLLM (`core/settings.EMBEDDING_MODULES`).

peft is imported where an adapter is built or loaded.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

# the one preset table and the one set of defaults (the planner and the memory model read them too)
from pipeline.core.settings import (ALL_LINEAR, DEFAULT_LORA_ALPHA, DEFAULT_LORA_DROPOUT, DEFAULT_LORA_R,
                                    DEFAULT_LORA_TARGET, LORA_TARGET_PRESETS, ConfigError)


def lora_target_modules(values: Sequence[str]) -> tuple[str, ...]:
    """A preset name (attention, attention+mlp, all-linear, all-linear+embeddings) or module names
    (spaces or commas; `embed_tokens` and `lm_head` are allowed)."""
    names = [n for v in values for n in re.split(r"[,\s]+", v) if n]
    if len(names) == 1 and names[0] in LORA_TARGET_PRESETS:
        return LORA_TARGET_PRESETS[names[0]]
    presets = [n for n in names if n in LORA_TARGET_PRESETS]
    if presets or not names:
        raise ConfigError(f"--lora_target: give one preset ({', '.join(LORA_TARGET_PRESETS)}) or module names, "
                          f"got {' '.join(values)}")
    return tuple(names)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters; their defaults are the only ones (`LORA`): finetune's flags and ttft's
    fresh LoRA take them from here.  `use_rslora` / `use_dora` are real booleans (the original had
    `use_dora = True,` -- a tuple, so DoRA was always on and no flag could turn it off)."""
    r: int = DEFAULT_LORA_R
    alpha: int = DEFAULT_LORA_ALPHA
    dropout: float = DEFAULT_LORA_DROPOUT
    target_modules: tuple[str, ...] = LORA_TARGET_PRESETS[DEFAULT_LORA_TARGET]
    use_rslora: bool = True   # scale alpha / sqrt(r) instead of alpha / r
    use_dora: bool = False    # vLLM cannot serve DoRA adapters

    def __post_init__(self):
        for name in ("use_rslora", "use_dora"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"LoraSettings.{name} must be a bool, got {getattr(self, name)!r}")
        if self.r < 1:
            raise ValueError(f"LoRA rank (--lora_r) must be >= 1, got {self.r}: a LoRA adapter needs a rank "
                             f"(full fine-tuning is `finetune --no-use_lora`)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "target_modules": list(self.target_modules)}


LORA = LoraSettings()


def linear_module_names(model) -> list[str]:
    """Distinct leaf names of the layers a LoRA can target: the model's linear layers (`q_proj`,
    `down_proj`, `lm_head`, ...) and its embeddings (`embed_tokens`)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, torch.nn.Embedding))})


def check_target_modules(model, targets: Sequence[str]) -> None:
    """ValueError naming the targets that are not linear or embedding layers of `model`, and the
    ones that are (`ALL_LINEAR` always fits)."""
    if tuple(targets) == (ALL_LINEAR,):
        return
    available = linear_module_names(model)
    missing = [m for m in targets if m not in available]
    if missing:
        raise ValueError(f"LoRA target module(s) {', '.join(missing)} not in the model; its linear and "
                         f"embedding layers are: {', '.join(available)}")


def build_lora_model(model, settings: LoraSettings, seed: int = 0):
    """Wrap `model` in a fresh, trainable LoRA adapter (`peft.PeftModel`).

    The adapter's random initialisation (lora_A) is drawn from `seed`, in a forked RNG: the same
    seed gives the same adapter on the same hardware, and the caller's RNG is left alone.  Every
    requested target module must exist in the model: a misspelt or absent name is an error
    listing the model's linear layers (peft only fails when *none* matches).
    """
    import peft

    check_target_modules(model, settings.target_modules)
    targets = ALL_LINEAR if settings.target_modules == (ALL_LINEAR,) else list(settings.target_modules)
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=targets, use_rslora=settings.use_rslora,
                             use_dora=settings.use_dora, bias="none", task_type="CAUSAL_LM")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def load_lora_model(model, adapter_path, trainable: bool = True):
    """Wrap `model` with an existing adapter (continue training it); r / alpha / targets come
    from the adapter's `adapter_config.json`."""
    import peft

    path = Path(adapter_path)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} is not a LoRA adapter directory (no adapter_config.json)")
    return peft.PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def lora_settings_of(peft_model) -> LoraSettings:
    """The LoraSettings of a peft model's active adapter (e.g. one loaded from disk)."""
    return lora_settings_from(peft_model.peft_config[peft_model.active_adapter].to_dict())


def lora_settings_from(config: Mapping) -> LoraSettings:
    """The LoraSettings of a peft LoRA config as a dict (an adapter's `adapter_config.json`)."""
    targets = config.get("target_modules") or ()
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
    return LoraSettings(r=int(config["r"]), alpha=int(config["lora_alpha"]),
                        dropout=float(config.get("lora_dropout", 0.0)), target_modules=targets,
                        use_rslora=bool(config.get("use_rslora", False)), use_dora=bool(config.get("use_dora", False)))


def upcast_trainable(model) -> None:
    """Every trainable parameter (the LoRA) in float32, whatever the base weights' dtype: with bf16
    base weights the adapter, its gradients and the optimizer's states stay fp32, so small updates
    are not rounded away (peft does this by default; this makes it a guarantee, not a version's
    default)."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Detached clones of every trainable parameter (for a LoRA model: the adapter)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def restore_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (from `trainable_state`) back into the trainable parameters, in place and exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if params.keys() != state.keys():
        extra, missing = sorted(state.keys() - params.keys()), sorted(params.keys() - state.keys())
        raise KeyError(f"trainable state does not match the model: {len(missing)} missing "
                       f"({missing[:3]}...), {len(extra)} unexpected ({extra[:3]}...)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])
