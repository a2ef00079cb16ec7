"""TTFT's training data: the leave-one-out sample stream of a task and its profile.

* `TaskStream`: endless encoded leave-one-out samples of a task's train pairs (or of a group of
  tasks), re-augmented on every draw (dihedral x colours x order); one pair is the target, the
  others the examples, the last example dropped until the sample fits `max_seq_len`
  (`fitting.fit_examples`, spec 3.6).  Test pairs are never read.  With `copies` (`ttft
  --copies`), N such samples per task are drawn once and every epoch trains each of them once.
* `profile_task`: what the scheduler knows about a task before training it (`TaskProfile`: mean
  sample tokens, or why it cannot be trained: "too_long", "skipped").

Used by the TTFT worker (`ttft_worker`) and the stage (`ttft`); the planner's tests profile
tasks with it.  Imports no stage module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from pipeline.core.augment import random_augmentation
from pipeline.core.fitting import fit_examples, leave_one_out, leave_one_out_lengths, sample_tokens
from pipeline.core.prompts import build_train_sample
from pipeline.core.tasks import task_size

MAX_DRAWS = 50            # random draws per sample before a task is declared unusable


class TaskDataError(ValueError):
    """A task from which no training sample can be drawn."""


def fit_leave_one_out(pairs: Sequence[dict], target: int, encoder, tokenizer, version: str,
                      max_seq_len: int) -> dict | None:
    """The encoded leave-one-out sample for `target`, dropping the last example until it fits
    `max_seq_len` (`fitting.fit_examples`, shared with finetune and the planner); None if even
    one example does not fit."""
    # transformers and peft (the trainer) wait until used: a spawned TTFT worker imports this module
    # before worker_process has set CUDA_VISIBLE_DEVICES
    from pipeline.training.trainer import encode_sample

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

    def __init__(self, tasks: dict[str, dict], encoder, tokenizer, version: str, max_seq_len: int, seed: int,
                 copies: int | None = None):
        self.train = {task_id: task["train"] for task_id, task in tasks.items()}
        self.encoder, self.tokenizer, self.version = encoder, tokenizer, version
        self.max_seq_len, self.seed, self.copies = max_seq_len, seed, copies
        self.redraws = self.max_tokens = self.max_prompt_tokens = 0

    def draw(self, rng: np.random.Generator, task_id: str | None = None) -> tuple[dict, dict]:
        """(encoded sample, {"task_id", "target": original train index, "augmentation"}) of `task_id`,
        else of a task of the group drawn uniformly."""
        ids = list(self.train)
        chosen = task_id
        for _ in range(MAX_DRAWS):
            task_id = chosen if chosen is not None else ids[int(rng.integers(len(ids)))]
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
        if self.copies is None:  # a fresh augmentation for every sample
            while True:
                yield self._counted(self.draw(rng)[0])
        # `copies` per task: drawn (each its own augmentation and target) as the first epoch trains
        # them, in a random order over the group's tasks; every later epoch trains the same copies
        # again, each once, in a fresh order
        ids = list(self.train)
        order = rng.permutation(np.repeat(np.arange(len(ids)), self.copies))
        pool = []
        for i in order:
            pool.append(self.draw(rng, ids[int(i)])[0])
            yield self._counted(pool[-1])
        while True:
            for i in rng.permutation(len(pool)):
                yield self._counted(pool[int(i)])

    def _counted(self, encoded: dict) -> dict:
        self.max_tokens = max(self.max_tokens, len(encoded["input_ids"]))
        prompt_tokens = sum(1 for label in encoded["labels"] if label < 0)
        self.max_prompt_tokens = max(self.max_prompt_tokens, prompt_tokens)
        return encoded
