"""TTFT on CPU: seconds per step and per task of the real stage with the embedded model.

    .venv/bin/python benchmarks/bench_ttft.py [--tasks 3] [--steps 5] [--lora_r 32] [--threads N]

Runs `pipeline.ttft.ttft.run_ttft` (one in-process worker) with SmolLM2-135M-Instruct ("embedded"),
a fresh LoRA (rank `--lora_r`, attention projections), batch 1, on the `--tasks` smallest
ARC-AGI-1 evaluation tasks, `--steps` steps each, then reads the records and timing log it
wrote.  Per task: training seconds per step (wall time of `trainer.train()` over the steps, so
the first step's warm-up is included, as in a real run), tokens per step and per second, and
the whole task (Trainer setup, training, saving the adapter).  Prints a table and a JSON line.
Takes ~1-3 minutes on 2 idle cores.  On a machine shared with other busy processes use
`--threads 1`: two OpenMP threads spin at every barrier while the other one is descheduled
(measured here under load ~10: 73-90 s per raw forward/backward with 2 threads, 5-8 s with 1).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.ttft import ttft  # noqa: E402
from pipeline.core.files import read_jsonl  # noqa: E402
from pipeline.core.tasks import load_tasks, task_size  # noqa: E402
from pipeline.training.lora import LORA, LoraSettings  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3, help="the N smallest evaluation tasks")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lora_r", type=int, default=LORA.r)
    parser.add_argument("--max_seq_len", type=int, default=2048)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--output_dir", help="default: a temporary directory")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tasks = load_tasks(DATA, solutions=None)
    ids = sorted((t for t in tasks if len(tasks[t]["train"]) >= 2), key=lambda t: (task_size(tasks[t]), t))
    selected = {t: tasks[t] for t in ids[:args.tasks]}
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench-ttft-"))
    lora = LoraSettings(r=args.lora_r, alpha=2 * args.lora_r).to_dict()
    config = ttft.TTFTConfig(model="embedded", output_dir=str(out), lora=lora, steps=args.steps, min_steps=1,
                             learning_rate=1e-4, max_seq_len=args.max_seq_len)
    start = time.time()
    summary = ttft.run_ttft(selected, config, ("cpu",), progress=False)
    wall = time.time() - start

    timing = list(read_jsonl(config.timing_path))
    load = next(r["seconds"] for r in timing if r.get("phase") == "load_model")
    rows = []
    for task_id in selected:
        r = ttft.read_record(out, task_id)
        if r["status"] != "done":
            rows.append({"task_id": task_id, "status": r["status"]})
            continue
        task_seconds = next(t["seconds"] for t in timing if t["event"] == "task" and t["task_id"] == task_id)
        rows.append({"task_id": task_id, "status": "done", "steps": r["steps"],
                     "tokens_per_step": round(r["tokens_trained"] / r["steps"], 1),
                     "s_per_step": round(r["train_seconds"] / r["steps"], 3),
                     "tokens_per_s": r["tokens_per_second"], "task_s": round(task_seconds, 2),
                     "overhead_s": round(task_seconds - r["train_seconds"], 2), "final_loss": r["loss_curve"][-1][1]})
    print(f"{'task':10} {'steps':>5} {'tok/step':>8} {'s/step':>7} {'tok/s':>7} {'task s':>7} {'other s':>7}")
    for row in rows:
        if row["status"] == "done":
            print(f"{row['task_id']:10} {row['steps']:5d} {row['tokens_per_step']:8.0f} {row['s_per_step']:7.2f} "
                  f"{row['tokens_per_s']:7.0f} {row['task_s']:7.1f} {row['overhead_s']:7.2f}")
        else:
            print(f"{row['task_id']:10} {row['status']}")
    done = [r for r in rows if r["status"] == "done"]
    result = {"model": "embedded (SmolLM2-135M-Instruct)", "device": "cpu", "threads": torch.get_num_threads(),
              "lora_r": args.lora_r,
              "lora_target": lora["target_modules"], "steps_per_task": args.steps, "load_model_s": load,
              "stage_s": round(wall, 2), "counts": summary["counts"],
              "mean_s_per_step": round(sum(r["s_per_step"] for r in done) / len(done), 3) if done else None,
              "mean_s_per_task": round(sum(r["task_s"] for r in done) / len(done), 2) if done else None,
              "tasks": rows}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
