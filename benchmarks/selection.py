"""Search and selection, measured on the same candidates: greedy sampling vs DFS, voting vs product of experts vs NVARC.

    .venv/bin/python benchmarks/selection.py --run_dir runs/accuracy/bare_ttft [--min_probs 0.1 0.2] [--views 8]

Starts from a finished row of the accuracy benchmark (`benchmarks/accuracy.py`): its tasks
(`challenges.json`), its per-task TTFT adapters (`ttft/adapters`, or `shard*/ttft/adapters`) and
its augmented greedy predictions (`predictions.jsonl`).  With the same adapters it then runs
`sample --method dfs` at each `--min_probs` over the same number of views, and for every candidate
source (greedy, each DFS, greedy + DFS) `rescore` under `--views` augmented views, and selects
with each rule (`vote` = voting v2, `poe`, `nvarc`).  Columns: test outputs right (the Kaggle
score), the oracle (a right answer among the candidates at all: the best any selection could do),
mean candidates per test input, and seconds (search, rescoring).  Writes OUT/selection.json and
OUT/selection.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy import EVALUATION, stage  # noqa: E402
from pipeline.files import read_json, write_json_atomic, write_text_atomic  # noqa: E402
from pipeline.predictions import read_predictions  # noqa: E402
from pipeline.scoring import RULES, candidates_from_ranked, read_scores, select  # noqa: E402
from pipeline.tasks import load_tasks, valid_grid_key  # noqa: E402
from pipeline.voting import group_predictions, rank_predictions  # noqa: E402


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
            ranked = rank_predictions(groups.get((task_id, index), []), "v2")
            candidates += len(ranked)
            key = valid_grid_key(correct)
            oracle += any(valid_grid_key(c["grid"]) == key for c in ranked)
            chosen = ranked if rule == "vote" or (task_id, index) not in scores else \
                [{"grid": c.grid} for c in select(scores[(task_id, index)], rule)]
            right += any(valid_grid_key(c["grid"]) == key for c in chosen[:2])
    n = sum(len(o) for o in solutions.values())
    return {"right": right, "outputs": n, "oracle": oracle, "candidates_per_input": round(candidates / n, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run_dir", required=True, help="a finished accuracy-benchmark row (e.g. runs/accuracy/bare_ttft)")
    p.add_argument("--model", default="embedded")
    p.add_argument("--adapter", help="fallback adapter of the row (its adapter rows)")
    p.add_argument("--min_probs", type=float, nargs="+", default=[0.1, 0.2])
    p.add_argument("--views", type=int, default=8, help="views for DFS and for rescoring")
    p.add_argument("--max_candidates", type=int, default=8)
    p.add_argument("--output_dir", default="runs/selection")
    opts = p.parse_args(argv)

    run_dir, out = Path(opts.run_dir).resolve(), Path(opts.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    challenges = run_dir / "challenges.json"
    tasks = load_tasks(challenges, solutions=None)
    evaluation = load_tasks(EVALUATION)
    solutions = {t: [p["output"] for p in evaluation[t]["test"]] for t in tasks}
    adapters = merged_adapters(run_dir, out)
    fallback = ["--adapter_path", opts.adapter] if opts.adapter else []
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    sources = {"greedy": ([run_dir / "predictions.jsonl"], 0.0)}
    for prob in opts.min_probs:
        path = out / f"dfs_{prob}.jsonl"
        path.unlink(missing_ok=True)
        seconds = stage(["sample", "--model", opts.model, "--dataset", challenges, "--adapters_dir", adapters,
                         *fallback, "--output", path, "--predictions_per_task", opts.views, "--method", "dfs",
                         "--min_prob", prob, "--max_candidates", opts.max_candidates, "--max_tokens", "task",
                         "--engine", "transformers", "--quiet"], out / f"dfs_{prob}.log", env)
        sources[f"dfs P={prob}"] = ([path], seconds)
    first = f"dfs P={opts.min_probs[0]}"
    sources[f"greedy + {first}"] = (sources["greedy"][0] + sources[first][0], sources[first][1])
    rows = []
    for name, (files, search_s) in sources.items():
        records = [r for f in files for r in read_predictions(f)]
        scores_path = out / f"scores_{name.replace(' ', '_').replace('=', '').replace('+', 'and')}.jsonl"
        scores_path.unlink(missing_ok=True)
        rescore_s = stage(["rescore", "--model", opts.model, "--dataset", challenges, "--predictions", *files,
                           "--adapters_dir", adapters, *fallback, "--views", opts.views, "--output", scores_path,
                           "--quiet"], out / f"{scores_path.stem}.log", env)
        scores = read_scores(scores_path)
        for rule in RULES:
            row = {"candidates": name, "rule": rule, **evaluate_selection(records, scores, solutions, rule),
                   "search_s": round(search_s, 1), "rescore_s": round(rescore_s, 1) if rule != "vote" else 0.0}
            rows.append(row)
            print(f"selection: {name} / {rule}: {row['right']}/{row['outputs']} right, oracle {row['oracle']}",
                  flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "run_dir": str(run_dir), "views": opts.views,
              "min_probs": opts.min_probs, "load_average": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    write_json_atomic(out / "selection.json", result, indent=1)
    lines = ["| candidates | rule | right (vote_2) | oracle | candidates / input | search s | rescore s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['candidates']} | {r['rule']} | {r['right']}/{r['outputs']} | {r['oracle']}/{r['outputs']} | "
              f"{r['candidates_per_input']} | {r['search_s']} | {r['rescore_s']} |" for r in rows]
    write_text_atomic(out / "selection.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
