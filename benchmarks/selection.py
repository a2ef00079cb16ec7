"""Search and selection, measured on the same candidates: greedy sampling vs DFS, voting vs product of experts vs NVARC.

    .venv/bin/python benchmarks/selection.py --run_dir runs/accuracy/bare_ttft [--min_probs 0.1 0.2] [--views 8]

Starts from a finished row of the accuracy benchmark (`benchmarks/accuracy.py`): its tasks
(`challenges.json`), its per-task TTFT adapters (`ttft/adapters`, or `shard*/ttft/adapters`) and
With those adapters, every source runs here under the same conditions (transformers engine, one
chain, `--threads`): augmented greedy sampling over `--views` views, `sample --method dfs` at each
`--min_probs` over the same views, greedy again with as many views as fit in the first DFS's time
(matched wall time), and greedy + DFS together.  DFS runs twice at each P: one view at a time
(`--dfs_batch_views 1`, the batch-1 search) and `--batch_views` views together (the batched
search, issue 24): the same candidates (checked: `same_candidates`, and the largest log-prob
difference) in less time (`speedup`).  The speculative DFS (`--dfs_speculative`, issue 24) runs
at each P with every `--speculative_batch_views`: checked the same way against the batch-1 rows
(its candidates are the batch-1 search's, so it is not a source of its own and is not rescored);
its stages are named by the algorithm's version (`speculation.VERSION`: `dfs_0.1_b4_spec2`), so a
changed search is run again while the stages it is compared with are reused.  `--search_only`
runs only the DFS rows and their checks (the batch-1 reference, batched, speculative: cached
stages are reused) and writes OUT/search.json and OUT/search.md, leaving the selection table alone.
Each source is rescored under `--views`
augmented views and selected with each rule (`vote` = voting v2, `poe`, `nvarc`).  Columns: test
outputs right (the Kaggle score), the oracle (a right answer among the candidates at all: the best
any selection could do), mean candidates per test input, and seconds per task (search,
rescoring).  Every source is also rescored one view at a time (`--view_batch 0`, the path before
issue 24) beside the default across-views batching: a second table with both seconds per task,
the speed-up and the largest score difference (`--no_view_after_view` skips it).  Writes
OUT/selection.json and OUT/selection.md; resumable (finished stages and their times are kept in
OUT/stages.json).

Every stage runs in one precision, `--dtype` (default float32: the exactness checks compare
log-probs within 1e-4, which only fp32 gives; bf16 rounds a path's log-prob by up to ~0.5 on
this CPU), passed to each stage explicitly and kept in OUT/stages.json: a folder whose stages ran
in another precision is refused, not mixed (the 2026-12-07 speculative rows ran in bf16 against
a float32 batch-1 row when the stages' default changed between them, and looked inexact).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy import EVALUATION, stage  # noqa: E402
from pipeline.core.files import read_json, write_json_atomic, write_text_atomic  # noqa: E402
from pipeline.core.predictions import read_predictions  # noqa: E402
from pipeline.core.settings import DEFAULT_SELECTION, PRECISIONS  # noqa: E402
from pipeline.selection.rules import RULES, group_predictions, rank_predictions, select  # noqa: E402
from pipeline.selection.scored import read_scores  # noqa: E402
from pipeline.core.tasks import load_tasks, valid_grid_key  # noqa: E402
from pipeline.sampling.speculation import VERSION as SPECULATION_VERSION  # noqa: E402


def merged_adapters(run_dir: Path, out: Path) -> Path:
    """One folder of per-task adapters (links into the row's shard folders)."""
    folders = [run_dir / "ttft" / "adapters"] + sorted(run_dir.glob("shard*/ttft/adapters"))
    merged = out / "adapters"
    merged.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        for adapter in folder.glob("*") if folder.is_dir() else []:
            link = merged / adapter.name
            if not link.exists():
                link.symlink_to(adapter.resolve())
    return merged


def evaluate_selection(records: list, scores: dict, solutions: dict, rule: str) -> dict:
    """Right test outputs with 2 attempts by `rule`, the oracle, and the candidates per input."""
    groups = group_predictions(records)
    right = oracle = candidates = 0
    for task_id, outputs in solutions.items():
        for index, correct in enumerate(outputs):
            ranked = rank_predictions(groups.get((task_id, index), []), DEFAULT_SELECTION)
            candidates += len(ranked)
            key = valid_grid_key(correct)
            oracle += any(valid_grid_key(c["grid"]) == key for c in ranked)
            chosen = ranked if rule == "vote" or (task_id, index) not in scores else \
                [{"grid": c.grid} for c in select(scores[(task_id, index)], rule)]
            right += any(valid_grid_key(c["grid"]) == key for c in chosen[:2])
    n = sum(len(o) for o in solutions.values())
    return {"right": right, "outputs": n, "oracle": oracle, "candidates_per_input": round(candidates / n, 2)}


def same_candidates(reference: Path, other: Path) -> dict:
    """Whether two DFS predictions files hold the same candidates (task, test input, view, rank,
    grid), and the largest difference of their log-probs."""
    def keyed(path):
        return {(r["task_id"], r["test_index"], r["sample_index"], r.get("candidate_index"),
                 str(r["grid"])): r.get("cumulative_logprob") for r in read_predictions(path)}
    a, b = keyed(reference), keyed(other)
    diffs = [abs(a[k] - b[k]) for k in a.keys() & b.keys() if a[k] is not None and b[k] is not None]
    return {"same_candidates": a.keys() == b.keys(), "max_logprob_diff": max(diffs, default=0.0)}


def matched_views(views: int, greedy_s: float, search_s: float) -> int:
    """Greedy views that take about `search_s`, given `views` took `greedy_s` (time grows with the
    views: one generation each); never fewer than `views`."""
    return max(views, round(views * search_s / max(greedy_s, 1e-9)))


PRECISION_KEY = "_dtype"  # stages.json: the precision every stage of the folder ran in


def stage_precision(out: Path, dtype: str) -> None:
    """Pin OUT's stages to `dtype`: recorded in a new folder; a folder whose stages ran in another
    precision (or in the stages' default, before the pin) is refused with one line."""
    done_path = out / "stages.json"
    done = read_json(done_path) if done_path.is_file() else {}
    ran = done.get(PRECISION_KEY, "the stages' default" if done else None)
    if ran is None:
        write_json_atomic(done_path, {**done, PRECISION_KEY: dtype}, indent=1)
    elif ran != dtype:
        raise SystemExit(f"selection: {out} holds stages run in {ran}, not --dtype {dtype}: "
                         "use another --output_dir (candidates of two precisions are not comparable)")


def timed_stage(name: str, args: list, out: Path, env: dict) -> float:
    """Run one stage once: its seconds are kept in OUT/stages.json, and a stage found there is not
    run again (a long measurement resumes after an interruption, with the times it measured)."""
    done_path = out / "stages.json"
    done = read_json(done_path) if done_path.is_file() else {}
    if name in done:
        return done[name]
    output = Path(args[args.index("--output") + 1])
    output.unlink(missing_ok=True)  # a half-written output of an interrupted run
    seconds = round(stage(args, out / f"{name}.log", env), 1)
    write_json_atomic(done_path, {**done, name: seconds}, indent=1)
    return seconds


def max_score_difference(a: dict, b: dict) -> float | None:
    """The largest |log-prob| between two scores files' records (`read_scores`) of the same
    candidates in the same views (None: nothing in common)."""
    diffs = []
    for key in a.keys() & b.keys():
        other = {valid_grid_key(c.grid): c for c in b[key]}
        for c in a[key]:
            twin = other.get(valid_grid_key(c.grid))
            if twin is not None:
                diffs += [abs(x - y) for x, y in zip(c.view_logprobs, twin.view_logprobs)]
    return max(diffs) if diffs else None


def rescoring_row(name: str, n_tasks: int, batched: tuple[Path, float], reference: tuple[Path, float]) -> dict:
    """Rescoring across views (the stage's default `--view_batch`) against view after view
    (`--view_batch 0`, the path before issue 24) on the same candidates: seconds per task, the
    speed-up, and the largest score difference (the two must agree within 1e-4)."""
    (batched_path, batched_s), (reference_path, reference_s) = batched, reference
    diff = max_score_difference(read_scores(batched_path), read_scores(reference_path))
    return {"candidates": name, "view_after_view_s_per_task": round(reference_s / n_tasks, 2),
            "across_views_s_per_task": round(batched_s / n_tasks, 2),
            "speedup": round(reference_s / batched_s, 2) if batched_s else None,
            "max_score_difference": None if diff is None else float(f"{diff:.2g}")}


def rescoring_table(rows: list[dict]) -> list[str]:
    lines = ["| candidates | rescore s/task, view after view | rescore s/task, across views | speed-up | "
             "max score difference |", "|---|---|---|---|---|"]
    return lines + [f"| {r['candidates']} | {r['view_after_view_s_per_task']} | {r['across_views_s_per_task']} | "
                    f"{r['speedup']}x | {r['max_score_difference']} |" for r in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run_dir", required=True, help="a finished accuracy-benchmark row (e.g. runs/accuracy/bare_ttft)")
    p.add_argument("--model", default="embedded")
    p.add_argument("--adapter", help="fallback adapter of the row (its adapter rows)")
    p.add_argument("--min_probs", type=float, nargs="+", default=[0.1, 0.2])
    p.add_argument("--views", type=int, default=8, help="views for greedy sampling, DFS and rescoring")
    p.add_argument("--max_candidates", type=int, default=8)
    p.add_argument("--batch_views", type=int, default=4,
                   help="views searched together in the batched DFS rows (0: no batched rows)")
    p.add_argument("--speculative_batch_views", type=int, nargs="*", default=[1, 4],
                   help="views searched together in the speculative DFS rows (none: no speculative rows)")
    p.add_argument("--no_match", action="store_true",
                   help="skip the greedy run with as many views as fit in the first DFS's search time")
    p.add_argument("--threads", type=int, help="OMP threads of every stage (default: torch's)")
    p.add_argument("--no_view_after_view", action="store_true",
                   help="skip rescoring each source again one view at a time (the batched rescoring's reference)")
    p.add_argument("--search_only", action="store_true",
                   help="only the DFS rows and their checks against batch 1 (OUT/search.json, OUT/search.md)")
    p.add_argument("--dtype", default="float32", choices=PRECISIONS,
                   help="every stage's precision (float32: the exactness checks need it)")
    p.add_argument("--output_dir", default="runs/selection")
    opts = p.parse_args(argv)

    run_dir, out = Path(opts.run_dir).resolve(), Path(opts.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stage_precision(out, opts.dtype)
    challenges = run_dir / "challenges.json"
    tasks = load_tasks(challenges, solutions=None)
    evaluation = load_tasks(EVALUATION)
    solutions = {t: [p["output"] for p in evaluation[t]["test"]] for t in tasks}
    adapters = merged_adapters(run_dir, out)
    fallback = ["--adapter_path", opts.adapter] if opts.adapter else []
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    # every candidate source runs here, in the same conditions: the transformers engine, one chain
    common = ["--model", opts.model, "--dataset", challenges, "--adapters_dir", adapters, *fallback,
              "--max_tokens", "task", "--engine", "transformers", "--dtype", opts.dtype, "--quiet"]

    def greedy(views: int) -> tuple[str, tuple]:
        path = out / f"greedy_{views}.jsonl"
        seconds = timed_stage(f"greedy_{views}", ["sample", *common, "--output", path, "--predictions_per_task",
                                                  views], out, env)
        return f"greedy, {views} views", ([path], seconds)

    sources = {} if opts.search_only else dict([greedy(opts.views)])

    def dfs(prob: float, batch_views: int, speculative: bool = False) -> tuple[str, tuple]:
        name = f"dfs_{prob}" + (f"_b{batch_views}" if batch_views > 1 else "")  # batch 1: the original rows' name
        name += f"_spec{SPECULATION_VERSION}" if speculative else ""  # a changed search: new stages
        path = out / f"{name}.jsonl"
        seconds = timed_stage(name, ["sample", *common, "--output", path, "--predictions_per_task", opts.views,
                                     "--method", "dfs", "--min_prob", prob, "--max_candidates", opts.max_candidates,
                                     "--dfs_batch_views", batch_views,
                                     "--dfs_speculative" if speculative else "--no-dfs_speculative"], out, env)
        label = f"DFS P={prob}, {opts.views} views" + (f", batched {batch_views}" if batch_views > 1 else "")
        return label + (", speculative" if speculative else ""), ([path], seconds)

    sources.update(dfs(prob, 1) for prob in opts.min_probs)
    batched = {}  # batched source -> its batch-1 source
    if opts.batch_views > 1:
        for prob in opts.min_probs:
            label, source = dfs(prob, opts.batch_views)
            sources[label] = source
            batched[label] = dfs(prob, 1)[0]
    if not opts.search_only:
        first_greedy, first_dfs = list(sources)[0], list(sources)[1]
        if not opts.no_match:  # greedy sampling given the first DFS's time: views in proportion
            matched = matched_views(opts.views, sources[first_greedy][1], sources[first_dfs][1])
            if matched != opts.views:
                sources.update([greedy(matched)])
        sources[f"{first_greedy} + {first_dfs}"] = (sources[first_greedy][0] + sources[first_dfs][0],
                                                    sources[first_greedy][1] + sources[first_dfs][1])
    rows, checks, rescoring = [], [], []
    compared = {name: (sources[name], sources[reference], reference) for name, reference in batched.items()}
    for prob in opts.min_probs:  # the same candidates as the batch-1 search: checked, not rescored again
        for batch_views in opts.speculative_batch_views:
            label, source = dfs(prob, batch_views, speculative=True)
            reference = dfs(prob, 1)[0]
            compared[label] = (source, sources[reference], reference)
    for name, ((files, seconds), (reference_files, reference_s), reference) in compared.items():
        checks.append({"candidates": name, "batch_1": reference, **same_candidates(reference_files[0], files[0]),
                       "batch_1_s_per_task": round(reference_s / len(tasks), 1),
                       "s_per_task": round(seconds / len(tasks), 1),
                       "speedup": round(reference_s / max(seconds, 1e-9), 2)})
    check_lines = [f"{c['candidates']}: same candidates as batch 1: {'yes' if c['same_candidates'] else 'NO'} "
                   f"(largest log-prob difference {c['max_logprob_diff']:.1e}), {c['s_per_task']} s/task against "
                   f"{c['batch_1_s_per_task']}: {c['speedup']}x faster" for c in checks]
    if opts.search_only:
        write_json_atomic(out / "search.json", {"date": time.strftime("%Y-%m-%d"), "run_dir": str(run_dir),
                                                "views": opts.views, "min_probs": opts.min_probs,
                                                "threads": opts.threads, "dtype": opts.dtype,
                                                "speculation_version": SPECULATION_VERSION,
                                                "load_average": [round(x, 2) for x in os.getloadavg()],
                                                "batched_dfs": checks}, indent=1)
        write_text_atomic(out / "search.md", "\n".join(check_lines) + "\n")
        print("\n".join(check_lines))
        return 0
    for index, (name, (files, search_s)) in enumerate(sources.items()):
        records = [r for f in files for r in read_predictions(f)]
        scores_path = out / f"scores_{index}.jsonl"
        rescore = ["rescore", "--model", opts.model, "--dataset", challenges, "--predictions", *files,
                   "--adapters_dir", adapters, *fallback, "--views", opts.views, "--dtype", opts.dtype, "--quiet"]
        rescore_s = timed_stage(f"scores_{index}", [*rescore, "--output", scores_path], out, env)
        if not opts.no_view_after_view:  # the same scoring one view at a time (the path before issue 24)
            reference = out / f"scores_{index}_view_after_view.jsonl"
            reference_s = timed_stage(f"scores_{index}_view_after_view",
                                      [*rescore, "--view_batch", 0, "--output", reference], out, env)
            rescoring.append(rescoring_row(name, len(tasks), (scores_path, rescore_s), (reference, reference_s)))
        scores = read_scores(scores_path)
        for rule in RULES:
            row = {"candidates": name, "rule": rule, **evaluate_selection(records, scores, solutions, rule),
                   "search_s_per_task": round(search_s / len(tasks), 1),
                   "rescore_s_per_task": round(rescore_s / len(tasks), 1) if rule != "vote" else 0.0}
            rows.append(row)
            print(f"selection: {name} / {rule}: {row['right']}/{row['outputs']} right, oracle {row['oracle']}",
                  flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "run_dir": str(run_dir), "adapter": opts.adapter,
              "views": opts.views, "min_probs": opts.min_probs, "threads": opts.threads, "dtype": opts.dtype,
              "load_average": [round(x, 2) for x in os.getloadavg()], "rows": rows, "rescoring": rescoring,
              "batched_dfs": checks}
    write_json_atomic(out / "selection.json", result, indent=1)
    lines = ["| candidates | rule | right (vote_2) | oracle | candidates / input | search s/task | rescore s/task |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['candidates']} | {r['rule']} | {r['right']}/{r['outputs']} | {r['oracle']}/{r['outputs']} | "
              f"{r['candidates_per_input']} | {r['search_s_per_task']} | {r['rescore_s_per_task']} |" for r in rows]
    if rescoring:
        lines += [""] + rescoring_table(rescoring)
    lines += [f"\n{line}" for line in check_lines]
    write_text_atomic(out / "selection.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
