"""The stage commands of a run: the argv of every `python -m pipeline COMMAND` that KaggleRun
launches, built here from the config, and the check that each stage's own parser takes them.

A config reaches a stage three ways: the run's own keys (`ttft_steps`, `engine`, ...), the typed
mappings (`ttft_settings`, `sample_settings`: checked field by field when the config is loaded,
core/settings.py), and the pass-through flags (`ttft_extra_args`, `sample_extra_args`) for what
no setting covers. `command_problems` builds every command the config gives (with stand-in paths
and deadlines) and hands it to the stage's parser (`core/stage_args.PARSERS`), so a flag the stage
would refuse is an error when the notebook is built (`notebook_builder`), and again in the
notebook's first run cell, where the stage whose command is refused fails at once with that
line instead of exiting 2 in every shard. The parsers import nothing heavy: this runs before the
offline install.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.settings import (SCORED_METHODS, RescoreSettings, SampleSettings, TTFTSettings, VoteSettings,
                                    run_settings, stage_settings_argv, to_argv)
from pipeline.core.stage_args import PARSERS
from pipeline.kaggle.paths import SUBMISSION_NAME, Paths

# the `python -m pipeline COMMAND` each stage of the run launches: it builds their argv, and the
# notebook embeds exactly the modules these commands (and the run) import (notebook_builder)
STAGE_COMMANDS = {"first_shot": "sample", "ttft": "ttft", "sample": "sample", "rescore": "rescore",
                  "vote": "vote", "score": "score", "profile": "profile"}
# the stages a config passes flags of its own to: stage -> (typed settings key, pass-through key)
CONFIGURED = {"first_shot": ("sample_settings", "sample_extra_args"), "ttft": ("ttft_settings", "ttft_extra_args"),
              "sample": ("sample_settings", "sample_extra_args")}
FIRST_SHOT = "first_shot.jsonl"
SCORES = "scores.jsonl"        # RUN_DIR/scores.jsonl: the rescore stage's output, the vote's --scores
CHALLENGES = "challenges.json"   # RUN_DIR/challenges.json: the tasks the stages work on


def _typed(config, stage: str) -> list[str]:
    return stage_settings_argv(CONFIGURED[stage][0], getattr(config, CONFIGURED[stage][0]))


def _extra(config, stage: str) -> list:
    return list(getattr(config, CONFIGURED[stage][1]))


def first_shot_argv(config, paths: Paths, deadline: int, timing_log, extra: bool = True) -> list:
    """Greedy predictions without TTFT (`first_shot_predictions` per test input), the sampling's
    settings otherwise. `extra`: with the pass-through flags (without: what the run itself builds)."""
    values = {**run_settings(config, "sample_settings"), "predictions_per_task": config.first_shot_predictions,
              "temperature": 0.0}
    return ["--model", paths.model, "--dataset", paths.run_dir / CHALLENGES,
            *(["--adapter_path", paths.adapter] if paths.adapter else []), "--output", paths.run_dir / FIRST_SHOT,
            *to_argv(SampleSettings, _switches(values)), *_typed(config, "first_shot"), "--deadline", deadline,
            "--timing_log", timing_log, "--timing_stage", "first_shot", *(_extra(config, "first_shot") if extra else [])]


def ttft_argv(config, paths: Paths, steps: int, devices: Sequence[str], deadline: int, timing_log,
              extra: bool = True) -> list:
    values = {**run_settings(config, "ttft_settings"), "steps": steps}
    if config.ttft_copies is not None and steps == config.ttft_steps:
        values["steps"] = None  # the stage derives the same steps from the copies (settings.ttft_step_count)
    else:
        values["copies"] = values["epochs"] = None  # a step count of its own (a smoke run's fewer steps)
    return ["--model", paths.model, *(["--adapter_path", paths.adapter] if paths.adapter else []),
            "--dataset", paths.run_dir / CHALLENGES, "--output_dir", paths.scratch_dir / "ttft",
            *to_argv(TTFTSettings, _switches(values)), *_typed(config, "ttft"),
            "--deadline", deadline, "--devices", ",".join(devices), "--timing_log", timing_log,
            *(_extra(config, "ttft") if extra else [])]


def sample_argv(config, paths: Paths, dataset, output, adapters_dir: Path | None, predictions_per_task: int,
                deadline: int, timing_log, extra: bool = True) -> list:
    values = {**run_settings(config, "sample_settings"), "predictions_per_task": predictions_per_task}
    return ["--model", paths.model, "--dataset", dataset,
            *(["--adapters_dir", adapters_dir] if adapters_dir else []),
            *(["--adapter_path", paths.adapter] if paths.adapter else []), "--output", output,
            *to_argv(SampleSettings, _switches(values)), *_typed(config, "sample"), "--deadline", deadline,
            "--timing_log", timing_log, *(_extra(config, "sample") if extra else [])]


def rescore_argv(config, paths: Paths, dataset, predictions: Sequence, adapters_dir: Path | None, output,
                 deadline: int, timing_log) -> list:
    values = {"views": config.rescore_views, "format": config.format, "deterministic": config.deterministic}
    return ["--model", paths.model, "--dataset", dataset, "--predictions", *predictions,
            *(["--adapters_dir", adapters_dir] if adapters_dir else []),
            *(["--adapter_path", paths.adapter] if paths.adapter else []),
            *to_argv(RescoreSettings, _switches(values)), "--output", output, "--deadline", deadline,
            "--timing_log", timing_log, "--quiet"]


def vote_argv(config, paths: Paths, predictions: Sequence, output, scores: Path | None) -> list:
    argv = ["--predictions", *predictions, "--dataset", paths.run_dir / CHALLENGES, "--output", output]
    if scores is not None:  # test inputs the scores lack are voted v2
        argv += [*to_argv(VoteSettings, {"method": config.selection}), "--scores", scores]
    return argv


def _switches(values: Mapping) -> dict:
    """A switch left off is not written (`--no-deterministic` on every command says nothing)."""
    return {k: v for k, v in values.items() if v is not False}


# ----------------------------------------------------------------------------- the check

def configured_paths(config) -> Paths:
    """The config's own paths, not looked up on this machine (the build machine has no /kaggle)."""
    working = Path(config.working_dir)
    return Paths(input_root=Path(config.input_root), input_dir=Path(config.input_dir),
                 test_challenges=Path(config.input_dir) / config.test_challenges, working_dir=working,
                 submission=working / SUBMISSION_NAME, run_dir=working / config.run_dir,
                 scratch_dir=Path(config.scratch_dir), wheels_dir=Path(config.wheels_dir), model=config.model,
                 adapter=config.adapter)


