"""One config system: the run's config files and each stage's settings, as frozen dataclasses.

* `SubmissionConfig` / `WheelsConfig`: the notebook configs (`kaggle/configs/*.yaml`), read and
  type-checked by `load_config` (unknown keys and wrong types are refused, naming the known keys).
  A config file may build on another with `extends: other.yaml` (`read_config_file`).
* Stage settings (`TTFTSettings`, ...): one frozen dataclass per stage whose fields carry their
  default and help text (`setting`). The stage's CLI is generated from it (`add_arguments`),
  the stage builds its config from the parsed values (`settings_from`), and the orchestrator
  builds the stage's argv from the same fields (`to_argv`). The run config's defaults for a
  stage (`ttft_steps`, `selection`, ...) are the stage's defaults: no default is written twice.
  `TTFTSettings`, `SampleSettings`, `RescoreSettings` and `VoteSettings` live here (the notebook
  builds their argv before the install); `finetune.FinetuneConfig` uses the same helpers.
* A run config names further settings of a stage in a mapping (`ttft_settings`, `sample_settings`:
  `STAGE_SETTINGS`), checked at load against the stage's dataclasses (a name, a type, a choice, and
  not one the run sets from a key of its own: `RUN_SETTINGS`) and turned into argv the same way.

Standard library only: the notebook reads its config before the offline install has run.
It is over 400 lines because the run configs and the stages' settings are one system: the field
helpers, the stage settings the orchestrator builds argv from, the run configs whose defaults are
those settings' fields, the loader that checks a config's typed stage mappings against the stage
dataclasses beside it (split, each half would import the other).

`check_config` (called by `load_config`) range-checks every value: one definition of what a run
config may hold (`CONFIG_RANGES`), so that the builder, the run and the planner refuse the same
values with one line naming the key and the allowed range.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.hardware import HARDWARE, hardware_of  # standard library only, like this module


class ConfigError(ValueError):
    """A bad setting or combination of settings of a stage, reported before anything heavy is
    loaded; the message names the flag and what to change."""


# ----------------------------------------------------------------------------- stage settings

def setting(default: Any, help: str, **argparse_kwargs) -> Any:
    """A dataclass field that is also a CLI flag: its default, its help text and further
    argparse keywords (`choices`, `nargs`, `metavar`, `action="append"`, `type` where the
    annotation does not tell it).  A list default is copied for every instance."""
    metadata = {"help": help, **argparse_kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


EXCLUSIVE = "exclusive"  # a setting's metadata key: the name of its group of mutually exclusive flags


def default_of(f: dataclasses.Field) -> Any:
    """A settings field's default (a fresh copy of a list default)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _scalar(hint: Any) -> Any:
    """The value type inside an annotation: `X | None` is X, `tuple[X, ...]` and `list[X]` are X
    (one value of an nargs or append flag)."""
    while True:
        args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
        if not args:
            return hint
        hint = args[0]


