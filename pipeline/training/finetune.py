"""Multi-task fine-tuning on ARC prompts (LoRA or full).  `python -m pipeline finetune --help`

    python -m pipeline finetune --model_path embedded \\
        --train_datasets data/arc-agi-1/partitions/train_rs7.json output-from-examples-v1 \\
        --train_datasets data/arc-agi-1/partitions/train_rs7.json input-from-inputs-v0 0.5 \\
        --val_dataset data/arc-agi-1/partitions/val_rs7.json output-from-examples-v1 \\
        --output_dir runs/ft --max_steps 1000 --remove_train_samples_to_fit_max_seq_len

The flags keep the original `fine-tuning.py` spelling (`--max_steps=1000` works too; every flag
also has a dashed alias).  See docs/finetune.md.

Training data (the sets `PATH PROMPT_VERSION [WEIGHT]`, the endless seeded stream, the validation
samples): `pipeline/training/finetune_data.py`.

Outputs in `output_dir`: `cfg.json` (model path, grid encoder, prompt versions, LoRA settings,
every argument; also copied into each checkpoint), `checkpoint-N/` (adapter or model, the fixed
tokenizer, optimizer state; the last `save_total_limit` kept), the final adapter (or model) and
tokenizer, `train_summary.json`.  A rerun resumes from the newest complete checkpoint.

Over 400 lines because the stage's settings (one dataclass, ~50 documented flags that generate
its CLI), their checks and the run belong to this stage alone and read best together; its data
stream is `training/finetune_data.py`, and the trainer, LoRA and checkpoint rules it shares with
TTFT live in `training/trainer.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import TrainerCallback

from pipeline.core.settings import ConfigError, add_arguments, setting, settings_from
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.files import OutputError, check_output, write_json_atomic
from pipeline.core.formats import ARC24, DEFAULT_FORMAT, FORMAT_NAMES
from pipeline.core.models import default_dtype, load_model_and_tokenizer, load_tokenizer, model_path_problem, resolve_model_path
from pipeline.core.prompts import TEXT_PROMPT_VERSIONS
from pipeline.core.model_cfg import RUN_CONFIG, resolve_prompting
from pipeline.core.tasks import TaskError, load_tasks
from pipeline.training.finetune_data import (WEIGHT_MODES, DatasetSpec, NotEnoughTrainingData, TrainingSet,
                                            TrainingStream, load_training_set, parse_dataset_spec, validation_samples)
from pipeline.training.lora import (DEFAULT_LORA_TARGET, LORA, LoraSettings, build_lora_model, load_lora_model,
                                   lora_settings_of, lora_target_modules)
from pipeline.training.trainer import (CHECKPOINT_RE, CompletionCollator, CompletionTrainer, gradient_accumulation_steps,
                                      latest_checkpoint, training_arguments)

log = logging.getLogger("pipeline.training.finetune")


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class FinetuneConfig:
    """The finetune stage's settings: every field is a flag (pipeline/core/settings.py generates the CLI;
    every flag also has a dashed alias, a bool its `--no-` negation)."""
    # model
    model_path: str = setting("embedded", "transformers directory, .gguf file or 'embedded' (SmolLM2-135M-Instruct)")
    adapter_path: str | None = setting(None, "continue training this LoRA adapter (its r/alpha/targets are used)")
    use_lora: bool = setting(True, "LoRA (default) or full fine-tuning (--no-use_lora)")
    lora_r: int = setting(LORA.r, "LoRA rank")
    lora_alpha: int = setting(LORA.alpha, "LoRA alpha (rsLoRA scale: alpha / sqrt(r))")
    lora_dropout: float = setting(LORA.dropout, "LoRA dropout")
    lora_target: tuple[str, ...] = setting((DEFAULT_LORA_TARGET,), "attention | attention+mlp | all-linear | module "
                                           "names (e.g. q_proj v_proj)", nargs="+")
    use_rslora: bool = setting(LORA.use_rslora, "rank-stabilised LoRA scaling")
    use_dora: bool = setting(LORA.use_dora, "DoRA (off by default: vLLM cannot serve DoRA adapters)")
    torch_dtype: str | None = setting(None, "weights / mixed precision (default: bfloat16 on cuda, float32 on cpu)",
                                      choices=("float32", "float16", "bfloat16"))
    device: str | None = setting(None, "cpu or cuda (default: cuda if available); under `accelerate launch` each "
                                 "process uses its own GPU", choices=("cpu", "cuda"))
    # data
    train_datasets: list[list[str]] = setting([], "PATH PROMPT_VERSION [WEIGHT]; repeat the flag for several "
                                              "training sets (WEIGHT default 1, see --weight_by)", nargs="+",
                                              action="append", metavar="PATH PROMPT_VERSION [WEIGHT]")
    val_dataset: tuple[str, str] | None = setting(None, "PATH PROMPT_VERSION of the validation tasks (every test "
                                                  "pair, not augmented)", nargs=2, metavar=("PATH", "PROMPT_VERSION"))
    weight_by: str = setting("loss", "what a training set's WEIGHT multiplies: the loss weight of its samples "
                             "(draws stay proportional to task counts) or its draw probability",
                             choices=WEIGHT_MODES)
    format: str = setting(DEFAULT_FORMAT, "prompt format: arc24 (the project's prompts and grid encoders) or a public "
                          "checkpoint's (architects, nvarc: every PROMPT_VERSION must then be the format's name)",
                          choices=FORMAT_NAMES)
    grid_encoder: str = setting(DEFAULT_ENCODER, "grid encoder expression (arc24 format)")
    max_seq_len: int = setting(4096, "longest training/validation sequence in tokens (prompt + answer)")
    remove_train_samples_to_fit_max_seq_len: bool = setting(
        False, "drop the last train pair until the prompt fits (else over-long prompts are skipped)")
    augment: bool = setting(True, "re-augment every draw (dihedral, colours, train order, train/test swap)")
    compose_new_task_probability: float = setting(0.0, "probability of a problem augmentation (new task from an "
                                                  "extra transform of the inputs or outputs)")
    compose_new_task_weights: tuple[float, float, float, float] | None = setting(
        None, "weights of geometric, padding, upscale, mirror", nargs=4, metavar="W")
    length_bucket_batches: int = setting(16, "with per-device batch > 1: buffer this many batches, sort by length, "
                                         "emit batches of similar length (1 = off)")
    random_seed: int = setting(0, "seed of the data stream (mixed with the process, worker and resume step)")
    # optimisation
    max_steps: int = setting(6000, "optimizer steps")
    batch_size: int = setting(16, "effective batch size (per-device batch × processes × accumulation)")
    per_device_train_batch_size: int = setting(1, "samples per forward pass")
    learning_rate: float = setting(1e-4, "peak learning rate")
    lr_scheduler_type: str = setting("linear", "schedule after the warmup",
                                     choices=("linear", "cosine", "constant", "constant_with_warmup"))
    warmup_ratio: float = setting(0.05, "share of max_steps spent warming up linearly")
    max_grad_norm: float = setting(1.0, "gradient clipping (0 = off)")
    optim: str = setting("adamw_torch", "transformers optimizer name")
    loss_reduction: str = setting("sample", "sample: every sample weighs the same; token: every token does "
                                  "(HF default; long outputs dominate)", choices=("sample", "token"))
    gradient_checkpointing: bool = setting(False, "recompute activations (less memory, ~25% slower)")
    # bookkeeping
    output_dir: str | None = setting(None, "run directory (required)")
    logging_steps: int = setting(10, "log train loss, tokens/s and padded share every N steps")
    eval_steps: int | None = setting(50, "evaluate every N steps (0 = never)")
    save_steps: int | None = setting(None, "checkpoint every N steps (default: eval_steps)")
    save_total_limit: int = setting(3, "checkpoints kept")
    resume_from_checkpoint: bool = setting(True, "resume from the newest complete checkpoint-* in output_dir")
    dataloader_num_workers: int = setting(0, "background processes drawing the training stream")
    report_to: str = setting("none", "none, tensorboard, wandb, ...")
    verbose: bool = setting(True, "print the first training prompt, the shortest validation prompt and "
                            "prompt-length percentiles")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline finetune",
        description="Fine-tune a causal LM (LoRA or full) on an endless, augmented stream of ARC prompts "
                    "from several training sets. Flags keep the original fine-tuning.py spelling.")
    add_arguments(parser, FinetuneConfig, dashed_aliases=True)  # one flag per field (pipeline/core/settings.py)
    return parser


def config_from_args(ns: argparse.Namespace) -> FinetuneConfig:
    return settings_from(FinetuneConfig, ns)


# ----------------------------------------------------------------------------- checks (before any model)

def close_process_group() -> None:
    """Destroy the torch.distributed process group of a multi-process run before the interpreter
    exits: left to interpreter teardown, gloo's worker threads can abort the process
    ("terminate called without an active exception", SIGABRT) after a successful run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def lora_settings(cfg: FinetuneConfig):
    """The new adapter's settings; raises ValueError/TypeError for impossible ones."""
    return LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        target_modules=lora_target_modules(cfg.lora_target), use_rslora=cfg.use_rslora,
                        use_dora=cfg.use_dora)


