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
* `memory_check`: the projected GPU memory of TTFT and sampling for the config's model (its
  config.json, planning/memory.py) on the GPUs present; a stage that does not fit is degraded
  (gradient checkpointing switched on for TTFT; vLLM's max_model_len or the transformers engine's
  batch lowered) or refused, with a named reason, before hours are spent on it.
* `Probes`: what the run asks the machine (GPUs, installed versions, image tags); tests pass
  stand-ins.

Imports the standard library, the hardware table (`pipeline/core/hardware.py`), the settings and
the memory model (`pipeline/planning/memory.py`), all standard library only.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.kaggle.install import image_tags, installed_version
from pipeline.core.hardware import hardware_of
from pipeline.core.settings import (DEFAULT_LORA_DROPOUT, DEFAULT_LORA_R, DEFAULT_LORA_TARGET, DEFAULT_MAX_MODEL_LEN,
                                    STAGE_SETTINGS, default_of, run_settings)
from pipeline.planning.memory import (GIB, ShapeError, attention_kernel, model_shape, sampling_fits, sampling_memory,
                                      ttft_memory, vllm_kv_tokens)

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


# ----------------------------------------------------------------------------- GPU memory

# a fresh TTFT LoRA's defaults (core/settings.py's, which training/lora.py's LoraSettings takes)
FRESH_LORA = {"lora_r": DEFAULT_LORA_R, "lora_target": (DEFAULT_LORA_TARGET,), "lora_dropout": DEFAULT_LORA_DROPOUT}
# the loss's logit rows per TTFT sample: the trainer keeps the completion's only, one answer grid
# (at most 30 x 30 cells and the row ends: ~1,000 tokens in every format)
ANSWER_TOKENS = 1024
MODEL_ALIASES = {"embedded": "smollm2-135m"}  # core/models.EMBEDDED: SmolLM2-135M-Instruct
MIN_MODEL_LEN = 2048  # the shortest max_model_len vLLM is started with: an answer grid (~1,000 tokens) and a pair
TRANSFORMERS_CUDA_BATCH = 32  # the transformers engine's default batch on CUDA (SampleSettings.batch_size help)


@dataclass(frozen=True)
class MemoryCheck:
    """What the memory check found: lines to print, the config the stages get (degraded or as it
    was), the stages refused with their reason, and the numbers for the timing record."""
    lines: tuple[str, ...]
    config: object
    warnings: tuple[str, ...] = ()
    refused: Mapping[str, str] = dataclasses.field(default_factory=dict)
    record: Mapping = dataclasses.field(default_factory=dict)


def gpu_memory_bytes(gpus: Sequence[GPU]) -> int | None:
    """The smallest card's capacity: the hardware table's (what torch reports) for a known kind,
    else nvidia-smi's total; None without GPUs or memory."""
    sizes = []
    for g in gpus:
        kind = hardware_of(g.name)
        size = kind.memory_bytes if kind is not None and kind.memory_bytes else (g.memory_mib or 0) * 2 ** 20
        if size:
            sizes.append(size)
    return min(sizes) if sizes else None


def stage_values(config, key: str) -> dict:
    """Every setting of the stage of `key` (STAGE_SETTINGS) as the run passes it: the stage's
    defaults, the config's mapping, the run's own keys."""
    values = {f.name: default_of(f) for cls in STAGE_SETTINGS[key] for f in dataclasses.fields(cls)}
    return {**values, **getattr(config, key), **run_settings(config, key)}


def adapter_lora(adapter: str | None) -> dict:
    """The LoRA settings of a pretrained adapter folder (what TTFT continues); {} without one."""
    path = Path(adapter) / "adapter_config.json" if adapter else None
    if path is None or not path.is_file():
        return {}
    found = json.loads(path.read_text(encoding="utf-8"))
    targets = found.get("target_modules") or [DEFAULT_LORA_TARGET]
    targets = [targets] if isinstance(targets, str) else list(targets)
    targets += [m for m in found.get("modules_to_save") or () if m in ("embed_tokens", "lm_head")]
    return {"lora_r": int(found["r"]), "lora_target": tuple(targets),
            "lora_dropout": float(found.get("lora_dropout", 0))}


