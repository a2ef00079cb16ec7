"""Planner arithmetic on synthetic timing records with known costs.

Run: `python -m pytest -q tests/test_planner.py` (the token-count and CLI tests use the embedded
tokenizer fixture; everything else needs no model)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline import __main__ as dispatcher
from pipeline.core.files import append_jsonl, write_json_atomic
from pipeline.core.settings import SubmissionConfig
from pipeline.kaggle.run import shard_tasks
from pipeline.core.hardware import HARDWARE, hardware_of
from pipeline.planning.cost_model import CostModel, StageCost, fit_cost_model
from pipeline.planning.regression import calibrate, fit_compute
from pipeline.planning.plan_report import format_plan
from pipeline.planning.plan import fit, plan, settings_from_config
from pipeline.planning.token_counts import select_targets
from pipeline.planning.projection import CONFIG_KEYS, Settings, list_schedule, project, shard_schedule
from pipeline.planning.token_counts import TaskTokens, task_tokens

from conftest import one_line_error

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "kaggle" / "configs"

# The synthetic machine: TTFT task = TASK_T + steps x (A + B x tokens per step);
# sampling task = TASK_S + E x predictions + C x prompt tokens + D x generated tokens;
# each stage: START (process) + LOAD (model) once; orchestrator start 0.5 s, vote 3 s.
A, B, TASK_T = 0.05, 0.001, 2.0
E, C, D, TASK_S = 0.2, 0.0005, 0.02, 1.0
START, LOAD_T, LOAD_S = 1.0, 10.0, 8.0

PROFILED = {  # varied sizes, prompt/answer ratios that differ from task to task
    "p1": TaskTokens("p1", 500, (600,), (50,), 60),
    "p2": TaskTokens("p2", 1000, (1300,), (300,), 140),
    "p3": TaskTokens("p3", 2000, (2400,), (100,), 250),
    "p4": TaskTokens("p4", 3000, (1500, 1700), (400, 350), 400),
    "p5": TaskTokens("p5", 800, (900,), (250,), 90),
}
TARGETS = {
    "x1": TaskTokens("x1", 1200, (1500,), (200,), 150),
    "x2": TaskTokens("x2", 4000, (4500,), (600,), 500),
    "x3": TaskTokens("x3", 300, (400, 380), (30, 40), 50),
    "x4": TaskTokens("x4", 2500, (2600,), (90,), 300),
}


# What the synthetic machine takes for each target, worked out by hand (not by a formula the
# planner could share): TTFT at 48 steps, TASK_T + 48 x (A + B x train tokens), and sampling at
# 16 predictions per test input, TASK_S + 16 x (E x n_test + C x prompt + D x answer tokens).
TTFT_48 = {"x1": 2 + 48 * 1.25,    # 62.0
           "x2": 2 + 48 * 4.05,    # 196.4
           "x3": 2 + 48 * 0.35,    # 18.8
           "x4": 2 + 48 * 2.55}    # 124.4; sum 401.6
SAMPLE_16 = {"x1": 1 + 3.2 + 12.0 + 64.0,     # 80.2   (prompt 1500, answer 200)
             "x2": 1 + 3.2 + 36.0 + 192.0,    # 232.2  (4500, 600)
             "x3": 1 + 6.4 + 6.24 + 22.4,     # 36.04  (two test inputs: 780, 70)
             "x4": 1 + 3.2 + 20.8 + 28.8}     # 53.8;  sum 402.24


def synthetic_run(tokens: dict, steps: int = 32, predictions: int = 8, device: str = "cpu",
                  first_shot: int = 0) -> list[dict]:
    """Timing records as the stages and the orchestrator write them, from the synthetic costs
    (with `first_shot`, the sampling code runs first with that many predictions, as stage first_shot)."""
    recs = [{"stage": "start", "event": "start", "seconds": 0.0, "t": 0.0},
            {"stage": "start", "event": "end", "seconds": 0.5, "t": 0.5},
            {"stage": "install", "event": "skipped", "seconds": 0.0, "t": 0.5, "reason": "already importable"}]
    clock = 1000.0
    stages = (("first_shot", LOAD_S),) * bool(first_shot) + (("ttft", LOAD_T), ("sample", LOAD_S))
    for stage, load in stages:
        n = first_shot if stage == "first_shot" else predictions
        recs.append({"stage": stage, "event": "start", "seconds": 0.0, "t": 0.0, "workers": 1})
        clock += START
        recs.append({"stage": stage, "event": "phase", "task_id": None, "phase": "load_model", "seconds": load,
                     "time": clock + load, "device": device})
        clock += load
        wall = START + load
        for tid, t in tokens.items():
            if stage == "ttft":
                compute = steps * (A + B * t.train_tokens)
                counters = {"steps": steps, "tokens_trained": steps * t.train_tokens}
                over, phase = TASK_T, "train"
            else:
                p = n * t.n_test
                compute = E * p + C * n * sum(t.prompt_tokens) + D * n * sum(t.answer_tokens)
                counters = {"predictions": p, "prompt_tokens": n * sum(t.prompt_tokens),
                            "generated_tokens": n * sum(t.answer_tokens)}
                over, phase = TASK_S, "generate"
            recs.append({"stage": stage, "event": "phase", "task_id": tid, "phase": phase, "seconds": compute,
                         "time": clock + compute, "device": device})
            recs.append({"stage": stage, "event": "task", "task_id": tid, "seconds": compute + over,
                         "time": clock + compute + over, "device": device, **counters})
            clock += compute + over
            wall += compute + over
        recs.append({"stage": stage, "event": "end", "seconds": wall, "t": 0.0})
    recs.append({"stage": "vote", "event": "end", "seconds": 3.0, "t": 0.0})
    return recs


def local_settings(**kw) -> Settings:
    """The chain TTFT -> sampling -> vote (no first shot, no rescoring: their tests turn them on)."""
    base = dict(hardware="cpu", ttft_steps=32, predictions_per_task=8, deadline_hours=12.0,
                safety_margin_minutes=30.0, margin=0.15, first_shot_predictions=0)
    base.update(kw)
    return Settings(**base)


# ----------------------------------------------------------------------------- the fit

def test_fit_recovers_the_synthetic_coefficients():
    model = fit_cost_model(synthetic_run(PROFILED), PROFILED)
    t, s = model.ttft, model.sample
    assert t.method.startswith("least squares on steps + tokens_trained")
    assert t.per_step == pytest.approx(A) and t.per_train_token == pytest.approx(B)
    assert t.task_fixed == pytest.approx(TASK_T) and t.fixed == pytest.approx(START + LOAD_T)
    assert s.method.startswith("least squares on predictions + prompt_tokens + generated_tokens")
    assert (s.per_prediction, s.per_prompt_token, s.per_generated_token) == (
        pytest.approx(E), pytest.approx(C), pytest.approx(D))
    assert s.task_fixed == pytest.approx(TASK_S) and s.fixed == pytest.approx(START + LOAD_S)
    assert model.pre_fixed == {"start": 0.5, "install": 0.0} and model.post_fixed == {"vote": 3.0}
    for cal in list(t.calibration.values()) + list(s.calibration.values()):   # recorded = estimated
        assert cal(1000.0) == pytest.approx(1000.0)


def test_projection_for_another_task_set_matches_the_closed_form():
    steps, predictions = 48, 16
    s = local_settings(ttft_steps=steps, predictions_per_task=predictions)
    model = fit_cost_model(synthetic_run(PROFILED), PROFILED)
    r = project(model, list(TARGETS.values()), s)
    assert sum(TTFT_48.values()) == pytest.approx(401.6) and sum(SAMPLE_16.values()) == pytest.approx(402.24)
    assert r["stages"]["ttft"] == 412.6      # 1 s start + 10 s load + 401.6
    assert r["stages"]["sample"] == 411.2    # 1 s start + 8 s load + 402.24
    assert r["total_s"] == 827.3             # 0.5 s start + 412.6 + 411.24 + 3 s vote
    assert r["fits"] and r["available_s"] == 12 * 3600 - 30 * 60
    assert r["non_compute_s"] == 35.5        # 0.5 + 3 + 11 + 9 + 4 tasks x (2 + 1) s
    assert r["non_compute_share"] == pytest.approx(35.5 / 827.34, abs=1e-4)  # one worker: busy = wall


def test_plan_entry_point_with_token_counts_and_a_dict_config():
    config = {"devices": ["cpu"], "ttft_steps": 48, "predictions_per_task": 16, "deadline_hours": 12.0,
              "first_shot_predictions": 0}
    r = plan(config, synthetic_run(PROFILED), TARGETS, profile_tasks=PROFILED)
    assert r["hardware"] == "cpu" and r["task_ids"] == list(TARGETS)
    assert r["stages"]["ttft"] == 412.6 and r["stages"]["sample"] == 411.2 and r["total_s"] == 827.3  # as above
    assert not any("uncalibrated" in n for n in r["notes"])


def test_sampling_fits_its_generate_calls_not_the_apportioned_task_seconds():
    """The layout `pipeline/sampling/sample.py` writes: a `plan` phase (prompts built and tokenized), a
    `load_model` phase, one `generate` phase per engine call outside tasks, and task records whose
    seconds are the calls' seconds apportioned by tokens."""
    calls = [(16, 9000, 900), (24, 20000, 800), (8, 3000, 1600), (32, 30000, 5000), (16, 16000, 300), (8, 9000, 700)]
    plan_s, total_pred = 2.0, sum(c[0] for c in calls)
    recs = [{"stage": "sample", "event": "start", "seconds": 0.0, "t": 0.0, "workers": 1},
            {"stage": "sample", "event": "phase", "task_id": None, "phase": "plan", "seconds": plan_s, "time": 2.0,
             "predictions": total_pred, "prompt_tokens": sum(c[1] for c in calls)},
            {"stage": "sample", "event": "phase", "task_id": None, "phase": "load_model", "seconds": LOAD_S, "time": 10.0}]
    wall = START + plan_s + LOAD_S
    for i, (p, pt, gt) in enumerate(calls):
        sec = E * p + C * pt + D * gt
        wall += sec
        recs.append({"stage": "sample", "event": "phase", "task_id": None, "phase": "generate", "seconds": sec,
                     "time": 10.0 + wall, "predictions": p, "prompt_tokens": pt, "generated_tokens": gt})
        recs.append({"stage": "sample", "event": "task", "task_id": f"t{i}", "seconds": sec * 0.5, "time": 10.0 + wall,
                     "predictions": p, "prompt_tokens": pt, "generated_tokens": gt})   # apportioned: half of it
    recs.append({"stage": "sample", "event": "end", "seconds": wall, "t": wall})
    s = fit_cost_model(recs).sample
    assert s.method.endswith("per generate call")
    assert (s.per_prediction, s.per_prompt_token, s.per_generated_token) == (
        pytest.approx(E), pytest.approx(C), pytest.approx(D))
    assert s.prediction_fixed == 0.0     # one `plan` phase: its fixed and per-prediction parts are one
    assert s.fixed == pytest.approx(START + plan_s + LOAD_S) and s.task_fixed == 0.0 and s.n_tasks == 6


