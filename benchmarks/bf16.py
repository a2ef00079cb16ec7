"""bf16 against fp32 on this CPU, in one run: TTFT seconds per step and loss curves, sampling
tokens per second and greedy answers, on the dry run's tasks and settings.

    .venv/bin/python benchmarks/bf16.py --output_dir runs/bf16            # ~10-15 min on 2 quiet cores
    .venv/bin/python benchmarks/bf16.py --smoke --output_dir /tmp/bf16    # a tiny random model, seconds (CI)

What the dry run does (kaggle/configs/local.yaml: its `local_tasks`, TTFT steps, learning rate,
batch, max_seq_len, its adapter `local_adapter_source`, `predictions_per_task` and answer budget),
once per precision, each stage a subprocess like benchmarks/accuracy.py's:

* TTFT (`python -m pipeline ttft --torch_dtype P`) for P = float32, autocast-bfloat16 (fp32
  weights, bf16 matmuls under torch.autocast), bfloat16 (bf16 base weights, fp32 LoRA and
  optimizer states): seconds per step and trained tokens per second from each task's record
  (the wall time of `trainer.train()`, first step included), and the loss curves side by side
  (same tasks, same seed, same steps);
* sampling (`python -m pipeline sample --dtype P`, greedy, the engine the dry run gets) with each
  TTFT row's adapters: fp32 adapters sampled in fp32 (the reference) and in bf16 (only the
  inference precision differs), and each bf16 mode's adapters sampled in bf16 (the whole chain
  in bf16).  Generated tokens per second = the predictions' tokens / the stage's `generate`
  time (timing.jsonl); right predictions and test outputs with a right one (pass@n) against the
  solutions; every prediction whose text differs from the reference's, listed.

The load average (1, 5, 15 min) is read before and after every row and printed beside it: only
rows measured on a quiet machine (load below the core count) are comparable.  Writes
OUT/bf16.json and OUT/bf16.md (the tables docs/accuracy.md keeps).  The modes run one after
the other, fp32 first; `--threads` sets OMP_NUM_THREADS for every stage (default: all cores).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.files import read_jsonl, write_json_atomic, write_text_atomic  # noqa: E402
from pipeline.core.settings import AUTOCAST_BF16, load_config  # noqa: E402
from pipeline.core.tasks import load_tasks, select_tasks, without_test_outputs  # noqa: E402

EVALUATION = REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
DRY_RUN_CONFIG = REPO / "kaggle" / "configs" / "local.yaml"
TTFT_MODES = ("float32", AUTOCAST_BF16, "bfloat16")
REFERENCE = ("float32", "float32")  # (TTFT precision, sampling precision)
SAMPLING_ROWS = (REFERENCE, ("float32", "bfloat16"), (AUTOCAST_BF16, "bfloat16"), ("bfloat16", "bfloat16"))
SMOKE = {"tasks": 1, "steps": 2, "learning_rate": 1e-2, "predictions": 2, "max_tokens": "8", "lora_r": 4}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stage(args: list, log: Path, env: dict) -> float:
    """`python -m pipeline ARGS`, its output to `log`; seconds taken.  A failed stage stops the run."""
    start = time.time()
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, "-m", "pipeline", *map(str, args)], stdout=out,
                               stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if code:
        raise SystemExit(f"bf16: `pipeline {args[0]}` failed (exit {code}); see {log}")
    return time.time() - start


def dry_run_settings(smoke: bool) -> dict:
    """The dry run's tasks and settings (kaggle/configs/local.yaml), cut to seconds with --smoke."""
    config = load_config(DRY_RUN_CONFIG)
    settings = {"task_ids": list(config.local_tasks), "steps": config.ttft_steps,
                "learning_rate": config.ttft_learning_rate, "batch_size": config.ttft_batch_size,
                "max_seq_len": config.ttft_max_seq_len, "predictions": config.predictions_per_task,
                "max_tokens": str(config.sample_settings.get("max_tokens", "task")),
                "adapter": str(REPO / config.local_adapter_source) if config.local_adapter_source else None,
                "lora_r": None}
    if smoke:
        settings.update({k: v for k, v in SMOKE.items() if k != "tasks"}, adapter=None,
                        task_ids=settings["task_ids"][:SMOKE["tasks"]])
    return settings


def tiny_model(folder: Path) -> Path:
    """A random tiny Llama with the embedded model's tokenizer (the test suite's `tiny_model_dir`)."""
    from devtools.random_models import save_tiny_model
    from pipeline.core.models import embedded_model_dir, load_tokenizer

    return save_tiny_model(folder, load_tokenizer(embedded_model_dir()), arch="llama", seed=0)


