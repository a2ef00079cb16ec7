"""One config system: stage CLIs generated from their settings dataclass, run-config defaults
taken from the stages', argv built from the same fields."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

from pipeline.core import settings as config
from pipeline.ttft import ttft
from pipeline.core.settings import (RESCORE, SAMPLE, TTFT, VOTE, RescoreSettings, SampleSettings, SubmissionConfig,
                             TTFTSettings, VoteSettings, add_arguments, default_of, load_config, settings_from,
                             to_argv)

REPO = Path(__file__).resolve().parents[2]


def _sample_parser(sampling) -> argparse.ArgumentParser:
    """The sample stage's settings flags as its main() adds them."""
    parser = argparse.ArgumentParser()
    sampling.add_sampling_args(parser)
    return parser


# Every stage whose CLI is generated: (module, its parser, its settings dataclass, the argv its
# required flags need).
GENERATED_STAGES = {
    "ttft": ("pipeline.ttft.ttft", lambda m: m.build_parser(), TTFTSettings,
             ["--model", "m", "--dataset", "d", "--output_dir", "o"]),
    "sample": ("pipeline.sampling.sample", _sample_parser, SampleSettings, []),
    "eval-checkpoint": ("pipeline.evaluation.eval_checkpoint", lambda m: m.build_parser(), SampleSettings, []),
    "finetune": ("pipeline.training.finetune", lambda m: m.build_parser(), "FinetuneConfig", []),
    "rescore": ("pipeline.selection.rescore", lambda m: m.build_parser(), RescoreSettings,
                ["--model", "m", "--dataset", "d", "--predictions", "p.jsonl", "--output", "o.jsonl"]),
    "vote": ("pipeline.selection.vote", lambda m: m.build_parser(), VoteSettings,
             ["--predictions", "p.jsonl", "--dataset", "d", "--output", "o.json"]),
}


def generated_flags(cls) -> set[str]:
    """Every spelling the helper can generate for `cls`'s fields (dashed alias, `--no-`)."""
    names = {n for f in dataclasses.fields(cls) for n in (f.name, f.name.replace("_", "-"))}
    return {f"--{n}" for n in names} | {f"--no-{n}" for n in names}


def hand_written_flags(module) -> set[str]:
    """The option strings a module passes to `add_argument` itself, anywhere in its source."""
    flags = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return flags


@pytest.mark.parametrize("stage", sorted(GENERATED_STAGES))
def test_every_generated_stage_cli_takes_its_defaults_from_its_dataclass_and_names_no_flag_by_hand(stage):
    """For each stage CLI built by `add_arguments`: every field is a flag, the parsed defaults are
    the dataclass's (so the settings read back equal `cls()`), and the module adds none of those
    flags itself (a hand-written `add_argument("--views", default=8)` would be a second default)."""
    module_name, make_parser, cls, required = GENERATED_STAGES[stage]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls) if isinstance(cls, str) else cls
    parser = make_parser(module)
    args = parser.parse_args(required)
    for f in dataclasses.fields(cls):
        assert f"--{f.name}" in parser._option_string_actions, f"{stage}: --{f.name} not generated"
        assert getattr(args, f.name) == default_of(f), f"{stage}: --{f.name}"
    assert settings_from(cls, args) == cls()
    assert not hand_written_flags(module) & generated_flags(cls), stage


