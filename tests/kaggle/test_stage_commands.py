"""Every stage command a config gives is one its stage takes (issue 22, item 1).

`arc-prize-2024.yaml` shipped `sample_extra_args: [--dtype, half]`, which `python -m pipeline
sample` refuses (exit 2): the first shot and every sampling shard of every 2x T4 run did nothing.
Here every stage command of every shipped config, as KaggleRun builds it, is handed to the
stage's own parser; the builder and the notebook's first run cell refuse a config whose commands
a stage would refuse, naming the config key; the typed settings mappings are checked at load.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import one_line_error
from pipeline.core.settings import (SampleSettings, TTFTModelSettings, TTFTSettings, VLLMSettings, load_config,
                                    settings_from, ttft_step_count)
from pipeline.kaggle import commands
from pipeline.kaggle import run as kaggle_run
from pipeline.kaggle.supervisor import StageResult
from pipeline.sampling import sample as sampling
from pipeline.ttft import ttft

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (REPO / "kaggle" / "configs").glob("*.yaml") if load_config(p).kind == "submission")
STAGE_PARSERS = {"first_shot": sampling.sample_parser, "ttft": ttft.build_parser, "sample": sampling.sample_parser}


def stand_in_run(config: dict, tmp_path: Path, monkeypatch):
    """A KaggleRun of `config` with its paths under tmp_path whose stages are captured, not launched."""
    values = {**config, "input_root": str(tmp_path / "input"), "input_dir": str(tmp_path / "input" / "arc"),
              "working_dir": str(tmp_path / "w"), "scratch_dir": str(tmp_path / "scratch")}
    run = kaggle_run.KaggleRun(values, env={}, cwd=tmp_path)
    run.paths.run_dir.mkdir(parents=True)
    (run.paths.scratch_dir / "ttft" / "adapters").mkdir(parents=True)  # as TTFT leaves it
    Path(run.timing_log).touch()
    run.challenges = run.work = {"t1": {"train": [], "test": [{"input": [[1]]}]}}
    run.paths = dataclasses.replace(run.paths, located=())  # no model here: the stages run all the same
    run.launched = {}

    def stand_in(stage, argv_list, soft, logs, envs, command=None):
        run.launched[stage] = [str(a) for a in argv_list[0]]
        return [StageResult(stage, "failed", reason="stand-in")] * len(argv_list)

    monkeypatch.setattr(run, "_run", stand_in)
    return run


def without_deadline(argv: list) -> list[str]:
    i = argv.index("--deadline")
    return [str(a) for a in argv[:i] + argv[i + 2:]]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_stage_command_of_every_shipped_config_is_taken_by_its_stage(path, tmp_path, monkeypatch):
    """The old 2024 config fails here: `sample`'s parser refuses `--dtype half` (SystemExit 2)."""
    config = load_config(path)
    run = stand_in_run(dataclasses.asdict(config), tmp_path, monkeypatch)
    planned = {stage: whole for stage, (_, whole) in commands.planned_commands(run.config, run.paths).items()}
    parsed = {stage: STAGE_PARSERS[stage]().parse_args([str(a) for a in argv]) for stage, argv in planned.items()}
    # the typed settings arrive as the stage's settings
    for stage in ("first_shot", "sample"):
        got = {**dataclasses.asdict(settings_from(SampleSettings, parsed[stage])),
               **dataclasses.asdict(settings_from(VLLMSettings, parsed[stage]))}
        assert {k: got[k] for k in config.sample_settings} == config.sample_settings, stage
        assert got["engine"] == config.engine
    got = {**dataclasses.asdict(settings_from(TTFTSettings, parsed["ttft"])),
           **dataclasses.asdict(settings_from(TTFTModelSettings, parsed["ttft"]))}
    as_parsed = {k: tuple(v) if isinstance(v, list) else v for k, v in config.ttft_settings.items()}  # nargs: tuples
    assert {k: got[k] for k in config.ttft_settings} == as_parsed
    # the steps the stage trains: its --steps, or what its --copies x --epochs make (the one rule)
    assert ttft_step_count(got["steps"], got["copies"], got["epochs"], got["batch_size"]) == config.ttft_steps
    assert parsed["sample"].predictions_per_task == config.predictions_per_task
    # what the run launches is what was checked (the deadline aside: it is the time left)
    run.first_shot(), run.ttft(), run.sample()
    launched = set(planned) - ({"first_shot"} if config.first_shot_predictions == 0 else set())  # NVARC: none
    assert {s: without_deadline(a) for s, a in run.launched.items()} == \
        {s: without_deadline(a) for s, a in planned.items() if s in launched}
    assert commands.command_problems(config) == {} and run.refused == {}