def _is_tuple(hint: Any) -> bool:
    """A `tuple[...]` (or `tuple[...] | None`) annotation: argparse's list becomes a tuple."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(hint))
    return hint is tuple or typing.get_origin(hint) is tuple


def _flag_type(f: dataclasses.Field, hint: Any):
    """The argparse type of a field: from `type=` in its metadata, else its annotation (int, float,
    str, bool; `X | None`, `tuple[X, ...]`, `list[X]` are X)."""
    if "type" in f.metadata:
        return f.metadata["type"]
    return _scalar(hint)


def _shown_default(value: Any) -> str:
    if value is None or value == [] or value == ():
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(map(str, value))
    return f" (default {value})"


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                  dashed_aliases: bool = False) -> None:
    """One `--NAME` per field of the settings dataclass `cls`, with the field's default and help
    (and `--NAME-WITH-DASHES` too when `dashed_aliases`).  A bool field is a switch with its
    negation: `--NAME` / `--no-NAME`.  Fields whose metadata name the same `exclusive` group are
    mutually exclusive flags (`--steps` or `--copies`)."""
    hints = typing.get_type_hints(cls)
    exclusive: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind = _flag_type(f, hints[f.name])
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if dashed_aliases and "_" in f.name else [])
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        default = default_of(f)
        if kind is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        extra = {k: v for k, v in f.metadata.items() if k not in ("help", "type", EXCLUSIVE)}
        target = parser
        if EXCLUSIVE in f.metadata:  # flags of one group may not be given together (argparse says which)
            if f.metadata[EXCLUSIVE] not in exclusive:
                exclusive[f.metadata[EXCLUSIVE]] = parser.add_mutually_exclusive_group()
            target = exclusive[f.metadata[EXCLUSIVE]]
        target.add_argument(*names, type=kind, default=default, help=f"{help_text}{_shown_default(default)}",
                            **extra)


def settings_from(cls: type, values: Any):
    """An instance of the settings dataclass `cls` from parsed arguments (or a mapping); the
    lists argparse gives for a tuple field become tuples."""
    get = values.get if isinstance(values, Mapping) else lambda k, d: getattr(values, k, d)
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        value = get(f.name, default_of(f))
        out[f.name] = tuple(value) if isinstance(value, list) and _is_tuple(hints[f.name]) else value
    return cls(**out)


def to_argv(cls: type, values: Mapping[str, Any]) -> list[str]:
    """The stage flags for `values` (field name -> value) of the settings dataclass `cls`: the
    orchestrator calls a stage with the same names its CLI was generated from (an unknown name
    is an error here, not a usage error in a subprocess).  None is left out (the stage's default);
    a bool is `--NAME` or `--no-NAME`; a tuple or list gives its items after the flag (an `append` flag
    is repeated per item)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    argv: list[str] = []
    for name, value in values.items():
        if name not in known:
            raise KeyError(f"{cls.__name__} has no setting {name!r}")
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{name}" if value else f"--no-{name}"]
        elif known[name].metadata.get("action") == "append":  # one flag per item
            argv += [a for item in value for a in (f"--{name}", *map(str, item))]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{name}", *map(str, value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


DTYPES = ("float32", "bfloat16", "float16")  # the model precisions a stage can be asked for
AUTO_DTYPE = "auto"  # bf16 where the device computes it natively (fp16 on older GPUs, fp32 on other CPUs): models.auto_dtype
AUTOCAST_BF16 = "autocast-bfloat16"  # training only: fp32 weights, bf16 matmuls under torch.autocast (docs/accuracy.md)
PRECISIONS = (AUTO_DTYPE, *DTYPES)  # what sample and rescore take
TRAIN_PRECISIONS = (*PRECISIONS, AUTOCAST_BF16)  # what ttft takes
PRECISION_HELP = ("auto: bfloat16 where the device computes it natively (GPUs from Ampere on, CPUs with AVX-512 BF16, "
                  "AMX or Arm BF16), else float16 on a GPU and float32 on a CPU; default: auto (ARC_TTFT_CPU_DTYPE pins a CPU's)")
DETERMINISTIC_HELP = ("reproducible run: torch's deterministic algorithms, vLLM's batch-invariant mode where the "
                      "installed vLLM has it (pipeline/core/determinism.py); slower on a GPU")
LONG_TASK_RULES = ("skip", "scale")  # TTFT's length gating (--max_task_tokens): budget.length_share
FORMAT_HELP = ("prompt format: arc24 (the project's prompts and grid encoders), architects or nvarc (the public "
               "checkpoints' texts, pipeline/core/formats.py); default: from cfg.json, else arc24")


@dataclass(frozen=True)
class TTFTSettings:
    """Test-time fine-tuning's training settings (`python -m pipeline ttft`).  A task's length of
    training is `steps`, or `copies` x `epochs` (`ttft_step_count`): not both."""
    steps: int = setting(300, "optimizer steps per task (or --copies)", exclusive="length")
    copies: int | None = setting(None, "instead of --steps: N augmented copies of the task's leave-one-out samples, "
                                       "each trained once per epoch; steps = ceil(copies x epochs / batch_size) "
                                       "(NVARC: 128 copies x 1 epoch)", exclusive="length")
    epochs: int | None = setting(None, "with --copies: passes over the copies (default 1)")
    min_steps: int | None = setting(None, "never scale a task below this many steps; skip it instead "
                                          "(default: steps // 10, at least 1)")
    learning_rate: float = setting(8e-5, "peak learning rate")
    batch_size: int = setting(1, "effective batch size")
    per_device_batch_size: int = setting(1, "samples per forward pass")
    lr_scheduler_type: str = setting("linear", "learning-rate schedule",
                                     choices=("linear", "cosine", "constant", "constant_with_warmup"))
    warmup_ratio: float = setting(0.05, "share of the steps spent warming up")
    max_seq_len: int = setting(5120, "longest training sample in tokens")
    max_task_tokens: int | None = setting(None, "length gating: a task whose longest leave-one-out sample is over N "
                                                "tokens gets no TTFT (--long_tasks skip: sampling serves it the "
                                                "base model or --adapter_path) or fewer steps (scale); default: no gate")
    long_tasks: str = setting("skip", "with --max_task_tokens: skip a longer task, or scale its steps by N / its "
                                      "longest sample (about the trained tokens of a task at the gate)",
                              choices=LONG_TASK_RULES)
    group_size: int = setting(1, "tasks sharing one adapter (trained k x steps)")
    gradient_checkpointing: bool = setting(False, "less memory, ~25% slower")
    loss_reduction: str = setting("sample", "average the loss per sample or per token", choices=("sample", "token"))
    seed: int = setting(0, "seeds the LoRA initialisation, the data draws and the trainer")
    format: str | None = setting(None, FORMAT_HELP)
    deterministic: bool = setting(False, DETERMINISTIC_HELP)


TTFT = TTFTSettings()


def ttft_step_count(steps: int, copies: int | None, epochs: int | None, batch_size: int) -> int:
    """The optimizer steps of one task's TTFT: `steps`, or with `copies` (N augmented copies of the
    task's training samples, each seen once per epoch) ceil(copies x epochs / batch_size), the last
    batch topped up from the next epoch's copies.  The one rule: the stage, the config loader (so
    the run, its budget and the planner count these steps) and the docs (docs/ttft.md) use it."""
    if copies is None:
        if epochs is not None:
            raise ConfigError(f"--epochs {epochs} counts passes over --copies: give --copies too (or --steps alone)")
        return steps
    epochs = 1 if epochs is None else epochs
    if copies < 1 or epochs < 1 or batch_size < 1:
        raise ConfigError(f"--copies {copies}, --epochs {epochs} and --batch_size {batch_size} must each be >= 1")
    return -(-copies * epochs // batch_size)


# LoRA on the input embedding and the output head (NVARC's TTFT): peft trains it, the transformers
# engine serves it unmerged (a tied embedding would take both deltas when merged); vLLM is not
# trusted with it (its LoRA support for these modules differs by model class and version), so a
# config that trains it and samples with vLLM is refused at load (`load_config`).
EMBEDDING_MODULES = ("embed_tokens", "lm_head")
LORA_EMBEDDINGS_PRESET = "all-linear+embeddings"   # every linear layer, the embedding and the head
# The linear layers of one Llama-style block as peft names them, and the LoRA target presets: one
# table for the trainer (training/lora.py), the memory model and the planner (planning/), which
# must not import torch.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
LINEAR_MODULES = ATTENTION_MODULES + MLP_MODULES
ALL_LINEAR = "all-linear"  # peft's own shorthand: every linear layer but the output head
LORA_TARGET_PRESETS = {
    "attention": ATTENTION_MODULES,
    "attention+mlp": LINEAR_MODULES,
    ALL_LINEAR: (ALL_LINEAR,),
    # NVARC's TTFT LoRA: peft's all-linear cannot be combined with names, so the layers are named;
    # a model whose linear layers are named otherwise is told which names it has (check_target_modules)
    LORA_EMBEDDINGS_PRESET: LINEAR_MODULES + EMBEDDING_MODULES,
}
# A fresh LoRA's hyper-parameters when nothing sets them: the trainer's `LoraSettings` (finetune's
# flags, ttft's fresh LoRA), the settings' help and the planner's and memory model's recipes read these.
DEFAULT_LORA_R = 32
DEFAULT_LORA_ALPHA = 64       # rsLoRA: scaled by alpha / sqrt(r)
DEFAULT_LORA_DROPOUT = 0.1
DEFAULT_LORA_TARGET = "attention"  # a preset of LORA_TARGET_PRESETS


def lora_targets_embeddings(targets) -> bool:
    """Whether a LoRA target list (`--lora_target` values: presets or module names, spaces or commas
    allowed; or an adapter config's `target_modules`) includes the embedding or the output head."""
    names = [n for t in ([targets] if isinstance(targets, str) else targets or ()) for n in
             str(t).replace(",", " ").split()]
    return any(n == LORA_EMBEDDINGS_PRESET or n in EMBEDDING_MODULES for n in names)


@dataclass(frozen=True)
class TTFTModelSettings:
    """How TTFT loads the model and which LoRA it trains (`python -m pipeline ttft`, groups "model"
    and "fresh LoRA").  The LoRA fields are None unless given: they describe a fresh LoRA (their
    defaults are `training.trainer.LoraSettings`'), and giving one with `--adapter_path` is an error."""
    torch_dtype: str | None = setting(None, PRECISION_HELP + "; autocast-bfloat16: fp32 weights under bf16 autocast "
                                            "(bfloat16: bf16 weights, fp32 LoRA and optimizer)", choices=TRAIN_PRECISIONS)
    grid_encoder: str | None = setting(None, "arc24 format: default from cfg.json, else the project's default encoder")
    prompt_version: str | None = setting(None, "arc24 format: default from cfg.json, else the project's default prompt")
    lora_r: int | None = setting(None, f"fresh LoRA: rank (default {DEFAULT_LORA_R})")
    lora_alpha: int | None = setting(None, f"fresh LoRA: alpha (default {DEFAULT_LORA_ALPHA}; rsLoRA scale alpha/sqrt(r))")
    lora_dropout: float | None = setting(None, f"fresh LoRA: dropout (default {DEFAULT_LORA_DROPOUT:g})")
    lora_target: tuple[str, ...] | None = setting(None, f"fresh LoRA: {DEFAULT_LORA_TARGET} (default) | attention+mlp | all-linear "
                                                        f"| {LORA_EMBEDDINGS_PRESET} (also "
                                                        f"{' and '.join(EMBEDDING_MODULES)}: the transformers engine "
                                                        "serves it, vLLM does not) | module names", nargs="+")
    use_dora: bool | None = setting(None, "fresh LoRA: DoRA (default off; vLLM cannot serve it)")
    use_rslora: bool | None = setting(None, "fresh LoRA: rsLoRA scaling alpha/sqrt(r) (default on; "
                                            "--no-use_rslora: plain alpha/r)")
    full_finetune: bool = setting(False, "no LoRA: train every weight of the model per task, saved as the task's "
                                         "difference from the base weights (bf16; the transformers engine serves "
                                         "it, vLLM does not); not with --adapter_path or fresh-LoRA flags")


SAMPLE_METHODS = ("sample", "dfs")  # how each augmented prompt is answered
DEFAULT_MAX_MODEL_LEN = 10240       # spec 6.1; capped by the model's max_position_embeddings


@dataclass(frozen=True)
class SampleSettings:
    """Augmented sampling's settings (`python -m pipeline sample`, `eval-checkpoint`)."""
    predictions_per_task: int = setting(8, "augmented samples per test input, any N >= 1, spread evenly over the 8 "
                                           "dihedral transforms (the original submission used 96)")
    engine: str = setting("auto", "auto: vLLM on CUDA; on CPU transformers with LoRA adapters, vLLM without "
                                  "(measured; docs/sampling.md)", choices=("auto", "vllm", "transformers"))
    temperature: float = setting(0.0, "0 = greedy (spec 6.7)")
    seed: int = setting(0, "seeds the augmentations (per task) and sampling")
    format: str | None = setting(None, FORMAT_HELP)
    grid_encoder: str | None = setting(None, "arc24 format: default from cfg.json, else the project's default encoder")
    prompt_version: str | None = setting(None, "arc24 format: default from cfg.json, else the project's default prompt")
    max_model_len: int | None = setting(None, f"context length (default {DEFAULT_MAX_MODEL_LEN}, capped by the "
                                              "model's); longer prompts drop trailing train pairs")
    method: str = setting("sample", "sample: one answer per augmented prompt (greedy at temperature 0); dfs: every "
                                    "answer with probability >= --min_prob (depth-first search with a KV cache, "
                                    "transformers engine; pipeline/sampling/search.py)", choices=SAMPLE_METHODS)
    min_prob: float = setting(0.1, "dfs: smallest total probability of an answer")
    max_candidates: int = setting(8, "dfs: most answers kept per augmented prompt")
    dfs_batch_views: int = setting(4, "dfs: augmented prompts of a task searched together, one batched forward pass "
                                      "per step (pipeline/sampling/batched_search.py); 1 = one at a time (the "
                                      "batch-1 search)")
    dfs_batch_seconds: float | None = setting(None, "dfs: seconds a batch of prompts may search; then each keeps the "
                                                    "most probable answers it found (NVARC: 540; default no cap)")
    dfs_task_seconds: float | None = setting(None, "dfs: seconds of search per task, its batches together; then "
                                                   "its prompts keep what they found (NVARC: 1200; default no cap)")
    dfs_speculative: bool = setting(True, "dfs: first verify, in one forward pass, the answers other views of the "
                                          "test input found (mapped into this view), and feed each search step's "
                                          "guessed continuation with it; the same answers, fewer forwards "
                                          "(pipeline/sampling/speculation.py; --no-dfs_speculative: the plain search)")
    max_tokens: str | int = setting("max", "answer budget: 'max' (largest 30x30 answer of the encoder), 'task' "
                                           "(largest plausible answer of each task; about 45% of the 30x30 cells "
                                           "on average) or a number")
    batch_size: int | None = setting(None, "prompts per engine call, the unit written to the file (default: vLLM "
                                           "512; transformers 8 on CPU, 32 on CUDA, which is also its padded batch)")
    watchdog: float | None = setting(None, "seconds one generate call may take before it counts as hung (default: "
                                           "600 s + the call's token budget at 2 tokens/s on CPU, 50 on CUDA; "
                                           "0 disables)")
    dtype: str | None = setting(None, "model precision; " + PRECISION_HELP, choices=PRECISIONS)
    deterministic: bool = setting(False, DETERMINISTIC_HELP)


TRANSFORMERS_BATCH = {"cuda": 32, "cpu": 8}   # the transformers engine's padded batch when not told (batch_size)
SAMPLE = SampleSettings()


@dataclass(frozen=True)
class VLLMSettings:
    """The vLLM engine's options (`python -m pipeline sample`, group "vLLM"; ignored by transformers)."""
    gpu_memory_utilization: float = setting(0.9, "share of each GPU's memory vLLM may take")
    swap_space: float = setting(0, "GiB of CPU swap per GPU (0: far less RAM at no speed cost, spec 9.5; ignored by "
                                   "vLLM versions without it)")
    enforce_eager: bool = setting(True, "no CUDA graphs / compilation (--no-enforce_eager: allow them: more memory, "
                                        "slower start)")
    max_num_seqs: int = setting(255, "sequences vLLM runs at once")
    max_loras: int | None = setting(None, "adapters one batch can mix (default min(#adapters, 4))")
    max_lora_rank: int | None = setting(None, "default: the largest adapter rank, rounded up to vLLM's")
    tensor_parallel_size: int = setting(1, "GPUs one model is split over")


VLLM = VLLMSettings()


VOTE_METHODS = ("v2", "v1")        # voting by count (pipeline/selection/vote.py)
SCORED_METHODS = ("poe", "nvarc")  # pipeline.selection.rescore's rules that need a rescore file
# the default selection everywhere: `vote --method`, the notebook's `selection`, `evaluate`'s vote,
# and the rule for the test inputs a scored rule has no scores for (voting v2: count, then mean
# per-token log-prob; docs/search.md)
DEFAULT_SELECTION = "v2"


@dataclass(frozen=True)
class RescoreSettings:
    """Candidate rescoring's settings (`python -m pipeline rescore`, docs/search.md)."""
    views: int = setting(8, "augmented views per candidate")
    max_candidates: int = setting(16, "top candidates by vote scored")
    batch_size: int = setting(16, "candidate-views (a candidate in one view) per forward pass")
    view_batch: int = setting(4, "views whose prompts are prefilled in one forward pass (0: view after view, the "
                                 "unbatched reference)")
    seed: int = setting(0, "seeds each task's views")
    format: str | None = setting(None, FORMAT_HELP.replace("default: from cfg.json", "default: the weights' cfg.json"))
    dtype: str = setting("float32", "model precision, float32 on every device unless told (candidates' scores are "
                                    "compared across views: bf16 logits round by ~0.4 %); auto: bfloat16 where native",
                         choices=PRECISIONS)
    deterministic: bool = setting(False, DETERMINISTIC_HELP)


RESCORE = RescoreSettings()


@dataclass(frozen=True)
class VoteSettings:
    """Voting's settings (`python -m pipeline vote`)."""
    method: str = setting(DEFAULT_SELECTION, "v2, v1; or with --scores (from `rescore`): poe = product of experts over the "
                                "views, nvarc = times found minus mean NLL over the views",
                          choices=VOTE_METHODS + SCORED_METHODS)
    top: int = setting(2, "voted grids used per test input (1 keeps only the top vote and takes attempt_2 from the "
                          "fallback; >2 also writes attempt_3..N)", metavar="N")


VOTE = VoteSettings()


# ----------------------------------------------------------------------------- run configs

@dataclass(frozen=True)
class SubmissionConfig:
    """The competition notebook. Paths are absolute Kaggle paths, or relative to the notebook's
    working directory (the local config), so a built notebook holds no path of the build machine."""
    kind: str = "submission"
    title: str = "arc-ttft submission"
    # --- where things are
    input_root: str = "/kaggle/input"                   # where Kaggle mounts inputs: the paths below that lie in it
                                                        # are also found in Kaggle's other layouts (kaggle/paths.py)
    input_dir: str = "/kaggle/input/arc-prize-2024"      # competition data (read-only)
    test_challenges: str = "arc-agi_test_challenges.json"  # inside input_dir
    working_dir: str = "/kaggle/working"                # submission.json is written here
    run_dir: str = "run"                                # inside working_dir: logs, timing, predictions, score
    scratch_dir: str = "/tmp/arc-ttft"                  # big files not kept as output: adapters, shards
    wheels_dir: str = "/kaggle/input/arc-ttft-wheels/wheels"
    install_packages: tuple[str, ...] = ("vllm", "peft", "transformers")  # install only if one is missing
    # --- model
    model: str = "embedded"                             # a model directory, or the alias `embedded`
    model_architecture: str | None = None               # the model's shape when its folder is not at hand (a Kaggle
                                                        # input): a name of planning/memory.ARCHITECTURES, for `plan`
    format: str | None = SAMPLE.format                  # prompt format of every stage: arc24, architects, nvarc
                                                        # (None: the adapter's / model's cfg.json, else arc24)
    adapter: str | None = None                          # pretrained LoRA that TTFT continues (and sampling falls back to)
    devices: tuple[str, ...] = ("cuda:0",)              # one worker per entry; ("cpu",) on a CPU machine
    hardware: str | None = None                         # what `plan` projects onto (T4, L4, H100, cpu, ...);
                                                        # None: from kaggle_competition, else cpu for CPU devices
    # --- test-time fine-tuning (per task)
    # --- anytime: a cheap answer for every test input before any time goes to TTFT
    first_shot_predictions: int = 1                     # greedy predictions per test input without TTFT (0: off)
    first_shot_budget_fraction: float = 0.15            # share of the time left it may use
    # --- test-time fine-tuning
    ttft_steps: int = TTFT.steps                        # the TTFT stage's defaults (TTFTSettings below)
    ttft_copies: int | None = TTFT.copies               # instead of ttft_steps: N augmented copies x ttft_epochs;
    ttft_epochs: int | None = TTFT.epochs               # the loader sets ttft_steps from them (ttft_step_count)
    ttft_learning_rate: float = TTFT.learning_rate
    ttft_batch_size: int = TTFT.batch_size
    ttft_max_seq_len: int = TTFT.max_seq_len
    ttft_budget_fraction: float = 0.55                  # share of the time left that TTFT may use, when the
                                                        # first shot measured nothing (else: measured shares)
    ttft_min_fraction: float = 0.2                      # measured shares: TTFT gets at least this share of the
    ttft_max_fraction: float = 0.8                      # time left and at most this one; sampling the rest
    ttft_settings: dict[str, Any] = field(default_factory=dict)  # more TTFT settings by name, checked at load
                                                        # (STAGE_SETTINGS): {gradient_checkpointing: true, ...}
    ttft_extra_args: tuple[str, ...] = ()               # further `python -m pipeline ttft` flags (no setting of
                                                        # their own); checked by the stage's parser at build time
    # --- sampling
    predictions_per_task: int = 96                      # the original submission's (the stage's own default is 8)
    engine: str = SAMPLE.engine                         # auto | vllm | transformers
    temperature: float = SAMPLE.temperature
    sample_settings: dict[str, Any] = field(default_factory=dict)  # more sampling (and vLLM) settings by name,
                                                        # for the first shot and the sampling: {dtype: float16},
                                                        # DFS candidates {method: dfs, min_prob: 0.1}
    sample_extra_args: tuple[str, ...] = ()             # further `python -m pipeline sample` flags (as ttft's)
    # --- selection (docs/search.md)
    rescore_views: int = 0                              # views per candidate; 0 = off, so not the stage's
                                                        # default (RESCORE.views, 8, what to set to turn it on)
    rescore_budget_fraction: float = 0.2                # share of sampling's time kept for rescoring
    selection: str = VOTE.method                        # v2 | poe | nvarc (poe and nvarc need rescore_views)
    # --- time
    deadline_hours: float = 12.0                        # Kaggle's limit, counted from the first cell
    safety_margin_minutes: float = 30.0                 # the global deadline is deadline_hours minus this
    vote_reserve_minutes: float = 10.0                  # kept back from sampling for voting and scoring
    stage_grace_seconds: float = 60.0                   # a stage is killed this long after its own --deadline
    min_stage_seconds: float = 60.0                     # a stage is skipped with less time than this left
    watchdog_minutes: float = 30.0                      # a stage silent this long is killed as hung
    # --- placeholder test set (ARC Prize's public copy of known tasks): a smoke run, self-scored
    smoke_tasks: int = 8
    smoke_ttft_steps: int = 16
    smoke_predictions_per_task: int = 8
    # --- environment of every stage subprocess
    stage_env: dict[str, str] = field(default_factory=dict)
    deterministic: bool = False                         # reproducible stages (core/determinism.py): fixed hash
                                                        # seed, torch's deterministic algorithms, vLLM batch-invariant
    # --- `kaggle kernels push` metadata (notebook_builder --kaggle-user)
    kaggle_competition: str | None = None
    kaggle_datasets: tuple[str, ...] = ()               # "{user}/name" is filled with --kaggle-user
    kaggle_models: tuple[str, ...] = ()                 # Kaggle Models: "owner/model/framework/variation/version"
    kaggle_accelerator: str | None = None               # machine_shape; None: from `hardware` (kaggle/preflight.py)
    # --- local dry run only (`notebook_builder run`): how to build the Kaggle-like input folder
    local_source_dir: str | None = None                 # repo-relative folder with the Kaggle files
    local_tasks: tuple[str, ...] = ()                   # evaluation task ids copied as the test set
    local_adapter_source: str | None = None             # repo-relative adapter copied to `adapter` (a Kaggle dataset there)
    local_model_shrink_vocab: dict[str, str] = field(default_factory=dict)  # {source: embedded or a repo-relative
                                                        # model, format: F}: `model` is made as the shrink-vocab stage's
                                                        # model of source for F (made once, reused while its cfg.json
                                                        # says the same: shrink_vocab.reduced_model), a model dataset


@dataclass(frozen=True)
class WheelsConfig:
    """The helper notebook run once on Kaggle *with* internet: it builds the offline wheels folder
    that becomes the wheels dataset the competition notebook installs from."""
    kind: str = "wheels"
    title: str = "arc-ttft offline wheels"
    wheels_output_dir: str = "/kaggle/working/wheels"
    requirement_files: tuple[str, ...] = ("requirements.txt", "requirements-cuda.txt")  # repo-relative, read at build time
    packages: tuple[str, ...] = ("vllm", "transformers", "tokenizers", "safetensors", "peft", "accelerate")
    requirements: tuple[str, ...] = ()                  # their pinned lines; the builder fills them in
    kaggle_competition: str | None = None
    kaggle_datasets: tuple[str, ...] = ()


CONFIG_KINDS = {"submission": SubmissionConfig, "wheels": WheelsConfig}


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_type_ok(k, args[0]) and _type_ok(v, args[1])
                                               for k, v in value.items())
    return isinstance(value, hint)


def read_yaml_keys(path: str | os.PathLike) -> dict:
    """The keys of one YAML config file; ConfigError naming the file, and the line and column of a
    YAML syntax error, or saying that the file is not a mapping of keys (a top-level list)."""
    import yaml  # only the builder and the planner read YAML; the notebook passes a dict

    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys (key: value lines), got a YAML "
                          f"{type(values).__name__}")
    return values
