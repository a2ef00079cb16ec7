"""The TTFT worker: one device, the base model loaded once, one adapter trained per unit.

* `TTFTConfig`: everything a worker needs (picklable: spawned workers get it), and the run's
  `cfg.json` (`TTFTConfig.run_config`); `make_record`: a task's `record.json`.
* `Worker`: loads the model (and the `--adapter_path` LoRA, or a fresh one), keeps the adapter's
  initial weights and restores them before every unit, plans the unit's steps with its `Budget`,
  trains it (`trainer.CompletionTrainer`, one Trainer per unit, a guard callback for NaN loss,
  the deadline and an orphaned worker), retries a CUDA OOM once with shorter samples, saves the
  adapter and reports the outcome.  One task's failure never stops the worker.
* `worker_process`: the entry point of a spawned worker (one per device), pulling units from
  the shared queue.

The stage (`ttft`) builds the config from its CLI, plans the units and runs one worker in
process or one per device.  Imports no stage module.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import queue
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from pipeline.core.adapters import save_adapter, save_full_delta, write_unfinished
from pipeline.core.settings import TTFT
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.formats import DEFAULT_FORMAT
from pipeline.core.models import load_model_and_tokenizer, resolve_dtype, weights_dtype
from pipeline.core.model_cfg import DEFAULT_PROMPT_VERSION
from pipeline.core.timing import TIMING_FILE, TimingLog
from pipeline.ttft.budget import PRIOR_FLOPS, SAFETY_S, Budget, Unit, unit_seeds
from pipeline.ttft.data import TaskProfile, TaskStream, profile_task

LOSS_POINTS = 50          # about this many points on each task's loss curve
HEARTBEAT_S = 60.0        # a task prints its step this often: the watchdog kills a silent stage (supervisor.py)
OOM_RETRY_FRACTION = 0.75  # after a CUDA OOM, retry once with max_seq_len cut to this share


class NonFiniteLoss(FloatingPointError):
    """The training loss (or the adapter) became NaN or infinite."""


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
    steps: int = TTFT.steps             # per task (a group of k tasks trains k × steps); derived from
    copies: int | None = TTFT.copies    # `copies` x `epochs` when those are given (settings.ttft_step_count)
    epochs: int | None = TTFT.epochs
    min_steps: int = max(1, TTFT.steps // 10)  # never scale below this; skip the task instead
    learning_rate: float = TTFT.learning_rate
    batch_size: int = TTFT.batch_size
    per_device_batch_size: int = TTFT.per_device_batch_size
    lr_scheduler_type: str = TTFT.lr_scheduler_type
    warmup_ratio: float = TTFT.warmup_ratio
    max_seq_len: int = TTFT.max_seq_len
    max_task_tokens: int | None = TTFT.max_task_tokens  # the length gate (budget.length_share)
    long_tasks: str = TTFT.long_tasks
    group_size: int = TTFT.group_size
    seed: int = TTFT.seed
    torch_dtype: str | None = None      # a precision of settings.TRAIN_PRECISIONS; None: models.resolve_dtype's default
    full_finetune: bool = False         # no LoRA (`lora` None): every weight trained, saved as a delta
    gradient_checkpointing: bool = TTFT.gradient_checkpointing
    loss_reduction: str = TTFT.loss_reduction
    deterministic: bool = TTFT.deterministic  # core/determinism.py, applied by each worker before it loads
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


def make_record(config: TTFTConfig, task_id: str, status: str, **fields) -> dict:
    """record.json: the task's outcome (`fields`) and the settings it was trained with."""
    return {"task_id": task_id, "status": status, "steps": 0, "requested_steps": config.steps,
            "copies": config.copies, "epochs": config.epochs,
            "max_seq_len": config.max_seq_len, **fields,
            "base_model": config.model, "adapter_path": config.adapter_path, "lora": config.lora,
            "format": config.format, "grid_encoder": config.grid_encoder, "prompt_version": config.prompt_version,
            "learning_rate": config.learning_rate, "batch_size": config.batch_size,
            "lr_scheduler_type": config.lr_scheduler_type, "warmup_ratio": config.warmup_ratio, "seed": config.seed,
            "time": round(time.time(), 3)}



