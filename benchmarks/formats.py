"""Tokens per cell of each prompt format on the ARC-AGI-1 evaluation set, with a given tokenizer.

    .venv/bin/python benchmarks/formats.py [--tokenizer embedded] [--output runs/formats.json]

For every grid of the 400 evaluation tasks (train and test, inputs and outputs): the tokens of
the grid as each format writes it (`arc24`: the project's default encoder, shape header and row
numbers included; `architects`, `nvarc`: rows of digits, `pipeline/core/formats.py`), over its cells.
The physical limit of a one-token-per-cell vocabulary is 1 per cell plus 1 per row (the row
separator), printed beside.  Also the tokens of a whole task prompt (all train pairs and the
first test input) per cell, which adds each format's fixed text.  Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder  # noqa: E402
from pipeline.core.formats import FORMATS  # noqa: E402
from pipeline.core.models import load_tokenizer, resolve_model_path  # noqa: E402
from pipeline.core.prompts import build_inference_prompt  # noqa: E402
from pipeline.core.model_cfg import DEFAULT_PROMPT_VERSION  # noqa: E402
from pipeline.core.tasks import load_tasks  # noqa: E402

EVALUATION = REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"


def measure(tasks: dict, tokenizer) -> dict:
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    grids = [g for t in tasks.values() for split in ("train", "test") for p in t[split] for g in p.values()]
    cells = sum(len(g) * len(g[0]) for g in grids)
    rows = sum(len(g) for g in grids)
    writers = {"arc24": encoder.to_text, **{name: f.grid_text for name, f in FORMATS.items()}}
    eos = tokenizer.eos_token or ""
    prompts = {
        "arc24": lambda t: build_inference_prompt(t, encoder, tokenizer, DEFAULT_PROMPT_VERSION, 0),
        **{name: (lambda t, f=f: f.prompt(t, 0, eos)) for name, f in FORMATS.items()},
    }
    task_cells = sum(len(g) * len(g[0]) for t in tasks.values()
                     for g in [*(v for p in t["train"] for v in p.values()), t["test"][0]["input"]])
    rows_out = {}
    for name, write in writers.items():
        grid_tokens = sum(count(write(g)) for g in grids)
        prompt_tokens = sum(count(prompts[name](t)) for t in tasks.values())
        rows_out[name] = {"grid_tokens_per_cell": round(grid_tokens / cells, 3),
                          "prompt_tokens_per_cell": round(prompt_tokens / task_cells, 3)}
    return {"grids": len(grids), "cells": cells, "physical_limit_per_cell": round((cells + rows) / cells, 3),
            "formats": rows_out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default="embedded", help="a model directory or 'embedded' (SmolLM2, full vocabulary)")
    p.add_argument("--output", help="write the result as JSON here")
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(resolve_model_path(args.tokenizer))
    start = time.time()
    result = measure(load_tasks(EVALUATION), tokenizer)
    result.update(tokenizer=args.tokenizer, vocabulary=len(tokenizer), date=time.strftime("%Y-%m-%d"),
                  seconds=round(time.time() - start, 1))
    lines = ["| format | grid tokens / cell | task prompt tokens / cell |", "|---|---|---|"]
    lines += [f"| {name} | {r['grid_tokens_per_cell']} | {r['prompt_tokens_per_cell']} |"
              for name, r in result["formats"].items()]
    lines.append(f"| one token per cell + one per row (limit) | {result['physical_limit_per_cell']} | |")
    print("\n".join(lines))
    print(f"{result['grids']} grids, {result['cells']} cells; tokenizer {args.tokenizer} ({result['vocabulary']} tokens)")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
