"""Reduced vocabulary: keep only the tokens a prompt format can write or read (`shrink-vocab`).

    python -m pipeline shrink-vocab --model embedded --format architects --output models/smollm2-architects
        [--tasks FILE ...] [--grid_encoder SPEC] [--dtype float32|bfloat16|float16]

An ARC prompt uses a few hundred distinct tokens, but the model carries its whole vocabulary in
its embedding and LM head (SmolLM2: 49,152 x 576; Qwen2.5-0.5B: 151,936 x 896, whose fp32
logits of one 8k-token sequence take ~5 GB).  This stage writes a normal transformers model
directory whose vocabulary is only:

* every token the format's texts encode to (the prompts and answers of the given tasks under
  every prompt version of the format, plus synthetic grids of every shape 1..30 x 1..30 so that
  any grid's shape header and row numbers are covered), closed under BPE merge ancestry: a
  merge is kept when its two parts and its result are kept, so the reduced tokenizer applies
  exactly the merges the full one applies to those texts and encodes them to the same tokens
  (`keep_ids`' docstring has the argument; the tests check it on every evaluation prompt);
* every single-character token (the byte-level alphabet), so any text still encodes (into more
  tokens if it uses pieces the format never does) instead of failing;
* every added (special) token, so the chat template, eos and pad keep working.

Ids are renumbered in the full vocabulary's order; the embedding and LM-head rows are the same
rows sliced (a tied head stays tied).  The logits of the reduced model are the full model's
logits at the kept ids, to float precision: greedy decoding is unchanged whenever the full
model's choice is a kept token, and the loss is the full loss renormalised over the kept tokens.
LoRA adapters on the linear layers (the project's attention / all-linear targets never include
the embeddings or the head) apply to the reduced model unchanged.

`cfg.json` names the format (and its encoder and prompt version), so every later stage honours
it without flags; `vocab.json` records the kept ids of the full vocabulary, in order.

`reduced_model` makes such a folder once: a folder whose cfg.json names the same source model and
format is used again (`is_reduced_model_of`, the one reuse rule of the accuracy benchmark's
`--shrink_vocab` and of the local runs' model dataset, the config key `local_model_shrink_vocab`
that `local_model` makes for `notebook_builder run` and `python -m pipeline dry-run`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from pipeline.core.encoders import create_grid_encoder
from pipeline.core.files import atomic_dir, check_output, read_json, write_json_atomic
from pipeline.core.formats import ARC24, FORMAT_NAMES
from pipeline.core.model_cfg import RUN_CONFIG, resolve_prompting
from pipeline.core.models import EMBEDDED, load_model_and_tokenizer, model_path_problem, resolve_model_path
from pipeline.core.prompts import PROMPT_VERSIONS, build_inference_prompt, build_train_sample, get_prompt_version
from pipeline.core.tasks import TaskError, load_tasks

VOCAB_FILE = "vocab.json"
TOKENIZER_FILES = ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
MAX_SIDE = 30


# ----------------------------------------------------------------------------- corpus

def synthetic_tasks() -> dict[str, dict]:
    """One task per grid shape 1..30 x 1..30 whose cells run through all ten colours, so every
    shape header, row number and digit-after-anything an encoder can write appears."""
    tasks = {}
    for h in range(1, MAX_SIDE + 1):
        for w in range(1, MAX_SIDE + 1):
            grid = [[(r * w + c + r) % 10 for c in range(w)] for r in range(h)]
            tasks[f"shape-{h}x{w}"] = {"train": [{"input": grid, "output": grid}],
                                       "test": [{"input": grid, "output": grid}]}
    return tasks


def format_versions(format_name: str) -> list[str]:
    """Every prompt version a model in this format is trained or asked with."""
    return sorted(PROMPT_VERSIONS) if format_name == ARC24 else [format_name]


def format_texts(tasks: Mapping[str, dict], tokenizer, format_name: str, grid_encoder: str | None = None) -> Iterable[str]:
    """The texts of the format: each task's training sample (prompt + answer) for every test
    pair and every prompt version of the format (the inference prompt where the pair has no
    target grid)."""
    prompting = resolve_prompting({}, format_name, grid_encoder)
    encoder = create_grid_encoder(prompting.grid_encoder)
    for version in format_versions(format_name):
        target = get_prompt_version(version).target
        for task in tasks.values():
            for index, pair in enumerate(task["test"]):
                if target in pair:
                    sample = build_train_sample(task, encoder, tokenizer, version, index)
                    yield sample.prompt + sample.completion
                elif target == "output":
                    yield build_inference_prompt(task, encoder, tokenizer, version, index)


# ----------------------------------------------------------------------------- tokenizer

def _merge_pairs(model: Mapping) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def keep_ids(tokenizer_json: Mapping, used_ids: Iterable[int]) -> list[int]:
    """The kept ids of the full vocabulary, sorted: `used_ids`, every token a merge producing a
    kept token consumes (recursively), every single-character token and every added token.

    Why the reduced BPE encodes the texts that produced `used_ids` exactly as the full one does:
    BPE repeatedly applies the lowest-ranked merge applicable to the word.  Every merge the full
    tokenizer applies to those texts produces a token that ends up in, or is consumed on the way
    to, a used token, so its parts and result are kept and the merge with them; the reduced
    tokenizer's merges are a subset of the full ones, so at every step the full tokenizer's
    choice is still applicable and still the lowest-ranked: same steps, same tokens."""
    model = tokenizer_json["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"shrink-vocab handles BPE tokenizers, not {model.get('type')!r}")
    vocab = model["vocab"]
    token_of = {i: t for t, i in vocab.items()}
    producers: dict[str, list[tuple[str, str]]] = {}
    for a, b in _merge_pairs(model):
        producers.setdefault(a + b, []).append((a, b))
    kept = {t for t in vocab if len(t) == 1}
    stack = [token_of[i] for i in used_ids if i in token_of]
    while stack:
        token = stack.pop()
        if token in kept and len(token) > 1:
            continue
        kept.add(token)
        for a, b in producers.get(token, ()):
            stack.extend(p for p in (a, b) if p not in kept)
    ids = {vocab[t] for t in kept}
    ids |= {t["id"] for t in tokenizer_json.get("added_tokens", [])}
    return sorted(ids)


def shrink_tokenizer_json(tokenizer_json: Mapping, kept: Sequence[int]) -> dict:
    """The tokenizer.json of the kept ids, renumbered 0..len(kept)-1 in the full order."""
    new_id = {old: new for new, old in enumerate(kept)}
    out = json.loads(json.dumps(tokenizer_json))
    model = out["model"]
    vocab = {t: new_id[i] for t, i in model["vocab"].items() if i in new_id}
    merges = [m for m, (a, b) in zip(model["merges"], _merge_pairs(model)) if a in vocab and b in vocab and a + b in vocab]
    model["vocab"], model["merges"] = vocab, merges
    out["added_tokens"] = [{**t, "id": new_id[t["id"]]} for t in out.get("added_tokens", []) if t["id"] in new_id]
    if out.get("post_processor") and "special_tokens" in out["post_processor"]:
        for spec in out["post_processor"]["special_tokens"].values():
            spec["ids"] = [new_id[i] for i in spec.get("ids", [])]
    return out


# ----------------------------------------------------------------------------- model

def shrink_model(model, kept: Sequence[int]) -> None:
    """Slice the embedding and LM-head rows to `kept` (in place); a tied head stays tied."""
    import torch

    index = torch.tensor(list(kept), dtype=torch.long)
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.weight.data_ptr()
    new_emb = torch.nn.Embedding(len(kept), emb.embedding_dim, dtype=emb.weight.dtype, device=emb.weight.device)
    with torch.no_grad():
        new_emb.weight.copy_(emb.weight[index.to(emb.weight.device)])
    model.set_input_embeddings(new_emb)
    if head is not None:
        new_head = torch.nn.Linear(head.in_features, len(kept), bias=head.bias is not None,
                                   dtype=head.weight.dtype, device=head.weight.device)
        with torch.no_grad():
            if tied:
                new_head.weight = new_emb.weight
            else:
                new_head.weight.copy_(head.weight[index.to(head.weight.device)])
            if head.bias is not None:
                new_head.bias.copy_(head.bias[index.to(head.bias.device)])
        model.set_output_embeddings(new_head)
    model.config.vocab_size = len(kept)
    new_id = {old: new for new, old in enumerate(kept)}
    for cfg in (model.config, getattr(model, "generation_config", None)):
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            value = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(value, int):
                setattr(cfg, name, new_id.get(value))
            elif isinstance(value, list):
                setattr(cfg, name, [new_id[v] for v in value if v in new_id])


# ----------------------------------------------------------------------------- the stage

def reduced_tokenizer(tokenizer_json: Mapping, tokenizer, format_name: str, tasks: Mapping[str, dict] | None = None,
                      grid_encoder: str | None = None) -> tuple[dict, list[int], dict]:
    """(reduced tokenizer.json, kept ids of the full vocabulary, facts) for the format's texts
    of `tasks` and the synthetic grids."""
    texts = list(format_texts({**(tasks or {}), **synthetic_tasks()}, tokenizer, format_name, grid_encoder))
    used: set[int] = set()
    for start in range(0, len(texts), 256):
        for ids in tokenizer(texts[start:start + 256], add_special_tokens=False)["input_ids"]:
            used.update(ids)
    kept = keep_ids(tokenizer_json, used)
    return shrink_tokenizer_json(tokenizer_json, kept), kept, {"texts": len(texts), "tokens_used": len(used)}


def write_tokenizer(directory: Path, source_dir: Path, tokenizer_json: Mapping) -> None:
    """tokenizer.json plus the source's tokenizer config and chat template (without the
    id-keyed `added_tokens_decoder`, whose ids are the full vocabulary's)."""
    write_json_atomic(directory / "tokenizer.json", tokenizer_json)
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copy2(source_dir / name, directory / name)
    if (directory / "tokenizer_config.json").is_file():
        tok_cfg = read_json(directory / "tokenizer_config.json")
        tok_cfg.pop("added_tokens_decoder", None)
        write_json_atomic(directory / "tokenizer_config.json", tok_cfg, indent=1)