def test_the_2024_config_samples_and_trains_in_fp16_through_typed_settings():
    config = load_config(REPO / "kaggle" / "configs" / "arc-prize-2024.yaml")
    assert config.sample_settings == {"dtype": "float16"}
    # 16 GB per T4, one whole model each: TTFT checkpoints its activations (the config's header says why)
    assert config.ttft_settings == {"torch_dtype": "float16", "gradient_checkpointing": True}
    assert config.sample_extra_args == () and config.ttft_extra_args == ()


def build(*args: str, command: str = "build", tmp_path: Path) -> subprocess.CompletedProcess:
    out = ["--output", str(tmp_path / "x.ipynb")] if command == "build" else ["--workdir", str(tmp_path / "run")]
    return subprocess.run([sys.executable, "-m", "notebook_builder", command, "--config",
                           "kaggle/configs/arc-prize-2024.yaml", *out, *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("command", ["build", "run"])
def test_the_builder_refuses_a_pass_through_flag_the_stage_refuses_naming_the_key(command, tmp_path):
    proc = build("--set", "sample_extra_args=[--dtype,half]", command=command, tmp_path=tmp_path)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "arc-prize-2024.yaml", "config key 'sample_extra_args'", "python -m pipeline sample",
                   "argument --dtype: invalid choice: 'half'")
    assert not (tmp_path / "x.ipynb").exists() and not (tmp_path / "run").exists()
    proc = build("--set", "ttft_extra_args=[--lora_rank, '8']", tmp_path=tmp_path)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "config key 'ttft_extra_args'", "unrecognized arguments: --lora_rank 8")


@pytest.mark.parametrize("setting, needles", [
    ("sample_settings={dtype: half}", ["'sample_settings'", "dtype: 'half' is not one of auto, float32, bfloat16, float16"]),
    ("sample_settings={engine: transformers}", ["'sample_settings'", "'engine' is set by the config key 'engine'"]),
    ("ttft_settings={steps: 10}", ["'ttft_settings'", "'steps' is set by the config key 'ttft_steps'"]),
    ("ttft_settings={lora_rank: 8}", ["'ttft_settings'", "unknown setting 'lora_rank'", "lora_r,"]),
    ("sample_settings={min_prob: '0.1'}", ["'sample_settings'", "min_prob: '0.1' is not of type float"]),
])
def test_typed_settings_are_checked_at_load_in_one_line_naming_the_key(setting, needles, tmp_path):
    proc = build("--set", setting, tmp_path=tmp_path)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "arc-prize-2024.yaml", *needles)


def test_typed_settings_reach_the_stages_as_their_flags():
    config = load_config({"sample_settings": {"method": "dfs", "min_prob": 0.1, "max_tokens": "task",
                                              "dfs_speculative": False,  # the default is on
                                              "gpu_memory_utilization": 0.8, "enforce_eager": False},
                          "ttft_settings": {"gradient_checkpointing": True, "lora_r": 8, "lora_target": ["q_proj"],
                                            "use_rslora": False, "seed": 3}})
    planned = commands.planned_commands(config)
    sample_args = sampling.sample_parser().parse_args([str(a) for a in planned["sample"][1]])
    assert (sample_args.method, sample_args.min_prob, sample_args.max_tokens) == ("dfs", 0.1, "task")
    assert sample_args.dfs_speculative is False and not settings_from(SampleSettings, sample_args).dfs_speculative
    assert sampling.vllm_options_from(sample_args)["gpu_memory_utilization"] == 0.8
    assert sampling.vllm_options_from(sample_args)["enforce_eager"] is False
    ttft_args = ttft.build_parser().parse_args([str(a) for a in planned["ttft"][1]])
    model = settings_from(TTFTModelSettings, ttft_args)
    assert (model.lora_r, model.lora_target, model.use_rslora) == (8, ("q_proj",), False)
    assert (ttft_args.gradient_checkpointing, ttft_args.seed) == (True, 3)


