"""Per-task adapters: where they live, when one is complete, how one is saved. One definition
for the TTFT stage (writes them, resumes after the complete ones), sampling and rescoring (use a
task's own complete adapter, else the fallback) and the tests.

Layout: `OUT/adapters/<task_id>/` holds the peft adapter (`adapter_config.json`,
`adapter_model.safetensors`), its `cfg.json` and, written last, `record.json` (the task's
outcome: "done", or "failed"/"skipped"/"too_long" without an adapter).  A save goes to a temp
folder renamed into place, so a killed save leaves no half adapter under the task's name.
With full fine-tuning (`ttft --full_finetune`) the folder holds, instead of a peft adapter, the
task's weights as their difference from the base model (`FULL_DELTA`, bf16: half the bytes of
the weights, and a difference keeps its small updates where bf16 weights would round them away);
its cfg.json says `full_finetune: true`.  The transformers engine serves it (`full_delta`);
vLLM cannot.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

from pipeline.core.files import atomic_dir, read_json, write_json_atomic
from pipeline.core.model_cfg import RUN_CONFIG

ADAPTERS = "adapters"      # OUT/adapters/<task_id>/
RECORD = "record.json"     # written last: the task's outcome
FULL_DELTA = "full_delta.safetensors"  # full fine-tuning: trained weights minus the base model's


def adapter_dir(output_dir: str | os.PathLike, task_id: str) -> Path:
    return Path(output_dir) / ADAPTERS / task_id


def read_record(output_dir: str | os.PathLike, task_id: str) -> dict | None:
    path = adapter_dir(output_dir, task_id) / RECORD
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def is_complete(output_dir: str | os.PathLike, task_id: str) -> bool:
    """TTFT's resume rule: record.json says "done" (it is written after the adapter) and the
    adapter is there: `adapter_is_complete` with the record required."""
    directory = adapter_dir(output_dir, task_id)
    return (directory / RECORD).is_file() and adapter_is_complete(directory)


def write_unfinished(output_dir, task_id: str, record: dict) -> None:
    """A record without an adapter (any stale adapter files of an earlier run are removed)."""
    directory = adapter_dir(output_dir, task_id)
    shutil.rmtree(directory, ignore_errors=True)
    write_json_atomic(directory / RECORD, record, indent=1)


def save_adapter(model, output_dir, task_id: str, record: dict, run_config: dict) -> None:
    """Adapter + cfg.json into a temp dir renamed into place, then record.json (last)."""
    directory = adapter_dir(output_dir, task_id)
    with atomic_dir(directory) as tmp:
        # only the adapter's own weights: peft's "auto" would add a copy of the whole base embedding and
        # head to every task's adapter when a LoRA targets them (a 4B model: ~0.8 GB per task)
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        write_json_atomic(tmp / RUN_CONFIG, run_config, indent=1)
    write_json_atomic(directory / RECORD, record, indent=1)


def save_full_delta(model, initial: dict, output_dir, task_id: str, record: dict, run_config: dict) -> None:
    """Full fine-tuning's per-task weights: every trained parameter minus its value before the
    task (`initial`, from `lora.trainable_state`) in bf16, + cfg.json, then record.json (last)."""
    import torch
    from safetensors.torch import save_file

    directory = adapter_dir(output_dir, task_id)
    with torch.no_grad():
        delta = {name: (p.detach().float() - initial[name].float()).to(torch.bfloat16).contiguous().cpu()
                 for name, p in model.named_parameters() if p.requires_grad}
    with atomic_dir(directory) as tmp:
        save_file(delta, str(tmp / FULL_DELTA))
        write_json_atomic(tmp / RUN_CONFIG, run_config, indent=1)
    write_json_atomic(directory / RECORD, record, indent=1)


def is_full_delta(directory: str | os.PathLike) -> bool:
    """Whether an adapter folder holds full fine-tuning's task weights (not a peft adapter)."""
    return (Path(directory) / FULL_DELTA).is_file()


def full_delta(directory: str | os.PathLike) -> dict:
    """{parameter name: bf16 tensor}: what a task's full fine-tuning added to the base weights."""
    from safetensors.torch import load_file
    return load_file(str(Path(directory) / FULL_DELTA))


def adapter_is_complete(directory: str | os.PathLike) -> bool:
    """Adapter config and weights (or full fine-tuning's `FULL_DELTA`) are there and, when the
    TTFT stage left a `record.json` (written last), it says "done" (failed/skipped tasks get a
    record and no adapter)."""
    d = Path(directory)
    if not is_full_delta(d) and (not (d / "adapter_config.json").is_file() or not any(
            (d / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin"))):
        return False
    if (d / RECORD).is_file():
        try:
            return read_json(d / RECORD).get("status") == "done"
        except (OSError, ValueError, AttributeError):
            return False
    return True


def find_adapters(task_ids: Iterable[str], adapters_dir: str | os.PathLike | None,
                  adapter_path: str | os.PathLike | None) -> tuple[dict, list[str]]:
    """`{task_id: adapter dir or None}` (a task's own complete adapter in `adapters_dir/<task_id>/`,
    else `adapter_path`, else the base model) and the ids of the tasks that fell back."""
    fallback = str(Path(adapter_path).resolve()) if adapter_path else None
    if fallback and not adapter_is_complete(fallback):
        raise FileNotFoundError(f"--adapter_path {adapter_path}: not a complete peft adapter "
                                f"(adapter_config.json + adapter_model.safetensors)")
    if adapters_dir and not Path(adapters_dir).is_dir():
        what = "is a file, not a folder" if Path(adapters_dir).exists() else "no such folder"
        raise FileNotFoundError(f"--adapters_dir {adapters_dir}: {what} of per-task adapters (ADAPTERS_DIR/<task_id>/)")
    chosen, fell_back = {}, []
    for task_id in task_ids:
        own = Path(adapters_dir) / task_id if adapters_dir else None
        if own is not None and adapter_is_complete(own):
            chosen[task_id] = str(own.resolve())
        else:
            chosen[task_id] = fallback
            fell_back.append(task_id)
    return chosen, fell_back
