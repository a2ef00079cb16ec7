"""GPU memory per stage next to the plan's time, and the memory knobs `plan --fit` chooses.

The bytes are the GPU memory model's (`pipeline/planning/memory.py`: `model_shape`, `ttft_memory`,
`sampling_memory`); `stage_memory` and `ttft_estimate` / `sampling_estimate` are the only places the
planner calls it. What a stage would use comes from the config's recipe (`datasheet.recipe_of`: LoRA
rank and targets, embeddings trained, dtype, engine) and its `ttft_settings` / `sample_settings`
(gradient_checkpointing, max_model_len, max_num_seqs, gpu_memory_utilization), with the stages'
defaults where it names nothing.

`fit_memory` chooses, when a stage does not fit one GPU, in this order and keeping each change:
TTFT: gradient checkpointing on, then a shorter max_seq_len (TTFT skips or shortens the tasks
that no longer fit), then a smaller LoRA rank; sampling: a smaller max_num_seqs; and the most
sampling processes per GPU that fit (the ARChitects ran two inference processes per L4: 670 s ->
470 s, anchors.md §12).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from pipeline.core.hardware import hardware_of
from pipeline.core.settings import DEFAULT_MAX_MODEL_LEN, SAMPLE, TRANSFORMERS_BATCH, VLLM
from pipeline.planning.datasheet import Recipe, default_dtype
from pipeline.planning.planned_model import PlannedModel, memory_model
from pipeline.planning.projection import Settings

SEQ_LEN_CAPS = (6144, 4096, 3072, 2048)
LORA_RANKS = (128, 64, 32, 16, 8)
PROCESSES_PER_GPU = (3, 2)



def gpu_bytes(hardware: str) -> int | None:
    """Usable memory of one GPU of this kind (core/hardware.py's table; None for a CPU or unknown)."""
    h = hardware_of(hardware)
    return getattr(h, "memory_bytes", None) if h is not None and h.name != "cpu" else None


def ttft_estimate(model: PlannedModel, recipe: Recipe, hardware: str, *, seq_len: int, batch: int,
                  gradient_checkpointing: bool):
    memory = memory_model()
    target = recipe.lora_target
    return memory.ttft_memory(memory.model_shape(dict(model.config)), dtype=recipe.dtype or default_dtype(hardware),
                              lora_r=recipe.lora_r, lora_targets=target,
                              train_embeddings=recipe.train_embeddings, full_finetune=recipe.lora_r is None,
                              optimizer="adamw", seq_len=seq_len, batch=batch,
                              gradient_checkpointing=gradient_checkpointing)


def sampling_estimate(model: PlannedModel, recipe: Recipe, hardware: str, *, max_model_len: int, max_num_seqs: int,
                      gpu_memory_utilization: float):
    memory = memory_model()
    return memory.sampling_memory(memory.model_shape(dict(model.config)), engine=recipe.engine,
                                  dtype=recipe.dtype or default_dtype(hardware), max_model_len=max_model_len,
                                  max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization,
                                  gpu_bytes=gpu_bytes(hardware) or 0, lora_r=recipe.lora_r)


def knobs(s: Settings) -> dict:
    """The memory knobs of a plan's settings, the stages' defaults where the config names none."""
    t, o = dict(s.ttft_options), dict(s.sample_options)
    return {"gradient_checkpointing": bool(t.get("gradient_checkpointing", False)),
            "ttft_max_seq_len": s.ttft_max_seq_len, "batch": int(t.get("per_device_batch_size") or 1),
            "max_model_len": int(o.get("max_model_len") or DEFAULT_MAX_MODEL_LEN),
            # vLLM's concurrent sequences; the transformers engine holds one batch: a DFS group of views
            # (dfs_batch_views) or the sampling batch (batch_size)
            "max_num_seqs": int(o.get("max_num_seqs") or VLLM.max_num_seqs) if s.engine != "transformers" and not (
                s.sample_method == "dfs") else int((o.get("dfs_batch_views") or SAMPLE.dfs_batch_views)
                                                   if s.sample_method == "dfs" else (o.get("batch_size") or TRANSFORMERS_BATCH["cuda"])),
            "gpu_memory_utilization": float(o.get("gpu_memory_utilization") or VLLM.gpu_memory_utilization)}


def _row(estimate, limit: int | None, engine: str | None = None, max_model_len: int | None = None) -> dict:
    """A stage's bytes and verdict; for vLLM (`engine`) also the full-length sequences its cache holds."""
    parts = {f.name: getattr(estimate, f.name) for f in dataclasses.fields(estimate)} if dataclasses.is_dataclass(
        estimate) else dict(estimate)
    row = {**parts, "total": estimate.total, "fits": None if limit is None else bool(estimate.fits(limit))}
    if engine is not None and limit is not None:
        memory = memory_model()
        row["fits"] = memory.sampling_fits(estimate, limit, engine, max_model_len)
        if engine == "vllm":
            row["full_length_seqs"] = memory.vllm_max_num_seqs(estimate, limit, max_model_len)
    return row


def stage_memory(model: PlannedModel, recipe: Recipe, s: Settings, k: Mapping | None = None) -> dict:
    """Bytes per stage on one GPU of the plan's hardware (`k`: knobs, default the settings')."""
    k = dict(k or knobs(s))
    limit = gpu_bytes(s.hardware)
    ttft = ttft_estimate(model, recipe, s.hardware, seq_len=k["ttft_max_seq_len"], batch=k["batch"],
                         gradient_checkpointing=k["gradient_checkpointing"])
    sample = sampling_estimate(model, recipe, s.hardware, max_model_len=k["max_model_len"],
                               max_num_seqs=k["max_num_seqs"], gpu_memory_utilization=k["gpu_memory_utilization"])
    return {"gpu_bytes": limit, "knobs": k, "ttft": _row(ttft, limit),
            "sample": _row(sample, limit, recipe.engine, k["max_model_len"])}


def fit_memory(model: PlannedModel, recipe: Recipe, s: Settings) -> dict:
    """The first knobs (in the module docstring's order) with which each stage fits one GPU:
    {"changes": {knob: value}, "recipe": Recipe, "memory": stage_memory(...), "fits": bool,
    "processes_per_gpu": n}. Nothing to choose without a GPU memory size (a CPU)."""
    k, limit = knobs(s), gpu_bytes(s.hardware)
    if limit is None:
        return {"changes": {}, "recipe": recipe, "memory": None, "fits": None, "processes_per_gpu": 1}
    changes = {}

    def ttft_fits(kk, rr) -> bool:
        return ttft_estimate(model, rr, s.hardware, seq_len=kk["ttft_max_seq_len"], batch=kk["batch"],
                             gradient_checkpointing=kk["gradient_checkpointing"]).fits(limit)

    steps = [("gradient_checkpointing", True)] + [("ttft_max_seq_len", n) for n in SEQ_LEN_CAPS
                                                  if n < k["ttft_max_seq_len"]]
    steps += [("lora_r", r) for r in LORA_RANKS if recipe.lora_r is not None and r < recipe.lora_r]
    for knob, value in steps:
        if ttft_fits(k, recipe):
            break
        if knob == "lora_r":
            recipe = dataclasses.replace(recipe, lora_r=value)
        else:
            k[knob] = value
        changes[knob] = value

    def sample_fits(kk, processes: int = 1) -> bool:
        util = kk["gpu_memory_utilization"] / processes
        estimate = sampling_estimate(model, recipe, s.hardware, max_model_len=kk["max_model_len"],
                                     max_num_seqs=kk["max_num_seqs"], gpu_memory_utilization=util)
        return memory_model().sampling_fits(estimate, limit // processes, recipe.engine, kk["max_model_len"])

    while not sample_fits(k) and k["max_num_seqs"] > 1:
        k["max_num_seqs"] //= 2
        changes["max_num_seqs"] = k["max_num_seqs"]
    processes = next((p for p in PROCESSES_PER_GPU if sample_fits(k, p)), 1)
    memory = stage_memory(model, recipe, s, k)
    return {"changes": changes, "recipe": recipe, "memory": memory, "processes_per_gpu": processes,
            "fits": bool(memory["ttft"]["fits"] and memory["sample"]["fits"])}


def with_knobs(s: Settings, changes: Mapping) -> Settings:
    """The settings with `fit_memory`'s changes applied (as the config keys they are)."""
    ttft = dict(s.ttft_options, **{k: v for k, v in changes.items() if k in ("gradient_checkpointing", "lora_r")})
    sample = dict(s.sample_options, **{k: v for k, v in changes.items() if k == "max_num_seqs"})
    return dataclasses.replace(s, ttft_options=tuple(sorted(ttft.items())),
                               sample_options=tuple(sorted(sample.items())),
                               ttft_max_seq_len=changes.get("ttft_max_seq_len", s.ttft_max_seq_len))