def ttft_row(mode: str, challenges: Path, folder: Path, opts, settings: dict, env: dict) -> dict:
    shutil.rmtree(folder, ignore_errors=True)  # a fresh run: the stage would resume a finished one
    folder.mkdir(parents=True)
    if settings["adapter"]:  # the dry run continues the shipped adapter; --smoke trains a fresh LoRA
        start = ["--adapter_path", settings["adapter"]]
    else:
        start = ["--lora_r", settings["lora_r"], "--lora_alpha", 2 * settings["lora_r"]]
    before = load_average()
    seconds = stage(["ttft", "--model", opts.model, *start, "--dataset", challenges, "--output_dir", folder,
                     "--steps", settings["steps"], "--min_steps", settings["steps"],
                     "--learning_rate", settings["learning_rate"], "--batch_size", settings["batch_size"],
                     "--per_device_batch_size", settings["batch_size"], "--max_seq_len", settings["max_seq_len"],
                     "--torch_dtype", mode, "--seed", 0, "--devices", "cpu", "--no_progress"],
                    folder.with_suffix(".log"), env)
    from pipeline.core.adapters import read_record

    tasks, steps, train_s, tokens, dtypes = {}, 0, 0.0, 0, set()
    for task_id in settings["task_ids"]:
        r = read_record(folder, task_id) or {}
        if r.get("status") != "done":
            raise SystemExit(f"bf16: TTFT {mode} did not train {task_id}: {r.get('status')} {r.get('error') or ''}")
        tasks[task_id] = {"steps": r["steps"], "train_seconds": r["train_seconds"], "loss_curve": r["loss_curve"],
                          "tokens_trained": r["tokens_trained"]}
        steps, train_s, tokens = steps + r["steps"], train_s + r["train_seconds"], tokens + r["tokens_trained"]
        dtypes.add(r.get("torch_dtype"))
    return {"precision": mode, "recorded_dtype": sorted(map(str, dtypes)), "steps": steps,
            "s_per_step": round(train_s / steps, 3), "trained_tokens_per_s": round(tokens / train_s, 1),
            "stage_seconds": round(seconds, 1), "final_loss_mean": round(
                sum(t["loss_curve"][-1][1] for t in tasks.values()) / len(tasks), 4),
            "load_before": before, "load_after": load_average(), "tasks": tasks}


def sample_row(ttft_mode: str, precision: str, challenges: Path, ttft_dir: Path, folder: Path, opts,
               settings: dict, env: dict) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    predictions, timing = folder / "predictions.jsonl", folder / "timing.jsonl"
    predictions.unlink(missing_ok=True)
    timing.unlink(missing_ok=True)
    before = load_average()
    stage(["sample", "--model", opts.model, "--dataset", challenges, "--adapters_dir", ttft_dir / "adapters",
           "--output", predictions, "--predictions_per_task", settings["predictions"],
           "--max_tokens", settings["max_tokens"], "--engine", opts.engine, "--dtype", precision,
           "--timing_log", timing, "--quiet"], folder / "sample.log", env)
    generate_s = sum(r["seconds"] for r in read_jsonl(timing) if r.get("phase") == "generate")
    records = list(read_jsonl(predictions))
    tokens = sum(r["n_tokens"] for r in records)
    return {"ttft_precision": ttft_mode, "precision": precision, "predictions": len(records),
            "generated_tokens": tokens, "generate_seconds": round(generate_s, 2),
            "generated_tokens_per_s": round(tokens / generate_s, 2) if generate_s else None,
            "load_before": before, "load_after": load_average(), "records": records}


def score_answers(rows: list[dict], tasks: dict) -> None:
    """Right predictions, pass@n and the texts that differ from the reference row, in place."""
    def key(r):
        return r["task_id"], r["test_index"], r["sample_index"]

    reference = {key(r): r for r in rows[0]["records"]}
    for row in rows:
        outputs, right = set(), 0
        for r in row["records"]:
            solution = tasks[r["task_id"]]["test"][r["test_index"]]["output"]
            if r["grid"] == solution:
                right += 1
                outputs.add((r["task_id"], r["test_index"]))
        n_outputs = sum(len(t["test"]) for t in tasks.values())
        row.update(right_predictions=right, pass_n=f"{len(outputs)}/{n_outputs}")
        differ = []
        for r in row["records"]:
            ref = reference.get(key(r))
            if ref is None or ref["text"] != r["text"]:
                solution = tasks[r["task_id"]]["test"][r["test_index"]]["output"]
                differ.append({"task_id": r["task_id"], "test_index": r["test_index"],
                               "sample_index": r["sample_index"], "reference_text": ref and ref["text"],
                               "text": r["text"], "reference_right": bool(ref and ref["grid"] == solution),
                               "right": r["grid"] == solution})
        row["differing_texts"] = differ
    for row in rows:
        row.pop("records")


