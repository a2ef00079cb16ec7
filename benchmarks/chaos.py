"""Chaos: kill the chain ttft -> sample -> sample --method dfs -> rescore -> vote --method poe at
random moments, restart it, and check the final submission is byte-identical and every output matches
(numbers to 1e-4) to an uninterrupted run's.

    .venv/bin/python benchmarks/chaos.py --kills 20          # the grid model, 3 smallest tasks (docs/robustness.md)
    .venv/bin/python benchmarks/chaos.py --tasks 2 --kills 4 --kill_in ttft sample dfs rescore --after_output \\
        --ttft_steps 2 --predictions 2 --views 2 --max_tokens 40          # what the CI test runs

The chain is the stages as the notebook runs them, each a subprocess driven only through its
command line: `ttft` (per-task adapters, resumes the tasks it has not finished), `sample`
(appends predictions, resumes after the last whole record), `sample --method dfs` (every answer
above `--min_prob`, the same resume), `rescore` (the candidates of both files under `--views`
views, appends, resumes) and `vote --method poe --scores` (atomic submission).

A kill is SIGKILL to one stage: the stage is drawn in proportion to its duration in the
uninterrupted reference run (a uniform moment of the chain), or taken in turn from `--kill_in`;
the moment is uniform over that stage's reference duration, counted from its start, or with
`--after_output` between its first and its last write to its output, counted from its first
write (so that the kill finds a half-done output to resume, not a stage tearing down).  After each kill the chain starts again from its first stage, in the same folders.  When
a restarted chain gets to the end without its kill, that episode is over: its submission (bytes)
and its predictions, DFS answers and scores (records, sorted) are compared with the reference, and
the next episode starts in a fresh folder, until `--kills` kills have hit a running stage.

`--model grid` (the default) is a tiny model trained in seconds to answer these tasks' prompts
with grids (`devtools.random_models.save_grid_model`): the reference run must hold real grids in
its predictions and DFS answers and real rescored candidates, or the run fails (a chain of error
records would compare equal without testing any resume).  Prints one line per kill and a JSON
summary.

The submission must be byte-identical; the predictions, DFS answers and scores must have the same
texts and grids with every number within NUMBER_TOLERANCE (`matches`): a resumed DFS batches other
views together, and on two threads float32 rounds by batch shape (~1e-6 in a log-prob).  Every
stage runs in one precision, `--dtype` (default float32): bf16 rounds by batch shape far more
(docs/search.md).  This pin came with a bug it exposed: every TTFT
unit after a worker's first trained without autocast, so a task retrained first after a kill got
other bf16 weights (fixed: pipeline/training/trainer.py, `prepared_once`; docs/robustness.md).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.files import read_jsonl, write_json_atomic  # noqa: E402
from pipeline.core.settings import PRECISIONS  # noqa: E402
from pipeline.core.tasks import load_tasks, select_tasks, without_test_outputs  # noqa: E402

EVALUATION = REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
STAGES = ("ttft", "sample", "dfs", "rescore", "vote")
# what each stage writes, and how its records are sorted to compare runs (appended files are in
# the order they were written, which a resume may change; the records themselves may not change)
OUTPUTS = {"ttft": "ttft/adapters", "sample": "predictions.jsonl", "dfs": "dfs.jsonl", "rescore": "scores.jsonl",
           "vote": "submission.json"}
RECORDS = ("sample", "dfs", "rescore")
# a resumed stage's records match the reference's when every text and grid is equal and every
# number is within this (relative, at least absolute): a resumed DFS batches other views together,
# and on two threads float32 rounds by batch shape (~1e-6 in a log-prob; docs/robustness.md)
NUMBER_TOLERANCE = 1e-4
POLL_S = 0.05


def chain(run: Path, opts) -> list[tuple[str, list[str]]]:
    """The (stage, command) of one run folder, in order."""
    py = [sys.executable, "-m", "pipeline"]
    out = {stage: str(run / name) for stage, name in OUTPUTS.items()}
    data = ["--model", opts.model, "--dataset", str(run / "tasks.json")]
    adapters = ["--adapters_dir", out["ttft"]]
    sampling = [*data, *adapters, "--predictions_per_task", str(opts.predictions), "--max_tokens", str(opts.max_tokens),
                "--engine", "transformers", "--dtype", opts.dtype, "--quiet"]
    return [
        ("ttft", py + ["ttft", *data, "--output_dir", str(run / "ttft"), "--steps", str(opts.ttft_steps),
                       "--min_steps", str(opts.ttft_steps), "--learning_rate", "4e-4", "--lora_r", "8",
                       "--lora_alpha", "16", "--max_seq_len", "2048", "--torch_dtype", opts.dtype, "--devices", "cpu",
                       "--no_progress"]),
        ("sample", py + ["sample", *sampling, "--output", out["sample"], "--batch_size", "1"]),
        ("dfs", py + ["sample", *sampling, "--output", out["dfs"], "--method", "dfs", "--min_prob", str(opts.min_prob),
                      "--batch_size", "2"]),
        ("rescore", py + ["rescore", *data, *adapters, "--predictions", out["sample"], out["dfs"], "--views",
                          str(opts.views), "--output", out["rescore"], "--dtype", opts.dtype, "--quiet"]),
        ("vote", py + ["vote", "--predictions", out["sample"], out["dfs"], "--method", "poe", "--scores",
                       out["rescore"], "--dataset", str(run / "tasks.json"), "--output", out["vote"]]),
    ]


def written(path: Path) -> int:
    """How much a stage has written so far: a file's bytes, or the bytes of a folder's files."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size if path.exists() else 0
    except OSError:  # a temp file renamed under our feet: count it at the next poll
        return -1