def test_generation_that_runs_to_max_tokens_is_calibrated_on_the_cap():
    """An untrained model never stops: its generated tokens follow sampling's max_tokens cap, not
    the answer length, and the calibration picks the estimate that explains them."""
    capped = {k: dataclasses.replace(t, answer_tokens=tuple(10 for _ in t.answer_tokens),
                                     cap_tokens=t.answer_tokens) for k, t in PROFILED.items()}
    model = fit_cost_model(synthetic_run(PROFILED), capped)     # recorded generated = the caps
    cal = model.sample.calibration["generated_tokens_per_prediction"]
    assert cal.basis == "cap" and cal(123.0) == pytest.approx(123.0)
    targets = [dataclasses.replace(t, answer_tokens=(1,) * t.n_test, cap_tokens=t.answer_tokens)
               for t in TARGETS.values()]
    r = project(model, targets, local_settings(predictions_per_task=16))
    assert r["stages"]["sample"] == 411.2  # the caps are the answers of TARGETS: 9 s + 402.24 s


def test_few_tasks_fall_back_to_per_token_rates_worked_out_by_hand():
    """Two profiled tasks cannot separate per-step from per-token cost: TTFT falls back to one
    rate per trained token, sampling to rates split by a prior.  Numbers by hand (32 steps, 8
    predictions, as profiled):
    * TTFT compute: p1 32 x (0.05 + 0.5) = 17.6 s, p3 32 x (0.05 + 2.0) = 65.6 s, over
      32 x (500 + 2000) = 80,000 tokens: 0.00104 s per token; x1 (1,200 tokens): 2 s per task +
      32 x 1,200 x 0.00104 = 41.936 s, + 11 s start and load = 52.936 s.
    * Sampling compute: p1 1.6 + 2.4 + 8 = 12 s, p3 1.6 + 9.6 + 16 = 27.2 s; 24,000 prompt and
      1,200 generated tokens.  A prompt token costs half a TTFT token: 0.00052 s; generated
      tokens the rest: (39.2 - 12.48) / 1,200 = 0.022267 s.  x1 (1,500 prompt and 200 answer
      tokens x 8): 1 + 6.24 + 35.627 = 42.867 s, + 9 s = 51.867 s (the true cost is 49.6 s: the
      per-prediction cost folded into the token rates)."""
    two = {k: PROFILED[k] for k in ("p1", "p3")}
    model = fit_cost_model(synthetic_run(two), two)
    assert model.ttft.method.startswith("rate per tokens_trained") and model.ttft.per_step == 0
    assert model.ttft.per_train_token == pytest.approx(0.00104) and model.ttft.task_fixed == pytest.approx(2.0)
    assert model.sample.method.startswith("rates split by a prior (prompt token = 0.5 x TTFT token")
    assert model.sample.per_prompt_token == pytest.approx(0.00052)
    assert model.sample.per_generated_token == pytest.approx(26.72 / 1200)
    r = project(model, [TARGETS["x1"]], local_settings())
    assert r["stages"]["ttft"] == 52.9 and r["stages"]["sample"] == 51.9