def shrink_vocab(model: str, format_name: str, output: str | Path, tasks: Mapping[str, dict] | None = None,
                 grid_encoder: str | None = None, dtype: str | None = None, log=print) -> dict:
    """Write the reduced model directory; returns its cfg.json."""
    model_dir = resolve_model_path(model)
    prompting = resolve_prompting({}, format_name, grid_encoder)
    tokenizer_json = read_json(model_dir / "tokenizer.json")
    net, tokenizer = load_model_and_tokenizer(model_dir, dtype=dtype or "float32")
    rows = net.get_input_embeddings().num_embeddings  # may exceed the vocabulary (Qwen pads to 151,936)
    top = max([*tokenizer_json["model"]["vocab"].values(), *(t["id"] for t in tokenizer_json.get("added_tokens", []))])
    if top >= rows:
        raise ValueError(f"{model_dir}: tokenizer.json has token id {top} but the embedding has {rows} rows")
    tokenizer.model_max_length = 10 ** 9  # whole synthetic tasks are counted, never fed to the model
    new_json, kept, facts = reduced_tokenizer(tokenizer_json, tokenizer, prompting.format, tasks, prompting.grid_encoder)
    shrink_model(net, kept)
    cfg = {"stage": "shrink-vocab", "source_model": str(model), "source_model_dir": str(model_dir),
           "format": prompting.format, "grid_encoder": prompting.grid_encoder, "prompt_version": prompting.prompt_version,
           "vocab_size": len(kept), "source_vocab_size": len(tokenizer_json["model"]["vocab"]),
           "tasks": len(tasks or {}), **facts}
    with atomic_dir(output) as tmp:
        net.save_pretrained(tmp)
        write_tokenizer(tmp, model_dir, new_json)
        write_json_atomic(tmp / VOCAB_FILE, {"kept_ids": kept}, indent=None)
        write_json_atomic(tmp / RUN_CONFIG, cfg, indent=1)
    log(f"shrink-vocab: {cfg['source_vocab_size']} -> {len(kept)} tokens ({facts['tokens_used']} used by "
        f"{facts['texts']} {prompting.format} texts) -> {output}")
    return cfg


