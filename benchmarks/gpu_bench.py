"""Every GPU benchmark in one command, within a time budget: one JSON and one Markdown summary.

    make gpu-bench                                   # = python benchmarks/gpu_bench.py (one CUDA card, ~5-8 min)
    python benchmarks/gpu_bench.py --device cpu --smoke   # toy sizes: the same code on CPU (CI)

Runs, each in its own process with what is left of `--budget_s` (default 480 s) shared over the
parts still to run, so one slow or failing part cannot eat the others' time:
1. `gpu_ttft.py`: TTFT steps of a random Qwen2.5-0.5B at 1k/2k/4k tokens, LoRA r 32 (s/step,
   tokens/s, peak memory, MFU);
2. `gpu_sampling.py`: the transformers engine's generated tokens/s at batch 1/8/32/96 against the
   card's memory-bandwidth bound;
3. `benchmarks/vocab.py --random qwen2.5-0.5b`: full (151,936) against reduced (300) vocabulary at 2k/4k/8k
   tokens: TTFT step time, peak memory, generated tokens/s;
4. the cost of `deterministic: true` (pipeline/core/determinism.py): parts 1 and 2 again at 2k tokens
   and batch 32 with torch's deterministic algorithms, beside their plain rows. (vLLM's
   batch-invariant mode, the other half of the switch, is not measured here: no vLLM engine is
   started by these benchmarks.)
5. `gpu_rescore.py`: rescoring one test input (8 views x 8 candidates, 2k-token prompts) view
   after view against views scored together (2/4/8 per prefill): seconds, speed-up, the largest
   score difference, peak memory.
6. `gpu_memory.py`: the memory model's projection (pipeline/planning/memory.py) against
   torch.cuda.max_memory_allocated for TTFT steps and the transformers engine, on random models of
   the presets' shapes (arc24's Qwen2.5-0.5B, NVARC's Qwen3-4B); target within 15 %.
7. `gpu_dfs.py`: the batched exact DFS (`dfs_batch_views` 4/8/16) against the batch-1 search on
   16 views of 1k-token prompts: seconds, speed-up, and whether the answers are the same.
Nothing is downloaded: random weights of real shapes, the small committed tokenizer.  Writes
OUT/gpu-bench.json (every part's own JSON, its seconds and error) and OUT/gpu-bench.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))


def parts(device: str, smoke: bool, out: Path) -> list[tuple[str, list[str], Path | None]]:
    """(name, argv, JSON file it writes or None for its stdout's last line)."""
    flags = ["--device", device] + (["--smoke"] if smoke else [])
    return [
        ("ttft", [str(BENCH / "gpu_ttft.py"), *flags] + ([] if smoke else ["--ranks", "32", "--steps", "10"]), None),
        ("sampling", [str(BENCH / "gpu_sampling.py"), *flags, "--output", str(out / "sampling.json")],
         out / "sampling.json"),
        ("vocab", [str(BENCH / "vocab.py"), *flags, "--output_dir", str(out)]
         + ([] if smoke else ["--random", "qwen2.5-0.5b"]), out / "vocab.json"),
        # `deterministic: true` (pipeline/core/determinism.py): the same TTFT step at 2k tokens and the
        # same sampling at batch 32 with torch's deterministic algorithms; compare with the rows above
        ("ttft deterministic", [str(BENCH / "gpu_ttft.py"), *flags, "--deterministic"]
         + ([] if smoke else ["--ranks", "32", "--steps", "10", "--lengths", "2048"]), None),
        ("sampling deterministic", [str(BENCH / "gpu_sampling.py"), *flags, "--deterministic", "--output",
                                    str(out / "sampling-deterministic.json")] + ([] if smoke else ["--batch_sizes", "32"]),
         out / "sampling-deterministic.json"),
        # issue 24: rescoring's views scored together against view after view (same scores, seconds)
        ("rescoring", [str(BENCH / "gpu_rescore.py"), *flags, "--output", str(out / "rescoring.json")],
         out / "rescoring.json"),
        ("memory", [str(BENCH / "gpu_memory.py"), *flags, "--output", str(out / "memory.json")], out / "memory.json"),
        ("dfs", [str(BENCH / "gpu_dfs.py"), *flags, "--output", str(out / "dfs.json")], out / "dfs.json"),
    ]


def run_part(argv: list[str], json_file: Path | None, timeout: float) -> tuple[dict | None, str | None]:
    try:
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=max(timeout, 1), cwd=REPO)
    except subprocess.TimeoutExpired:
        return None, f"out of time after {timeout:.0f} s"
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    try:
        if json_file is not None:
            return json.loads(json_file.read_text()), None
        return json.loads(done.stdout.strip().splitlines()[-1]), None
    except (OSError, ValueError, IndexError) as e:
        return None, f"no JSON result: {e}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)] + \
           ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]