def run_stage(stage: str, command: list[str], run: Path, env: dict, output: Path, kill_after: float | None,
              after_output: bool) -> tuple[bool, float, float | None, float | None]:
    """Run one stage; with `kill_after`, SIGKILL it (its whole process group) that many seconds
    after it started, or after its first write to `output` with `after_output`.
    Returns (killed, seconds it ran, seconds to its first and to its last write, or None)."""
    before, first, last = written(output), None, None
    start = time.time()
    with open(run / "chain.log", "a") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                code = None
            now = time.time() - start
            size = written(output)
            if size not in (before, -1):
                before, first, last = size, now if first is None else first, now
            if code is not None:
                break
            origin = first if after_output else 0.0
            if kill_after is not None and origin is not None and now >= origin + kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True, now, first, last
    if code != 0:
        raise SystemExit(f"chaos: stage {stage} failed with exit {code}; see {run / 'chain.log'}")
    return False, time.time() - start, first, last


def run_chain(run: Path, opts, env: dict, kill: tuple[str, float] | None = None) -> tuple[str, dict]:
    """Run the chain; with `kill` = (stage, seconds), SIGKILL that stage then (see `run_stage`).
    Returns (the stage killed, or 'done'; {stage: (seconds, seconds to its first and last write)})."""
    times = {}
    for stage, command in chain(run, opts):
        kill_after = kill[1] if kill is not None and kill[0] == stage else None
        killed, *seconds_first_last = run_stage(stage, command, run, env, run / OUTPUTS[stage], kill_after,
                                                opts.after_output)
        times[stage] = tuple(seconds_first_last)
        if killed:
            return stage, times
    return "done", times


