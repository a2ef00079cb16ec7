"""The command lines of the stages a run config reaches with flags of its own (`ttft`, `sample`).

Their parsers live here, not in the stage modules, because the Kaggle run checks every stage
command it will launch with them before the offline install (`kaggle/commands.py`): this module
and what it imports are the standard library and light modules of the package only (no torch,
transformers, vLLM or jinja2; tests/kaggle/test_stage_commands.py runs it with those blocked).
The settings flags are generated from the dataclasses of `core/settings.py` (`add_arguments`).
"""
from __future__ import annotations

import argparse

from pipeline.core.settings import SampleSettings, TTFTModelSettings, TTFTSettings, VLLMSettings, add_arguments
from pipeline.core.timing import TIMING_FILE


def ttft_parser() -> argparse.ArgumentParser:
    """`python -m pipeline ttft`'s parser (pipeline/ttft/ttft.py)."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline ttft",
        description="Test-time fine-tuning: one LoRA adapter per task, trained on leave-one-out samples of its "
                    "train pairs, within a deadline. Writes OUT/adapters/<task_id>/ (adapter + record.json), "
                    "OUT/summary.json, OUT/cfg.json. Exit 0 whenever the stage ran (tasks may be skipped or "
                    "failed: see their records).")
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="'embedded', a transformers directory or a .gguf file")
    g.add_argument("--adapter_path", help="continue training this LoRA adapter (default: a fresh LoRA)")
    add_arguments(g, TTFTModelSettings)  # dtype, prompting and the fresh LoRA's settings (core/settings.py)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, help="challenges file (test outputs, if any, are never used)")
    g.add_argument("--task_ids", nargs="+", help="only these tasks")
    g.add_argument("--first_n", type=int, help="only the first N tasks (after --task_ids)")
    g = p.add_argument_group("training")
    add_arguments(g, TTFTSettings)  # one flag per setting, with its default and help (pipeline/core/settings.py)
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", required=True)
    g.add_argument("--deadline", type=float, help="seconds from the start of the stage by which it must be done")
    g.add_argument("--devices", default="auto", help="cpu | auto (every GPU, else cpu) | cuda:0,cuda:1 | cpu,cpu")
    g.add_argument("--timing_log", help=f"timing records (default OUT/{TIMING_FILE})")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """The sampling and vLLM flags (`sample` and `eval-checkpoint` both take them)."""
    g = parser.add_argument_group("sampling")
    add_arguments(g, SampleSettings)  # one flag per setting, with its default and help (pipeline/core/settings.py)
    g.add_argument("--task_ids", nargs="+", metavar="ID", help="only these tasks")
    g.add_argument("--first_n", type=int, metavar="N", help="only the first N tasks (after --task_ids)")
    add_arguments(parser.add_argument_group("vLLM"), VLLMSettings)


def sample_parser() -> argparse.ArgumentParser:
    """`python -m pipeline sample`'s parser (pipeline/sampling/sample.py)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline sample",
        description="Augmented sampling: predictions_per_task augmented prompts per test input, generated "
                    "with vLLM or transformers (per-task LoRA adapters), parsed and mapped back to the task's "
                    "frame, appended to a JSONL predictions file (resumable).")
    parser.add_argument("--model", required=True, help="'embedded', a transformers directory or a .gguf")
    parser.add_argument("--dataset", required=True, help="tasks file (challenges) or directory")
    parser.add_argument("--adapters_dir", help="per-task adapters: ADAPTERS_DIR/<task_id>/ (from the TTFT stage)")
    parser.add_argument("--adapter_path", help="adapter for tasks without their own (default: the base model)")
    parser.add_argument("--output", required=True, help="predictions JSONL (appended; resumes)")
    parser.add_argument("--deadline", type=float, help="wall seconds this stage may use; then it stops cleanly (exit 0)")
    parser.add_argument("--timing_log", help="timing JSONL to append to (pipeline/core/timing.py records)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--timing_stage", default="sample",
                        help="stage name of the timing records (the notebook's first shot says first_shot, so "
                             "profile and plan keep it apart from the main sampling)")
    add_sampling_args(parser)
    return parser


# `python -m pipeline COMMAND` -> its parser, for the commands a run config passes flags to
PARSERS = {"ttft": ttft_parser, "sample": sample_parser}