def markdown(summary: dict) -> str:
    from vocab import markdown as vocab_markdown

    lines = [f"# GPU benchmarks: {summary['device']}, {summary['date']}, commit {summary['commit']}", "",
             f"torch {summary['torch']}, transformers {summary['transformers']}; {summary['seconds']} s in all.", ""]
    for name, part in summary["parts"].items():
        lines.append(f"## {name} ({part['seconds']} s)")
        lines.append("")
        result = part.get("result")
        if part.get("error") or not result:
            lines += [f"error: {part.get('error')}", ""]
            continue
        if name.startswith("ttft"):
            lines += _table(["seq len", "LoRA r", "s/step", "tokens/s", "peak GB", "300-step task s", "MFU"],
                            [[r["seq_len"], r["lora_r"], r.get("s_per_step", r.get("error")), r.get("tokens_per_s"),
                              r.get("peak_mem_gb"), r.get("task_s_at_300_steps"), r.get("mfu")]
                             for r in result["results"]])
        elif name == "memory":
            lines += _table(["preset", "stage", "seq len / batch", "checkpointing", "projected GB", "measured GB", "ratio"],
                            [[r["preset"], r["kind"], r.get("seq_len") or f"{r['batch']} x {r['prompt_tokens']}",
                              r.get("gradient_checkpointing"), r["projected_gb"],
                              r["measured_gb"] if r["measured_gb"] is not None else r["measured"], r.get("ratio")]
                             for r in result["rows"]])
        elif name.startswith("sampling"):
            lines += _table(["batch", "generated tokens/s", "decode tokens/s", "bound tokens/s", "of bound", "peak GB"],
                            [[r["batch"], r["generated_tokens_per_s"], r["decode_tokens_per_s"],
                              r.get("bandwidth_bound_tokens_per_s"), r.get("fraction_of_bound"), r["peak_memory_gb"]]
                             for r in result["results"]])
        elif name == "rescoring":
            lines += _table(["views per prefill", "path", "s", "speed-up", "max difference", "peak GB"],
                            [[r["view_batch"], r["path"], r["seconds"], r["speedup"], r["max_difference"],
                              r["peak_memory_gb"]] for r in result["results"]])
        elif name == "dfs":
            lines += [f"{result['views']} views, {result['prompt_len']}-token prompts, P = {result['min_prob']}, "
                      f"{result['dtype']}", ""]
            lines += _table(["dfs_batch_views", "seconds", "answers", "speed-up", "same answers", "max |d log-prob|"],
                            [[r["batch_views"], r["seconds"], r["answers"], r["speedup"], r["same_answers"],
                              r["max_logprob_diff"]] for r in result["results"]])
        else:
            lines += vocab_markdown(result).splitlines()
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="toy sizes (a CPU check of every part)")
    p.add_argument("--budget_s", type=float, default=480, help="wall seconds for all parts together")
    p.add_argument("--output_dir", default=str(REPO / "runs" / "gpu-bench"))
    args = p.parse_args(argv)
    import torch
    import transformers

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-bench: error: no CUDA device (use --device cpu --smoke to check the scripts)", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    todo = parts(args.device, args.smoke, out)
    results = {}
    for i, (name, part_argv, json_file) in enumerate(todo):
        left = args.budget_s - (time.time() - started)
        t0 = time.time()
        result, error = run_part(part_argv, json_file, left / (len(todo) - i))
        results[name] = {"seconds": round(time.time() - t0, 1), "error": error, "result": result}
        print(f"gpu-bench: {name}: {'ok' if error is None else error} ({results[name]['seconds']} s)", file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    summary = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
               "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit or "unknown", "torch": torch.__version__,
               "transformers": transformers.__version__, "smoke": args.smoke, "cpu_count": os.cpu_count(),
               "seconds": round(time.time() - started, 1), "parts": results}
    (out / "gpu-bench.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "gpu-bench.md").write_text(markdown(summary))
    print(f"gpu-bench: {out / 'gpu-bench.json'}, {out / 'gpu-bench.md'}")
    return 0 if all(r["error"] is None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