def draw_kill(rng: random.Random, reference: dict, number: int, kill_in: list[str], after_output: bool
              ) -> tuple[str, float]:
    """Kill `number`'s stage (in turn from `kill_in`, else in proportion to its reference duration)
    and moment: uniform over that stage's reference time from its start, or with `after_output`
    between its first and its last write (while the reference still had work to write, not in
    its teardown)."""
    if kill_in:
        stage = kill_in[number % len(kill_in)]
    else:
        stage = rng.choices(list(reference), weights=[seconds for seconds, *_ in reference.values()])[0]
    seconds, first, last = reference[stage]
    if after_output and first is not None:
        window = last - first if last > first else seconds - first
    else:
        window = seconds
    return stage, rng.uniform(0.0, window)


def sorted_records(path: Path) -> list[dict]:
    def key(r):
        return (r["task_id"], r["test_index"], r.get("sample_index", -1), r.get("candidate_index", -1))
    return sorted(read_jsonl(path), key=key)


def matches(expected, got, tolerance: float = NUMBER_TOLERANCE) -> bool:
    """Whether two records (nested dicts and lists) are equal but for floats within `tolerance`."""
    if isinstance(expected, float) or isinstance(got, float):
        return (isinstance(expected, (int, float)) and isinstance(got, (int, float))
                and abs(expected - got) <= tolerance * max(1.0, abs(expected), abs(got)))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(matches(expected[k], got[k], tolerance) for k in expected)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(matches(a, b, tolerance) for a, b in zip(expected, got))
    return expected == got


def record_differences(expected: list[dict], got: list[dict], most: int = 3) -> list[str]:
    """The first `most` differences between two sorted record lists, one line each: a count, or a
    record's key and its fields that differ (numbers with their difference)."""
    if len(expected) != len(got):
        return [f"{len(got)} records, not {len(expected)}"]
    lines = []
    for a, b in zip(expected, got):
        fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if fields:
            key = "/".join(str(a.get(k)) for k in ("task_id", "test_index", "sample_index", "candidate_index") if k in a)
            lines.append(f"{key}: " + ", ".join(
                f"{k} {b.get(k) - a.get(k):+.2e}" if isinstance(a.get(k), float) and isinstance(b.get(k), float)
                else k for k in fields))
        if len(lines) == most:
            break
    return lines


def real_grids(run: Path) -> dict:
    """What the run's outputs hold besides error records: predictions and DFS answers with a grid,
    rescored candidates (each one a grid with its view scores)."""
    def with_grid(stage):
        return [r for r in read_jsonl(run / OUTPUTS[stage]) if r.get("grid") is not None]
    return {"sample": len(with_grid("sample")), "dfs": len(with_grid("dfs")),
            "dfs_beyond_the_first": sum(r.get("candidate_index", 0) > 0 for r in with_grid("dfs")),
            "rescore": sum(len(r["candidates"]) for r in read_jsonl(run / OUTPUTS["rescore"]))}