def ttft_estimate(config, shape, lora: Mapping, gradient_checkpointing: bool, attention: str = "flash"):
    t = stage_values(config, "ttft_settings")
    return ttft_memory(shape, dtype=t["torch_dtype"] or "bfloat16", lora_r=lora["lora_r"],
                       lora_targets=lora["lora_target"], lora_dropout=lora["lora_dropout"],
                       seq_len=t["max_seq_len"], batch=t["per_device_batch_size"],
                       gradient_checkpointing=gradient_checkpointing, logits_tokens=ANSWER_TOKENS,
                       attention=attention)


def sample_estimate(config, shape, lora_r: int, gpu_bytes: int, max_num_seqs: int | None = None,
                    attention: str = "flash"):
    s = stage_values(config, "sample_settings")
    engine = "transformers" if s["engine"] == "transformers" or s["method"] == "dfs" else "vllm"
    max_len = min(s["max_model_len"] or DEFAULT_MAX_MODEL_LEN, shape.max_position_embeddings or 10 ** 9)
    seqs = max_num_seqs or (s["max_num_seqs"] if engine == "vllm" else sample_seqs(config))
    return engine, max_len, sampling_memory(shape, engine=engine, dtype=s["dtype"] or "bfloat16",
                                            max_model_len=max_len, max_num_seqs=seqs,
                                            gpu_memory_utilization=s["gpu_memory_utilization"],
                                            gpu_bytes=gpu_bytes, lora_r=lora_r,
                                            attention=attention if engine == "transformers" else "flash")


def batch_key(config) -> str:
    """The setting of the rows the transformers engine decodes at once: DFS's views expanded
    together (`dfs_batch_views`, where the sampling stage has it), else `batch_size`."""
    s = stage_values(config, "sample_settings")
    return "dfs_batch_views" if s["method"] == "dfs" and "dfs_batch_views" in s else "batch_size"


def sample_seqs(config) -> int:
    """Rows the transformers engine decodes at once on CUDA (`batch_key`; batch_size's CUDA default)."""
    return stage_values(config, "sample_settings")[batch_key(config)] or TRANSFORMERS_CUDA_BATCH


