"""Test-time fine-tuning (TTFT): one LoRA adapter per hidden task, inside a deadline.

    python -m pipeline ttft --model MODEL [--adapter_path A] --dataset CHALLENGES.json \\
        --output_dir OUT --steps 300 --learning_rate 8e-5 --batch_size 1 --deadline 20000

See docs/ttft.md.  In short:

* **Data** (`TaskStream`): endless leave-one-out samples of a task's train pairs.  Every draw
  re-augments the pairs (dihedral × colours × order), picks one pair as the target and shows the
  others as examples, dropping the last example until the sample fits `max_seq_len`
  (`fitting.fit_examples`, spec §3.6).  Test pairs are never read.  A task with no sample that
  fits even with one example is recorded "too_long" and left to the base adapter.
* **Adapters**: each worker loads the base model once, wraps it in the `--adapter_path` LoRA
  (continue training, the original's best setting) or a fresh one, keeps a copy of the adapter's
  initial weights and copies it back before every task (`training.restore_trainable_state`).
  Training is `training.CompletionTrainer` (completion-only loss), one Trainer per task.
* **Outputs**: `OUT/adapters/<task_id>/` = peft adapter (written to a temp dir, renamed) +
  `cfg.json` + `record.json` (written last; status "done" means complete).  Failed, skipped and
  too_long tasks get a record and no adapter.  `OUT/cfg.json`, `OUT/summary.json`, timing
  records in `--timing_log` (default `OUT/timing.jsonl`).
* **Workers and deadline**: one worker per device pulling units (a task, or a group of
  `--group_size` tasks) from a queue, largest first when everything is estimated to fit, else
  (and always with one worker under a deadline) smallest first (`anytime_order`).  A worker starts a unit only if its
  estimated time fits; steps are scaled down to the unit's fair share of the time left (not
  below `--min_steps`), else the unit is skipped.  Training also stops at the deadline.
* **Failures**: an exception, a CUDA OOM (after one retry with a shorter `max_seq_len`) or a
  non-finite loss fails that task only: its record says why, the adapter is reset, the stage
  goes on.  A rerun skips the complete tasks.  Exit 0 whenever the stage ran.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import queue
import shutil
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .augment import random_augmentation
from .config import FORMAT_HELP, TTFT, ConfigError, TTFTSettings, add_arguments, settings_from
from .encoders import DEFAULT_ENCODER, create_grid_encoder
from .files import read_json, write_json_atomic
from .formats import DEFAULT_FORMAT, FORMAT_NAMES
from .finetune import lora_target_modules
from .fitting import fit_examples, leave_one_out, leave_one_out_lengths, sample_tokens
from .models import default_dtype
from .prompts import PROMPT_VERSIONS, build_train_sample, get_prompt_version
from .run_config import DEFAULT_PROMPT_VERSION, RUN_CONFIG, find_run_config, resolve_prompting
from .adapters import ADAPTERS, is_complete, read_record, save_adapter, write_unfinished
from .tasks import TaskError, load_tasks, select_tasks, task_size
from .timing import TIMING_FILE, TimingLog

SUMMARY = "summary.json"
STATUSES = ("done", "failed", "too_long", "skipped")
# keys of OUT/cfg.json that must match when a run is resumed in the same output directory
RESUME_KEYS = ("model_path", "adapter_path", "format", "grid_encoder", "prompt_version", "lora")

MAX_DRAWS = 50            # random draws per sample before a task is declared unusable
LOSS_POINTS = 50          # about this many points on each task's loss curve
OOM_RETRY_FRACTION = 0.75  # after a CUDA OOM, retry once with max_seq_len cut to this share
# First-task estimate, before any step was measured: 6 × parameters FLOPs per trained token
# (forward + backward of the whole model, conservative for LoRA) at this sustained rate.
# Measured: SmolLM2-135M LoRA trains at ~70 GFLOP/s on 2 CPU cores; a T4 reaches ~12 TFLOP/s.
PRIOR_FLOPS = {"cpu": 2e10, "cuda": 5e12}
PRIOR_OVERHEAD_S = 2.0    # per unit: Trainer setup, saving, records
SAFETY_S = 2.0            # kept free before the deadline


class TaskDataError(ValueError):
    """A task from which no training sample can be drawn."""


class NonFiniteLoss(FloatingPointError):
    """The training loss (or the adapter) became NaN or infinite."""


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class TTFTConfig:
    """Everything a worker needs; picklable (workers are spawned with it)."""
    model: str
    output_dir: str
    lora: dict                          # LoraSettings.to_dict(): fresh LoRA, or the --adapter_path one
    adapter_path: str | None = None     # continue this adapter; None: fresh LoRA with `lora`
    format: str = DEFAULT_FORMAT
    grid_encoder: str = DEFAULT_ENCODER
    prompt_version: str = DEFAULT_PROMPT_VERSION
    # the training settings: defaults and meaning in config.TTFTSettings (the CLI is generated from it)
    steps: int = TTFT.steps             # per task (a group of k tasks trains k × steps)
    min_steps: int = max(1, TTFT.steps // 10)  # never scale below this; skip the task instead
    learning_rate: float = TTFT.learning_rate
    batch_size: int = TTFT.batch_size
    per_device_batch_size: int = TTFT.per_device_batch_size
    lr_scheduler_type: str = TTFT.lr_scheduler_type
    warmup_ratio: float = TTFT.warmup_ratio
    max_seq_len: int = TTFT.max_seq_len
    group_size: int = TTFT.group_size
    seed: int = TTFT.seed
    torch_dtype: str | None = None      # None: bfloat16 (float16 without bf16 support) on cuda, float32 on cpu
    gradient_checkpointing: bool = TTFT.gradient_checkpointing
    loss_reduction: str = TTFT.loss_reduction
    timing_log: str | None = None       # None: OUT/timing.jsonl

    @property
    def timing_path(self) -> Path:
        return Path(self.timing_log) if self.timing_log else Path(self.output_dir) / TIMING_FILE

    def run_config(self) -> dict:
        """OUT/cfg.json: what the sampling stage and a resumed run read."""
        return {"stage": "ttft", "model_path": self.model, "adapter_path": self.adapter_path,
                "format": self.format, "grid_encoder": self.grid_encoder, "prompt_version": self.prompt_version,
                "lora": self.lora,
                **{k: v for k, v in dataclasses.asdict(self).items()
                   if k not in ("model", "adapter_path", "format", "grid_encoder", "prompt_version", "lora",
                                "output_dir")}}


def adapter_lora_settings(adapter_path: str | os.PathLike) -> dict:
    """The LoRA settings of a saved peft adapter, as LoraSettings.to_dict()."""
    from .training import lora_settings_from

    path = Path(adapter_path) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"--adapter_path {adapter_path} is not a LoRA adapter directory (no adapter_config.json)")
    return lora_settings_from(read_json(path)).to_dict()


def check_lora_targets(model_dir: str | os.PathLike, lora: dict) -> None:
    """A fresh LoRA's target modules must exist in the model: checked on a weightless (meta
    device) instance, before any worker starts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .training import ALL_LINEAR, check_target_modules

    targets = tuple(lora["target_modules"])
    if targets == (ALL_LINEAR,):
        return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir), local_files_only=True))
    try:
        check_target_modules(model, targets)
    except ValueError as e:
        raise ConfigError(f"--lora_target: {e}") from None


