"""Timing profile of a run: where the time went, per stage and per task.

    python -m pipeline profile RUN_DIR [--json OUT.json] [--save]

Reads every `timing.jsonl` under RUN_DIR (torn last lines are skipped) and prints one row per
stage: wall and worker seconds, per-task median/p90/max, tokens per second, skipped/failed counts
and the share of time that was not model compute. `--save` also writes RUN_DIR/profile.txt and
RUN_DIR/profile.json (what the notebook keeps next to the submission). Standard library only: it
runs in the notebook before and after the offline install.

Two kinds of records share a run's timing files (see `pipeline/core/timing.py`, `pipeline/kaggle/run.py`):
  * stage records (`TimingLog`), which always carry a `task_id` key (None outside a task):
    event "task" (one task, or a part of one), "phase" (a named part: load_model, augment, train,
    generate, ...), "stage" (one worker's whole stage), "skipped"/"failed" (a task);
  * orchestrator records (`KaggleRun.record`), without `task_id`: event "start" (with `workers`),
    then "end" | "failed" | "timeout" | "skipped" with the stage's wall seconds, and `t`, the
    seconds since the notebook started.

Definitions (what the numbers mean):
  * wall_s: the stage's wall-clock time: the orchestrator's end record when there is one (it also
    counts the subprocess start), else the union of the intervals of the stage's "stage" records
    and of the phases outside them (model loading before the main loop), else the union of its
    task and phase intervals.
  * workers: the orchestrator's `workers`, else the most "stage" records running at once, else 1.
  * busy_s, the worker-seconds: wall_s x workers when the orchestrator timed the stage, else the
    sum of "stage" records and of the phases outside them, else the sum of task records and of
    phases outside tasks. A worker idle at the end of a stage counts as busy-but-not-computing.
  * compute_s: the seconds in phases named in COMPUTE_PHASES (forward/backward/generation work).
    A stage that recorded no compute phase has its task time counted as compute, minus the
    non-compute phases recorded inside tasks, and is flagged (`compute_source`: "tasks").
  * non-compute share: (busy_s - compute_s) / busy_s: model loading, augmenting, encoding,
    parsing, voting, I/O, process start and idle workers. The project's target is under 2 %.
    The table's breakdown names the non-compute phases; "unlabelled" is the rest of it (process
    start, imports, task time outside any phase, idle workers).
  * per-task seconds: the sum of a task's "task" records (a task may be recorded in parts).
    p90 interpolates linearly between order statistics (numpy's default).
  * token counters (tokens_trained, prompt_tokens, generated_tokens, steps, predictions) are summed
    from task records; a counter no task record carries is summed from phase records, else from
    stage records, so a total is never counted twice. Rates are per busy second.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from pipeline.core.files import check_output, pid_alive, read_jsonl, write_json_atomic, write_text_atomic
from pipeline.core.timing import ORCHESTRATOR_END, TIMING_FILE

# Phases that are model compute; every other phase name (load_model, augment, encode, parse, vote,
# io, save_adapter, merge, ...) is overhead. Stages must name their compute phases from this set.
COMPUTE_PHASES = frozenset({"train", "train_step", "forward", "backward", "optimizer_step",
                            "generate", "prefill", "decode", "inference", "score_candidates"})
COUNTERS = ("tokens_trained", "prompt_tokens", "generated_tokens", "steps", "predictions")
STAGE_ALIASES = {"sampling": "sample"}        # the orchestrator calls the sampling stage "sample"
NON_COMPUTE_TARGET = 0.02


# ----------------------------------------------------------------------------- reading

def timing_files(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return [run_dir]
    return sorted(run_dir.rglob(TIMING_FILE))


def load_records(run_dir: str | Path) -> list[dict]:
    """Every record of every `timing.jsonl` under `run_dir` (or of that one file), in file order."""
    return [rec for path in timing_files(run_dir) for rec in read_jsonl(path)]


def split_killed(records: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, killed): the stage records of a process that wrote no `exit` record and is gone were
    written by a process that was killed (its work is redone by the restart that resumed it), so
    they are left out of the profile.  Records without a `pid` (older runs) and orchestrator
    records are kept; `exit` records themselves are bookkeeping and dropped."""
    exited = {r["pid"] for r in records if r.get("event") == "exit" and "pid" in r}
    writers = {r["pid"] for r in records if "pid" in r and not is_orchestrator(r)}
    killed_pids = {pid for pid in writers - exited if not pid_alive(pid)}
    kept, killed = [], []
    for r in records:
        if r.get("event") == "exit":
            continue
        (killed if not is_orchestrator(r) and r.get("pid") in killed_pids else kept).append(r)
    return kept, killed


