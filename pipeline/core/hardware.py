"""The accelerators the project knows: their names as devices report them, and throughput
relative to one T4 (the planner's hardware factors, kaggle/README.md gives the sources), and the
memory one card of the kind offers (the memory model's budget, planning/memory.py).

One table for every rule that names hardware: the planner moves a fitted cost model with it, the
run's preflight recognises the GPUs present and the config's `hardware` with it, the kernel
metadata's accelerator is looked up by its names, and the config loader (`core/settings.py`)
refuses a `hardware` name it does not know, so build, run and plan refuse the same names. Standard library only (the preflight runs
before the offline install).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """Throughput relative to one T4 for the same model and software (higher is faster).
    `train` scales training steps, trained tokens and prompt (prefill) tokens: compute bound.
    `decode` scales generated tokens: memory-bandwidth bound. kaggle/README.md gives the sources."""
    name: str
    train: float
    decode: float
    match: tuple[str, ...]      # lower-case substrings of torch.cuda.get_device_name()
    source: str
    estimate: bool = True
    memory_bytes: int | None = None  # one card's capacity as torch reports it (total_memory); None: no GPU


GIB = 1024 ** 3


HARDWARE = {h.name: h for h in (
    # memory: the 15 GB T4 reports 14.56 GiB to torch (users' out-of-memory logs, issue 23), the 24 GB
    # L4 ~22.0 GiB (nvidia-smi: 23,034 MiB, less ECC and the driver's reserve); 80 GB cards ~79.1 GiB,
    # the H200 (141 GB) ~139.8 GiB: what torch.cuda.get_device_properties(0).total_memory reports
    Hardware("T4", 1.0, 1.0, ("t4",), "reference: 65 TFLOP/s fp16 tensor, 320 GB/s (NVIDIA T4 datasheet)", False,
             int(14.56 * GIB)),
    Hardware("L4", 121 / 65, 300 / 320, ("l4",), "121 TFLOP/s fp16/bf16 dense, 300 GB/s (NVIDIA L4 datasheet)",
             memory_bytes=int(22.0 * GIB)),
    Hardware("A100", 312 / 65, 2039 / 320, ("a100",), "312 TFLOP/s bf16 dense, 2,039 GB/s (A100 SXM4 80GB datasheet)",
             memory_bytes=int(79.15 * GIB)),
    Hardware("H100 PCIe", 756 / 65, 2000 / 320, ("h100 pcie",), "756 TFLOP/s bf16 dense, 2.0 TB/s (H100 PCIe datasheet)",
             memory_bytes=int(79.1 * GIB)),
    Hardware("H100", 989 / 65, 3350 / 320, ("h100",), "989 TFLOP/s bf16 dense, 3.35 TB/s (H100 SXM5 datasheet)",
             memory_bytes=int(79.1 * GIB)),
    Hardware("H200", 989 / 65, 4800 / 320, ("h200",), "989 TFLOP/s bf16 dense, 4.8 TB/s (H200 SXM datasheet)",
             memory_bytes=int(139.8 * GIB)),
    Hardware("cpu", 0.02, 0.004, ("cpu",),
             "this workplace's 2-core AVX2 CPU, fp32, idle: bench_ttft (190 trained tok/s, LoRA r32) and bench_sampling "
             "(27.5 generated tok/s, transformers) against arc24 T4 timings (spec 9.2 Iteration 13, anchors 4 Iteration 9), "
             "per parameter; order of magnitude"),
)}


def hardware_of(device: str | None) -> Hardware | None:
    """The table entry of a device name ("Tesla T4", "NVIDIA H100 80GB HBM3", "cpu", "L4", ...)."""
    if not device:
        return None
    d = device.lower()
    for key, h in HARDWARE.items():
        if d == key.lower():
            return h
    for h in sorted(HARDWARE.values(), key=lambda h: -max(len(m) for m in h.match)):  # "h100 pcie" before "h100"
        if any(m in d for m in h.match):
            return h
    return None