def test_the_notebooks_first_cell_fails_a_refused_stage_at_once_and_says_why(tmp_path, monkeypatch, capsys):
    """A config edited in the notebook (past the builder): the stage whose command is refused fails
    without being launched, with the one line; the other stages run."""
    values = {"input_dir": str(tmp_path / "in"), "working_dir": str(tmp_path / "w"), "devices": ["cpu"],
              "scratch_dir": str(tmp_path / "scratch"), "sample_extra_args": ["--dtype", "half"]}
    run = kaggle_run.KaggleRun(values, env={}, cwd=tmp_path)
    out = capsys.readouterr().out
    assert "[sample] error: config key 'sample_extra_args'" in out and "invalid choice: 'half'" in out
    assert set(run.refused) == {"first_shot", "sample"}
    run.paths.run_dir.mkdir(parents=True)
    Path(run.timing_log).touch()
    run.challenges = run.work = {"t1": {"train": [], "test": [{"input": [[1]]}]}}
    launched = []
    monkeypatch.setattr(run, "_run", lambda stage, *a, **k: launched.append(stage) or [StageResult(stage, "ok")])
    run.first_shot(), run.ttft(), run.sample()
    assert launched == ["ttft"]
    assert run.results["sample"].status == "failed" and "'sample_extra_args'" in run.results["sample"].reason
    assert any("sample: config key 'sample_extra_args'" in w for w in run.warnings)


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top != "pipeline":
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
"""


def test_the_check_needs_only_the_standard_library_and_the_package(tmp_path):
    """The notebook checks its commands before the offline install: with every import outside the
    standard library blocked (torch, transformers, vLLM, jinja2, numpy, yaml), the parsers and the
    check still run and still refuse the 2024 config's old flag."""
    config = {"sample_extra_args": ["--dtype", "half"], "ttft_settings": {"torch_dtype": "float16"}}
    code = BLOCKER + f"""
from pipeline.kaggle.commands import command_problems
from pipeline.core.settings import load_config
problems = command_problems(load_config({config!r}))
assert set(problems) == {{"first_shot", "sample"}}, problems
assert "invalid choice: 'half'" in problems["sample"], problems
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    blocked = subprocess.run([sys.executable, "-c", BLOCKER + "import numpy"], cwd=REPO, capture_output=True,
                             text=True)
    assert "blocked: numpy" in blocked.stderr  # the blocker blocks


def test_a_help_flag_among_the_extra_args_is_refused_too():
    problems = commands.command_problems(load_config({"ttft_extra_args": ["--help"]}))
    assert problems == {"ttft": "config key 'ttft_extra_args': `python -m pipeline ttft` refuses it: it asks for "
                                "the stage's --help"}
    assert json.dumps(problems)  # plain strings: they go to summary.json's warnings


# the block every competition config's header shows to switch search and selection on (docs/search.md)
SEARCH = {"engine": "transformers", "sample_settings": {"method": "dfs", "min_prob": 0.1}, "rescore_views": 8,
          "selection": "poe"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_search_rescoring_and_poe_switched_on_hand_every_stage_a_command_it_takes(path, tmp_path, monkeypatch):
    """A shipped config with DFS candidates, rescoring and product-of-experts selection on: every
    command the run launches (first shot, TTFT, the DFS sampling shards, the rescore shards, the
    vote with the scores) is parsed by its stage's own parser, with the settings the config gave."""
    from pipeline.planning.plan import settings_from_config
    from pipeline.selection import rescore, vote

    base = dataclasses.asdict(load_config(path))
    config = load_config({**base, **SEARCH, "sample_settings": {**base["sample_settings"], **SEARCH["sample_settings"]}})
    run = stand_in_run(dataclasses.asdict(config), tmp_path, monkeypatch)
    run.challenges = run.work = {t: {"train": [], "test": [{"input": [[1] * n]}]} for t, n in (("t1", 1), ("t2", 2))}
    run.first_shot(), run.ttft(), run.sample()
    (run.paths.run_dir / "predictions.jsonl").write_text(json.dumps(
        {"task_id": "t1", "test_index": 0, "grid": [[1]], "cumulative_logprob": -0.5, "n_tokens": 3}) + "\n")
    run.rescore()
    (run.paths.run_dir / kaggle_run.SCORES).touch()  # as a rescore that scored nothing leaves it
    run.vote()
    parsers = {**STAGE_PARSERS, "rescore": rescore.build_parser, "vote": vote.build_parser}
    assert set(run.launched) == set(parsers) - ({"first_shot"} if config.first_shot_predictions == 0 else set())
    parsed = {stage: parsers[stage]().parse_args(argv) for stage, argv in run.launched.items()}
    assert (parsed["sample"].method, parsed["sample"].min_prob, parsed["sample"].engine) == ("dfs", 0.1, "transformers")
    assert parsed["rescore"].views == 8 and parsed["vote"].method == "poe" and parsed["vote"].scores
    if len(config.devices) > 1:  # one DFS / rescore process per GPU, each over its own shard of the tasks
        assert parsed["sample"].dataset.endswith("sample.gpu0.json") and parsed["rescore"].dataset.endswith(
            "rescore.gpu0.json") and parsed["rescore"].output.endswith("scores.gpu0.jsonl")
    assert commands.command_problems(config) == {} and run.refused == {}
    assert settings_from_config(dataclasses.asdict(config)).sample_method == "dfs"  # the planner prices the search as a search
