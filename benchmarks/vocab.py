"""Full against reduced vocabulary (`shrink-vocab`), measured in one run: TTFT step time, peak
memory and generated tokens/s.

    python benchmarks/vocab.py                     # CPU: the embedded SmolLM2, full vs arc24-reduced (~10 min idle)
    python benchmarks/vocab.py --random qwen2.5-0.5b --device cuda --lengths 2048 4096 8192   # one GPU
    python benchmarks/vocab.py --smoke             # toy sizes: checks the script (CI)

Two models that differ only in their vocabulary:
* **embedded** (default): SmolLM2-135M-Instruct (49,152 tokens) and the same weights through
  `shrink-vocab --format arc24` (756 tokens), made once under `--work_dir`;
* **random** `qwen2.5-0.5b`: a random-initialised Qwen2.5-0.5B shape (151,936 tokens) and the same
  network with `--reduced_vocab` rows (default 300: what shrink-vocab keeps of SmolLM2 for the
  architects/nvarc formats, 276/262; NVARC's own is 16), no download.

Each (model, length) runs in a child process of its own, so its peak memory is its own: CPU max
RSS, or `torch.cuda.max_memory_allocated` on a GPU.  The child trains `--steps` LoRA steps (r 32 on
q/k/v/o, after `--warmup`) with the TTFT stage's trainer on one sample of `length` tokens whose
last eighth is the answer (`benchmarks/gpu_ttft.py`'s path), then (at the first length only)
generates greedily with the transformers engine: on the embedded models the dry run's requests as
the sample stage makes them (the 3 smallest evaluation tasks, the "task" answer budget, stop at
the closing fence; both models answer them identically, tests/test_vocab.py), on random models
random prompts of 1,000 tokens and 128 new tokens.  Ratios are full / reduced,
measured in the same run.  Writes OUT/vocab.json and OUT/vocab.md (`--output_dir`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


# ----------------------------------------------------------------------------- child

def _build(spec: dict):
    """(model, tokenizer or None) of one variant, on the device."""
    import torch
    from transformers import AutoModelForCausalLM

    if spec["kind"] == "dir":
        from pipeline.core.models import load_model_and_tokenizer
        model, tokenizer = load_model_and_tokenizer(spec["path"], dtype=spec["dtype"], device=spec["device"])
        return model, tokenizer
    from devtools.random_models import BENCH_TOKENIZER, qwen2_5_0_5b_config, tiny_config
    from pipeline.core.models import load_tokenizer

    tokenizer = load_tokenizer(BENCH_TOKENIZER)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    config = (tiny_config("qwen2", vocab_size=spec["vocab"], **ids) if spec["kind"] == "toy"
              else qwen2_5_0_5b_config(vocab_size=spec["vocab"], **ids))
    torch.manual_seed(0)
    with torch.device(spec["device"]):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, spec["dtype"]))
    return model.eval(), tokenizer


def child(spec: dict) -> dict:
    import torch
    from gpu_ttft import run_one  # the TTFT training path, timed per step

    from pipeline.sampling.generation import Request
    from pipeline.sampling.transformers_engine import TransformersEngine

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = spec["device"]
    model, tokenizer = _build(spec)
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    n_body = n_params - model.get_input_embeddings().weight.numel()
    row = {"variant": spec["variant"], "vocab": config.vocab_size, "params": n_params, "seq_len": spec["length"]}
    args = argparse.Namespace(warmup=spec["warmup"], steps=spec["steps"], device=device, gradient_checkpointing=False)
    with tempfile.TemporaryDirectory() as work:
        model, ttft = run_one(model, config, n_body, spec["length"], 32, args, spec["dtype"], work)
    row.update(ttft_s_per_step=ttft.get("s_per_step"), ttft_tokens_per_s=ttft.get("tokens_per_s"),
               ttft_error=ttft.get("error"))
    if spec.get("generate"):
        model.eval()
        engine = TransformersEngine(None, tokenizer, model=model, device=device, batch_size=64)
        if spec["prompts"]:
            requests = [Request(tuple(p["ids"]), p["max_tokens"], stop=tuple(p["stop"])) for p in spec["prompts"]]
        else:
            g = torch.Generator().manual_seed(1)
            top = min(config.vocab_size, len(tokenizer))
            requests = [Request(tuple(torch.randint(100, top, (1000,), generator=g).tolist()), spec["new_tokens"])
                        for _ in range(spec["batch"])]
        engine.generate([Request(requests[0].prompt_ids, 2)])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = engine.generate(requests)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        generated = sum(c.n_tokens for c in out)
        row.update(generate_requests=len(requests), generated_tokens=generated, generate_s=round(seconds, 2),
                   generated_tokens_per_s=round(generated / seconds, 1),
                   generated_texts_digest=(hashlib.sha256("\x00".join(c.text for c in out).encode()).hexdigest()[:16]
                                           if spec["prompts"] else None))
    from pipeline.core.timing import peak_device_mb, peak_host_mb  # the stages' own measures

    peak_mb = peak_device_mb() if device.startswith("cuda") else peak_host_mb()
    row["peak_memory_gb"] = round(peak_mb / 1024, 3)
    return row


# ----------------------------------------------------------------------------- parent

def dry_run_prompts(model_dir: Path, n_tasks: int = 3) -> list[dict]:
    """The dry run's requests (the n smallest evaluation tasks) as the sample stage makes them:
    prompt ids in the model's own tokenizer and format (its cfg.json, else arc24), the "task"
    answer budget and the encoder's stop strings."""
    from pipeline.core.encoders import create_grid_encoder
    from pipeline.core.models import load_tokenizer
    from pipeline.core.prompts import answer_stop, build_inference_prompt
    from pipeline.core.model_cfg import find_run_config, resolve_prompting
    from pipeline.sampling.plan import max_tokens_for
    from pipeline.core.tasks import load_tasks, select_tasks

    tasks = load_tasks(REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json")
    tasks = select_tasks(tasks, sort_by_size=True, first_n=n_tasks)  # as the dry run picks them
    tokenizer = load_tokenizer(model_dir)
    prompting = resolve_prompting(find_run_config(model_dir)[0], tokenizer=tokenizer)
    encoder = create_grid_encoder(prompting.grid_encoder)
    version = prompting.prompt_version
    return [{"ids": tokenizer(build_inference_prompt(tasks[t], encoder, tokenizer, version, i),
                              add_special_tokens=False)["input_ids"],
             "max_tokens": max_tokens_for("task", tokenizer, encoder, version, tasks[t], i),
             "stop": list(answer_stop(encoder))}
            for t in tasks for i in range(len(tasks[t]["test"]))]


def run_child(spec: dict, timeout: float) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    if done.returncode != 0:
        return {"variant": spec["variant"], "seq_len": spec["length"], "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def markdown(result: dict) -> str:
    lines = [f"Vocabulary benchmark: {result['model']} on {result['device']} ({result['dtype']}), "
             f"{result['date']}, commit {result['commit']}, load {result['load_before']} -> {result['load_after']}", "",
             "| seq len | variant | vocab | TTFT s/step | TTFT tokens/s | generated tokens/s | peak memory GB |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['seq_len']} | {r['variant']} | {r.get('vocab', '')} | {r.get('ttft_s_per_step', r.get('error'))} "
                     f"| {r.get('ttft_tokens_per_s', '')} | {r.get('generated_tokens_per_s', '')} "
                     f"| {r.get('peak_memory_gb', '')} |")
    lines += ["", "| seq len | TTFT step full/reduced | generation reduced/full | peak memory full/reduced |",
              "|---:|---:|---:|---:|"]
    for c in result["ratios"]:
        lines.append(f"| {c['seq_len']} | {c['ttft_step']} | {c['generation']} | {c['peak_memory']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--random", choices=("qwen2.5-0.5b",), help="random-initialised model of this shape")
    p.add_argument("--reduced_vocab", type=int, default=300, help="random models: rows of the reduced variant")
    p.add_argument("--lengths", type=int, nargs="+", help="TTFT tokens per sample (default CPU 512 1024; GPU 2048 "
                                                          "4096 8192; smoke 64)")
    p.add_argument("--steps", type=int, help="timed TTFT steps (default CPU 3, GPU 10, smoke 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--new_tokens", type=int, help="random models: generated tokens per request (default 128)")
    p.add_argument("--batch", type=int, default=32, help="random models: generation batch")
    p.add_argument("--threads", type=int, help="torch threads per child (CPU)")
    p.add_argument("--smoke", action="store_true", help="toy model and sizes")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "vocab-bench"), help="the reduced embedded model lives here")
    p.add_argument("--output_dir", default=str(REPO / "runs" / "vocab-bench"))
    p.add_argument("--timeout", type=float, default=1200, help="seconds per child")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    on_cuda = args.device.startswith("cuda")
    dtype = "bfloat16" if on_cuda else "float32"
    lengths = args.lengths or ([64] if args.smoke else [2048, 4096, 8192] if on_cuda else [512, 1024])
    steps = args.steps or (2 if args.smoke else 10 if on_cuda else 3)
    base = dict(device=args.device, dtype=dtype, warmup=1 if args.smoke else args.warmup, steps=steps,
                threads=args.threads, prompts=None)
    if args.smoke or args.random:
        kind = "toy" if args.smoke else "random"
        full_vocab = 2048 if args.smoke else 151936
        variants = {"full": dict(kind=kind, vocab=full_vocab), "reduced": dict(kind=kind, vocab=args.reduced_vocab)}
        model_name = "toy qwen2" if args.smoke else "Qwen2.5-0.5B shape, random init"
        base.update(new_tokens=args.new_tokens or (8 if args.smoke else 128), batch=2 if args.smoke else args.batch)
    else:
        from pipeline.core.models import embedded_model_dir
        from pipeline.training.shrink_vocab import shrink_vocab

        full_dir = embedded_model_dir()
        reduced_dir = Path(args.work_dir) / "smollm2-arc24"
        if not (reduced_dir / "cfg.json").is_file():
            shrink_vocab(str(full_dir), "arc24", reduced_dir)
        variants = {"full": dict(kind="dir", path=str(full_dir)), "reduced": dict(kind="dir", path=str(reduced_dir))}
        for name, v in variants.items():
            v["prompts"] = dry_run_prompts(Path(v["path"]))
        model_name = "SmolLM2-135M-Instruct (embedded), reduced by shrink-vocab --format arc24"
        base.update(new_tokens=None, batch=None)
    load_before = os.getloadavg()[0]
    started = time.time()
    rows = []
    for i, length in enumerate(lengths):
        for name, v in variants.items():
            spec = {**base, **v, "variant": name, "length": length, "generate": i == 0}
            row = run_child(spec, args.timeout)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    ratios = []
    for length in lengths:
        full = next(r for r in rows if r["seq_len"] == length and r["variant"] == "full")
        red = next(r for r in rows if r["seq_len"] == length and r["variant"] == "reduced")
        ratios.append({"seq_len": length, "ttft_step": ratio(full.get("ttft_s_per_step"), red.get("ttft_s_per_step")),
                       "generation": ratio(red.get("generated_tokens_per_s"), full.get("generated_tokens_per_s")),
                       "peak_memory": ratio(full.get("peak_memory_gb"), red.get("peak_memory_gb"))})
    if not (args.smoke or args.random):  # both embedded variants must have answered identically
        digests = {r["generated_texts_digest"] for r in rows if r.get("generated_texts_digest") is not None}
        same = len(digests) == 1
    else:
        same = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import torch
    device_name = torch.cuda.get_device_name() if on_cuda else f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    result = {"model": model_name, "device": device_name, "dtype": dtype, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "commit": commit or "unknown", "seconds": round(time.time() - started),
              "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
              "same_answers": same, "rows": rows, "ratios": ratios}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "vocab.md").write_text(markdown(result))
    print(json.dumps(result))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
