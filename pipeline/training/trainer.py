"""The training core shared by `finetune` and `ttft`: sample encoding, collator, the
completion-only loss, a small `transformers.Trainer` subclass, its arguments and checkpoints
(the LoRA helpers are `pipeline/training/lora.py`).

Nothing here knows about ARC tasks, prompt versions or files of tasks: it works on
`PromptSample(prompt, completion)` pairs and token ids.

Loss
----
Only completion tokens (the assistant's answer and its end-of-turn token) are trained.  Sample
`i` has weight `w_i`, `T_i` completion tokens and per-token cross-entropies `ce_it`:

* `"sample"` (default): `sum_i w_i * mean_t ce_it / sum_i w_i` -- every sample counts the same
  whatever its length.  The HF default is the token mean (`"token"`), which lets a 30×30 output
  (~930 tokens) weigh ~100× more than a 3×3 one in the gradient; the original system noticed
  this, researched a weighted loss (its Iteration 22) and never built one.
* `"token"`: `sum_i w_i * sum_t ce_it / sum_i w_i * T_i` -- the HF token mean, weighted.

The normalizer (`sum_i w_i`, or `sum_i w_i T_i`) is taken over the WHOLE optimizer step: all
gradient-accumulation micro-batches and all DDP processes, so both reductions are exact whatever
the split into micro-batches (`tests/test_training.py` checks per-device 1 × GA 4 against
per-device 4 × GA 1).  Consequence: weights are *relative within one optimizer step*; with an
effective batch of one sample any weight cancels out.

`finetune` multiplies every sample's weight by its training set's WEIGHT.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import TrainerCallback, TrainingArguments

from pipeline.core.prompts import PromptSample
from pipeline.core.settings import AUTOCAST_BF16

IGNORE_INDEX = -100
LOSS_REDUCTIONS = ("sample", "token")


# ----------------------------------------------------------------------------- samples and batches

def encode_sample(tokenizer, sample: PromptSample, weight: float = 1.0) -> dict:
    """Token ids of `prompt + completion` with labels on the completion only.

    Prompt and completion are tokenized separately (no special tokens added) and concatenated,
    so the prompt ids are exactly what inference conditions on and the label mask is exact.
    """
    prompt = tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
    completion = tokenizer(sample.completion, add_special_tokens=False)["input_ids"]
    if not completion:
        raise ValueError("empty completion: nothing to train on")
    return {"input_ids": prompt + completion,
            "labels": [IGNORE_INDEX] * len(prompt) + list(completion),
            "weight": float(weight)}


@dataclass
class CompletionCollator:
    """Right-pads encoded samples into `input_ids`, `attention_mask`, `labels` (-100 on padding)
    and `weight` tensors.  `pad_to_multiple_of` rounds the padded length up (tensor cores)."""
    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        for f in features:
            if not {"input_ids", "labels"} <= f.keys():
                raise KeyError(f"a sample needs 'input_ids' and 'labels'; got keys {sorted(f)}")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        for i, f in enumerate(features):
            size = len(f["input_ids"])
            if len(f["labels"]) != size:
                raise ValueError(f"sample {i}: {size} input ids but {len(f['labels'])} labels")
            input_ids[i, :size] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :size] = torch.as_tensor(f["labels"], dtype=torch.long)
            attention_mask[i, :size] = 1
        weight = torch.tensor([float(f.get("weight", 1.0)) for f in features], dtype=torch.float32)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weight": weight}


# ----------------------------------------------------------------------------- loss

def _check_reduction(reduction: str) -> None:
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; known: {', '.join(LOSS_REDUCTIONS)}")


def loss_normalizer(labels: torch.Tensor, weights: torch.Tensor, reduction: str) -> torch.Tensor:
    """This batch's share of the normalizer: `sum_i w_i` over samples with at least one
    completion token ("sample") or `sum_i w_i T_i` ("token").  Sum it over the whole step."""
    _check_reduction(reduction)
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1).to(torch.float32)
    weights = weights.to(torch.float32)
    if reduction == "token":
        return (weights * counts).sum()
    return (weights * (counts > 0)).sum()


def completion_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, reduction: str,
                    normalizer) -> torch.Tensor:
    """Shifted next-token cross-entropy on the completion tokens (labels != -100), reduced per
    `reduction` (module docstring) and divided by `normalizer`.

    logits: (B, L, V); labels: (B, L) aligned with the logits (logit t predicts label t + 1);
    weights: (B,).  The cross-entropy is computed in float32 on the completion rows only.
    """
    _check_reduction(reduction)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    ce = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    if mask.any():
        ce[mask] = F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="none")
    per_sample = ce.sum(dim=1)
    if reduction == "sample":
        per_sample = per_sample / mask.sum(dim=1).clamp(min=1)
    numerator = (weights.to(per_sample) * per_sample).sum()
    normalizer = torch.as_tensor(normalizer, dtype=torch.float32, device=numerator.device)
    return numerator / normalizer.clamp(min=1e-12)


# ----------------------------------------------------------------------------- trainer

class _StepTimer(TrainerCallback):
    """Ends the timing window of an optimizer step (started in `get_batch_samples`), so
    tokens/s counts data generation + forward/backward + optimizer, not logging/eval/saving."""

    def __init__(self, trainer: "CompletionTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._end_step_timer()


class CompletionTrainer(transformers.Trainer):
    """`transformers.Trainer` with the completion-only, weighted loss of this module.

    Overrides only public hooks:
      * `get_batch_samples`: after the Trainer collects an optimizer step's micro-batches,
        computes the loss normalizer over all of them, summed across DDP processes, and hands
        it to `compute_loss` as `num_items_in_batch`; also counts real and padded tokens;
      * `compute_loss`: `completion_loss` with that normalizer (times the number of processes,
        because DDP averages gradients), so the Trainer must not divide by the accumulation
        steps again: declared with `loss_is_scaled_for_ga` (transformers >= 5.19) and
        `model_accepts_loss_kwargs` (the older rule);
      * `log`: adds `tok_per_s` (real tokens / s of training steps), `padded_share`, and the
        window's `tokens` and `train_seconds`;
      * `get_train_dataloader`: only for a dataset that declares `per_process_stream = True`
        (an endless stream already seeded per process) under DDP -- it is not sharded, so no
        process generates the samples of the others.

    Evaluation uses the same reduction, normalized within each eval batch.
    Inputs are the `CompletionCollator` batches (`remove_unused_columns=False`).
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_reduction: str = "sample", **kwargs):
        _check_reduction(loss_reduction)
        self.loss_reduction = loss_reduction
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError(f"{self.args.n_gpu} GPUs visible to one process (torch DataParallel) are not "
                             f"supported: run under `accelerate launch --num_processes N` (DDP) or set "
                             f"CUDA_VISIBLE_DEVICES to one GPU")
        # transformers < 5.19 skips its own division by the accumulation steps exactly when the
        # model "accepts loss kwargs" and a normalizer was passed; we always pass one.
        self.model_accepts_loss_kwargs = True
        self._trims_logits: bool | None = None
        self._step_start: float | None = None
        self._window = {"tokens": 0.0, "padded": 0.0, "seconds": 0.0}
        self.throughput_totals = {"tokens": 0.0, "padded": 0.0, "completion_tokens": 0.0,
                                  "seconds": 0.0, "steps": 0}
        self.add_callback(_StepTimer(self))

    # -- data
    def get_train_dataloader(self):
        dataset = self.train_dataset
        if self.args.world_size <= 1 or not getattr(dataset, "per_process_stream", False):
            return super().get_train_dataloader()
        # accelerate would wrap the IterableDataset in an IterableDatasetShard: every process
        # would draw the whole global stream and keep 1/N of it.  Batches are moved to the
        # device by the Trainer (`_prepare_inputs`).
        return torch.utils.data.DataLoader(
            dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available())

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        self._step_start = time.perf_counter()
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        # [normalizer, real tokens, padded tokens, completion tokens] of this step, on the device
        # (no host sync per micro-batch), summed over processes
        stats = torch.zeros(4, dtype=torch.float64, device=device)
        for batch in batch_samples:
            labels, weight = batch["labels"].to(device), batch["weight"].to(device)
            real = batch["attention_mask"].to(device).sum()
            stats += torch.stack([loss_normalizer(labels, weight, self.loss_reduction).double(), real.double(),
                                  (labels.numel() - real).double(),
                                  (labels[:, 1:] != IGNORE_INDEX).sum().double()])
        if self.args.world_size > 1:
            stats = self.accelerator.reduce(stats, reduction="sum")
        stats = stats.cpu()
        self._window["tokens"] += stats[1].item()
        self._window["padded"] += stats[2].item()
        self.throughput_totals["tokens"] += stats[1].item()
        self.throughput_totals["padded"] += stats[2].item()
        self.throughput_totals["completion_tokens"] += stats[3].item()
        return batch_samples, stats[0].to(device=device, dtype=torch.float32)

    def _end_step_timer(self) -> None:
        if self._step_start is None:
            return
        elapsed = time.perf_counter() - self._step_start
        self._step_start = None
        self._window["seconds"] += elapsed
        self.throughput_totals["seconds"] += elapsed
        self.throughput_totals["steps"] += 1

    # -- loss
    def _logits_can_be_trimmed(self, model) -> bool:
        """Whether the model's forward takes `logits_to_keep` (then only the completion logits
        are computed: the output head over a long prompt is a large share of the step)."""
        if self._trims_logits is None:
            base = self.accelerator.unwrap_model(model)
            if hasattr(base, "get_base_model"):
                base = base.get_base_model()
            self._trims_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        return self._trims_logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, weights = inputs["labels"], inputs["weight"]
        forward = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
        start = 0
        has_label = (labels != IGNORE_INDEX).any(dim=0)
        if self._logits_can_be_trimmed(model) and has_label.any():
            # keep the logits from the position before the first completion token to the end
            start = max(int(has_label.nonzero()[0, 0]) - 1, 0)
            forward["logits_to_keep"] = labels.shape[1] - start
        outputs = model(**forward)
        if model.training and num_items_in_batch is not None:
            normalizer, scale = num_items_in_batch, max(self.args.world_size, 1)
        else:  # evaluation, or a call outside the training loop: this batch alone
            normalizer, scale = loss_normalizer(labels, weights, self.loss_reduction), 1
        loss = completion_loss(outputs.logits, labels[:, start:], weights, self.loss_reduction, normalizer) * scale
        return (loss, outputs) if return_outputs else loss

    # -- logging
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._window["seconds"] > 0:
            w = self._window
            logs["tok_per_s"] = round(w["tokens"] / w["seconds"], 1)
            logs["padded_share"] = round(w["padded"] / max(w["tokens"] + w["padded"], 1.0), 4)
            # window totals: summed over log_history they give a run's tokens and training time
            # across resumed sessions (the model card's tokens and CPU-hours)
            logs["tokens"], logs["train_seconds"] = int(w["tokens"]), round(w["seconds"], 2)
            self._window = {"tokens": 0.0, "padded": 0.0, "seconds": 0.0}
        super().log(logs, *args, **kwargs)

    def throughput_summary(self) -> dict:
        """Totals over this run's optimizer steps: tokens/s and the padded-token share."""
        t = self.throughput_totals
        return {"steps": t["steps"], "tok_per_s": t["tokens"] / t["seconds"] if t["seconds"] else float("nan"),
                "padded_share": t["padded"] / (t["tokens"] + t["padded"]) if t["tokens"] else float("nan"),
                "tokens": t["tokens"], "seconds": t["seconds"]}


