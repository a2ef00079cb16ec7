"""New grids that follow a task's input (or output) distribution, validated, as an expanded dataset.

    python -m pipeline generate-inputs --model MODEL [--adapter_path A] --dataset TASKS.json \\
        --n_per_task 8 [--temperature 0.9] --output NEW.json \\
        [--label_with OUTPUT_MODEL [--label_adapter A] --label_predictions 8 --min_vote_margin 2]

(spec §10, the seed's Iteration 22 "learn the input distribution" and its next step: an expanded
evaluation set "similar to RE-ARC, but using my model".)  See docs/generate-inputs.md.

1. **Generate.**  For every task the model sees *all* known inputs (train and test; the original
   found that leaving the test input out makes the model copy it) in the `input-from-inputs-v0`
   prompt, i.e. the task `{"train": [every known input], "test": [a dummy]}` whose template only
   renders the train inputs.  `--mode outputs` does the same with `output-from-outputs-v0` and
   the known outputs (train outputs, plus test outputs when the dataset has them).  Each of the
   `n_per_task` samples is drawn under its own augmentation (`augment.inference_augmentations`:
   spread over the 8 dihedral transforms, each with its own colour map and context order) with
   its own seed, at `--temperature` (default 0.9, the seed's notebook 015), and mapped back with
   `Augmentation.invert_grid`.
2. **Validate** every sample with named rules (`RULES`, each a pure function returning None or a
   reason):  parseable, rectangular, size_1_30 (checked in this order on the raw text; the first
   failure stops, since without a grid nothing else can be judged), shape_header (on the raw,
   augmented text: `shape: HxW`, row numbers and closing fence agree with the body), then, on
   the grid mapped back to the task's frame, palette, size_range, not_known, not_duplicate: all
   of these are evaluated and every failure is reported.  Rejects are kept with their reasons.
3. **Write** an expanded dataset in the combined task format (test pairs carry outputs), the
   rejects, a Markdown summary and one picture per task (layouts: `build_expanded_dataset`).
   Optionally **label** the accepted new inputs with an output model (the sampling stage +
   voting v2) and keep only labels with a clear vote margin.

Outputs: `NEW.json` (the dataset), `NEW.rejects.json`, `NEW.summary.md`, `NEW.labels.jsonl`
(label predictions, when labelling) and `<pictures_dir>/<task_id>.png` (default
`NEW.pictures/`).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .augment import Augmentation, inference_augmentations
from .encoders import DEFAULT_ENCODER, GridEncoder, GridParseError, create_grid_encoder
from .formats import ARC24, DEFAULT_FORMAT
from .files import read_jsonl, write_json_atomic, write_text_atomic
from .prompts import answer_stop, grid_prefix, parse_response
from .tasks import MAX_SIDE, has_test_outputs, load_tasks, select_tasks, tasks_problems
from .timing import TimingLog

# mode -> (prompt version, the grid of a pair it generates)
MODES = {"inputs": ("input-from-inputs-v0", "input"), "outputs": ("output-from-outputs-v0", "output")}
DEFAULT_TEMPERATURE = 0.9
# what varies between the samples of a task: "full" = dihedral transform × colour map × context
# order (notebook 021, the sampling stage's views), "dihedral" = transform × order with the task's
# own colours, "none" = the prompt as it is (notebook 015; samples differ by their seed only)
AUGMENTATIONS = ("full", "dihedral", "none")
DEFAULT_LABEL_PROMPT_VERSION = "output-from-examples-v1"
DUMMY_GRID = [[0]]

RULES = ("parseable", "rectangular", "size_1_30", "shape_header", "palette", "size_range", "not_known",
         "not_duplicate")
RULE_HELP = {
    "parseable": "the response holds a grid block whose rows are digits 0-9 (ints 0-9 for a grid given directly)",
    "rectangular": "every row has as many cells as the first",
    "size_1_30": "height and width between 1 and 30",
    "shape_header": "the raw (augmented) text's `shape: HxW` header, row numbers and closing fence agree "
                    "with the body (encoder.to_grid strict=True)",
    "palette": "colours are a subset of the colours of the task's known grids (inputs; outputs in --mode outputs)",
    "size_range": "height and width each within the range seen in the task's known grids",
    "not_known": "not equal to any known grid (every train and test input; outputs in --mode outputs)",
    "not_duplicate": "not equal to a generation of the same task accepted before it",
}
LABEL_RULE = "label_vote"  # an accepted input dropped because its label vote was not clear
NOT_GENERATED = "not_generated"  # no prompt fitted max_model_len, even with one known grid


# ----------------------------------------------------------------------------- the task's pool

@dataclass(frozen=True)
class Pool:
    """The known grids a generation must resemble but not copy, in the task's frame."""
    grids: tuple            # known grids, train pairs first, then test pairs
    n_train: int            # how many of `grids` come from the train pairs
    palette: frozenset
    heights: tuple[int, int]
    widths: tuple[int, int]


def pool_of(task: Mapping, mode: str = "inputs") -> Pool:
    """Known inputs (train + test) for `inputs`; known outputs (train, and test when present) for
    `outputs`."""
    key = MODES[mode][1]
    train = [p[key] for p in task["train"] if key in p]
    test = [p[key] for p in task["test"] if key in p]
    grids = train + test
    if not grids:
        raise ValueError(f"the task has no {key} grids to learn from")
    return Pool(tuple(grids), len(train), frozenset(c for g in grids for row in g for c in row),
                (min(len(g) for g in grids), max(len(g) for g in grids)),
                (min(len(g[0]) for g in grids), max(len(g[0]) for g in grids)))


def generation_view(task: Mapping, mode: str = "inputs") -> dict:
    """The task shown to the model: every known grid as a train pair (only the generated key),
    and a dummy test pair the template does not render."""
    key = MODES[mode][1]
    return {"train": [{key: g} for g in pool_of(task, mode).grids], "test": [{"input": DUMMY_GRID}]}


