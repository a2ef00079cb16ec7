"""The dry run: TTFT -> sampling -> voting -> scoring on a few real tasks, end to end, locally.

    python -m pipeline dry-run            # a few minutes on a 2-core CPU: 3 smallest ARC-AGI-1 eval tasks
    python -m pipeline dry-run --model embedded --adapter_path models/smollm2-135m-arc-lora   # the arc24 adapter
    python -m pipeline dry-run --first_n 10 --ttft_steps 16 --predictions_per_task 16 --output_dir runs/x
    python -m pipeline dry-run --task_ids 66e6c45b be03b35f --model path/to/finetuned --engine vllm

It runs the very chain of the Kaggle notebook (`pipeline.kaggle.run.KaggleRun`: fallback
submission, TTFT, sampling, voting, each stage a subprocess under one deadline) on a local copy
of the chosen tasks whose test outputs are hidden from every stage, then scores with the
solutions and writes a report:

    OUT/model/                               local.yaml's model dataset (local_model_shrink_vocab), made once
    OUT/input/arc-agi_test_challenges.json   the tasks as the stages see them (no test outputs)
    OUT/solutions.json                       their solutions (only the scoring reads them)
    OUT/submission.json                      complete and valid from the first second on
    OUT/run/predictions.jsonl                one record per sample (pipeline/sampling/sample.py)
    OUT/run/timing.jsonl, OUT/run/logs/      per-stage and per-task timing, stage logs
    OUT/scratch/ttft/adapters/<task_id>/     the per-task adapters
    OUT/metrics.json                         raw predictions, vote and Kaggle score
    OUT/report/report.md, OUT/report/pictures/*.png

The stages' own progress bars are echoed while they run.  At the end it prints the metrics
table (raw predictions and vote, plus the Kaggle score), the timing of every stage and the paths
above.  The model, adapter and recipe are `kaggle/configs/local.yaml`'s (docs/accuracy.md, "The dry
run's recipe"): its `local_model_shrink_vocab` model (the embedded SmolLM2-135M-Instruct reduced to the
nvarc format's vocabulary, made in OUT/model once and reused while its cfg.json names the same source
and format), its adapter (`local_adapter_source`; none), a fresh LoRA per task trained by TTFT.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from pipeline.core.files import OutputError, check_output, read_json, read_jsonl, write_json_atomic
from pipeline.core.models import EMBEDDED
from pipeline.core.predictions import read_predictions
from pipeline.core.settings import config_dict, load_config
from pipeline.core.tasks import has_test_outputs, load_tasks, select_tasks, solutions_of, without_test_outputs
from pipeline.evaluation.metrics import format_summary, score_run
from pipeline.evaluation.report import metrics_table, timing_table, write_report
from pipeline.kaggle.run import STEPS, KaggleRun
from pipeline.sampling.generation import cuda_available

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATASET = "data/arc-agi-1/arc-agi_evaluation_challenges.json"
MARKER = "dry-run.json"   # when this folder last held a dry run
MODEL_DIR = "model"       # local.yaml's model dataset, made once and kept across runs (not in OWNED)
TEST_FILE = "arc-agi_test_challenges.json"


class LogFollower:
    """Echo what the stages write to `logs_dir/*.log` while they run (their progress bars)."""

    def __init__(self, logs_dir: Path, stream=None, poll_s: float = 0.5):
        self.logs_dir, self.stream, self.poll_s = logs_dir, stream or sys.stdout, poll_s
        self.offsets: dict[Path, int] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dry-run-logs", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=5)
        self._pump()

    def _pump(self) -> None:
        if not self.logs_dir.is_dir():
            return
        for path in sorted(self.logs_dir.glob("*.log"), key=lambda p: p.stat().st_mtime):
            start = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read()
            except OSError:
                continue
            if data:
                self.offsets[path] = start + len(data)
                text = data.decode("utf-8", "replace")
                try:
                    self.stream.write(text)
                    self.stream.flush()
                except (OSError, ValueError):
                    return

    def _run(self) -> None:
        while not self.stop_event.wait(self.poll_s):
            self._pump()


# what a dry run writes in its output folder (and wipes on the next run); nothing else is touched
OWNED = ("input", "run", "scratch", "report", "solutions.json", "submission.json", "metrics.json",
         "dry-run-summary.json", MARKER)


def prepare_run_dir(output_dir: Path, tasks: dict) -> tuple[Path, Path]:
    """Remove what an earlier dry run left in `output_dir` (only the entries in OWNED, and only when
    its MARKER says a dry run made them), then write the hidden-output challenges file and the
    solutions file."""
    check_output(output_dir, {}, folder=True, what="--output_dir")
    found = [name for name in OWNED if (output_dir / name).exists()]
    if found and not (output_dir / MARKER).exists():  # what it would wipe was not made by a dry run
        raise OutputError(f"--output_dir {output_dir} holds {', '.join(found)} but no {MARKER}: not a dry run's "
                          f"folder, refusing to delete them; choose a new or empty folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    write_json_atomic(output_dir / MARKER, {"created": time.time()})
    challenges = write_json_atomic(output_dir / "input" / TEST_FILE, without_test_outputs(tasks))
    solutions = write_json_atomic(output_dir / "solutions.json", solutions_of(tasks))
    return challenges, solutions


def kaggle_config(args, output_dir: Path, on_cuda: bool) -> dict:
    """The notebook's config for this machine: the local notebook's (kaggle/configs/local.yaml, read
    by the one loader) with every path inside OUT, the command line's model, adapter, settings and
    deadline, and one GPU when there is one.  Everything else (time shares, reserves, watchdog,
    the stages' environment) is local.yaml's."""
    local = config_dict(load_config(LOCAL_CONFIG))
    model, _ = default_model(args, output_dir)
    model = model if model == EMBEDDED or not Path(model).exists() else str(Path(model).resolve())
    return {
        **local,
        "title": "arc-ttft dry run",
        "input_dir": str(output_dir / "input"), "test_challenges": TEST_FILE,
        "working_dir": str(output_dir), "scratch_dir": str(output_dir / "scratch"),
        "wheels_dir": str(output_dir / "no-wheels"),
        "model": model, "adapter": str(Path(args.adapter_path).resolve()) if args.adapter_path else None,
        "devices": ["cuda:0"] if on_cuda else local["devices"],
        "ttft_steps": args.ttft_steps, "ttft_learning_rate": args.ttft_learning_rate,
        "ttft_max_seq_len": args.ttft_max_seq_len, "predictions_per_task": args.predictions_per_task,
        "engine": args.engine,
        "sample_settings": {**local["sample_settings"], **({"max_tokens": max_tokens(args.max_tokens)}
                                                            if args.max_tokens else {})},
        "deadline_hours": args.deadline_minutes / 60,
        # `notebook_builder run`'s Kaggle-like tree: the dry run lays out its own folder
        "local_source_dir": None, "local_tasks": [], "local_adapter_source": None, "local_model_shrink_vocab": {},
    }


def max_tokens(value: str) -> str | int:
    """--max_tokens as the sampling setting holds it: `task`, `max` or a number."""
    return int(value) if value.isdigit() else value


def stage_rows(kaggle, extra: Sequence[dict]) -> list[dict]:
    """One row per stage the chain ran (the notebook's own self-score is left out: it only runs
    on the placeholder test set, and the dry run scores itself), then `extra`."""
    rows = []
    for stage, result in kaggle.results.items():
        if stage == "score" and result.status == "skipped":
            continue
        rows.append({"stage": stage, "status": result.status, "seconds": result.seconds, "detail": result.reason})
    return rows + list(extra)


def per_task_timing(timing_path: Path) -> list[dict]:
    """Per-task rows of the stage timing records (TTFT and sampling)."""
    rows = []
    for r in read_jsonl(timing_path):
        if r.get("task_id") and r.get("event") in ("task", "skipped", "failed"):
            detail = ", ".join(f"{k} {r[k]}" for k in ("steps", "tokens_trained", "predictions", "prompt_tokens",
                                                       "generated_tokens", "reason") if k in r)
            rows.append({"stage": f"{r.get('stage')} {r['task_id']}", "status": r["event"],
                         "seconds": r.get("seconds", 0), "detail": detail})
    return rows


LOCAL_CONFIG = REPO / "kaggle" / "configs" / "local.yaml"


def local_defaults():
    """The local notebook config: the dry run's config is this one (`kaggle_config`), and its
    command line's defaults are this one's values."""
    return load_config(LOCAL_CONFIG)


def default_adapter(args, local=None) -> str | None:
    """The adapter a dry run uses: --adapter_path, else (unless --bare or --model) local.yaml's
    `local_adapter_source` when it names one."""
    local = local or local_defaults()
    if args.adapter_path or args.bare or args.model is not None or not local.local_adapter_source:
        return args.adapter_path
    return str(REPO / local.local_adapter_source)


def default_model(args, output_dir: Path, local=None) -> tuple[str, dict]:
    """The model a dry run uses and what makes it: (--model, {}), else local.yaml's model dataset:
    (OUT/model, its `local_model_shrink_vocab`) when it names one (`make_model` makes it), else
    (its `model`, {})."""
    local = local or local_defaults()
    if args.model is not None:
        return args.model, {}
    if not local.local_model_shrink_vocab:
        return local.model, {}
    return str(output_dir / MODEL_DIR), dict(local.local_model_shrink_vocab)


def make_model(folder: str, shrink: dict) -> None:
    """Make local.yaml's model dataset in `folder`, once: `shrink_vocab.reduced_model` keeps a folder
    that already is that model (its cfg.json names the same source and format)."""
    from pipeline.training.shrink_vocab import local_model

    local_model(shrink, folder, REPO, what=f"{LOCAL_CONFIG.name} local_model_shrink_vocab",
                log=lambda line: print(f"dry-run: {line}", flush=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline dry-run",
        description="TTFT -> sampling -> voting -> scoring on a few real tasks (test outputs hidden from the "
                    "stages), with the Kaggle notebook's chaining; prints the metrics table, the timing of every "
                    "stage and the paths of the submission, predictions, report and pictures.")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="tasks with solutions (default: ARC-AGI-1 evaluation)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--first_n", type=int, default=3, help="the N smallest tasks (default 3)")
    which.add_argument("--task_ids", nargs="+", metavar="ID", help="these tasks instead")
    local = local_defaults()  # the CPU recipe has one definition: kaggle/configs/local.yaml
    parser.add_argument("--ttft_steps", type=int, default=local.ttft_steps,
                        help=f"TTFT steps per task (default {local.ttft_steps}, from {LOCAL_CONFIG.name})")
    parser.add_argument("--ttft_learning_rate", type=float, default=local.ttft_learning_rate,
                        help=f"default {local.ttft_learning_rate}")
    parser.add_argument("--ttft_max_seq_len", type=int, default=local.ttft_max_seq_len)
    parser.add_argument("--predictions_per_task", type=int, default=local.predictions_per_task,
                        help=f"samples per test input (default {local.predictions_per_task})")
    local_max_tokens = local.sample_settings.get("max_tokens", "the stage's default")
    parser.add_argument("--max_tokens", help=f"sampling answer budget: task, max or N (default "
                                              f"{local_max_tokens}, from {LOCAL_CONFIG.name}'s sample_settings)")
    parser.add_argument("--output_dir", default="runs/dry-run")
    parser.add_argument("--model", help=f"'embedded' (SmolLM2-135M-Instruct), a model dir or a .gguf (default: "
                                         f"{LOCAL_CONFIG.name}'s model dataset, made in OUT/{MODEL_DIR} once)")
    adapter = parser.add_mutually_exclusive_group()
    adapter.add_argument("--adapter_path", help=f"a fine-tuned LoRA that TTFT continues and sampling falls back to "
                                                f"(default: {LOCAL_CONFIG.name}'s local_adapter_source, "
                                                f"{local.local_adapter_source or 'none'}, unless --model is given)")
    adapter.add_argument("--bare", action="store_true", help="no adapter: the bare model (fresh TTFT LoRAs)")
    parser.add_argument("--engine", default=local.engine, choices=("auto", "vllm", "transformers"),
                        help=f"default {local.engine}")
    parser.add_argument("--deadline_minutes", type=float, default=40.0,
                        help=f"deadline of the chained stages, of which {LOCAL_CONFIG.name}'s safety margin "
                             f"({local.safety_margin_minutes:g} min) is kept back (default 40; the defaults need ~10)")
    parser.add_argument("--pictures", type=int, default=6, help="tasks drawn in the report")
    parser.add_argument("--quiet", action="store_true", help="do not echo the stages' logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.adapter_path = default_adapter(args)

    started = time.time()
    output_dir = Path(args.output_dir).expanduser().resolve()
    try:
        dataset = Path(args.dataset) if Path(args.dataset).exists() else REPO / args.dataset
        all_tasks = load_tasks(dataset)
        if args.task_ids:
            tasks = select_tasks(all_tasks, args.task_ids)
        else:
            tasks = select_tasks(all_tasks, sort_by_size=True, first_n=args.first_n)
        missing = [t for t, task in tasks.items() if not has_test_outputs(task)]
        if missing:
            raise ValueError(f"no solutions for {', '.join(missing[:5])}: the dry run scores against known outputs")
        challenges_path, solutions_path = prepare_run_dir(output_dir, tasks)
        args.model, shrink = default_model(args, output_dir)
        if shrink:
            make_model(args.model, shrink)
    except (OSError, ValueError) as e:
        print(f"dry-run: {e}", file=sys.stderr)
        return 1
    on_cuda = cuda_available()
    config = kaggle_config(args, output_dir, on_cuda)
    print(f"dry-run: {len(tasks)} task(s) from {dataset}: {', '.join(tasks)}; model {args.model}, "
          f"TTFT {args.ttft_steps} steps, {args.predictions_per_task} predictions/test input, engine {args.engine}, "
          f"device {'cuda' if on_cuda else 'cpu'} -> {output_dir}", flush=True)

    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    kaggle = KaggleRun(config, env=env, started_at=started, cwd=output_dir)
    with contextlib.nullcontext() if args.quiet else LogFollower(kaggle.paths.run_dir / "logs"):
        for name in STEPS:
            print(f"\n=== {name} ===", flush=True)
            getattr(kaggle, name)()

    print("\n=== score and report ===", flush=True)
    t0 = time.time()
    solutions = read_json(solutions_path)
    predictions_path = kaggle.paths.run_dir / "predictions.jsonl"
    records = read_predictions(predictions_path) if predictions_path.exists() else []
    submission = read_json(kaggle.paths.submission)
    scores = score_run(records, submission, solutions)
    raw, vote, score = scores["raw"], scores["vote"], scores["kaggle"]
    write_json_atomic(output_dir / "metrics.json", scores, indent=1)
    score_s = time.time() - t0
    t0 = time.time()
    extra = [{"stage": "evaluate", "status": "ok", "seconds": round(score_s, 3),
              "detail": f"{len(records)} predictions, {score['n_outputs']} test outputs"}]
    model_note = ("The bare embedded SmolLM2-135M-Instruct was never trained on ARC: only TTFT teaches it the "
                  "format, so expect a low score (docs/accuracy.md)." if args.model == EMBEDDED
                  and not args.adapter_path else "")
    settings = {"tasks": ", ".join(tasks), "dataset": str(dataset), "model": args.model,
                "adapter": args.adapter_path or "none", "TTFT steps": args.ttft_steps,
                "predictions per test input": args.predictions_per_task, "engine": args.engine,
                "max_tokens": config["sample_settings"].get("max_tokens", "the stage's default"),
                "device": "cuda" if on_cuda else "cpu"}
    rows = stage_rows(kaggle, extra)
    report = write_report(output_dir / "report", tasks, records, submission, raw,
                          vote, score, timing_rows=rows + per_task_timing(kaggle.timing_log), settings=settings,
                          title="Dry run", model_note=model_note, n_pictures=args.pictures)
    rows.append({"stage": "report", "status": "ok", "seconds": round(time.time() - t0, 3),
                 "detail": f"{len(report['pictures'])} pictures"})

    n_pred = args.predictions_per_task
    print("\n=== metrics ===")
    print(metrics_table(raw, vote, score, n_pred))
    print(f"\nraw predictions ({n_pred}/test input): {format_summary(raw)}")
    print(f"vote (2 attempts):               {format_summary(vote)}")
    print(f"Kaggle score: {100 * score['score']:.2f}% ({score['n_correct']}/{score['n_outputs']} test outputs)"
          + (f"  -- {model_note}" if model_note and score["n_correct"] == 0 else ""))
    print("\n=== timing ===")
    print(timing_table(rows))
    print(f"total: {time.time() - started:.0f} s")
    print("\n=== outputs ===")
    for label, path in (("submission", kaggle.paths.submission), ("predictions", predictions_path),
                        ("timing", kaggle.timing_log), ("challenges (hidden outputs)", challenges_path),
                        ("solutions", solutions_path), ("metrics", output_dir / "metrics.json"),
                        ("report", report["report"])):
        print(f"{label}: {path}")
    for picture in report["pictures"]:
        print(f"picture: {picture}")
    summary = {"seconds": round(time.time() - started, 1), "stages": {r["stage"]: r["status"] for r in rows},
               "kaggle_score": score["score"], "report": str(report["report"])}
    write_json_atomic(output_dir / "dry-run-summary.json", summary, indent=1)
    failed = [r["stage"] for r in rows if r["status"] in ("failed", "timeout")]
    if failed:
        print(f"dry-run: stage(s) {', '.join(failed)} did not succeed (see {kaggle.paths.run_dir / 'logs'}); "
              f"the submission is still complete and valid", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