def test_the_orchestrator_writes_no_generated_flag_by_hand():
    """KaggleRun's argv for ttft, sample, rescore and vote (built in kaggle/commands.py) name their
    settings only through `to_argv`."""
    from pipeline.core.settings import TTFTModelSettings, VLLMSettings
    from pipeline.kaggle import commands, run as kaggle_run

    for module in (kaggle_run, commands):
        constants = {node.value for node in ast.walk(ast.parse(inspect.getsource(module)))
                     if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        for cls in (TTFTSettings, TTFTModelSettings, SampleSettings, VLLMSettings, RescoreSettings, VoteSettings):
            assert not constants & generated_flags(cls), (module.__name__, cls.__name__)


def test_run_config_defaults_refer_to_the_stages_defaults_and_write_none_again():
    """A SubmissionConfig field that shares a stage's default is written as that default
    (`= TTFT.steps`), not as a second literal; the ones whose meaning differs say so."""
    source = inspect.getsource(SubmissionConfig)
    shared = {"ttft_steps": "TTFT.steps", "ttft_copies": "TTFT.copies", "ttft_epochs": "TTFT.epochs",
              "ttft_learning_rate": "TTFT.learning_rate",
              "ttft_batch_size": "TTFT.batch_size", "ttft_max_seq_len": "TTFT.max_seq_len",
              "engine": "SAMPLE.engine", "temperature": "SAMPLE.temperature", "selection": "VOTE.method"}
    for name, expression in shared.items():
        assert re.search(rf"^ +{name}: [^=\n]+= {re.escape(expression)}\b", source, re.M), name
    run = SubmissionConfig()
    assert run.selection == VOTE.method and (run.engine, run.temperature) == (SAMPLE.engine, SAMPLE.temperature)
    assert run.ttft_steps == TTFT.steps
    # different meanings, said beside the field: 0 views is "off"; the notebook samples as the original did
    assert re.search(r"^ +rescore_views: int = 0 +#.*not the stage's", source, re.M)
    assert re.search(r"^ +predictions_per_task: int = 96 +#.*stage's own default", source, re.M)


def test_the_orchestrators_rescore_and_vote_commands_parse_back_to_their_settings(tmp_path, monkeypatch):
    """The argv KaggleRun builds for rescore and vote (captured in place of the subprocess) is read
    by the stages' own parsers as the run config's settings."""
    from pipeline.kaggle import run as kaggle_run
    from pipeline.selection import rescore as scoring
    from pipeline.selection import vote as voting
    from pipeline.kaggle.supervisor import StageResult

    for selection in ("nvarc", "poe", "v2"):
        run = kaggle_run.KaggleRun({"input_dir": str(tmp_path), "working_dir": str(tmp_path / selection),
                                    "scratch_dir": str(tmp_path / "scratch"), "devices": ["cpu"],
                                    "rescore_views": 3, "selection": selection}, env={}, cwd=tmp_path)
        run.paths.run_dir.mkdir(parents=True)
        run.challenges = run.work = {"t1": {"train": [], "test": [{"input": [[1]]}]}}
        (run.paths.run_dir / "predictions.jsonl").write_text(json.dumps(
            {"task_id": "t1", "test_index": 0, "grid": [[1]], "cumulative_logprob": -1.0, "n_tokens": 2}) + "\n")
        argvs = {}

        def stand_in(stage, argv_list, soft, logs, envs, command=None):
            argvs[stage] = [str(a) for a in argv_list[0]]
            (run.paths.run_dir / kaggle_run.SCORES).touch()  # the rescore file the vote then reads
            return [StageResult(stage, "failed", reason="stand-in")]

        monkeypatch.setattr(run, "_run", stand_in)
        run.rescore()
        run.vote()
        rescore_args = scoring.build_parser().parse_args(argvs["rescore"])
        assert settings_from(RescoreSettings, rescore_args) == dataclasses.replace(RESCORE, views=3)
        vote_args = voting.build_parser().parse_args(argvs["vote"])
        assert settings_from(VoteSettings, vote_args) == dataclasses.replace(VOTE, method=selection)
        assert (vote_args.scores is not None) == (selection != "v2"), selection


def test_ttft_cli_defaults_are_its_settings_defaults_and_written_nowhere_else():
    args = ttft.build_parser().parse_args(["--model", "m", "--dataset", "d", "--output_dir", "o"])
    assert settings_from(TTFTSettings, args) == TTFTSettings()
    for f in dataclasses.fields(TTFTSettings):
        assert getattr(args, f.name) == f.default, f.name
    # the flags are generated: ttft's parser names none of them itself
    source = inspect.getsource(ttft.build_parser)
    for f in dataclasses.fields(TTFTSettings):
        assert f'"--{f.name}"' not in source, f.name
    # the run config and the stage's own config start from the same defaults
    run, stage = SubmissionConfig(), ttft.TTFTConfig(model="m", output_dir="o", lora={})
    assert (run.ttft_steps, run.ttft_learning_rate, run.ttft_batch_size, run.ttft_max_seq_len) == (
        config.TTFT.steps, config.TTFT.learning_rate, config.TTFT.batch_size, config.TTFT.max_seq_len)
    for f in dataclasses.fields(TTFTSettings):
        if f.name not in ("min_steps", "format"):  # None on the CLI: resolved by config_from_args
            assert getattr(stage, f.name) == f.default, f.name
    # the format is no default: the embedded SmolLM2's chat template says arc24 (a missing model says nothing)
    resolved = ttft.config_from_args(ttft.build_parser().parse_args(["--model", "embedded", "--dataset", "d",
                                                                     "--output_dir", "o"]))
    assert (stage.min_steps, stage.format) == (resolved.min_steps, resolved.format) == (30, "arc24")
    with pytest.raises(ttft.ConfigError, match="model path .m. does not exist"):
        ttft.config_from_args(args)


def test_argv_from_settings_parses_back_to_the_same_settings():
    values = {"steps": 16, "learning_rate": 4e-4, "gradient_checkpointing": True, "min_steps": None,
              "lr_scheduler_type": "cosine"}
    parser = argparse.ArgumentParser()
    add_arguments(parser, TTFTSettings)
    parsed = settings_from(TTFTSettings, parser.parse_args(to_argv(TTFTSettings, values)))
    assert parsed == dataclasses.replace(TTFTSettings(), **values)
    with pytest.raises(KeyError, match="no setting 'step'"):
        to_argv(TTFTSettings, {"step": 3})
    with pytest.raises(SystemExit):  # choices come from the field
        parser.parse_args(["--lr_scheduler_type", "triangle"])


def test_the_orchestrators_ttft_command_is_accepted_by_the_stage():
    """KaggleRun builds the TTFT argv from TTFTSettings: the stage's own parser reads it back."""
    c = load_config(REPO / "kaggle" / "configs" / "local.yaml")
    argv = to_argv(TTFTSettings, {"steps": c.ttft_steps, "learning_rate": c.ttft_learning_rate,
                                  "batch_size": c.ttft_batch_size, "max_seq_len": c.ttft_max_seq_len})
    args = ttft.build_parser().parse_args(["--model", "m", "--dataset", "d", "--output_dir", "o", *argv])
    assert (args.steps, args.learning_rate, args.batch_size, args.max_seq_len) == (
        c.ttft_steps, c.ttft_learning_rate, c.ttft_batch_size, c.ttft_max_seq_len)


def test_load_config_knows_the_hardware_and_refuses_unknown_keys():
    assert load_config({"hardware": "L4"}).hardware == "L4"
    assert load_config(REPO / "kaggle" / "configs" / "arc-prize-2025.yaml").hardware == "L4"
    with pytest.raises(ValueError, match="unknown config key\\(s\\) hardwar "):
        load_config({"hardwar": "L4"})
    with pytest.raises(ValueError, match="'ttft_steps'"):
        load_config({"ttft_steps": "many"})


def test_sampling_cli_defaults_are_its_settings_defaults_and_the_notebook_argv_parses():
    from pipeline.sampling import sample as sampling

    parser = argparse.ArgumentParser()
    sampling.add_sampling_args(parser)
    args = parser.parse_args([])
    assert settings_from(SampleSettings, args) == SAMPLE
    source = inspect.getsource(sampling.add_sampling_args)
    for f in dataclasses.fields(SampleSettings):
        assert f'"--{f.name}"' not in source, f.name
    run = SubmissionConfig()
    assert (run.engine, run.temperature) == (SAMPLE.engine, SAMPLE.temperature)
    # what KaggleRun passes for the first shot and the main sampling reads back as the same settings
    values = {"predictions_per_task": 96, "engine": "transformers", "temperature": 0.0}
    parsed = settings_from(SampleSettings, parser.parse_args(to_argv(SampleSettings, values)))
    assert parsed == dataclasses.replace(SAMPLE, **values)


def test_the_dispatcher_table_resolves_every_stage_and_each_answers_help(capsys):
    """Every `python -m pipeline STAGE` names a module and function that exist, and `--help`
    (which builds the stage's whole parser, generated flags included) exits 0."""
    import importlib

    from pipeline.__main__ import STAGES, main

    for stage, (target, summary) in STAGES.items():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name)), stage
        assert summary, stage
        with pytest.raises(SystemExit) as exit_info:
            main([stage, "--help"])
        assert exit_info.value.code == 0, stage
        assert "usage:" in capsys.readouterr().out, stage