def world_size() -> int:
    """Processes of this run (set by `accelerate launch` / torchrun), read without initialising them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device_and_dtype(cfg: FinetuneConfig) -> tuple[str, str]:
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device")
    dtype = cfg.torch_dtype or default_dtype(device)
    if dtype == "float16" and not cfg.use_lora and not cfg.torch_dtype:
        dtype = "float32"  # a card without native bf16 (T4): full fine-tuning cannot run in fp16
    if dtype == "float16" and device == "cpu":
        raise ConfigError("--torch_dtype float16 needs --device cuda (mixed precision with a gradient scaler)")
    if dtype == "float16" and not cfg.use_lora:
        raise ConfigError("full fine-tuning (--no-use_lora) in float16 is not supported (fp16 gradients cannot be "
                          "unscaled): use --torch_dtype bfloat16 or float32")
    return device, dtype


def grid_encoder_of(cfg: FinetuneConfig) -> str:
    """The encoder the run writes grids with, by the stages' one rule (`resolve_prompting`): a
    public checkpoint's format fixes its own.  The flag's default counts as not given."""
    given = None if cfg.grid_encoder == DEFAULT_ENCODER else cfg.grid_encoder
    try:
        return resolve_prompting({}, cfg.format, given).grid_encoder
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_config(cfg: FinetuneConfig) -> tuple[list[DatasetSpec], DatasetSpec | None]:
    """Every check that needs no model: ConfigError naming the flag and what to change."""
    if not cfg.output_dir:
        raise ConfigError("--output_dir is required")
    try:  # a run folder it made (cfg.json is written before the first step), or new: never a foreign one
        check_output(cfg.output_dir, {"--model_path": cfg.model_path}, folder=True, own=(RUN_CONFIG,),
                     what="--output_dir")
    except OutputError as e:
        raise ConfigError(str(e)) from None
    if not cfg.train_datasets:
        raise ConfigError("give at least one --train_datasets PATH PROMPT_VERSION [WEIGHT]")
    if model_path_problem(cfg.model_path):
        raise ConfigError(f"--model_path: {model_path_problem(cfg.model_path)}")
    train = [parse_dataset_spec(spec) for spec in cfg.train_datasets]
    val = parse_dataset_spec(cfg.val_dataset, "--val_dataset", weighted=False) if cfg.val_dataset else None
    try:
        create_grid_encoder(grid_encoder_of(cfg))
    except ValueError as e:
        raise ConfigError(f"--grid_encoder: {e}") from None
    for spec in train + ([val] if val else []):
        if (spec.prompt_version in TEXT_PROMPT_VERSIONS or cfg.format != ARC24) and spec.prompt_version != cfg.format:
            raise ConfigError(f"{spec.path}: prompt version {spec.prompt_version!r} does not belong to --format "
                              f"{cfg.format}" + ("" if cfg.format == ARC24 else f" (give {spec.path} {cfg.format})"))
    for name in ("max_steps", "batch_size", "per_device_train_batch_size", "max_seq_len", "logging_steps",
                 "save_total_limit", "length_bucket_batches"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_steps", "save_steps", "dataloader_num_workers"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(cfg, name)}")
    try:
        gradient_accumulation_steps(cfg.batch_size, cfg.per_device_train_batch_size, world_size())
    except ValueError as e:
        raise ConfigError(f"--batch_size: {e}") from None
    if not 0.0 <= cfg.compose_new_task_probability <= 1.0:
        raise ConfigError(f"--compose_new_task_probability must be in [0, 1], got {cfg.compose_new_task_probability}")
    if cfg.compose_new_task_weights is not None:
        w = cfg.compose_new_task_weights
        if min(w) < 0 or sum(w) <= 0:
            raise ConfigError(f"--compose_new_task_weights must be 4 non-negative numbers with a positive sum, got {w}")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ConfigError(f"--warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.adapter_path is not None:
        if not cfg.use_lora:
            raise ConfigError("--adapter_path continues a LoRA adapter: it cannot be combined with --no-use_lora")
        if not (Path(cfg.adapter_path) / "adapter_config.json").is_file():
            raise ConfigError(f"--adapter_path {cfg.adapter_path} is not a LoRA adapter directory "
                              f"(no adapter_config.json)")
    elif cfg.use_lora:
        try:
            lora_settings(cfg)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"LoRA settings: {e}") from None
    weights = {spec.weight for spec in train}
    if cfg.weight_by == "loss" and len(weights) > 1 and cfg.batch_size == 1:
        raise ConfigError("training-set WEIGHTs act as loss weights relative within an optimizer step, so with "
                          "--batch_size 1 they cancel out: use --weight_by sampling or a larger --batch_size")
    resolve_device_and_dtype(cfg)
    return train, val


# ----------------------------------------------------------------------------- checkpoints

def _checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_RE.match(path.name).group(1))


# ----------------------------------------------------------------------------- run

def build_run_config(cfg: FinetuneConfig, train: list[TrainingSet], val: DatasetSpec | None, val_info: dict,
                     model_dir: Path, lora: dict | None, device: str, dtype: str, n_processes: int) -> dict:
    """What later stages read: model, encoder, prompt versions, LoRA settings, every argument."""
    import peft
    import transformers

    inference_version = val.prompt_version if val else train[0].spec.prompt_version
    return {
        "stage": "finetune",
        "model_path": cfg.model_path,
        "model_dir": str(model_dir),
        "format": cfg.format,
        "grid_encoder": grid_encoder_of(cfg),
        "prompt_version": inference_version,
        "prompt_versions": {"train": sorted({s.spec.prompt_version for s in train}),
                            "val": val.prompt_version if val else None},
        "train_datasets": [{**s.spec.to_dict(), "n_tasks": len(s.tasks)} for s in train],
        "val_dataset": {**val.to_dict(), **val_info} if val else None,
        "weight_by": cfg.weight_by,
        "loss_reduction": cfg.loss_reduction,
        "max_seq_len": cfg.max_seq_len,
        "use_lora": cfg.use_lora,
        "adapter_path": cfg.adapter_path,
        "lora": lora,
        "device": device,
        "torch_dtype": dtype,
        "n_processes": n_processes,
        "args": dataclasses.asdict(cfg),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }


class SaveRunConfig(TrainerCallback):
    """cfg.json beside every checkpoint, so a checkpoint alone names its encoder and prompt."""

    def __init__(self, run_config: dict):
        self.run_config = run_config

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                write_json_atomic(checkpoint / RUN_CONFIG, self.run_config, indent=1)


def resume_checkpoint(cfg: FinetuneConfig) -> Path | None:
    checkpoint = latest_checkpoint(cfg.output_dir)
    if checkpoint is not None and not cfg.resume_from_checkpoint:
        log.warning("--no-resume_from_checkpoint: starting from step 0 although %s exists; its checkpoints "
                    "stay in %s and may be rotated away", checkpoint.name, cfg.output_dir)
        return None
    return checkpoint


def load_validation(spec: DatasetSpec, encoder, tokenizer, max_seq_len: int, announce: bool) -> tuple[list, dict]:
    tasks = load_tasks(spec.path)
    samples, dropped = validation_samples(tasks, encoder, tokenizer, spec.prompt_version, max_seq_len)
    if not samples:
        raise NotEnoughTrainingData(f"no validation prompt of {spec.path} fits in max_seq_len={max_seq_len} "
                                    f"tokens ({dropped} dropped)")
    if announce:
        log.info("validation: %d prompts from %d tasks, %d dropped as longer than max_seq_len=%d; shortest "
                 "(%d tokens):\n%s", len(samples), len(tasks), dropped, max_seq_len, len(samples[0]["input_ids"]),
                 tokenizer.decode(samples[0]["input_ids"]))
    return samples, {"n_tasks": len(tasks), "n_samples": len(samples), "n_dropped": dropped}


def load_model(cfg: FinetuneConfig, model_dir: Path, dtype: str, tokenizer=None):
    """(model with a new or continued LoRA adapter, or bare for full fine-tuning; fixed tokenizer
    (`tokenizer` when given); LoRA settings used).  Loaded on the CPU: the Trainer moves it to
    this process's device."""
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype=dtype, device="cpu", tokenizer=tokenizer)
    if cfg.adapter_path:
        model = load_lora_model(model, cfg.adapter_path, trainable=True)
    elif cfg.use_lora:
        model = build_lora_model(model, lora_settings(cfg), seed=cfg.random_seed)
    return model, tokenizer, (lora_settings_of(model).to_dict() if cfg.use_lora else None)


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Train as configured; returns the summary (also written to output_dir/train_summary.json)."""
    train_specs, val_spec = check_config(cfg)
    device, dtype = resolve_device_and_dtype(cfg)
    n_processes, output_dir = world_size(), Path(cfg.output_dir)
    args = training_arguments(
        output_dir, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
        per_device_batch_size=cfg.per_device_train_batch_size, n_processes=n_processes,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_ratio=cfg.warmup_ratio,
        logging_steps=cfg.logging_steps, eval_steps=(cfg.eval_steps or None) if val_spec else None,
        save_steps=cfg.save_steps or cfg.eval_steps or None, save_total_limit=cfg.save_total_limit,
        gradient_checkpointing=cfg.gradient_checkpointing, dtype=dtype, seed=cfg.random_seed,
        report_to=cfg.report_to, use_cpu=device == "cpu", max_grad_norm=cfg.max_grad_norm, optim=cfg.optim,
        dataloader_num_workers=cfg.dataloader_num_workers)
    is_main = args.process_index == 0
    checkpoint = resume_checkpoint(cfg)
    resume_step = _checkpoint_step(checkpoint) if checkpoint else 0

    # data first (cheap, and every data error surfaces before the model loads)
    encoder = create_grid_encoder(grid_encoder_of(cfg))
    train_sets = [load_training_set(spec, need_all_outputs=cfg.augment) for spec in train_specs]
    model_dir = resolve_model_path(cfg.model_path)
    tokenizer = load_tokenizer(model_dir)
    val_samples, val_info = load_validation(val_spec, encoder, tokenizer, cfg.max_seq_len, is_main and cfg.verbose) \
        if val_spec else (None, {})
    stream = TrainingStream(
        train_sets, encoder, tokenizer, max_seq_len=cfg.max_seq_len,
        remove_train_samples=cfg.remove_train_samples_to_fit_max_seq_len, augment=cfg.augment,
        compose_new_task_probability=cfg.compose_new_task_probability,
        compose_new_task_weights=cfg.compose_new_task_weights, weight_by=cfg.weight_by, seed=cfg.random_seed,
        process_index=args.process_index, resume_step=resume_step,
        batch_size=cfg.per_device_train_batch_size, bucket_batches=cfg.length_bucket_batches, verbose=cfg.verbose)

    model, tokenizer, lora = load_model(cfg, model_dir, dtype, tokenizer)
    run_config = build_run_config(cfg, train_sets, val_spec, val_info, model_dir, lora, device, dtype, n_processes)
    if is_main:
        write_json_atomic(output_dir / RUN_CONFIG, run_config, indent=1)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("model %s (%s, %s): %.2fM trainable parameters; batch %d = %d per device × %d process(es) × "
                 "%d accumulation", cfg.model_path, device, dtype, trainable / 1e6, cfg.batch_size,
                 cfg.per_device_train_batch_size, n_processes, args.gradient_accumulation_steps)
        if checkpoint is not None:
            log.info("resuming from %s (step %d of %d)", checkpoint, resume_step, cfg.max_steps)

    trainer = CompletionTrainer(
        model=model, args=args, train_dataset=stream, eval_dataset=val_samples,
        data_collator=CompletionCollator(tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=[SaveRunConfig(run_config)], loss_reduction=cfg.loss_reduction)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(str(output_dir))  # the final adapter (or model) and the fixed tokenizer
    summary = _summary(trainer, output.training_loss, output_dir)
    if is_main:
        write_json_atomic(output_dir / "train_summary.json", summary, indent=1)
    return summary


def _summary(trainer, mean_train_loss: float, output_dir: Path) -> dict:
    """The last logged train loss (the run's mean when no step was logged), the last eval loss,
    throughput of this run's steps."""
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    throughput = trainer.throughput_summary()
    return {"steps": trainer.state.global_step,
            "train_loss": train_losses[-1] if train_losses else mean_train_loss,
            "eval_loss": eval_losses[-1] if eval_losses else None,
            "tok_per_s": throughput["tok_per_s"], "padded_share": throughput["padded_share"],
            "steps_this_run": throughput["steps"], "output_dir": str(output_dir)}


def summary_line(summary: dict) -> str:
    def fmt(value, spec):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
    return (f"finetune: {summary['steps']} steps, train loss {fmt(summary['train_loss'], '.4f')}, "
            f"eval loss {fmt(summary['eval_loss'], '.4f')}, {fmt(summary['tok_per_s'], '.0f')} tok/s, "
            f"padded share {fmt(summary['padded_share'], '.1%')}, output {summary['output_dir']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    cfg = config_from_args(parser.parse_args(argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        check_config(cfg)
    except (ConfigError, TaskError) as e:
        parser.error(str(e))
    if cfg.dataloader_num_workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        summary = run_finetune(cfg)
    except (ConfigError, TaskError, NotEnoughTrainingData) as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return 1
    finally:
        close_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary_line(summary))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every output is written and the process group is gone, but gloo's threads can still
        # abort interpreter teardown (SIGABRT, "terminate called without an active exception",
        # about 1 run in 4 on this machine after a successful run): leave without it.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
