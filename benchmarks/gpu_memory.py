"""GPU memory: the memory model's projection (pipeline/planning/memory.py) against what torch allocates.

    python benchmarks/gpu_memory.py                         # one CUDA card, ~2-4 min, no downloads; prints JSON
    python benchmarks/gpu_memory.py --device cpu --smoke    # toy shape on CPU: checks the script

For a random-initialised model of each preset's shape (`devtools.random_models.architecture_config`:
arc24's Qwen2.5-0.5B, NVARC's Qwen3-4B with its 16-token vocabulary), bf16:

* TTFT rows: a few steps of the stage's own trainer (`CompletionTrainer`, `training_arguments`,
  adamw_torch, bf16 autocast, the completion's logits only) with the preset's LoRA (peft), at a
  sequence length with and without gradient checkpointing. Measured: `torch.cuda.max_memory_allocated`
  over the steps; projected: `ttft_memory(...).allocated` (everything but the CUDA context and the
  allocator's slack, which max_memory_allocated does not see).
* sampling rows: the transformers engine's `generate` path (`TransformersEngine`, left-padded batch,
  per-token log-probs) on a batch of random prompts; projected: `sampling_memory(engine="transformers")`.
  vLLM is not started here: its KV cache takes whatever its `gpu_memory_utilization` share leaves,
  so its own log ("model weights ... GiB, KV cache ... GiB") is the check of that engine.

Each row: measured GB, projected GB and their ratio (target: within 15 %). On CPU (`--smoke`) there
is no allocator to ask: `measured_gb` is null with `"measured": "no device"`, and the row compares
the trainable parameters' and AdamW states' bytes of the real tensors after the steps with the
projection's (exact by construction of the model, tests/planning/test_memory.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (architecture, LoRA of the preset, TTFT rows as (sequence length, gradient checkpointing), the
# completion's share of a sample (the loss's logits), sampling rows as (batch, prompt tokens))
PRESETS = {
    "arc24 qwen2.5-0.5b": ("qwen2.5-0.5b", {"lora_r": 128, "lora_targets": ("q_proj", "k_proj", "v_proj", "o_proj"),
                                            "lora_dropout": 0.1}, ((4096, False), (4096, True)), ((32, 2000),)),
    "nvarc qwen3-4b": ("nvarc-qwen3-4b", {"lora_r": 256, "lora_targets": "all-linear", "train_embeddings": True},
                       ((4096, False), (8192, True)), ((8, 4000),)),
}
SMOKE = {"toy qwen3": ("toy", {"lora_r": 8, "lora_targets": "all-linear", "train_embeddings": True},
                       ((64, False), (64, True)), ((2, 32),))}
NEW_TOKENS = 64
GB = 1e9


def build(name: str, device: str, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    from devtools.random_models import architecture_config, tiny_config
    from pipeline.planning.memory import ModelShape

    config = tiny_config("qwen3", vocab_size=64) if name == "toy" else architecture_config(name)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, ModelShape.from_config(config.to_dict(), name)


def lora_model(model, lora: dict):
    import peft

    from pipeline.planning.memory import resolve_lora_targets

    modules, embeddings = resolve_lora_targets(lora["lora_targets"])
    targets = list(modules) + (["embed_tokens", "lm_head"] if embeddings or lora.get("train_embeddings") else [])
    r = lora["lora_r"]
    return peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=r, lora_dropout=lora.get("lora_dropout", 0.0),
                                                      target_modules=targets, use_rslora=True, task_type="CAUSAL_LM"))


def ttft_row(model, shape, lora: dict, seq_len: int, checkpointing: bool, device: str, work_dir: str) -> dict:
    import torch
    from gpu_ttft import RandomSamples
    from transformers.trainer_callback import PrinterCallback

    from pipeline.planning.memory import ttft_memory
    from pipeline.training.trainer import CompletionCollator, CompletionTrainer, training_arguments

    dtype = "float32" if device == "cpu" else "bfloat16"
    peft_model = lora_model(model, lora)
    args = training_arguments(work_dir, max_steps=3, batch_size=1, learning_rate=1e-4, warmup_ratio=0.0,
                              logging_steps=3, dtype=dtype, use_cpu=device == "cpu", disable_tqdm=True,
                              optim="adamw_torch", gradient_checkpointing=checkpointing)
    trainer = CompletionTrainer(model=peft_model, args=args, train_dataset=RandomSamples(shape.vocab_size, seq_len),
                                data_collator=CompletionCollator(pad_token_id=0))
    trainer.remove_callback(PrinterCallback)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    error = None
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError as e:
        error = f"out of memory: {str(e).splitlines()[0]}"
    projected = ttft_memory(shape, dtype=dtype, seq_len=seq_len, gradient_checkpointing=checkpointing,
                            logits_tokens=seq_len // 8 + 1, **lora)  # RandomSamples: the last eighth is the answer
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    states = trainer.optimizer.state.values() if trainer.optimizer is not None else ()
    # (the gradients are freed after every step: the projection's equal the trainable bytes)
    accounted = {"trainable": sum(map(size, trainable)),
                 "optimizer": sum(size(v) for s in states for k, v in s.items() if k != "step")}
    row = {"kind": "ttft", "seq_len": seq_len, "gradient_checkpointing": checkpointing, "lora_r": lora["lora_r"],
           "projected_gb": round(projected.allocated / GB, 3),
           "projected_parts_gb": {k: round(getattr(projected, k) / GB, 3) for k in
                                  ("weights", "trainable", "gradients", "optimizer", "activations")},
           "accounted_match": {k: accounted[k] == getattr(projected, k) for k in accounted}}
    row.update(measured(device, projected.allocated, error))
    del trainer
    peft_model.unload()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def sampling_row(model, shape, batch: int, prompt: int, device: str) -> dict:
    import torch

    from devtools.random_models import BENCH_TOKENIZER
    from pipeline.core.models import load_tokenizer
    from pipeline.planning.memory import sampling_memory
    from pipeline.sampling.generation import Request
    from pipeline.sampling.transformers_engine import TransformersEngine

    dtype = "float32" if device == "cpu" else "bfloat16"
    engine = TransformersEngine(None, load_tokenizer(BENCH_TOKENIZER), model=model.eval(), device=device,
                                batch_size=batch)
    engine.pad_id, engine.eos_id = 0, None  # the tokenizer's ids may lie beyond a 16-token vocabulary; no row stops
    generator = torch.Generator().manual_seed(0)
    requests = [Request(prompt_ids=tuple(torch.randint(10, shape.vocab_size, (prompt,), generator=generator).tolist()),
                        max_tokens=NEW_TOKENS) for _ in range(batch)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    error = None
    try:
        engine.generate(requests)
    except torch.cuda.OutOfMemoryError as e:
        error = f"out of memory: {str(e).splitlines()[0]}"
    projected = sampling_memory(shape, engine="transformers", dtype=dtype, max_model_len=prompt + NEW_TOKENS,
                                max_num_seqs=batch)
    row = {"kind": "sampling", "engine": "transformers", "batch": batch, "prompt_tokens": prompt,
           "new_tokens": NEW_TOKENS, "projected_gb": round(projected.allocated / GB, 3),
           "projected_parts_gb": {k: round(getattr(projected, k) / GB, 3)
                                  for k in ("weights", "activations", "kv_cache")}}
    row.update(measured(device, projected.allocated, error))
    return row


def measured(device: str, projected: int, error: str | None) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {"measured_gb": None, "measured": "no device", "error": error}
    peak = torch.cuda.max_memory_allocated()
    return {"measured_gb": round(peak / GB, 3), "ratio": round(projected / peak, 3),
            "within_15_percent": abs(projected / peak - 1) <= 0.15, "error": error}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="toy shape and sizes (a CPU check of the script)")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --smoke")
    if args.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(args.device))
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    started, rows = time.time(), []
    with tempfile.TemporaryDirectory() as work_dir:
        for preset, (name, lora, ttft_rows, sampling_rows) in (SMOKE if args.smoke else PRESETS).items():
            model, shape = build(name, args.device, dtype)
            for seq_len, checkpointing in ttft_rows:
                rows.append({"preset": preset, **ttft_row(model, shape, lora, seq_len, checkpointing, args.device,
                                                          work_dir)})
                print(json.dumps(rows[-1]), file=sys.stderr)
            for batch, prompt in sampling_rows:
                rows.append({"preset": preset, **sampling_row(model, shape, batch, prompt, args.device)})
                print(json.dumps(rows[-1]), file=sys.stderr)
            del model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "seconds": round(time.time() - started, 1), "rows": rows}
    text = json.dumps(result)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
