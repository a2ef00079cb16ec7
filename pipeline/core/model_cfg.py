"""The run config (`cfg.json`) that every training stage writes beside its model or adapter.

Fine-tuning, TTFT and merge write it; sampling, TTFT continuation and generate-inputs read it to
use the encoder and prompt version the weights were trained with, so no flag has to be repeated.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pipeline.core.encoders import DEFAULT_ENCODER
from pipeline.core.files import read_json
from pipeline.core.formats import ARC24, DEFAULT_FORMAT, FORMAT_NAMES, TEXT_FORMAT_ENCODER

RUN_CONFIG = "cfg.json"
DEFAULT_PROMPT_VERSION = "output-from-examples-v1"
# The ARC-trained LoRA shipped with the project (docs/accuracy.md): the dry run, eval-checkpoint
# and the local config put it on the embedded model unless told to run the bare model.
SHIPPED_ADAPTER = "models/smollm2-135m-arc-lora"


def shipped_adapter() -> Path:
    """Where the shipped adapter lives in this checkout (it may not exist yet in a fresh clone)."""
    return Path(__file__).resolve().parents[2] / SHIPPED_ADAPTER


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


@dataclass(frozen=True)
class Prompting:
    """What a stage writes and reads: the format, its grid encoder and its prompt version."""
    format: str
    grid_encoder: str
    prompt_version: str


def resolve_prompting(cfg: Mapping, format: str | None = None, grid_encoder: str | None = None,
                      prompt_version: str | None = None) -> Prompting:
    """The one rule every stage uses: a flag wins over the weights' cfg.json, which wins over the
    defaults.  `arc24` takes its encoder and prompt version from there; a public checkpoint's
    format (core/formats.py) fixes both (rows of digits, its own prompt), so giving either is an error.
    ValueError names the flag and the problem."""
    name = format or cfg.get("format") or DEFAULT_FORMAT
    if name not in FORMAT_NAMES:
        raise ValueError(f"--format: unknown format {name!r}; known: {', '.join(FORMAT_NAMES)}")
    if name == ARC24:
        version = prompt_version or config_prompt_version(cfg) or DEFAULT_PROMPT_VERSION
        if version in FORMAT_NAMES:
            raise ValueError(f"--prompt_version {version!r} is a format: give --format {version}")
        return Prompting(ARC24, grid_encoder or config_encoder(cfg) or DEFAULT_ENCODER, version)
    if grid_encoder and grid_encoder != TEXT_FORMAT_ENCODER:
        raise ValueError(f"--grid_encoder {grid_encoder!r} does not apply to format {name} (its grids are rows of digits)")
    if prompt_version and prompt_version != name:
        raise ValueError(f"--prompt_version {prompt_version!r} does not apply to format {name} (it has its own prompt)")
    return Prompting(name, TEXT_FORMAT_ENCODER, name)
