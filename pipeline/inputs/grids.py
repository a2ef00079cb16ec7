"""Generated grids and their judgement: the task's pool of known grids, the named rules, verdicts.

generate-inputs (`pipeline/inputs/generate_inputs.py`, docs/generate-inputs.md) shows a model every
known grid of a task and asks for a new one; this module says what a new grid must be:

* `pool_of`: the known grids a generation must resemble but not copy (inputs, or outputs in
  `--mode outputs`), with their palette and size range; `generation_view`: the task the model
  is shown (every known grid as a train pair, a dummy test pair the template does not render).
* The rules (`RULES`, each a pure `check_*` returning None or a reason): parseable, rectangular,
  size_1_30 on the raw text (the first failure stops), shape_header on the raw augmented text,
  then, on the grid mapped back to the task's frame, palette, size_range, not_known,
  not_duplicate (all evaluated).  `check_generation` runs them all and returns a `Verdict`.
* `Generation`: one sample and its verdict (and its label, when labelling), as the stage's
  outputs report it.

Pure: no model, no engine.  Imports no stage module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from pipeline.core.augment import Augmentation
from pipeline.core.encoders import GridEncoder, GridParseError
from pipeline.core.prompts import grid_prefix, parse_response
from pipeline.core.tasks import MAX_SIDE

# mode -> (prompt version, the grid of a pair it generates)
MODES = {"inputs": ("input-from-inputs-v0", "input"), "outputs": ("output-from-outputs-v0", "output")}
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
