"""Fine-tuning's training data (`python -m pipeline finetune`, `pipeline/training/finetune.py`).

Training sets are `PATH PROMPT_VERSION [WEIGHT]` (`DatasetSpec`).  The training data is an
endless, seeded stream (`TrainingStream`) over them: every draw picks a set with probability
proportional to its number of tasks (the original's implicit weighting: every task equally
likely), walks that set in a reshuffled order, re-augments the task (dihedral × colours × train
order, then the fixed train/test swap; optionally a problem augmentation) and fits the prompt
into `max_seq_len` (spec §3.6).  WEIGHT multiplies the loss weight of the set's samples
(`--weight_by loss`, default) or, with `--weight_by sampling`, the draw probability instead.
Each process (DDP) and each data-loader worker draws its own stream (seed, process index, worker
index, resume step).  A set whose recent candidates mostly do not fit stops the run
(`NotEnoughTrainingData`) instead of training on what little fits.

Validation: every test pair of the validation tasks, not augmented; prompts longer than
`max_seq_len` are dropped and counted.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from pipeline.training.problem_augment import random_augment_task, random_problem_augmentation
from pipeline.core.fitting import fit_examples
from pipeline.core.prompts import PROMPT_VERSIONS, TEXT_PROMPT_VERSIONS, build_train_sample, get_prompt_version
from pipeline.core.settings import ConfigError
from pipeline.core.tasks import TaskError, has_test_outputs, load_tasks
from pipeline.training.trainer import encode_sample

log = logging.getLogger("pipeline.training.finetune")  # the stage's logger: its messages read as the stage's

WEIGHT_MODES = ("loss", "sampling")
FIT_WINDOW = 1000          # candidates remembered per training set
FIT_MIN_CANDIDATES = 100   # before the "does not fit" check may fire
FIT_MAX_UNFIT_SHARE = 0.9
LENGTH_PERCENTILES = (50, 75, 90, 95, 97, 100)


class NotEnoughTrainingData(RuntimeError):
    """Most candidate prompts of a training set do not fit in max_seq_len."""


@dataclass(frozen=True)
class DatasetSpec:
    path: str
    prompt_version: str
    weight: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_dataset_spec(values: Sequence[str], flag: str = "--train_datasets", weighted: bool = True) -> DatasetSpec:
    """`PATH PROMPT_VERSION [WEIGHT]` -> DatasetSpec; ConfigError on anything wrong."""
    values = list(values)
    arity = "PATH PROMPT_VERSION [WEIGHT]" if weighted else "PATH PROMPT_VERSION"
    if not 2 <= len(values) <= (3 if weighted else 2):
        raise ConfigError(f"{flag} takes {arity}, got {len(values)} value(s): {' '.join(values)}")
    path, version = values[0], values[1]
    if version not in PROMPT_VERSIONS and version not in TEXT_PROMPT_VERSIONS:
        raise ConfigError(f"{flag} {path}: unknown prompt version {version!r}; valid versions: "
                          f"{', '.join([*PROMPT_VERSIONS, *TEXT_PROMPT_VERSIONS])}")
    if not Path(path).exists():
        raise ConfigError(f"{flag}: {path} does not exist")
    weight = 1.0
    if len(values) == 3:
        try:
            weight = float(values[2])
        except ValueError:
            raise ConfigError(f"{flag} {path} {version}: WEIGHT {values[2]!r} is not a number") from None
        if not (weight > 0 and math.isfinite(weight)):
            raise ConfigError(f"{flag} {path} {version}: WEIGHT must be a positive number, got {values[2]}")
    return DatasetSpec(path, version, weight)


@dataclass
class TrainingSet:
    spec: DatasetSpec
    tasks: list[dict]  # the task dicts, in file order

    @property
    def name(self) -> str:
        return f"{self.spec.path} {self.spec.prompt_version}"


def load_training_set(spec: DatasetSpec, need_all_outputs: bool) -> TrainingSet:
    """Load and validate a set; its tasks must carry every grid the training draws need."""
    tasks = load_tasks(spec.path)
    if not tasks:
        raise TaskError(f"{spec.path}: no tasks")
    target = get_prompt_version(spec.prompt_version).target
    if need_all_outputs or target == "output":
        missing = [tid for tid, t in tasks.items() if not has_test_outputs(t)]
        if missing:
            why = "the train/test swap" if need_all_outputs else f"prompt version {spec.prompt_version}"
            raise TaskError(f"{spec.path}: {len(missing)} task(s) lack test outputs, which {why} needs "
                            f"(e.g. {', '.join(missing[:5])}); give the solutions-merged file")
    return TrainingSet(spec, list(tasks.values()))


class FitStats:
    """Whether recent candidates fitted, and their untrimmed lengths (last FIT_WINDOW)."""

    def __init__(self, name: str, max_seq_len: int):
        self.name, self.max_seq_len = name, max_seq_len
        self.fits: deque[bool] = deque(maxlen=FIT_WINDOW)
        self.lengths: deque[int] = deque(maxlen=FIT_WINDOW)

    def add(self, fitted: bool, length: int) -> None:
        self.fits.append(fitted)
        self.lengths.append(length)
        n = len(self.fits)
        unfit = n - sum(self.fits)
        if n >= FIT_MIN_CANDIDATES and unfit > FIT_MAX_UNFIT_SHARE * n:
            raise NotEnoughTrainingData(
                f"{unfit}/{n} recent candidate prompts of training set {self.name} do not fit in "
                f"max_seq_len={self.max_seq_len} tokens (untrimmed lengths {self.percentiles()}): raise "
                f"--max_seq_len, pass --remove_train_samples_to_fit_max_seq_len, or drop this set")

    def percentiles(self) -> str:
        values = np.percentile(np.asarray(self.lengths), LENGTH_PERCENTILES).astype(int)
        return " ".join(f"p{p}={v}" if p < 100 else f"max={v}" for p, v in zip(LENGTH_PERCENTILES, values))

    def unfit_share(self) -> float:
        return 1 - sum(self.fits) / len(self.fits) if self.fits else 0.0


def fit_sample(task: dict, rng: np.random.Generator, encoder, tokenizer, version: str, max_seq_len: int,
               remove_train_samples: bool, weight: float = 1.0) -> tuple[dict | None, int, str]:
    """Encode one random test pair of `task` within `max_seq_len` tokens (spec §3.6, the rule of
    `fitting.fit_examples`: with `remove_train_samples` the last train pair is dropped until it
    fits, at least one stays; otherwise an over-long sample is given up).

    Returns (encoded sample or None, untrimmed length, text of the sample)."""
    index = int(rng.integers(len(task["test"])))
    sample, _, first_length = fit_examples(task, encoder, tokenizer, version, max_seq_len, index, remove_train_samples)
    if sample is None:
        return None, first_length, ""
    return encode_sample(tokenizer, sample, weight), first_length, sample.prompt + sample.completion


class TrainingStream(torch.utils.data.IterableDataset):
    """Endless seeded stream of encoded training samples (see the module docstring).

    `per_process_stream = True` tells CompletionTrainer not to shard it across processes: the
    stream is already seeded per process (and per data-loader worker).  With `batch_size` > 1
    and `bucket_batches` > 1, `batch_size × bucket_batches` samples are buffered, sorted by
    length and emitted as batches (in random order) of similar length.
    """
    per_process_stream = True

    def __init__(self, sets: list[TrainingSet], encoder, tokenizer, *, max_seq_len: int,
                 remove_train_samples: bool = False, augment: bool = True,
                 compose_new_task_probability: float = 0.0, compose_new_task_weights=None,
                 weight_by: str = "loss", seed: int = 0, process_index: int = 0, resume_step: int = 0,
                 batch_size: int = 1, bucket_batches: int = 1, verbose: bool = False):
        if weight_by not in WEIGHT_MODES:
            raise ValueError(f"weight_by must be one of {WEIGHT_MODES}, got {weight_by!r}")
        self.sets, self.encoder, self.tokenizer = sets, encoder, tokenizer
        self.max_seq_len, self.remove_train_samples, self.augment = max_seq_len, remove_train_samples, augment
        self.compose_p, self.compose_weights = compose_new_task_probability, compose_new_task_weights
        self.weight_by, self.seed, self.process_index, self.resume_step = weight_by, seed, process_index, resume_step
        self.batch_size, self.bucket_batches, self.verbose = batch_size, bucket_batches, verbose
        sizes = np.array([len(s.tasks) for s in sets], dtype=float)
        if weight_by == "sampling":
            sizes *= [s.spec.weight for s in sets]
        self.probabilities = sizes / sizes.sum()
        self.stats = [FitStats(s.name, max_seq_len) for s in sets]

    def _rng(self) -> tuple[np.random.Generator, int]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        entropy = [self.seed, self.process_index, worker, self.resume_step]
        return np.random.default_rng(np.random.SeedSequence(entropy)), worker

    def samples(self, rng: np.random.Generator, announce: bool = False) -> Iterator[dict]:
        """Endless encoded samples (no bucketing)."""
        orders = [rng.permutation(len(s.tasks)) for s in self.sets]
        positions = [0] * len(self.sets)
        candidates, announced = 0, False
        while True:
            k = int(rng.choice(len(self.sets), p=self.probabilities))
            training_set = self.sets[k]
            if positions[k] == len(orders[k]):
                orders[k], positions[k] = rng.permutation(len(training_set.tasks)), 0
            task = training_set.tasks[orders[k][positions[k]]]
            positions[k] += 1
            if self.augment:
                task, _ = random_augment_task(task, rng, swap=True)
            if self.compose_p and rng.random() < self.compose_p:
                task, _ = random_problem_augmentation(task, rng, self.compose_weights)
            weight = training_set.spec.weight if self.weight_by == "loss" else 1.0
            encoded, length, text = fit_sample(task, rng, self.encoder, self.tokenizer,
                                               training_set.spec.prompt_version, self.max_seq_len,
                                               self.remove_train_samples, weight)
            self.stats[k].add(encoded is not None, length)
            candidates += 1
            if announce and candidates % FIT_WINDOW == 0:
                for stats in self.stats:
                    if stats.fits:
                        log.info("training set %s: %.1f%% of recent candidates too long; untrimmed lengths %s",
                                 stats.name, 100 * stats.unfit_share(), stats.percentiles())
            if encoded is None:
                continue
            if announce and self.verbose and not announced:
                announced = True
                log.info("first training sample (%d tokens, set %s):\n%s", len(encoded["input_ids"]),
                         training_set.name, text)
            yield encoded

    def __iter__(self) -> Iterator[dict]:
        rng, worker = self._rng()
        stream = self.samples(rng, announce=self.process_index == 0 and worker == 0)
        if self.batch_size <= 1 or self.bucket_batches <= 1:
            yield from stream
            return
        while True:
            buffer = [next(stream) for _ in range(self.batch_size * self.bucket_batches)]
            buffer.sort(key=lambda s: len(s["input_ids"]))
            batches = [buffer[i:i + self.batch_size] for i in range(0, len(buffer), self.batch_size)]
            for b in rng.permutation(len(batches)):
                yield from batches[b]


def validation_samples(tasks: dict, encoder, tokenizer, version: str, max_seq_len: int) -> tuple[list[dict], int]:
    """Every test pair of every task, not augmented; (samples fitting max_seq_len sorted by
    length, number dropped as too long)."""
    target = get_prompt_version(version).target
    samples, dropped = [], 0
    for task_id, task in tasks.items():
        for index, pair in enumerate(task["test"]):
            if target not in pair:
                raise TaskError(f"validation task {task_id!r} test pair {index} has no {target!r} grid")
            encoded = encode_sample(tokenizer, build_train_sample(task, encoder, tokenizer, version, index))
            if len(encoded["input_ids"]) <= max_seq_len:
                samples.append(encoded)
            else:
                dropped += 1
    samples.sort(key=lambda s: len(s["input_ids"]))
    return samples, dropped
