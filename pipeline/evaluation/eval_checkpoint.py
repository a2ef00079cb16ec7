"""`python -m pipeline eval-checkpoint`: sample, vote and score a fine-tuned checkpoint.

The sampling stage run on a checkpoint (a peft adapter on its base model, or a full model) with
the encoder and prompt version of its cfg.json, then voting and every metric against the known
solutions.  Kept apart from `sampling` so that the sampling stage imports no voting, metrics or
submission code.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.settings import DEFAULT_SELECTION, SampleSettings, settings_from
from pipeline.sampling.vllm_engine import read_adapter_config
from pipeline.core.files import write_json_atomic
from pipeline.evaluation.metrics import format_summary, score_run
from pipeline.evaluation.score import load_solutions
from pipeline.core.predictions import read_predictions
from pipeline.core.model_cfg import SHIPPED_ADAPTER, find_run_config, shipped_adapter
from pipeline.sampling.sample import add_sampling_args, exit_code_after, vllm_options_from, sample
from pipeline.core.submission import build_submission, write_submission
from pipeline.core.tasks import load_tasks, select_tasks, without_test_outputs
from pipeline.selection.vote import select_attempts


def dataset_label(path: str | os.PathLike) -> str:
    """`data/arc-agi-1/arc-agi_evaluation_challenges.json` -> `arc-agi_evaluation`."""
    name = Path(path).name
    for suffix in (".json", "_challenges"):
        name = name.removesuffix(suffix)
    return name


def vote_and_score(tasks: Mapping, records: list, solutions: Mapping | None, submission_path,
                   method: str = DEFAULT_SELECTION) -> dict:
    """Voting v2 into a complete submission.json; with solutions, the metrics of the raw
    predictions (`raw`, an `evaluate` result), of the two attempts (`vote`) and the Kaggle score."""
    stats = {}
    submission = build_submission(tasks, select_attempts(records, 2, method), 2, stats)
    write_submission(submission_path, submission, tasks)
    out = {"submission": submission, "submission_stats": stats}
    if solutions:
        out.update(score_run(records, submission, {t: s for t, s in solutions.items() if t in tasks}, method))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline eval-checkpoint",
        description="Sample, vote and evaluate a fine-tuned checkpoint (a peft adapter or a full model dir) "
                    "with the encoder and prompt version of its cfg.json (in the checkpoint or its parent). "
                    "Outputs are cached in <checkpoint parent>/evaluations/<checkpoint name>/ and reused.")
    parser.add_argument("checkpoint", nargs="?", default=str(shipped_adapter()),
                        help=f"adapter checkpoint (adapter_config.json) or full model directory (default: the "
                             f"shipped ARC adapter, {SHIPPED_ADAPTER}, on the embedded model)")
    parser.add_argument("--dataset", default="data/arc-agi-1/arc-agi_evaluation_challenges.json",
                        help="tasks with solutions (a *_challenges.json picks up its *_solutions.json)")
    parser.add_argument("--model", help="base model of an adapter checkpoint (default: cfg.json's model_path/model, "
                                        "else the adapter's base_model_name_or_path)")
    parser.add_argument("--output_dir", help="where to cache outputs (default: beside the checkpoint)")
    add_sampling_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = Path(args.checkpoint).expanduser()
    try:
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"checkpoint {checkpoint} is not a directory")
        cfg, cfg_path = find_run_config(checkpoint)
        is_adapter = (checkpoint / "adapter_config.json").is_file()
        if is_adapter:
            base = args.model or cfg.get("model_path") or cfg.get("model") \
                or read_adapter_config(checkpoint).get("base_model_name_or_path")
            if not base:
                raise ValueError(f"{checkpoint}: cannot tell the base model (no --model, no model_path in cfg.json)")
            model, adapter = base, checkpoint
        else:
            model, adapter = str(checkpoint), None
        out_dir = Path(args.output_dir) if args.output_dir else checkpoint.resolve().parent / "evaluations" / checkpoint.name
        name = f"{dataset_label(args.dataset)}_x{args.predictions_per_task:03d}"
        if args.temperature:
            name += f"_t{args.temperature:.0e}"
        if args.seed:
            name += f"_s{args.seed}"
        if args.task_ids or args.first_n:
            picked = ",".join(args.task_ids or []) + (f"first{args.first_n}" if args.first_n else "")
            name += "_" + hashlib.blake2b(picked.encode(), digest_size=3).hexdigest()
        predictions = out_dir / f"{name}.predictions.jsonl"
        tasks = select_tasks(load_tasks(args.dataset), args.task_ids, args.first_n)
        solutions = {t: s for t, s in load_solutions(args.dataset).items() if t in tasks}
        print(f"eval-checkpoint: {checkpoint} ({'adapter on ' + str(model) if is_adapter else 'full model'}), "
              f"cfg {cfg_path or 'none'}, {len(tasks)} tasks -> {out_dir}")
        result = sample(model, without_test_outputs(tasks), predictions, adapter_path=adapter,
                        vllm_options=vllm_options_from(args), settings=settings_from(SampleSettings, args))
        if result.abandoned:
            return exit_code_after(result)
        records = read_predictions(predictions)
        scored = vote_and_score(tasks, records, solutions, out_dir / f"{name}.submission.json")
        write_json_atomic(out_dir / f"{name}.metrics.json",
                          {"checkpoint": str(checkpoint), "dataset": str(args.dataset),
                           "predictions_per_task": args.predictions_per_task, "raw": scored.get("raw"),
                           "vote": scored.get("vote"), "kaggle": scored.get("kaggle")}, indent=1)
    except (OSError, ValueError) as e:
        print(f"eval-checkpoint: {e}", file=sys.stderr)
        return 1
    print(f"predictions ({args.predictions_per_task} per test input): {format_summary(scored['raw'])}")
    print(f"vote (2 attempts, voting v2):   {format_summary(scored['vote'])}")
    k = scored["kaggle"]
    print(f"kaggle score: {100 * k['score']:.2f}% ({k['n_correct']}/{k['n_outputs']} test outputs)")
    print(f"outputs: {predictions}, {out_dir / (name + '.submission.json')}, {out_dir / (name + '.metrics.json')}")
    return 0