# ----------------------------------------------------------------------------- the rules (pure)

def _ragged(error: Exception) -> bool:
    return "cells but row 1 has" in str(error)


def _decode(text: str, encoder: GridEncoder, strict: bool = False):
    """Decode a response (the continuation after the prompt's grid prefix) or a full encoded grid."""
    prefix = grid_prefix(encoder)
    if prefix and text.lstrip().startswith(prefix):
        return encoder.to_grid(text.lstrip(), strict=strict)
    return parse_response(text, encoder, strict=strict)


def _is_grid_of_digits(grid) -> bool:
    return isinstance(grid, list) and all(isinstance(row, list) for row in grid) and all(
        type(c) is int and 0 <= c <= 9 for row in grid for c in row)


def check_parseable(text_or_grid, encoder: GridEncoder | None = None) -> str | None:
    """A text: the encoder finds a grid block of digit rows (a ragged one still counts as parsed:
    `rectangular` reports it).  A grid: a list of lists of ints 0-9."""
    if not isinstance(text_or_grid, str):
        return None if _is_grid_of_digits(text_or_grid) else "not a list of rows of ints 0-9"
    try:
        _decode(text_or_grid, encoder)
    except GridParseError as e:
        return None if _ragged(e) else str(e)
    return None


def check_rectangular(text_or_grid, encoder: GridEncoder | None = None) -> str | None:
    if isinstance(text_or_grid, str):
        try:
            _decode(text_or_grid, encoder)
        except GridParseError as e:
            return str(e) if _ragged(e) else None
        return None
    widths = [len(row) for row in text_or_grid]
    bad = next((i for i, w in enumerate(widths) if w != widths[0]), None) if widths else None
    return None if bad is None else f"row {bad + 1} has {widths[bad]} cells but row 1 has {widths[0]}"


def check_size_1_30(grid) -> str | None:
    h, w = len(grid), (len(grid[0]) if grid else 0)
    if 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE:
        return None
    return f"{h}x{w} is outside 1x1-{MAX_SIDE}x{MAX_SIDE}"


def check_shape_header(text: str, encoder: GridEncoder) -> str | None:
    """The strict parse (header vs body, row numbers, closed fence) of the raw augmented text."""
    try:
        _decode(text, encoder, strict=True)
    except GridParseError as e:
        return str(e)
    return None


def check_palette(grid, palette) -> str | None:
    extra = sorted({c for row in grid for c in row} - set(palette))
    return None if not extra else f"colour(s) {extra} not in the task's palette {sorted(palette)}"


def check_size_range(grid, heights: tuple[int, int], widths: tuple[int, int]) -> str | None:
    h, w = len(grid), len(grid[0])
    if heights[0] <= h <= heights[1] and widths[0] <= w <= widths[1]:
        return None
    return f"{h}x{w} is outside the task's range: heights {heights[0]}-{heights[1]}, widths {widths[0]}-{widths[1]}"


def check_not_known(grid, known: Sequence) -> str | None:
    index = next((i for i, g in enumerate(known) if g == grid), None)
    return None if index is None else f"equals known grid {index + 1}"


def check_not_duplicate(grid, accepted: Sequence) -> str | None:
    index = next((i for i, g in enumerate(accepted) if g == grid), None)
    return None if index is None else f"equals accepted generation {index + 1}"


@dataclass
class Verdict:
    grid: list | None                       # the grid in the task's frame (None: none could be decoded)
    failures: list = field(default_factory=list)   # [(rule, reason), ...] in RULES order

    @property
    def accepted(self) -> bool:
        return self.grid is not None and not self.failures

    @property
    def rules(self) -> list[str]:
        return [rule for rule, _ in self.failures]


def check_generation(text_or_grid, task_or_pool, accepted: Sequence = (), encoder: GridEncoder | None = None,
                     augmentation: Augmentation | None = None, mode: str = "inputs") -> Verdict:
    """Every rule on one generation.

    `text_or_grid`: the model's response (the continuation after the prompt's "```grid" prefix,
    or a full encoded grid) in the augmented frame, or a grid.  The structural rules
    (parseable, rectangular, size_1_30) run in that order and the first failure stops; then
    shape_header on the raw text; then the grid is mapped back with `augmentation.invert_grid`
    and palette, size_range, not_known and not_duplicate are all evaluated against the task's
    pool (`accepted`: this task's generations accepted so far, task frame)."""
    pool = task_or_pool if isinstance(task_or_pool, Pool) else pool_of(task_or_pool, mode)
    is_text = isinstance(text_or_grid, str)
    if is_text and encoder is None:
        raise ValueError("a text generation needs its grid encoder")
    failures = []
    if is_text:  # one decode serves both rules: a ragged block parses but is not rectangular
        try:
            raw = _decode(text_or_grid, encoder)
        except GridParseError as e:
            return Verdict(None, [("rectangular" if _ragged(e) else "parseable", str(e))])
    else:
        for rule, check in (("parseable", check_parseable), ("rectangular", check_rectangular)):
            reason = check(text_or_grid)
            if reason:
                return Verdict(None, [(rule, reason)])
        raw = [list(row) for row in text_or_grid]
    grid = raw if augmentation is None or not (raw and raw[0]) else augmentation.invert_grid(raw)
    reason = check_size_1_30(raw)
    if reason:
        return Verdict(grid if raw and raw[0] else None, [("size_1_30", reason)])
    if is_text:
        reason = check_shape_header(text_or_grid, encoder)
        if reason:
            failures.append(("shape_header", reason))
    for rule, reason in (("palette", check_palette(grid, pool.palette)),
                         ("size_range", check_size_range(grid, pool.heights, pool.widths)),
                         ("not_known", check_not_known(grid, pool.grids)),
                         ("not_duplicate", check_not_duplicate(grid, accepted))):
        if reason:
            failures.append((rule, reason))
    return Verdict(grid, failures)