def memory_check(config, model: str, adapter: str | None, gpus: Sequence[GPU]) -> MemoryCheck:
    """TTFT's and sampling's projected memory per GPU (one process each) against the smallest GPU
    present. TTFT that does not fit gets gradient checkpointing when that makes it fit, else it is
    refused. vLLM, which starts when its KV cache holds one max_model_len sequence and queues
    what it cannot run at once (so max_num_seqs is left alone), gets the max_model_len its cache
    holds, or is refused under MIN_MODEL_LEN; the transformers engine, which holds a whole batch,
    gets the largest batch that fits. Nothing is checked without GPUs or the model's shape."""
    gpu = gpu_memory_bytes(gpus)
    if gpu is None:
        return MemoryCheck(("not checked: no GPU memory known",), config)
    spec = MODEL_ALIASES.get(model, model)
    if not Path(spec).exists() and getattr(config, "model_architecture", None):
        spec = config.model_architecture
    try:
        shape = model_shape(spec)
        lora = {**FRESH_LORA, **{k: v for k, v in stage_values(config, "ttft_settings").items()
                                 if k in FRESH_LORA and v is not None}, **adapter_lora(adapter)}
        capability = min((float(g.compute_capability) for g in gpus if g.bf16 is not None), default=None)
        attention = attention_kernel(shape, capability)
        ttft = ttft_estimate(config, shape, lora, stage_values(config, "ttft_settings")["gradient_checkpointing"],
                             attention)
        engine, max_len, sample = sample_estimate(config, shape, lora["lora_r"], gpu, attention=attention)
    except (ShapeError, ValueError, KeyError, OSError) as e:
        return MemoryCheck((f"not checked: {e}",), config)
    lines = [f"model {shape.describe()}; GPU {gpu / GIB:.2f} GiB"]
    if attention == "math":
        lines.append(f"attention: compute capability {capability} has no flash kernel for grouped KV heads: "
                     f"SDPA's math kernel keeps heads x tokens^2 per layer")
    warnings, refused, ttft_settings, sample_settings = [], {}, dict(config.ttft_settings), dict(config.sample_settings)
    if not ttft.fits(gpu) and not stage_values(config, "ttft_settings")["gradient_checkpointing"]:
        checkpointed = ttft_estimate(config, shape, lora, True, attention)
        if checkpointed.fits(gpu):
            warnings.append(f"TTFT needs {ttft.total / GIB:.1f} GiB of the GPU's {gpu / GIB:.1f}: gradient "
                            f"checkpointing switched on ({checkpointed.total / GIB:.1f} GiB)")
            ttft_settings["gradient_checkpointing"] = True
        ttft = checkpointed
    if not ttft.fits(gpu):
        refused["ttft"] = (f"GPU memory: TTFT needs {ttft.describe()} of the GPU's {gpu / GIB:.1f} GiB even with "
                           f"gradient checkpointing: lower ttft_max_seq_len or the LoRA rank")
    lines.append(f"TTFT {ttft.describe()}")
    if engine == "vllm":  # vLLM starts when one max_model_len sequence fits; it queues the rest
        tokens, fits = vllm_kv_tokens(sample, gpu), sampling_fits(sample, gpu, "vllm", max_len)
        if not fits and tokens // 1024 * 1024 >= MIN_MODEL_LEN:
            warnings.append(f"vLLM's KV cache holds {tokens} tokens beside its {sample.weights / GIB:.1f} GiB of "
                            f"weights in {sample.share:.0%} of the GPU's {gpu / GIB:.1f} GiB, less than max_model_len "
                            f"{max_len}: max_model_len lowered to {tokens // 1024 * 1024} (longer prompts drop "
                            f"train pairs)")
            sample_settings["max_model_len"] = tokens // 1024 * 1024
        elif not fits:
            refused["sample"] = refused["first_shot"] = (
                f"GPU memory: vLLM's KV cache holds {tokens} tokens beside its {sample.weights / GIB:.1f} GiB of "
                f"weights in {sample.share:.0%} of {gpu / GIB:.1f} GiB, under {MIN_MODEL_LEN}: raise "
                f"gpu_memory_utilization, lower the LoRA rank (vLLM keeps max_loras slots of it) or use a smaller "
                f"model")
        lines.append(f"vLLM: room for {tokens} KV tokens, {tokens // max_len} sequences of {max_len} at once "
                     f"(max_num_seqs {stage_values(config, 'sample_settings')['max_num_seqs']}: vLLM queues the rest)")
        held = min(sample.kv_cache, tokens * sample.details["kv_bytes_per_token"])  # vLLM takes its whole share
        sample = dataclasses.replace(sample, kv_cache=held)
    elif not sample.fits(gpu):  # the transformers engine holds a whole batch: a smaller batch
        batch = next((n for n in range(sample_seqs(config) - 1, 0, -1)
                      if sample_estimate(config, shape, lora["lora_r"], gpu, n, attention)[2].fits(gpu)), 0)
        if batch:
            warnings.append(f"the transformers engine needs {sample.total / GIB:.1f} GiB for a batch of "
                            f"{sample_seqs(config)} of the GPU's {gpu / GIB:.1f}: {batch_key(config)} lowered to "
                            f"{batch}")
            sample_settings[batch_key(config)] = batch
            sample = sample_estimate(config, shape, lora["lora_r"], gpu, batch, attention)[2]
        else:
            refused["sample"] = refused["first_shot"] = (
                f"GPU memory: the transformers engine needs {sample.total / GIB:.1f} GiB ({sample.describe()}) for "
                f"one sequence of {max_len} tokens, of the GPU's {gpu / GIB:.1f}: lower max_model_len")
    lines.append(f"sampling ({engine}) {sample.describe()}")
    degraded = dataclasses.replace(config, ttft_settings=ttft_settings, sample_settings=sample_settings)
    record = {"gpu_gib": round(gpu / GIB, 2), "ttft_gib": round(ttft.total / GIB, 2),
              "sample_gib": round(sample.total / GIB, 2)}
    return MemoryCheck(tuple(lines), degraded, tuple(warnings), refused, record)