def is_reduced_model_of(folder: str | Path, source: str, format_name: str) -> bool:
    """Whether `folder` already holds this stage's model of `source` (as the stage was given it:
    `embedded` or a path) for `format_name`.  Its cfg.json is written inside the atomic write, so a
    folder that has one is complete."""
    cfg = Path(folder) / RUN_CONFIG
    if not cfg.is_file():
        return False
    made = read_json(cfg)
    return made.get("stage") == "shrink-vocab" and made.get("source_model") == str(source) \
        and made.get("format") == format_name


def reduced_model(source: str, format_name: str, folder: str | Path, tasks: Mapping[str, dict] | None = None,
                  what: str = "shrink-vocab", log=print) -> bool:
    """Make `folder` the reduced model of `source` for `format_name` unless it already is one
    (`is_reduced_model_of`); True when it was made now.  ValueError, one line starting with `what`
    (the config key or flag that asked), for an unknown format, a source that is no model, or a
    folder this stage did not make (never replaced)."""
    if format_name not in FORMAT_NAMES:
        raise ValueError(f"{what}: format {format_name!r} is not one of {', '.join(FORMAT_NAMES)}")
    problem = model_path_problem(source)
    if problem:
        raise ValueError(f"{what}: source {problem}")
    if is_reduced_model_of(folder, source, format_name):
        return False
    check_output(folder, {"source": source}, folder=True, own=(RUN_CONFIG,), what=what)
    shrink_vocab(source, format_name, folder, tasks, log=log)
    return True


