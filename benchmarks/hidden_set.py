"""Hidden-set experiment: the competition notebook on a fake hidden set whose deadline cannot fit it.

    .venv/bin/python benchmarks/hidden_set.py --label anytime --workdir runs/hidden/anytime
    git worktree add /tmp/before-anytime f35e516     # the code before the anytime work
    .venv/bin/python benchmarks/hidden_set.py --label largest-first --repo /tmp/before-anytime \
        --workdir runs/hidden/largest-first
    .venv/bin/python benchmarks/hidden_set.py --table runs/hidden/*/hidden_set.json

A seeded sample of ARC-AGI-2 training tasks is laid out as Kaggle's hidden test set (no outputs;
`KAGGLE_IS_COMPETITION_RERUN` is set, so the notebook cannot take it for the public placeholder
and runs every task), and the notebook built from `--repo` runs headless with the ARC Prize 2025
settings (read from kaggle/configs/arc-prize-2025.yaml: 300 TTFT steps, 96 predictions,
8,192-token TTFT samples) pointed at this CPU and the embedded model, under a deadline of
`--deadline_hours`.  Afterwards the run is measured from its files: test inputs with at least
one real prediction (a parsed grid from any sampling stage) against those left with the fallback
copy of the test input, TTFT adapters trained, whether the submission is complete and valid, the
Kaggle score against the known solutions, and the wall time against the deadline.  `--repo` may be another checkout (a git worktree of an older commit):
the same tasks, settings and measurement run on that code.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from pipeline.core.adapters import adapter_is_complete  # noqa: E402
from pipeline.core.files import read_json, write_json_atomic  # noqa: E402
from pipeline.evaluation.score import kaggle_score  # noqa: E402
from pipeline.core.models import CACHE_ENV, cache_root  # noqa: E402
from pipeline.core.submission import submission_problems  # noqa: E402
from pipeline.core.predictions import read_predictions  # noqa: E402
from pipeline.core.settings import read_config_file  # noqa: E402
from pipeline.core.tasks import is_valid_grid, load_tasks  # noqa: E402

SOURCE = "data/arc-agi-2"
CHALLENGES = REPO / SOURCE / "arc-agi_training_challenges.json"
SOLUTIONS = REPO / SOURCE / "arc-agi_training_solutions.json"

# the ARC Prize 2025 notebook's settings (300 TTFT steps, 96 predictions, ...) come from its shipped
# config; the experiment changes where things are, the machine (this CPU, the embedded model) and time
SHIPPED_CONFIG = REPO / "kaggle" / "configs" / "arc-prize-2025.yaml"
LOCAL_KEYS = {"input_dir": "../input/arc-prize-local", "working_dir": ".", "scratch_dir": "../tmp/arc-ttft",
              "wheels_dir": "../input/arc-ttft-wheels/wheels", "model": "embedded", "adapter": None,
              "devices": ["cpu"], "vote_reserve_minutes": 2, "stage_grace_seconds": 20,
              "min_stage_seconds": 10}
KAGGLE_ONLY_KEYS = ("hardware", "kaggle_competition", "kaggle_datasets")  # the push's metadata and plan's target


def experiment_config(label: str, deadline_hours: float, margin_minutes: float, threads: int, tasks: list[str],
                      source: str, engine: str = "auto") -> dict:
    """The notebook config of one experiment: the shipped 2025 config (its `extends` resolved here, so
    an older checkout's loader reads the flat keys) with this machine's keys."""
    values = {k: v for k, v in read_config_file(SHIPPED_CONFIG).items() if k not in KAGGLE_ONLY_KEYS}
    return {**values, **LOCAL_KEYS, "engine": engine, "title": f"hidden-set experiment ({label})", "deadline_hours": deadline_hours,
            "safety_margin_minutes": margin_minutes,
            "stage_env": {**values.get("stage_env", {}), "OMP_NUM_THREADS": str(threads)},
            "local_source_dir": source, "local_tasks": list(tasks)}


def hidden_task_ids(n: int, seed: int) -> list[str]:
    """A seeded sample of `n` ARC-AGI-2 training tasks (sorted): the fake hidden set."""
    ids = sorted(load_tasks(CHALLENGES))
    return sorted(random.Random(seed).sample(ids, n))


def inputs_with_predictions(run_dir: Path, tasks: dict) -> set[tuple[str, int]]:
    """(task, test index) pairs that got at least one parsed, valid grid from any sampling stage."""
    answered = set()
    for path in sorted(run_dir.glob("*.jsonl")):
        if path.name == "timing.jsonl":
            continue
        for record in read_predictions(path):
            key = (record.get("task_id"), record.get("test_index"))
            if key[0] in tasks and is_valid_grid(record.get("grid")):
                answered.add(key)
    return answered


def trained_adapters(scratch: Path) -> int:
    """Complete per-task adapters the TTFT stage left (`adapters.adapter_is_complete`)."""
    return sum(1 for d in scratch.glob("**/ttft/adapters/*") if adapter_is_complete(d))


def measure(workdir: Path, tasks: dict, solutions: dict, deadline_s: float, wall_s: float) -> dict:
    working = workdir / "kaggle" / "working"
    run_dir = working / "run"
    n_inputs = sum(len(t["test"]) for t in tasks.values())
    answered = inputs_with_predictions(run_dir, tasks)
    submission_path = working / "submission.json"
    submission = read_json(submission_path) if submission_path.is_file() else None
    problems = submission_problems(submission, tasks) if submission is not None else ["no submission.json"]
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    return {"tasks": len(tasks), "test_inputs": n_inputs, "inputs_with_predictions": len(answered),
            "fallback_inputs": n_inputs - len(answered),
            "tasks_with_a_prediction": len({t for t, _ in answered}),
            "ttft_adapters": trained_adapters(workdir / "kaggle" / "tmp"),
            "submission_valid": not problems, "submission_problems": problems[:5],
            "score": kaggle_score(submission, solutions)["score"] if submission is not None and not problems else None,
            "stages": summary.get("stages"), "notebook_elapsed_s": summary.get("elapsed_s"),
            "deadline_left_s": summary.get("deadline_left_s"), "wall_s": round(wall_s, 1),
            "deadline_s": deadline_s}


class LoadSampler(threading.Thread):
    """The 1-minute load average every 30 s while the notebook runs: a timing means little without it."""

    def __init__(self, every_s: float = 30.0):
        super().__init__(daemon=True)
        self.every_s, self.samples, self.stop = every_s, [], threading.Event()

    def run(self):
        while not self.stop.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        return {"mean": round(sum(s) / len(s), 2), "min": round(min(s), 2), "max": round(max(s), 2), "samples": len(s)}


def table(rows: list[dict]) -> str:
    lines = ["| run | code | engine | load (mean, max) | tasks | test inputs | with a prediction | fallback only | tasks with a prediction | "
             "TTFT adapters | valid | score | notebook time / deadline |", "|" + "---|" * 13]
    for r in rows:
        m = r["result"]
        score = "-" if m["score"] is None else f"{100 * m['score']:.1f} %"
        load = r.get("load_average_1min")
        load = f"{load['mean']}, {load['max']}" if load else "-"
        lines.append(f"| {r['label']} | {r['commit']} | {r.get('engine', 'transformers')} | {load} | {m['tasks']} | {m['test_inputs']} | "
                     f"{m['inputs_with_predictions']} | {m['fallback_inputs']} | {m['tasks_with_a_prediction']} | "
                     f"{m['ttft_adapters']} | {'yes' if m['submission_valid'] else 'NO'} | "
                     f"{score} | "
                     f"{m['notebook_elapsed_s']} s / {m['deadline_s']:.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="run")
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose notebook runs (default: this one)")
    parser.add_argument("--workdir", default=None, help="default: runs/hidden/LABEL")
    parser.add_argument("--tasks", type=int, default=60, help="ARC-AGI-2 training tasks in the fake hidden set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline_hours", type=float, default=0.5)
    parser.add_argument("--margin_minutes", type=float, default=3.0, help="the config's safety_margin_minutes")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every stage")
    parser.add_argument("--engine", default="auto", choices=["auto", "vllm", "transformers"],
                        help="the sampling engine (auto: the run picks by the time left and the engine's start-up)")
    parser.add_argument("--table", nargs="*", help="print the Markdown table of these result files and exit")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(table([read_json(p) for p in args.table]))
        return 0

    repo = Path(args.repo).resolve()
    workdir = Path(args.workdir or REPO / "runs" / "hidden" / args.label).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ids = hidden_task_ids(args.tasks, args.seed)
    challenges, solutions = load_tasks(CHALLENGES), read_json(SOLUTIONS)
    tasks = {t: challenges[t] for t in ids}
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(experiment_config(args.label, args.deadline_hours, args.margin_minutes,
                                                       args.threads, ids, os.path.relpath(REPO / SOURCE, repo),
                                                       args.engine),
                                     sort_keys=False))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                            text=True).stdout.strip()
    # a hidden set, not the public placeholder; the embedded model from this checkout's cache
    env = {**os.environ, "KAGGLE_IS_COMPETITION_RERUN": "1", CACHE_ENV: os.environ.get(CACHE_ENV) or str(cache_root())}
    print(f"hidden set: {len(ids)} tasks, {sum(len(t['test']) for t in tasks.values())} test inputs; "
          f"notebook of {repo} ({commit}); deadline {args.deadline_hours} h", flush=True)
    start = time.time()
    loads = LoadSampler()
    loads.start()
    with open(workdir / "notebook.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "notebook_builder", "run", "--config", str(config),
                               "--workdir", str(workdir), "--timeout", str(int(args.deadline_hours * 3600 + 600))],
                              cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    loads.stop.set()
    result = measure(workdir, tasks, {t: solutions[t] for t in ids}, args.deadline_hours * 3600, wall)
    result["notebook_rc"] = proc.returncode
    record = {"label": args.label, "commit": commit, "repo": str(repo), "seed": args.seed, "threads": args.threads,
              "engine": args.engine, "load_average_end": os.getloadavg(), "load_average_1min": loads.summary(), "date": time.strftime("%Y-%m-%d %H:%M"), "result": result}
    write_json_atomic(workdir / "hidden_set.json", record, indent=1)
    print(json.dumps(record, indent=1))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