def is_orchestrator(rec: dict) -> bool:
    return "task_id" not in rec


def stage_name(rec: dict) -> str:
    name = str(rec.get("stage") or "?")
    return STAGE_ALIASES.get(name, name)


# ----------------------------------------------------------------------------- small statistics

def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between order statistics."""
    xs = sorted(values)
    if not xs:
        return None
    rank = (len(xs) - 1) * q / 100.0
    lo = int(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length of the union of [start, end] intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def max_concurrent(intervals: Iterable[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def _interval(rec: dict) -> tuple[float, float] | None:
    if "time" not in rec:
        return None
    end = float(rec["time"])
    return end - float(rec.get("seconds") or 0.0), end


def _seconds(rec: dict) -> float:
    return float(rec.get("seconds") or 0.0)


# ----------------------------------------------------------------------------- the profile

def stage_profile(records: Sequence[dict]) -> dict:
    """The profile of one stage from its records (stage and orchestrator records mixed)."""
    orch = [r for r in records if is_orchestrator(r)]
    inner = [r for r in records if not is_orchestrator(r)]
    by_event = defaultdict(list)
    for r in inner:
        by_event[r.get("event")].append(r)
    tasks, phases, stages = by_event["task"], by_event["phase"], by_event["stage"]

    ends = [r for r in orch if r.get("event") in ORCHESTRATOR_END]
    starts = [r for r in orch if r.get("event") == "start"]
    stage_intervals = [iv for iv in map(_interval, stages) if iv]
    untasked_phases = [r for r in phases if r.get("task_id") is None]
    # phases outside every "stage" record (e.g. model loading before the stage's main loop)
    outside = [r for r in untasked_phases
               if not any(s <= iv[0] + 1e-6 and iv[1] <= e + 1e-6 for s, e in stage_intervals
                          for iv in [_interval(r)] if iv)]
    if ends:
        wall, wall_source = sum(_seconds(r) for r in ends), "orchestrator"
    elif stage_intervals:
        wall = union_seconds(stage_intervals + [iv for iv in map(_interval, outside) if iv])
        wall_source = "stage records"
    else:
        wall = union_seconds(iv for iv in map(_interval, tasks + phases) if iv)
        wall_source = "task records"
    workers = max([int(r.get("workers") or 1) for r in starts] or [max_concurrent(stage_intervals) or 1])

    task_seconds: dict[str, float] = defaultdict(float)
    for r in tasks:
        task_seconds[str(r.get("task_id"))] += _seconds(r)
    if ends:
        busy = wall * workers
    elif stages:
        busy = sum(_seconds(r) for r in stages) + sum(_seconds(r) for r in outside)
    else:
        busy = sum(task_seconds.values()) + sum(_seconds(r) for r in untasked_phases)

    compute_recs = [r for r in phases if r.get("phase") in COMPUTE_PHASES]
    overhead_phases: dict[str, float] = defaultdict(float)
    for r in phases:
        if r.get("phase") not in COMPUTE_PHASES:
            overhead_phases[str(r.get("phase"))] += _seconds(r)
    if compute_recs:
        compute, compute_source = sum(_seconds(r) for r in compute_recs), "phases"
    elif tasks:
        nested = sum(_seconds(r) for r in phases if r.get("task_id") is not None and r.get("phase") not in COMPUTE_PHASES)
        compute, compute_source = max(0.0, sum(task_seconds.values()) - nested), "tasks"
    else:
        compute, compute_source = 0.0, "none"
    busy = max(busy, compute)
    other = max(0.0, busy - compute - sum(overhead_phases.values()))

    counters = {}
    for name in COUNTERS:
        for group in (tasks, phases, stages):
            values = [r[name] for r in group if isinstance(r.get(name), (int, float))]
            if values:
                counters[name] = sum(values)
                break
    rates = {}
    if busy > 0:
        if counters.get("tokens_trained"):
            rates["trained_tok_s"] = counters["tokens_trained"] / busy
        if counters.get("prompt_tokens") or counters.get("generated_tokens"):
            rates["tok_s"] = (counters.get("prompt_tokens", 0) + counters.get("generated_tokens", 0)) / busy
        if counters.get("generated_tokens"):
            rates["generated_tok_s"] = counters["generated_tokens"] / busy
    if compute > 0 and counters.get("tokens_trained"):
        rates["trained_tok_per_compute_s"] = counters["tokens_trained"] / compute

    per_task = list(task_seconds.values())
    status = ORCHESTRATOR_END.get(ends[-1].get("event"), "?") if ends else ("ok" if inner else "?")
    devices = Counter(str(r["device"]) for r in inner if r.get("device"))
    return {
        "status": status,
        "reason": next((r.get("reason") for r in reversed(ends) if r.get("reason")), None),
        "wall_s": round(wall, 3), "wall_source": wall_source, "workers": workers,
        "busy_s": round(busy, 3), "compute_s": round(compute, 3), "compute_source": compute_source,
        "non_compute_s": round(busy - compute, 3),
        "non_compute_share": round((busy - compute) / busy, 5) if busy > 0 else None,
        "non_compute_phases": {k: round(v, 3) for k, v in sorted(overhead_phases.items(), key=lambda kv: -kv[1])},
        "non_compute_other_s": round(other, 3),
        "tasks": len(task_seconds),
        "task_median_s": _round(percentile(per_task, 50)), "task_p90_s": _round(percentile(per_task, 90)),
        "task_max_s": _round(max(per_task) if per_task else None),
        "task_seconds": {k: round(v, 4) for k, v in task_seconds.items()},
        "skipped": len(by_event["skipped"]), "failed": len(by_event["failed"]),
        "counters": counters, "rates": {k: round(v, 3) for k, v in rates.items()},
        "peak_host_mb": _max(r.get("peak_host_mb") for r in inner),
        "peak_device_mb": _max(r.get("peak_device_mb") for r in inner),
        "devices": dict(devices),
        "device": devices.most_common(1)[0][0] if devices else None,
    }


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _max(values: Iterable) -> float | None:
    xs = [v for v in values if isinstance(v, (int, float))]
    return max(xs) if xs else None


def profile(records: Sequence[dict]) -> dict:
    """{"stages": {stage: stage_profile}, "run": totals}: see the module docstring for definitions."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        grouped[stage_name(r)].append(r)
    stages = {name: stage_profile(recs) for name, recs in grouped.items()}

    ts = [float(r["t"]) for r in records if is_orchestrator(r) and isinstance(r.get("t"), (int, float))]
    if ts:
        wall, wall_source = max(ts), "notebook elapsed (orchestrator t)"
    else:
        ivs = [iv for iv in map(_interval, records) if iv]
        wall = (max(e for _, e in ivs) - min(s for s, _ in ivs)) if ivs else 0.0
        wall_source = "first record start to last record end"
    busy = sum(s["busy_s"] for s in stages.values())
    compute = sum(s["compute_s"] for s in stages.values())
    return {
        "stages": stages,
        "run": {"wall_s": round(wall, 3), "wall_source": wall_source, "busy_s": round(busy, 3),
                "compute_s": round(compute, 3),
                "non_compute_share": round((busy - compute) / busy, 5) if busy > 0 else None,
                "target_non_compute_share": NON_COMPUTE_TARGET, "records": len(records)},
        "compute_phases": sorted(COMPUTE_PHASES),
    }