def resolve_dtype(torch_dtype: str | None, device: str) -> str:
    return torch_dtype or default_dtype(device)


def parse_devices(spec: str) -> list[str]:
    """`cpu`, `auto` (every visible GPU, else cpu), or a comma list: `cuda:0,cuda:1`, `cpu,cpu`
    (several CPU worker processes: only to exercise the multi-process path)."""
    spec = spec.strip().lower()
    if spec == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    devices = [("cuda:0" if d == "cuda" else d) for d in (s.strip() for s in spec.split(",")) if d]
    if not devices:
        raise ConfigError("--devices is empty")
    if len({d == "cpu" for d in devices}) > 1:
        raise ConfigError(f"--devices {spec}: mixing cpu and cuda workers is not supported")
    for d in devices:
        if d == "cpu":
            continue
        index = d.removeprefix("cuda:")
        if not d.startswith("cuda:") or not index.isdigit():
            raise ConfigError(f"--devices: unknown device {d!r} (use cpu, cuda:N or auto)")
        if not torch.cuda.is_available() or int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--devices: {d} is not available (torch sees "
                              f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA devices)")
    if len(set(devices)) < len(devices) and devices[0] != "cpu":
        raise ConfigError(f"--devices {spec}: a GPU is listed twice")
    return devices


# ----------------------------------------------------------------------------- data

def fit_leave_one_out(pairs: Sequence[dict], target: int, encoder, tokenizer, version: str,
                      max_seq_len: int) -> dict | None:
    """The encoded leave-one-out sample for `target`, dropping the last example until it fits
    `max_seq_len` (`fitting.fit_examples`, shared with finetune and the planner); None if even
    one example does not fit."""
    from .training import encode_sample

    sample, _, _ = fit_examples(leave_one_out(pairs, target), encoder, tokenizer, version, max_seq_len)
    return None if sample is None else encode_sample(tokenizer, sample)


@dataclass(frozen=True)
class TaskProfile:
    """What the scheduler knows about a task before training it."""
    task_id: str
    size: int                      # tasks.task_size
    n_train: int
    sample_tokens: float           # mean tokens of its fitted leave-one-out samples (0: none fits)
    max_sample_tokens: int
    status: str | None = None      # "too_long" / "skipped" when it cannot be trained
    reason: str | None = None


def profile_task(task_id: str, task: dict, encoder, tokenizer, version: str, max_seq_len: int) -> TaskProfile:
    """Fit every leave-one-out sample of the task in its original view (and, if none fits, in
    the transposed one: a different row count changes the token count)."""
    pairs, size = task["train"], task_size(task)
    if len(pairs) < 2:
        return TaskProfile(task_id, size, len(pairs), 0.0, 0, "skipped",
                           f"{len(pairs)} train pair(s): leave-one-out needs at least 2")
    lengths, _ = leave_one_out_lengths(pairs, encoder, tokenizer, version, max_seq_len)
    if lengths:
        return TaskProfile(task_id, size, len(pairs), float(np.mean(lengths)), max(lengths))
    shortest = min(sample_tokens(tokenizer, build_train_sample(leave_one_out(pairs[:2], j), encoder, tokenizer,
                                                               version)) for j in (0, 1))
    return TaskProfile(task_id, size, len(pairs), 0.0, 0, "too_long",
                       f"no leave-one-out sample fits max_seq_len={max_seq_len} even with one example "
                       f"(pairs 0 and 1 alone: {shortest} tokens)")