def test_fit_compute_rejects_collinear_or_constant_features():
    units = [{"compute": 2.0 * x, "a": x, "b": 3 * x} for x in (1.0, 2.0, 4.0, 8.0)]
    coef, method = fit_compute(units, [["a", "b"], ["a"]])   # b = 3a: not identifiable
    assert method.startswith("rate per a") and coef == {"a": pytest.approx(2.0)}
    units = [{"compute": 5.0, "a": 1.0} for _ in range(5)]
    coef, method = fit_compute(units, [["a"]])
    assert coef == {"a": 5.0}


def test_calibration_affine_or_ratio():
    cal = calibrate([110, 210, 410], [100, 200, 400])
    assert (cal.alpha, cal.beta) == (pytest.approx(10.0), pytest.approx(1.0))
    cal = calibrate([300, 300, 300], [100, 200, 400])   # generation always hits a fixed cap
    assert (cal.alpha, cal.beta) == (pytest.approx(300.0), pytest.approx(0.0, abs=1e-9))
    cal = calibrate([220, 400], [100, 200])
    assert (cal.alpha, cal.beta) == (0.0, pytest.approx(620 / 300))
    assert calibrate([], []).beta == 1.0


# ----------------------------------------------------------------------------- hardware and workers

def test_hardware_names_map_to_the_table():
    names = {"Tesla T4": "T4", "NVIDIA L4": "L4", "NVIDIA A100-SXM4-80GB": "A100", "NVIDIA H100 80GB HBM3": "H100",
             "NVIDIA H100 PCIe": "H100 PCIe", "NVIDIA H200": "H200", "cpu": "cpu", "h200": "H200"}
    for device, key in names.items():
        assert hardware_of(device).name == key
    assert hardware_of("Quantum Abacus") is None and hardware_of(None) is None
    assert not HARDWARE["T4"].estimate and HARDWARE["H100"].estimate


def test_scaling_uses_compute_for_training_and_bandwidth_for_generation():
    ones = StageCost("ttft", "T4", fixed=5.0, task_fixed=2.0, per_step=1.0, per_prediction=1.0,
                     per_train_token=1.0, per_prompt_token=1.0, per_generated_token=1.0)
    h = ones.scaled("H100")
    assert (h.fixed, h.task_fixed) == (5.0, 2.0)                       # fixed costs unscaled
    for name in ("per_step", "per_train_token", "per_prompt_token"):
        assert getattr(h, name) == pytest.approx(65 / 989)              # dense fp16/bf16 TFLOP/s
    for name in ("per_prediction", "per_generated_token"):
        assert getattr(h, name) == pytest.approx(320 / 3350)            # GB/s
    cpu = StageCost("ttft", "cpu", per_train_token=1.0, per_generated_token=1.0).scaled("T4", model_scale=2.0)
    assert cpu.per_train_token == pytest.approx(HARDWARE["cpu"].train * 2)          # compute-bound cost
    assert cpu.per_generated_token == pytest.approx(HARDWARE["cpu"].decode * 2)     # bandwidth-bound cost
    with pytest.raises(ValueError, match="no hardware factor"):
        ones.scaled("abacus")


