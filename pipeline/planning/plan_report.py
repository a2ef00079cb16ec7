"""The budget planner's output: a projection as text (`format_plan`, with the search for settings
that fit and a comparison when given) and a projection beside a measured run (`compare`,
`measured_stages`: projected vs measured seconds per stage, and the relative error).

It works on the dicts `planner.project` and `planner.fit` return and imports no planner code.
"""
from __future__ import annotations

from typing import Sequence

from pipeline.planning.cost_model import (COEFFICIENTS, FIRST_SHOT_STAGE, FIXED, POST_STAGES, PRE_STAGES, RESCORE_STAGE, SAMPLE_STAGE,
                         TTFT_STAGE, DFS_COST)
from pipeline.planning.profile import NON_COMPUTE_TARGET, profile

PROJECTED_STAGES = ("pre", FIRST_SHOT_STAGE, TTFT_STAGE, SAMPLE_STAGE, RESCORE_STAGE, "post")


def measured_stages(records: Sequence[dict]) -> dict:
    prof = profile(records)
    walls = {name: s["wall_s"] for name, s in prof["stages"].items()}
    singles = (FIRST_SHOT_STAGE, TTFT_STAGE, SAMPLE_STAGE, RESCORE_STAGE)
    stages = {"pre": sum(walls.get(s, 0.0) for s in PRE_STAGES), **{s: walls.get(s, 0.0) for s in singles},
              "post": sum(walls.get(s, 0.0) for s in POST_STAGES)}
    return {**stages, "total": sum(stages.values()), "run_wall": prof["run"]["wall_s"]}


def compare(projection: dict, records: Sequence[dict]) -> dict:
    """Projected vs measured seconds per stage and the relative error (projected/measured - 1)."""
    measured = measured_stages(records)
    rows = {}
    for key in PROJECTED_STAGES + ("total",):
        p = projection["total_s"] if key == "total" else projection["stages"][key]
        mval = measured[key]
        if key in (FIRST_SHOT_STAGE, RESCORE_STAGE) and not p and not mval:
            continue  # a stage neither planned nor run
        rows[key] = {"projected_s": p, "measured_s": round(mval, 1),
                     "error": round(p / mval - 1, 4) if mval else None}
    rows["run_wall"] = {"measured_s": measured["run_wall"]}
    return rows


def _hms(seconds: float) -> str:
    seconds = max(0.0, seconds)
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"


GIB = 2 ** 30
MEMORY_ROWS = {TTFT_STAGE: "ttft", SAMPLE_STAGE: "sample", FIRST_SHOT_STAGE: "sample", RESCORE_STAGE: "sample"}


def memory_text(memory: dict, stage: str) -> str:
    """'13.7 GiB of 22.0 GiB (fits)' for a stage's row of `memory_plan.stage_memory`."""
    row = memory.get(MEMORY_ROWS.get(stage, ""))
    if not row:
        return ""
    limit = memory.get("gpu_bytes")
    verdict = "" if row.get("fits") is None else (" (fits)" if row["fits"] else " (DOES NOT FIT)")
    if row.get("full_length_seqs") is not None:  # vLLM: its cache's worst-case concurrency
        verdict += f", cache holds {row['full_length_seqs']} full-length sequences"
    return f"{row['total'] / GIB:.1f} GiB" + (f" of {limit / GIB:.1f} GiB" if limit else "") + verdict


