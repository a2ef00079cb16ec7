"""Test-time fine-tuning (TTFT): one LoRA adapter per hidden task, inside a deadline.

    python -m pipeline ttft --model MODEL [--adapter_path A] --dataset CHALLENGES.json \\
        --output_dir OUT --steps 300 --learning_rate 8e-5 --batch_size 1 --deadline 20000
    (or `--copies 128 [--epochs 1]` instead of --steps: NVARC's 128 augmented copies, each once)

See docs/ttft.md.  The stage is five modules, each below the next:

    ttft/data.py    the leave-one-out sample stream (`TaskStream`) and task profiles (`profile_task`)
    ttft/budget.py  units, their order (`anytime_order`) and the deadline's step budget (`Budget`)
    ttft/worker.py  `TTFTConfig`, task records, the per-device `Worker` and the spawned worker's entry
    ttft/pool.py    the process pool: one spawned worker per device, their reports relayed
    ttft/ttft.py    (this module) the CLI and its checks, resume checks, the in-process worker or
                    the pool, records for tasks never reported, `summary.json`

In short:

* **Data** (`data.TaskStream`): endless leave-one-out samples of a task's train pairs.  Every draw
  re-augments the pairs (dihedral × colours × order), picks one pair as the target and shows the
  others as examples, dropping the last example until the sample fits `max_seq_len`
  (`fitting.fit_examples`, spec §3.6).  Test pairs are never read.  A task with no sample that
  fits even with one example is recorded "too_long" and left to the base adapter.
* **Adapters** (`worker.Worker`): each worker loads the base model once, wraps it in the `--adapter_path` LoRA
  (continue training, the original's best setting) or a fresh one, keeps a copy of the adapter's
  initial weights and copies it back before every task (`lora.restore_trainable_state`).
  `--full_finetune`: no LoRA, every weight trained (and restored the same way); a task's weights
  are saved as their bf16 difference from the base (`adapters.save_full_delta`).
  Training is `trainer.CompletionTrainer` (completion-only loss), one Trainer per task.
* **Outputs**: `OUT/adapters/<task_id>/` = peft adapter (written to a temp dir, renamed) +
  `cfg.json` + `record.json` (written last; status "done" means complete).  Failed, skipped and
  too_long tasks get a record and no adapter.  `OUT/cfg.json`, `OUT/summary.json`, timing
  records in `--timing_log` (default `OUT/timing.jsonl`).
* **Workers and deadline**: one worker per device pulling units (a task, or a group of
  `--group_size` tasks) from a queue, largest first when everything is estimated to fit, else
  (and always with one worker under a deadline) smallest first (`budget.anytime_order`).  A worker starts a unit only if its
  estimated time fits; steps are scaled down to the unit's fair share of the time left (not
  below `--min_steps`), else the unit is skipped.  Training also stops at the deadline.
* **Failures**: an exception, a CUDA OOM (after one retry with a shorter `max_seq_len`) or a
  non-finite loss fails that task only: its record says why, the adapter is reset, the stage
  goes on.  A rerun skips the complete tasks.  Exit 0 whenever the stage ran.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from pipeline.core.adapters import ADAPTERS, is_complete, read_record, write_unfinished
from pipeline.core.settings import ConfigError, TTFTModelSettings, TTFTSettings, settings_from, ttft_step_count
from pipeline.core.encoders import create_grid_encoder
from pipeline.core.files import OutputError, check_output, read_json, write_json_atomic
from pipeline.core.prompts import get_prompt_version
from pipeline.core.model_cfg import RUN_CONFIG, find_run_config, read_tokenizer_facts, resolve_prompting
from pipeline.core.models import load_tokenizer, model_path_problem, resolve_model_path
from pipeline.core.stage_args import ttft_parser
from pipeline.core.tasks import TaskError, load_tasks, select_tasks
from pipeline.core.timing import TimingLog
from pipeline.training.lora import ALL_LINEAR, LoraSettings, check_target_modules, lora_settings_from, lora_target_modules
from pipeline.ttft.budget import PRIOR_FLOPS, SAFETY_S, anytime_order, length_share, model_params, plan_units
from pipeline.ttft.data import profile_task
from pipeline.ttft.pool import run_processes
from pipeline.ttft.worker import TTFTConfig, Worker, describe_error, make_record, quiet_transformers

SUMMARY = "summary.json"
STATUSES = ("done", "failed", "too_long", "skipped")
# keys of OUT/cfg.json that need not match when a run is resumed in the same output directory: they
# do not change a trained adapter (where the timing goes, memory, the deadline's floor); every other
# setting does, and a resume with another value is refused instead of mixing two runs' adapters
RESUME_FREE_KEYS = ("timing_log", "gradient_checkpointing", "min_steps")
# LoraSettings field -> the TTFTModelSettings flag that sets it for a fresh LoRA
FRESH_LORA_FLAGS = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "lora_target",
                    "use_dora": "use_dora", "use_rslora": "use_rslora"}


# ----------------------------------------------------------------------------- configuration

def adapter_lora_settings(adapter_path: str | os.PathLike) -> dict:
    """The LoRA settings of a saved peft adapter, as LoraSettings.to_dict()."""
    path = Path(adapter_path) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"--adapter_path {adapter_path} is not a LoRA adapter directory (no adapter_config.json)")
    return lora_settings_from(read_json(path)).to_dict()


def check_lora_targets(model_dir: str | os.PathLike, lora: dict) -> None:
    """A fresh LoRA's target modules must exist in the model: checked on a weightless (meta
    device) instance, before any worker starts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    targets = tuple(lora["target_modules"])
    if targets == (ALL_LINEAR,):
        return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir), local_files_only=True))
    try:
        check_target_modules(model, targets)
    except ValueError as e:
        raise ConfigError(f"--lora_target: {e}") from None


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


