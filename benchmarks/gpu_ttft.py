"""TTFT step throughput on one CUDA card: a random-initialised Qwen2.5-0.5B, no downloads.

    python benchmarks/gpu_ttft.py                        # ~1-3 min on one GPU; prints JSON
    python benchmarks/gpu_ttft.py --device cpu --smoke   # toy sizes, checks the script on CPU

The model is `devtools.random_models.qwen2_5_0_5b_config()` initialised at random on the device (the
weights do not change the speed); samples are random token ids of ARC-like lengths (1k/2k/4k)
with the last eighth as the completion (the loss, and the trimmed output head, cover only it).
Every (length, LoRA rank) runs the TTFT training path itself -- `trainer.CompletionTrainer`,
`CompletionCollator`, `training_arguments`, a fresh `build_lora_model` on q/k/v/o, batch 1,
bf16 (fp16 on cards without bf16) -- for `--warmup` + `--steps` optimizer steps; only the steps
after the warm-up are timed (CUDA synchronised at each step end).

Reported per configuration: seconds per step, steps/s, tokens/s, peak memory
(torch.cuda.max_memory_allocated), the per-task fixed costs (Trainer setup until training
begins, saving the adapter) and the seconds of a 300-step task (spec §9.3) built from them, and
MFU = model FLOPs per second / the card's peak dense bf16 (T4: fp16) FLOPs.  Model FLOPs of
one step (the PaLM convention, as for full training):

    6 × N_body × T                 weights of the 24 blocks, forward + backward, every token
  + 6 × V × d × C                  the (tied) output head, on the C completion positions only
  + 12 × L × d_attn × T²           attention scores and values, forward + backward (not halved
                                   for the causal mask)

(N_body: parameters outside the embedding, T: tokens, V: vocabulary, d: hidden size, L: layers,
d_attn: heads × head dim.)  LoRA skips the frozen weights' gradients, so the hardware does about
4/6 of the weight FLOPs counted here; `mfu_lora` counts 4 × N_body instead of 6.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.random_models import qwen2_5_0_5b_config, tiny_config  # noqa: E402
from pipeline.core.models import native_bf16  # noqa: E402
from pipeline.training.lora import LoraSettings, build_lora_model  # noqa: E402
from pipeline.training.trainer import CompletionCollator, CompletionTrainer, training_arguments  # noqa: E402

# Peak dense tensor FLOPs (bf16; T4: fp16), by a substring of torch.cuda.get_device_name().
PEAK_FLOPS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
              ("L4", 121e12), ("T4", 65e12), ("A10G", 70e12))


def peak_flops(name: str) -> float | None:
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)


class RandomSamples(torch.utils.data.IterableDataset):
    """Endless random token sequences of `length`, the last `length // 8` being the completion."""

    def __init__(self, vocab_size: int, length: int, seed: int = 0):
        self.vocab_size, self.length, self.seed = vocab_size, length, seed

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        prompt = self.length - self.length // 8
        while True:
            ids = torch.randint(10, self.vocab_size, (self.length,), generator=generator).tolist()
            yield {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "weight": 1.0}


def step_flops(config, n_body: int, length: int) -> tuple[float, float]:
    """(model FLOPs of one step, the same with 4 × N_body for LoRA), see the module docstring."""
    completion = length // 8
    d_attn = config.num_attention_heads * (getattr(config, "head_dim", None)
                                           or config.hidden_size // config.num_attention_heads)
    head = 6 * config.vocab_size * config.hidden_size * completion
    attention = 12 * config.num_hidden_layers * d_attn * length ** 2
    return 6 * n_body * length + head + attention, 4 * n_body * length + head + attention


class StepClock(TrainerCallback):
    """Timestamps of every step end, after a device synchronise."""

    def __init__(self, device: str):
        self.device, self.ends, self.begin = device, [], None

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def run_one(model, config, n_body: int, length: int, rank: int, args, dtype: str, work_dir: str) -> dict:
    model = build_lora_model(model, LoraSettings(r=rank, alpha=2 * rank, dropout=0.0))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = args.warmup + args.steps
    training = training_arguments(work_dir, max_steps=total, batch_size=1, learning_rate=1e-4, warmup_ratio=0.0,
                                  logging_steps=total, dtype=dtype, use_cpu=args.device == "cpu",
                                  disable_tqdm=True, optim="adamw_torch",
                                  gradient_checkpointing=args.gradient_checkpointing)
    clock = StepClock(args.device)
    created = time.perf_counter()
    trainer = CompletionTrainer(model=model, args=training, train_dataset=RandomSamples(config.vocab_size, length),
                                data_collator=CompletionCollator(pad_token_id=0), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    error = None
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError as e:
        error = f"out of memory: {str(e).splitlines()[0]}"
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    saved = time.perf_counter()
    model.save_pretrained(work_dir + "/adapter")
    save_s = time.perf_counter() - saved
    base = model.unload()  # the bare model again, for the next rank
    del trainer
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    row = {"seq_len": length, "lora_r": rank, "trainable_params": trainable,
           "peak_mem_gb": None if peak is None else round(peak, 2)}
    if error or len(clock.ends) < total:
        return base, {**row, "error": error or f"only {len(clock.ends)} steps ran"}
    seconds = (clock.ends[-1] - clock.ends[args.warmup - 1]) / args.steps
    flops, flops_lora = step_flops(config, n_body, length)
    peak_flops_s = peak_flops(torch.cuda.get_device_name()) if args.device.startswith("cuda") else None
    setup_s = clock.begin - created
    row.update(s_per_step=round(seconds, 4), steps_per_s=round(1 / seconds, 2), tokens_per_s=round(length / seconds),
               setup_s=round(setup_s, 3), save_s=round(save_s, 3),
               task_s_at_300_steps=round(setup_s + 300 * seconds + save_s, 1),
               model_tflops_per_step=float(f"{flops / 1e12:.4g}"),
               achieved_tflops=float(f"{flops / seconds / 1e12:.4g}"),
               mfu=round(flops / seconds / peak_flops_s, 4) if peak_flops_s else None,
               mfu_lora=round(flops_lora / seconds / peak_flops_s, 4) if peak_flops_s else None)
    return base, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="toy model and lengths (a CPU check of the script)")
    parser.add_argument("--lengths", type=int, nargs="+", help="tokens per sample (default 1024 2048 4096)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                        help="default: bfloat16 (float16 on cards without bf16), float32 on cpu")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--deterministic", action="store_true",
                        help="the stages' `deterministic: true` switches first (pipeline/core/determinism.py)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.deterministic:  # what a stage given --deterministic does before it loads the model
        from pipeline.core.determinism import make_deterministic
        make_deterministic()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --smoke")
    if args.smoke:
        config = tiny_config("qwen2", vocab_size=2048)
        lengths, ranks = args.lengths or [64, 128], [4]
        args.steps, args.warmup = min(args.steps, 3), 1
    else:
        config = qwen2_5_0_5b_config()
        lengths, ranks = args.lengths or [1024, 2048, 4096], args.ranks
    if args.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(args.device))
    dtype = args.dtype or ("float32" if args.device == "cpu" else
                           "bfloat16" if native_bf16() else "float16")
    start = time.time()
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    n_params = sum(p.numel() for p in model.parameters())
    n_body = n_params - model.get_input_embeddings().weight.numel()
    results = []
    with tempfile.TemporaryDirectory() as work_dir:
        for length in lengths:
            for rank in ranks:
                model, row = run_one(model, config, n_body, length, rank, args, dtype, work_dir)
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = peak_flops(name)
    print(json.dumps({"device": name, "dtype": dtype, "peak_tflops": peak and peak / 1e12,
                      "model": "toy qwen2" if args.smoke else "Qwen2.5-0.5B shape, random init",
                      "params": n_params, "params_body": n_body, "torch": torch.__version__,
                      "seconds": round(time.time() - start, 1), "results": results}))


if __name__ == "__main__":
    main()
