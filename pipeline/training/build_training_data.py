"""`python -m pipeline build-training-data`: the ARC fine-tuning set, with no ARC-AGI-1 evaluation task in it.

One deterministic command builds `data/training/arc-train.json` (tasks with their test outputs)
and `data/training/manifest.json` (sources, counts, what was excluded and why) from the vendored
sets: ARC-AGI-1 training, ARC-AGI-2 training, MINI-ARC and ConceptARC.

Exclusion is by content as well as by id: ARC-AGI-2's training set holds many ARC-AGI-1
evaluation tasks, some under other ids.  A task is dropped when it shares an id with an
evaluation task, or any of its (input, output) pairs, train or test, equals a pair of one.

Size: a CPU trains on short samples only.  A task is kept when its shortest useful training
sample, one train pair as the example and its longest test pair as the target, fits in
`--max_tokens` for the default output prompt, in the task's own view and transposed (a
transpose changes the row count and so the token count).  Finetune then trims longer draws with
`--remove_train_samples_to_fit_max_seq_len` at the same limit.

Duplicates are dropped: ARC-AGI-2's training set repeats many ARC-AGI-1 training tasks (e.g.
arc2/6150a2bd = arc1/6150a2bd).  A task whose set of grid pairs equals that of a task already kept
(earlier in the source order) is left out, so no task is drawn twice as often as the others.

Task ids are prefixed with their source (`arc1/`, `arc2/`, `mini/`, `concept/`), so ids from
different sets cannot collide and a sample's origin stays visible.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from pipeline.core.augment import Augmentation
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.files import check_output, write_json_atomic, write_text_atomic
from pipeline.core.models import load_tokenizer, resolve_model_path
from pipeline.core.prompts import build_train_sample
from pipeline.core.tasks import TaskError, load_tasks, valid_grid_key

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
EVALUATION = "arc-agi-1/arc-agi_evaluation_challenges.json"
# (prefix, path under data/): the order is the order of the output file
SOURCES = (
    ("arc1", "arc-agi-1/arc-agi_training_challenges.json"),
    ("arc2", "arc-agi-2/arc-agi_training_challenges.json"),
    ("mini", "external/MINI-ARC.json"),
    ("concept", "external/ConceptARC.json"),
)
OUTPUT = "training/arc-train.json"
MANIFEST = "training/manifest.json"
DEFAULT_MAX_TOKENS = 1024
SIZE_PROMPT_VERSION = "output-from-examples-v1"


def pair_keys(task: dict) -> set[tuple]:
    """Every (input, output) pair of a task, train and test, as a hashable value."""
    return {(valid_grid_key(p["input"]), valid_grid_key(p["output"]))
            for split in ("train", "test") for p in task[split] if "output" in p}


def evaluation_overlap(task_id: str, task: dict, eval_ids: set[str], eval_pairs: dict[tuple, str]) -> str | None:
    """Why `task` counts as an evaluation task (its id; the evaluation tasks it shares a grid pair
    with), or None.  Both checks run, so the manifest shows what the content check alone catches."""
    reasons = []
    bare_id = task_id.split("/", 1)[-1]
    if bare_id in eval_ids:
        reasons.append(f"id {bare_id} is an ARC-AGI-1 evaluation task")
    shared = sorted({eval_pairs[key] for key in pair_keys(task) if key in eval_pairs})
    if shared:
        reasons.append(f"shares a grid pair with evaluation task(s) {', '.join(shared)}")
    return "; ".join(reasons) or None


def shortest_sample_tokens(task: dict, encoder, tokenizer, version: str = SIZE_PROMPT_VERSION) -> int:
    """Tokens of the shortest useful training sample (one example, the longest test pair as the
    target), the larger of the task's own view and its transpose."""
    views = (task, Augmentation(n_rot90=1).apply_task(task))  # a quarter turn swaps rows and columns
    longest = 0
    for view in views:
        for index in range(len(view["test"])):
            sample = build_train_sample({"train": view["train"][:1], "test": view["test"]}, encoder,
                                        tokenizer, version, index)
            longest = max(longest, len(tokenizer(sample.prompt + sample.completion,
                                                 add_special_tokens=False)["input_ids"]))
    return longest