class TaskStream(torch.utils.data.IterableDataset):
    """Endless encoded leave-one-out samples of one task (or of a group: a task drawn uniformly
    per sample), re-augmented on every draw.  Only the train pairs are kept: test inputs are
    never examples nor targets.  Counts what it produced (`redraws`, `max_tokens`, ...)."""

    def __init__(self, tasks: dict[str, dict], encoder, tokenizer, version: str, max_seq_len: int, seed: int):
        self.train = {task_id: task["train"] for task_id, task in tasks.items()}
        self.encoder, self.tokenizer, self.version = encoder, tokenizer, version
        self.max_seq_len, self.seed = max_seq_len, seed
        self.redraws = self.max_tokens = self.max_prompt_tokens = 0

    def draw(self, rng: np.random.Generator) -> tuple[dict, dict]:
        """(encoded sample, {"task_id", "target": original train index, "augmentation"})."""
        ids = list(self.train)
        for _ in range(MAX_DRAWS):
            task_id = ids[int(rng.integers(len(ids)))]
            pairs = self.train[task_id]
            aug = random_augmentation(rng, len(pairs))
            viewed = aug.apply_task({"train": pairs, "test": []})["train"]
            target = int(rng.integers(len(viewed)))
            encoded = fit_leave_one_out(viewed, target, self.encoder, self.tokenizer, self.version, self.max_seq_len)
            if encoded is not None:
                return encoded, {"task_id": task_id, "target": aug.train_order[target], "augmentation": aug}
            self.redraws += 1
        raise TaskDataError(f"task(s) {', '.join(ids)}: no leave-one-out sample fits max_seq_len="
                            f"{self.max_seq_len} in {MAX_DRAWS} random draws")

    def __iter__(self) -> Iterator[dict]:
        rng = np.random.default_rng(self.seed)
        while True:
            encoded, _ = self.draw(rng)
            self.max_tokens = max(self.max_tokens, len(encoded["input_ids"]))
            prompt_tokens = sum(1 for label in encoded["labels"] if label < 0)
            self.max_prompt_tokens = max(self.max_prompt_tokens, prompt_tokens)
            yield encoded


# ----------------------------------------------------------------------------- units and the deadline

@dataclass(frozen=True)
class Unit:
    """What one adapter is trained on: one task, or a group of tasks sharing an adapter."""
    index: int                      # position in the queue (largest first)
    task_ids: tuple[str, ...]
    tokens_per_step: float          # estimated tokens of one optimizer step

    @property
    def size(self) -> int:
        return len(self.task_ids)


def plan_units(profiles: Sequence[TaskProfile], group_size: int, batch_size: int) -> list[Unit]:
    """Trainable tasks, largest estimated step first (then task_size, then id), cut into
    consecutive groups of `group_size` (similar sizes end up together)."""
    ordered = sorted(profiles, key=lambda p: (-p.sample_tokens, -p.size, p.task_id))
    units = []
    for start in range(0, len(ordered), group_size):
        group = ordered[start:start + group_size]
        units.append(Unit(len(units), tuple(p.task_id for p in group),
                          batch_size * float(np.mean([p.sample_tokens for p in group]))))
    return units


def model_params(model_dir) -> float | None:
    """A transformer's parameter count from its config.json (embeddings + attention + MLP), or
    None without one: the prior of the time estimate before anything was measured."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    c = read_json(path)
    c = c.get("text_config", c)
    try:
        h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inter = c.get("intermediate_size", 4 * h)
    except KeyError:
        return None
    return float(vocab * h + layers * (4 * h * h + 3 * h * inter))


def anytime_order(units: list[Unit], steps: int, workers: int, seconds_left: float | None,
                  seconds_per_token: float | None) -> tuple[list[Unit], str]:
    """The queue order and why.  Largest first minimises the makespan over several workers when
    everything fits; when it does not (estimated from the prior `seconds_per_token`), or with one
    worker (where the order cannot change the makespan), smallest first trains the most tasks
    before the deadline: the run degrades by dropping the largest tasks, not most of them."""
    if seconds_left is None or not units:
        return units, "largest first (no deadline)"
    if workers > 1 and seconds_per_token is not None:
        needed = sum(PRIOR_OVERHEAD_S * u.size + steps * u.size * u.tokens_per_step * seconds_per_token
                     for u in units) / workers
        if needed <= seconds_left:
            return units, f"largest first (estimated {needed:.0f} s of {seconds_left:.0f} s per worker)"
        why = f"smallest first (estimated {needed:.0f} s per worker, {seconds_left:.0f} s left)"
    else:
        why = "smallest first (one worker under a deadline)"
    return [dataclasses.replace(u, index=i) for i, u in enumerate(reversed(units))], why


def unit_seeds(seed: int, task_ids: Sequence[str]) -> tuple[int, int]:
    """(Trainer seed, data seed) of a unit: fixed by the run seed and the task ids, whatever the
    order, the worker or a restart."""
    entropy = [seed, *(zlib.crc32(t.encode()) for t in task_ids)]
    a, b = np.random.SeedSequence(entropy).generate_state(2)
    return int(a) % 2**31, int(b)


class Budget:
    """A worker's time estimates and the steps a unit may take before the deadline.

    A unit of `n` steps is estimated at `overhead + n × tokens_per_step × seconds_per_token`.
    `seconds_per_token` starts at the conservative prior 6 × params / PRIOR_FLOPS[device] and is
    replaced by this worker's measurement (training seconds / tokens over its finished units)
    after the first unit; `overhead` likewise (task seconds minus training seconds).

    Scaling: the units not started yet (this one included) share the time left × workers; when
    their full cost does not fit, every unit gets the same fraction of its steps.  A unit whose
    share is below `min_steps` still runs `min_steps` if that fits the time left, else it is
    skipped.  No deadline: every unit gets its full steps.
    """

    def __init__(self, deadline_at: float | None, workers: int, prior_seconds_per_token: float):
        self.deadline_at, self.workers = deadline_at, workers
        self.prior = prior_seconds_per_token
        self.train_seconds = self.tokens = self.overhead_seconds = 0.0
        self.units = 0

    @property
    def seconds_per_token(self) -> float:
        return self.train_seconds / self.tokens if self.tokens else self.prior

    @property
    def overhead(self) -> float:
        return self.overhead_seconds / self.units if self.units else PRIOR_OVERHEAD_S

    def left(self) -> float:
        return math.inf if self.deadline_at is None else self.deadline_at - time.time() - SAFETY_S

    def seconds(self, steps: int, tokens_per_step: float) -> float:
        return self.overhead + steps * tokens_per_step * self.seconds_per_token

    def plan(self, steps: int, min_steps: int, tokens_per_step: float, remaining_tokens: float,
             remaining_units: int) -> tuple[int, str | None]:
        """(steps to train, None) or (0, why the unit is skipped).  `remaining_tokens`: the tokens
        of the units not started yet (this one included) at their full steps."""
        left = self.left()
        if left == math.inf:
            return steps, None
        spt = self.seconds_per_token
        share = left * self.workers - remaining_units * self.overhead
        factor = 1.0 if remaining_tokens * spt <= share else max(0.0, share) / (remaining_tokens * spt)
        fits_alone = math.floor(max(0.0, left - self.overhead) / max(tokens_per_step * spt, 1e-9))
        planned = min(steps, math.floor(steps * factor), fits_alone)
        if planned >= min_steps:
            return planned, None
        if fits_alone >= min_steps:
            return min_steps, None
        return 0, (f"deadline: {min_steps} steps need ~{self.seconds(min_steps, tokens_per_step):.0f} s, "
                   f"{max(left, 0.0):.0f} s left")

    def update(self, train_seconds: float, tokens: float, unit_seconds: float) -> None:
        if tokens > 0 and train_seconds > 0:
            self.train_seconds += train_seconds
            self.tokens += tokens
            self.overhead_seconds += max(0.0, unit_seconds - train_seconds)
            self.units += 1


# ----------------------------------------------------------------------------- outputs

def make_record(config: TTFTConfig, task_id: str, status: str, **fields) -> dict:
    """record.json: the task's outcome (`fields`) and the settings it was trained with."""
    return {"task_id": task_id, "status": status, "steps": 0, "requested_steps": config.steps,
            "max_seq_len": config.max_seq_len, **fields,
            "base_model": config.model, "adapter_path": config.adapter_path, "lora": config.lora,
            "format": config.format, "grid_encoder": config.grid_encoder, "prompt_version": config.prompt_version,
            "learning_rate": config.learning_rate, "batch_size": config.batch_size,
            "lr_scheduler_type": config.lr_scheduler_type, "warmup_ratio": config.warmup_ratio, "seed": config.seed,
            "time": round(time.time(), 3)}