def test_largest_first_list_scheduling():
    assert list_schedule([2, 3, 3, 4, 5, 7], 2) == (12, [12, 12])
    makespan, loads = list_schedule([1, 2, 3, 4, 5, 6, 7, 8], 4)          # 4 GPUs: 8+1, 7+2, 6+3, 5+4
    assert makespan == 9 and sorted(loads) == [9, 9, 9, 9]
    assert list_schedule([1, 2, 3, 4, 5, 6, 7, 8], 4, fixed=10.0)[0] == 19.0   # each worker loads once
    assert list_schedule([10, 1, 1], 4)[0] == 10                            # the tail: one long task
    assert list_schedule([], 2, fixed=3.0) == (3.0, [3.0, 3.0])


def test_shard_schedule_deals_by_task_size_as_the_orchestrator_does():
    """Sampling's shards are fixed by task size before it runs (the orchestrator's shard_ids),
    not by projected seconds.  Sizes a 9, b 7, c 5, d 4, e 2 on 2 workers, largest first to the
    lighter worker: a -> 0 (9), b -> 1 (7), c -> 1 (12), d -> 0 (13), e -> 1 (14).  With a taking
    10 s and the others 1 s each, plus 2 s per worker: loads 2 + 10 + 1 = 13 and 2 + 3 = 5 (dealt
    by seconds instead, a would be alone: 12 and 6)."""
    from pipeline.core.scheduling import shard_ids
    sizes = {"a": 9, "b": 7, "c": 5, "d": 4, "e": 2}
    seconds = {"a": 10.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 1.0}
    assert shard_ids(sizes, 2) == [["a", "d"], ["b", "c", "e"]]
    assert shard_schedule(seconds, sizes, 2, fixed=2.0) == (13.0, [13.0, 5.0])
    assert shard_schedule(seconds, sizes, 1, fixed=2.0) == (16.0, [16.0])
    grid = lambda n: [[0] * n for _ in range(n)]  # the orchestrator's own split of real tasks agrees
    tasks = {t: {"train": [], "test": [{"input": grid(n)}]} for t, n in (("a", 3), ("b", 2), ("c", 1))}
    assert [sorted(s) for s in shard_tasks(tasks, 2)] == [["a"], ["b", "c"]]  # 9 | 4 + 1


def test_more_workers_shorten_the_projection():
    model = fit_cost_model(synthetic_run(PROFILED), PROFILED)
    one = project(model, list(TARGETS.values()), local_settings())
    four = project(model, list(TARGETS.values()), local_settings(ttft_workers=4, sample_workers=4))
    # 32 steps, by hand: x1 2 + 32 x 1.25 = 42, x2 2 + 32 x 4.05 = 131.6, x3 13.2, x4 83.6 s
    assert one["stages"]["ttft"] == 281.4                                 # 11 + 270.4 on one worker
    assert four["ttft_worker_loads"] == [142.6, 94.6, 53.0, 24.2]         # one task per worker, + 11 s each
    assert four["stages"]["ttft"] == 142.6
    # 8 predictions: x1 1 + 1.6 + 6 + 32 = 40.6, x2 116.6, x3 18.52, x4 27.4 s, + 9 s per worker
    assert one["stages"]["sample"] == 212.1 and four["stages"]["sample"] == 125.6


# ----------------------------------------------------------------------------- deadline and --fit

def unit_model() -> CostModel:
    """1 s per TTFT step and 1 s per prediction, nothing else: hand-checkable."""
    return CostModel(StageCost("ttft", "T4", per_step=1.0), StageCost("sample", "T4", per_prediction=1.0), {}, {}, "T4")


def unit_targets(n: int = 10) -> list[TaskTokens]:
    return [TaskTokens(f"t{i}", 100.0, (100,), (10,), 10) for i in range(n)]


def hour_settings(**kw) -> Settings:
    base = dict(hardware="T4", ttft_steps=100, predictions_per_task=50, deadline_hours=1.0, safety_margin_minutes=0.0,
                ttft_budget_fraction=0.5, vote_reserve_minutes=0.0, stage_grace_seconds=0.0, margin=0.0,
                first_shot_predictions=0)
    base.update(kw)
    return Settings(**base)


def test_deadline_checks():
    r = project(unit_model(), unit_targets(), hour_settings())
    assert r["stages"]["ttft"] == 1000 and r["stages"]["sample"] == 500 and r["total_s"] == 1500
    assert r["ttft_budget_s"] == 1800 and r["sample_budget_s"] == 2600 and r["fits"]
    r = project(unit_model(), unit_targets(), hour_settings(ttft_steps=190))          # 1900 s > half the hour
    assert not r["fits"] and r["checks"] == {"ttft_within_budget": False, "sample_within_budget": True,
                                             "total_within_deadline": True}
    r = project(unit_model(), unit_targets(), hour_settings(margin=0.25, ttft_steps=150))   # 1875 s with margin
    assert not r["checks"]["ttft_within_budget"]