def format_plan(result: dict, fitted: dict | None = None, comparison: dict | None = None) -> str:
    r = result
    lines = [f"plan: {r['tasks']} tasks on {r['hardware']} (TTFT workers {r['ttft_workers']}, sampling workers "
             f"{r['sample_workers']}), {r['ttft_steps']} TTFT steps, {r['predictions_per_task']} predictions per task"]
    if r.get("planned_model"):
        lines.append(f"  model: {r['planned_model']}")
    m = r["model"]
    for name in (TTFT_STAGE, SAMPLE_STAGE, RESCORE_STAGE, DFS_COST):  # rescore and dfs: when the profile has them
        c = m.get(name)
        if c:
            coefs = ", ".join(f"{k} {c[k]:.4g}" for k in FIXED + COEFFICIENTS if c[k])
            lines.append(f"  model {name} ({c['hardware']}, {c['method']}): {coefs}")
            for k, cal in c["calibration"].items():
                basis = " (max_tokens cap)" if cal["basis"] == "cap" else ""
                lines.append(f"    {k}: recorded = {cal['alpha']:.1f} + {cal['beta']:.3f} x estimated{basis} "
                             f"({cal['method']})")
    lines.append("")
    width = 10
    memory = r.get("memory") or {}
    lines.append(f"  {'stage':<{width}} {'projected':>12}  {'per task (mean / max)':<24}"
                 + ("  GPU memory per process" if memory else ""))
    for key in PROJECTED_STAGES:
        if key in (FIRST_SHOT_STAGE, RESCORE_STAGE) and not r["stages"][key]:
            continue  # off in this config
        per = r["task_seconds"].get(key, {})
        extra = f"{per['mean']:.1f} / {per['max']:.1f} s" if per else ""
        mem = memory_text(memory, key) if memory else ""
        lines.append(f"  {key:<{width}} {_hms(r['stages'][key]):>12}  {extra:<24}  {mem}".rstrip())
    lines.append(f"  {'total':<{width}} {_hms(r['total_s']):>12}  of {_hms(r['available_s'])} available "
                 f"({_hms(r['deadline_s'])} deadline minus the safety margin)")
    lines.append(f"  TTFT budget {_hms(r['ttft_budget_s'])}, sampling budget {_hms(r['sample_budget_s'])}"
                 + (f", rescore budget {_hms(r['rescore_budget_s'])}" if r.get("rescore_budget_s") is not None else "")
                 + f", planner margin {r['margin']:.0%}")
    if r.get("first_shot_complete") is False:
        lines.append(f"  first shot ({r['first_shot_predictions']} per test input) is cut at its budget "
                     f"{_hms(r['first_shot_budget_s'])}: the largest tasks get no first answer")
    if r.get("non_compute_share") is not None:
        share = r["non_compute_share"]
        lines.append(f"  non-compute (process starts, model loads, per-task and per-prediction overheads): "
                     f"{_hms(r['non_compute_s'])} of {_hms(r['busy_s'])} worker time = {100 * share:.1f} % "
                     f"(target < {100 * NON_COMPUTE_TARGET:.0f} %: {'met' if share < NON_COMPUTE_TARGET else 'NOT met'})")
    if r["untrainable_tasks"]:
        lines.append(f"  {len(r['untrainable_tasks'])} task(s) fit no TTFT sample in max_seq_len: "
                     f"{', '.join(r['untrainable_tasks'][:10])}")
    if r.get("task_ids") and len(r["task_ids"]) <= 20:
        lines.append(f"  tasks: {','.join(r['task_ids'])}")
    failed = [k for k, ok in r["checks"].items() if not ok]
    verdict = (f"FITS with {_hms(r['slack_s'])} to spare" if r["fits"]
               else f"DOES NOT FIT ({', '.join(failed)})")
    lines.append(f"verdict: {verdict}")
    for note in r["notes"]:
        lines.append(f"note: {note}")
    if fitted is not None and fitted.get("memory"):
        lines.append("")
        fm = fitted["memory"]
        changes = ", ".join(f"{k} {v}" for k, v in fm["changes"].items()) or "none needed"
        verdict = {True: "both stages fit", False: "still DOES NOT FIT", None: "no GPU memory to fit"}[fm["fits"]]
        lines.append(f"fit memory: {changes}; {verdict}; sampling processes per GPU that fit: {fm['processes_per_gpu']}")
    if fitted is not None:
        lines.append("")
        p = fitted["proposal"]
        lines.append("fit: " + (f"proposal {p['ttft_steps']} steps, {p['predictions_per_task']} predictions per task "
                                f"(projected {_hms(p['projection']['total_s'])})" if p else "nothing on the grid fits"))
        lines.append(f"  largest steps at {r['predictions_per_task']} predictions: {fitted['max_steps']}; "
                     f"largest predictions at {r['ttft_steps']} steps: {fitted['max_predictions']}")
        if p and (p["ttft_steps"] == fitted["grid_max"]["steps"]
                  or p["predictions_per_task"] == fitted["grid_max"]["predictions"]):
            lines.append(f"  (the proposal is at the edge of the grid, {fitted['grid_max']}: more would fit)")
        front = list(fitted["frontier"].items())
        if front:
            pick = front[:: max(1, len(front) // 8)]
            lines.append("  frontier (predictions: max steps): " + ", ".join(f"{p}: {st}" for p, st in pick))
    if comparison is not None:
        lines.append("")
        lines.append(f"  {'compare':<{width}} {'projected':>10} {'measured':>10} {'error':>8}")
        for key, row in comparison.items():
            if key == "run_wall":
                lines.append(f"  {'run wall':<{width}} {'':>10} {row['measured_s']:>10.1f}")
                continue
            err = "-" if row["error"] is None else f"{100 * row['error']:+.1f} %"
            lines.append(f"  {key:<{width}} {row['projected_s']:>10.1f} {row['measured_s']:>10.1f} {err:>8}")
    return "\n".join(lines)

