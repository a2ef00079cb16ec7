"""Batched exact DFS against the batch-1 search on one device: seconds, speed-up, the same answers.

    python benchmarks/gpu_dfs.py                       # one CUDA card (part of `make gpu-bench`), no downloads
    python benchmarks/gpu_dfs.py --device cpu --smoke  # tiny sizes on CPU: checks the script runs (CI)

The model is a random-initialised Qwen2.5-0.5B-shaped network (`devtools.random_models`, bf16 on
CUDA) whose final norm is scaled (x`--sharpen`) so that a few continuations hold most of the
probability, as a trained model's do; the prompts are random ids.  An answer is any path of
`--answer_len` tokens (an ARC answer's length is fixed by its grid's shape) or one ending at the
end-of-turn token.
The same `--views` prompts are searched at P = `--min_prob` with `dfs_batch_views` 1 (the batch-1
search, `search.dfs_completions`) and with each of `--batch_views` (`batched_search`), through
`TransformersEngine.search` (the stage's code path).  Each row: seconds, expanded nodes, nodes per
second, the speed-up over batch 1, and whether the answers are the batch-1 answers (the same
tokens, log-probs within `--tolerance`: 1e-4 in fp32; bf16 rows may differ more, reported).
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny model and sizes (CPU check)")
    parser.add_argument("--views", type=int, help="prompts searched (default 16; smoke 4)")
    parser.add_argument("--batch_views", type=int, nargs="+", help="batched rows (default 4 8 16; smoke 2 4)")
    parser.add_argument("--prompt_len", type=int, help="prompt tokens (default 1000, an ARC prompt; smoke 32)")
    parser.add_argument("--answer_len", type=int, help="tokens of an answer (default 100; smoke 8)")
    parser.add_argument("--min_prob", type=float, default=0.1)
    parser.add_argument("--sharpen", type=float, default=6.0,
                        help="final-norm scale: how peaked the model is (1: flat, nothing above P; 8: greedy only)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--dtype", help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    from devtools.random_models import BENCH_TOKENIZER
    from pipeline.core.models import load_tokenizer
    from pipeline.sampling.batched_search import View, search_views

    device = args.device
    on_cuda = device.startswith("cuda")
    if cuda_missing(device, torch.cuda.is_available()):
        return 2
    views = args.views or (4 if args.smoke else 16)
    batches = args.batch_views or ([2, 4] if args.smoke else [4, 8, 16])
    prompt_len = args.prompt_len or (32 if args.smoke else 1000)
    max_tokens = args.answer_len or (8 if args.smoke else 100)
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))
    tokenizer = load_tokenizer(BENCH_TOKENIZER)
    model = random_qwen(torch, device, dtype, args.smoke, len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    with torch.no_grad():
        model.model.norm.weight.mul_(args.sharpen)
    vocab = min(model.config.vocab_size, len(tokenizer))
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(100, vocab, (views, prompt_len), generator=generator).tolist()
    searched = [View(tuple(p), max_tokens) for p in prompts]

    def ends(tokens) -> bool:  # the closing fence's stand-in: the answer has its length
        return len(tokens) >= max_tokens

    def run(batch_views: int, todo=searched):
        if on_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        found = search_views(model, todo, args.min_prob, tokenizer.eos_token_id, ends, batch_views=batch_views)
        if on_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, found

    run(2, searched[:2])  # warm-up: kernels, allocator
    base_s, base = run(1)
    rows = [{"batch_views": 1, "seconds": round(base_s, 3), "answers": sum(len(f) for f in base), "speedup": 1.0,
             "same_answers": True, "max_logprob_diff": 0.0, "within_tolerance": True}]
    for batch_views in batches:
        seconds, found = run(batch_views)
        same = all([f.token_ids for f in a] == [f.token_ids for f in b] for a, b in zip(base, found))
        diff = max((abs(x.logprob - y.logprob) for a, b in zip(base, found) for x, y in zip(a, b)), default=0.0)
        rows.append({"batch_views": batch_views, "seconds": round(seconds, 3), "answers": sum(len(f) for f in found),
                     "speedup": round(base_s / max(seconds, 1e-9), 2), "same_answers": same,
                     "max_logprob_diff": float(f"{diff:.2e}"), "within_tolerance": same and diff <= args.tolerance})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name(torch.device(device)) if on_cuda else "cpu"
    result = {"device": name, "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
              "smoke": args.smoke, "views": views, "prompt_len": prompt_len, "max_tokens": max_tokens,
              "min_prob": args.min_prob, "sharpen": args.sharpen, "results": rows}
    return emit(result, args.output)


if __name__ == "__main__":
    sys.exit(main())
