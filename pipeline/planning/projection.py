"""The planner's projection (`python -m pipeline plan`, `pipeline/planning/plan.py`): what a run
spends and may spend (`Settings`), and the seconds a cost model projects for it, stage by stage,
under the run's own order, budgets and scheduling rules (`project`; the steps are
`pipeline/planning/plan.py`'s docstring, 4 and 5).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from pipeline.core.scheduling import makespan, shard_ids, ttft_share_s
from pipeline.core.settings import RESCORE, SAMPLE, SubmissionConfig
from pipeline.planning.cost_model import FIRST_SHOT_STAGE, RESCORE_STAGE, SAMPLE_STAGE, TTFT_STAGE, CostModel, StageCost
from pipeline.planning.regression import Calibration, mean, median
from pipeline.planning.token_counts import TaskTokens

DEFAULT_MARGIN = 0.15                          # projection error allowance (PLANNER.md)


_RUN = SubmissionConfig()  # the run's defaults: Settings copies none of them by hand


@dataclass(frozen=True)
class Settings:
    """What a run spends and may spend: the config keys of `settings.SubmissionConfig` (their
    defaults are the config's) plus what only the planner has (hardware, workers, margin, ...)."""
    hardware: str = "T4"
    ttft_workers: int = 1
    sample_workers: int = 1
    first_shot_predictions: int = _RUN.first_shot_predictions
    first_shot_budget_fraction: float = _RUN.first_shot_budget_fraction
    ttft_steps: int = _RUN.ttft_steps
    ttft_batch_size: int = _RUN.ttft_batch_size
    ttft_max_seq_len: int = _RUN.ttft_max_seq_len
    predictions_per_task: int = _RUN.predictions_per_task
    rescore_views: int = _RUN.rescore_views
    rescore_budget_fraction: float = _RUN.rescore_budget_fraction
    rescore_candidates: int = RESCORE.max_candidates
    sample_method: str = SAMPLE.method                 # the config's sample_settings method: dfs is priced per node
    deadline_hours: float = _RUN.deadline_hours
    safety_margin_minutes: float = _RUN.safety_margin_minutes
    ttft_budget_fraction: float = _RUN.ttft_budget_fraction
    ttft_min_fraction: float = _RUN.ttft_min_fraction
    ttft_max_fraction: float = _RUN.ttft_max_fraction
    vote_reserve_minutes: float = _RUN.vote_reserve_minutes
    stage_grace_seconds: float = _RUN.stage_grace_seconds
    engine: str = _RUN.engine
    margin: float = DEFAULT_MARGIN
    model_scale: float = 1.0
    n_tasks: int | None = None
    dataset: str | None = None
    # the config's ttft_settings / sample_settings as (name, value) pairs: the recipe the profile-free
    # cost model and the memory model read (LoRA rank, DFS, max_num_seqs, ...)
    ttft_options: tuple[tuple[str, Any], ...] = ()
    sample_options: tuple[tuple[str, Any], ...] = ()

    @property
    def available_s(self) -> float:
        return self.deadline_hours * 3600 - self.safety_margin_minutes * 60


# the Settings read from a config file: every field the submission config has too
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(Settings) if hasattr(_RUN, f.name) and f.name != "hardware")


# ----------------------------------------------------------------------------- scheduling

def list_schedule(durations: Sequence[float], workers: int, fixed: float = 0.0) -> tuple[float, list[float]]:
    """Largest-first list scheduling (`scheduling.makespan`): each task in decreasing order goes to
    the least loaded worker; every worker starts at `fixed`. Returns (makespan, loads)."""
    return makespan(durations, workers, fixed)


def shard_schedule(durations: Mapping[str, float], sizes: Mapping[str, int], workers: int,
                   fixed: float = 0.0) -> tuple[float, list[float]]:
    """Sampling's static shards, made by scheduling.shard_ids as the orchestrator makes them; each
    shard is one worker paying `fixed` once."""
    if workers <= 1:
        total = fixed + sum(durations.values())
        return total, [total]
    shards = shard_ids({t: sizes.get(t, 0) for t in durations}, workers)
    loads = [fixed + sum(durations[t] for t in shard) for shard in shards]
    return max(loads), loads