def planned_commands(config, paths: Paths | None = None) -> dict[str, tuple[list, list]]:
    """{stage: (argv without the pass-through flags, the whole argv)} of every stage a config passes
    flags to, as the run builds them (stand-in deadline; the main sampling with TTFT's adapters)."""
    p = paths or configured_paths(config)
    log = p.run_dir / "timing.jsonl"
    adapters = p.scratch_dir / "ttft" / "adapters"
    build = {
        "first_shot": lambda extra: first_shot_argv(config, p, 60, log, extra),
        "ttft": lambda extra: ttft_argv(config, p, config.ttft_steps, config.devices, 60, log, extra),
        "sample": lambda extra: sample_argv(config, p, p.run_dir / CHALLENGES, p.run_dir / "predictions.jsonl",
                                            adapters, config.predictions_per_task, 60, log, extra),
    }
    return {stage: (make(False), make(True)) for stage, make in build.items()}


def runs_stage(config, stage: str) -> bool:
    """Whether the config's run launches `stage` at all: KaggleRun skips the first shot when
    `first_shot_predictions` is 0 and rescoring when `rescore_views` is 0."""
    return {"first_shot": config.first_shot_predictions >= 1, "rescore": config.rescore_views >= 1}.get(stage, True)


def launched_commands(config, paths: Paths | None = None) -> dict[str, tuple[str, list | None]]:
    """{stage: (command, argv)} of every stage command the config's run may launch, as the run
    builds them (stand-in deadline; the main sampling with TTFT's adapters, the vote with the
    scores a rescore leaves); argv None where the run passes no config option (score, profile).
    The smoke run's commands differ only in counts.  The notebook embeds what these reach."""
    p = paths or configured_paths(config)
    log = p.run_dir / "timing.jsonl"
    planned = {stage: whole for stage, (_, whole) in planned_commands(config, p).items()}
    predictions = [p.run_dir / FIRST_SHOT, p.run_dir / "predictions.jsonl"]
    adapters = p.scratch_dir / "ttft" / "adapters"
    scores = p.run_dir / SCORES if runs_stage(config, "rescore") and config.selection in SCORED_METHODS else None
    argvs = {**planned,
             "rescore": rescore_argv(config, p, p.run_dir / CHALLENGES, predictions, adapters, p.run_dir / SCORES,
                                     60, log),
             "vote": vote_argv(config, p, predictions, p.run_dir / "vote_submission.json", scores),
             "score": None, "profile": None}
    return {stage: (STAGE_COMMANDS[stage], argvs[stage]) for stage in STAGE_COMMANDS if runs_stage(config, stage)}


class _Refused(Exception):
    pass


def parse_problem(command: str, argv: Sequence) -> str:
    """argparse's message when `python -m pipeline COMMAND` would refuse `argv` ("" when it takes it)."""
    parser = PARSERS[command]()

    def refuse(message):
        raise _Refused(message)

    parser.error = refuse
    try:
        parser.parse_args([os.fspath(a) if isinstance(a, Path) else str(a) for a in argv])
    except _Refused as e:
        return str(e)
    except SystemExit:  # -h / --help among the flags: the stage would print its help and do nothing
        return "it asks for the stage's --help"
    return ""


def command_problems(config, paths: Paths | None = None) -> dict[str, str]:
    """{stage: one-line problem} for every stage whose command its own parser refuses, naming the
    config key to blame (the pass-through flags', else the typed mapping's) and argparse's message."""
    problems = {}
    for stage, (own, whole) in planned_commands(config, paths).items():
        command = STAGE_COMMANDS[stage]
        typed, extra = CONFIGURED[stage]
        problem = parse_problem(command, own)
        key = typed if problem else extra
        problem = problem or parse_problem(command, whole)
        if problem:
            problems[stage] = f"config key {key!r}: `python -m pipeline {command}` refuses it: {problem}"
    return problems