# ----------------------------------------------------------------------------- arguments

# The Trainer's mixed precision per resolved precision (`models.resolve_dtype`): bf16 / fp16 weights
# train under autocast, and so do fp32 weights under `autocast-bfloat16` (the weights are cast to
# bf16 for each matmul; the LoRA, its gradients and the optimizer states stay fp32 in both bf16 modes).
DTYPE_FLAGS = {"float32": {}, "float16": {"fp16": True}, "bfloat16": {"bf16": True}, AUTOCAST_BF16: {"bf16": True}}


# What accelerate's prepare_model sets on a model: its autocast wrapper of `forward` (mixed
# precision) and the mark that makes any later prepare return the model as it is, unwrapped.
ACCELERATE_PATCHES = ("forward", "_original_forward", "_is_accelerate_prepared")


@contextlib.contextmanager
def prepared_once(model):
    """Around one Trainer's life on a `model` that later Trainers train again (TTFT's worker: one
    per unit): afterwards remove what accelerate set on it, so the next Trainer wraps it afresh,
    once.  Wrappers would pile up over a hundred units; with the mark left, every unit after the
    first trained without autocast (in fp32 under autocast-bfloat16; docs/robustness.md)."""
    before = {k for k in ACCELERATE_PATCHES if k in model.__dict__}
    try:
        yield model
    finally:
        for key in {k for k in ACCELERATE_PATCHES if k in model.__dict__} - before:
            del model.__dict__[key]


