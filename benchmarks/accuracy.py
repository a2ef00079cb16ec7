"""The accuracy benchmark: how many ARC tasks the pipeline solves, row by row, in one run.

    .venv/bin/python benchmarks/accuracy.py --jobs 2              # the dry run's recipe: bare, bare+ttft rows
    .venv/bin/python benchmarks/accuracy.py --rows bare+ttft --ttft_steps 16 --ttft_learning_rate 1e-3
    .venv/bin/python benchmarks/accuracy.py --task_ids 66e6c45b 00576224 --rows bare adapter
    .venv/bin/python benchmarks/accuracy.py --rows bare+ttft --ttft_copies 32 --ttft_epochs 2 --dtype auto

Rows (each runs the real stages as subprocesses, test outputs hidden from every stage):

    bare           the embedded SmolLM2-135M-Instruct, no training at all
    bare+ttft      a fresh LoRA fine-tuned per task at test time (the TTFT recipe below)
    adapter        the ARC-trained adapter (`--adapter`, default the shipped one), no TTFT
    adapter+ttft   TTFT continuing that adapter, with the same recipe and steps

The defaults are the dry run's recipe, read from kaggle/configs/local.yaml (`recipe_defaults`: its
TTFT steps, learning rate and batch, its model dataset's format and reduced vocabulary, its
precision where it is not the stages' own default): the sweep's winner (docs/accuracy.md) is
written once, there, and the default rows are the two that recipe runs (`bare`, `bare+ttft`; no
adapter).  The reference recipe of 2026-11-29: `--format arc24 --no-shrink_vocab --ttft_steps 32
--ttft_learning_rate 4e-4 --dtype float32` (the adapter rows want it: the shipped adapter was
trained in arc24 on the full vocabulary, so `--shrink_vocab` with an adapter trained in another
format than `--format` is refused).

Then augmented greedy sampling (`--predictions` per test input, spread over the 8 dihedral
views), voting v2 and scoring against the solutions.  Columns: per-prediction accuracy, pass@n
(a right answer among the n predictions), vote_2 = the Kaggle score (share of test outputs with a
right attempt), correct_size, unanswered, tasks solved (every test output right), seconds
per task (the row's wall time / tasks) and CPU seconds per task (user + system time of the row's
stage processes and their workers, `resource.getrusage(RUSAGE_CHILDREN)` before and after the row:
the cost measure that holds on a shared machine, where wall time depends on the neighbours).
The sweep's options (docs/accuracy.md "The sweep's options"): TTFT's length as `--ttft_steps` or
`--ttft_copies N [--ttft_epochs E]` (the stage's own rule counts the steps), full fine-tuning
instead of a fresh LoRA (`--ttft_full_finetune`), length gating (`--ttft_max_task_tokens`), the precision of
TTFT and sampling (`--dtype`; not given: the stages' default, `ARC_TTFT_CPU_DTYPE` included;
the row's table says which precision ran), the prompt format of TTFT and sampling (`--format
nvarc`: the public NVARC texts, fewer tokens per cell) and `--shrink_vocab` (the shrink-vocab
stage's reduced model of `--model` for that format, written once to OUT/model-FORMAT-reduced and
used by every row).  Writes OUT/accuracy.json and OUT/accuracy.md;
the docs keep the latest table (docs/accuracy.md) with its date, commit and load average.

The default task list is fixed below: the 20 smallest ARC-AGI-1 evaluation tasks by size
(`tasks.task_size`, cells plus rows; ordering by cells alone picks the same 20).
`--task_set heldout` runs the held-out 20 instead (`TASKS_HELDOUT`, fixed 2026-12-06 before any
tuning of issue 25: 20 drawn with seed `HELDOUT_SEED` among the 100 smallest evaluation tasks that
are not the benchmark's 20, by the same size; `heldout_task_ids` draws them again).  Nothing is
tuned on it: it only reports the final recipe (docs/accuracy.md).
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.files import read_json, write_json_atomic, write_text_atomic  # noqa: E402
from pipeline.core.formats import ARC24, FORMAT_NAMES  # noqa: E402
from pipeline.core.models import CPU_DTYPE_ENV, resolve_dtype  # noqa: E402
from pipeline.core.settings import LONG_TASK_RULES, PRECISIONS, TTFT, ConfigError, ttft_step_count  # noqa: E402
from pipeline.core.predictions import read_predictions  # noqa: E402
from pipeline.core.tasks import load_tasks, select_tasks, smallest_tasks, solutions_of, without_test_outputs  # noqa: E402
from pipeline.training.lora import DEFAULT_LORA_TARGET, LORA  # noqa: E402
from pipeline.training.shrink_vocab import is_reduced_model_of  # noqa: E402

EVALUATION = REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
TASKS_20 = ("66e6c45b", "00576224", "be03b35f", "4cd1b7b2", "ca8de6ea", "e633a9e5", "6ea4a07e", "2072aba6",
            "68b67ca3", "e133d23d", "59341089", "48131b3c", "0c786b71", "60c09cac", "17cae0c1", "d017b73f",
            "5783df64", "ed98d772", "e345f17b", "fc754716")
HELDOUT_SEED, HELDOUT_POOL = 25, 100  # issue 25's held-out draw: 20 of the 100 smallest after the 20
TASKS_HELDOUT = ("d2acf2cb", "2a5f8217", "e6de6e8f", "15696249", "9c56f360", "5289ad53", "73c3b0d8", "27a77e38",
                 "f45f5ca7", "195ba7dc", "34b99a2b", "12422b43", "e7dd8335", "f0afb749", "4852f2fa", "aa18de87",
                 "c92b942c", "575b1a71", "c35c1b4c", "32e9702f")  # = heldout_task_ids(the evaluation tasks)
TASK_SETS = {"benchmark": TASKS_20, "heldout": TASKS_HELDOUT}
ROWS = ("bare", "bare+ttft", "adapter", "adapter+ttft")
DRY_RUN_CONFIG = REPO / "kaggle" / "configs" / "local.yaml"  # the winning recipe, written once
COLUMNS = ("accuracy", "pass_n", "vote_2", "correct_size", "unanswered")


def heldout_task_ids(tasks: dict, seed: int = HELDOUT_SEED, pool: int = HELDOUT_POOL, n: int = 20) -> list[str]:
    """`n` tasks drawn with `seed` among the `pool` smallest of `tasks` (by `tasks.task_size`, the
    benchmark's own measure) that are not the benchmark's 20 (`TASKS_20`)."""
    candidates = [t for t in smallest_tasks(tasks, len(tasks)) if t not in TASKS_20][:pool]
    return random.Random(seed).sample(candidates, n)


def default_adapter() -> Path:
    from pipeline.core.model_cfg import shipped_adapter  # noqa: PLC0415 (one definition of where it lives)
    return shipped_adapter()


def adapter_format(adapter: Path) -> str:
    """The format an adapter was trained in (its cfg.json, by the stages' one rule)."""
    from pipeline.core.model_cfg import choose_format  # noqa: PLC0415

    cfg_path = adapter / "cfg.json"
    try:
        return choose_format(read_json(cfg_path) if cfg_path.is_file() else {}, None).format
    except ValueError:  # no cfg.json naming it: not known to be any format
        return "an unknown format"


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process of this one (and theirs, when
    each waited for its own: the stages join their workers)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


TTFT_LENGTH = ("ttft_steps", "ttft_copies", "ttft_epochs")  # one TTFT length: steps, or copies x epochs


def recipe_defaults(config_path: Path = DRY_RUN_CONFIG) -> dict:
    """The benchmark's defaults from the dry run's config: its TTFT length (steps, or copies x
    epochs), learning rate and batch, the format and reduced vocabulary of its model dataset (`local_model_shrink_vocab`),
    its precision only where it differs from the stages' own CPU default (`auto`; so
    `ARC_TTFT_CPU_DTYPE` still pins it, as for the stages), and the rows its model runs."""
    from pipeline.core.models import CPU_DEFAULT_DTYPE  # noqa: PLC0415
    from pipeline.core.settings import load_config  # noqa: PLC0415

    config = load_config(config_path)
    shrink = config.local_model_shrink_vocab
    dtype = config.ttft_settings.get("torch_dtype")
    return {"ttft_steps": config.ttft_steps, "ttft_copies": config.ttft_copies, "ttft_epochs": config.ttft_epochs,
            "ttft_learning_rate": config.ttft_learning_rate,
            "ttft_batch_size": config.ttft_batch_size, "format": shrink.get("format"),
            "shrink_vocab": bool(shrink), "dtype": None if dtype in (None, CPU_DEFAULT_DTYPE) else dtype,
            "rows": ["adapter", "adapter+ttft"] if config.adapter else ["bare", "bare+ttft"]}


def ttft_steps_of(opts) -> int:
    """The optimizer steps per task of the row's TTFT: `--ttft_steps`, or `--ttft_copies` x
    `--ttft_epochs` over the batch (`settings.ttft_step_count`, the stage's own rule)."""
    return ttft_step_count(opts.ttft_steps, opts.ttft_copies, opts.ttft_epochs, opts.ttft_batch_size)


def ttft_length_args(opts) -> list:
    """The ttft stage's length flags: `--steps S` or `--copies N [--epochs E]`, and `--min_steps`
    at the full count (no task is trained less: there is no deadline to scale for)."""
    if opts.ttft_copies is None:
        length = ["--steps", opts.ttft_steps]
    else:
        length = ["--copies", opts.ttft_copies, *(["--epochs", opts.ttft_epochs] if opts.ttft_epochs else [])]
    gate = ["--max_task_tokens", opts.ttft_max_task_tokens, "--long_tasks", opts.ttft_long_tasks] \
        if opts.ttft_max_task_tokens else []
    return [*length, "--min_steps", ttft_steps_of(opts), *gate]


def ttft_length_text(opts) -> str:
    steps = ttft_steps_of(opts)
    text = f"{steps} steps" if opts.ttft_copies is None else \
        f"{opts.ttft_copies} copies x {opts.ttft_epochs or 1} epoch(s) = {steps} steps"
    if opts.ttft_max_task_tokens:
        text += (f" (tasks whose longest sample is over {opts.ttft_max_task_tokens} tokens: "
                 f"{'no TTFT' if opts.ttft_long_tasks == 'skip' else 'steps scaled down'})")
    return text


def stage(args: list, log: Path, env: dict) -> float:
    """Run `python -m pipeline ARGS`, its output to `log`; seconds taken.  A failed stage stops the run."""
    start = time.time()
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, "-m", "pipeline", *map(str, args)], stdout=out,
                               stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if code:
        tail = log.read_text().strip().splitlines()[-3:]
        raise SystemExit(f"accuracy: stage {args[0]} failed (exit {code}); see {log}: {' | '.join(tail)}")
    return time.time() - start


def shards(tasks: dict, jobs: int) -> list[dict]:
    """`jobs` task sets of similar total size: tasks dealt largest first to the lightest shard."""
    from pipeline.core.scheduling import largest_first
    from pipeline.core.tasks import task_size

    ids, _ = largest_first({t: task_size(task) for t, task in tasks.items()}, max(1, min(jobs, len(tasks))))
    return [{t: tasks[t] for t in shard} for shard in ids]


def reduced_model(opts, tasks: dict, out: Path, env: dict) -> tuple[Path, float]:
    """`--shrink_vocab`: the shrink-vocab stage's model of `--model` with only the tokens of the
    row's format (`--format`, default arc24), in OUT/model-FORMAT-reduced (the tasks' prompts kept
    exact; its cfg.json carries the format to TTFT and sampling).  Made once: a folder whose cfg.json
    names the same source model and format is used again (the stage's own rule,
    `shrink_vocab.is_reduced_model_of`).  (folder, seconds spent making it)"""
    fmt = opts.format or ARC24
    folder = out / f"model-{fmt}-reduced"
    if is_reduced_model_of(folder, opts.model, fmt):
        return folder, 0.0
    challenges = write_json_atomic(out / "shrink-vocab-tasks.json", without_test_outputs(tasks))
    seconds = stage(["shrink-vocab", "--model", opts.model, "--format", fmt, "--output", folder, "--tasks", challenges],
                    out / "shrink-vocab.log", env)
    return folder, seconds


def run_shard(row: str, tasks: dict, folder: Path, opts, env: dict) -> tuple[float, float]:
    """TTFT (if the row has it) and sampling of one shard in `folder`: (TTFT s, sampling s)."""
    folder.mkdir(parents=True, exist_ok=True)
    challenges = write_json_atomic(folder / "challenges.json", without_test_outputs(tasks))
    adapter = ["--adapter_path", opts.adapter] if row.startswith("adapter") else []
    fmt = ["--format", opts.format] if opts.format else []
    ttft_s = 0.0
    adapters_dir = []
    if row.endswith("+ttft"):
        fresh = [] if adapter else ["--full_finetune"] if opts.ttft_full_finetune else \
            ["--lora_r", opts.lora_r, "--lora_alpha", 2 * opts.lora_r, "--lora_target", *opts.lora_target]
        ttft_s = stage(["ttft", "--model", opts.model, *adapter, "--dataset", challenges,
                        "--output_dir", folder / "ttft", *ttft_length_args(opts),
                        "--learning_rate", opts.ttft_learning_rate, "--batch_size", opts.ttft_batch_size,
                        "--per_device_batch_size", opts.ttft_batch_size, "--max_seq_len", opts.ttft_max_seq_len,
                        "--lr_scheduler_type", opts.ttft_scheduler, *fresh, *fmt,
                        *(["--torch_dtype", opts.dtype] if opts.dtype else []), "--devices", "cpu", "--no_progress"],
                       folder / "ttft.log", env)
        adapters_dir = ["--adapters_dir", folder / "ttft" / "adapters"]
    predictions = folder / "predictions.jsonl"
    predictions.unlink(missing_ok=True)
    sample_s = stage(["sample", "--model", opts.model, "--dataset", challenges, *adapters_dir, *adapter,
                      "--output", predictions, "--predictions_per_task", opts.predictions, *fmt,
                      "--max_tokens", "task", "--engine", opts.engine, *(["--dtype", opts.dtype] if opts.dtype else []),
                      "--quiet"], folder / "sample.log", env)
    return ttft_s, sample_s


def run_row(row: str, tasks: dict, out: Path, opts, env: dict) -> dict:
    """One row: its shards' chains in parallel (`--jobs`), then one vote over all predictions and
    the scores.  Seconds per task are the row's wall time over its tasks."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.core.files import append_jsonl
    from pipeline.evaluation.metrics import score_run

    folder = out / row.replace("+", "_")
    folder.mkdir(parents=True, exist_ok=True)
    parts = shards(tasks, opts.jobs)
    start, cpu_start = time.time(), children_cpu_seconds()
    with ThreadPoolExecutor(len(parts)) as pool:
        times = list(pool.map(lambda k: run_shard(row, parts[k], folder / f"shard{k}" if len(parts) > 1 else folder,
                                                  opts, env), range(len(parts))))
    wall = time.time() - start
    ttft_s, sample_s = max(t for t, _ in times), max(s for _, s in times)
    challenges = write_json_atomic(folder / "challenges.json", without_test_outputs(tasks))
    predictions = folder / "predictions.jsonl"
    if len(parts) > 1:
        predictions.unlink(missing_ok=True)
        append_jsonl(predictions, [r for k in range(len(parts))
                                   for r in read_predictions(folder / f"shard{k}" / "predictions.jsonl")])
    stage(["vote", "--predictions", predictions, "--dataset", challenges, "--output", folder / "submission.json"],
          folder / "vote.log", env)
    cpu = children_cpu_seconds() - cpu_start  # TTFT, sampling and the vote, every chain
    scores = score_run(read_predictions(predictions), read_json(folder / "submission.json"), solutions_of(tasks))
    raw, kaggle = scores["raw"]["per_output_mean"], scores["kaggle"]
    solved = sorted(t for t, r in kaggle["per_task"].items() if r["score"] == 1.0)
    return {"row": row, "accuracy": raw["accuracy"], "pass_n": raw["pass_n"], "vote_2": kaggle["score"],
            "correct_size": raw["correct_size"], "unanswered": raw["unanswered"],
            "outputs_correct": kaggle["n_correct"], "outputs": kaggle["n_outputs"],
            "tasks_solved": len(solved), "solved": solved, "tasks": len(tasks),
            "ttft_seconds": round(ttft_s, 1), "sample_seconds": round(sample_s, 1), "wall_seconds": round(wall, 1),
            "seconds_per_task": round(wall / len(tasks), 1), "cpu_seconds": round(cpu, 1),
            "cpu_seconds_per_task": round(cpu / len(tasks), 1)}


def trained_weights_text(settings: dict, rows: list[str] | None = None) -> str:
    """What a bare row's TTFT trains: every weight, or a fresh LoRA (rank, targets); and, with the
    adapter+ttft row among `rows`, that it continues the adapter's own LoRA."""
    if settings.get("ttft_full_finetune"):
        return "full fine-tuning (no LoRA) from the bare model"
    text = f"fresh LoRA r {settings['lora_r']} on {' '.join(settings['lora_target'])}"
    if "adapter+ttft" in (rows or ()):
        text += " (bare+ttft); the adapter's own LoRA continued (adapter+ttft)"
    return text


def markdown(result: dict) -> str:
    head = ("| row | accuracy | pass@n | vote_2 (Kaggle) | correct_size | unanswered | tasks solved | "
            "s/task | CPU s/task |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in result["rows"]:
        lines.append(f"| {r['row']} | {100 * r['accuracy']:.1f} % | {100 * r['pass_n']:.1f} % | "
                     f"{100 * r['vote_2']:.1f} % ({r['outputs_correct']}/{r['outputs']}) | "
                     f"{100 * r['correct_size']:.1f} % | {100 * r['unanswered']:.1f} % | "
                     f"{r['tasks_solved']}/{r['tasks']} | {r['seconds_per_task']} | {r['cpu_seconds_per_task']} |")
    s = result["settings"]
    lines += ["", f"{result['date']}, commit {result['commit']}, load average before/after "
              f"{result['load_before']} / {result['load_after']}; {s['jobs']} parallel chain(s); "
              f"{s['predictions']} predictions per test input; format {s['format'] or 'from cfg.json, else arc24'}"
              f"{', reduced vocabulary (' + s['reduced_model'] + ')' if s['reduced_model'] else ''}; "
              f"precision {s['precision']} (--dtype {s['dtype'] or 'not given: the stages default'}); "
              f"TTFT {s['ttft_length']} at lr {s['ttft_learning_rate']} ({s['ttft_scheduler']}), batch "
              f"{s['ttft_batch_size']}, {trained_weights_text(s, [r['row'] for r in result['rows']])}; adapter "
              f"{s['adapter']}."]
    for r in result["rows"]:
        lines.append(f"- {r['row']}: solved {', '.join(r['solved']) or 'none'}")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", choices=ROWS, help="default: the dry run's (local.yaml's model: bare, bare+ttft)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--task_set", "--task-set", default="benchmark", choices=TASK_SETS,
                       help="benchmark: the 20 smallest evaluation tasks; heldout: the held-out 20 (never tuned on)")
    which.add_argument("--task_ids", nargs="+", help="these evaluation tasks instead of the fixed 20")
    which.add_argument("--task_file", help="a tasks file with solutions (every task in it)")
    p.add_argument("--model", default="embedded")
    p.add_argument("--adapter", default=None, help="the ARC-trained adapter (default: the shipped one)")
    p.add_argument("--predictions", type=int, default=8, help="augmented greedy predictions per test input")
    p.add_argument("--engine", default="auto", choices=("auto", "vllm", "transformers"))
    p.add_argument("--format", default=None, choices=FORMAT_NAMES, help="prompt format of TTFT and sampling "
                   "(default: the model's or adapter's cfg.json, else arc24); nvarc: fewer tokens per cell")
    p.add_argument("--shrink_vocab", action=argparse.BooleanOptionalAction,
                   help="run every row on the shrink-vocab stage's reduced model for --format (made once in "
                        "OUT/model-FORMAT-reduced); default: the dry run's (local.yaml's local_model_shrink_vocab)")
    p.add_argument("--ttft_steps", type=int)
    p.add_argument("--ttft_copies", type=int, default=None, help="instead of --ttft_steps: N augmented copies of "
                                                                  "each task's samples (ttft --copies)")
    p.add_argument("--ttft_epochs", type=int, default=None, help="with --ttft_copies: passes over them (default 1)")
    p.add_argument("--dtype", default=None, choices=[d for d in PRECISIONS if d != "float16"],  # fp16 trains on CUDA only
                   help="TTFT's and sampling's precision "
                   "(auto: bf16 where this CPU has it natively); default: the stages' own (auto on a CPU: bf16 where native, or "
                   "ARC_TTFT_CPU_DTYPE), unless local.yaml's recipe names another")
    p.add_argument("--ttft_learning_rate", type=float)
    p.add_argument("--ttft_batch_size", type=int)
    p.add_argument("--ttft_scheduler", default="linear")
    p.add_argument("--ttft_max_task_tokens", type=int, default=None, help="length gating (ttft --max_task_tokens): "
                   "tasks whose longest training sample is over N tokens get no TTFT, or fewer steps")
    p.add_argument("--ttft_long_tasks", default=TTFT.long_tasks, choices=LONG_TASK_RULES,
                   help="with --ttft_max_task_tokens: skip (no TTFT) or scale (steps x N / longest)")
    p.add_argument("--ttft_max_seq_len", type=int, default=2048)
    p.add_argument("--ttft_full_finetune", action="store_true", help="bare+ttft: train every weight per task, no "
                   "LoRA (ttft --full_finetune; served by the transformers engine only)")
    p.add_argument("--lora_r", type=int, default=LORA.r, help="fresh LoRA only (the adapter brings its own)")
    p.add_argument("--lora_target", nargs="+", default=[DEFAULT_LORA_TARGET])
    p.add_argument("--output_dir", default="runs/accuracy")
    p.add_argument("--jobs", type=int, default=1, help="parallel chains per row, each on a share of the tasks "
                                                      "with --threads_per_job threads (2 on a 2-core machine: "
                                                      "the stages use one core well, two poorly)")
    p.add_argument("--threads_per_job", type=int, default=None, help="OMP threads per chain (default: cores / jobs)")
    p.add_argument("--write_tasks", metavar="PATH", help="only write the selected tasks (with their solutions) to "
                                                        "PATH, e.g. as finetune's --val_dataset, and stop")
    recipe = recipe_defaults()
    length = {key: recipe.pop(key) for key in TTFT_LENGTH}
    p.set_defaults(**recipe)  # the unset options above: the dry run's recipe
    opts = p.parse_args(argv)
    if all(getattr(opts, key) is None for key in TTFT_LENGTH):  # a length given replaces the recipe's whole
        vars(opts).update(length)                                # (steps, or copies x epochs), as in a config
    elif opts.ttft_steps is not None and opts.ttft_copies is not None:
        p.error("give --ttft_steps or --ttft_copies (x --ttft_epochs), not both")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    try:
        ttft_steps_of(opts)
    except ConfigError as e:
        print(f"accuracy: {str(e).replace('--copies', '--ttft_copies').replace('--epochs', '--ttft_epochs')}",
              file=sys.stderr)
        return 1
    if opts.task_file:
        tasks = load_tasks(opts.task_file)
    else:
        tasks = select_tasks(load_tasks(EVALUATION), opts.task_ids or TASK_SETS[opts.task_set])
    if opts.write_tasks:
        write_json_atomic(opts.write_tasks, tasks)
        print(f"accuracy: {len(tasks)} tasks -> {opts.write_tasks}")
        return 0
    if opts.ttft_full_finetune and "adapter+ttft" in opts.rows:
        print("accuracy: --ttft_full_finetune trains the bare model's weights: not with the adapter+ttft row",
              file=sys.stderr)
        return 1
    if any(r.startswith("adapter") for r in opts.rows):
        opts.adapter = str(Path(opts.adapter or default_adapter()).resolve())
        if not (Path(opts.adapter) / "adapter_config.json").is_file():
            print(f"accuracy: {opts.adapter} is not a LoRA adapter (no adapter_config.json)", file=sys.stderr)
            return 1
        trained_in = adapter_format(Path(opts.adapter))
        if opts.shrink_vocab and trained_in != opts.format:
            print(f"accuracy: {opts.adapter} was trained in {trained_in}, not on the {opts.format} reduced "
                  f"vocabulary: add --no-shrink_vocab --format {trained_in}", file=sys.stderr)
            return 1
    out = Path(opts.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    threads = opts.threads_per_job or max(1, (os.cpu_count() or 1) // max(1, opts.jobs))
    if opts.jobs > 1 or opts.threads_per_job:
        env["OMP_NUM_THREADS"] = str(threads)
    source_model, reduced, shrink_s = opts.model, None, 0.0
    if opts.shrink_vocab:
        print(f"accuracy: shrink-vocab of {opts.model} for format {opts.format or ARC24} ...", flush=True)
        reduced, shrink_s = reduced_model(opts, tasks, out, env)
        opts.model = str(reduced)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for row in opts.rows:
        print(f"accuracy: {row} on {len(tasks)} tasks ...", flush=True)
        rows.append(run_row(row, tasks, out, opts, env))
        r = rows[-1]
        print(f"accuracy: {row}: vote_2 {100 * r['vote_2']:.1f} % ({r['outputs_correct']}/{r['outputs']}), "
              f"pass@n {100 * r['pass_n']:.1f} %, {r['tasks_solved']}/{r['tasks']} tasks, "
              f"{r['seconds_per_task']} s/task", flush=True)
    settings = {k: getattr(opts, k) for k in ("model", "adapter", "predictions", "engine", "jobs", "ttft_steps",
                                               "ttft_learning_rate", "ttft_batch_size", "ttft_scheduler",
                                               "ttft_max_seq_len", "lora_r", "lora_target", "ttft_copies",
                                               "ttft_epochs", "dtype", "format", "ttft_max_task_tokens",
                                               "ttft_long_tasks", "ttft_full_finetune")}
    settings.update(ttft_length=ttft_length_text(opts), precision=resolve_dtype(opts.dtype, "cpu"),
                    cpu_dtype_env=os.environ.get(CPU_DTYPE_ENV), source_model=source_model,
                    reduced_model=str(reduced) if reduced else None, shrink_vocab_seconds=round(shrink_s, 1))
    result = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "load_before": load_before,
              "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()), "settings": settings,
              "task_set": None if opts.task_ids or opts.task_file else opts.task_set, "task_ids": list(tasks), "rows": rows}
    write_json_atomic(out / "accuracy.json", result, indent=1)
    table = markdown(result)
    write_text_atomic(out / "accuracy.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