def validate_generation(text_or_grid, task, accepted_so_far: Sequence = (), encoder: GridEncoder | None = None,
                        augmentation: Augmentation | None = None, mode: str = "inputs"):
    """(grid in the task's frame if every rule passes else None, [(rule, reason), ...])."""
    verdict = check_generation(text_or_grid, task, accepted_so_far, encoder, augmentation, mode)
    return (verdict.grid if verdict.accepted else None), verdict.failures


# ----------------------------------------------------------------------------- plan and generation

@dataclass(frozen=True)
class GenerationItem:
    task_id: str
    sample_index: int
    augmentation: Augmentation
    prompt_ids: tuple[int, ...]
    max_tokens: int
    adapter: str | None = None
    seed: int = 0
    n_context: int = 0            # known grids shown (fewer than the pool when the prompt had to be cut)
    error: str | None = None      # no prompt fits max_model_len


def generation_budget(policy: str | int, tokenizer, encoder: GridEncoder, version: str, pool: Pool) -> int:
    """max_tokens of one generation: "pool" (default) = the answer tokens of a square grid of the
    pool's longest side + 2 (a bigger one fails size_range anyway; a dihedral view may swap the
    sides), "max" = of a 30×30 grid, or a number."""
    from .sampling import answer_tokens

    if isinstance(policy, int) or str(policy).isdigit():
        return int(policy)
    if policy == "max":
        return answer_tokens(tokenizer, encoder, version)
    if policy == "pool":
        side = min(MAX_SIDE, max(pool.heights[1], pool.widths[1]) + 2)
        return answer_tokens(tokenizer, encoder, version, side, side)
    raise ValueError(f"max_tokens must be 'pool', 'max' or a number, not {policy!r}")