# ----------------------------------------------------------------------------- text

def _fmt(x, digits: int = 1, suffix: str = "") -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}{suffix}"


def format_profile(prof: dict) -> str:
    """An aligned text table: one row per stage, then the non-compute breakdown and the run totals."""
    header = ["stage", "status", "tasks", "wall s", "workers", "busy s", "median s", "p90 s", "max s",
              "tok/s", "gen tok/s", "non-compute", "skipped", "failed"]
    rows = []
    for name, s in prof["stages"].items():
        rates = s["rates"]
        tok = rates.get("trained_tok_s", rates.get("tok_s"))
        share = s["non_compute_share"]
        flag = "*" if s["compute_source"] == "tasks" else ""
        rows.append([name, s["status"], str(s["tasks"]), _fmt(s["wall_s"]), str(s["workers"]), _fmt(s["busy_s"]),
                     _fmt(s["task_median_s"], 2), _fmt(s["task_p90_s"], 2), _fmt(s["task_max_s"], 2),
                     _fmt(tok), _fmt(rates.get("generated_tok_s")),
                     (_fmt(100 * share, 1, " %") + flag) if share is not None else "-",
                     str(s["skipped"]), str(s["failed"])])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]

    details = []
    for name, s in prof["stages"].items():
        parts = [f"{k} {v:,.1f} s" for k, v in s["non_compute_phases"].items() if v > 0]
        if s["non_compute_other_s"] > 0.05:
            parts.append(f"unlabelled {s['non_compute_other_s']:,.1f} s")
        extra = []
        if s["counters"]:
            extra.append(", ".join(f"{k} {v:,}" for k, v in s["counters"].items()))
        if s["peak_host_mb"] is not None or s["peak_device_mb"] is not None:
            extra.append(f"peak host {_fmt(s['peak_host_mb'], 0)} MB, device {_fmt(s['peak_device_mb'], 0)} MB")
        if s["devices"]:
            extra.append("on " + ", ".join(s["devices"]))
        if parts or extra:
            details.append(f"  {name}: " + "; ".join(([("non-compute: " + ", ".join(parts))] if parts else []) + extra))
    if details:
        out += [""] + details
    if any(s["compute_source"] == "tasks" for s in prof["stages"].values()):
        out.append("  * no compute phase recorded: task time counted as compute (the share is a lower bound)")
    run = prof["run"]
    share = run["non_compute_share"]
    verdict = "" if share is None else f" (target < 2 %: {'met' if share < NON_COMPUTE_TARGET else 'NOT met'})"
    out += ["", f"run: wall {_fmt(run['wall_s'])} s ({run['wall_source']}); worker-seconds {_fmt(run['busy_s'])}, "
                f"compute {_fmt(run['compute_s'])}; non-compute {_fmt(None if share is None else 100 * share, 2, ' %')}"
                f"{verdict}"]
    if share is not None and share >= NON_COMPUTE_TARGET:
        out.append("  (a few-task run is dominated by fixed costs: process starts, imports, model loads; "
                   "`python -m pipeline plan --profile RUN_DIR` projects the share of a full run)")
    return "\n".join(out)


