"""The budget planner's cost model: seconds per stage, fitted to a measured timing profile.

  * Hardware factors (`core/hardware.py`: `Hardware`, `HARDWARE`, `hardware_of`): throughput
    relative to one T4, by which a fitted model is moved to other hardware (`StageCost.scaled`;
    kaggle/README.md has the sources).
  * Least squares (`pipeline/planning/regression.py`): `fit_compute` (the richest feature set the
    records identify, else a plain rate), `calibrate` (a task's recorded token counts against the
    estimated ones, `Calibration`).
  * The model: `StageCost` (one stage's fixed and per-unit seconds), `fit_ttft`, `fit_sample` (with
    `split_rates` when the records cannot separate prompt from generated tokens), `fit_rescore`
    (per prefilled token and candidate-view) and `fit_dfs` (per expanded node), `CostModel` and
    `fit_cost_model` (every stage plus the orchestrator's fixed stages).

What is fitted and why is step 1 and 3 of `pipeline/planning/plan.py`'s docstring and kaggle/PLANNER.md.
It reads the records through `pipeline/planning/profile.py`; numpy is its only dependency.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from pipeline.core.hardware import HARDWARE, hardware_of
from pipeline.planning.profile import COMPUTE_PHASES, is_orchestrator, profile, stage_name
from pipeline.planning.regression import MIN_SPREAD, Calibration, calibrate, fit_compute, mean, median, nnls, spread
from pipeline.planning.token_counts import TaskTokens

TTFT_STAGE, SAMPLE_STAGE, FIRST_SHOT_STAGE, RESCORE_STAGE = "ttft", "sample", "first_shot", "rescore"
DFS_COST = "dfs"                               # the sample stage's cost when it searches (`fit_dfs`)
PRE_STAGES = ("start", "install")              # before TTFT, in the orchestrator's order
POST_STAGES = ("vote", "score")                # after sampling (profile/summary are seconds)
PREFILL_SHARE_OF_TRAIN = 0.5                   # a prompt token ~ forward only; a LoRA step ~ forward + backward




# ----------------------------------------------------------------------------- the cost model

FIXED = ("fixed", "task_fixed", "prediction_fixed")
COEFFICIENTS = ("per_step", "per_prediction", "per_train_token", "per_attention_pair", "per_prompt_token",
                "per_generated_token")
DECODE_COEFFICIENTS = ("per_prediction", "per_generated_token")


@dataclass
class StageCost:
    """Seconds of one stage on `hardware`: `fixed` once per worker, `task_seconds` per task."""
    stage: str
    hardware: str
    fixed: float = 0.0
    task_fixed: float = 0.0
    prediction_fixed: float = 0.0   # unscaled per-prediction overhead (building prompts)
    per_step: float = 0.0
    per_prediction: float = 0.0
    per_train_token: float = 0.0
    per_attention_pair: float = 0.0  # per (sample token)^2 of every trained sample: attention (datasheet model only)
    per_prompt_token: float = 0.0
    per_generated_token: float = 0.0
    method: str = ""
    n_tasks: int = 0
    calibration: dict[str, Calibration] = field(default_factory=dict)

    def task_seconds(self, steps: float = 0, predictions: float = 0, train_tokens: float = 0,
                     prompt_tokens: float = 0, generated_tokens: float = 0, attention_pairs: float = 0) -> float:
        return (self.task_fixed + predictions * self.prediction_fixed + steps * self.per_step
                + predictions * self.per_prediction
                + train_tokens * self.per_train_token + attention_pairs * self.per_attention_pair
                + prompt_tokens * self.per_prompt_token
                + generated_tokens * self.per_generated_token)

    def scaled(self, hardware: str, model_scale: float = 1.0) -> "StageCost":
        """The same model on other hardware: compute terms x train ratio, decode terms x decode
        ratio, all model terms x model_scale; fixed terms unchanged."""
        src, dst = hardware_of(self.hardware), hardware_of(hardware)
        if src is None or dst is None:
            raise ValueError(f"no hardware factor for {self.hardware!r} or {hardware!r}; known: {', '.join(HARDWARE)}")
        new = dataclasses.replace(self, hardware=dst.name)
        for name in COEFFICIENTS:
            ratio = (src.decode / dst.decode) if name in DECODE_COEFFICIENTS else (src.train / dst.train)
            setattr(new, name, getattr(self, name) * ratio * model_scale)
        return new


UNIT_COUNTERS = ("tokens_trained", "prompt_tokens", "generated_tokens", "steps", "predictions", "nodes")


def _stage_records(records: Sequence[dict], stage: str) -> list[dict]:
    return [r for r in records if not is_orchestrator(r) and stage_name(r) == stage]


def _task_units(records: Sequence[dict], stage: str, prefer_chunks: bool = False) -> list[dict]:
    """The observations a stage's compute is fitted on, each {"task_id", "seconds", "compute",
    "overhead", counters...}: one per task (its "task" records summed; its compute phases, when
    recorded, are `compute`, the rest `overhead`), or with `prefer_chunks` one per compute phase
    recorded outside tasks with token counters (sampling's per-`generate`-call records: its task
    records only apportion a call's seconds by tokens, so they hold no independent timing)."""
    recs = _stage_records(records, stage)
    chunks = [r for r in recs if r.get("event") == "phase" and r.get("phase") in COMPUTE_PHASES
              and r.get("task_id") is None and any(isinstance(r.get(k), (int, float)) for k in UNIT_COUNTERS)]
    units: dict[str, dict] = {}
    compute: dict[str, float] = {}
    if prefer_chunks and chunks:
        for i, r in enumerate(chunks):
            units[f"#{i}"] = {"task_id": None, "seconds": float(r.get("seconds") or 0),
                              **{k: r[k] for k in UNIT_COUNTERS if isinstance(r.get(k), (int, float))}}
    else:
        for r in recs:
            tid = r.get("task_id")
            if r.get("event") == "task" and tid is not None:
                u = units.setdefault(str(tid), {"task_id": str(tid), "seconds": 0.0})
                u["seconds"] += float(r.get("seconds") or 0)
                for k in UNIT_COUNTERS:
                    if isinstance(r.get(k), (int, float)):
                        u[k] = u.get(k, 0) + r[k]
            elif r.get("event") == "phase" and r.get("phase") in COMPUTE_PHASES and tid is not None:
                compute[str(tid)] = compute.get(str(tid), 0.0) + float(r.get("seconds") or 0)
    for key, u in units.items():
        u["compute"] = min(compute[key], u["seconds"]) if key in compute else u["seconds"]
        u["overhead"] = u["seconds"] - u["compute"]
    return list(units.values())


def _prediction_overhead(records: Sequence[dict], stage: str) -> float:
    """Seconds per prediction of the non-compute phases outside tasks that report `predictions`
    (sampling's `plan`: building and tokenizing prompts; the tokenizer load is its own phase). One such phase
    cannot tell its fixed part from its per-prediction part: it then counts as fixed (0 here);
    several of different sizes get a non-negative line, whose slope is returned."""
    recs = [r for r in _stage_records(records, stage) if r.get("event") == "phase" and r.get("task_id") is None
            and r.get("phase") not in COMPUTE_PHASES and isinstance(r.get("predictions"), (int, float))]
    xs, ys = [float(r["predictions"]) for r in recs], [float(r.get("seconds") or 0) for r in recs]
    if len(recs) < 2 or spread(xs) < MIN_SPREAD:
        return 0.0
    (_, slope), _ = nnls([[1.0] * len(xs), xs], ys)
    return slope


def _stage_fixed(prof_stage: dict | None, accounted: float) -> float:
    """Seconds per worker not accounted for by tasks/chunks (and scaling overhead): the stage's
    worker-seconds (wall x workers) minus `accounted`, over the workers."""
    if not prof_stage:
        return 0.0
    workers = max(1, prof_stage["workers"])
    return max(0.0, (prof_stage["busy_s"] - accounted) / workers)


def fit_ttft(records: Sequence[dict], prof: dict, tokens: Mapping[str, TaskTokens] | None = None,
             batch_size: int = 1) -> StageCost | None:
    """TTFT cost from task records with `steps` and `tokens_trained` (None: no TTFT task records)."""
    all_units = _task_units(records, TTFT_STAGE)
    units = [u for u in all_units if u.get("tokens_trained")]
    if not units:
        return None
    stage = prof["stages"].get(TTFT_STAGE)
    has_steps = all(u.get("steps", 0) > 0 for u in units)
    coef, method = fit_compute(units, ([["steps", "tokens_trained"]] if has_steps else []) + [["tokens_trained"]])
    cost = StageCost(TTFT_STAGE, hardware_name(stage), fixed=_stage_fixed(stage, sum(u["seconds"] for u in all_units)),
                     task_fixed=median([u["overhead"] for u in units]),
                     per_step=coef.get("steps", 0.0), per_train_token=coef.get("tokens_trained", 0.0),
                     method=method, n_tasks=len(units))
    if tokens:
        rec, est = [], []
        for u in units:
            t = tokens.get(u["task_id"])
            if t is not None and t.train_tokens and u.get("steps"):
                rec.append(u["tokens_trained"] / u["steps"])
                est.append(t.train_tokens * batch_size)
        cost.calibration["train_tokens_per_step"] = calibrate(rec, est)
    return cost


def fit_sample(records: Sequence[dict], prof: dict, tokens: Mapping[str, TaskTokens] | None = None,
               ttft: StageCost | None = None) -> StageCost | None:
    """Sampling cost from its per-`generate`-call records (else its task records) with prompt and
    generated tokens and predictions; per-task calibration from its task records."""
    task_units = _task_units(records, SAMPLE_STAGE)
    all_units = _task_units(records, SAMPLE_STAGE, prefer_chunks=True)
    units = [u for u in all_units if u.get("generated_tokens") or u.get("prompt_tokens")]
    if not units:
        return None
    stage = prof["stages"].get(SAMPLE_STAGE)
    hardware = hardware_name(stage)
    for u in units:
        for k in ("prompt_tokens", "generated_tokens", "predictions"):
            u.setdefault(k, 0)
    has_pred = all(u["predictions"] > 0 for u in units)
    candidates = ([["predictions", "prompt_tokens", "generated_tokens"]] if has_pred else []) + [
        ["prompt_tokens", "generated_tokens"], ["generated_tokens"]]
    coef, method = fit_compute(units, candidates)
    if method.startswith("rate"):
        prior = None if ttft is None or ttft.hardware != hardware else PREFILL_SHARE_OF_TRAIN * ttft.per_train_token
        coef, method = split_rates(units, prior, hardware)
    if units[0]["task_id"] is None:
        method += ", per generate call"
    per_prediction_overhead = _prediction_overhead(records, SAMPLE_STAGE)
    planned = sum(u["predictions"] for u in units)
    cost = StageCost(SAMPLE_STAGE, hardware,
                     fixed=_stage_fixed(stage, sum(u["seconds"] for u in all_units) + per_prediction_overhead * planned),
                     task_fixed=median([u["overhead"] for u in units if u["task_id"] is not None]),
                     prediction_fixed=per_prediction_overhead,
                     per_prediction=coef.get("predictions", 0.0), per_prompt_token=coef.get("prompt_tokens", 0.0),
                     per_generated_token=coef.get("generated_tokens", 0.0), method=method, n_tasks=len(task_units))
    if tokens:
        rp, ep, rg, eg, ec = [], [], [], [], []
        for u in task_units:
            t = tokens.get(u["task_id"])
            if t is None or not u.get("predictions"):
                continue
            rp.append(u.get("prompt_tokens", 0) / u["predictions"])
            ep.append(mean(t.prompt_tokens))
            rg.append(u.get("generated_tokens", 0) / u["predictions"])
            eg.append(mean(t.answer_tokens))
            ec.append(mean(t.cap_tokens) if t.cap_tokens else None)
        cost.calibration["prompt_tokens_per_prediction"] = calibrate(rp, ep)
        # A trained model stops after the answer; an untrained one runs to max_tokens: whichever
        # estimate explains the recorded generated tokens better is used.
        by_answer = calibrate(rg, eg)
        by_cap = calibrate(rg, ec, basis="cap") if ec and None not in ec else None
        cost.calibration["generated_tokens_per_prediction"] = (
            by_cap if by_cap is not None and by_cap.sse < by_answer.sse else by_answer)
    return cost


def split_rates(units: Sequence[dict], prompt_rate: float | None, hardware: str) -> tuple[dict, str]:
    """Per-token rates when the records cannot separate prompt from generated tokens: the compute
    seconds C = c x P + d x G with c from a prior: `prompt_rate` (half the TTFT per-token cost on
    the same device: a prompt token is a forward pass, a LoRA training token forward + backward),
    else c = kappa x d with kappa 0.1 on a CPU and 1.0 on a GPU (PLANNER.md). c is kept below
    90 % of C / P so that generated tokens always cost something."""
    C = sum(u["compute"] for u in units)
    P = sum(u["prompt_tokens"] for u in units)
    G = sum(u["generated_tokens"] for u in units)
    if not G or not P:
        return ({"generated_tokens": C / G} if G else {"prompt_tokens": C / P}), f"rate per token ({len(units)} units)"
    if prompt_rate:
        c, why = prompt_rate, f"prompt token = {PREFILL_SHARE_OF_TRAIN} x TTFT token"
    else:
        kappa = 0.1 if hardware == "cpu" else 1.0
        c, why = kappa * C / (kappa * P + G), f"prompt token = {kappa} x generated token"
    c = min(c, 0.9 * C / P)
    return {"prompt_tokens": c, "generated_tokens": (C - c * P) / G}, f"rates split by a prior ({why}; {len(units)} units)"


def hardware_name(stage: dict | None) -> str:
    """The `HARDWARE` name of a profile stage's device ("cpu" when unknown)."""
    h = hardware_of(stage.get("device") if stage else None)
    return h.name if h else "cpu"


# ----------------------------------------------------------------------------- search and rescoring

def fit_rescore(records: Sequence[dict], prof: dict) -> StageCost | None:
    """Rescoring's cost from its task records (one per test input, `rescore.rescore`): compute ~
    `prompt_tokens` (every token prefilled: views x (prompt + the candidates' answers)) x
    per_prompt_token [+ `predictions` (its candidate-views) x per_prediction, when the records
    identify both]. None without such records (the projection then prices rescoring at
    sampling's prompt-token rate)."""
    all_units = _task_units(records, RESCORE_STAGE)
    units = [u for u in all_units if u.get("prompt_tokens")]
    if not units:
        return None
    for u in units:
        u.setdefault("predictions", 0)
    stage = prof["stages"].get(RESCORE_STAGE)
    coef, method = fit_compute(units, ([["predictions", "prompt_tokens"]] if all(u["predictions"] for u in units)
                                       else []) + [["prompt_tokens"]])
    return StageCost(RESCORE_STAGE, hardware_name(stage), fixed=_stage_fixed(stage, sum(u["seconds"] for u in all_units)),
                     task_fixed=median([u["overhead"] for u in units]), per_prediction=coef.get("predictions", 0.0),
                     per_prompt_token=coef.get("prompt_tokens", 0.0), method=method, n_tasks=len(units))


def fit_dfs(records: Sequence[dict], prof: dict, tokens: Mapping[str, TaskTokens] | None = None) -> StageCost | None:
    """DFS sampling's cost (`sample --method dfs`) from the sample stage's records that count the
    search's expanded `nodes` (one one-token forward each, so priced like generated tokens: the
    per_generated_token slot, scaled by the decode ratio) beside the prompts' `prompt_tokens`;
    per-generate-call records first, else task records. The calibration `nodes_per_view` maps a
    view's answer tokens (token_counts) to the nodes its search expanded. None without such
    records: a profile of greedy sampling says nothing about a search's cost."""
    units = [u for u in _task_units(records, SAMPLE_STAGE, prefer_chunks=True) if u.get("nodes")]
    if not units:
        return None
    task_units = [u for u in _task_units(records, SAMPLE_STAGE) if u.get("nodes")]
    for u in units:
        u.setdefault("prompt_tokens", 0)
    stage = prof["stages"].get(SAMPLE_STAGE)
    coef, method = fit_compute(units, [["prompt_tokens", "nodes"], ["nodes"]])
    cost = StageCost(DFS_COST, hardware_name(stage), fixed=_stage_fixed(stage, sum(u["seconds"] for u in units)),
                     task_fixed=median([u["overhead"] for u in units if u["task_id"] is not None] or [0.0]),
                     per_prompt_token=coef.get("prompt_tokens", 0.0), per_generated_token=coef.get("nodes", 0.0),
                     method=method, n_tasks=len(task_units))
    if tokens:
        rec, est = [], []
        for u in task_units:
            t = tokens.get(u["task_id"])
            if t is not None and u.get("predictions"):
                rec.append(u["nodes"] / u["predictions"])
                est.append(mean(t.answer_tokens))
        cost.calibration["nodes_per_view"] = calibrate(rec, est)
    return cost


@dataclass
class CostModel:
    """Everything a projection needs from a profile."""
    ttft: StageCost | None
    sample: StageCost | None
    pre_fixed: dict[str, float]       # orchestrator stages before TTFT (start, install), seconds
    post_fixed: dict[str, float]      # after sampling (vote, score), seconds
    hardware: str
    rescore: StageCost | None = None  # fitted when the profile rescored (`fit_rescore`)
    dfs: StageCost | None = None      # fitted when the profile's sampling was a DFS that counted nodes


def fit_cost_model(records: Sequence[dict], tokens: Mapping[str, TaskTokens] | None = None,
                   ttft_batch_size: int = 1) -> CostModel:
    prof = profile(records)
    ttft = fit_ttft(records, prof, tokens, ttft_batch_size)
    sample = fit_sample(records, prof, tokens, ttft)
    walls = {name: s["wall_s"] for name, s in prof["stages"].items()}
    hardware = (ttft or sample).hardware if (ttft or sample) else "cpu"
    return CostModel(ttft, sample, {s: walls[s] for s in PRE_STAGES if s in walls},
                     {s: walls[s] for s in POST_STAGES if s in walls}, hardware,
                     rescore=fit_rescore(records, prof), dfs=fit_dfs(records, prof, tokens))