def _make_guard(stop_at: float | None, parent_pid: int | None, label: str = "",
                heartbeat_s: float = HEARTBEAT_S, clock: Callable[[], float] = time.monotonic):
    """A TrainerCallback: raises NonFiniteLoss on a NaN/inf logged loss; stops training at
    `stop_at` (unix time); exits if the parent process died (an orphaned spawned worker); prints
    `label`'s step every `heartbeat_s` of `clock` (the stage's sign of life for the watchdog)."""
    from transformers import TrainerCallback

    class Guard(TrainerCallback):
        stopped: str | None = None
        last_beat = clock()

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss} at step {state.global_step}")

        def on_step_end(self, args, state, control, **kwargs):
            if parent_pid is not None and os.getppid() != parent_pid:
                raise SystemExit("ttft worker: the parent process is gone")
            if clock() - self.last_beat >= heartbeat_s:
                self.last_beat = clock()
                print(f"ttft: {label} step {state.global_step}/{state.max_steps}", flush=True)
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
        # the trainer (transformers, peft) is imported once the worker runs, after worker_process has set
        # CUDA_VISIBLE_DEVICES: a spawned worker imports this module before that
        from pipeline.training.lora import (LoraSettings, build_lora_model, load_lora_model, trainable_state,
                                            upcast_trainable)

        c = self.config
        if c.deterministic:
            from pipeline.core.determinism import make_deterministic
            make_deterministic()
        self.dtype = resolve_dtype(c.torch_dtype, self.device)
        with self.timing.measure("phase", phase="load_model", worker=self.rank):
            model, self.tokenizer = load_model_and_tokenizer(c.model, dtype=weights_dtype(self.dtype),
                                                             device=self.device, tokenizer=tokenizer)
            n_params = sum(p.numel() for p in model.parameters())
            if c.full_finetune:  # every weight (the tied embedding and head once); fp32 below, like a LoRA
                model.requires_grad_(True)
            elif c.adapter_path:
                model = load_lora_model(model, c.adapter_path, trainable=True)
            else:
                settings = {**c.lora, "target_modules": tuple(c.lora["target_modules"])}
                model = build_lora_model(model, LoraSettings(**settings), seed=c.seed)
            upcast_trainable(model)  # bf16 base weights: the adapter and its optimizer stay fp32
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
        from pipeline.training.lora import restore_trainable_state  # after CUDA_VISIBLE_DEVICES: see load

        c, start, ids = self.config, time.time(), unit.task_ids
        full = unit.steps(c.steps)  # the length gate's share of the run's steps
        steps, why = self.budget.plan(full, min(c.min_steps * unit.size, full), unit.tokens_per_step,
                                      remaining_tokens * c.steps, remaining_units)
        if not steps:
            self._finish(ids, "skipped", {"reason": why}, start)
            return
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        base = {"planned_steps": steps, "scaled_from": full if steps < full else None,
                "length_gated_from": c.steps * unit.size if unit.step_share < 1 else None}
        max_seq_len, retry, stream, result, error = c.max_seq_len, None, None, None, None
        train_seed, data_seed = unit_seeds(c.seed, ids)
        for attempt in (0, 1):
            restore_trainable_state(self.model, self.initial)  # every attempt starts from the initial adapter
            stream = TaskStream({t: self.tasks[t] for t in ids}, self.encoder, self.tokenizer, c.prompt_version,
                                max_seq_len, data_seed, copies=c.copies)
            try:
                result = self._train(stream, steps, train_seed, ids)
                self._check_finite()
                error = None
                break
            except torch.cuda.OutOfMemoryError as e:
                error = describe_error(e)
            except Exception as e:  # one task's failure never stops the stage
                error = describe_error(e)
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
        if result.steps < min(c.min_steps * unit.size, full):
            info["reason"] = f"deadline: stopped after {result.steps} of {steps} steps (min_steps {c.min_steps})"
            self._finish(ids, "skipped", info, start)
        else:
            save_start = time.time()
            try:
                for task_id in ids:  # a group's members each get a copy of the shared adapter
                    record = self._record(task_id, ids, "done", info, start)
                    if c.full_finetune:
                        save_full_delta(self.model, self.initial, self.out, task_id, record, self.run_config)
                    else:
                        save_adapter(self.model, self.out, task_id, record, self.run_config)
            except Exception as e:  # e.g. a full disk: this task fails, the next may still fit
                self._finish(ids, "failed", {**info, **describe_error(e)}, start)
                return
            self.timing.record("phase", time.time() - save_start, "+".join(ids), phase="save")
            self._finish(ids, "done", info, start, written=True)
        self.budget.update(result.seconds, result.tokens, time.time() - start)

    def _train(self, stream: TaskStream, steps: int, seed: int, ids: tuple[str, ...]) -> TrainResult:
        from transformers.trainer_callback import PrinterCallback

        from pipeline.training.trainer import (CompletionCollator, CompletionTrainer, prepared_once,  # see load
                                               training_arguments)

        c = self.config
        reserve = self.budget.overhead + SAFETY_S
        guard = _make_guard(None if self.deadline_at is None else self.deadline_at - reserve, self.parent_pid,
                            label="+".join(ids))
        callbacks = [guard, *(self.task_callbacks(ids) if self.task_callbacks else [])]
        args = training_arguments(
            self.work_dir, max_steps=steps, batch_size=c.batch_size, per_device_batch_size=c.per_device_batch_size,
            learning_rate=c.learning_rate, lr_scheduler_type=c.lr_scheduler_type, warmup_ratio=c.warmup_ratio,
            logging_steps=max(1, steps // LOSS_POINTS), gradient_checkpointing=c.gradient_checkpointing,
            dtype=self.dtype, seed=seed, use_cpu=self.device == "cpu", disable_tqdm=True,
            logging_nan_inf_filter=False, dataloader_pin_memory=self.device != "cpu", optim="adamw_torch")
        with prepared_once(self.model):  # each unit's Trainer wraps the model in autocast afresh, once
            trainer = CompletionTrainer(model=self.model, args=args, train_dataset=stream,
                                        data_collator=CompletionCollator(self.tokenizer.pad_token_id),
                                        loss_reduction=c.loss_reduction, callbacks=callbacks)
            trainer.remove_callback(PrinterCallback)
            start = time.time()
            output = trainer.train()
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


def describe_error(error: BaseException) -> dict:
    text = f"{type(error).__name__}: {error}"
    return {"error": text[:2000], "traceback": traceback.format_exc(limit=8)[-4000:]}


def worker_process(rank: int, device: str, visible: str | None, config: TTFTConfig, tasks: dict, profiles: dict,
                    unit_tokens: list, units, results, deadline_at: float | None, n_workers: int,
                    parent_pid: int) -> None:
    """Entry point of a spawned worker: one device, units from the shared queue."""
    if device.startswith("cuda"):
        os.environ["CUDA_VISIBLE_DEVICES"] = visible  # before CUDA starts: the Trainer sees one GPU
        device = "cuda:0"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_workers))
    quiet_transformers()

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
                                           f"{describe_error(e)['error']}"))
        return
    worker.serve(next_unit, unit_tokens)


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