def sample_augmentations(n: int, rng, n_context: int, augmentation: str = "full") -> list[Augmentation]:
    """The views of one task's samples (see AUGMENTATIONS); "full" is `inference_augmentations`."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; known: {', '.join(AUGMENTATIONS)}")
    if augmentation == "none":
        return [Augmentation() for _ in range(n)]
    views = inference_augmentations(n, rng, n_context)
    if augmentation == "dihedral":
        views = [Augmentation(hflip=a.hflip, n_rot90=a.n_rot90, train_order=a.train_order) for a in views]
    return views


def build_generation_plan(tasks: Mapping[str, dict], tokenizer, encoder: GridEncoder, mode: str, n_per_task: int,
                          seed: int = 0, max_tokens: str | int = "pool", max_model_len: int = 8192,
                          adapter: str | None = None, min_answer_tokens: int = 16,
                          augmentation: str = "full") -> list[GenerationItem]:
    """n_per_task augmented prompts per task (augmentations drawn from (seed, task id), so a task
    gets the same plan whatever other tasks are selected).  A prompt longer than max_model_len
    drops trailing context grids (the order is shuffled per sample) until it fits."""
    from .sampling import fit_prompt, request_seed, task_rng

    version = MODES[mode][0]
    plan = []
    for task_id, task in tasks.items():
        view = generation_view(task, mode)
        pool = pool_of(task, mode)
        budget = generation_budget(max_tokens, tokenizer, encoder, version, pool)
        views = sample_augmentations(n_per_task, task_rng(seed, task_id), len(view["train"]), augmentation)
        for i, aug in enumerate(views):
            ids, used, item_budget = fit_prompt(aug.apply_task(view), encoder, tokenizer, version, 0, budget,
                                                max_model_len, min_answer_tokens)
            n_context = len(view["train"]) if used is None else used
            error = None
            if ids is None:
                ids, n_context = (), 0
                error = f"prompt longer than max_model_len {max_model_len} even with one known grid"
            plan.append(GenerationItem(task_id, i, aug, ids, item_budget, adapter, request_seed(seed, task_id, 0, i),
                                       n_context, error))
    return plan


@dataclass
class Generation:
    """One sample and its verdict."""
    task_id: str
    sample_index: int
    augmentation: dict
    text: str
    finish_reason: str | None
    n_tokens: int
    cumulative_logprob: float | None
    verdict: Verdict
    n_context: int = 0
    label: dict | None = None     # labelling: {"grid", "votes", "runner_up", "n"} or None

    @property
    def accepted(self) -> bool:
        """In the dataset: every rule passed (and, when labelling, the label vote was clear)."""
        return self.verdict.accepted

    @property
    def validated(self) -> bool:
        """Every validation rule passed (the label vote aside)."""
        return self.verdict.grid is not None and all(rule == LABEL_RULE for rule in self.verdict.rules)

    def to_reject_record(self) -> dict:
        reasons = [f"{rule}: {reason}" for rule, reason in self.verdict.failures]
        if self.finish_reason == "length":
            reasons.append("(the generation hit max_tokens)")
        return {"sample_index": self.sample_index, "rules": self.verdict.rules, "reasons": reasons,
                "grid": self.verdict.grid, "text": self.text, "finish_reason": self.finish_reason,
                "n_tokens": self.n_tokens, "n_context": self.n_context, "augmentation": self.augmentation}


def run_generation(plan: Sequence[GenerationItem], engine, temperature: float, batch_size: int = 8,
                   progress: bool = True, stop: tuple[str, ...] = ()) -> list:
    """Completions for the plan (None for items without a prompt), in plan order; generation
    stops at the end-of-turn token or after one of the `stop` strings."""
    from .engines import Request

    runnable = [i for i, item in enumerate(plan) if item.error is None]
    results: list = [None] * len(plan)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(runnable), desc=f"generate ({engine.name})", unit="sample", file=sys.stderr,
                   mininterval=1.0, dynamic_ncols=True)
    try:
        for start in range(0, len(runnable), max(1, batch_size)):
            chunk = runnable[start:start + max(1, batch_size)]
            requests = [Request(plan[i].prompt_ids, plan[i].max_tokens, plan[i].adapter, plan[i].seed, stop)
                        for i in chunk]
            for i, completion in zip(chunk, engine.generate(requests, temperature)):
                results[i] = completion
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return results


def validate_plan(tasks: Mapping[str, dict], plan: Sequence[GenerationItem], completions: Sequence,
                  encoder: GridEncoder, mode: str) -> dict[str, list[Generation]]:
    """`{task_id: [Generation in sample order]}`; a generation is judged against the task's
    pool and the generations of the same task accepted before it."""
    out: dict[str, list[Generation]] = {task_id: [] for task_id in tasks}
    pools = {task_id: pool_of(task, mode) for task_id, task in tasks.items()}
    accepted: dict[str, list] = {task_id: [] for task_id in tasks}
    for item, completion in zip(plan, completions):
        if item.error is not None or completion is None:
            verdict = Verdict(None, [(NOT_GENERATED, item.error or "not generated")])
            text, finish, n_tokens, logprob = "", None, 0, None
        else:
            text, finish = completion.text, completion.finish_reason
            n_tokens, logprob = completion.n_tokens, completion.cumulative_logprob
            verdict = check_generation(text, pools[item.task_id], accepted[item.task_id], encoder,
                                       item.augmentation, mode)
        if verdict.accepted:
            accepted[item.task_id].append(verdict.grid)
        out[item.task_id].append(Generation(item.task_id, item.sample_index, item.augmentation.to_dict(), text,
                                            finish, n_tokens, logprob, verdict, item.n_context))
    return out


# ----------------------------------------------------------------------------- labelling

def vote_margin_decision(candidates: Sequence[Mapping], min_votes: int = 2, min_margin: int = 2):
    """(grid or None, detail) from ranked candidates (`voting.rank_candidates` entries, best
    first): the top grid is kept when it has at least `min_votes` votes and beats the runner-up
    (0 when there is none) by at least `min_margin`."""
    if not candidates:
        return None, {"votes": 0, "runner_up": 0, "reason": "no valid predicted grid"}
    top = candidates[0]["count"]
    second = candidates[1]["count"] if len(candidates) > 1 else 0
    detail = {"votes": top, "runner_up": second}
    if top < min_votes:
        return None, {**detail, "reason": f"top grid has {top} vote(s) < min_votes {min_votes}"}
    if top - second < min_margin:
        return None, {**detail, "reason": f"vote margin {top}-{second}={top - second} < min_vote_margin {min_margin}"}
    return candidates[0]["grid"], detail


def label_task_id(task_id: str, grid) -> str:
    """A label task id that names the grid it labels (so a rerun never reuses another grid's votes)."""
    digest = hashlib.blake2b(repr(grid).encode(), digest_size=5).hexdigest()
    return f"{task_id}.{digest}"


def label_prompt_version_for(cfg: Mapping) -> str:
    """The label model's output-from-examples version from its cfg.json, else the default."""
    from .run_config import config_prompt_version

    candidates = [config_prompt_version(cfg)] + list((cfg.get("prompt_versions") or {}).get("train") or [])
    for version in candidates:
        if version and str(version).startswith("output-from-examples"):
            return version
    return DEFAULT_LABEL_PROMPT_VERSION


def label_generations(tasks: Mapping[str, dict], generations: Mapping[str, list], label_model: str,
                      labels_path, *, label_adapter=None, predictions: int = 8, min_votes: int = 2,
                      min_margin: int = 2, engine: str = "auto", temperature: float = 0.0, seed: int = 0,
                      prompt_version: str | None = None, grid_encoder: str | None = None,
                      max_tokens: str | int = "task", max_model_len: int | None = None,
                      batch_size: int | None = None, engine_instance=None, progress: bool = True,
                      log: Callable = print) -> None:
    """Predict an output for every accepted new input with the sampling stage (`predictions`
    augmented samples, greedy by default) on `{train: the task's train pairs, test: [{input:
    new}]}`, vote (v2) and set `generation.label` where the vote is clear; an accepted input whose
    vote is not clear gets the extra failure `label_vote` (so it is dropped and reported)."""
    from .models import resolve_model_path
    from .run_config import find_run_config
    from .sampling import sample
    from .voting import rank_candidates

    wanted = {}
    for task_id, gens in generations.items():
        for g in gens:
            if g.accepted:
                wanted[label_task_id(task_id, g.verdict.grid)] = (task_id, g)
    if not wanted:
        return
    dataset = {lid: {"train": tasks[tid]["train"], "test": [{"input": g.verdict.grid}]}
               for lid, (tid, g) in wanted.items()}
    if prompt_version is None:
        cfg, _ = find_run_config(label_adapter, resolve_model_path(label_model))
        prompt_version = label_prompt_version_for(cfg)
    sample(label_model, dataset, labels_path, predictions_per_task=predictions, adapter_path=label_adapter,
           engine=engine, temperature=temperature, seed=seed, grid_encoder=grid_encoder, prompt_version=prompt_version,
           max_model_len=max_model_len, max_tokens=max_tokens, batch_size=batch_size, engine_instance=engine_instance,
           progress=progress, log=log)
    records = [r for r in read_jsonl(labels_path) if r.get("task_id") in wanted]
    ranked = rank_candidates(records, "v2")
    n_records = Counter(r["task_id"] for r in records)
    for lid, (task_id, g) in wanted.items():
        grid, detail = vote_margin_decision(ranked.get((lid, 0), []), min_votes, min_margin)
        detail["n"] = n_records[lid]
        if grid is None:
            g.verdict.failures.append((LABEL_RULE, detail.pop("reason")))
        else:
            g.label = {"grid": grid, **detail}


# ----------------------------------------------------------------------------- the expanded dataset

def _placeholder(grid) -> dict:
    return {"input": grid, "output": grid}


def build_expanded_dataset(tasks: Mapping[str, dict], generations: Mapping[str, list], mode: str = "inputs",
                           labelled: bool = False) -> dict:
    """The combined-format task file the fine-tuning stage trains on (every pair has an output,
    as its train/test swap needs).  One task per source task with at least one accepted (and, when
    labelling, labelled) generation:

    * `--mode inputs` with labels -> `<id>_gen_pairs`: train = the original train pairs + the
      (new input, voted output) pairs; test = the original test pairs when their outputs are
      known, else the last new pair.  Good for every prompt version.
    * `--mode inputs` without labels -> `<id>_gen_inputs`: an *inputs pool*: every known input
      (train, then generated, in train; the test inputs in test) as a pair whose output is a copy
      of its input.  Only for `input-from-inputs-v0` (it reads inputs only); the copies keep the
      file valid and never contradict a real output.
    * `--mode outputs` -> `<id>_gen_outputs`: the same pool for outputs (known train outputs +
      generated ones; known test outputs in test, else the last generated one), input = copy of
      the output.  Only for `output-from-outputs-v0`."""
    out = {}
    for task_id, gens in generations.items():
        task = tasks[task_id]
        if mode == "inputs" and labelled:
            new = [{"input": g.verdict.grid, "output": g.label["grid"]} for g in gens if g.accepted and g.label]
            if not new:
                continue
            known_test = has_test_outputs(task)
            train = [dict(p) for p in task["train"]] + (new if known_test else new[:-1])
            test = [dict(p) for p in task["test"]] if known_test else new[-1:]
            out[f"{task_id}_gen_pairs"] = {"train": train, "test": test}
            continue
        new = [g.verdict.grid for g in gens if g.accepted]
        if not new:
            continue
        pool = pool_of(task, mode)
        known_train, known_test = list(pool.grids[:pool.n_train]), list(pool.grids[pool.n_train:])
        train = known_train + (new if known_test else new[:-1])
        test = known_test or new[-1:]
        suffix = "inputs" if mode == "inputs" else "outputs"
        out[f"{task_id}_gen_{suffix}"] = {"train": [_placeholder(g) for g in train],
                                           "test": [_placeholder(g) for g in test]}
    problems = tasks_problems(out)
    if problems:  # a bug here, never the model's fault: every grid passed the rules
        raise ValueError("the expanded dataset is invalid:\n" + "\n".join(problems[:10]))
    return out


# ----------------------------------------------------------------------------- reports

def rule_counts(gens: Sequence[Generation]) -> dict:
    counts = {rule: 0 for rule in RULES + (LABEL_RULE, NOT_GENERATED)}
    for g in gens:
        for rule in g.verdict.rules:
            counts[rule] += 1
    return counts


def model_trained_for(cfg: Mapping, version: str) -> bool | None:
    """Whether a run config lists `version` among its training prompt versions (None: no config)."""
    if not cfg:
        return None
    versions = set((cfg.get("prompt_versions") or {}).get("train") or [])
    versions.add(cfg.get("prompt_version"))
    for spec in cfg.get("train_datasets") or []:
        if isinstance(spec, Mapping):
            versions.add(spec.get("prompt_version"))
        elif isinstance(spec, (list, tuple)) and len(spec) > 1:
            versions.add(spec[1])
    return version in versions


def summary_markdown(generations: Mapping[str, list], settings: Mapping, seconds: float,
                     trained: bool | None, labelled: bool) -> str:
    version = MODES[settings["mode"]][0]
    grid_kind = "input" if settings["mode"] == "inputs" else "output"
    columns = list(RULES) + ([LABEL_RULE] if labelled else [])
    if any(NOT_GENERATED in g.verdict.rules for gens in generations.values() for g in gens):
        columns.append(NOT_GENERATED)
    header = ["task", "samples", "accepted", "rejected"]
    header += ["duplicates" if r == "not_duplicate" else r for r in columns]
    if labelled:
        header.insert(3, "labelled")
    adapter = f", adapter `{settings['adapter_path']}`" if settings.get("adapter_path") else ""
    lines = [f"# generate-inputs: new {grid_kind} grids", "",
             f"- model: `{settings['model']}`{adapter}",
             f"- dataset: `{settings['dataset']}`, {len(generations)} task(s), mode `{settings['mode']}` "
             f"(`{version}`), {settings['n_per_task']} sample(s) per task at temperature {settings['temperature']}, "
             f"seed {settings['seed']}, augmentation {settings['augmentation']}, encoder `{settings['grid_encoder']}`, "
             f"engine {settings['engine']}",
             f"- wall time: {seconds:.0f} s", ""]
    if labelled:
        label_adapter = f" + `{settings['label_adapter']}`" if settings.get("label_adapter") else ""
        lines.insert(-1, f"- labels: `{settings['label_with']}`{label_adapter}, {settings['label_predictions']} "
                         f"prediction(s) per new input, voting v2, kept when the top grid has >= "
                         f"{settings['min_votes']} votes and beats the runner-up by >= {settings['min_vote_margin']}")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    totals = [0] * (len(header) - 1)
    for task_id, gens in generations.items():
        counts = rule_counts(gens)
        row = [len(gens), sum(g.validated for g in gens)]
        if labelled:
            row.append(sum(g.accepted for g in gens))
        row.append(sum(not g.accepted for g in gens))
        row += [counts[r] for r in columns]
        totals = [a + b for a, b in zip(totals, row)]
        lines.append(f"| {task_id} | " + " | ".join(map(str, row)) + " |")
    lines.append("| **total** | " + " | ".join(f"**{v}**" for v in totals) + " |")
    n_samples, n_accepted = totals[0], (totals[2] if labelled else totals[1])
    lines += ["", "A rejected sample counts once in `rejected` and once under every rule it failed "
              "(parseable, rectangular and size_1_30 stop at the first failure; the others are all checked). "
              "`duplicates` = `not_duplicate`; `not_known` = copies of a known grid."
              + (" `accepted` counts inputs that passed every validation rule; `labelled` those whose label vote "
                 "was clear (the others fail `label_vote` and count as rejected)." if labelled else ""),
              "", "Rules: " + "; ".join(f"`{r}`: {RULE_HELP[r]}" for r in RULES) + "."]
    notes = []
    if trained is None:
        notes.append(f"The model has no run config (cfg.json), e.g. the base embedded model: nothing shows it was "
                     f"ever trained on `{version}`, so few accepted generations are expected and say nothing "
                     f"about the method.")
    elif not trained:
        notes.append(f"The model's run config does not list `{version}` among its training prompt versions: "
                     f"few accepted generations are expected.")
    rate = n_accepted / n_samples if n_samples else 0.0
    if rate < 0.25:
        notes.append(f"Only {n_accepted} of {n_samples} samples ({rate:.0%}) were accepted: this dataset is small; "
                     f"look at the rejects' reasons (`{settings['rejects']}`) and the pictures before using it.")
    if notes:
        lines += ["", "**Note.** " + " ".join(notes)]
    return "\n".join(lines) + "\n"


def render_pictures(tasks: Mapping[str, dict], generations: Mapping[str, list], pictures_dir, mode: str,
                    max_columns: int = 10, labelled: bool = False) -> list[Path]:
    """One PNG per task: row 1 the known grids, row 2 the accepted generations, (row 3 their
    voted labels when labelling), last row the rejects framed red, titled by failed rule."""
    from .render import render_grids

    paths = []
    key = MODES[mode][1]
    for task_id, gens in generations.items():
        task = tasks[task_id]
        pool = pool_of(task, mode)
        known = list(pool.grids)[:max_columns]
        known_titles = [f"train {i} {key}" if i < pool.n_train else f"test {i - pool.n_train} {key}"
                        for i in range(len(known))]
        valid = [g for g in gens if g.validated]
        rejects = [g for g in gens if not g.validated]
        shown = valid[:max_columns]
        rows = [known, [g.verdict.grid for g in shown]]
        titles = [known_titles, [f"new (sample {g.sample_index})" + ("" if g.accepted else ": no clear label")
                                 for g in shown]]
        marks = [None, None]
        if labelled:
            rows.append([g.label["grid"] if g.label else None for g in shown])
            titles.append([f"label {g.label['votes']}-{g.label['runner_up']} votes" if g.label else "" for g in shown])
            marks.append(None)
        shown_rejects = rejects[:max_columns]
        rows.append([g.verdict.grid if g.verdict.grid is not None else [] for g in shown_rejects])
        titles.append([f"sample {g.sample_index}:\n" + "\n".join(r for r in g.verdict.rules if r != LABEL_RULE)
                       for g in shown_rejects])
        marks.append([False] * len(shown_rejects))
        more_valid = f" (first {max_columns} shown)" if len(valid) > max_columns else ""
        more_rejects = f", first {max_columns}" if len(rejects) > max_columns else ""
        suptitle = (f"{task_id}: known {key}s (row 1), {sum(g.accepted for g in gens)} accepted / {len(gens)} "
                    f"samples{more_valid}, {len(rejects)} rejected (last row, red{more_rejects})")
        paths.append(render_grids(rows, Path(pictures_dir) / f"{task_id}.png", titles=titles, marks=marks,
                                  suptitle=suptitle))
    return paths


# ----------------------------------------------------------------------------- the stage

def side_paths(output) -> dict:
    output = Path(output)
    stem = output.name.removesuffix(".json")
    return {"rejects": output.with_name(stem + ".rejects.json"), "summary": output.with_name(stem + ".summary.md"),
            "labels": output.with_name(stem + ".labels.jsonl"), "pictures": output.with_name(stem + ".pictures")}


@dataclass
class GenerateResult:
    dataset: dict
    generations: dict
    paths: dict
    seconds: float
    summary_line: str


def generate_inputs(model: str, dataset, output, *, adapter_path=None, mode: str = "inputs", n_per_task: int = 8,
                    temperature: float = DEFAULT_TEMPERATURE, seed: int = 0, augmentation: str = "full",
                    engine: str = "auto", grid_encoder: str | None = None, max_tokens: str | int = "pool",
                    max_model_len: int | None = None, batch_size: int | None = None,
                    task_ids: Sequence[str] | None = None, first_n: int | None = None, smallest_first: bool = False,
                    label_with: str | None = None, label_adapter=None, label_predictions: int = 8,
                    min_votes: int = 2, min_vote_margin: int = 2, label_temperature: float = 0.0,
                    label_prompt_version: str | None = None, label_max_tokens: str | int = "task",
                    pictures_dir=None, pictures: bool = True, max_picture_columns: int = 10,
                    timing_log=None, progress: bool = True, engine_instance=None, label_engine_instance=None,
                    log: Callable = print) -> GenerateResult:
    """The whole stage as a function (the CLI and the tests call it).  `dataset`: a tasks
    file/directory or a `{task_id: task}` dict.  `engine_instance` / `label_engine_instance`: already
    started engines (not closed here)."""
    from .engines import choose_engine, make_engine
    from .models import load_tokenizer, resolve_model_path
    from .run_config import config_encoder, find_run_config
    from .sampling import model_max_len

    started = time.time()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if label_with and mode != "inputs":
        raise ValueError("--label_with labels new inputs: it only applies to --mode inputs (generated outputs "
                         "join the output pool unlabelled)")
    if n_per_task < 1:
        raise ValueError("n_per_task must be >= 1")
    version = MODES[mode][0]
    timing = TimingLog(timing_log, "generate-inputs")
    tasks = dataset if isinstance(dataset, Mapping) else load_tasks(dataset)
    tasks = select_tasks(dict(tasks), task_ids, first_n, sort_by_size=smallest_first)
    if mode == "outputs":
        tasks = {tid: t for tid, t in tasks.items() if any("output" in p for p in t["train"] + t["test"])}
    paths = side_paths(output)
    if pictures_dir:
        paths["pictures"] = Path(pictures_dir)

    model_dir = resolve_model_path(model)
    cfg, cfg_path = find_run_config(adapter_path, model_dir)
    if (cfg.get("format") or DEFAULT_FORMAT) != ARC24:
        raise ValueError(f"{cfg_path}: format {cfg['format']!r} has no input-from-inputs prompt; generating inputs "
                         f"needs weights in the arc24 format")
    encoder = create_grid_encoder(grid_encoder or config_encoder(cfg) or DEFAULT_ENCODER)
    max_len = model_max_len(model_dir, max_model_len)
    label_dir = resolve_model_path(label_with) if label_with else None
    share_engine = label_with is not None and label_dir == model_dir
    adapters = [str(Path(a).resolve()) for a in (adapter_path, label_adapter if share_engine else None) if a]

    with timing.measure("phase", phase="load_tokenizer"):  # the first transformers import, when the engine is not up
        tokenizer = engine_instance.tokenizer if engine_instance is not None else load_tokenizer(model_dir)
    with timing.measure("phase", phase="plan") as fields:
        plan = build_generation_plan(tasks, tokenizer, encoder, mode, n_per_task, seed, max_tokens, max_len,
                                     adapters[0] if adapter_path else None, augmentation=augmentation)
        fields.update(predictions=len(plan), prompt_tokens=sum(len(i.prompt_ids) for i in plan))
    name = engine_instance.name if engine_instance is not None else choose_engine(engine, adapters=bool(adapters))
    log(f"generate-inputs: {len(tasks)} tasks x {n_per_task} samples ({version}), encoder {encoder.spec}"
        f"{f' (from {cfg_path})' if cfg_path else ''}, temperature {temperature}, max_tokens {max_tokens} "
        f"(up to {max((i.max_tokens for i in plan), default=0)}), engine {name}")
    owned = engine_instance is None
    if owned:
        with timing.measure("phase", phase="load_model", engine=name):
            engine_instance = make_engine(name, model_dir, tokenizer, adapters=adapters, max_model_len=max_len,
                                          batch_size=batch_size, seed=seed)
    try:
        chunk = batch_size or (512 if name == "vllm" else getattr(engine_instance, "batch_size", 8))
        with timing.measure("phase", phase="generate") as fields:
            completions = run_generation(plan, engine_instance, temperature, chunk, progress, answer_stop(encoder))
            fields.update(predictions=len(plan), generated_tokens=sum(c.n_tokens for c in completions if c))
        generations = validate_plan(tasks, plan, completions, encoder, mode)
        if label_with:
            if owned and not share_engine:
                engine_instance.close()
                engine_instance, owned = None, False
            with timing.measure("phase", phase="label"):
                label_generations(tasks, generations, label_with, paths["labels"], label_adapter=label_adapter,
                                  predictions=label_predictions, min_votes=min_votes, min_margin=min_vote_margin,
                                  engine=engine, temperature=label_temperature, seed=seed,
                                  prompt_version=label_prompt_version, max_tokens=label_max_tokens,
                                  max_model_len=max_model_len, batch_size=batch_size,
                                  engine_instance=label_engine_instance or (engine_instance if share_engine else None),
                                  progress=progress, log=log)
    finally:
        if owned and engine_instance is not None:
            engine_instance.close()

    labelled = label_with is not None
    expanded = build_expanded_dataset(tasks, generations, mode, labelled)
    seconds = time.time() - started
    settings = {"model": str(model), "adapter_path": str(adapter_path) if adapter_path else None,
                "dataset": str(dataset) if not isinstance(dataset, Mapping) else "<in memory>", "mode": mode,
                "prompt_version": version, "n_per_task": n_per_task, "temperature": temperature, "seed": seed,
                "augmentation": augmentation, "grid_encoder": encoder.spec, "engine": name,
                "max_tokens": str(max_tokens), "max_model_len": max_len,
                "label_with": label_with, "label_adapter": str(label_adapter) if label_adapter else None,
                "label_predictions": label_predictions, "min_votes": min_votes, "min_vote_margin": min_vote_margin,
                "output": str(output), "rejects": str(paths["rejects"])}
    rejects = {tid: [g.to_reject_record() for g in gens if not g.accepted]
               for tid, gens in generations.items()}
    with timing.measure("phase", phase="write"):
        write_json_atomic(output, expanded)
        write_json_atomic(paths["rejects"], {"settings": settings, "rules": RULE_HELP, "tasks": rejects}, indent=1)
        trained = model_trained_for(cfg, version)
        write_text_atomic(paths["summary"], summary_markdown(generations, settings, seconds, trained, labelled))
        if pictures:
            render_pictures(tasks, generations, paths["pictures"], mode, max_picture_columns, labelled)
    all_gens = [g for gens in generations.values() for g in gens]
    counts = rule_counts(all_gens)
    n_acc = sum(1 for g in all_gens if g.accepted)
    per_rule = ", ".join(f"{r} {n}" for r, n in counts.items() if n)
    line = (f"generate-inputs: {len(tasks)} tasks, {len(all_gens)} samples: {n_acc} accepted"
            + (" and labelled" if labelled else "") + f", {len(all_gens) - n_acc} rejected"
            + (f" ({per_rule})" if per_rule else "")
            + f" -> {output} ({len(expanded)} tasks) in {time.time() - started:.0f} s")
    log(line)
    return GenerateResult(expanded, generations, paths, time.time() - started, line)


# ----------------------------------------------------------------------------- CLI

def _budget(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline generate-inputs",
        description="Generate new input grids per task (input-from-inputs-v0, all known inputs in context, one "
                    "augmentation per sample), validate them with named rules, and write an expanded dataset "
                    "(combined task format), the rejects, a Markdown summary and one PNG per task.")
    parser.add_argument("--model", required=True, help="'embedded', a transformers directory or a .gguf")
    parser.add_argument("--adapter_path", help="LoRA adapter of the generating model (its cfg.json gives the encoder)")
    parser.add_argument("--dataset", required=True, help="tasks file or directory (solutions merged when found)")
    parser.add_argument("--task_ids", nargs="+", metavar="ID", help="only these tasks")
    parser.add_argument("--first_n", type=int, metavar="N", help="only the first N tasks (after --task_ids)")
    parser.add_argument("--smallest_first", action="store_true",
                        help="sort the tasks by size (cells of all grids) before --first_n: the N smallest")
    parser.add_argument("--mode", choices=tuple(MODES), default="inputs",
                        help="inputs: new inputs (input-from-inputs-v0, default); outputs: new outputs "
                             "(output-from-outputs-v0; no labelling)")
    parser.add_argument("--n_per_task", type=int, default=8, help="samples per task (default 8); each may be rejected")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help=f"sampling temperature (default {DEFAULT_TEMPERATURE}, as the seed's notebook 015; "
                             "lower gives fewer broken grids and more copies)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the augmentations (per task) and sampling")
    parser.add_argument("--augmentation", choices=AUGMENTATIONS, default="full",
                        help="per sample: full = dihedral x colour map x context order (default, notebook 021), "
                             "dihedral = the same with the task's own colours, none = the prompt as is (notebook 015)")
    parser.add_argument("--engine", choices=("auto", "vllm", "transformers"), default="auto",
                        help="auto: the rule of engines.choose_engine (vLLM on CUDA; on CPU vLLM without an "
                             "adapter, transformers with one)")
    parser.add_argument("--grid_encoder", help=f"default: from cfg.json, else {DEFAULT_ENCODER}")
    parser.add_argument("--max_tokens", type=_budget, default="pool",
                        help="per sample: 'pool' (a square grid of the task's longest known side + 2; default), "
                             "'max' (30x30) or a number")
    parser.add_argument("--max_model_len", type=int, help="context length (default 10240 capped by the model's)")
    parser.add_argument("--batch_size", type=int, help="prompts per engine call (default: vLLM 512, transformers 8)")
    g = parser.add_argument_group("labelling (--mode inputs)")
    g.add_argument("--label_with", metavar="OUTPUT_MODEL",
                   help="label each accepted new input with this output model (sampling + voting v2)")
    g.add_argument("--label_adapter", help="LoRA adapter of the label model")
    g.add_argument("--label_predictions", type=int, default=8, help="augmented predictions per new input (default 8)")
    g.add_argument("--min_votes", type=int, default=2, help="the top label needs at least this many votes (default 2)")
    g.add_argument("--min_vote_margin", type=int, default=2,
                   help="...and this many more than the runner-up (default 2)")
    g.add_argument("--label_temperature", type=float, default=0.0, help="default 0 (greedy, spec §6.7)")
    g.add_argument("--label_prompt_version",
                   help=f"default: the label model's output-from-examples version (cfg.json), else "
                        f"{DEFAULT_LABEL_PROMPT_VERSION}")
    g.add_argument("--label_max_tokens", type=_budget, default="task",
                   help="the sampling stage's max_tokens policy (default task)")
    parser.add_argument("--output", required=True,
                        help="expanded dataset NEW.json (+ NEW.rejects.json, NEW.summary.md)")
    parser.add_argument("--pictures_dir", help="PNG folder (default: NEW.pictures beside the output)")
    parser.add_argument("--no_pictures", dest="pictures", action="store_false", help="skip the PNGs")
    parser.add_argument("--max_picture_columns", type=int, default=10, help="grids per picture row (default 10)")
    parser.add_argument("--timing_log", help="timing JSONL to append to")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.n_per_task < 1:
        parser.error("--n_per_task must be >= 1")
    if args.label_with is None and (args.label_adapter):
        parser.error("--label_adapter needs --label_with")
    if args.label_with and args.mode != "inputs":
        parser.error("--label_with applies to --mode inputs only")
    try:
        generate_inputs(args.model, args.dataset, args.output, adapter_path=args.adapter_path, mode=args.mode,
                        n_per_task=args.n_per_task, temperature=args.temperature, seed=args.seed,
                        augmentation=args.augmentation, engine=args.engine,
                        grid_encoder=args.grid_encoder, max_tokens=args.max_tokens, max_model_len=args.max_model_len,
                        batch_size=args.batch_size, task_ids=args.task_ids, first_n=args.first_n,
                        smallest_first=args.smallest_first,
                        label_with=args.label_with, label_adapter=args.label_adapter,
                        label_predictions=args.label_predictions, min_votes=args.min_votes,
                        min_vote_margin=args.min_vote_margin, label_temperature=args.label_temperature,
                        label_prompt_version=args.label_prompt_version, label_max_tokens=args.label_max_tokens,
                        pictures_dir=args.pictures_dir, pictures=args.pictures,
                        max_picture_columns=args.max_picture_columns, timing_log=args.timing_log,
                        progress=not args.quiet)
    except (OSError, ValueError) as e:
        print(f"generate-inputs: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["RULES", "RULE_HELP", "MODES", "Pool", "pool_of", "generation_view", "check_parseable", "check_rectangular",
           "check_size_1_30", "check_shape_header", "check_palette", "check_size_range", "check_not_known",
           "check_not_duplicate", "check_generation", "validate_generation", "Verdict", "build_generation_plan",
           "validate_plan", "vote_margin_decision", "label_generations", "build_expanded_dataset", "generate_inputs",
           "main"]
