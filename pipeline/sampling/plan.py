"""What augmented sampling generates: the plan of samples and the record each one becomes.

* `build_plan`: for every task, `predictions_per_task` views spread evenly over the 8 dihedral
  transforms (view i uses transform i % 8), each with its own colour map and train order, drawn
  from a generator seeded by (seed, task id) (`task_rng`); one prompt per view and test input,
  trailing train pairs dropped until it fits `max_model_len` (`fit_prompt`); one seed per request
  (`request_seed`).  `PlanItem` is one sample to generate.
* `max_tokens_for`: the answer budget, derived from the encoder and tokenizer (`answer_tokens`:
  the tokens of an h x w answer; "max" = 30 x 30, "task" = `task_answer_side`), or a number.
* `make_record`: one prediction record, the response parsed in the augmented frame, checked and
  mapped back to the task's frame (unparseable output is a record with `error`, never a crash).
* `model_max_len`: the context length, capped by the model's.

The sampling stage (`sampling`: its run loop, the predictions file, the CLI), the planner's token
counts, rescoring and generate-inputs build on these.  No engine, no clock; imports no stage module.
"""
from __future__ import annotations

import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.core.augment import Augmentation, inference_augmentations
from pipeline.core.settings import DEFAULT_MAX_MODEL_LEN
from pipeline.core.encoders import GridEncoder, GridParseError
from pipeline.core.files import read_json
from pipeline.core.prompts import build_inference_prompt, build_train_sample, get_prompt_version, parse_response
from pipeline.core.tasks import MAX_SIDE, grid_problems, without_test_outputs


def model_max_len(model_dir: str | os.PathLike, requested: int | None = None) -> int:
    """`requested` (default 10240) capped by the model's `max_position_embeddings`."""
    limit = None
    with_config = Path(model_dir) / "config.json"
    if with_config.is_file():
        config = read_json(with_config)
        limit = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    wanted = int(requested or DEFAULT_MAX_MODEL_LEN)
    return min(wanted, int(limit)) if limit else wanted


# ----------------------------------------------------------------------------- max_tokens

def _answer_grids(height: int, width: int) -> list[list[list[int]]]:
    """A few fills of an h×w grid: the most tokens any of them takes bounds the answer
    (digit-per-token tokenizers give the same count for all; merging tokenizers do not)."""
    rng = np.random.default_rng(0)
    return [[[8] * width for _ in range(height)],
            [[(r * width + c) % 10 for c in range(width)] for r in range(height)],
            rng.integers(0, 10, size=(height, width)).tolist()]


_ANSWER_TOKENS: dict = {}