# ----------------------------------------------------------------------------- typed stage settings

# A run config's mapping of a stage's settings -> the settings dataclasses whose fields it may name.
STAGE_SETTINGS = {"ttft_settings": (TTFTSettings, TTFTModelSettings), "sample_settings": (SampleSettings, VLLMSettings)}
# The settings the run passes from a top-level key of its own: a mapping naming one is refused, naming that key.
RUN_SETTINGS = {
    "ttft_settings": {"steps": "ttft_steps", "copies": "ttft_copies", "epochs": "ttft_epochs",
                      "learning_rate": "ttft_learning_rate", "batch_size": "ttft_batch_size",
                      "max_seq_len": "ttft_max_seq_len", "format": "format", "deterministic": "deterministic"},
    "sample_settings": {"predictions_per_task": "predictions_per_task", "engine": "engine",
                        "temperature": "temperature", "format": "format", "deterministic": "deterministic"},
}


def run_settings(config, key: str) -> dict[str, Any]:
    """{setting: value} of the settings the run passes to the stage of `key` from its own top-level
    keys (RUN_SETTINGS), e.g. `steps` from `ttft_steps`."""
    return {name: getattr(config, top) for name, top in RUN_SETTINGS[key].items()}


def stage_settings_problem(key: str, values: Mapping[str, Any]) -> str:
    """"" when every name of the mapping `key` (STAGE_SETTINGS) is a setting of its stage with a value
    of the field's type (and among its choices) that has no top-level key of its own; else the
    one-line problem, naming `key`, the setting and what to change."""
    fields = {f.name: (cls, f) for cls in reversed(STAGE_SETTINGS[key]) for f in dataclasses.fields(cls)}
    for name, value in values.items():
        if name in RUN_SETTINGS[key]:
            return (f"config key {key!r}: {name!r} is set by the config key {RUN_SETTINGS[key][name]!r}: "
                    f"set that instead")
        if name not in fields:
            known = sorted(set(fields) - set(RUN_SETTINGS[key]))
            return f"config key {key!r}: unknown setting {name!r}; known: {', '.join(known)}"
        cls, f = fields[name]
        hint = typing.get_type_hints(cls)[name]
        if not _type_ok(value, hint):
            return f"config key {key!r}: {name}: {value!r} is not of type {hint.__name__ if isinstance(hint, type) else hint}"
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            return f"config key {key!r}: {name}: {value!r} is not one of {', '.join(map(str, choices))}"
        problem = stage_setting_range_problem(key, name, value)
        if problem:
            return f"config key {key!r}: {problem}"
    return ""


