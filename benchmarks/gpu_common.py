"""What the one-card GPU benchmarks (gpu_sampling.py, gpu_dfs.py, gpu_rescore.py) share: the
answer when CUDA is asked for and absent, and how a result is printed and kept."""
from __future__ import annotations

import json
from pathlib import Path

NO_CUDA = {"error": "no CUDA device; use --device cpu --smoke"}


def cuda_missing(device: str, cuda_available: bool) -> bool:
    """True (after printing the error record) when `device` is CUDA and there is none."""
    if device.startswith("cuda") and not cuda_available:
        print(json.dumps(NO_CUDA))
        return True
    return False


def emit(result: dict, output: str | None) -> int:
    """Print the result as JSON and also write it to `output` when given; the exit status 0."""
    text = json.dumps(result, indent=1)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
    return 0


# the smoke runs' tiny Qwen2 shape (a CPU check of the code, not of the speed)
SMOKE_SHAPE = dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=2,
                   num_key_value_heads=1)


def random_qwen(torch, device: str, dtype, smoke: bool, vocab_size: int, **overrides):
    """A random-initialised Qwen2.5-0.5B-shaped model (the smoke shape with `smoke`), seeded, built on
    `device` directly (no host copy of the weights)."""
    from transformers import AutoModelForCausalLM

    from devtools.random_models import qwen2_5_0_5b_config
    if smoke:
        overrides = {**overrides, **SMOKE_SHAPE, "vocab_size": vocab_size}
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(qwen2_5_0_5b_config(**overrides), dtype=dtype).eval()
