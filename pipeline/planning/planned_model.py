"""Which model a plan is for, and the numbers of its shape the projection needs.

A plan projects one model: the config's (its `model` folder's `config.json` when that folder is
on this machine, `embedded` is SmolLM2-135M, else the config's `model_architecture`, a name of
the memory model's `ARCHITECTURES`), or `--model NAME|PATH`. It is never the profile's model by
default: when neither is at hand, `planned_model` refuses with a one-line error naming what it needs.
The profiled model (what a profile was measured with) comes from `--profiled_model` or the run's
`predictions.jsonl.meta.json` / `first_shot.jsonl.meta.json` (its `model`).

Parameter counts and architectures are the GPU memory model's (`pipeline/planning/memory.py`,
`model_shape`, `ARCHITECTURES`): `memory_model()` is the one place that imports it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.settings import ALL_LINEAR, DEFAULT_LORA_TARGET, LINEAR_MODULES, LORA_TARGET_PRESETS

EMBEDDED_ARCHITECTURE = "smollm2-135m"   # the `embedded` model alias is SmolLM2-135M-Instruct (core/models.py)
RUN_META_FILES = ("predictions.jsonl.meta.json", "first_shot.jsonl.meta.json")   # the sampling stage's meta: `model`
# LoRA target presets (settings.LORA_TARGET_PRESETS) -> the block's linear layers they cover, short
# names (the embedding and head are counted apart: Recipe.train_embeddings)
LORA_TARGETS = {name: tuple(m.removesuffix("_proj") for m in (LINEAR_MODULES if modules == (ALL_LINEAR,) else modules)
                            if m in LINEAR_MODULES) for name, modules in LORA_TARGET_PRESETS.items()}


def memory_model():
    """The GPU memory model module (parameter counts, named architectures, memory per stage)."""
    from pipeline.planning import memory
    return memory


@dataclass(frozen=True)
class PlannedModel:
    """A model as the projection sees it: its config.json fields and its parameter count."""
    name: str
    source: str                       # where the plan learnt it (printed)
    config: Mapping[str, Any] = field(repr=False)
    params: int

    def _get(self, key: str, default=None):
        text = self.config.get("text_config") or {}
        value = self.config.get(key, text.get(key, default))
        if value is None:
            raise ValueError(f"model {self.name}: config.json has no {key!r}")
        return value

    @property
    def layers(self) -> int:
        return int(self._get("num_hidden_layers"))

    @property
    def hidden(self) -> int:
        return int(self._get("hidden_size"))

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.hidden // int(self._get("num_attention_heads")))

    @property
    def attention_width(self) -> int:          # query heads x head_dim
        return int(self._get("num_attention_heads")) * self.head_dim

    @property
    def kv_width(self) -> int:                 # KV heads x head_dim
        return int(self._get("num_key_value_heads", self._get("num_attention_heads"))) * self.head_dim

    @property
    def intermediate(self) -> int:
        return int(self._get("intermediate_size"))

    @property
    def vocab(self) -> int:
        return int(self._get("vocab_size"))

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    @property
    def matmul_params(self) -> int:
        """Parameters a token's forward multiplies with: all but the input embedding, which is a
        lookup (tied embeddings are the LM head's matmul, so they count once)."""
        return self.params - (0 if self.tied else self.vocab * self.hidden)

    def lora_params(self, rank: int, target: str | tuple[str, ...] = DEFAULT_LORA_TARGET) -> int:
        """A LoRA's parameters: rank x (in + out) per adapted linear layer, every layer."""
        names = LORA_TARGETS.get(target, ()) if isinstance(target, str) else tuple(
            n for t in target for n in LORA_TARGETS.get(t, (t.removesuffix("_proj"),)))
        d, a, kv, i = self.hidden, self.attention_width, self.kv_width, self.intermediate
        sizes = {"q": d + a, "k": d + kv, "v": d + kv, "o": a + d, "gate": d + i, "up": d + i, "down": i + d}
        unknown = [n for n in names if n not in sizes]
        if unknown or not names:
            raise ValueError(f"LoRA target {target!r}: unknown layer(s) {', '.join(unknown) or 'none'}")
        return rank * self.layers * sum(sizes[n] for n in dict.fromkeys(names))

    def describe(self) -> str:
        return f"{self.name} ({self.params / 1e9:.3g} B parameters, {self.source})"


def _config_file(path: str | Path) -> Path | None:
    p = Path(path).expanduser()
    p = p / "config.json" if p.is_dir() else p
    return p if p.is_file() and p.name.endswith(".json") else None


def known_architecture(spec: str | Path) -> bool:
    """`embedded` or a name of the memory model's ARCHITECTURES."""
    return str(spec) == "embedded" or str(spec).lower() in memory_model().ARCHITECTURES


def load_planned_model(spec: str | Path, source: str) -> PlannedModel:
    """A model from an architecture name (`memory.ARCHITECTURES`, `embedded`) or a folder / its
    config.json; ValueError naming the spec when it is neither."""
    memory = memory_model()
    name = EMBEDDED_ARCHITECTURE if str(spec) == "embedded" else str(spec)
    if name.lower() in memory.ARCHITECTURES:
        config, label = dict(memory.ARCHITECTURES[name.lower()]), name.lower()
    elif _config_file(spec):
        config, label = json.loads(_config_file(spec).read_text(encoding="utf-8")), str(spec)
    else:
        raise ValueError(f"model {str(spec)!r} is neither a known architecture ({', '.join(memory.ARCHITECTURES)}) "
                         "nor a folder with a config.json")
    return PlannedModel(label, source, config, int(memory.model_shape(config).total))


def planned_model(flag: str | None, config: Mapping | None) -> PlannedModel:
    """The model a plan projects: `--model`, else the config's model folder (when here), else its
    `model_architecture`; ValueError (one line) naming what is missing otherwise."""
    if flag:
        return load_planned_model(flag, "--model")
    config = config or {}
    model, arch = config.get("model"), config.get("model_architecture")
    if model and (known_architecture(model) or _config_file(model)):
        return load_planned_model(model, f"the config's model {model}")
    if arch:
        return load_planned_model(arch, f"the config's model_architecture {arch}")
    where = f"the config's model {model!r} has no config.json here" if model else "no config names a model"
    raise ValueError(f"which model does this plan project? {where}: pass --model NAME|PATH (a folder with a "
                     f"config.json, or one of {', '.join(memory_model().ARCHITECTURES)}) or set model_architecture "
                     "in the config (the profile's model is never assumed)")


def profiled_model(flag: str | None, run_dir: str | Path | None) -> PlannedModel | None:
    """The model a profile was measured with: `--profiled_model`, else the `model` the run's sampling
    meta names (when its config.json is here); None when unknown."""
    if flag:
        return load_planned_model(flag, "--profiled_model")
    if run_dir is None:
        return None
    run_dir = Path(run_dir)
    for meta in (m for name in RUN_META_FILES for m in sorted(run_dir.parent.rglob(name) if run_dir.is_file()
                                                              else run_dir.rglob(name))):
        try:
            model = json.loads(meta.read_text(encoding="utf-8")).get("model")
        except (OSError, ValueError):
            continue
        if model and (_config_file(model) or known_architecture(model)):
            return load_planned_model(model, f"the profile's {meta.name}")
    return None


def model_scale(planned: PlannedModel, profiled: PlannedModel | None) -> float:
    """Target / profiled parameters (the factor a profile's model terms are scaled by); ValueError
    when the profiled model is unknown."""
    if profiled is None:
        raise ValueError(f"the profile does not say which model it measured (no model in its {RUN_META_FILES[0]}): "
                         f"pass --profiled_model NAME|PATH, or --model_scale for {planned.name}")
    return planned.params / profiled.params