def build(data_dir: Path, tokenizer, max_tokens: int = DEFAULT_MAX_TOKENS, encoder_text: str = DEFAULT_ENCODER,
          sources: Sequence[tuple[str, str]] = SOURCES, evaluation_file: str = EVALUATION) -> tuple[dict, dict]:
    """(tasks, manifest): the filtered training tasks in a fixed order and what was dropped.
    `sources` are (id prefix, path under `data_dir`); `evaluation_file` the tasks to keep out."""
    encoder = create_grid_encoder(encoder_text)
    evaluation = load_tasks(data_dir / evaluation_file)
    eval_pairs = {key: tid for tid, task in sorted(evaluation.items()) for key in pair_keys(task)}
    eval_ids = set(evaluation)
    kept: dict[str, dict] = {}
    kept_content: dict[frozenset, str] = {}  # a kept task's pairs -> its id, to find repeats
    manifest = {"max_tokens": max_tokens, "grid_encoder": encoder_text, "size_prompt_version": SIZE_PROMPT_VERSION,
                "evaluation": evaluation_file, "sources": {}, "excluded": {}}
    for prefix, relative in sources:
        tasks = load_tasks(data_dir / relative)
        counts = {"tasks": len(tasks), "evaluation_overlap": 0, "duplicate": 0, "too_long": 0, "no_test_output": 0,
                  "kept": 0}
        for task_id, task in tqdm(sorted(tasks.items()), desc=f"{prefix}", leave=False):
            full_id = f"{prefix}/{task_id}"
            if not all("output" in p for p in task["test"]):
                counts["no_test_output"] += 1
                manifest["excluded"][full_id] = "a test pair has no output"
                continue
            overlap = evaluation_overlap(full_id, task, eval_ids, eval_pairs)
            if overlap:
                counts["evaluation_overlap"] += 1
                manifest["excluded"][full_id] = overlap
                continue
            content = frozenset(pair_keys(task))
            if content in kept_content:
                counts["duplicate"] += 1
                manifest["excluded"][full_id] = f"same grid pairs as {kept_content[content]}"
                continue
            tokens = shortest_sample_tokens(task, encoder, tokenizer)
            if tokens > max_tokens:
                counts["too_long"] += 1
                continue
            kept[full_id] = task
            kept_content[content] = full_id
            counts["kept"] += 1
        manifest["sources"][prefix] = {"path": relative, **counts}
    manifest["kept"] = len(kept)
    return kept, manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline build-training-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(DATA_DIR), help="the vendored data folder (default: the repo's data/)")
    parser.add_argument("--output", default=None, help=f"tasks JSON (default: DATA_DIR/{OUTPUT})")
    parser.add_argument("--max_tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help="keep tasks whose shortest training sample fits in this many tokens")
    parser.add_argument("--model", default="embedded", help="whose tokenizer counts the tokens")
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir)
    output = Path(args.output) if args.output else data_dir / OUTPUT
    try:
        check_output(output, {"a source": [data_dir / path for _, path in SOURCES] + [data_dir / EVALUATION]})
        check_output(output.with_name("manifest.json"), {"a source": [data_dir / path for _, path in SOURCES]})
        tokenizer = load_tokenizer(resolve_model_path(args.model))
        tasks, manifest = build(data_dir, tokenizer, args.max_tokens)
    except (TaskError, OSError, ValueError) as exc:
        print(f"build-training-data: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(tasks, separators=(",", ":"))
    manifest["output"] = output.name
    manifest["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    write_text_atomic(output, text)
    write_json_atomic(output.with_name("manifest.json"), manifest, indent=1)
    per_source = ", ".join(f"{p} {s['kept']}/{s['tasks']}" for p, s in manifest["sources"].items())
    print(f"build-training-data: {len(tasks)} tasks kept ({per_source}); "
          f"{sum(s['evaluation_overlap'] for s in manifest['sources'].values())} excluded as evaluation tasks, "
          f"{sum(s['duplicate'] for s in manifest['sources'].values())} as duplicates, "
          f"{sum(s['too_long'] for s in manifest['sources'].values())} longer than {args.max_tokens} tokens -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
