"""The Kaggle competitions the configs name: the machine each gives, its hidden test set's size, and
the public task file whose sizes stand for that hidden set (shared/reference/anchors.md, intro and §12).

One table and one rule (`config_hardware`) for every place that needs a config's machine: the
planner projects onto it, the notebook builder's kernel metadata asks Kaggle for it, the run's
preflight warns when the GPUs present are something else. A config's own `hardware` key wins,
then its `kaggle_competition`'s machine, then "cpu" when every device is a CPU, else a T4. Standard library
only (the preflight runs before the offline install).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class Competition:
    name: str                       # the Kaggle slug a config's `kaggle_competition` names
    hardware: str                   # core/hardware.HARDWARE name of one of its GPUs
    gpus: int
    tasks: int                      # hidden test tasks a submission must answer
    size_proxy: tuple[str, ...]     # repo-relative task files whose sizes stand for the hidden set, best first
    source: str


COMPETITIONS = {c.name: c for c in (
    Competition("arc-prize-2024", "T4", 2, 100, ("data/arc-agi-1/arc-agi_evaluation_challenges.json",),
                "ARC-AGI-1, 2x T4 16 GB, 100 hidden tasks, 12 h (anchors.md intro table)"),
    # ARC-AGI-2's public evaluation set is the better size proxy (the hidden set is drawn like it);
    # it is not vendored (data/README.md), so its training set is used when it is missing
    Competition("arc-prize-2025", "L4", 4, 240, ("data/arc-agi-2/arc-agi_evaluation_challenges.json",
                                                  "data/arc-agi-2/arc-agi_training_challenges.json"),
                "ARC-AGI-2, 4x L4 24 GB, 240 hidden tasks, 12 h (anchors.md intro table; NVARC paper)"),
    Competition("arc-prize-2026-arc-agi-2", "L4", 4, 240, ("data/arc-agi-2/arc-agi_evaluation_challenges.json",
                                                            "data/arc-agi-2/arc-agi_training_challenges.json"),
                "ARC-AGI-2 track of 2026: the 2025 machine and test set size (anchors.md, ARC Prize 2026 and §12)"),
)}


def competition(name: str | None) -> Competition | None:
    """The table's entry for a config's `kaggle_competition` (None when it names none)."""
    if name is None:
        return None
    if name not in COMPETITIONS:
        raise ValueError(f"unknown competition {name!r}: the planner knows {', '.join(COMPETITIONS)} "
                         "(add it to pipeline/core/competitions.py)")
    return COMPETITIONS[name]


DEFAULT_GPU = "T4"   # a GPU config naming neither hardware nor a known competition: Kaggle's GPU notebook machine


def config_hardware(hardware: str | None, kaggle_competition: str | None, devices: Sequence[str] = ()) -> str:
    """The one rule for a config's machine: its `hardware` key, else its competition's GPU, else
    "cpu" when every device is a CPU, else DEFAULT_GPU. A competition the table does not know is
    not an error here (the planner refuses it: it cannot size its test set)."""
    if hardware:
        return hardware
    entry = COMPETITIONS.get(str(kaggle_competition)) if kaggle_competition else None
    if entry:
        return entry.hardware
    if devices and all(str(d).startswith("cpu") for d in devices):
        return "cpu"
    return DEFAULT_GPU


def size_proxy(entry: Competition, repo: Path) -> Path:
    """The first of the competition's size-proxy files that exists under `repo`; ValueError naming them."""
    for rel in entry.size_proxy:
        if (repo / rel).exists():
            return repo / rel
    raise ValueError(f"competition {entry.name}: none of its size-proxy task files exists "
                     f"({', '.join(entry.size_proxy)}): pass --dataset")