def check_run_config(output_dir: Path, run_config: dict) -> None:
    """Refuse to mix runs: a resumed output dir must have been trained with the same settings (every
    key of its cfg.json but `RESUME_FREE_KEYS`: model, adapter, format, LoRA, steps, learning rate,
    batch, schedule, seed, ...), each one that differs named.  A folder that holds files but no
    cfg.json is not a TTFT run: refused too (`files.check_output`)."""
    try:
        check_output(output_dir, {}, folder=True, own=(RUN_CONFIG,), what="--output_dir")
    except OutputError as e:
        raise ConfigError(str(e)) from None
    path = output_dir / RUN_CONFIG
    if not path.is_file():
        return
    old = json.loads(json.dumps(read_json(path)))
    new = json.loads(json.dumps(run_config))  # compared as JSON gives them back (lists, not tuples)
    diff = [f"{k}: {old.get(k)!r} (in {path}) vs {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in RESUME_FREE_KEYS and old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(f"{output_dir} holds a TTFT run with other settings ({'; '.join(diff)}): use another "
                          f"--output_dir")


# ----------------------------------------------------------------------------- running the stage

def run_ttft(tasks: dict, config: TTFTConfig, devices: Sequence[str] = ("cpu",), deadline_at: float | None = None,
             task_callbacks: Callable[[tuple[str, ...]], list] | None = None, progress: bool = True) -> dict:
    """Run the stage on `tasks` ({task_id: task}); returns the summary (also OUT/summary.json).

    `deadline_at`: unix time by which the stage must be done (None: no deadline).
    `task_callbacks(task_ids)`: extra TrainerCallbacks for a unit (in-process runs only; tests).
    One device that is `cpu` (or the only visible GPU) runs in this process; otherwise one
    spawned worker process per device.
    """
    from tqdm.auto import tqdm

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
    shares = {t: length_share(p.max_sample_tokens, config.max_task_tokens, config.long_tasks)
              for t, p in profiles.items() if not p.status}
    for task_id, share in shares.items():  # the length gate: no TTFT for a task over it (--long_tasks skip)
        if not share:
            profiles[task_id] = dataclasses.replace(
                profiles[task_id], status="skipped",
                reason=f"length gate: longest sample {profiles[task_id].max_sample_tokens} tokens > "
                       f"--max_task_tokens {config.max_task_tokens}")
    untrainable = [p for p in profiles.values() if p.status]
    for p in untrainable:
        write_unfinished(out, p.task_id, make_record(config, p.task_id, p.status, reason=p.reason,
                                                     n_train_pairs=p.n_train))
        timing.record("skipped", 0.0, p.task_id, reason=f"{p.status}: {p.reason}")
    units = plan_units([p for p in profiles.values() if not p.status], config.group_size, config.batch_size, shares)
    params = model_params(resolve_model_path(config.model))
    prior = 6 * params / PRIOR_FLOPS["cuda" if devices[0].startswith("cuda") else "cpu"] if params else None
    units, order = anytime_order(units, config.steps, len(devices), None if deadline_at is None else
                                 deadline_at - time.time(), prior)
    if units:
        timing.record("phase", 0.0, None, phase="order", order=order, units=len(units))
    unit_tokens = [u.tokens_per_step * u.size * u.step_share for u in units]

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
            worker_errors.append(f"the model could not be loaded on {devices[0]}: {describe_error(e)['error']}")
        else:
            pending = iter(units)
            try:
                worker.serve(lambda: next(pending, None), unit_tokens)
            except Exception as e:  # a bug outside a task's training: the rest still gets records
                worker_errors.append(f"the worker stopped: {describe_error(e)['error']}")
    elif units:
        if task_callbacks is not None:
            raise ValueError("task_callbacks need an in-process run (one cpu device)")
        worker_errors = run_processes(config, devices, tasks, profiles, units, unit_tokens, deadline_at, report)
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


