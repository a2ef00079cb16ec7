"""Token counts of tasks as the stages will see them: what the budget planner projects from.

`TaskTokens` holds one task's counts; `task_tokens` makes them with the real prompt builder and a
tokenizer: TTFT's leave-one-out samples (`fitting.leave_one_out_lengths`, the one fitting rule that
TTFT uses too), the inference prompt and the answer of each test input, and sampling's max_tokens
cap under its "task" policy (`sampling/plan.py:max_tokens_for`). A tokenizer is all it needs, no model.
Which tasks a plan projects (`select_targets`: all, random, the first or the smallest, which is the
smoke run's pick) is decided here too.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping

from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.fitting import leave_one_out_lengths
from pipeline.core.model_cfg import DEFAULT_PROMPT_VERSION
from pipeline.core.prompts import build_inference_prompt, build_train_sample, get_prompt_version
from pipeline.core.tasks import select_tasks, smallest_tasks, task_size
from pipeline.sampling.plan import max_tokens_for


@dataclass(frozen=True)
class TaskTokens:
    """Token counts of one task as the stages will see it."""
    task_id: str
    train_tokens: float | None       # mean tokens of one TTFT sample (None: no sample fits max_seq_len)
    prompt_tokens: tuple[int, ...]   # inference prompt, per test input
    answer_tokens: tuple[int, ...]   # answer (test output, else test input as proxy), per test input
    size: int = 0                    # tasks.task_size: how kaggle_run shards sampling
    cap_tokens: tuple[int, ...] = () # sampling's max_tokens under its "task" policy, per test input

    @property
    def n_test(self) -> int:
        return len(self.prompt_tokens)


def task_tokens(tasks: Mapping[str, dict], tokenizer, max_seq_len: int, encoder: str | None = None,
                prompt_version: str = DEFAULT_PROMPT_VERSION) -> dict[str, TaskTokens]:
    """Count every task's TTFT-sample, prompt and answer tokens with the real prompt builder.

    An answer is counted as the completion the model is trained to write (as sampling counts its
    max_tokens); its grid is the test output when known, else the test input (a proxy)."""
    enc = create_grid_encoder(encoder or DEFAULT_ENCODER)
    version = get_prompt_version(prompt_version)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    out = {}
    for tid, task in tasks.items():
        # TTFT's own profile of the task (pipeline/core/fitting.py: the one fitting rule)
        samples, _ = leave_one_out_lengths(task["train"], enc, tokenizer, version, max_seq_len)
        prompts, answers, caps = [], [], []
        for j, pair in enumerate(task["test"]):
            prompts.append(count(build_inference_prompt(task, enc, tokenizer, version, j)))
            grid = pair.get("output", pair["input"])
            answer = build_train_sample({"train": [], "test": [{"input": [[0]], "output": grid}]}, enc, tokenizer, version)
            answers.append(count(answer.completion))
            caps.append(max_tokens_for("task", tokenizer, enc, version.name, task, j))
        out[tid] = TaskTokens(tid, sum(samples) / len(samples) if samples else None, tuple(prompts),
                              tuple(answers), task_size(task), tuple(caps))
    return out


SELECTIONS = ("random", "smallest", "first")
SMOKE_SELECTION = "smallest"  # the smoke run takes the smallest tasks (tasks.smallest_tasks, as KaggleRun.start)


def target_selection(select: str | None, smoke: bool) -> str:
    """The selection a plan uses: the smoke run's with `smoke` (another one is an error: the smoke
    run does not pick its tasks at random), else `select`, by default random."""
    if smoke:
        if select not in (None, SMOKE_SELECTION):
            raise ValueError(f"--smoke projects the smoke run, which takes the {SMOKE_SELECTION} tasks: "
                             f"--select {select} does not apply")
        return SMOKE_SELECTION
    return select or "random"


def select_targets(tasks: Mapping, n: int | None, select: str = "random", seed: int = 0) -> list[str]:
    """N task ids of `tasks`: all (n None), the first N, the N smallest (`tasks.smallest_tasks`, the
    smoke run's pick) or N at random (seeded); N larger than the set draws with replacement."""
    ids = list(tasks)
    if n is None or n == len(ids):
        return ids
    if n > len(ids):
        rng = random.Random(seed)
        return ids + [rng.choice(ids) for _ in range(n - len(ids))]
    if select == "smallest":
        size = lambda v: v.size if isinstance(v, TaskTokens) else task_size(v)  # noqa: E731 (JSON or counted)
        return list(smallest_tasks(dict(tasks), n, size=size))
    if select == "first":
        return list(select_tasks(dict(tasks), first_n=n))
    if select == "random":
        return random.Random(seed).sample(ids, n)
    raise ValueError(f"unknown selection {select!r}: random, smallest or first")