def test_the_first_shot_runs_before_ttft_and_is_capped_by_its_budget():
    base = project(unit_model(), unit_targets(), hour_settings())
    r = project(unit_model(), unit_targets(), hour_settings(first_shot_predictions=2, first_shot_budget_fraction=0.1))
    assert r["stages"]["first_shot"] == 20 and r["first_shot_complete"]       # 10 tasks x 2 predictions x 1 s
    assert r["total_s"] == base["total_s"] + 20
    # the first shot measures sampling (here: 500 s projected), so TTFT gets what sampling x 1.2
    # leaves of the 3,580 s, at most 80 %: min(0.8 x 3580, 3580 - 600) = 2864 s
    assert r["ttft_budget_s"] == pytest.approx(0.8 * (3600 - 20))
    slow = project(unit_model(), unit_targets(), hour_settings(first_shot_predictions=2, first_shot_budget_fraction=0.1,
                                                               predictions_per_task=200))
    assert slow["ttft_budget_s"] == pytest.approx(3580 - 1.2 * 2000)   # a slow sampler (2,000 s) keeps its time
    # a budget of 1 % of the hour (36 s) cannot answer 10 tasks x 5 predictions: cut, and said
    r = project(unit_model(), unit_targets(), hour_settings(first_shot_predictions=5, first_shot_budget_fraction=0.01))
    assert r["stages"]["first_shot"] == 36 and r["first_shot_complete"] is False
    assert "the largest tasks get no first answer" in format_plan({**r, "notes": [], "model": {}})


def test_rescoring_costs_its_prefill_tokens_and_takes_its_share_of_sampling():
    model = CostModel(StageCost("ttft", "T4", per_step=1.0),
                      StageCost("sample", "T4", per_prediction=1.0, per_prompt_token=0.01), {}, {}, "T4")
    targets = unit_targets()                                  # prompt 100 tokens, answer 10, one test input
    r = project(model, targets, hour_settings(predictions_per_task=8, rescore_views=4, rescore_candidates=16,
                                              rescore_budget_fraction=0.25))
    # per task: 4 views x (100 + min(16, 8) candidates x 10) tokens x 0.01 s
    assert r["stages"]["rescore"] == pytest.approx(10 * 4 * (100 + 8 * 10) * 0.01)
    sample_s = 10 * (8 + 8 * 100 * 0.01)
    assert r["stages"]["sample"] == pytest.approx(sample_s)
    share = 3600 - 1000                                       # after TTFT (1000 s)
    assert r["sample_budget_s"] == pytest.approx(share * 0.75)
    assert r["rescore_budget_s"] == pytest.approx(share - sample_s)
    assert r["checks"]["rescore_within_budget"] and r["fits"]
    assert r["total_s"] == pytest.approx(1000 + sample_s + 72.0)
    off = project(model, targets, hour_settings(predictions_per_task=8))
    assert off["stages"]["rescore"] == 0 and "rescore_within_budget" not in off["checks"]
    assert off["sample_budget_s"] == share


def test_fit_returns_the_largest_grid_point_that_fits():
    f = fit(unit_model(), unit_targets(), hour_settings())
    assert f["max_steps"] == 176          # TTFT budget 1800 s / 10 tasks = 180 steps, multiple of 8
    assert f["max_predictions"] == 256    # (3600 - 1000) / 10 = 260 predictions, multiple of 8
    assert f["proposal"]["ttft_steps"] == 176 and f["proposal"]["predictions_per_task"] == 88   # 2:1 kept
    assert f["proposal"]["projection"]["fits"]
    assert f["frontier"][8] == 176 and f["frontier"][256] == 104 and 512 not in f["frontier"]   # 10 x (104 + 256) = 3600
    f = fit(unit_model(), unit_targets(), hour_settings(), steps_values=[8, 16], predictions_values=[8])
    assert (f["max_steps"], f["max_predictions"]) == (16, 8)   # the largest values of these small grids


def test_fit_returns_none_when_nothing_fits():
    f = fit(unit_model(), unit_targets(), hour_settings(deadline_hours=0.01))
    assert (f["max_steps"], f["max_predictions"], f["proposal"], f["frontier"]) == (None, None, None, {})


def test_untrainable_tasks_cost_no_ttft_time():
    targets = unit_targets(2) + [TaskTokens("long", None, (9000,), (900,), 900)]
    r = project(unit_model(), targets, hour_settings())
    assert r["untrainable_tasks"] == ["long"] and r["stages"]["ttft"] == 200


# ----------------------------------------------------------------------------- settings and targets

def test_settings_defaults_follow_the_submission_config():
    defaults, config = Settings(), SubmissionConfig()
    assert set(CONFIG_KEYS) >= {"ttft_steps", "ttft_batch_size", "ttft_max_seq_len", "predictions_per_task",
                                "deadline_hours", "safety_margin_minutes", "ttft_budget_fraction",
                                "vote_reserve_minutes", "stage_grace_seconds", "first_shot_predictions",
                                "first_shot_budget_fraction", "rescore_views", "rescore_budget_fraction"}
    for key in CONFIG_KEYS:
        assert getattr(defaults, key) == getattr(config, key), key
    # and no default is written twice: the planner's source names none of the config's values
    source = (REPO / "pipeline" / "planning" / "projection.py").read_text()
    settings_block = source[source.index("class Settings:"):source.index("CONFIG_KEYS =")]
    for key in CONFIG_KEYS:
        assert f"{key}: " in settings_block and f"= _RUN.{key}" in settings_block, key