def local_model(spec: Mapping[str, str], folder: str | Path, repo: Path, what: str = "local_model_shrink_vocab",
                log=print) -> bool:
    """A local run's model dataset in `folder` (the config key `local_model_shrink_vocab`: {source,
    format}, source the alias `embedded` or a path relative to the checkout `repo`), made once
    (`reduced_model`); True when it was made now."""
    source = spec["source"] if spec["source"] == EMBEDDED else str(repo / spec["source"])
    return reduced_model(source, spec["format"], folder, what=what, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline shrink-vocab",
                                description="Keep only the tokens a prompt format writes or reads: a transformers "
                                            "model directory with a reduced embedding, LM head and tokenizer.")
    p.add_argument("--model", required=True, help="'embedded', a transformers directory or a .gguf")
    p.add_argument("--format", required=True, choices=FORMAT_NAMES, help="the prompt format the model will speak")
    p.add_argument("--output", required=True, help="the reduced model directory (written atomically)")
    p.add_argument("--tasks", nargs="*", default=[], metavar="FILE",
                   help="task files whose prompts must encode exactly as before (synthetic grids of every shape "
                        "are always added)")
    p.add_argument("--grid_encoder", help="arc24 format: the encoder (default: the project's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="saved precision (default float32)")
    args = p.parse_args(argv)
    try:
        check_output(args.output, {"--model": args.model, "--tasks": args.tasks}, folder=True,
                     own=("config.json",))  # a model folder, or new: never a foreign one
        tasks = {}
        for path in args.tasks:
            tasks.update({f"{Path(path).stem}/{k}": v for k, v in load_tasks(path).items()})
        shrink_vocab(args.model, args.format, args.output, tasks, args.grid_encoder, args.dtype)
    except (OSError, ValueError, TaskError) as e:
        print(f"shrink-vocab: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