# ----------------------------------------------------------------------------- projection

def _per_task_features(t: TaskTokens, s: Settings, ttft: StageCost | None, sample: StageCost | None) -> dict:
    cal = lambda cost, key: (cost.calibration.get(key) if cost else None) or Calibration()
    train_per_step = cal(ttft, "train_tokens_per_step")(t.train_tokens * s.ttft_batch_size) if t.train_tokens else 0.0
    sample_len = train_per_step / s.ttft_batch_size   # attention grows with each sample's length squared
    predictions = s.predictions_per_task * t.n_test  # per test input (arc24: 96 per test input)
    prompt = sum(cal(sample, "prompt_tokens_per_prediction")(p) for p in t.prompt_tokens) * s.predictions_per_task
    gen_cal = cal(sample, "generated_tokens_per_prediction")
    basis = t.cap_tokens if gen_cal.basis == "cap" and t.cap_tokens else t.answer_tokens
    generated = sum(gen_cal(a) for a in basis) * s.predictions_per_task
    return {"trainable": t.train_tokens is not None, "train_tokens": s.ttft_steps * train_per_step,
            "attention_pairs": s.ttft_steps * s.ttft_batch_size * sample_len ** 2,
            "predictions": predictions, "prompt_tokens": prompt, "generated_tokens": generated}


def rescore_prefill_tokens(t: TaskTokens, s: Settings) -> float:
    """Tokens the rescore stage prefills for a task: per test input and view, the prompt once and
    each candidate's answer (the KV cache of the prompt is shared, `rescore.answer_logprobs`).
    Candidates: at most `rescore_candidates`, at most the predictions (an upper bound: samples
    that agree are one candidate)."""
    candidates = min(s.rescore_candidates, s.predictions_per_task)
    return s.rescore_views * sum(p + candidates * a for p, a in zip(t.prompt_tokens, t.answer_tokens))


def rescore_candidate_views(t: TaskTokens, s: Settings) -> float:
    """A task's candidate-views (the rescore records' `predictions`): per test input, views x candidates."""
    return s.rescore_views * min(s.rescore_candidates, s.predictions_per_task) * t.n_test


def dfs_nodes(t: TaskTokens, s: Settings, dfs: StageCost) -> float:
    """Nodes a task's DFS expands: per test input and view, its answer tokens through the profile's
    `nodes_per_view` calibration (`cost_model.fit_dfs`; uncalibrated: one node per answer token,
    a single path, the least a search can expand)."""
    per_view = dfs.calibration.get("nodes_per_view") or Calibration()
    return s.predictions_per_task * sum(per_view(a) for a in t.answer_tokens)


