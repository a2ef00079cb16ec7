"""The accelerators the project knows: their names as devices report them, and throughput
relative to one T4 (the planner's hardware factors, kaggle/README.md gives the sources), and the
memory one card of the kind offers (the memory model's budget, planning/memory.py).

One table for every rule that names hardware: the planner moves a fitted cost model with it, the
run's preflight recognises the GPUs present and the config's `hardware` with it, the kernel
metadata's accelerator is looked up by its names, and the config loader (`core/settings.py`)
refuses a `hardware` name it does not know, so build, run and plan refuse the same names. Standard library only (the preflight runs
before the offline install).

`cpu_has_native_bf16`: whether this CPU computes bf16 in hardware (its flags in /proc/cpuinfo);
`core/models.py`'s precision rule (`auto_dtype`) asks it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The T4 row's datasheet numbers: every `train` / `decode` ratio below is relative to them, so a row's
# absolute peak is ratio x these (the planner's profile-free projection, planning/datasheet.py).
REFERENCE_FLOPS, REFERENCE_BYTES_PER_S = 65e12, 320e9


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


# CPU flags (as /proc/cpuinfo spells them) of bf16 arithmetic in hardware: AVX-512 BF16 (AMD Zen 4+,
# Intel Cooper Lake+), AMX BF16 (Intel Sapphire Rapids+), and the Arm BF16 extension ("bf16" in
# the Features line).  Without them torch emulates bf16 and a step is several times slower than
# fp32 (shared/reference/cpu-recipes.md: 114 s per step at 512 tokens on an AVX2 machine).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The flags of the first processor in `cpuinfo` (the text of /proc/cpuinfo; None: read it, empty
    where there is none, e.g. macOS): its `flags` line on x86, `Features` on Arm."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (`CPU_BF16_FLAGS`); `cpuinfo`: the text of
    /proc/cpuinfo (None: read it)."""
    return bool(cpu_flags(cpuinfo) & set(CPU_BF16_FLAGS))