def stage_settings_argv(key: str, values: Mapping[str, Any]) -> list[str]:
    """The stage flags of the mapping `key` (checked by `stage_settings_problem` at load)."""
    argv = []
    for cls in STAGE_SETTINGS[key]:
        names = {f.name for f in dataclasses.fields(cls)}
        argv += to_argv(cls, {k: v for k, v in values.items() if k in names})
    return argv


EXTENDS = "extends"  # a config file's key naming the config file it builds on
# keys that say one thing two ways: a layer (an extending file, a --set override) that sets the key
# drops these keys of the layers below it, so a preset with `ttft_copies` can extend a config with
# `ttft_steps`; one layer setting both is refused at load (`load_config`)
REPLACES = {"ttft_copies": ("ttft_steps",), "ttft_steps": ("ttft_copies", "ttft_epochs")}


def override_config(base: Mapping, upper: Mapping) -> dict:
    """The keys of `upper` over those of `base`, key by key, less the keys of `base` that a key of
    `upper` replaces (REPLACES)."""
    dropped = {other for key in upper for other in REPLACES.get(key, ()) if other not in upper}
    return {**{k: v for k, v in base.items() if k not in dropped}, **upper}


def read_config_file(path: str | os.PathLike) -> dict:
    """The keys of a YAML config file over those of the file it `extends` (a path relative to it;
    that one may extend another): the extending file's keys win, key by key, so a mapping such as
    `stage_env` is replaced whole.  A missing extended file, a cycle or a file that is no mapping
    is a one-line ValueError naming the file."""
    path, chain, layers = Path(path), [], []
    while True:
        chain.append(path.resolve())
        values = read_yaml_keys(path)
        base = values.pop(EXTENDS, None)
        layers.append(values)
        if base is None:
            break
        if not isinstance(base, str) or not base.strip():
            raise ValueError(f"{path}: {EXTENDS!r} must name a config file (relative to this one), got {base!r}")
        target = path.parent / base
        if target.resolve() in chain:
            cycle = " -> ".join(p.name for p in chain[chain.index(target.resolve()):] + [target.resolve()])
            raise ValueError(f"{path}: '{EXTENDS}: {base}' is a cycle ({cycle})")
        if not target.is_file():
            raise ValueError(f"{path}: '{EXTENDS}: {base}': no such file {target}")
        path = target
    merged: dict = {}
    for values in reversed(layers):  # the file read first (the extending one) last: its keys win
        merged = override_config(merged, values)
    return merged