def markdown(result: dict) -> str:
    ttft, sampling = result["ttft"], result["sampling"]
    lines = [f"bf16 benchmark, {result['date']}, commit {result['commit']}, {result['cpu']}, "
             f"OMP threads {result['threads']}, tasks {' '.join(result['settings']['task_ids'])}; "
             f"load average (1/5/15 min) before → after each row.", "",
             "| TTFT precision | s/step | trained tok/s | vs fp32 | mean final loss | load |", "|---|---|---|---|---|---|"]
    base = ttft[0]["s_per_step"]
    for r in ttft:
        lines.append(f"| {r['precision']} | {r['s_per_step']} | {r['trained_tokens_per_s']} | "
                     f"{base / r['s_per_step']:.2f}× | {r['final_loss_mean']} | {r['load_before']} → {r['load_after']} |")
    for task_id in result["settings"]["task_ids"]:
        curves = [dict(map(tuple, r["tasks"][task_id]["loss_curve"])) for r in ttft]
        steps = sorted(set().union(*curves))
        lines += ["", f"Loss curve, task {task_id}:", "",
                  "| step | " + " | ".join(r["precision"] for r in ttft) + " |", "|---" * (len(ttft) + 1) + "|"]
        lines += [f"| {s} | " + " | ".join(str(c.get(s, "")) for c in curves) + " |" for s in steps]
    lines += ["", "| TTFT precision | sampling precision | generated tok/s | vs fp32 | right predictions | pass@n | "
                  "texts ≠ fp32 | load |", "|---|---|---|---|---|---|---|---|"]
    ref = sampling[0]["generated_tokens_per_s"] or 0
    for r in sampling:
        speed = r["generated_tokens_per_s"]
        ratio = f"{speed / ref:.2f}×" if speed and ref else "-"
        lines.append(f"| {r['ttft_precision']} | {r['precision']} | {speed} | {ratio} | {r['right_predictions']}/"
                     f"{r['predictions']} | {r['pass_n']} | {len(r['differing_texts'])} | "
                     f"{r['load_before']} → {r['load_after']} |")
    for r in sampling[1:]:
        if r["differing_texts"]:
            lines += ["", f"Answers that differ from fp32 ({r['ttft_precision']} TTFT, {r['precision']} sampling):"]
            lines += [f"- {d['task_id']} test {d['test_index']} view {d['sample_index']}: fp32 "
                      f"{'right' if d['reference_right'] else 'wrong'}, this {'right' if d['right'] else 'wrong'}"
                      for d in r["differing_texts"]]
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    from pipeline.core.hardware import cpu_has_native_bf16

    name = "cpu"
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({os.cpu_count()} cores, native bf16: {'yes' if cpu_has_native_bf16() else 'no'})"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help=f"a tiny random model, {SMOKE['tasks']} task, "
                                                        f"{SMOKE['steps']} steps, {SMOKE['predictions']} predictions")
    p.add_argument("--model", default=None, help="default: embedded (--smoke: a tiny random Llama)")
    p.add_argument("--engine", default="auto", choices=("auto", "vllm", "transformers"))
    p.add_argument("--ttft_modes", nargs="+", default=list(TTFT_MODES), choices=TTFT_MODES,
                   help="float32 always runs first (the reference)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every stage (default: all cores)")
    p.add_argument("--output_dir", default="runs/bf16")
    return p.parse_args(argv)


def main(argv=None) -> int:
    opts = parse_args(argv)
    out = Path(opts.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = dry_run_settings(opts.smoke)
    opts.model = opts.model or (str(tiny_model(out / "tiny-model")) if opts.smoke else "embedded")
    tasks = select_tasks(load_tasks(EVALUATION), settings["task_ids"])
    challenges = write_json_atomic(out / "challenges.json", without_test_outputs(tasks))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    modes = ["float32", *(m for m in opts.ttft_modes if m != "float32")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    ttft = []
    for mode in modes:
        print(f"bf16: TTFT {mode} on {len(tasks)} tasks, {settings['steps']} steps each ...", flush=True)
        ttft.append(ttft_row(mode, challenges, out / "ttft" / mode, opts, settings, env))
        r = ttft[-1]
        print(f"bf16: TTFT {mode}: {r['s_per_step']} s/step, {r['trained_tokens_per_s']} tok/s, "
              f"final loss {r['final_loss_mean']} (load {r['load_before']} → {r['load_after']})", flush=True)
    sampling = []
    for ttft_mode, precision in SAMPLING_ROWS:
        if ttft_mode not in modes:
            continue
        print(f"bf16: sampling {precision} with the {ttft_mode} adapters ...", flush=True)
        sampling.append(sample_row(ttft_mode, precision, challenges, out / "ttft" / ttft_mode,
                                   out / "sample" / f"{ttft_mode}_{precision}", opts, settings, env))
        r = sampling[-1]
        print(f"bf16: sampling {precision} ({ttft_mode} adapters): {r['generated_tokens_per_s']} tok/s "
              f"(load {r['load_before']} → {r['load_after']})", flush=True)
    score_answers(sampling, tasks)
    result = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "cpu": cpu_name(),
              "threads": opts.threads or os.cpu_count(), "model": opts.model, "smoke": opts.smoke,
              "engine": opts.engine, "settings": settings, "ttft": ttft, "sampling": sampling}
    write_json_atomic(out / "bf16.json", result, indent=1)
    table = markdown(result)
    write_text_atomic(out / "bf16.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