# ----------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline profile",
                                     description="Timing table of a run directory (every timing.jsonl under it).")
    parser.add_argument("run_dir", help="a run directory (or one timing.jsonl file)")
    parser.add_argument("--json", help="also write the profile as JSON to this file (atomically)")
    parser.add_argument("--save", action="store_true",
                        help="also write RUN_DIR/profile.txt and RUN_DIR/profile.json (kept next to the submission)")
    args = parser.parse_args(argv)

    if not Path(args.run_dir).exists():
        print(f"error: {args.run_dir} does not exist", file=sys.stderr)
        return 2
    try:
        if args.json:
            check_output(args.json, {"RUN_DIR": args.run_dir, "a timing file": timing_files(args.run_dir)},
                         what="--json")
        records, killed = split_killed(load_records(args.run_dir))
    except ValueError as e:  # a timing line that is not JSON (named with its file and line), an output clash
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not records:
        print(f"error: no {TIMING_FILE} records under {args.run_dir}", file=sys.stderr)
        return 1
    prof = profile(records)
    prof["run"]["killed_records"] = len(killed)
    prof["run"]["killed_processes"] = len({r["pid"] for r in killed})
    text = format_profile(prof)
    if killed:
        text += (f"\n  left out: {len(killed)} record(s) of {prof['run']['killed_processes']} stage process(es) that "
                 f"were killed and restarted (their work was redone)")
    print(text)
    if args.json:
        write_json_atomic(args.json, prof, indent=1)
    if args.save and Path(args.run_dir).is_dir():
        write_text_atomic(Path(args.run_dir) / "profile.txt", text + "\n")
        write_json_atomic(Path(args.run_dir) / "profile.json", prof, indent=1)
    return 0