def load_config(source: str | os.PathLike | Mapping) -> SubmissionConfig | WheelsConfig:
    """A config from a YAML file (`read_config_file`) or a dict (overrides of the dataclass defaults).

    Unknown keys and type mismatches raise ValueError naming the known keys / the expected type."""
    if isinstance(source, (SubmissionConfig, WheelsConfig)):
        return source
    values = dict(source) if isinstance(source, Mapping) else read_config_file(source)
    kind = values.get("kind", "submission")
    if kind not in CONFIG_KINDS:
        raise ValueError(f"config kind {kind!r} unknown; known kinds: {', '.join(CONFIG_KINDS)}")
    cls = CONFIG_KINDS[kind]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)} for kind {kind!r}; "
                         f"known keys: {', '.join(sorted(hints))}")
    for key, value in values.items():
        if not _type_ok(value, hints[key]):
            raise ValueError(f"config key {key!r}: {value!r} is not of type {hints[key]}")
        if isinstance(value, list):
            values[key] = tuple(value)
    for key in STAGE_SETTINGS:
        problem = kind == "submission" and stage_settings_problem(key, values.get(key, {}))
        if problem:
            raise ValueError(problem)
    config = cls(**values)
    check_config(config)
    if kind == "submission":
        config = _with_ttft_steps(config, values)
        problem = _embeddings_engine_problem(config)
        if problem:
            raise ValueError(problem)
        selections = (DEFAULT_SELECTION, *SCORED_METHODS)  # v1 is no notebook selection
        if config.selection not in selections:
            raise ValueError(f"config key 'selection': {config.selection!r} is not one of {', '.join(selections)}")
        if config.selection in SCORED_METHODS and config.rescore_views < 1:
            raise ValueError(f"config key 'selection': {config.selection} ranks by rescored candidates; "
                             f"set rescore_views (e.g. 8)")
        for source in config.kaggle_models:
            if len(source.split("/")) != 5 or not all(source.split("/")):
                raise ValueError(f"config key 'kaggle_models': {source!r} is not "
                                 f"owner/model/framework/variation/version (e.g. someone/qwen3-4b/transformers/default/1)")
    return config


