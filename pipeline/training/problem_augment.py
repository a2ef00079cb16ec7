"""Problem augmentation (spec §4.5) and the train/test swap: the training-only augmentations.

`ProblemAugmentation` makes a *new task* by transforming only the inputs or only the outputs of
every pair with one extra reversible grid transform (`Dihedral` from `pipeline.core.augment`, or
`Padding`, `Upscale`, `Mirror` here), drawn so no grid exceeds 30×30; `swap_train_and_test` pools
a task's pairs and reshuffles them so any pair can become the target; `random_augment_task` is a
random view of a task (`core.augment.Augmentation`) then that swap.  Finetune's training sets
draw them (`training/finetune_data.py`); the standard views used everywhere stay in
`pipeline/core/augment.py`.

Randomness always comes from an explicit `np.random.Generator`; nothing touches global state.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.core.augment import DIHEDRAL, Augmentation, Dihedral, grid_array, random_augmentation
from pipeline.core.tasks import MAX_SIDE


class GridTooBigToAugment(ValueError):
    """The transform would make a grid larger than 30×30."""


@dataclass(frozen=True)
class Padding:
    """A border of `rows` rows above and below and `cols` columns left and right, in `color`."""
    color: int
    rows: int
    cols: int
    kind = "padding"

    def apply(self, a):
        return np.pad(a, ((self.rows, self.rows), (self.cols, self.cols)), constant_values=self.color)

    def invert(self, a):
        h, w = a.shape
        if h <= 2 * self.rows or w <= 2 * self.cols:
            raise ValueError(f"a {h}x{w} grid is too small to remove padding {self.rows}x{self.cols}")
        return a[self.rows:h - self.rows, self.cols:w - self.cols]


@dataclass(frozen=True)
class Upscale:
    """Each row repeated `rows` times and each column `cols` times."""
    rows: int
    cols: int
    kind = "upscale"

    def apply(self, a):
        return np.repeat(np.repeat(a, self.rows, axis=0), self.cols, axis=1)

    def invert(self, a):
        h, w = a.shape
        if h % self.rows or w % self.cols:
            raise ValueError(f"a {h}x{w} grid is not a {self.rows}x{self.cols} upscale")
        return a[::self.rows, ::self.cols]


@dataclass(frozen=True)
class Mirror:
    """The grid concatenated with its reflection along `axis` (0: stacked, 1: side by side);
    `position` 0 puts the reflection first (above / left), 1 after."""
    axis: int
    position: int
    kind = "mirror"

    def apply(self, a):
        mirrored = np.flip(a, axis=self.axis)
        parts = (mirrored, a) if self.position == 0 else (a, mirrored)
        return np.concatenate(parts, axis=self.axis)

    def invert(self, a):
        n = a.shape[self.axis]
        if n % 2:
            raise ValueError(f"a grid with odd size {n} along axis {self.axis} is not a mirror")
        half = n // 2
        index = slice(half, n) if self.position == 0 else slice(0, half)
        return a[index, :] if self.axis == 0 else a[:, index]


GRID_TRANSFORMS = {cls.kind: cls for cls in (Dihedral, Padding, Upscale, Mirror)}


def transform_to_dict(t) -> dict:
    return {"kind": t.kind, **dataclasses.asdict(t)}


def transform_from_dict(d: dict):
    d = dict(d)
    kind = d.pop("kind")
    if kind not in GRID_TRANSFORMS:
        raise ValueError(f"unknown grid transform {kind!r}; known: {', '.join(GRID_TRANSFORMS)}")
    return GRID_TRANSFORMS[kind](**d)


PROBLEM_KINDS = ("dihedral", "padding", "upscale", "mirror")


@dataclass(frozen=True)
class ProblemAugmentation:
    """A new task: `transform` applied to the `target` grids ("input" or "output") of every pair."""
    target: str
    transform: Dihedral | Padding | Upscale | Mirror

    def apply_task(self, task: dict) -> dict:
        def pair(p):
            return {k: (self.transform.apply(grid_array(v)).tolist() if k == self.target else v) for k, v in p.items()}
        return {"train": [pair(p) for p in task["train"]], "test": [pair(p) for p in task["test"]]}

    def invert_grid(self, grid) -> list:
        return self.transform.invert(grid_array(grid)).tolist()

    def to_dict(self) -> dict:
        return {"target": self.target, "transform": transform_to_dict(self.transform)}

    @classmethod
    def from_dict(cls, d: dict) -> "ProblemAugmentation":
        return cls(target=d["target"], transform=transform_from_dict(d["transform"]))


def _draw_pair(rng, low_high: tuple[tuple[int, int], tuple[int, int]], equal_low: int) -> tuple[int, int]:
    """Half the time equal sides; otherwise up to 10 draws for unequal sides (the last is kept)."""
    (lo_h, hi_h), (lo_w, hi_w) = low_high
    if rng.random() < 0.5:
        s = int(rng.integers(equal_low, min(hi_h, hi_w) + 1))
        return s, s
    for _ in range(10):
        h, w = int(rng.integers(lo_h, hi_h + 1)), int(rng.integers(lo_w, hi_w + 1))
        if h != w:
            break
    return h, w


def random_grid_transform(kind: str, max_shape: tuple[int, int], rng: np.random.Generator):
    """Draw the parameters of one transform so no grid of `max_shape` exceeds 30×30 (spec §4.5)."""
    h, w = max_shape
    if kind == "dihedral":
        hflip, k = DIHEDRAL[int(rng.integers(8))]
        return Dihedral(hflip, k)
    if kind == "padding":
        # The original allowed min(30 - H, 5) per side, which can reach 35 once both sides are
        # padded; the room per side is half the free space.
        safe_h, safe_w = min((MAX_SIDE - h) // 2, 5), min((MAX_SIDE - w) // 2, 5)
        if min(safe_h, safe_w) < 1:
            raise GridTooBigToAugment(f"no room to pad a {h}x{w} grid")
        rows, cols = _draw_pair(rng, ((1, safe_h), (1, safe_w)), equal_low=1)
        return Padding(color=int(rng.integers(10)), rows=rows, cols=cols)
    if kind == "upscale":
        safe_h, safe_w = min(MAX_SIDE // h, 4), min(MAX_SIDE // w, 4)
        if max(safe_h, safe_w) < 2:
            raise GridTooBigToAugment(f"no room to upscale a {h}x{w} grid")
        if rng.random() < 0.5:
            if min(safe_h, safe_w) < 2:
                raise GridTooBigToAugment(f"no room to upscale a {h}x{w} grid evenly")
            s = int(rng.integers(2, min(safe_h, safe_w) + 1))
            return Upscale(s, s)
        for _ in range(10):
            rows, cols = int(rng.integers(1, safe_h + 1)), int(rng.integers(1, safe_w + 1))
            if rows != cols:
                break
        return Upscale(rows, cols)
    if kind == "mirror":
        can_h, can_w = MAX_SIDE // h >= 2, MAX_SIDE // w >= 2
        if not (can_h or can_w):
            raise GridTooBigToAugment(f"no room to mirror a {h}x{w} grid")
        axis = int(rng.integers(2)) if can_h and can_w else (0 if can_h else 1)
        return Mirror(axis=axis, position=int(rng.integers(2)))
    raise ValueError(f"unknown problem augmentation {kind!r}; known: {', '.join(PROBLEM_KINDS)}")


def random_problem_augmentation(task: dict, rng: np.random.Generator,
                                weights: Sequence[float] | None = None) -> tuple[dict, ProblemAugmentation | None]:
    """A new task from one extra transform of the inputs or the outputs; the task unchanged (and
    None) when the grids are too big for the drawn transform.  `weights` order: dihedral,
    padding, upscale, mirror."""
    weights = np.ones(4) if weights is None else np.asarray(weights, dtype=float)
    if weights.shape != (4,) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError(f"problem augmentation weights must be 4 non-negative numbers, got {list(weights)}")
    target = ("input", "output")[int(rng.integers(2))]
    kind = PROBLEM_KINDS[int(rng.choice(4, p=weights / weights.sum()))]
    grids = [p[target] for split in ("train", "test") for p in task[split] if target in p]
    max_shape = (max(len(g) for g in grids), max(len(g[0]) for g in grids))
    try:
        transform = random_grid_transform(kind, max_shape, rng)
    except GridTooBigToAugment:
        return task, None
    aug = ProblemAugmentation(target, transform)
    return aug.apply_task(task), aug


def swap_train_and_test(task: dict, rng: np.random.Generator) -> dict:
    """The fixed train/test reshuffle (spec §4.3): pool all pairs, shuffle, keep the counts, so
    any pair — the original test pair included — can become the target.  Needs test outputs."""
    pairs = task["train"] + task["test"]
    if any("output" not in p for p in pairs):
        raise ValueError("train/test swap needs outputs for every test pair")
    order = rng.permutation(len(pairs))
    shuffled = [pairs[i] for i in order]
    n_train = len(task["train"])
    return {"train": shuffled[:n_train], "test": shuffled[n_train:]}


def random_augment_task(task: dict, rng: np.random.Generator, swap: bool = True,
                        keep_background_probability: float = 0.9) -> tuple[dict, Augmentation]:
    """Random view of a task (dihedral, colours, order), then optionally the train/test swap."""
    aug = random_augmentation(rng, len(task["train"]), keep_background_probability)
    out = aug.apply_task(task)
    if swap:
        out = swap_train_and_test(out, rng)
    return out, aug