def test_finetune_cli_is_generated_from_its_config_with_the_original_spellings():
    """finetune's flags come from FinetuneConfig through the one helper: the defaults are the
    dataclass's; every flag keeps its dashed alias and every bool its `--no-` negation (both
    spellings); nargs / append / tuple fields read back as the config holds them; an argv built
    by `to_argv` parses back to the same config."""
    from pipeline.training import finetune
    from pipeline.training.finetune import FinetuneConfig

    parser = finetune.build_parser()
    assert finetune.config_from_args(parser.parse_args([])) == FinetuneConfig()
    assert FinetuneConfig().train_datasets == [] and FinetuneConfig().train_datasets is not \
        FinetuneConfig().train_datasets  # a list default is a fresh list per instance
    for f in dataclasses.fields(FinetuneConfig):
        dashed = f.name.replace("_", "-")
        if isinstance(f.default, bool):
            for spelling in {f.name, dashed}:
                assert getattr(parser.parse_args([f"--{spelling}"]), f.name) is True, spelling
                assert getattr(parser.parse_args([f"--no-{spelling}"]), f.name) is False, spelling
        else:
            assert f"--{dashed}" in parser._option_string_actions, dashed
            assert parser._option_string_actions[f"--{dashed}"].default == default_of(f), f.name
    cfg = finetune.config_from_args(parser.parse_args(
        ["--max-steps=7", "--train_datasets", "a.json", "output-from-examples-v1", "--train-datasets", "b.json",
         "input-from-inputs-v0", "0.5", "--val_dataset", "c.json", "output-from-examples-v1", "--lora_target",
         "q_proj", "v_proj", "--compose_new_task_weights", "1", "2", "4", "4", "--no-use-rslora"]))
    assert (cfg.max_steps, cfg.use_rslora) == (7, False)
    assert cfg.train_datasets == [["a.json", "output-from-examples-v1"], ["b.json", "input-from-inputs-v0", "0.5"]]
    assert (cfg.val_dataset, cfg.lora_target) == (("c.json", "output-from-examples-v1"), ("q_proj", "v_proj"))
    assert cfg.compose_new_task_weights == (1.0, 2.0, 4.0, 4.0)
    values = {"train_datasets": cfg.train_datasets, "val_dataset": cfg.val_dataset, "lora_target": cfg.lora_target,
              "compose_new_task_weights": cfg.compose_new_task_weights, "use_lora": False, "use_dora": True,
              "verbose": False, "learning_rate": 3e-4, "format": "nvarc", "torch_dtype": "bfloat16"}
    assert finetune.config_from_args(parser.parse_args(to_argv(FinetuneConfig, values))) == \
        dataclasses.replace(FinetuneConfig(), **values)
    with pytest.raises(SystemExit):  # choices and nargs come from the field
        parser.parse_args(["--weight_by", "tokens"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--compose_new_task_weights", "1", "2"])
    assert "~25% slower" in parser.format_help()  # help text is the field's, % and all


def test_a_bool_setting_is_a_switch_with_its_negation_and_to_argv_says_which():
    parser = argparse.ArgumentParser()
    add_arguments(parser, TTFTSettings)
    assert parser.parse_args([]).gradient_checkpointing is False
    assert parser.parse_args(["--gradient_checkpointing"]).gradient_checkpointing is True
    assert parser.parse_args(["--no-gradient_checkpointing"]).gradient_checkpointing is False
    assert to_argv(TTFTSettings, {"gradient_checkpointing": False}) == ["--no-gradient_checkpointing"]
    assert "--gradient-checkpointing" not in parser._option_string_actions  # dashed aliases: finetune only


def test_the_run_configs_format_reaches_every_stage_that_reads_prompts(tmp_path, monkeypatch):
    """`format: nvarc` in the notebook config: the first shot, TTFT, sampling and rescoring are
    each called with it (captured in place of the subprocesses), as their own parsers read it."""
    from pipeline.kaggle import run as kaggle_run
    from pipeline.sampling import sample as sampling
    from pipeline.selection import rescore as scoring
    from pipeline.kaggle.supervisor import StageResult

    run = kaggle_run.KaggleRun({"input_dir": str(tmp_path), "working_dir": str(tmp_path / "w"),
                                "scratch_dir": str(tmp_path / "scratch"), "devices": ["cpu"], "rescore_views": 2,
                                "format": "nvarc"}, env={}, cwd=tmp_path)
    run.paths.run_dir.mkdir(parents=True)
    run.challenges = run.work = {"t1": {"train": [], "test": [{"input": [[1]]}]}}
    (run.paths.run_dir / "predictions.jsonl").write_text(json.dumps(
        {"task_id": "t1", "test_index": 0, "grid": [[1]], "cumulative_logprob": -1.0, "n_tokens": 2}) + "\n")
    Path(run.timing_log).touch()
    argvs = {}

    def stand_in(stage, argv_list, soft, logs, envs, command=None):
        argvs[stage] = [str(a) for a in argv_list[0]]
        return [StageResult(stage, "failed", reason="stand-in")]

    monkeypatch.setattr(run, "_run", stand_in)
    for step in (run.first_shot, run.ttft, run.sample, run.rescore):
        step()
    assert set(argvs) == {"first_shot", "ttft", "sample", "rescore"}
    sample_parser = argparse.ArgumentParser()
    sampling.add_sampling_args(sample_parser)
    known = lambda parser, argv: parser.parse_known_args(argv)[0]  # noqa: E731 (stage-specific flags aside)
    assert settings_from(TTFTSettings, ttft.build_parser().parse_args(argvs["ttft"])).format == "nvarc"
    for stage in ("first_shot", "sample"):
        assert settings_from(SampleSettings, known(sample_parser, argvs[stage])).format == "nvarc"
    assert settings_from(RescoreSettings, scoring.build_parser().parse_args(argvs["rescore"])).format == "nvarc"


# ----------------------------------------------------------------------------- extends

# kaggle/configs/arc-prize-2026-arc-agi-2.yaml as it was before it extended arc-prize-2025.yaml (f12de3e)
ARC_PRIZE_2026_FLAT = {
    "title": "arc-ttft ARC Prize 2026, ARC-AGI-2 track (4x L4)",
    "input_dir": "/kaggle/input/competitions/arc-prize-2026-arc-agi-2", "working_dir": "/kaggle/working",
    "scratch_dir": "/tmp/arc-ttft", "wheels_dir": "/kaggle/input/arc-ttft-wheels/wheels",
    "model": "/kaggle/input/arc-ttft-model/model", "adapter": "/kaggle/input/arc-ttft-model/adapter",
    "model_architecture": "qwen2.5-0.5b",  # added to arc-prize-2025.yaml since (issue 23)
    "devices": ["cuda:0", "cuda:1", "cuda:2", "cuda:3"], "hardware": "L4", "ttft_steps": 300,
    "ttft_learning_rate": 8.0e-5, "ttft_batch_size": 1, "ttft_max_seq_len": 8192,
    "ttft_settings": {"gradient_checkpointing": True},  # added since (issue 23: 8,192-token samples)
    "ttft_budget_fraction": 0.55,
    "predictions_per_task": 96, "engine": "vllm", "temperature": 0.0, "deadline_hours": 12.0,
    "safety_margin_minutes": 30, "vote_reserve_minutes": 10, "watchdog_minutes": 30, "smoke_tasks": 8,
    "smoke_ttft_steps": 16, "smoke_predictions_per_task": 8,
    "stage_env": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                  "VLLM_LOGGING_LEVEL": "ERROR"},
    "kaggle_competition": "arc-prize-2026-arc-agi-2",
    "kaggle_datasets": ["{user}/arc-ttft-wheels", "{user}/arc-ttft-model"],
}


def test_the_2026_config_extends_2025_with_only_its_differences_and_resolves_as_before():
    from notebook_builder.build import resolve_config
    path = REPO / "kaggle" / "configs" / "arc-prize-2026-arc-agi-2.yaml"
    assert config.read_config_file(path) == ARC_PRIZE_2026_FLAT  # the very keys, now from two files
    assert config.config_dict(load_config(path)) == config.config_dict(load_config(ARC_PRIZE_2026_FLAT))
    built, _, _ = resolve_config(path)  # what the notebook embeds
    assert config.config_dict(built) == config.config_dict(load_config(ARC_PRIZE_2026_FLAT))
    import yaml
    own = yaml.safe_load(path.read_text())
    assert own.pop("extends") == "arc-prize-2025.yaml"
    base = config.read_config_file(REPO / "kaggle" / "configs" / "arc-prize-2025.yaml")
    assert all(base.get(k) != v for k, v in own.items()), "2026 repeats a 2025 setting"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_is_relative_to_the_file_and_the_extending_keys_win_key_by_key(tmp_path):
    write(tmp_path / "base" / "root.yaml", "ttft_steps: 100\ntemperature: 0.5\nstage_env: {A: '1', B: '2'}\n")
    write(tmp_path / "base" / "mid.yaml", "extends: root.yaml\nttft_steps: 200\ntitle: mid\n")
    leaf = write(tmp_path / "leaf" / "leaf.yaml", "extends: ../base/mid.yaml\ntitle: leaf\nstage_env: {C: '3'}\n")
    assert config.read_config_file(leaf) == {"ttft_steps": 200, "temperature": 0.5, "title": "leaf",
                                             "stage_env": {"C": "3"}}  # a mapping is replaced whole
    c = load_config(leaf)
    assert (c.ttft_steps, c.temperature, c.title, c.stage_env) == (200, 0.5, "leaf", {"C": "3"})


def test_a_missing_or_circular_extends_is_a_one_line_error_naming_the_file(tmp_path):
    missing = write(tmp_path / "a.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ValueError) as e:
        load_config(missing)
    assert str(missing) in str(e.value) and "nowhere.yaml" in str(e.value) and "no such file" in str(e.value)
    write(tmp_path / "b.yaml", "extends: c.yaml\n")
    cyclic = write(tmp_path / "c.yaml", "extends: b.yaml\n")
    with pytest.raises(ValueError) as e:
        load_config(tmp_path / "b.yaml")
    assert str(cyclic) in str(e.value) and "cycle (b.yaml -> c.yaml -> b.yaml)" in str(e.value)
    itself = write(tmp_path / "d.yaml", "extends: d.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(itself)
    with pytest.raises(ValueError, match="'extends' must name a config file"):
        load_config(write(tmp_path / "e.yaml", "extends: [a.yaml]\n"))
    # the builder's CLI says it in one line and exits non-zero
    import subprocess
    import sys
    from conftest import one_line_error
    proc = subprocess.run([sys.executable, "-m", "notebook_builder", "build", "--config", str(missing), "--output",
                           str(tmp_path / "x.ipynb")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    one_line_error(proc.stderr, str(missing), "nowhere.yaml")


# ----------------------------------------------------------------------------- one default selection

def test_the_default_selection_is_one_constant_that_every_default_refers_to():
    """`DEFAULT_SELECTION` is the only place "v2" is the default: the settings, the notebook config and
    every function's `method` default take it; the literal appears only where the rules are named
    (VOTE_METHODS) and where the v2 rule is told apart (a comparison)."""
    import pipeline
    from pipeline.evaluation import metrics
    from pipeline.selection import vote

    assert config.DEFAULT_SELECTION in config.VOTE_METHODS
    assert VOTE.method == SubmissionConfig().selection == config.DEFAULT_SELECTION
    for func in (metrics.test_input_metrics, metrics.evaluate, metrics.score_run, vote.rank_predictions,
                 vote.rank_candidates, vote.select_attempts):
        assert inspect.signature(func).parameters["method"].default == config.DEFAULT_SELECTION, func.__name__
    literals = []
    for path in sorted(Path(pipeline.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        allowed = {id(n) for node in ast.walk(tree) if isinstance(node, ast.Compare) for n in ast.walk(node)}
        allowed |= {id(n) for node in ast.walk(tree) if isinstance(node, ast.Assign) and path.name == "settings.py"
                    and any(getattr(t, "id", "") in ("VOTE_METHODS", "DEFAULT_SELECTION") for t in node.targets)
                    for n in ast.walk(node)}
        literals += [f"{path.relative_to(REPO)}:{n.lineno}" for n in ast.walk(tree)
                     if isinstance(n, ast.Constant) and n.value == "v2" and id(n) not in allowed]
    assert literals == [], "write DEFAULT_SELECTION (pipeline/core/settings.py), not the literal"
@pytest.mark.parametrize("values, message", [
    ({"deadline_hours": -1}, "'deadline_hours': -1 is not > 0"),
    ({"deadline_hours": 0.5, "safety_margin_minutes": 25, "vote_reserve_minutes": 10},
     "'deadline_hours': 0.5 h leaves no time after safety_margin_minutes + vote_reserve_minutes (35 min)"),
    ({"devices": []}, "'devices': [] must list one or more of cpu, cuda, cuda:N"),
    ({"devices": ["cuda:0", "gpu1"]}, "('gpu1' unknown)"),
    ({"engine": "tensorrt"}, "'engine': 'tensorrt' is not one of auto, vllm, transformers"),
    ({"hardware": "Z9"}, "'hardware': unknown hardware 'Z9'; known: T4, L4"),
    ({"ttft_budget_fraction": 1.7}, "'ttft_budget_fraction': 1.7 is not in (0, 1]"),
    ({"predictions_per_task": 0}, "'predictions_per_task': 0 is not >= 1"),
    ({"ttft_steps": -5}, "'ttft_steps': -5 is not >= 1"),
    ({"temperature": -1}, "'temperature': -1 is not >= 0"),
    ({"ttft_learning_rate": float("nan")}, "'ttft_learning_rate': nan is not > 0"),
    ({"ttft_min_fraction": 0.9, "ttft_max_fraction": 0.5}, "the minimum exceeds the maximum"),
])
def test_every_config_value_is_range_checked_at_load(values, message):
    """Each of these built a notebook before; the one loader refuses them for build, run and plan."""
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(values)


def test_every_shipped_config_passes_the_range_checks():
    for path in sorted((REPO / "kaggle" / "configs").glob("*.yaml")):
        load_config(path)


@pytest.mark.parametrize("text, message", [
    ("title: [unclosed\n", "not valid YAML (expected ',' or ']', but got '<stream end>' at line 2 column 1)"),
    ("- a\n- b\n", "expected a mapping of config keys (key: value lines), got a YAML list"),
    ("deadline_hours: -3\n", "config key 'deadline_hours': -3 is not > 0"),
])
def test_a_bad_config_file_is_one_line_and_exit_2_from_build_and_plan(text, message, tmp_path, capsys):
    """Before: a YAML syntax error or a top-level list was a Python traceback."""
    from notebook_builder.__main__ import main as builder
    from pipeline.__main__ import main as pipeline_main

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert builder(["build", "--config", str(path), "--output", str(tmp_path / "nb.ipynb")]) == 2
    assert pipeline_main(["plan", "--config", str(path), "--profile", str(tmp_path)]) == 2
    for err in capsys.readouterr().err.strip().splitlines():
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "nb.ipynb").exists()


def test_a_bad_set_override_is_one_line(tmp_path):
    from notebook_builder.__main__ import main as builder

    with pytest.raises(SystemExit, match=r"--set title: '\[unclosed' is not a YAML value \(expected ','"):
        builder(["build", "--config", str(REPO / "kaggle" / "configs" / "local.yaml"), "--output",
                 str(tmp_path / "nb.ipynb"), "--set", "title=[unclosed"])


# ----------------------------------------------------------------------------- copies x epochs (issue 23)

def test_copies_times_epochs_give_the_steps_the_run_the_stage_and_the_planner_count(tmp_path):
    """`ttft_copies` x `ttft_epochs` / `ttft_batch_size` (rounded up) is TTFT's step count: the loader
    sets `ttft_steps` from it, so the budget and the planner count what the stage trains; the run
    hands the stage the copies (it derives the same steps), a smoke run its own fewer steps."""
    from pipeline.kaggle.commands import configured_paths, ttft_argv
    from pipeline.planning.plan import settings_from_config

    assert [config.ttft_step_count(300, c, e, b) for c, e, b in ((128, None, 1), (128, 1, 1), (6, 2, 4))] == [128, 128, 3]
    assert config.ttft_step_count(300, None, None, 4) == 300
    c = load_config({"ttft_copies": 6, "ttft_epochs": 2, "ttft_batch_size": 4})
    assert c.ttft_steps == 3 and settings_from_config({"ttft_copies": 6, "ttft_epochs": 2,
                                                        "ttft_batch_size": 4}).ttft_steps == 3
    assert load_config(config.config_dict(c)) == c  # the notebook's resolved dict holds both: they agree
    paths = configured_paths(c)
    stage = ttft.build_parser().parse_args([str(a) for a in ttft_argv(c, paths, c.ttft_steps, ["cpu"], 60, "t")])
    assert (stage.copies, stage.epochs, ttft.config_from_args(stage).steps) == (6, 2, 3)
    smoke = ttft.build_parser().parse_args([str(a) for a in ttft_argv(c, paths, 2, ["cpu"], 60, "t")])
    assert (smoke.steps, smoke.copies, smoke.epochs) == (2, None, None)


def test_a_step_count_and_copies_together_are_refused_unless_one_file_extends_the_other(tmp_path):
    with pytest.raises(ValueError, match="'ttft_steps' \\(300\\) and 'ttft_copies'.*128 steps.*set one"):
        load_config({"ttft_steps": 300, "ttft_copies": 128})
    with pytest.raises(ValueError, match="'ttft_epochs': counts passes over 'ttft_copies'"):
        load_config({"ttft_epochs": 2})
    with pytest.raises(ValueError, match="'ttft_copies': 0 is not >= 1"):
        load_config({"ttft_copies": 0})
    with pytest.raises(ValueError, match="'copies' is set by the config key 'ttft_copies'"):
        load_config({"ttft_settings": {"copies": 128}})
    # an extending file (or a --set override) that gives one form replaces the other form below it
    write(tmp_path / "steps.yaml", "ttft_steps: 300\n")
    write(tmp_path / "copies.yaml", "extends: steps.yaml\nttft_copies: 128\nttft_epochs: 2\n")
    write(tmp_path / "steps_again.yaml", "extends: copies.yaml\nttft_steps: 50\n")
    assert config.read_config_file(tmp_path / "copies.yaml") == {"ttft_copies": 128, "ttft_epochs": 2}
    assert load_config(tmp_path / "copies.yaml").ttft_steps == 256
    assert config.read_config_file(tmp_path / "steps_again.yaml") == {"ttft_steps": 50}
    from notebook_builder.build import resolve_config
    built, _, _ = resolve_config(tmp_path / "copies.yaml", {"ttft_steps": 16})
    assert (built.ttft_steps, built.ttft_copies, built.ttft_epochs) == (16, None, None)


def test_the_stage_refuses_steps_with_copies_and_epochs_without_copies(tmp_path, capsys):
    parser = ttft.build_parser()
    required = ["--model", "embedded", "--dataset", "d", "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        parser.parse_args([*required, "--copies", "6", "--steps", "3"])
    assert "argument --steps: not allowed with argument --copies" in capsys.readouterr().err
    with pytest.raises(ttft.ConfigError, match="--epochs 2 counts passes over --copies"):
        ttft.config_from_args(parser.parse_args([*required, "--epochs", "2"]))
    with pytest.raises(ttft.ConfigError, match="--copies must be >= 1, got 0"):
        ttft.config_from_args(parser.parse_args([*required, "--copies", "0"]))
    c = ttft.config_from_args(parser.parse_args([*required, "--copies", "6", "--epochs", "2", "--batch_size", "4"]))
    assert (c.steps, c.min_steps, c.run_config()["copies"], c.run_config()["epochs"]) == (3, 1, 6, 2)


def test_a_lora_on_the_embeddings_samples_with_transformers_or_the_config_is_refused():
    """vLLM is not trusted with a LoRA on embed_tokens / lm_head: the loader says so, naming the key,
    for engine vllm and for auto on a GPU (auto on CPU serves LoRAs with transformers)."""
    lora = {"ttft_settings": {"lora_target": ["all-linear+embeddings"]}}
    for engine, devices in (("vllm", ["cpu"]), ("auto", ["cuda:0"])):
        with pytest.raises(ValueError, match="config key 'engine'.*not trusted to serve a LoRA on embed_tokens.*"
                                             "engine: transformers"):
            load_config({**lora, "engine": engine, "devices": devices})
    with pytest.raises(ValueError, match="lora_target q_proj lm_head"):
        load_config({"ttft_settings": {"lora_target": ["q_proj", "lm_head"]}, "engine": "vllm"})
    assert load_config({**lora, "engine": "transformers", "devices": ["cuda:0"]}).engine == "transformers"
    assert load_config({**lora, "engine": "auto", "devices": ["cpu"]}).engine == "auto"
    assert load_config({"ttft_settings": {"lora_target": ["all-linear"]}, "engine": "vllm"}).engine == "vllm"