def test_settings_from_the_kaggle_configs():
    s = settings_from_config(CONFIGS / "arc-prize-2024.yaml")
    assert (s.hardware, s.ttft_workers, s.sample_workers, s.n_tasks) == ("T4", 2, 2, 100)
    assert (s.ttft_steps, s.predictions_per_task, s.ttft_max_seq_len) == (300, 96, 5120)
    s = settings_from_config(CONFIGS / "arc-prize-2025.yaml")
    assert (s.hardware, s.ttft_workers, s.sample_workers, s.n_tasks) == ("L4", 4, 4, 240)
    s = settings_from_config(CONFIGS / "arc-prize-2026-arc-agi-2.yaml")   # the competition it names is known
    assert (s.hardware, s.ttft_workers, s.n_tasks) == ("L4", 4, 240)
    assert s.dataset == "data/arc-agi-2/arc-agi_training_challenges.json"   # its evaluation set is not vendored
    with pytest.raises(ValueError, match="unknown competition 'arc-prize-2031'"):
        settings_from_config({"kaggle_competition": "arc-prize-2031"})
    s = settings_from_config(CONFIGS / "local.yaml", smoke=True, ttft_steps=8)
    assert (s.hardware, s.ttft_workers, s.sample_workers, s.n_tasks, s.ttft_steps) == ("cpu", 1, 1, 3, 8)
    assert s.dataset == "data/arc-agi-1/arc-agi_evaluation_challenges.json"
    s = settings_from_config({"devices": ["cuda:0"], "hardware": "NVIDIA H100 80GB HBM3"})
    assert s.hardware == "H100"
    with pytest.raises(ValueError, match="unknown hardware"):
        settings_from_config(None, hardware="abacus")


def test_select_targets():
    tasks = {t: TaskTokens(t, 1.0, (1,), (1,), size) for t, size in (("a", 30), ("b", 10), ("c", 20))}
    assert select_targets(tasks, None) == ["a", "b", "c"]
    assert select_targets(tasks, 2, "smallest") == ["b", "c"]
    assert select_targets(tasks, 2, "first") == ["a", "b"]
    drawn = select_targets(tasks, 2, "random", seed=1)
    assert len(set(drawn)) == 2 and set(drawn) <= set(tasks) and select_targets(tasks, 2, "random", seed=1) == drawn
    many = select_targets(tasks, 7)
    assert len(many) == 7 and many[:3] == ["a", "b", "c"]


def test_task_tokens_counts_leave_one_out_samples(tokenizer):
    from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
    from pipeline.core.prompts import build_train_sample
    g = lambda v, n: [[v] * n for _ in range(n)]
    task = {"train": [{"input": g(1, 3), "output": g(2, 3)}, {"input": g(3, 4), "output": g(4, 4)},
                      {"input": g(5, 5), "output": g(6, 5)}],
            "test": [{"input": g(7, 6)}]}
    counts = task_tokens({"t": task}, tokenizer, max_seq_len=100000)["t"]
    enc = create_grid_encoder(DEFAULT_ENCODER)
    n = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    expected = []
    for i in range(3):
        s = build_train_sample({"train": task["train"][:i] + task["train"][i + 1:], "test": [task["train"][i]]},
                               enc, tokenizer, "output-from-examples-v1")
        expected.append(n(s.prompt) + n(s.completion))
    assert counts.train_tokens == pytest.approx(sum(expected) / 3)
    proxy = build_train_sample({"train": [], "test": [{"input": [[0]], "output": g(7, 6)}]}, enc, tokenizer,
                               "output-from-examples-v1").completion       # the test input as proxy answer
    assert counts.n_test == 1 and counts.answer_tokens == (n(proxy),)
    from pipeline.sampling.plan import max_tokens_for
    assert counts.cap_tokens == (max_tokens_for("task", tokenizer, enc, "output-from-examples-v1", task, 0),)
    assert task_tokens({"t": task}, tokenizer, max_seq_len=min(expected))["t"].train_tokens == counts.train_tokens
    shorter = task_tokens({"t": task}, tokenizer, max_seq_len=min(expected) - 1)["t"]  # a sample may use max_seq_len
    assert shorter.train_tokens < counts.train_tokens                 # examples dropped to fit
    assert task_tokens({"t": task}, tokenizer, max_seq_len=10)["t"].train_tokens is None


@pytest.mark.parametrize("max_seq_len", [320, 533, 2048])
def test_planner_counts_equal_ttfts_own_profile_on_every_evaluation_task(tokenizer, eval_tasks, max_seq_len):
    """One fitting rule: the planner's TTFT sample tokens are TTFT's profile of the task (mean
    tokens of its fitting leave-one-out samples; none where TTFT finds the task too long).  At
    320 and 533 tokens the two used to disagree (the planner kept zero-example samples and used a
    strict <)."""
    from pipeline.ttft import ttft
    from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder

    encoder = create_grid_encoder(DEFAULT_ENCODER)
    counts = task_tokens(eval_tasks, tokenizer, max_seq_len=max_seq_len)
    assert len(counts) == 400
    for task_id, task in eval_tasks.items():
        prof = ttft.profile_task(task_id, task, encoder, tokenizer, "output-from-examples-v1", max_seq_len)
        planned = counts[task_id].train_tokens
        if prof.status:
            assert planned is None, (task_id, prof.status)
        else:
            assert planned == pytest.approx(prof.sample_tokens), task_id


# ----------------------------------------------------------------------------- CLI

