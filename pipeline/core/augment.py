"""Task augmentations as small JSON-serialisable values with exact inverses.

Two kinds:
  * `Augmentation`: the standard view of a task (dihedral transform × colour permutation × train
    order).  Applied to every grid of every pair; `invert_grid` maps a predicted grid back to the
    original frame.  Used everywhere: training, TTFT and sampling.
  * `ProblemAugmentation`: a *new task* made by transforming only the inputs or only the outputs
    with an extra reversible grid transform (dihedral, padding, upscale, mirror; spec §4.5).
    Training only: `pipeline/training/problem_augment.py`, with finetune's train/test swap (the
    Kaggle run, which embeds this module, never draws them).

Randomness always comes from an explicit `np.random.Generator`; nothing touches global state.
The dihedral convention is the original's: optional left-right flip, then `n_rot90`
counter-clockwise quarter turns (`np.rot90`); the inverse undoes them in reverse order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IDENTITY_COLORS = tuple(range(10))
# The 8 elements of the dihedral group, in the original's inference order: product([F, T], [0..3]).
DIHEDRAL = tuple((hflip, k) for hflip in (False, True) for k in range(4))


def grid_array(grid) -> np.ndarray:
    """A grid as the int8 array every transform works on."""
    return np.asarray(grid, dtype=np.int8)


# ----------------------------------------------------------------------------- grid transforms
# Each transform is a frozen dataclass with apply/invert on numpy arrays and a "kind" for JSON (the
# others, training's: pipeline/training/problem_augment.py).

@dataclass(frozen=True)
class Dihedral:
    hflip: bool = False
    n_rot90: int = 0
    kind = "dihedral"

    def apply(self, a: np.ndarray) -> np.ndarray:
        if self.hflip:
            a = np.flip(a, axis=1)
        return np.rot90(a, k=self.n_rot90)

    def invert(self, a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k=-self.n_rot90)
        return np.flip(a, axis=1) if self.hflip else a


# ----------------------------------------------------------------------------- the standard view

@dataclass(frozen=True)
class Augmentation:
    """One view of a task: dihedral transform, colour permutation, train order.

    `color_map[old] == new`.  `train_order[i]` is the index of the original train pair shown at
    position i (None: original order).  Serialises to a small dict (`to_dict`/`from_dict`).
    """
    hflip: bool = False
    n_rot90: int = 0
    color_map: tuple[int, ...] = IDENTITY_COLORS
    train_order: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.n_rot90 not in (0, 1, 2, 3):
            raise ValueError(f"n_rot90 must be 0-3, got {self.n_rot90}")
        if sorted(self.color_map) != list(range(10)):
            raise ValueError(f"color_map must be a permutation of 0-9, got {self.color_map}")
        if self.train_order is not None and sorted(self.train_order) != list(range(len(self.train_order))):
            raise ValueError(f"train_order must be a permutation, got {self.train_order}")

    @property
    def dihedral(self) -> Dihedral:
        return Dihedral(self.hflip, self.n_rot90)

    def apply_array(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(self.color_map, dtype=np.int8)[self.dihedral.apply(grid_array(a))]

    def invert_array(self, a: np.ndarray) -> np.ndarray:
        inverse_colors = np.argsort(np.asarray(self.color_map)).astype(np.int8)
        return self.dihedral.invert(inverse_colors[grid_array(a)])

    def apply_grid(self, grid) -> list:
        return self.apply_array(grid).tolist()

    def invert_grid(self, grid) -> list:
        return self.invert_array(grid).tolist()

    def apply_task(self, task: dict) -> dict:
        """Transform every grid of every pair (extra keys too); reorder the train pairs."""
        def pair(p):
            return {k: self.apply_grid(v) for k, v in p.items()}
        train = [pair(p) for p in task["train"]]
        if self.train_order is not None:
            if len(self.train_order) != len(train):
                raise ValueError(f"train_order has {len(self.train_order)} entries for {len(train)} train pairs")
            train = [train[i] for i in self.train_order]
        return {"train": train, "test": [pair(p) for p in task["test"]]}

    def to_dict(self) -> dict:
        return {"hflip": self.hflip, "n_rot90": self.n_rot90, "color_map": list(self.color_map),
                "train_order": None if self.train_order is None else list(self.train_order)}

    @classmethod
    def from_dict(cls, d: dict) -> "Augmentation":
        order = d.get("train_order")
        return cls(hflip=bool(d["hflip"]), n_rot90=int(d["n_rot90"]),
                   color_map=tuple(int(c) for c in d.get("color_map", IDENTITY_COLORS)),
                   train_order=None if order is None else tuple(int(i) for i in order))


def random_color_map(rng: np.random.Generator, keep_background_probability: float = 0.9) -> tuple[int, ...]:
    """With `keep_background_probability` 0 stays 0 and 1-9 are permuted; otherwise all 10 are."""
    if rng.random() < keep_background_probability:
        return (0, *(int(c) for c in rng.permutation(np.arange(1, 10))))
    return tuple(int(c) for c in rng.permutation(10))


def random_augmentation(rng: np.random.Generator, n_train: int, keep_background_probability: float = 0.9,
                        dihedral: tuple[bool, int] | None = None) -> Augmentation:
    hflip, k = dihedral if dihedral is not None else DIHEDRAL[int(rng.integers(8))]
    return Augmentation(hflip=hflip, n_rot90=k,
                        color_map=random_color_map(rng, keep_background_probability),
                        train_order=tuple(int(i) for i in rng.permutation(n_train)))


def inference_augmentations(n: int, rng: np.random.Generator, n_train: int,
                            keep_background_probability: float = 0.9) -> list[Augmentation]:
    """`n` views spread evenly over the 8 dihedral transforms (view i uses DIHEDRAL[i % 8]), each
    with its own colour map and train order.  Any n >= 1 (the original silently rounded down to a
    multiple of 8 and produced nothing below 8)."""
    if n < 1:
        raise ValueError(f"need at least one prediction per test input, got {n}")
    return [random_augmentation(rng, n_train, keep_background_probability, DIHEDRAL[i % 8]) for i in range(n)]




