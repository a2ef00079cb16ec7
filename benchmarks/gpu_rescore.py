"""Rescoring on one GPU: views scored together (`views_answer_logprobs`) against view after view (`answer_logprobs`).

    python benchmarks/gpu_rescore.py                       # one CUDA card, about a minute, no downloads
    python benchmarks/gpu_rescore.py --device cpu --smoke  # tiny sizes on CPU: checks the script runs (CI)

The model is a random-initialised Qwen2.5-0.5B-shaped network (`devtools.random_models`, bf16 on
CUDA) with random token ids, so nothing is downloaded.  One test input is scored as the rescore
stage scores it: `--views` views, each a prompt of about `--prompt_len` tokens (lengths differ by
view, as augmented prompts do, so padding is exercised) and `--candidates` answers of about
`--answer_len` tokens.  It times the path before issue 24 (each view's prompt prefilled, then its
candidates in batches of `--batch_size`) and the batched path at each `--view_batches`, and
reports seconds, the speed-up, the largest log-probability difference between the two (they
must agree: 1e-4 in fp32; bf16 rounds differently with the batch shape, so a GPU row reports
its difference rather than asserting it) and the peak memory.  Prints one JSON object
(`--output` also writes it); `benchmarks/gpu_bench.py` runs it as its `rescoring` part.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gpu_common import cuda_missing, emit, random_qwen  # noqa: E402 (a sibling: benchmarks/ is the script's folder)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny model and sizes (CPU check)")
    parser.add_argument("--views", type=int, help="views per test input (default 8; smoke 4)")
    parser.add_argument("--candidates", type=int, help="candidates per test input (default 8; smoke 3)")
    parser.add_argument("--prompt_len", type=int, help="prompt tokens per view (default 2000; smoke 40)")
    parser.add_argument("--answer_len", type=int, help="answer tokens per candidate (default 200; smoke 6)")
    parser.add_argument("--batch_size", type=int, default=16, help="candidate-views per forward pass")
    parser.add_argument("--view_batches", type=int, nargs="+", help="views per prefill (default 2 4 8; smoke 2 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row (the fastest is kept)")
    parser.add_argument("--dtype", help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    from pipeline.selection.rescore import per_view_logprobs

    device = args.device
    on_cuda = device.startswith("cuda")
    if cuda_missing(device, torch.cuda.is_available()):
        return 2
    views = args.views or (4 if args.smoke else 8)
    candidates = args.candidates or (3 if args.smoke else 8)
    prompt_len = args.prompt_len or (40 if args.smoke else 2000)
    answer_len = args.answer_len or (6 if args.smoke else 200)
    view_batches = args.view_batches or ([2, 4] if args.smoke else [2, 4, 8])
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))
    model = random_qwen(torch, device, dtype, args.smoke, 4096)
    g = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(100, model.config.vocab_size, (n,), generator=g).tolist()

    # lengths differ by view and by candidate (as augmented prompts and transformed grids do)
    inputs = [(ids(prompt_len + 7 * v), [ids(answer_len + c % 3) for c in range(candidates)]) for v in range(views)]
    tokens = sum(len(p) + sum(map(len, a)) for p, a in inputs)

    def timed(view_batch: int) -> tuple[float, list, float | None]:
        best, scores = float("inf"), None
        if on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            scores = per_view_logprobs(model, inputs, args.batch_size, view_batch)
            if on_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        peak = round(torch.cuda.max_memory_allocated() / 1e9, 2) if on_cuda else None
        return best, scores, peak

    per_view_logprobs(model, inputs[:1], args.batch_size, 1)  # warm-up: kernels, allocator
    reference_s, reference, reference_peak = timed(0)
    rows = [{"view_batch": 0, "path": "view after view", "seconds": round(reference_s, 4), "speedup": 1.0,
             "max_difference": 0.0, "peak_memory_gb": reference_peak}]
    for view_batch in view_batches:
        seconds, scores, peak = timed(view_batch)
        diff = max(abs(a - b) for ra, rb in zip(scores, reference) for a, b in zip(ra, rb))
        rows.append({"view_batch": view_batch, "path": "across views", "seconds": round(seconds, 4),
                     "speedup": round(reference_s / seconds, 2), "max_difference": float(f"{diff:.2g}"),
                     "peak_memory_gb": peak})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name(torch.device(device)) if on_cuda else "cpu"
    result = {"device": name, "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
              "smoke": args.smoke, "views": views, "candidates": candidates, "prompt_len": prompt_len,
              "answer_len": answer_len, "batch_size": args.batch_size, "tokens": tokens, "results": rows}
    return emit(result, args.output)


if __name__ == "__main__":
    sys.exit(main())
