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
