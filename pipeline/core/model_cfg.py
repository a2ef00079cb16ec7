"""The run config (`cfg.json`) that every training stage writes beside its model or adapter.

Fine-tuning, TTFT and merge write it; sampling, TTFT continuation and generate-inputs read it to
use the encoder and prompt version the weights were trained with, so no flag has to be repeated.

Weights with no cfg.json naming their format (a public checkpoint as published) never fall back
to a default format silently: `choose_format` recognises the format from the tokenizer and says
so, or stops with a one-line error naming the `format` key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.encoders import DEFAULT_ENCODER
from pipeline.core.files import read_json
from pipeline.core.formats import ARC24, FORMAT_NAMES, TEXT_FORMAT_ENCODER, recognise_format

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


# Keys that only arc24-format training writes (this project's stages before formats existed, and
# the original arc24 system): a cfg.json with them and no `format` key describes arc24 weights.
ARC24_CONFIG_KEYS = ("grid_encoder", "encoder", "prompt_version", "train_datasets")


@dataclass(frozen=True)
class TokenizerFacts:
    """What format recognition reads from a tokenizer (formats.recognise_format)."""
    name: str
    chat_template: str
    tokens: frozenset[str]  # the added and special tokens
    vocab_size: int


def tokenizer_facts(tokenizer) -> TokenizerFacts:
    """The facts of a loaded transformers tokenizer."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates
        template = "\n".join(str(t) for t in template.values())
    tokens = set(tokenizer.get_added_vocab()) | set(getattr(tokenizer, "all_special_tokens", ()))
    return TokenizerFacts(str(getattr(tokenizer, "name_or_path", "") or ""), template, frozenset(tokens), len(tokenizer))


def read_tokenizer_facts(directory: str | os.PathLike) -> TokenizerFacts | None:
    """The facts of the tokenizer saved in a model directory, from its files alone (no transformers
    import: the run's preflight can afford it); None where it has no tokenizer.json."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        return None
    tokenizer = read_json(directory / "tokenizer.json")
    config = read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
    template = config.get("chat_template") or ""
    if (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, list):  # named templates
        template = "\n".join(str(t.get("template", "")) for t in template)
    added = {t["content"] for t in tokenizer.get("added_tokens", [])}
    specials = {v if isinstance(v, str) else v.get("content", "") for k, v in config.items()
                if k.endswith("_token") and isinstance(v, (str, dict))}
    ids = set(tokenizer.get("model", {}).get("vocab", {}) or ()) | added
    return TokenizerFacts(str(directory), template, frozenset(added | specials), len(ids))


@dataclass(frozen=True)
class FormatChoice:
    format: str
    source: str  # where it came from, for the stage's log: "--format", "cfg.json", "recognised from ..."


def choose_format(cfg: Mapping, tokenizer: TokenizerFacts | None, format: str | None = None) -> FormatChoice:
    """The format of a stage's weights, by the one rule (pure; the run's preflight calls it too):
    the flag, else the weights' cfg.json `format` key, else arc24 for a cfg.json that only arc24
    training writes, else the format the tokenizer is recognised as.  ValueError, one line naming
    the `format` key, where none of these tells (never a silent default)."""
    if format:
        name, source = format, "--format"
    elif cfg.get("format"):
        name, source = cfg["format"], "cfg.json"
    elif any(cfg.get(key) for key in ARC24_CONFIG_KEYS):
        name, source = ARC24, "cfg.json without a format key (written by arc24 training)"
    else:
        recognised = recognise_format(tokenizer.chat_template, tokenizer.tokens, tokenizer.vocab_size) if tokenizer else None
        if recognised is None:
            what = (f"its tokenizer ({tokenizer.name or 'no name'}) does not tell the format" if tokenizer
                    else "no tokenizer to recognise it from")
            raise ValueError(f"format: the weights have no cfg.json with a `format` key and {what}: give "
                             f"--format ({'|'.join(FORMAT_NAMES)}) or `format:` in the run config")
        name, source = recognised[0], f"recognised from the tokenizer: {recognised[1]}"
    if name not in FORMAT_NAMES:
        raise ValueError(f"--format: unknown format {name!r}; known: {', '.join(FORMAT_NAMES)}")
    return FormatChoice(name, source)


@dataclass(frozen=True)
class Prompting:
    """What a stage writes and reads: the format, its grid encoder and its prompt version."""
    format: str
    grid_encoder: str
    prompt_version: str
    source: str = ""  # where the format came from (FormatChoice.source)


def resolve_prompting(cfg: Mapping, format: str | None = None, grid_encoder: str | None = None,
                      prompt_version: str | None = None, tokenizer: Any = None) -> Prompting:
    """The one rule every stage uses: a flag wins over the weights' cfg.json, which wins over the
    defaults; the format itself has no default (`choose_format`: recognised from `tokenizer`, a
    loaded tokenizer or its TokenizerFacts, or an error).  `arc24` takes its encoder and prompt
    version from there; a public checkpoint's format (core/formats.py) fixes both (rows of digits,
    its own prompt), so giving either is an error.  ValueError names the flag and the problem."""
    facts = tokenizer if tokenizer is None or isinstance(tokenizer, TokenizerFacts) else tokenizer_facts(tokenizer)
    choice = choose_format(cfg, facts, format)
    name = choice.format
    if name == ARC24:
        version = prompt_version or config_prompt_version(cfg) or DEFAULT_PROMPT_VERSION
        if version in FORMAT_NAMES:
            raise ValueError(f"--prompt_version {version!r} is a format: give --format {version}")
        return Prompting(ARC24, grid_encoder or config_encoder(cfg) or DEFAULT_ENCODER, version, choice.source)
    if grid_encoder and grid_encoder != TEXT_FORMAT_ENCODER:
        raise ValueError(f"--grid_encoder {grid_encoder!r} does not apply to format {name} (its grids are rows of digits)")
    if prompt_version and prompt_version != name:
        raise ValueError(f"--prompt_version {prompt_version!r} does not apply to format {name} (it has its own prompt)")
    return Prompting(name, TEXT_FORMAT_ENCODER, name, choice.source)
