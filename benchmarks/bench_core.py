"""Core library benchmark: tokens per grid cell per encoder, and the CPU cost of the pure parts.

    .venv/bin/python benchmarks/bench_core.py [--tasks 100] [--predictions 96]

1. For the shipped tokenizer (SmolLM2, every digit one token), tokens per grid cell of each
   encoder over every grid of the ARC-AGI-1 evaluation set.
2. For `--tasks` evaluation tasks × `--predictions` predictions per test input, the wall time of
   each pure step of sampling post-processing: draw the augmentations and augment the task,
   build the inference prompts (chat template included), encode the planted answers, parse them,
   invert the augmentation, and vote (v2).  Everything measured in this run; the voting target
   is "well under a second".
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.augment import inference_augmentations  # noqa: E402
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder  # noqa: E402
from pipeline.core.models import load_tokenizer  # noqa: E402
from pipeline.core.prompts import build_inference_prompt, parse_response, grid_prefix  # noqa: E402
from pipeline.core.settings import DEFAULT_SELECTION  # noqa: E402
from pipeline.core.tasks import load_tasks, select_tasks  # noqa: E402
from pipeline.selection.rules import rank_candidates  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
ENCODERS = [
    "MinimalGridEncoder()",
    "GridWithSeparationEncoder('|')",
    "RepeatNumberEncoder(3)",
    "GridCodeBlockEncoder(RowNumberEncoder(MinimalGridEncoder()))",
    "GridShapeEncoder(MinimalGridEncoder())",
    DEFAULT_ENCODER,
    "GridShapeEncoder(ReplaceNumberEncoder(MinimalGridEncoder()))",
    "GridShapeEncoder(RowNumberEncoder(RepeatNumberEncoder()))",
]


def tokens_per_cell(tasks, tokenizer) -> list[tuple[str, float]]:
    grids = [g for t in tasks.values() for split in ("train", "test") for p in t[split] for g in p.values()]
    cells = sum(len(g) * len(g[0]) for g in grids)
    rows = []
    for spec in ENCODERS:
        encoder = create_grid_encoder(spec)
        texts = [encoder.to_text(g) for g in grids]
        n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        rows.append((spec, n_tokens / cells))
    return rows


def pure_pipeline_times(tasks, tokenizer, n_predictions: int) -> dict[str, float]:
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    rng = np.random.default_rng(0)
    prefix = grid_prefix(encoder)
    times = dict.fromkeys(["augment", "prompt", "encode", "parse", "invert", "vote"], 0.0)
    records = []
    for task_id, task in tasks.items():
        t0 = time.perf_counter()
        augs = inference_augmentations(n_predictions, rng, len(task["train"]))
        views = [aug.apply_task(task) for aug in augs]
        t1 = time.perf_counter()
        for view in views:
            for i in range(len(view["test"])):
                build_inference_prompt(view, encoder, tokenizer, "output-from-examples-v1", i)
        t2 = time.perf_counter()
        texts = [[encoder.to_text(p["output"])[len(prefix):] for p in view["test"]] for view in views]
        t3 = time.perf_counter()
        parsed = [[parse_response(text, encoder) for text in view_texts] for view_texts in texts]
        t4 = time.perf_counter()
        for k, (aug, grids) in enumerate(zip(augs, parsed)):
            for i, grid in enumerate(grids):
                records.append({"task_id": task_id, "test_index": i, "sample_index": k, "grid": aug.invert_grid(grid),
                                "cumulative_logprob": -float(k % 5), "n_tokens": 10})
        t5 = time.perf_counter()
        for key, dt in zip(["augment", "prompt", "encode", "parse", "invert"], [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]):
            times[key] += dt
    t0 = time.perf_counter()
    ranked = rank_candidates(records, method=DEFAULT_SELECTION)
    times["vote"] = time.perf_counter() - t0
    # every planted answer must survive the round trip and win the vote
    assert all(task["test"][i]["output"] == ranked[(tid, i)][0]["grid"]
               for tid, task in tasks.items() for i in range(len(task["test"])))
    times["n_records"] = len(records)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--predictions", type=int, default=96)
    args = parser.parse_args(argv)
    tasks = load_tasks(DATA)
    tokenizer = load_tokenizer("embedded")

    print(f"tokens per grid cell, SmolLM2 tokenizer, {len(tasks)} ARC-AGI-1 evaluation tasks (all grids)")
    baseline = None
    for spec, tpc in tokens_per_cell(tasks, tokenizer):
        baseline = baseline or tpc
        print(f"  {tpc:5.3f}  ({tpc / baseline:4.2f}x Minimal)  {spec}")

    subset = select_tasks(tasks, first_n=args.tasks)
    times = pure_pipeline_times(subset, tokenizer, args.predictions)
    n = times.pop("n_records")
    total = sum(times.values())
    print(f"\n{len(subset)} tasks x {args.predictions} predictions per test input = {n} predictions")
    for key, seconds in times.items():
        print(f"  {key:<8} {seconds:7.3f} s  {1e6 * seconds / n:8.1f} us/prediction  {100 * seconds / total:5.1f} %")
    print(f"  {'total':<8} {total:7.3f} s   voting share of the pure steps: {times['vote'] / total:.1%};"
          f" voting target < 1 s: {'met' if times['vote'] < 1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
