"""`python -m notebook_builder build|run`: build a Kaggle notebook, or build and execute it locally.

    python -m notebook_builder build --config kaggle/configs/arc-prize-2025.yaml --output build/arc-prize-2025.ipynb \
        [--kaggle-user USER]            # also writes kernel-metadata.json beside the notebook
    python -m notebook_builder run --config kaggle/configs/local.yaml --workdir runs/dry-run [--timeout 3600]

`--set KEY=VALUE` (repeatable, VALUE parsed as YAML) overrides one config key, e.g.
`--set model=/path/to/model --set ttft_steps=2`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from pipeline.core.files import write_json_atomic


def _overrides(pairs) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise SystemExit(f"--set {key.strip()}: {value!r} is not a YAML value ({getattr(e, 'problem', e)})")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notebook_builder", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the notebook for one config")
    build.add_argument("--config", required=True, help="kaggle/configs/NAME.yaml")
    build.add_argument("--output", required=True, help="the .ipynb to write (e.g. build/NAME.ipynb)")
    build.add_argument("--kaggle-user", help="also write kernel-metadata.json for `kaggle kernels push`")
    build.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    run = sub.add_parser("run", help="build, lay out a Kaggle-like tree in --workdir, execute with nbclient")
    run.add_argument("--config", required=True, help="a local config, e.g. kaggle/configs/local.yaml")
    run.add_argument("--workdir", required=True, help="folder for the Kaggle-like tree and the notebooks")
    run.add_argument("--timeout", type=int, default=3600, help="per-cell timeout of nbclient, seconds")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)

    from notebook_builder.build import build_notebook, kernel_metadata, resolve_config, write_notebook
    try:
        config, header, name = resolve_config(args.config, _overrides(args.set))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.command == "build":
        nb = build_notebook(config, header, name)
        size = write_notebook(nb, args.output)
        print(f"wrote {args.output}: {size:,} bytes, {len(nb.cells)} cells")
        if args.kaggle_user:
            meta_path = Path(args.output).with_name("kernel-metadata.json")
            meta = kernel_metadata(config, args.kaggle_user, Path(args.output).name)
            write_json_atomic(meta_path, meta, indent=2)
            print(f"wrote {meta_path}")
        return 0

    from notebook_builder.run import run_local
    result = run_local(config, args.workdir, args.timeout, header, name)
    print(result["final_output"].rstrip())
    print(f"executed notebook: {result['executed']}")
    if result["error"]:
        print(f"notebook error: {result['error']}", file=sys.stderr)
    if result["submission_problems"]:
        print(f"submission problems: {result['submission_problems'][:10]}", file=sys.stderr)
    if not result["input_unchanged"]:
        print("the read-only input folder was modified", file=sys.stderr)
    return 0 if result["ok"] and result["input_unchanged"] else 1


if __name__ == "__main__":
    sys.exit(main())