def answer_tokens(tokenizer, encoder: GridEncoder, version: str, height: int = MAX_SIDE, width: int = MAX_SIDE) -> int:
    """Tokens the model generates for an h×w answer (end-of-turn token included): the exact
    completion it was trained to produce for this encoder, prompt version and tokenizer (the
    most over a few fills of the grid)."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), id(tokenizer), encoder.spec, version, height, width)
    if key not in _ANSWER_TOKENS:
        _ANSWER_TOKENS[key] = max(len(tokenizer(answer_completion(grid, encoder, tokenizer, version),
                                                add_special_tokens=False)["input_ids"])
                                  for grid in _answer_grids(height, width))
    return _ANSWER_TOKENS[key]


def answer_completion(grid, encoder: GridEncoder, tokenizer, version: str) -> str:
    """The completion the model was trained to write for the answer `grid` (what follows the
    inference prompt: the grid, its closing fence, the end of turn); it does not depend on the
    rest of the task."""
    # the grid on both sides: the target is the output or, for input-generating versions, the input
    task = {"train": [{"input": [[0]], "output": [[0]]}], "test": [{"input": grid, "output": grid}]}
    return build_train_sample(task, encoder, tokenizer, version).completion


def task_answer_side(task: Mapping, test_index: int) -> int:
    """The largest answer side this test input plausibly needs: 1.25 × its longest side × the
    largest output/input side ratio of the train pairs (at least 1), plus 2, and never below the
    largest train output side plus 2; at most 30.  Measured on the 2,588 test outputs of ARC-AGI-1
    training + evaluation, ARC-AGI-2 training, MINI-ARC and ConceptARC: it covers all of them,
    at about 45 % of the cells of a 30×30 budget on average (without the 1.25 and +2 margins 20 of them
    were cut).  The bound is a square (a dihedral view may swap height and width)."""
    ratio = max(max(len(p["output"]) / len(p["input"]), len(p["output"][0]) / len(p["input"][0]), 1.0)
                for p in task["train"])
    widest_output = max(max(len(p["output"]), len(p["output"][0])) for p in task["train"])
    grid = task["test"][test_index]["input"]
    side = max(len(grid), len(grid[0]))
    return min(MAX_SIDE, max(math.ceil(1.25 * side * ratio) + 2, widest_output + 2))


def max_tokens_for(policy: str | int, tokenizer, encoder: GridEncoder, version: str, task: Mapping,
                   test_index: int) -> int:
    """`policy`: "max" (a 30×30 answer), "task" (`task_answer_side`), or a fixed number."""
    if isinstance(policy, int) or str(policy).isdigit():
        return int(policy)
    if policy == "max":
        return answer_tokens(tokenizer, encoder, version)
    if policy == "task":
        side = task_answer_side(task, test_index)
        return answer_tokens(tokenizer, encoder, version, side, side)
    raise ValueError(f"max_tokens must be 'max', 'task' or a number, not {policy!r}")


# ----------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class PlanItem:
    task_id: str
    test_index: int
    sample_index: int
    augmentation: Augmentation
    prompt_ids: tuple[int, ...]
    max_tokens: int
    adapter: str | None = None
    n_train_used: int | None = None   # set when train pairs were dropped to fit max_model_len
    error: str | None = None          # set when no prompt fits: written as an error record
    seed: int = 0

    @property
    def key(self) -> tuple[str, int, int]:
        return self.task_id, self.test_index, self.sample_index


def task_rng(seed: int, task_id: str) -> np.random.Generator:
    """A generator for one task, independent of which other tasks are sampled."""
    return np.random.default_rng([int(seed), zlib.crc32(task_id.encode("utf-8"))])


def request_seed(seed: int, task_id: str, test_index: int, sample_index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{task_id}/{test_index}/{sample_index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def fit_prompt(task: dict, encoder, tokenizer, version, test_index: int, max_tokens: int, max_model_len: int,
               min_answer_tokens: int):
    """(prompt ids, n train pairs used or None, answer budget): trailing train pairs are dropped
    until the prompt leaves at least `min_answer_tokens` (or all `max_tokens`, if fewer) of room
    inside `max_model_len`; the budget is `max_tokens` capped by the room left.  Prompt ids are
    None if not even one pair fits."""
    max_prompt = max_model_len - min(max_tokens, min_answer_tokens)
    n_train = len(task["train"])
    for keep in range(n_train, 0, -1):
        view = task if keep == n_train else {"train": task["train"][:keep], "test": task["test"]}
        text = build_inference_prompt(view, encoder, tokenizer, version, test_index)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_prompt:
            return tuple(ids), (None if keep == n_train else keep), min(max_tokens, max_model_len - len(ids))
    return None, None, max_tokens


def build_plan(tasks: Mapping[str, dict], tokenizer, encoder: GridEncoder, prompt_version: str,
               predictions_per_task: int, seed: int = 0, adapters: Mapping[str, str | None] | None = None,
               max_tokens: str | int = "max", max_model_len: int = DEFAULT_MAX_MODEL_LEN,
               min_answer_tokens: int = 16) -> list[PlanItem]:
    """Every sample to generate, task by task, view by view, test input by test input.

    A prompt keeps at least `min_answer_tokens` (or its full `max_tokens` if smaller) of room
    for the answer inside `max_model_len`."""
    version = get_prompt_version(prompt_version).name
    plan = []
    for task_id, task in tasks.items():
        task = without_test_outputs({task_id: task})[task_id]
        augmentations = inference_augmentations(predictions_per_task, task_rng(seed, task_id), len(task["train"]))
        budgets = [max_tokens_for(max_tokens, tokenizer, encoder, version, task, i) for i in range(len(task["test"]))]
        for sample_index, aug in enumerate(augmentations):
            view = aug.apply_task(task)
            for test_index in range(len(task["test"])):
                ids, used, budget = fit_prompt(view, encoder, tokenizer, version, test_index, budgets[test_index],
                                               max_model_len, min_answer_tokens)
                error = None
                if ids is None:
                    ids, error = (), f"prompt longer than max_model_len {max_model_len} even with one train pair"
                plan.append(PlanItem(task_id, test_index, sample_index, aug, ids, budget,
                                     (adapters or {}).get(task_id), used, error,
                                     request_seed(seed, task_id, test_index, sample_index)))
    return plan


# ----------------------------------------------------------------------------- records

def make_record(item: PlanItem, text: str, cumulative_logprob: float | None, n_tokens: int,
                encoder: GridEncoder, finish_reason: str | None = None) -> dict:
    """One prediction record: the response parsed in the augmented frame, checked, then mapped
    back to the task's frame.  Anything unparseable is a record with `grid` None and `error` set."""
    grid, error = None, item.error
    if error is None:
        try:
            parsed = parse_response(text, encoder)
            problems = grid_problems(parsed)
            if problems:
                error = "invalid grid: " + "; ".join(problems[:3])
            else:
                grid = item.augmentation.invert_grid(parsed)
        except GridParseError as e:
            error = f"unparseable: {e}"
    record = {"task_id": item.task_id, "test_index": item.test_index, "sample_index": item.sample_index,
              "augmentation": item.augmentation.to_dict(), "text": text, "grid": grid, "error": error,
              "cumulative_logprob": cumulative_logprob, "n_tokens": int(n_tokens),
              "finish_reason": finish_reason, "prompt_tokens": len(item.prompt_ids)}
    if item.n_train_used is not None:
        record["n_train_used"] = item.n_train_used
    return record
