"""`python -m pipeline export-adapter`: a finetune checkpoint -> a shippable adapter folder with its model card.

    python -m pipeline export-adapter runs/arc-lora --output models/smollm2-135m-arc-lora \\
        --benchmark docs/accuracy.md

Takes the newest complete checkpoint of a finetune run (or the checkpoint given) and writes,
atomically, a folder that the normal loading path reads (`--adapter_path` of ttft, sample,
dry-run, eval-checkpoint):

    adapter_config.json          peft's, unchanged
    adapter_model.safetensors    the LoRA weights in float16 (they load onto fp32/bf16 models)
    cfg.json                     the run config: encoder, prompt versions, data, LoRA settings
    training.json                steps, tokens, training hours, losses, data manifest, source checkpoint
    loss.png                     train and eval loss against the step
    README.md                    the model card (from the above, plus --benchmark's text)

Tokens and hours are summed over the trainer's log history, which a resumed run carries on, so
a run trained over several sessions reports its whole cost.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from pipeline.core.files import atomic_dir, check_output, read_json, write_json_atomic, write_text_atomic
from pipeline.core.formats import DEFAULT_FORMAT

EXPORT_DTYPE = "float16"


def find_checkpoint(path: Path) -> Path:
    """`path` if it is a checkpoint (adapter + trainer_state.json), else the newest complete one inside it."""
    from pipeline.training.trainer import latest_checkpoint  # torch, transformers, peft: only for a checkpoint folder

    if (path / "adapter_config.json").is_file() and (path / "trainer_state.json").is_file():
        return path
    checkpoint = latest_checkpoint(path)
    if checkpoint is None or not (checkpoint / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path}: no complete LoRA checkpoint (checkpoint-N with adapter_config.json "
                                f"and trainer_state.json)")
    return checkpoint


def training_facts(state: dict, cfg: dict, checkpoint: Path) -> dict:
    """What the model card says about the training, from trainer_state.json and cfg.json."""
    history = state.get("log_history", [])
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    tokens = sum(int(h.get("tokens", 0)) for h in history)
    seconds = sum(float(h.get("train_seconds", 0.0)) for h in history)
    args = cfg.get("args", {})
    return {"checkpoint": str(checkpoint), "steps": state.get("global_step"), "max_steps": state.get("max_steps"),
            "batch_size": args.get("batch_size"), "learning_rate": args.get("learning_rate"),
            "lr_scheduler_type": args.get("lr_scheduler_type"), "max_seq_len": cfg.get("max_seq_len"),
            "tokens_trained": tokens, "training_seconds": round(seconds, 1),
            "training_hours": round(seconds / 3600, 2), "device": cfg.get("device"),
            "torch_dtype": cfg.get("torch_dtype"), "train_loss": train, "eval_loss": evals,
            "format": cfg.get("format") or DEFAULT_FORMAT, "grid_encoder": cfg.get("grid_encoder"),
            "prompt_version": cfg.get("prompt_version"),
            "prompt_versions": cfg.get("prompt_versions"), "train_datasets": cfg.get("train_datasets"),
            "val_dataset": cfg.get("val_dataset"), "lora": cfg.get("lora"), "model_path": cfg.get("model_path")}


def plot_losses(facts: dict, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pipeline.core.render import save_figure_atomic  # matplotlib, as above: only when the curve is drawn

    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points, style in (("train loss", facts["train_loss"], "-"), ("eval loss", facts["eval_loss"], "o-")):
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, style, label=label, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("completion loss (per-sample mean)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure_atomic(fig, path, dpi=100)


def _loss(points) -> str:
    return f"{points[-1][1]:.4f}" if points else "n/a"


def model_card(name: str, facts: dict, manifest: dict | None, benchmark: str) -> str:
    sets = facts.get("train_datasets") or []
    lines = [f"# {name}", "",
             "A LoRA adapter for SmolLM2-135M-Instruct (the project's embedded model), fine-tuned on ARC tasks "
             "on a 2-core CPU with the project's own `finetune` stage. It is what `make dry-run`, "
             "`python -m pipeline dry-run`, `eval-checkpoint` and the local notebook config put on the "
             "embedded model by default.", "",
             "## Training", "",
             f"- base model: `{facts['model_path']}`; LoRA {json.dumps(facts['lora'])}",
             f"- encoder `{facts['grid_encoder']}`, inference prompt version `{facts['prompt_version']}`",
             "- tasks (multi-task, as in the seed): " + "; ".join(
                 f"`{s.get('path')}` as `{s.get('prompt_version')}` (weight {s.get('weight')}, {s.get('n_tasks')} tasks)"
                 for s in sets if isinstance(s, dict)),
             f"- {facts['steps']} optimizer steps of batch {facts['batch_size']} (max {facts['max_seq_len']} "
             f"tokens a sample), lr {facts['learning_rate']} ({facts['lr_scheduler_type']}), "
             f"{facts['torch_dtype']} on {facts['device']}",
             f"- {facts['tokens_trained']:,} tokens trained in {facts['training_hours']} hours of training steps",
             f"- last logged train loss {_loss(facts['train_loss'])}, eval loss {_loss(facts['eval_loss'])} "
             f"(eval: the validation set's test pairs, a loss only, never trained on)", "",
             "![loss curve](loss.png)", ""]
    if manifest:
        lines += ["## Data and its exclusions", "",
                  f"`data/training/arc-train.json` (sha256 `{manifest['sha256'][:16]}...`), built by "
                  f"`python -m pipeline build-training-data`: {manifest['kept']} tasks whose shortest sample fits "
                  f"{manifest['max_tokens']} tokens. No ARC-AGI-1 evaluation task is in it: tasks are dropped by id "
                  f"and by content (any train or test grid pair equal to one of an evaluation task).", "",
                  "| source | tasks | evaluation tasks dropped | longer than the limit | kept |", "|---|---|---|---|---|"]
        for prefix, s in manifest["sources"].items():
            lines.append(f"| {s['path']} | {s['tasks']} | {s['evaluation_overlap']} | {s['too_long']} | {s['kept']} |")
        lines.append("")
    if benchmark.strip():
        lines += ["## Accuracy", "", benchmark.strip(), ""]
    lines += ["## Files", "",
              "`adapter_config.json` and `adapter_model.safetensors` (float16) are a normal peft LoRA; `cfg.json` "
              "carries the encoder and prompt version every stage reads; `training.json` holds the facts above "
              "and the full loss history.", ""]
    return "\n".join(lines)


def export(checkpoint: Path, output: Path, benchmark: str = "", manifest_path: Path | None = None) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    state = read_json(checkpoint / "trainer_state.json")
    cfg_path = checkpoint / "cfg.json"
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    facts = training_facts(state, cfg, checkpoint)
    manifest = read_json(manifest_path) if manifest_path and manifest_path.is_file() else None
    if manifest:
        facts["data_manifest_sha256"] = manifest["sha256"]
    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    dtype = getattr(torch, EXPORT_DTYPE)
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    with atomic_dir(output) as tmp:
        shutil.copyfile(checkpoint / "adapter_config.json", tmp / "adapter_config.json")
        save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        if cfg:
            write_json_atomic(tmp / "cfg.json", cfg, indent=1)
        write_json_atomic(tmp / "training.json", facts, indent=1)
        plot_losses(facts, tmp / "loss.png")
        write_text_atomic(tmp / "README.md", model_card(output.name, facts, manifest, benchmark))
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline export-adapter", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="finetune output_dir (its newest checkpoint) or a checkpoint-N folder")
    parser.add_argument("--output", required=True, help="the adapter folder to write (replaced atomically)")
    parser.add_argument("--benchmark", help="a Markdown file whose text goes into the card's Accuracy section")
    parser.add_argument("--manifest", default=str(Path(__file__).resolve().parents[2] / "data" / "training" /
                                                  "manifest.json"), help="the training data's manifest")
    args = parser.parse_args(argv)
    try:
        check_output(args.output, {"RUN": args.run, "--benchmark": args.benchmark, "--manifest": args.manifest},
                     folder=True, own=("adapter_config.json",))  # an adapter folder, or new: never a foreign one
        checkpoint = find_checkpoint(Path(args.run))
        benchmark = Path(args.benchmark).read_text() if args.benchmark else ""
        output = export(checkpoint, Path(args.output), benchmark, Path(args.manifest))
    except (OSError, ValueError, KeyError) as e:
        print(f"export-adapter: {e}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in output.iterdir()) / 2**20
    print(f"export-adapter: {checkpoint} -> {output} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
