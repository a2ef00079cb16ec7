"""Training-step throughput and padding waste on a realistic mix of ARC prompts.

    python benchmarks/bench_finetune.py                 # embedded SmolLM2 + tiny model, ~3-4 min on 2 cores
    python benchmarks/bench_finetune.py --models tiny --steps 8

Prompts: the ARC-AGI-1 training + evaluation tasks as two training sets, re-augmented every
draw, default grid encoder, output-from-examples-v1, over-long prompts trimmed by dropping train
pairs (`--remove_train_samples_to_fit_max_seq_len`), exactly as `finetune` draws them.

Reports, measured in this run:
  1. the padded-token share of per-device batches of 4 with and without length bucketing (data
     only, many batches, no model), and their ratio;
  2. tokens/s (real tokens, padding excluded) of LoRA (r=32, attention) training steps through
     `CompletionTrainer`, for each model at per-device batch 1 and 4, with and without bucketing,
     with the padded share of the batches those steps saw (embedded: with gradient checkpointing,
     which batches of 4 × 2048 tokens need on a 23 GB machine).
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder  # noqa: E402
from pipeline.training.finetune_data import DatasetSpec, TrainingStream, load_training_set  # noqa: E402

VERSION = "output-from-examples-v1"
SETS = ("data/arc-agi-1/arc-agi_training_challenges.json", "data/arc-agi-1/arc-agi_evaluation_challenges.json")


def make_stream(sets, encoder, tokenizer, max_seq_len, batch_size, bucket_batches, seed=0):
    return TrainingStream(sets, encoder, tokenizer, max_seq_len=max_seq_len, remove_train_samples=True,
                          batch_size=batch_size, bucket_batches=bucket_batches, seed=seed)


def padded_share_of_stream(stream, collate, batch_size, n_batches):
    it = iter(stream)
    real = total = 0
    for _ in range(n_batches):
        mask = collate([next(it) for _ in range(batch_size)])["attention_mask"]
        real, total = real + int(mask.sum()), total + mask.numel()
    return 1 - real / total


def train_steps(model, tokenizer, stream, per_device, steps, workdir, gradient_checkpointing=False):
    """tokens/s and padded share of `steps` optimizer steps (batch = per_device, no accumulation)."""
    from transformers.trainer_callback import PrinterCallback

    from pipeline.training.trainer import CompletionCollator, CompletionTrainer, training_arguments

    args = training_arguments(workdir, max_steps=steps, batch_size=per_device, per_device_batch_size=per_device,
                              logging_steps=1, warmup_ratio=0.0, use_cpu=True, disable_tqdm=True,
                              gradient_checkpointing=gradient_checkpointing)
    trainer = CompletionTrainer(model=model, args=args, train_dataset=stream, processing_class=tokenizer,
                                data_collator=CompletionCollator(tokenizer.pad_token_id))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer.throughput_summary()


def warm_up(model, tokenizer):
    """One forward/backward on a short sequence: first-call allocations stay out of the timings."""
    ids = tokenizer("0123456789" * 20, return_tensors="pt")["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["embedded", "tiny"], choices=["embedded", "tiny"])
    parser.add_argument("--max_seq_len", type=int, default=2048)
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 1], metavar=("BATCH1", "BATCH4"),
                        help="optimizer steps per configuration at per-device batch 1 and 4 (embedded)")
    parser.add_argument("--tiny_steps", type=int, nargs=2, default=[8, 4], metavar=("BATCH1", "BATCH4"),
                        help="the same for the tiny model")
    parser.add_argument("--embedded_gradient_checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="for the embedded model (without it, batches of 4 × 2048 tokens need > 20 GB)")
    parser.add_argument("--padding_batches", type=int, default=200, help="batches for the data-only padded share")
    parser.add_argument("--bucket_batches", type=int, default=16)
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from devtools.random_models import build_tiny_model
    from pipeline.core.models import load_model_and_tokenizer, load_tokenizer
    from pipeline.training.lora import LoraSettings, build_lora_model
    from pipeline.training.trainer import CompletionCollator

    hf_logging.set_verbosity_error()
    logging.getLogger("pipeline.training.finetune").setLevel(logging.WARNING)
    start = time.perf_counter()
    tokenizer = load_tokenizer("embedded")
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    sets = [load_training_set(DatasetSpec(path, VERSION), need_all_outputs=True) for path in SETS]
    collate = CompletionCollator(tokenizer.pad_token_id)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; prompts: ARC-AGI-1 training + evaluation, "
          f"{VERSION}, default encoder, re-augmented, trimmed to fit")

    print(f"\n1. padded-token share, per-device batch 4, {args.padding_batches} batches (data only)")
    print(f"{'max_seq_len':>11} {'no bucketing':>13} {'bucketed x' + str(args.bucket_batches):>13} {'ratio':>7}")
    for max_len in sorted({args.max_seq_len, 8192}):
        plain = padded_share_of_stream(make_stream(sets, encoder, tokenizer, max_len, 4, 1), collate, 4,
                                       args.padding_batches)
        bucketed = padded_share_of_stream(make_stream(sets, encoder, tokenizer, max_len, 4, args.bucket_batches),
                                          collate, 4, args.padding_batches)
        print(f"{max_len:>11} {plain:>13.1%} {bucketed:>13.1%} {plain / max(bucketed, 1e-9):>6.1f}x")

    print(f"\n2. LoRA r=32 (attention) training steps, fp32 CPU, max_seq_len {args.max_seq_len}")
    if "embedded" in args.models and args.embedded_gradient_checkpointing:
        print("(embedded: with gradient checkpointing)")
    print(f"{'model':<10} {'per-device':>10} {'bucketing':>9} {'steps':>5} {'tokens':>7} {'s/step':>7} "
          f"{'tok/s':>7} {'padded':>7}")
    for name in args.models:
        if name == "embedded":
            base, _ = load_model_and_tokenizer("embedded")
            steps, checkpointing = args.steps, args.embedded_gradient_checkpointing
        else:
            base, steps, checkpointing = build_tiny_model(tokenizer), args.tiny_steps, False
        for per_device, bucket in ((1, 1), (4, 1), (4, args.bucket_batches)):
            model = build_lora_model(copy.deepcopy(base), LoraSettings(r=32))
            warm_up(model, tokenizer)
            stream = make_stream(sets, encoder, tokenizer, args.max_seq_len, per_device, bucket, seed=1)
            with tempfile.TemporaryDirectory() as workdir:
                result = train_steps(model, tokenizer, stream, per_device, steps[per_device > 1], workdir,
                                     checkpointing)
            print(f"{name:<10} {per_device:>10} {'x' + str(bucket) if bucket > 1 else 'off':>9} {result['steps']:>5} "
                  f"{int(result['tokens']):>7} {result['seconds'] / result['steps']:>7.2f} {result['tok_per_s']:>7.0f} "
                  f"{result['padded_share']:>7.1%}", flush=True)
            del model
        del base
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ntotal {time.perf_counter() - start:.0f} s (1-min load average at the end: {load:.1f} on "
          f"{os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