def project(model: CostModel, targets: Sequence[TaskTokens], s: Settings) -> dict:
    """Projected seconds per stage and the verdict against the deadline (see the module docstring).

    The run's order and budgets, as `kaggle/run.py:KaggleRun` spends them: pre-stages; the first shot
    (`first_shot_predictions` greedy answers per test input with the sampling cost model, one
    process, capped at `first_shot_budget_fraction` of the time left; it is voted at once); TTFT;
    sampling (less `rescore_budget_fraction` of its share when rescoring is on; with
    `sample_method` dfs and a profile whose DFS counted its nodes, priced per expanded node,
    `cost_model.fit_dfs`); rescoring (`rescore_views` > 0: its own fitted cost per prefilled token
    and candidate-view when the profile rescored, else every prefill token at sampling's
    prompt-token rate; over the sampling workers' shards, as the run starts it); post-stages."""
    ttft = model.ttft.scaled(s.hardware, s.model_scale) if model.ttft else None
    sample = model.sample.scaled(s.hardware, s.model_scale) if model.sample else None
    search = model.dfs.scaled(s.hardware, s.model_scale) if model.dfs and s.sample_method == "dfs" else None
    rescoring = model.rescore.scaled(s.hardware, s.model_scale) if model.rescore else None
    ttft_d, sample_d, first_d, rescore_d, untrainable = {}, {}, {}, {}, []
    task_cap = dict(s.sample_options).get("dfs_task_seconds") if s.sample_method == "dfs" else None
    first_on = sample is not None and s.first_shot_predictions > 0
    rescore_on = sample is not None and s.rescore_views > 0
    first_settings = dataclasses.replace(s, predictions_per_task=s.first_shot_predictions)
    overhead = 0.0  # worker-seconds outside compute: fixed costs, per-task and per-prediction overheads
    for t in targets:
        f = _per_task_features(t, s, model.ttft, model.sample)
        if ttft:
            if f["trainable"]:
                ttft_d[t.task_id] = ttft.task_seconds(steps=s.ttft_steps, train_tokens=f["train_tokens"],
                                                     attention_pairs=f["attention_pairs"])
                overhead += ttft.task_fixed
            else:
                untrainable.append(t.task_id)
        if search:
            sample_d[t.task_id] = search.task_seconds(prompt_tokens=f["prompt_tokens"],
                                                      generated_tokens=dfs_nodes(t, s, model.dfs))
            overhead += search.task_fixed
        elif sample:
            sample_d[t.task_id] = sample.task_seconds(predictions=f["predictions"], prompt_tokens=f["prompt_tokens"],
                                                      generated_tokens=f["generated_tokens"])
            overhead += sample.task_fixed + f["predictions"] * sample.prediction_fixed
        if task_cap and t.task_id in sample_d:  # DFS stops a task's search at its cap (sample_settings)
            sample_d[t.task_id] = min(sample_d[t.task_id], task_cap)
        if first_on:
            g = _per_task_features(t, first_settings, model.ttft, model.sample)
            first_d[t.task_id] = sample.task_seconds(predictions=g["predictions"], prompt_tokens=g["prompt_tokens"],
                                                     generated_tokens=g["generated_tokens"])
            overhead += sample.task_fixed + g["predictions"] * sample.prediction_fixed
        if rescore_on and rescoring:
            rescore_d[t.task_id] = rescoring.task_seconds(predictions=rescore_candidate_views(t, s),
                                                          prompt_tokens=rescore_prefill_tokens(t, s))
            overhead += rescoring.task_fixed
        elif rescore_on:
            rescore_d[t.task_id] = sample.task_fixed + rescore_prefill_tokens(t, s) * sample.per_prompt_token
            overhead += sample.task_fixed
    available = s.available_s
    m = 1 + s.margin
    pre, post = sum(model.pre_fixed.values()), sum(model.post_fixed.values())
    # the first shot runs before TTFT under its own cap; what it would need beyond it is not spent
    first_budget = (available - pre) * s.first_shot_budget_fraction - s.stage_grace_seconds
    first_need = sample.fixed + sum(first_d.values()) if first_on else 0.0
    first_s = min(first_need, max(0.0, first_budget)) if first_on else 0.0
    ttft_s, ttft_loads = list_schedule(list(ttft_d.values()), s.ttft_workers, ttft.fixed) if ttft else (0.0, [])
    sizes = {t.task_id: t.size for t in targets}
    sample_s, sample_loads = shard_schedule(sample_d, sizes, s.sample_workers, sample.fixed) if sample else (0.0, [])
    rescore_s, rescore_loads = (shard_schedule(rescore_d, sizes, s.sample_workers, (rescoring or sample).fixed)
                                if rescore_on else (0.0, []))
    before_ttft = pre + first_s  # (its vote is in the profile's vote wall, with the final one: post)
    total = before_ttft + ttft_s + sample_s + rescore_s + post
    overhead += pre + post + (ttft.fixed * len(ttft_loads) if ttft else 0.0) + (
        sample.fixed * (len(sample_loads) + first_on) + (rescoring or sample).fixed * len(rescore_loads)
        if sample else 0.0)
    busy = before_ttft + sum(ttft_loads) + sum(sample_loads) + sum(rescore_loads) + post

    # as the run: with a first shot, TTFT's share follows sampling's (here: projected) need
    share_s, _ = ttft_share_s(available - before_ttft, s.vote_reserve_minutes * 60, sample_s if first_on else None, s)
    ttft_budget = share_s - s.stage_grace_seconds
    share = available - before_ttft - ttft_s * m - s.vote_reserve_minutes * 60
    sample_budget = share * (1 - s.rescore_budget_fraction if rescore_on else 1) - s.stage_grace_seconds
    checks = {
        "ttft_within_budget": ttft_s * m <= ttft_budget,
        "sample_within_budget": sample_s * m <= sample_budget,
        "total_within_deadline": before_ttft + (ttft_s + sample_s + rescore_s) * m
        + max(post, s.vote_reserve_minutes * 60) <= available,
    }
    rescore_budget = None
    if rescore_on:  # rescoring gets what sampling leaves before the vote reserve
        rescore_budget = share - sample_s * m - s.stage_grace_seconds
        checks["rescore_within_budget"] = rescore_s * m <= rescore_budget
    return {
        "hardware": s.hardware, "tasks": len(targets), "ttft_steps": s.ttft_steps,
        "predictions_per_task": s.predictions_per_task, "ttft_workers": s.ttft_workers,
        "sample_workers": s.sample_workers, "first_shot_predictions": s.first_shot_predictions if first_on else 0,
        "rescore_views": s.rescore_views if rescore_on else 0,
        "stages": {"pre": round(pre, 1), FIRST_SHOT_STAGE: round(first_s, 1), TTFT_STAGE: round(ttft_s, 1),
                   SAMPLE_STAGE: round(sample_s, 1), RESCORE_STAGE: round(rescore_s, 1), "post": round(post, 1)},
        "first_shot_complete": first_need <= first_budget if first_on else None,
        "first_shot_budget_s": round(first_budget, 1) if first_on else None,
        "ttft_worker_loads": [round(x, 1) for x in ttft_loads],
        "sample_worker_loads": [round(x, 1) for x in sample_loads],
        "rescore_worker_loads": [round(x, 1) for x in rescore_loads],
        "sample_cost": "dfs, per expanded node" if search else (
            "sampling's rates (the profile's DFS counted no nodes)" if s.sample_method == "dfs" else "sampling"),
        "rescore_cost": ("rescore's own records" if rescoring else "sampling's prompt-token rate") if rescore_on else None,
        "task_seconds": {"ttft": _summary(ttft_d.values()), "sample": _summary(sample_d.values()),
                         FIRST_SHOT_STAGE: _summary(first_d.values()), RESCORE_STAGE: _summary(rescore_d.values())},
        "untrainable_tasks": untrainable,
        "total_s": round(total, 1), "available_s": round(available, 1),
        "deadline_s": round(s.deadline_hours * 3600, 1), "margin": s.margin,
        "ttft_budget_s": round(ttft_budget, 1), "sample_budget_s": round(sample_budget, 1),
        "rescore_budget_s": None if rescore_budget is None else round(rescore_budget, 1),
        "slack_s": round(available - total, 1), "checks": checks, "fits": all(checks.values()),
        "busy_s": round(busy, 1), "non_compute_s": round(overhead, 1),
        "non_compute_share": round(overhead / busy, 4) if busy else None,
    }


def _summary(xs: Iterable[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {}
    return {"mean": round(mean(xs), 2), "median": round(median(xs), 2), "min": round(xs[0], 2),
            "max": round(xs[-1], 2),
            "sum": round(sum(xs), 1)}
