"""Chaos: kill the chain ttft -> sample -> vote at random moments, restart it, and check the final
submission is byte-identical to an uninterrupted run's.

    .venv/bin/python benchmarks/chaos.py --kills 20                      # embedded model, 3 smallest tasks
    .venv/bin/python benchmarks/chaos.py --model DIR --kills 3 --ttft_steps 2   # what the CI test runs

The chain is the stages as the notebook runs them, each a subprocess: `ttft` (per-task adapters,
resumes the tasks it has not finished), `sample` (appends predictions, resumes after the last whole
record), `vote` (atomic submission).  A kill is SIGKILL to the running stage at a uniformly random
moment of the uninterrupted run's duration (seeded), so it falls in any stage; after each kill
the chain starts again from its first stage, in the same folders.  When a restarted chain gets
to the end before its kill, that episode is over: its `submission.json` (and its predictions,
sorted) are compared byte for byte with the reference, and the next episode starts in a fresh
folder, until `--kills` kills have hit a running stage.  Prints one line per kill and a JSON
summary.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.files import read_jsonl, write_json_atomic  # noqa: E402
from pipeline.core.tasks import load_tasks, select_tasks, without_test_outputs  # noqa: E402

EVALUATION = REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"


def chain(run: Path, opts) -> list[list[str]]:
    """The stage commands of one run folder, in order."""
    py = [sys.executable, "-m", "pipeline"]
    return [
        py + ["ttft", "--model", opts.model, "--dataset", str(run / "tasks.json"), "--output_dir", str(run / "ttft"),
              "--steps", str(opts.ttft_steps), "--min_steps", str(opts.ttft_steps), "--learning_rate", "4e-4",
              "--lora_r", "8", "--lora_alpha", "16", "--max_seq_len", "2048", "--devices", "cpu", "--no_progress"],
        py + ["sample", "--model", opts.model, "--dataset", str(run / "tasks.json"), "--adapters_dir",
              str(run / "ttft" / "adapters"), "--output", str(run / "predictions.jsonl"), "--predictions_per_task",
              str(opts.predictions), "--max_tokens", str(opts.max_tokens), "--engine", "transformers",
              "--batch_size", "1", "--quiet"],
        py + ["vote", "--predictions", str(run / "predictions.jsonl"), "--dataset", str(run / "tasks.json"),
              "--output", str(run / "submission.json")],
    ]


def run_chain(run: Path, opts, env: dict, kill_after: float | None = None) -> tuple[bool, float, str]:
    """Run the chain; with `kill_after` seconds, SIGKILL whatever stage runs then.
    Returns (finished, seconds, the stage that was running at the kill or 'done')."""
    start = time.time()
    for command in chain(run, opts):
        with open(run / "chain.log", "a") as log:
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            timeout = None if kill_after is None else max(0.0, kill_after - (time.time() - start))
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return False, time.time() - start, command[3]
        if code != 0:
            raise SystemExit(f"chaos: stage {command[3]} failed with exit {code}; see {run / 'chain.log'}")
    return True, time.time() - start, "done"


def sorted_predictions(path: Path) -> list[dict]:
    return sorted(read_jsonl(path), key=lambda r: (r["task_id"], r["test_index"], r["sample_index"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--tasks", type=int, default=3, help="the N smallest ARC-AGI-1 evaluation tasks")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--ttft_steps", type=int, default=4)
    p.add_argument("--predictions", type=int, default=4)
    p.add_argument("--max_tokens", default="task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="runs/chaos")
    opts = p.parse_args(argv)

    out = Path(opts.output_dir).resolve()
    shutil.rmtree(out, ignore_errors=True)
    tasks = without_test_outputs(select_tasks(load_tasks(EVALUATION), sort_by_size=True, first_n=opts.tasks))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    reference = out / "reference"
    reference.mkdir(parents=True)
    write_json_atomic(reference / "tasks.json", tasks)
    _, duration, _ = run_chain(reference, opts, env)
    print(f"chaos: reference run {duration:.1f} s", flush=True)

    def new_episode(n: int) -> Path:
        run = out / f"episode{n}"
        run.mkdir(parents=True)
        write_json_atomic(run / "tasks.json", tasks)
        return run

    def compare(run: Path) -> dict:
        return {"episode": run.name,
                "identical_submission": (reference / "submission.json").read_bytes() ==
                (run / "submission.json").read_bytes(),
                "identical_predictions": sorted_predictions(reference / "predictions.jsonl") ==
                sorted_predictions(run / "predictions.jsonl"),
                "temp_files_left": [str(q.relative_to(out)) for q in run.rglob("*") if ".tmp" in q.name]}

    rng = random.Random(opts.seed)
    kills, episodes, run = [], [], new_episode(1)
    while len(kills) < opts.kills:
        finished, seconds, stage = run_chain(run, opts, env, kill_after=rng.uniform(0.0, duration))
        if finished:  # this episode is over: check it, start the next
            episodes.append(compare(run))
            print(f"chaos: {run.name} finished after {sum(k['episode'] == run.name for k in kills)} kill(s): "
                  f"{episodes[-1]}", flush=True)
            run = new_episode(len(episodes) + 1)
            continue
        kills.append({"kill": len(kills) + 1, "episode": run.name, "after_s": round(seconds, 1), "stage": stage})
        print(f"chaos: kill {len(kills)}/{opts.kills}: SIGKILL in {stage} after {seconds:.1f} s", flush=True)
    run_chain(run, opts, env)
    episodes.append(compare(run))
    ok = all(e["identical_submission"] and e["identical_predictions"] and not e["temp_files_left"] for e in episodes)
    summary = {"kills": len(kills), "killed_in": {s: sum(k["stage"] == s for k in kills) for s in ("ttft", "sample", "vote")},
               "episodes": len(episodes), "all_identical": ok, "reference_seconds": round(duration, 1),
               "episode_results": episodes, "kill_log": kills}
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