def summary_line(summary: dict, output_dir) -> str:
    counts = summary["counts"]
    return (f"ttft: {counts['done']} done, {counts['failed']} failed, {counts['too_long']} too_long, "
            f"{counts['skipped']} skipped in {summary['seconds']:.0f} s -> {output_dir}")


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    """The stage's parser: pipeline/core/stage_args.py (the Kaggle run checks its commands with it
    before the offline install, so it imports nothing heavy)."""
    return ttft_parser()


def config_from_args(args: argparse.Namespace) -> TTFTConfig:
    """Check the arguments (no model is loaded) and build the config; ConfigError says what to fix."""
    training = settings_from(TTFTSettings, args)
    for name in ("copies", "epochs"):
        if getattr(training, name) is not None and getattr(training, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(training, name)}")
    if training.batch_size >= 1:  # --copies x --epochs: the steps they make (the one rule, core/settings.py)
        training = dataclasses.replace(training, steps=ttft_step_count(training.steps, training.copies,
                                                                       training.epochs, training.batch_size))
    if training.max_task_tokens is not None and training.max_task_tokens < 1:
        raise ConfigError(f"--max_task_tokens must be >= 1, got {training.max_task_tokens}")
    for name in ("steps", "batch_size", "per_device_batch_size", "max_seq_len", "group_size"):
        if getattr(training, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(training, name)}")
    if training.batch_size % training.per_device_batch_size:
        raise ConfigError(f"--batch_size {training.batch_size} must be a multiple of --per_device_batch_size "
                          f"{training.per_device_batch_size}")
    min_steps = training.min_steps if training.min_steps is not None else max(1, training.steps // 10)
    if not 1 <= min_steps <= training.steps:
        raise ConfigError(f"--min_steps must be in [1, --steps={training.steps}], got {min_steps}")
    if not (math.isfinite(training.learning_rate) and training.learning_rate > 0):
        raise ConfigError(f"--learning_rate must be a finite number > 0, got {training.learning_rate}")
    if not 0.0 <= training.warmup_ratio < 1.0:
        raise ConfigError(f"--warmup_ratio must be in [0, 1), got {training.warmup_ratio}")
    if args.deadline is not None and args.deadline <= 0:
        raise ConfigError(f"--deadline must be positive, got {args.deadline}")
    model = settings_from(TTFTModelSettings, args)
    fresh = {name: getattr(model, flag) for name, flag in FRESH_LORA_FLAGS.items() if getattr(model, flag) is not None}
    run_cfg = {}
    if model.full_finetune and (args.adapter_path or fresh):
        given = ["--adapter_path"] * bool(args.adapter_path) + [f"--{FRESH_LORA_FLAGS[name]}" for name in fresh]
        raise ConfigError(f"--full_finetune trains every weight, no LoRA: {', '.join(given)} do(es) not apply")
    if model.full_finetune:
        lora = None
    elif args.adapter_path:
        if fresh:
            flags = ", ".join(f"--{FRESH_LORA_FLAGS[name]}" for name in fresh)
            raise ConfigError(f"{flags} describe a fresh LoRA: with --adapter_path the adapter's own settings are used")
        lora = adapter_lora_settings(args.adapter_path)
        run_cfg, _ = find_run_config(args.adapter_path)
    else:
        try:  # what is not given is LoraSettings' default
            if "target_modules" in fresh:
                fresh["target_modules"] = lora_target_modules(fresh["target_modules"])
            lora = LoraSettings(**fresh).to_dict()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"LoRA settings: {e}") from None
    model_problem = model_path_problem(args.model)
    model_dir = None if model_problem else resolve_model_path(args.model)
    if not run_cfg and model_dir:  # a model made for a format (shrink-vocab) says so in its own cfg.json
        run_cfg, _ = find_run_config(model_dir)
    try:
        prompting = resolve_prompting(run_cfg, training.format, model.grid_encoder, model.prompt_version,
                                      read_tokenizer_facts(model_dir) if model_dir else None)
    except ValueError as e:
        raise ConfigError(model_problem or str(e)) from None  # no model to read the format from: say that
    if prompting.source.startswith("recognised"):  # the weights did not say: tell which format was picked
        print(f"ttft: format {prompting.format} ({prompting.source})", file=sys.stderr)
    try:
        create_grid_encoder(prompting.grid_encoder)
    except ValueError as e:
        raise ConfigError(f"--grid_encoder: {e}") from None
    try:
        get_prompt_version(prompting.prompt_version)
    except ValueError as e:
        raise ConfigError(f"--prompt_version (or the adapter's cfg.json): {e}") from None
    if model.torch_dtype == "float16" and args.devices.strip().lower() == "cpu":
        raise ConfigError("--torch_dtype float16 needs a CUDA device (mixed precision with a gradient scaler)")
    return TTFTConfig(model=args.model, output_dir=args.output_dir, lora=lora, adapter_path=args.adapter_path,
                      full_finetune=model.full_finetune,
                      grid_encoder=prompting.grid_encoder,
                      prompt_version=prompting.prompt_version, torch_dtype=model.torch_dtype,
                      timing_log=args.timing_log, **{**dataclasses.asdict(training), "min_steps": min_steps, "format": prompting.format})


def main(argv: Sequence[str] | None = None) -> int:
    start = time.time()
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        devices = parse_devices(args.devices)
        try:
            model_dir = resolve_model_path(config.model)
        except ValueError as e:
            raise ConfigError(f"--model: {e}") from None
        if not config.adapter_path and not config.full_finetune:
            check_lora_targets(model_dir, config.lora)
        tasks = select_tasks(load_tasks(args.dataset, solutions=None), args.task_ids, args.first_n)
        if not tasks:
            raise TaskError(f"{args.dataset}: no tasks selected")
        quiet_transformers()
        summary = run_ttft(tasks, config, devices, None if args.deadline is None else start + args.deadline,
                           progress=not args.no_progress)
    except (ConfigError, TaskError, FileNotFoundError) as e:
        print(f"ttft: error: {e}", file=sys.stderr)
        return 1
    print(summary_line(summary, config.output_dir))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
