"""The run config (`cfg.json`) that every training stage writes beside its model or adapter.

Fine-tuning, TTFT and merge write it; sampling, TTFT continuation and generate-inputs read it to
use the encoder and prompt version the weights were trained with, so no flag has to be repeated.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .files import read_json

RUN_CONFIG = "cfg.json"
DEFAULT_PROMPT_VERSION = "output-from-examples-v1"
# The ARC-trained LoRA shipped with the project (docs/accuracy.md): the dry run, eval-checkpoint
# and the local config put it on the embedded model unless told to run the bare model.
SHIPPED_ADAPTER = "models/smollm2-135m-arc-lora"


def shipped_adapter() -> Path:
    """Where the shipped adapter lives in this checkout (it may not exist yet in a fresh clone)."""
    return Path(__file__).resolve().parents[1] / SHIPPED_ADAPTER


def find_run_config(*places: str | os.PathLike | None) -> tuple[dict, Path | None]:
    """The first `cfg.json` in `places` (each a directory, or a directory whose parent holds
    it, like a `checkpoint-N` inside a training run): (config, path) or ({}, None)."""
    for place in places:
        if not place:
            continue
        place = Path(place)
        for candidate in (place / RUN_CONFIG, place.parent / RUN_CONFIG):
            if candidate.is_file():
                return read_json(candidate), candidate
    return {}, None


def config_encoder(cfg: Mapping) -> str | None:
    return cfg.get("grid_encoder") or cfg.get("encoder")


def config_prompt_version(cfg: Mapping) -> str | None:
    """`prompt_version`, or the version of the first training dataset (the original's layout:
    `train_datasets: [[path, version], ...]`)."""
    if cfg.get("prompt_version"):
        return cfg["prompt_version"]
    datasets = cfg.get("train_datasets")
    if isinstance(datasets, list) and datasets and isinstance(datasets[0], (list, tuple)) and len(datasets[0]) > 1:
        return datasets[0][1]
    return None