def check_run_config(output_dir: Path, run_config: dict) -> None:
    """Refuse to mix runs: a resumed output dir must have the same model, adapter, encoder,
    prompt version and LoRA settings."""
    path = output_dir / RUN_CONFIG
    if not path.is_file():
        return
    old = read_json(path)
    diff = [f"{k}: {old.get(k)!r} (in {path}) vs {run_config.get(k)!r}" for k in RESUME_KEYS
            if old.get(k) != run_config.get(k)]
    if diff:
        raise ConfigError(f"{output_dir} holds a TTFT run with other settings ({'; '.join(diff)}): use another "
                          f"--output_dir")


# ----------------------------------------------------------------------------- the worker

def _forward_patches(model) -> set[str]:
    return {k for k in ("forward", "_original_forward") if k in model.__dict__}


def _make_guard(stop_at: float | None, parent_pid: int | None):
    """A TrainerCallback: raises NonFiniteLoss on a NaN/inf logged loss; stops training at
    `stop_at` (unix time); exits if the parent process died (an orphaned spawned worker)."""
    from transformers import TrainerCallback

    class Guard(TrainerCallback):
        stopped: str | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss} at step {state.global_step}")

        def on_step_end(self, args, state, control, **kwargs):
            if parent_pid is not None and os.getppid() != parent_pid:
                raise SystemExit("ttft worker: the parent process is gone")
            if stop_at is not None and time.time() >= stop_at and state.global_step < state.max_steps:
                control.should_training_stop = True
                self.stopped = "deadline"

    return Guard()


@dataclass
class TrainResult:
    steps: int
    loss_curve: list
    train_loss: float | None
    seconds: float
    tokens: float
    completion_tokens: float
    stopped: str | None