def _with_ttft_steps(config: SubmissionConfig, values: Mapping) -> SubmissionConfig:
    """The config with `ttft_steps` derived from `ttft_copies` x `ttft_epochs` when those are set
    (`ttft_step_count`), so the run, its budget and the planner see the steps the stage trains; a
    `ttft_steps` written beside them must equal the derived count (a resolved config embeds both)."""
    try:
        steps = ttft_step_count(config.ttft_steps, config.ttft_copies, config.ttft_epochs, config.ttft_batch_size)
    except ConfigError:
        raise ValueError("config key 'ttft_epochs': counts passes over 'ttft_copies': set ttft_copies too "
                         "(or ttft_steps alone)") from None
    if config.ttft_copies is None:
        return config
    if "ttft_steps" in values and values["ttft_steps"] != steps:
        raise ValueError(f"config keys 'ttft_steps' ({values['ttft_steps']}) and 'ttft_copies' (x ttft_epochs / "
                         f"ttft_batch_size = {steps} steps) both give TTFT's length: set one")
    return dataclasses.replace(config, ttft_steps=steps)


def _embeddings_engine_problem(config: SubmissionConfig) -> str:
    """"" unless the config trains a fresh LoRA on the embedding or the head (EMBEDDING_MODULES)
    and samples with vLLM (`engine: vllm`, or `auto` on a GPU): vLLM is not trusted to serve it."""
    targets = config.ttft_settings.get("lora_target")
    gpu = any(str(d).startswith("cuda") for d in config.devices)
    if not lora_targets_embeddings(targets) or not (config.engine == "vllm" or (config.engine == "auto" and gpu)):
        return ""
    return (f"config key 'engine': {config.engine} samples with vLLM, which is not trusted to serve a LoRA on "
            f"{' or '.join(EMBEDDING_MODULES)} (ttft_settings lora_target {' '.join(map(str, targets))}): set "
            f"engine: transformers")


