"""`python -m notebook_builder build|run`: build a Kaggle notebook, or build and execute it locally.

    python -m notebook_builder build --config kaggle/configs/arc-prize-2025.yaml --output build/arc-prize-2025.ipynb \
        [--kaggle-user USER]            # also writes kernel-metadata.json beside the notebook
        [--docs]                        # embed the modules' comments and docstrings too
    python -m notebook_builder run --config kaggle/configs/local.yaml --workdir runs/dry-run [--timeout 3600]
    python -m notebook_builder rehearse --config kaggle/configs/arc-prize-2024.yaml [--layout datasets]
                                        # a competition config as Kaggle's hidden rerun, on this CPU

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
    build.add_argument("--docs", action="store_true",
                       help="embed the modules with their comments and docstrings (default: code only, line for line)")
    run = sub.add_parser("run", help="build, lay out a Kaggle-like tree in --workdir, execute with nbclient")
    run.add_argument("--config", required=True, help="a local config, e.g. kaggle/configs/local.yaml")
    run.add_argument("--workdir", required=True, help="folder for the Kaggle-like tree and the notebooks")
    run.add_argument("--timeout", type=int, default=3600, help="per-cell timeout of nbclient, seconds")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    from notebook_builder.rehearse import DEFAULT_MINUTES, DEFAULT_TASKS, LAYOUTS, SIZE
    rehearse = sub.add_parser("rehearse", help="run a competition config's notebook headless on this CPU as Kaggle's "
                                               "hidden rerun, its inputs in one Kaggle input layout (or all)")
    rehearse.add_argument("--config", required=True, help="kaggle/configs/NAME.yaml")
    rehearse.add_argument("--layout", default="all", choices=["all", *LAYOUTS],
                          help="where the inputs are mounted (kaggle/README.md); default: every layout in turn")
    rehearse.add_argument("--workdir", default="runs/rehearse",
                          help="WORKDIR/<config>/shared/ (notebook, model), WORKDIR/<config>/<layout>/ per run")
    rehearse.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                          help=f"the N smallest ARC-AGI-1 evaluation tasks as the hidden test set (default {DEFAULT_TASKS})")
    rehearse.add_argument("--ttft-steps", type=int, default=SIZE["ttft_steps"],
                          help=f"TTFT steps per task, at most the config's (default {SIZE['ttft_steps']})")
    rehearse.add_argument("--predictions", type=int, default=SIZE["predictions_per_task"],
                          help=f"predictions per test input, at most the config's (default {SIZE['predictions_per_task']})")
    rehearse.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                          help=f"the run's time after the config's safety margin (default {DEFAULT_MINUTES:g})")
    rehearse.add_argument("--timeout", type=int, default=3600, help="per-cell timeout of nbclient, seconds")
    rehearse.add_argument("--jobs", type=int, default=None,
                          help="layouts rehearsed at once, each on its own cores (default: one per core, as memory "
                               "holds; 1: one after another)")
    rehearse.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    if args.command == "rehearse":
        return rehearse_main(args)

    from notebook_builder.build import build_notebook, kernel_metadata, resolve_config, write_notebook
    try:
        config, header, name = resolve_config(args.config, _overrides(args.set))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.command == "build":
        nb = build_notebook(config, header, name, docs=args.docs)
        size = write_notebook(nb, args.output)
        print(f"wrote {args.output}: {size:,} bytes, {len(nb.cells)} cells")
        if args.kaggle_user:
            meta_path = Path(args.output).with_name("kernel-metadata.json")
            meta = kernel_metadata(config, args.kaggle_user, Path(args.output).name)
            write_json_atomic(meta_path, meta, indent=2)
            print(f"wrote {meta_path}")
        return 0

    from notebook_builder.run import run_local
    try:
        result = run_local(config, args.workdir, args.timeout, header, name)
    except (OSError, ValueError) as e:  # the Kaggle-like tree could not be laid out: bad local_* keys
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result["final_output"].rstrip())
    print(f"executed notebook: {result['executed']}")
    if result["error"]:
        print(f"notebook error: {result['error']}", file=sys.stderr)
    if result["submission_problems"]:
        print(f"submission problems: {result['submission_problems'][:10]}", file=sys.stderr)
    if not result["input_unchanged"]:
        print("the read-only input folder was modified", file=sys.stderr)
    return 0 if result["ok"] and result["input_unchanged"] else 1


def rehearse_main(args) -> int:
    """One rehearsal per layout, the notebook and the model made once; a line per check; exit 1
    when any check failed."""
    from notebook_builder.rehearse import LAYOUTS, describe, prepare
    from notebook_builder.rehearse_pool import rehearse_cases
    layouts = list(LAYOUTS) if args.layout == "all" else [args.layout]
    workdir = Path(args.workdir) / Path(args.config).stem
    size = {"ttft_steps": args.ttft_steps, "predictions_per_task": args.predictions}
    try:
        prepared = prepare(args.config, workdir / "shared", args.tasks, args.minutes, _overrides(args.set), size)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = []
    print(f"rehearsal of {args.config} in the {', '.join(layouts)} layout(s): {workdir}", flush=True)
    results = rehearse_cases([(prepared, layout, workdir / layout) for layout in layouts], args.jobs, args.timeout)
    for layout, result in zip(layouts, results):
        print(f"--- {args.config} in the {layout} layout: {workdir / layout}")
        print(result["final_output"].rstrip())
        print(describe(result), flush=True)
        if not result["ok"]:
            failed.append(layout)
    print(f"rehearsal {'FAILED in ' + ', '.join(failed) if failed else 'passed'} ({len(layouts)} layout(s))")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