class Worker:
    """One device: the base model loaded once, the adapter reset before every unit."""

    def __init__(self, config: TTFTConfig, device: str, rank: int, n_workers: int, deadline_at: float | None,
                 tasks: dict, profiles: dict[str, TaskProfile], report: Callable[..., None],
                 task_callbacks: Callable[[tuple[str, ...]], list] | None = None, parent_pid: int | None = None):
        self.config, self.device, self.rank, self.n_workers = config, device, rank, n_workers
        self.deadline_at, self.tasks, self.profiles, self.report = deadline_at, tasks, profiles, report
        self.task_callbacks, self.parent_pid = task_callbacks, parent_pid
        self.out = Path(config.output_dir)
        self.timing = TimingLog(config.timing_path, "ttft")
        self.run_config = config.run_config()
        self.model = self.tokenizer = self.initial = self.budget = None
        self.started = time.time()

    # -- setup
    def load(self, tokenizer=None) -> None:
        """The base model (and its LoRA) on this worker's device; `tokenizer`: the model's, when
        the caller already loaded it (the in-process worker)."""
        from .models import load_model_and_tokenizer
        from .training import LoraSettings, build_lora_model, load_lora_model, trainable_state

        c = self.config
        self.dtype = resolve_dtype(c.torch_dtype, self.device)
        with self.timing.measure("phase", phase="load_model", worker=self.rank):
            model, self.tokenizer = load_model_and_tokenizer(c.model, dtype=self.dtype, device=self.device,
                                                             tokenizer=tokenizer)
            n_params = sum(p.numel() for p in model.parameters())
            if c.adapter_path:
                model = load_lora_model(model, c.adapter_path, trainable=True)
            else:
                settings = {**c.lora, "target_modules": tuple(c.lora["target_modules"])}
                model = build_lora_model(model, LoraSettings(**settings), seed=c.seed)
        self.model = model
        self.initial = trainable_state(model)
        self.encoder = create_grid_encoder(c.grid_encoder)
        prior = 6 * n_params / PRIOR_FLOPS["cuda" if self.device.startswith("cuda") else "cpu"]
        self.budget = Budget(self.deadline_at, self.n_workers, prior)
        self.work_dir = self.out / ".work" / f"worker{self.rank}"

    # -- the loop
    def serve(self, next_unit: Callable[[], Unit | None], unit_tokens: Sequence[float]) -> None:
        """Train units until the queue is empty (past the deadline: record them as skipped)."""
        n = 0
        while (unit := next_unit()) is not None:
            remaining = unit_tokens[unit.index:]
            self.run_unit(unit, float(sum(remaining)), len(remaining))
            n += unit.size
        self.timing.record("stage", time.time() - self.started, worker=self.rank, tasks=n, device=self.device)

    def run_unit(self, unit: Unit, remaining_tokens: float, remaining_units: int) -> None:
        from .training import restore_trainable_state

        c, start, ids = self.config, time.time(), unit.task_ids
        steps, why = self.budget.plan(c.steps * unit.size, c.min_steps * unit.size, unit.tokens_per_step,
                                      remaining_tokens * c.steps, remaining_units)
        if not steps:
            self._finish(ids, "skipped", {"reason": why}, start)
            return
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        base = {"planned_steps": steps, "scaled_from": c.steps * unit.size if steps < c.steps * unit.size else None}
        max_seq_len, retry, stream, result, error = c.max_seq_len, None, None, None, None
        train_seed, data_seed = unit_seeds(c.seed, ids)
        for attempt in (0, 1):
            restore_trainable_state(self.model, self.initial)  # every attempt starts from the initial adapter
            stream = TaskStream({t: self.tasks[t] for t in ids}, self.encoder, self.tokenizer, c.prompt_version,
                                max_seq_len, data_seed)
            try:
                result = self._train(stream, steps, train_seed, ids)
                self._check_finite()
                error = None
                break
            except torch.cuda.OutOfMemoryError as e:
                error = _describe(e)
            except Exception as e:  # one task's failure never stops the stage
                error = _describe(e)
                break
            finally:
                self._reset()
            # CUDA out of memory: once more with shorter samples, if the tasks still fit
            if attempt:
                break
            shorter = int(OOM_RETRY_FRACTION * min(max_seq_len, stream.max_tokens or max_seq_len))
            if not all(profile_task(t, self.tasks[t], self.encoder, self.tokenizer, c.prompt_version,
                                    shorter).status is None for t in ids):
                break
            retry = {"max_seq_len": shorter, "after": error["error"]}
            max_seq_len = shorter
        info = {**base, "max_seq_len": max_seq_len, "oom_retry": retry, "redraws": stream.redraws,
                "max_sample_tokens": stream.max_tokens, "max_prompt_tokens": stream.max_prompt_tokens}
        if error is not None:
            self._finish(ids, "failed", {**info, **error}, start)
            return
        info.update(steps=result.steps, loss_curve=result.loss_curve, train_loss=result.train_loss,
                    train_seconds=round(result.seconds, 3), tokens_trained=int(result.tokens),
                    completion_tokens=int(result.completion_tokens), stopped_early=result.stopped,
                    tokens_per_second=round(result.tokens / result.seconds, 1) if result.seconds else None)
        if self.device.startswith("cuda"):
            info["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if result.steps < c.min_steps * unit.size:
            info["reason"] = f"deadline: stopped after {result.steps} of {steps} steps (min_steps {c.min_steps})"
            self._finish(ids, "skipped", info, start)
        else:
            save_start = time.time()
            try:
                for task_id in ids:  # a group's members each get a copy of the shared adapter
                    save_adapter(self.model, self.out, task_id, self._record(task_id, ids, "done", info, start),
                                 self.run_config)
            except Exception as e:  # e.g. a full disk: this task fails, the next may still fit
                self._finish(ids, "failed", {**info, **_describe(e)}, start)
                return
            self.timing.record("phase", time.time() - save_start, "+".join(ids), phase="save")
            self._finish(ids, "done", info, start, written=True)
        self.budget.update(result.seconds, result.tokens, time.time() - start)

    def _train(self, stream: TaskStream, steps: int, seed: int, ids: tuple[str, ...]) -> TrainResult:
        from transformers.trainer_callback import PrinterCallback

        from .training import CompletionCollator, CompletionTrainer, training_arguments

        c = self.config
        reserve = self.budget.overhead + SAFETY_S
        guard = _make_guard(None if self.deadline_at is None else self.deadline_at - reserve, self.parent_pid)
        callbacks = [guard, *(self.task_callbacks(ids) if self.task_callbacks else [])]
        args = training_arguments(
            self.work_dir, max_steps=steps, batch_size=c.batch_size, per_device_batch_size=c.per_device_batch_size,
            learning_rate=c.learning_rate, lr_scheduler_type=c.lr_scheduler_type, warmup_ratio=c.warmup_ratio,
            logging_steps=max(1, steps // LOSS_POINTS), gradient_checkpointing=c.gradient_checkpointing,
            dtype=self.dtype, seed=seed, use_cpu=self.device == "cpu", disable_tqdm=True,
            logging_nan_inf_filter=False, dataloader_pin_memory=self.device != "cpu", optim="adamw_torch")
        patched = _forward_patches(self.model)
        trainer = CompletionTrainer(model=self.model, args=args, train_dataset=stream,
                                    data_collator=CompletionCollator(self.tokenizer.pad_token_id),
                                    loss_reduction=c.loss_reduction, callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)
        start = time.time()
        try:
            output = trainer.train()
        finally:
            # accelerate wraps model.forward in autocast for mixed precision, once per Trainer:
            # undo it so wrappers do not pile up over a hundred tasks
            for key in _forward_patches(self.model) - patched:
                del self.model.__dict__[key]
        seconds = time.time() - start
        if not math.isfinite(output.training_loss):
            raise NonFiniteLoss(f"mean training loss is {output.training_loss}")
        totals = trainer.throughput_summary()
        curve = [[h["step"], round(h["loss"], 5)] for h in trainer.state.log_history if "loss" in h]
        self.timing.record("phase", seconds, "+".join(ids), phase="train", steps=trainer.state.global_step,
                           tokens_trained=int(totals["tokens"]))
        return TrainResult(trainer.state.global_step, curve, round(output.training_loss, 5), seconds,
                           totals["tokens"], trainer.throughput_totals["completion_tokens"], guard.stopped)

    def _check_finite(self) -> None:
        for name, p in self.model.named_parameters():
            if p.requires_grad and not torch.isfinite(p).all():
                raise NonFiniteLoss(f"adapter weight {name} is not finite after training")

    def _reset(self) -> None:
        """Free what a (possibly failed) Trainer left behind."""
        self.model.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # -- records
    def _record(self, task_id: str, ids: tuple[str, ...], status: str, info: dict, start: float) -> dict:
        profile = self.profiles.get(task_id)
        return make_record(self.config, task_id, status, **info, seconds=round(time.time() - start, 3),
                           group=list(ids) if len(ids) > 1 else None,
                           n_train_pairs=profile.n_train if profile else None,
                           mean_sample_tokens=round(profile.sample_tokens, 1) if profile else None,
                           device=self.device, torch_dtype=getattr(self, "dtype", None), worker=self.rank)

    def _finish(self, ids: tuple[str, ...], status: str, info: dict, start: float, written: bool = False) -> None:
        seconds = time.time() - start
        for task_id in ids:
            if not written:
                write_unfinished(self.out, task_id, self._record(task_id, ids, status, info, start))
            detail = info.get("reason") or info.get("error")
            self.report(task_id, status, detail)
        key = "+".join(ids)
        if status == "done":
            self.timing.record("task", seconds, key, steps=info["steps"], tokens_trained=info["tokens_trained"],
                               worker=self.rank)
        elif status == "failed":
            self.timing.record("failed", seconds, key, reason=info["error"], worker=self.rank)
        else:
            self.timing.record("skipped", seconds, key, reason=info.get("reason"), worker=self.rank,
                               steps=info.get("steps"), tokens_trained=info.get("tokens_trained"))


def _describe(error: BaseException) -> dict:
    text = f"{type(error).__name__}: {error}"
    return {"error": text[:2000], "traceback": traceback.format_exc(limit=8)[-4000:]}


# ----------------------------------------------------------------------------- running the stage

def _worker_process(rank: int, device: str, visible: str | None, config: TTFTConfig, tasks: dict, profiles: dict,
                    unit_tokens: list, units, results, deadline_at: float | None, n_workers: int,
                    parent_pid: int) -> None:
    """Entry point of a spawned worker: one device, units from the shared queue."""
    if device.startswith("cuda"):
        os.environ["CUDA_VISIBLE_DEVICES"] = visible  # before CUDA starts: the Trainer sees one GPU
        device = "cuda:0"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_workers))
    _quiet_transformers()

    def report(task_id, status, detail):
        results.put(("task", task_id, status, detail))

    def next_unit() -> Unit | None:
        while True:  # a worker whose parent died stops instead of waiting forever
            try:
                return units.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent_pid:
                    return None

    worker = Worker(config, device, rank, n_workers, deadline_at, tasks, profiles, report, parent_pid=parent_pid)
    try:
        worker.load()
    except Exception as e:
        results.put(("worker_error", rank, f"worker {rank} ({device}) could not load the model: "
                                           f"{_describe(e)['error']}"))
        return
    worker.serve(next_unit, unit_tokens)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _visible_devices(devices: Sequence[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each worker: the parent's visible list, indexed by cuda:N."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [v.strip() for v in env.split(",")] if env else None
    out = []
    for d in devices:
        if d == "cpu":
            out.append(None)
        else:
            i = int(d.split(":")[1])
            out.append(visible[i] if visible else str(i))
    return out


def run_ttft(tasks: dict, config: TTFTConfig, devices: Sequence[str] = ("cpu",), deadline_at: float | None = None,
             task_callbacks: Callable[[tuple[str, ...]], list] | None = None, progress: bool = True) -> dict:
    """Run the stage on `tasks` ({task_id: task}); returns the summary (also OUT/summary.json).

    `deadline_at`: unix time by which the stage must be done (None: no deadline).
    `task_callbacks(task_ids)`: extra TrainerCallbacks for a unit (in-process runs only; tests).
    One device that is `cpu` (or the only visible GPU) runs in this process; otherwise one
    spawned worker process per device.
    """
    from tqdm.auto import tqdm

    from .models import load_tokenizer, resolve_model_path

    start = time.time()
    out = Path(config.output_dir)
    run_config = config.run_config()
    check_run_config(out, run_config)
    bad = [t for t in tasks if not t or "/" in t or "\\" in t or t.startswith(".")]
    if bad:
        raise TaskError(f"task id(s) unusable as directory names: {', '.join(map(repr, bad))}")
    (out / ADAPTERS).mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RUN_CONFIG, run_config, indent=1)
    for stale in (out / ADAPTERS).glob(".*.tmp-*"):  # temp dirs of a killed save
        shutil.rmtree(stale, ignore_errors=True)
    timing = TimingLog(config.timing_path, "ttft")

    # tasks: complete ones are skipped; the others are profiled (too long / trainable)
    with timing.measure("phase", phase="profile_tasks") as fields:
        tokenizer = load_tokenizer(config.model)
        encoder = create_grid_encoder(config.grid_encoder)
        profiles, resumed = {}, []
        for task_id, task in tasks.items():
            if is_complete(out, task_id):
                resumed.append(task_id)
                continue
            profile = profile_task(task_id, task, encoder, tokenizer, config.prompt_version, config.max_seq_len)
            profiles[task_id] = profile
        fields["tasks"] = len(profiles)
    for task_id in resumed:
        timing.record("skipped", 0.0, task_id, reason="complete")
    untrainable = [p for p in profiles.values() if p.status]
    for p in untrainable:
        write_unfinished(out, p.task_id, make_record(config, p.task_id, p.status, reason=p.reason,
                                                     n_train_pairs=p.n_train))
        timing.record("skipped", 0.0, p.task_id, reason=f"{p.status}: {p.reason}")
    units = plan_units([p for p in profiles.values() if not p.status], config.group_size, config.batch_size)
    params = model_params(resolve_model_path(config.model))
    prior = 6 * params / PRIOR_FLOPS["cuda" if devices[0].startswith("cuda") else "cpu"] if params else None
    units, order = anytime_order(units, config.steps, len(devices), None if deadline_at is None else
                                 deadline_at - time.time(), prior)
    if units:
        timing.record("phase", 0.0, None, phase="order", order=order, units=len(units))
    unit_tokens = [u.tokens_per_step * u.size for u in units]

    bar = tqdm(total=len(tasks), initial=len(resumed) + len(untrainable), desc="ttft", unit="task",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for p in untrainable:
        bar.write(f"ttft: {p.task_id} {p.status}: {p.reason}")
    reported: dict[str, str] = {}

    def report(task_id: str, status: str, detail: str | None = None) -> None:
        reported[task_id] = status
        bar.update(1)
        if status != "done":
            bar.write(f"ttft: {task_id} {status}: {detail}")

    if units and deadline_at is not None and deadline_at - time.time() <= SAFETY_S:
        for task_id in (t for unit in units for t in unit.task_ids):  # no time left: do not even load the model
            reason = "deadline: passed before training started"
            write_unfinished(out, task_id, make_record(config, task_id, "skipped", reason=reason))
            timing.record("skipped", 0.0, task_id, reason=reason)
            report(task_id, "skipped", reason)
        units = []
    in_process = len(devices) == 1 and (devices[0] == "cpu" or torch.cuda.device_count() == 1)
    worker_errors: list[str] = []
    if units and in_process:
        worker = Worker(config, devices[0], 0, 1, deadline_at, tasks, profiles, report, task_callbacks)
        try:
            worker.load(tokenizer)
        except Exception as e:
            worker_errors.append(f"the model could not be loaded on {devices[0]}: {_describe(e)['error']}")
        else:
            pending = iter(units)
            try:
                worker.serve(lambda: next(pending, None), unit_tokens)
            except Exception as e:  # a bug outside a task's training: the rest still gets records
                worker_errors.append(f"the worker stopped: {_describe(e)['error']}")
    elif units:
        if task_callbacks is not None:
            raise ValueError("task_callbacks need an in-process run (one cpu device)")
        worker_errors = _run_processes(config, devices, tasks, profiles, units, unit_tokens, deadline_at, report)
    bar.close()

    # a task that was queued but never reported: its worker died (or never started)
    why = "; ".join(worker_errors) or "its worker exited before finishing it"
    for unit in units:
        for task_id in unit.task_ids:
            if task_id not in reported:
                write_unfinished(out, task_id, make_record(config, task_id, "failed", error=why))
                timing.record("failed", 0.0, task_id, reason=why)
                print(f"ttft: {task_id} failed: {why}", file=sys.stderr)

    statuses = {task_id: (read_record(out, task_id) or {}).get("status", "failed") for task_id in tasks}
    summary = {"counts": {s: sum(1 for v in statuses.values() if v == s) for s in STATUSES},
               "seconds": round(time.time() - start, 3), "tasks": statuses, "resumed": len(resumed),
               "trained_this_run": sum(1 for s in reported.values() if s == "done"),
               "devices": list(devices), "deadline_at": deadline_at, "time": round(time.time(), 3)}
    write_json_atomic(out / SUMMARY, summary, indent=1)
    shutil.rmtree(out / ".work", ignore_errors=True)
    return summary


def _run_processes(config, devices, tasks, profiles, units, unit_tokens, deadline_at, report) -> list[str]:
    """One spawned worker per device; the main process only relays their reports."""
    ctx = torch.multiprocessing.get_context("spawn")
    unit_queue, results = ctx.Queue(), ctx.Queue()
    for unit in units:
        unit_queue.put(unit)
    for _ in devices:
        unit_queue.put(None)
    needed = {t for u in units for t in u.task_ids}
    work = {t: tasks[t] for t in needed}
    procs = []
    for rank, (device, visible) in enumerate(zip(devices, _visible_devices(devices))):
        p = ctx.Process(target=_worker_process, name=f"ttft-worker{rank}",
                        args=(rank, device, visible, config, work, {t: profiles[t] for t in needed}, unit_tokens,
                              unit_queue, results, deadline_at, len(devices), os.getpid()))
        p.start()
        procs.append(p)
    errors = []

    def handle(message):
        if message[0] == "task":
            report(*message[1:])
        else:
            errors.append(message[2])

    try:
        while True:
            try:
                handle(results.get(timeout=0.5))
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
        while not results.empty():  # anything sent just before the last worker exited
            handle(results.get())
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    for rank, p in enumerate(procs):
        if p.exitcode:
            errors.append(f"worker {rank} ({devices[rank]}) exited with code {p.exitcode}")
    return errors


def summary_line(summary: dict, output_dir) -> str:
    counts = summary["counts"]
    return (f"ttft: {counts['done']} done, {counts['failed']} failed, {counts['too_long']} too_long, "
            f"{counts['skipped']} skipped in {summary['seconds']:.0f} s -> {output_dir}")


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline ttft",
        description="Test-time fine-tuning: one LoRA adapter per task, trained on leave-one-out samples of its "
                    "train pairs, within a deadline. Writes OUT/adapters/<task_id>/ (adapter + record.json), "
                    "OUT/summary.json, OUT/cfg.json. Exit 0 whenever the stage ran (tasks may be skipped or "
                    "failed: see their records).")
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="'embedded', a transformers directory or a .gguf file")
    g.add_argument("--adapter_path", help="continue training this LoRA adapter (default: a fresh LoRA)")
    g.add_argument("--torch_dtype", choices=("float32", "float16", "bfloat16"),
                   help="default: bfloat16 on cuda (float16 without bf16 support), float32 on cpu")
    g.add_argument("--format", choices=FORMAT_NAMES, help=FORMAT_HELP)
    g.add_argument("--grid_encoder", help=f"arc24 format: default from cfg.json, else {DEFAULT_ENCODER}")
    g.add_argument("--prompt_version", choices=sorted(PROMPT_VERSIONS),
                   help=f"arc24 format: default from cfg.json, else {DEFAULT_PROMPT_VERSION}")
    g = p.add_argument_group("fresh LoRA (not with --adapter_path)")
    g.add_argument("--lora_r", type=int, help="rank (default 32)")
    g.add_argument("--lora_alpha", type=int, help="alpha (default 64; rsLoRA scale alpha/sqrt(r))")
    g.add_argument("--lora_dropout", type=float, help="dropout (default 0.1)")
    g.add_argument("--lora_target", nargs="+", help="attention (default) | attention+mlp | all-linear | module names")
    g.add_argument("--use_dora", action="store_true", help="DoRA (vLLM cannot serve it)")
    g.add_argument("--no_rslora", action="store_true", help="plain alpha/r scaling")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, help="challenges file (test outputs, if any, are never used)")
    g.add_argument("--task_ids", nargs="+", help="only these tasks")
    g.add_argument("--first_n", type=int, help="only the first N tasks (after --task_ids)")
    g = p.add_argument_group("training")
    add_arguments(g, TTFTSettings)  # one flag per setting, with its default and help (pipeline/config.py)
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", required=True)
    g.add_argument("--deadline", type=float, help="seconds from the start of the stage by which it must be done")
    g.add_argument("--devices", default="auto", help="cpu | auto (every GPU, else cpu) | cuda:0,cuda:1 | cpu,cpu")
    g.add_argument("--timing_log", help=f"timing records (default OUT/{TIMING_FILE})")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TTFTConfig:
    """Check the arguments (no model is loaded) and build the config; ConfigError says what to fix."""
    from .training import LoraSettings

    training = settings_from(TTFTSettings, args)
    for name in ("steps", "batch_size", "per_device_batch_size", "max_seq_len", "group_size"):
        if getattr(training, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(training, name)}")
    if training.batch_size % training.per_device_batch_size:
        raise ConfigError(f"--batch_size {training.batch_size} must be a multiple of --per_device_batch_size "
                          f"{training.per_device_batch_size}")
    min_steps = training.min_steps if training.min_steps is not None else max(1, training.steps // 10)
    if not 1 <= min_steps <= training.steps:
        raise ConfigError(f"--min_steps must be in [1, --steps={training.steps}], got {min_steps}")
    if not 0.0 <= training.warmup_ratio < 1.0:
        raise ConfigError(f"--warmup_ratio must be in [0, 1), got {training.warmup_ratio}")
    if args.deadline is not None and args.deadline <= 0:
        raise ConfigError(f"--deadline must be positive, got {args.deadline}")
    fresh_flags = [f"--{n}" for n in ("lora_r", "lora_alpha", "lora_dropout", "lora_target")
                   if getattr(args, n) is not None] + [f"--{n}" for n in ("use_dora", "no_rslora") if getattr(args, n)]
    run_cfg = {}
    if args.adapter_path:
        if fresh_flags:
            raise ConfigError(f"{', '.join(fresh_flags)} describe a fresh LoRA: with --adapter_path the adapter's own "
                              f"settings are used")
        lora = adapter_lora_settings(args.adapter_path)
        run_cfg, _ = find_run_config(args.adapter_path)
    else:
        try:
            lora = LoraSettings(r=args.lora_r or 32, alpha=args.lora_alpha or 64,
                                dropout=0.1 if args.lora_dropout is None else args.lora_dropout,
                                target_modules=lora_target_modules(args.lora_target or ["attention"]),
                                use_rslora=not args.no_rslora, use_dora=args.use_dora).to_dict()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"LoRA settings: {e}") from None
    if not run_cfg:  # a model made for a format (shrink-vocab) says so in its own cfg.json
        from .models import model_path_problem, resolve_model_path
        if not model_path_problem(args.model):
            run_cfg, _ = find_run_config(resolve_model_path(args.model))
    try:
        prompting = resolve_prompting(run_cfg, args.format, args.grid_encoder, args.prompt_version)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        create_grid_encoder(prompting.grid_encoder)
    except ValueError as e:
        raise ConfigError(f"--grid_encoder: {e}") from None
    try:
        get_prompt_version(prompting.prompt_version)
    except ValueError:
        raise ConfigError(f"prompt version {prompting.prompt_version!r} (from the adapter's cfg.json) is unknown") from None
    if args.torch_dtype == "float16" and args.devices.strip().lower() == "cpu":
        raise ConfigError("--torch_dtype float16 needs a CUDA device (mixed precision with a gradient scaler)")
    return TTFTConfig(model=args.model, output_dir=args.output_dir, lora=lora, adapter_path=args.adapter_path,
                      format=prompting.format, grid_encoder=prompting.grid_encoder,
                      prompt_version=prompting.prompt_version, torch_dtype=args.torch_dtype,
                      timing_log=args.timing_log, **{**dataclasses.asdict(training), "min_steps": min_steps})


def main(argv: Sequence[str] | None = None) -> int:
    start = time.time()
    args = build_parser().parse_args(argv)
    try:
        from .models import resolve_model_path

        config = config_from_args(args)
        devices = parse_devices(args.devices)
        try:
            model_dir = resolve_model_path(config.model)
        except ValueError as e:
            raise ConfigError(f"--model: {e}") from None
        if not config.adapter_path:
            check_lora_targets(model_dir, config.lora)
        tasks = select_tasks(load_tasks(args.dataset, solutions=None), args.task_ids, args.first_n)
        if not tasks:
            raise TaskError(f"{args.dataset}: no tasks selected")
        _quiet_transformers()
        summary = run_ttft(tasks, config, devices, None if args.deadline is None else start + args.deadline,
                           progress=not args.no_progress)
    except (ConfigError, TaskError, FileNotFoundError) as e:
        print(f"ttft: error: {e}", file=sys.stderr)
        return 1
    print(summary_line(summary, config.output_dir))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