def gradient_accumulation_steps(batch_size: int, per_device_batch_size: int = 1, n_processes: int = 1) -> int:
    """`batch_size` is the effective batch: per-device batch × processes × accumulation steps."""
    per_step = per_device_batch_size * n_processes
    if batch_size < 1 or per_device_batch_size < 1 or n_processes < 1 or batch_size % per_step:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of per_device_batch_size "
                         f"{per_device_batch_size} × processes {n_processes} = {per_step}")
    return batch_size // per_step


def training_arguments(output_dir, *, max_steps: int, batch_size: int, per_device_batch_size: int = 1,
                       n_processes: int = 1, learning_rate: float = 1e-4, lr_scheduler_type: str = "linear",
                       warmup_ratio: float = 0.05, logging_steps: int = 10, eval_steps: int | None = None,
                       save_steps: int | None = None, save_total_limit: int = 3,
                       gradient_checkpointing: bool = False, dtype: str = "float32", seed: int = 0,
                       report_to: str = "none", **extra) -> TrainingArguments:
    """TrainingArguments for an endless stream of samples trained for `max_steps` optimizer steps.

    * gradient accumulation = batch_size // per_device_batch_size // n_processes (must divide);
    * `lr_scheduler_type` "constant" means constant after the warmup (HF's "constant" ignores
      the warmup; it is mapped to "constant_with_warmup", which equals it at warmup_ratio 0);
    * `dtype` float16 / bfloat16 turn on the Trainer's mixed precision (load the model in that
      dtype too); autocast-bfloat16 turns it on for fp32 weights; float32 trains in float32;
    * eval every `eval_steps` (None: never); checkpoints every `save_steps` (None: eval_steps;
      both None: none), the last `save_total_limit` kept;
    * fixed: ignore_data_skip (resuming does not replay the stream), no batch dispatching (each
      process draws its own stream), remove_unused_columns False, prediction_loss_only,
      ddp_find_unused_parameters False, non-reentrant gradient checkpointing.
    `extra` goes to TrainingArguments as is (e.g. use_cpu=True, optim="adamw_torch").
    """
    if dtype not in DTYPE_FLAGS:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_FLAGS)}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if lr_scheduler_type == "constant":
        lr_scheduler_type = "constant_with_warmup"
    save_steps = save_steps or eval_steps
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=per_device_batch_size,
        per_device_eval_batch_size=per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(batch_size, per_device_batch_size, n_processes),
        learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=float(warmup_ratio),  # a float < 1 is a ratio of max_steps
        logging_steps=logging_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps or None,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=save_total_limit,
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        seed=seed,
        report_to=report_to,
        ignore_data_skip=True,
        accelerator_config={"dispatch_batches": False},
        remove_unused_columns=False,
        prediction_loss_only=True,
        label_names=["labels"],
        ddp_find_unused_parameters=False,
        **DTYPE_FLAGS[dtype],
    )
    kwargs.update(extra)
    return TrainingArguments(**kwargs)


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def latest_checkpoint(output_dir) -> Path | None:
    """The newest complete `checkpoint-N` (it has trainer_state.json, written last) or None."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return None
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            if (path / "trainer_state.json").is_file():
                found.append((int(match.group(1)), path))
            else:
                logging.getLogger("pipeline.training.finetune").warning(
                    "ignoring incomplete checkpoint %s (no trainer_state.json)", path)
    return max(found)[1] if found else None
