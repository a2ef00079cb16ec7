"""`python -m pipeline STAGE [args]`: one entry point for every stage.

Stages are imported only when run, so `--help` is instant, a stage that needs torch or vLLM
does not slow down one that needs neither, and a copy of the package holding only some stages (the
Kaggle notebook's) runs those and names the missing one for the others.
"""
from __future__ import annotations

import importlib
import sys

# stage -> (module:function taking argv and returning an exit code, one-line summary)
STAGES = {
    "validate": ("pipeline.core.validate:main", "check task files; one line per problem, non-zero exit on any"),
    "render": ("pipeline.core.render:main", "draw tasks (and predictions/attempts) to PNG"),
    "vote": ("pipeline.selection.vote:main", "predictions JSONL -> submission.json (voting v1/v2)"),
    "evaluate": ("pipeline.evaluation.evaluate:main", "predictions JSONL + solutions -> all metrics"),
    "score": ("pipeline.evaluation.score:main", "submission.json + solutions -> official Kaggle score"),
    "combine": ("pipeline.selection.combine:main", "combine two submissions (attempt preference)"),
    "convert-model": ("pipeline.core.convert_model:main", "convert the embedded SmolLM2 GGUF (or any GGUF) to a transformers dir"),
    "build-training-data": ("pipeline.training.build_training_data:main", "the ARC fine-tuning set without ARC-AGI-1 evaluation tasks"),
    "finetune": ("pipeline.training.finetune:main", "multi-task LoRA / full fine-tuning on ARC prompts"),
    "export-adapter": ("pipeline.training.export_adapter:main", "a finetune checkpoint -> shippable 16-bit adapter folder with model card"),
    "shrink-vocab": ("pipeline.training.shrink_vocab:main", "keep only the tokens a prompt format uses (smaller embedding and LM head)"),
    "merge": ("pipeline.training.merge:main", "merge a LoRA adapter into its base model"),
    "ttft": ("pipeline.ttft.ttft:main", "test-time fine-tuning: one adapter per task within a deadline"),
    "sample": ("pipeline.sampling.sample:main", "augmented sampling (vLLM or transformers) -> predictions JSONL"),
    "rescore": ("pipeline.selection.rescore:main", "score every candidate under augmented views (for poe / nvarc selection)"),
    "eval-checkpoint": ("pipeline.evaluation.eval_checkpoint:main", "sample + vote + evaluate a fine-tuned checkpoint"),
    "dry-run": ("pipeline.kaggle.dry_run:main", "TTFT -> sampling -> voting -> scoring on a few real tasks"),
    "generate-inputs": ("pipeline.inputs.generate_inputs:main", "generate and validate new input grids per task"),
    "report": ("pipeline.evaluation.report:main", "predictions + submission + solutions -> Markdown report with pictures"),
    "profile": ("pipeline.planning.profile:main", "timing table of a run directory"),
    "plan": ("pipeline.planning.plan:main", "project a competition run's time and GPU memory (profile or datasheet)"),
}


def usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: python -m pipeline STAGE [-h] [args...]", "", "stages:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in STAGES.items()]
    lines += ["", "Run `python -m pipeline STAGE --help` for a stage's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name = STAGES[stage][0].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not f"{module_name}.".startswith(f"{e.name}."):
            raise  # a module the stage imports is missing: its own traceback says which
        # the Kaggle notebook embeds only the modules its run imports (notebook_builder/build.py)
        print(f"stage {stage!r}: {module_name} is not in this copy of the package", file=sys.stderr)
        return 2
    return int(getattr(module, func_name)(rest) or 0)


if __name__ == "__main__":
    from pipeline.core.timing import mark_cli_process
    mark_cli_process()  # a real stage process: its start-up is timed (not when main() runs in-process)
    sys.exit(main())