# ----------------------------------------------------------------------------- ranges

def _range(low: float | None = None, high: float | None = None, low_open: bool = False):
    """(predicate, text) of a numeric range: finite, >= low (> low when `low_open`), <= high."""
    import math

    def ok(v) -> bool:
        return (math.isfinite(v) and (low is None or (v > low if low_open else v >= low))
                and (high is None or v <= high))
    if low is not None and high is not None:
        text = f"in {'(' if low_open else '['}{low}, {high}]"
    else:
        text = f"{'>' if low_open else '>='} {low}"
    return ok, text


FRACTION, SHARE = _range(0, 1), _range(0, 1, low_open=True)
AT_LEAST_0, AT_LEAST_1, POSITIVE = _range(0), _range(1), _range(0, low_open=True)

# every numeric key of a run config and its allowed range (the stages' own checks agree: ttft
# needs steps >= 1 and a positive learning rate, sample a prediction per test input, ...)
CONFIG_RANGES = {
    "first_shot_predictions": AT_LEAST_0, "first_shot_budget_fraction": FRACTION,
    "ttft_steps": AT_LEAST_1, "ttft_copies": AT_LEAST_1, "ttft_epochs": AT_LEAST_1,
    "ttft_learning_rate": POSITIVE, "ttft_batch_size": AT_LEAST_1,
    "ttft_max_seq_len": AT_LEAST_1, "ttft_budget_fraction": SHARE, "ttft_min_fraction": FRACTION,
    "ttft_max_fraction": FRACTION, "predictions_per_task": AT_LEAST_1, "temperature": AT_LEAST_0,
    "rescore_views": AT_LEAST_0, "rescore_budget_fraction": FRACTION, "deadline_hours": POSITIVE,
    "safety_margin_minutes": AT_LEAST_0, "vote_reserve_minutes": AT_LEAST_0, "stage_grace_seconds": AT_LEAST_0,
    "min_stage_seconds": AT_LEAST_0, "watchdog_minutes": POSITIVE, "smoke_tasks": AT_LEAST_1,
    "smoke_ttft_steps": AT_LEAST_1, "smoke_predictions_per_task": AT_LEAST_1,
}


