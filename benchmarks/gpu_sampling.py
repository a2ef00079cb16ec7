"""Generated tokens/s of the transformers engine on one GPU, against the memory-bandwidth bound.

    python benchmarks/gpu_sampling.py                       # one CUDA card, a few minutes, no downloads
    python benchmarks/gpu_sampling.py --device cpu --smoke  # tiny sizes on CPU: checks the script runs

The model is a random-initialised Qwen2.5-0.5B-shaped network (`devtools.random_models.qwen2_5_0_5b_config`,
494 M parameters, bf16 on CUDA) with random prompt ids, so nothing is downloaded; the tokenizer
is the small committed one (`devtools.random_models.BENCH_TOKENIZER`, the SmolLM2 tokenizer reduced
to the arc24 format: only its special ids and decoding are used), so nothing else has to travel.
Random weights rarely emit the end-of-turn token, so every row generates `--new_tokens`.

For each batch size it times `TransformersEngine.generate` (the pipeline's code path: left
padding, per-token log-probs) and a 1-token call (the prefill), and reports:

* generated tokens/s end to end, and decode tokens/s (prefill time taken out);
* peak GPU memory;
* the bandwidth bound of decoding: every step reads all weights once plus the KV cache of every
  row, so tokens/s <= batch × bandwidth / (weight bytes + KV bytes per step), with the card's
  bandwidth looked up by its name (`CARD_BANDWIDTH`; `--bandwidth_gbs` overrides), and the
  measured decode rate as a fraction of that bound.

Prints one JSON object (`--output` also writes it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gpu_common import cuda_missing, emit, random_qwen  # noqa: E402 (a sibling: benchmarks/ is the script's folder)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# memory bandwidth in bytes/s, matched by substring of torch.cuda.get_device_name() (first match wins)
CARD_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),          # SXM (HBM3)
    ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),          # 40 GB
    ("L40S", 864e9),
    ("L40", 864e9),
    ("L4", 300e9),
    ("A10G", 600e9),
    ("A10", 600e9),
    ("T4", 320e9),
    ("V100", 900e9),
    ("RTX 4090", 1008e9),
    ("RTX 3090", 936e9),
)


def card_bandwidth(name: str) -> float | None:
    for key, value in CARD_BANDWIDTH:
        if key.lower() in name.lower():
            return value
    return None


def decode_bytes_per_step(config, n_params: int, dtype_bytes: int, batch: int, context: int) -> dict:
    """Bytes one decode step reads: every weight once (tied embeddings counted once, as the
    lm_head; the input-embedding lookup reads only `batch` rows) plus each row's KV cache."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype_bytes
    weights = n_params * dtype_bytes
    kv = batch * context * kv_per_token
    return {"weight_bytes": weights, "kv_bytes": kv, "total_bytes": weights + kv}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny model and sizes (CPU check)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", help="default 1 8 32 96 (smoke: 1 2)")
    parser.add_argument("--prompt_len", type=int, help="prompt tokens per row (default 1000, an ARC prompt; smoke 32)")
    parser.add_argument("--new_tokens", type=int, help="generated tokens per row (default 256; smoke 8)")
    parser.add_argument("--dtype", help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--bandwidth_gbs", type=float, help="override the card's memory bandwidth (GB/s)")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: devtools' small committed one)")
    parser.add_argument("--deterministic", action="store_true",
                        help="the stages' `deterministic: true` switches first (pipeline/core/determinism.py)")
    args = parser.parse_args(argv)

    import torch

    from pipeline.sampling.generation import Request
    from pipeline.sampling.transformers_engine import TransformersEngine
    from devtools.random_models import BENCH_TOKENIZER
    from pipeline.core.models import load_tokenizer
    if args.deterministic:  # what a stage given --deterministic does before it loads the model
        from pipeline.core.determinism import make_deterministic
        make_deterministic()

    device = args.device
    on_cuda = device.startswith("cuda")
    if cuda_missing(device, torch.cuda.is_available()):
        return 2
    batch_sizes = args.batch_sizes or ([1, 2] if args.smoke else [1, 8, 32, 96])
    prompt_len = args.prompt_len or (32 if args.smoke else 1000)
    new_tokens = args.new_tokens or (8 if args.smoke else 256)
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))
    tokenizer = load_tokenizer(args.tokenizer or BENCH_TOKENIZER)
    t0 = time.perf_counter()
    model = random_qwen(torch, device, dtype, args.smoke, len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    engine = TransformersEngine(None, tokenizer, model=model, device=device, batch_size=max(batch_sizes))
    name = torch.cuda.get_device_name(torch.device(device)) if on_cuda else "cpu"
    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else (card_bandwidth(name) if on_cuda else None)
    dtype_bytes = torch.finfo(dtype).bits // 8
    generator = torch.Generator().manual_seed(1)
    vocab = min(model.config.vocab_size, len(tokenizer))

    def requests(batch, tokens):
        ids = torch.randint(100, vocab, (batch, prompt_len), generator=generator).tolist()
        return [Request(tuple(row), tokens) for row in ids]

    engine.generate(requests(1, 2))  # warm-up: kernels, allocator
    rows = []
    for batch in batch_sizes:
        if on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reqs = requests(batch, new_tokens)
        t0 = time.perf_counter()
        engine.generate([Request(r.prompt_ids, 1) for r in reqs])
        if on_cuda:
            torch.cuda.synchronize()
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = engine.generate(reqs)
        if on_cuda:
            torch.cuda.synchronize()
        total_s = time.perf_counter() - t0
        generated = sum(c.n_tokens for c in out)
        decode_s = max(total_s - prefill_s, 1e-9)
        decode_tokens = generated - batch
        row = {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "generated_tokens": generated,
               "seconds": round(total_s, 3), "prefill_seconds": round(prefill_s, 3),
               "generated_tokens_per_s": round(generated / total_s, 1),
               "decode_tokens_per_s": round(decode_tokens / decode_s, 1),
               "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if on_cuda else None}
        traffic = decode_bytes_per_step(model.config, n_params, dtype_bytes, batch, prompt_len + new_tokens // 2)
        row.update({k: v for k, v in traffic.items()})
        if bandwidth:
            bound = batch * bandwidth / traffic["total_bytes"]
            row["bandwidth_bound_tokens_per_s"] = round(bound, 1)
            row["fraction_of_bound"] = round(row["decode_tokens_per_s"] / bound, 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    result = {"device": name, "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
              "smoke": args.smoke, "params": n_params, "model_build_s": round(build_s, 1),
              "bandwidth_bytes_per_s": bandwidth, "engine": "transformers", "results": rows}
    return emit(result, args.output)


if __name__ == "__main__":
    sys.exit(main())
