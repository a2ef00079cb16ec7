"""What this machine is, before a stage runs: its GPUs, the devices the stages get, and the
accelerator a config asks Kaggle for.

* `probe_gpus` asks `nvidia-smi` for each GPU's name, memory and compute capability (bf16 needs
  8.0 or more: not on T4 or P100). No torch: the notebook's own process must hold no CUDA
  context the stages need, and it runs before the offline install.
* `usable_devices`: the config's `devices` on the GPUs present. A config for 4x L4 on a machine
  with 2 GPUs runs on cuda:0 and cuda:1 with a warning, instead of TTFT exiting with "cuda:2 is
  not available" and the sampling shards of the missing GPUs failing. CPU devices are unchanged.
* `hardware_warnings`: the GPUs are not the config's `hardware` (what `plan` and the time shares
  assumed), said at once.
* `KAGGLE_ACCELERATORS` / `machine_shape`: the `machine_shape` of kernel-metadata.json for a
  config's `hardware`, so a push runs on the machine the config was made for.
* `Probes`: what the run asks the machine (GPUs, installed versions, image tags); tests pass
  stand-ins.

Imports the standard library and the hardware table (`pipeline/core/hardware.py`).
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from pipeline.kaggle.install import image_tags, installed_version
from pipeline.core.hardware import hardware_of

# kernel-metadata.json's `machine_shape` for a config's `hardware` (names of core/hardware.HARDWARE).
# From the Kaggle CLI's documentation (kaggle-cli docs/kernels.md and kernels_metadata.md, 2026):
# NvidiaTeslaT4 is "GPU T4 x2" (there is no single-T4 shape); NvidiaL4 is the 4x L4 machine of the
# competitions that offer it (NvidiaL4X1 is one L4: set `kaggle_accelerator` for it); A100 and H100
# are open to some competitions' participants only. NvidiaTeslaP100 is left out on purpose: Kaggle's
# current image has no torch kernels for the P100 (sm_60), so every CUDA call there fails.
KAGGLE_ACCELERATORS = {"T4": "NvidiaTeslaT4", "L4": "NvidiaL4", "A100": "NvidiaTeslaA100", "H100": "NvidiaH100"}
NVIDIA_SMI_FIELDS = ("index", "name", "memory.total", "compute_cap")


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_mib: int | None = None
    compute_capability: str | None = None   # "8.9"

    @property
    def bf16(self) -> bool | None:
        """bf16 arithmetic at full speed (compute capability 8.0+); None when unknown."""
        try:
            return float(self.compute_capability) >= 8.0
        except (TypeError, ValueError):
            return None

    def describe(self) -> str:
        memory = f"{self.memory_mib / 1024:.0f} GiB" if self.memory_mib else "memory unknown"
        bf16 = {True: "bf16", False: "no bf16 (fp16)", None: "bf16 unknown"}[self.bf16]
        return f"cuda:{self.index} {self.name}, {memory}, {bf16}"


def parse_nvidia_smi(text: str) -> list[GPU]:
    """GPUs from `nvidia-smi --query-gpu=index,name,memory.total[,compute_cap] --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        memory = int(float(fields[2])) if fields[2].replace(".", "", 1).isdigit() else None
        capability = fields[3] if len(fields) > 3 and fields[3].replace(".", "", 1).isdigit() else None
        gpus.append(GPU(int(fields[0]), fields[1], memory, capability))
    return gpus


def probe_gpus(run: Callable = subprocess.run) -> list[GPU]:
    """The GPUs `nvidia-smi` lists ([] without it); an older driver without `compute_cap` is asked
    again without it (bf16 then unknown)."""
    for fields in (NVIDIA_SMI_FIELDS, NVIDIA_SMI_FIELDS[:-1]):
        try:
            out = run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                      capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return []
        if out.returncode == 0:
            return parse_nvidia_smi(out.stdout)
    return []


def visible_gpus(gpus: Sequence[GPU], env: Mapping[str, str]) -> list[GPU]:
    """The GPUs a stage sees under `CUDA_VISIBLE_DEVICES` (numbered from 0 in its order); all when
    it is unset or names GPUs by UUID."""
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(gpus)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if not all(s.isdigit() for s in wanted):
        return list(gpus)
    by_index = {g.index: g for g in gpus}
    return [GPU(i, g.name, g.memory_mib, g.compute_capability)
            for i, g in enumerate(by_index[int(s)] for s in wanted if int(s) in by_index)]


def cuda_index(device: str) -> int | None:
    """N of `cuda:N` (`cuda` is cuda:0); None for other devices."""
    if device == "cuda":
        return 0
    index = device.removeprefix("cuda:")
    return int(index) if device.startswith("cuda:") and index.isdigit() else None


def usable_devices(devices: Sequence[str], n_gpus: int) -> tuple[tuple[str, ...], list[str]]:
    """(the devices the stages get, warnings): the configured CUDA devices that exist among
    `n_gpus`, else the first ones that do, else cpu. Devices without CUDA are kept as they are."""
    devices = tuple(devices)
    cuda = [d for d in devices if cuda_index(d) is not None]
    if not cuda or all(cuda_index(d) < n_gpus for d in cuda):
        return devices, []
    if n_gpus == 0:
        return ("cpu",), [f"no GPU found, the config names {', '.join(cuda)}: running on cpu (slow: expect the "
                          f"deadline to cut most stages short)"]
    present = [d for d in cuda if cuda_index(d) < n_gpus] or [f"cuda:{i}" for i in range(min(n_gpus, len(cuda)))]
    return tuple(present), [f"{n_gpus} GPU(s) present, the config names {len(cuda)} ({', '.join(cuda)}): running on "
                            f"{', '.join(present)} (one TTFT worker and one sampling shard each)"]


def hardware_warnings(hardware: str | None, gpus: Sequence[GPU]) -> list[str]:
    """A warning when the GPUs are not the config's `hardware` (compared by `hardware_of`)."""
    expected = hardware_of(hardware)
    if not gpus or expected is None or expected.name == "cpu":
        return []
    kinds = sorted({g.name for g in gpus if getattr(hardware_of(g.name), "name", None) != expected.name})
    if not kinds:
        return []
    return [f"the config's hardware is {expected.name} but this machine has {', '.join(kinds)}: the time "
            f"plan assumed {expected.name} (check the accelerator: kernel-metadata.json's machine_shape)"]


def machine_shape(hardware: str | None, override: str | None = None) -> str | None:
    """kernel-metadata.json's `machine_shape` for `hardware` (None: a CPU run); `override` (the
    config's `kaggle_accelerator`) wins. A GPU Kaggle does not offer is a ValueError."""
    if override:
        return override
    kind = hardware_of(hardware)
    if not hardware or kind is not None and kind.name == "cpu":
        return None
    if kind is None or kind.name not in KAGGLE_ACCELERATORS:
        known = ", ".join(f"{h} -> {s}" for h, s in KAGGLE_ACCELERATORS.items())
        raise ValueError(f"config key 'hardware': {hardware!r} has no Kaggle accelerator (known: {known}); "
                         f"set kaggle_accelerator to Kaggle's machine_shape")
    return KAGGLE_ACCELERATORS[kind.name]


def describe_gpus(gpus: Sequence[GPU]) -> str:
    if not gpus:
        return "GPUs: none (nvidia-smi lists none)"
    return f"GPUs: {len(gpus)}: " + "; ".join(g.describe() for g in gpus)


@dataclass(frozen=True)
class Probes:
    """What the run asks the machine. Tests pass stand-ins (a fake GPU list, versions, tags)."""
    gpus: Callable[[], list[GPU]] = probe_gpus
    versions: Callable[[str], str | None] = installed_version
    image: Callable[[], Mapping] = image_tags