def test_cli_projects_a_profile_onto_other_settings_and_compares_with_that_run(tmp_path, tokenizer, eval_tasks,
                                                                               capsys):
    """Profile one run (the local config's settings), project it onto 3x the steps and 2x the
    predictions, and compare with a second run measured at those settings on the same synthetic
    machine: the projection extrapolates (it is not compared with the run it was fitted on)."""
    ids = ["66e6c45b", "00576224", "6ea4a07e", "0c786b71", "e9ac8c9e"]
    tasks = {t: eval_tasks[t] for t in ids}
    tokens = task_tokens(tasks, tokenizer, max_seq_len=2048)
    from pipeline.core.settings import load_config
    local = load_config(CONFIGS / "local.yaml")  # the run as the local config would make it
    run, bigger = tmp_path / "run", tmp_path / "bigger"
    steps, predictions = 3 * local.ttft_steps, 2 * local.predictions_per_task
    for folder, (s, p) in ((run, (local.ttft_steps, local.predictions_per_task)), (bigger, (steps, predictions))):
        append_jsonl(folder / "timing.jsonl", synthetic_run(tokens, steps=s, predictions=p,
                                                            first_shot=local.first_shot_predictions))
        write_json_atomic(folder / "challenges.json", tasks)
        write_json_atomic(folder / "predictions.jsonl.meta.json", {"model": "embedded"})  # what sampling writes
    out = tmp_path / "plan.json"
    rc = dispatcher.main(["plan", "--config", str(CONFIGS / "local.yaml"), "--profile", str(run), "--compare", str(bigger),
                          "--steps", str(steps), "--predictions_per_task", str(predictions), "--fit", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    data = json.loads(out.read_text())
    assert data["plan"]["task_ids"] == ids and data["plan"]["hardware"] == "cpu"
    assert local.first_shot_predictions > 0  # the first shot is projected and compared too
    measured = {"ttft": 0.0, "sample": 0.0}
    for r in synthetic_run(tokens, steps=steps, predictions=predictions, first_shot=local.first_shot_predictions):
        if r["stage"] in measured and r["event"] == "end":
            measured[r["stage"]] = r["seconds"]
    assert data["compare"]["ttft"]["measured_s"] == pytest.approx(measured["ttft"], abs=0.05)
    assert data["compare"]["sample"]["measured_s"] == pytest.approx(measured["sample"], abs=0.05)
    for stage in ("first_shot", "ttft", "sample", "total"):
        assert abs(data["compare"][stage]["error"]) < 0.01, (stage, data["compare"])
    assert data["fit"]["proposal"] is not None and "verdict: FITS" in text and "compare" in text

    evaluation = REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
    rc = dispatcher.main(["plan", "--profile", str(run), "--dataset", str(evaluation),
                          "--tasks", "10", "--select", "smallest", "--steps", "8", "--hardware", "T4",
                          "--model", "qwen2.5-0.5b"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "plan: 10 tasks on T4" in text and "profile on cpu, plan for T4" in text
    assert "model: qwen2.5-0.5b" in text and "model terms x3.6" in text   # 494 M / 134.5 M parameters


def test_a_competition_config_plans_its_competitions_tasks_for_its_model(tmp_path, capsys):
    """Before: the 2026 config planned the profile's own 3 tasks for the profile's model.  Now: 240
    tasks drawn from ARC-AGI-2's size proxy, for the model named (or a refusal, test_datasheet)."""
    run = tmp_path / "run"
    append_jsonl(run / "timing.jsonl", synthetic_run(PROFILED))
    write_json_atomic(run / "predictions.jsonl.meta.json", {"model": "embedded"})
    out = tmp_path / "plan.json"
    rc = dispatcher.main(["plan", "--config", str(CONFIGS / "arc-prize-2026-arc-agi-2.yaml"), "--profile", str(run),
                          "--model", "qwen2.5-0.5b", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    data = json.loads(out.read_text())["plan"]
    proxy = REPO / "data" / "arc-agi-2" / "arc-agi_training_challenges.json"
    assert data["tasks"] == 240 and data["hardware"] == "L4" and data["dataset"] == str(proxy)
    assert set(data["task_ids"]) <= set(json.loads(proxy.read_text())) and len(set(data["task_ids"])) == 240
    assert "plan: 240 tasks on L4" in text and "model: qwen2.5-0.5b" in text
    # no profile task JSON, an unknown profiled model: said, not assumed
    (run / "predictions.jsonl.meta.json").unlink()
    assert dispatcher.main(["plan", "--config", str(CONFIGS / "arc-prize-2026-arc-agi-2.yaml"), "--profile", str(run),
                            "--model", "qwen2.5-0.5b"]) == 2
    one_line_error(capsys.readouterr().err, "does not say which model it measured", "--profiled_model")


def test_cli_errors(tmp_path, capsys):
    assert dispatcher.main(["plan", "--profile", str(tmp_path), "--json", str(tmp_path / "plan.json")]) == 1
    one_line_error(capsys.readouterr().err, "no timing records", str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no plan.json
    append_jsonl(tmp_path / "timing.jsonl", synthetic_run({"p1": PROFILED["p1"]}))
    assert dispatcher.main(["plan", "--profile", str(tmp_path), "--hardware", "abacus"]) == 2
    assert "unknown hardware" in capsys.readouterr().err


def test_a_smoke_plan_projects_the_tasks_the_smoke_run_takes(tmp_path, capsys):
    """`plan --smoke` picks as the notebook's smoke run does (`tasks.smallest_tasks`, the
    `smoke_tasks` smallest), not at random; asking for another selection is an error."""
    from pipeline.core.settings import load_config
    from pipeline.core.tasks import smallest_tasks

    tasks = {**PROFILED, **TARGETS}
    n = load_config(CONFIGS / "local.yaml").smoke_tasks
    smallest = list(smallest_tasks(tasks, n, size=lambda t: t.size))
    result = plan(CONFIGS / "local.yaml", synthetic_run(PROFILED), tasks, smoke=True)
    assert result["task_ids"] == smallest and len(smallest) == n < len(tasks)
    with pytest.raises(ValueError, match="--select random does not apply"):
        plan(CONFIGS / "local.yaml", synthetic_run(PROFILED), tasks, smoke=True, select="random")
    append_jsonl(tmp_path / "timing.jsonl", synthetic_run({"p1": PROFILED["p1"]}))
    assert dispatcher.main(["plan", "--profile", str(tmp_path), "--smoke", "--select", "random"]) == 2
    one_line_error(capsys.readouterr().err, "--smoke", "--select random")
@pytest.mark.parametrize("flags, message", [
    (["--model_scale", "-1"], "--model_scale must be a finite number > 0, got -1.0"),
    (["--model_scale", "0"], "--model_scale must be a finite number > 0, got 0.0"),
    (["--model_scale", "nan"], "--model_scale must be a finite number > 0, got nan"),
    (["--workers", "0"], "--workers must be >= 1, got 0"),
    (["--steps", "-5"], "--steps: -5 is not >= 1"),
    (["--deadline_hours", "nan"], "--deadline_hours: nan is not > 0"),
])
def test_out_of_range_flags_are_refused_with_one_line(flags, message, tmp_path, capsys):
    """Before: --model_scale -1 (or 0) said FITS, nan gave 0 s totals, --workers 0 was ignored."""
    append_jsonl(tmp_path / "timing.jsonl", synthetic_run({"p1": PROFILED["p1"]}))
    assert dispatcher.main(["plan", "--profile", str(tmp_path), *flags]) == 2
    one_line_error(capsys.readouterr().err, message)


# ----------------------------------------------------------------------------- search and rescoring

def search_and_rescore_records(tokens: dict, views: int = 4, candidates: int = 3, per_node: float = 0.03,
                               per_prompt: float = 0.0004, nodes_per_answer_token: float = 2.5,
                               per_candidate_view: float = 0.05, per_prefill: float = 0.0006) -> list[dict]:
    """A DFS sampling stage (its generate calls and tasks counting the search's expanded `nodes`)
    and a rescore stage (task records: every prefilled token, the candidate-views), as the stages
    write them, from known costs."""
    recs = []
    for stage in ("sample", "rescore"):
        recs.append({"stage": stage, "event": "start", "seconds": 0.0, "t": 0.0, "workers": 1})
        wall = 0.0
        for tid, t in tokens.items():
            if stage == "sample":
                nodes = views * sum(nodes_per_answer_token * a for a in t.answer_tokens)
                prompt = views * sum(t.prompt_tokens)
                seconds = per_node * nodes + per_prompt * prompt
                counters = {"predictions": views * t.n_test, "prompt_tokens": prompt, "nodes": nodes}
                recs.append({"stage": stage, "event": "phase", "task_id": None, "phase": "generate", "seconds": seconds,
                             "device": "cpu", **counters})
            else:
                prefill = views * sum(p + candidates * a for p, a in zip(t.prompt_tokens, t.answer_tokens))
                counters = {"predictions": views * candidates * t.n_test, "prompt_tokens": prefill}
                seconds = per_candidate_view * counters["predictions"] + per_prefill * prefill
            recs.append({"stage": stage, "event": "task", "task_id": tid, "seconds": seconds, "device": "cpu",
                         **counters})
            wall += seconds
        recs.append({"stage": stage, "event": "end", "seconds": wall + 5.0, "t": 0.0})
    return recs


def test_dfs_and_rescoring_costs_are_fitted_from_their_own_records():
    model = fit_cost_model(search_and_rescore_records(PROFILED), PROFILED)
    r, d = model.rescore, model.dfs
    assert r.method.startswith("least squares on predictions + prompt_tokens")
    assert (r.per_prediction, r.per_prompt_token) == (pytest.approx(0.05), pytest.approx(0.0006))
    assert d.method.startswith("least squares on prompt_tokens + nodes")
    assert (d.per_prompt_token, d.per_generated_token) == (pytest.approx(0.0004), pytest.approx(0.03))
    assert d.calibration["nodes_per_view"](100.0) == pytest.approx(250.0)   # 2.5 nodes per answer token
    # a greedy profile has neither: the projection falls back to sampling's rates (and says so)
    plain = fit_cost_model(synthetic_run(PROFILED), PROFILED)
    assert plain.rescore is None and plain.dfs is None


def test_dfs_is_projected_per_node_and_rescoring_over_the_sampling_workers():
    from pipeline.planning.regression import Calibration

    dfs = StageCost("dfs", "T4", per_prompt_token=0.01, per_generated_token=0.05)
    dfs.calibration["nodes_per_view"] = Calibration(0.0, 3.0)
    rescore = StageCost("rescore", "T4", per_prediction=0.1, per_prompt_token=0.002)
    model = dataclasses.replace(unit_model(), dfs=dfs, rescore=rescore)
    targets = unit_targets()                                  # prompt 100 tokens, answer 10, one test input
    s = hour_settings(predictions_per_task=8, sample_method="dfs", rescore_views=4, rescore_candidates=16,
                      sample_workers=2)
    r = project(model, targets, s)
    # per task: 8 views x (100 prompt tokens x 0.01 + 3 x 10 nodes x 0.05) = 8 + 12 s; 5 tasks per worker
    assert r["stages"]["sample"] == pytest.approx(5 * (8 + 12)) and r["sample_cost"] == "dfs, per expanded node"
    # per task: 4 views x 8 candidates x 0.1 s + 4 x (100 + 8 x 10) tokens x 0.002 s = 3.2 + 1.44 s
    assert r["rescore_worker_loads"] == [pytest.approx(5 * 4.64)] * 2
    assert r["stages"]["rescore"] == pytest.approx(5 * 4.64) and r["rescore_cost"] == "rescore's own records"
    greedy = project(model, targets, dataclasses.replace(s, sample_method="sample"))
    assert greedy["stages"]["sample"] == pytest.approx(5 * 8)   # 8 predictions x 1 s, the sampling model
    # a config that switches search + rescoring + product of experts on is read as such
    read = settings_from_config({"sample_settings": {"method": "dfs", "min_prob": 0.1}, "engine": "transformers",
                                 "rescore_views": 8, "selection": "poe"})
    assert read.sample_method == "dfs" and read.rescore_views == 8