# the stage settings a run config's mapping may set (STAGE_SETTINGS) whose values have a range; the
# stage checks its own flags with the same table (`stage_setting_range_problem`)
STAGE_SETTING_RANGES = {
    "sample_settings": {"min_prob": SHARE, "max_candidates": AT_LEAST_1, "dfs_batch_views": AT_LEAST_1,
                        "dfs_batch_seconds": POSITIVE, "dfs_task_seconds": POSITIVE},
}


def stage_setting_range_problem(key: str, name: str, value: Any) -> str:
    """"" or "NAME: VALUE is not RANGE" for the setting `name` of the stage mapping `key`
    (`STAGE_SETTING_RANGES`; None, a setting's "no cap", is in range)."""
    ok_text = STAGE_SETTING_RANGES.get(key, {}).get(name)
    if ok_text is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    ok, text = ok_text
    return "" if ok(value) else f"{name}: {value!r} is not {text}"


def _device_ok(device: str) -> bool:
    name, _, index = device.partition(":")
    return (device == "cpu" or device == "cuda") or (name == "cuda" and index.isdigit())


LOCAL_MODEL_SHRINK_KEYS = ("source", "format")  # local_model_shrink_vocab's keys: shrink-vocab's --model, --format


def config_problems(values: Mapping[str, Any]) -> list[str]:
    """Every value of a run config (or of some of its keys: the planner's overrides) outside its
    allowed range, one line each naming the key, the value and the range: `CONFIG_RANGES`, the
    devices (`cpu`, `cuda`, `cuda:N`, at least one), the engine (sampling's choices), the hardware
    (`core/hardware.py`'s table), and a deadline longer than its own margins."""
    problems = []
    for key, (ok, text) in CONFIG_RANGES.items():
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            problems.append(f"config key {key!r}: {value!r} is not {text}")
    if "devices" in values:
        devices = list(values["devices"] or ())
        bad = [d for d in devices if not _device_ok(str(d))]
        if not devices or bad:
            problems.append(f"config key 'devices': {devices!r} must list one or more of cpu, cuda, cuda:N"
                            + (f" ({', '.join(map(repr, bad))} unknown)" if bad else ""))
    engines = next(f.metadata["choices"] for f in dataclasses.fields(SampleSettings) if f.name == "engine")
    if "engine" in values and values["engine"] not in engines:
        problems.append(f"config key 'engine': {values['engine']!r} is not one of {', '.join(engines)}")
    if values.get("hardware") is not None and hardware_of(str(values["hardware"])) is None:
        problems.append(f"config key 'hardware': unknown hardware {values['hardware']!r}; known: {', '.join(HARDWARE)}")
    low, high = values.get("ttft_min_fraction"), values.get("ttft_max_fraction")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
        problems.append(f"config keys 'ttft_min_fraction' {low} and 'ttft_max_fraction' {high}: the minimum "
                        f"exceeds the maximum")
    shrink = values.get("local_model_shrink_vocab")
    if isinstance(shrink, dict) and shrink and set(shrink) != set(LOCAL_MODEL_SHRINK_KEYS):
        problems.append(f"config key 'local_model_shrink_vocab': {shrink!r} must give exactly "
                        f"{' and '.join(LOCAL_MODEL_SHRINK_KEYS)} (e.g. {{source: embedded, format: nvarc}})")
    hours = values.get("deadline_hours")
    margins = sum(values.get(k) or 0 for k in ("safety_margin_minutes", "vote_reserve_minutes")
                  if isinstance(values.get(k), (int, float)))
    if isinstance(hours, (int, float)) and 0 < hours and hours * 60 <= margins:
        problems.append(f"config key 'deadline_hours': {hours} h leaves no time after safety_margin_minutes + "
                        f"vote_reserve_minutes ({margins:g} min)")
    return problems


def check_config(config) -> None:
    """ConfigError listing `config_problems` of a loaded run config (the loader calls it, so the
    builder, the notebook's run and the planner refuse the same values)."""
    values = dataclasses.asdict(config)
    problems = config_problems(values) if isinstance(config, SubmissionConfig) else []
    if problems:
        raise ConfigError("; ".join(problems))


def config_dict(config) -> dict:
    """The resolved config as plain JSON-like data (lists, sorted keys): what the notebook embeds."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(v[k]) for k in sorted(v)}
        return v
    return {k: plain(v) for k, v in sorted(dataclasses.asdict(load_config(config)).items())}