def build_model(opts, tasks: dict, out: Path) -> None:
    """`--model grid`: train the grid model on the chain's tasks (the model then is that folder)."""
    if opts.model != "grid":
        return
    from devtools.random_models import save_grid_model
    from pipeline.core.models import embedded_model_dir, load_tokenizer

    start = time.time()
    opts.model = str(save_grid_model(out / "grid-model", load_tokenizer(embedded_model_dir()), tasks, seed=opts.seed))
    print(f"chaos: grid model trained in {time.time() - start:.1f} s -> {opts.model}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="grid", help="'grid' (a tiny model trained to answer with grids) or a model folder")
    p.add_argument("--tasks", type=int, default=3, help="the N smallest ARC-AGI-1 evaluation tasks")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--kill_in", nargs="+", choices=STAGES, help="kill these stages in turn (default: anywhere)")
    p.add_argument("--after_output", action="store_true", help="kill only after the stage's first write")
    p.add_argument("--ttft_steps", type=int, default=4)
    p.add_argument("--predictions", type=int, default=4, help="views per test input (sample and DFS)")
    p.add_argument("--min_prob", type=float, default=0.05, help="DFS")
    p.add_argument("--views", type=int, default=4, help="rescore")
    p.add_argument("--max_tokens", default="task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=[d for d in PRECISIONS if d != "float16"],  # fp16: CUDA
                   help="every stage's precision (float32: a resume matches to 1e-4; bf16 rounds by batch shape)")
    p.add_argument("--output_dir", default="runs/chaos")
    opts = p.parse_args(argv)

    out = Path(opts.output_dir).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tasks = without_test_outputs(select_tasks(load_tasks(EVALUATION), sort_by_size=True, first_n=opts.tasks))
    build_model(opts, tasks, out)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    reference = out / "reference"
    reference.mkdir()
    write_json_atomic(reference / "tasks.json", tasks)
    _, stage_times = run_chain(reference, opts, env)
    grids = real_grids(reference)
    print(f"chaos: reference run {sum(s for s, *_ in stage_times.values()):.1f} s "
          f"({', '.join(f'{k} {s:.1f} s' for k, (s, *_) in stage_times.items())}); real grids: {grids}", flush=True)

    def new_episode(n: int) -> Path:
        run = out / f"episode{n}"
        run.mkdir(parents=True)
        write_json_atomic(run / "tasks.json", tasks)
        return run

    def compare(run: Path) -> dict:
        result = {"episode": run.name,
                  "identical_submission": (reference / OUTPUTS["vote"]).read_bytes() == (run / OUTPUTS["vote"]).read_bytes()}
        for stage in RECORDS:
            expected, got = sorted_records(reference / OUTPUTS[stage]), sorted_records(run / OUTPUTS[stage])
            result[f"identical_{stage}"] = identical = expected == got
            result[f"matching_{stage}"] = identical or matches(expected, got)
            if not identical:  # what differs, so that a failure says where to look
                result[f"differences_{stage}"] = record_differences(expected, got)
        result["temp_files_left"] = [str(q.relative_to(out)) for q in run.rglob("*") if ".tmp" in q.name]
        return result

    rng = random.Random(opts.seed)
    kills, episodes, run = [], [], new_episode(1)
    while len(kills) < opts.kills:
        target = draw_kill(rng, stage_times, len(kills), opts.kill_in or [], opts.after_output)
        stage, times = run_chain(run, opts, env, kill=target)
        if stage == "done":  # this episode is over: check it, start the next
            episodes.append(compare(run))
            print(f"chaos: {run.name} finished after {sum(k['episode'] == run.name for k in kills)} kill(s): "
                  f"{episodes[-1]}", flush=True)
            run = new_episode(len(episodes) + 1)
            continue
        seconds, first, _ = times[stage]
        kills.append({"kill": len(kills) + 1, "episode": run.name, "stage": stage, "after_s": round(seconds, 1),
                      "after_first_write_s": None if first is None else round(seconds - first, 1)})
        print(f"chaos: kill {len(kills)}/{opts.kills}: SIGKILL in {stage} after {seconds:.1f} s", flush=True)
    run_chain(run, opts, env)
    episodes.append(compare(run))
    same = all(e["identical_submission"] and all(e[f"matching_{stage}"] for stage in RECORDS)
               and not e["temp_files_left"] for e in episodes)
    vacuous = [stage for stage in RECORDS if grids[stage] == 0]
    if vacuous:
        print(f"chaos: the reference run's {', '.join(vacuous)} hold no real grid: nothing of their resume was "
              "tested (use a model that answers with grids, e.g. --model grid)", file=sys.stderr)
    summary = {"dtype": opts.dtype, "kills": len(kills), "killed_in": {s: sum(k["stage"] == s for k in kills) for s in STAGES},
               "episodes": len(episodes), "all_matching": same, "reference_real_grids": grids,
               "reference_seconds": {k: round(s, 1) for k, (s, *_) in stage_times.items()},
               "episode_results": episodes, "kill_log": kills}
    print(json.dumps(summary))
    return 0 if same and not vacuous else 1


if __name__ == "__main__":
    sys.exit(main())
