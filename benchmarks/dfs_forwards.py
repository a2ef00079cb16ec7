"""DFS variants counted, not timed: model forwards and tokens fed, on real tasks with their adapters.

    .venv/bin/python benchmarks/dfs_forwards.py --run_dir runs/accuracy/bare_ttft --tasks 66e6c45b 00576224

Runs `sample --method dfs` in this process (the stage's own code: plan, run loop, proposals,
`batched_search.search_engine`) once per variant on the same tasks and views, with every model
call of the search counted (a wrapper around the served model): prefills (one per view), the
verification rounds of the proposals and the search steps (one forward each), and the tokens each
fed (rows x width, pads included: what the forward computes).  Variants: the batched search without
speculation, speculation as first built (proposals verified, one token per row and step:
`STEP_TOKENS` 1) and as built now (each step also feeds guessed continuations), at
`--batch_views`.  Each variant's records are checked against the first's (texts, log-probs
within 1e-4).  Counts are machine-independent; the seconds printed are not a timing unless the
machine is quiet.  Prints one JSON object (`--output` also writes it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.files import write_json_atomic  # noqa: E402
from pipeline.core.settings import SampleSettings  # noqa: E402
from pipeline.core.tasks import load_tasks  # noqa: E402

VARIANTS = {  # name -> (speculative, STEP_TOKENS or None for the module's)
    "plain": (False, None),
    "verified proposals only": (True, 1),
    "proposals + continuations": (True, None),
}


class Counted:
    """The served model with its calls counted by kind (the search's forwards)."""

    def __init__(self, model, counts: dict):
        self.model, self.counts = model, counts

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, input_ids=None, **kwargs):
        rows, width = input_ids.shape
        kind = "prefill" if kwargs.get("logits_to_keep") == 1 else "verify" if kwargs.get("_verify") else "step"
        kwargs.pop("_verify", None)
        self.counts[f"{kind}_forwards"] = self.counts.get(f"{kind}_forwards", 0) + 1
        self.counts[f"{kind}_tokens"] = self.counts.get(f"{kind}_tokens", 0) + rows * width
        return self.model(input_ids=input_ids, **kwargs)


def run_variant(name: str, opts, dataset: dict, out: Path) -> dict:
    from pipeline.sampling import batched_search, speculation
    from pipeline.sampling.sample import sample

    speculative, step_tokens = VARIANTS[name]
    counts: dict = {}
    saved = (batched_search.STEP_TOKENS, None, speculation.verify_proposals,
             batched_search.verify_proposals, batched_search.search_engine)
    if step_tokens is not None:
        batched_search.STEP_TOKENS = step_tokens

    def verify(model, *args, **kwargs):  # its forwards counted as verification rounds
        return saved[2](lambda **kw: model(**kw, _verify=True), *args, **kwargs)

    def search(engine, *args, **kwargs):
        serving = engine.serving

        def counted_serving(adapter):
            class Serve:
                def __enter__(self):
                    self.inner = serving(adapter)
                    return Counted(self.inner.__enter__(), counts)

                def __exit__(self, *exc):
                    return self.inner.__exit__(*exc)
            return Serve()

        engine.serving = counted_serving
        try:
            return saved[4](engine, *args, **kwargs)
        finally:
            engine.serving = serving

    def on_done_stats(original):
        def wrapped(*args, **kwargs):
            results = original(*args, **kwargs)
            for _, stats in results:
                for key in ("nodes", "speculated", "continued", "verified_tokens", "guessed_tokens", "expanded"):
                    counts[key] = counts.get(key, 0) + int(stats.get(key, 0))
            return results
        return wrapped

    batched_search.verify_proposals = verify
    search_wave = batched_search.search_wave
    batched_search.search_wave = on_done_stats(search_wave)
    output = out / f"{name.replace(' ', '_').replace('+', 'and')}.jsonl"
    output.unlink(missing_ok=True)
    settings = SampleSettings(predictions_per_task=opts.views, method="dfs", min_prob=opts.min_prob,
                              max_candidates=opts.max_candidates, max_tokens="task", engine="transformers",
                              dfs_batch_views=opts.batch_views, dfs_speculative=speculative)
    started = time.time()
    try:
        sample(opts.model, dataset, output, settings, adapters_dir=opts.adapters_dir, progress=False, search=search)
    finally:
        batched_search.STEP_TOKENS = saved[0]
        batched_search.verify_proposals, batched_search.search_wave = saved[3], search_wave
    counts["forwards"] = sum(v for k, v in counts.items() if k.endswith("_forwards"))
    counts["seconds_not_a_timing"] = round(time.time() - started, 1)
    return {"variant": name, **counts, "records": [json.loads(line) for line in output.read_text().splitlines()]}


def same_records(a: list, b: list) -> dict:
    key = lambda r: (r["task_id"], r["test_index"], r["sample_index"], r.get("candidate_index"))  # noqa: E731
    ka, kb = {key(r): r for r in a}, {key(r): r for r in b}
    diffs = [abs(ka[k]["cumulative_logprob"] - kb[k]["cumulative_logprob"]) for k in ka.keys() & kb.keys()
             if ka[k].get("cumulative_logprob") is not None and kb[k].get("cumulative_logprob") is not None]
    return {"same_records": ka.keys() == kb.keys() and all(ka[k]["text"] == kb[k]["text"] for k in ka),
            "max_logprob_diff": max(diffs, default=0.0), "records": len(a)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run_dir", required=True, help="an accuracy-benchmark row: challenges.json, ttft/adapters")
    p.add_argument("--adapters_dir", help="per-task adapters (default RUN_DIR/ttft/adapters)")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--model", default="embedded")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--min_prob", type=float, default=0.1)
    p.add_argument("--max_candidates", type=int, default=8)
    p.add_argument("--batch_views", type=int, default=4)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--output_dir", default="runs/dfs_forwards")
    opts = p.parse_args(argv)
    run_dir, out = Path(opts.run_dir), Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts.adapters_dir = opts.adapters_dir or str(run_dir / "ttft" / "adapters")
    tasks = load_tasks(run_dir / "challenges.json", solutions=None)
    missing = [t for t in opts.tasks if t not in tasks]
    if missing:
        raise SystemExit(f"dfs_forwards: {', '.join(missing)} not in {run_dir / 'challenges.json'}")
    dataset = {t: tasks[t] for t in opts.tasks}
    rows, first = [], None
    for name in opts.variants:  # each variant's counts written as it ends (a long run keeps what it counted)
        row = run_variant(name, opts, dataset, out)
        records = row.pop("records")
        first = records if first is None else first
        rows.append({**row, **same_records(first, records)})
        write_json_atomic(out / "dfs_forwards.json", {"tasks": opts.tasks, "rows": rows}, indent=1)
    result = {"tasks": opts.tasks, "views": opts.views, "min_prob": opts.min_prob, "batch_views": opts.batch_views,
              "rows": rows}
    write_json_atomic(out / "dfs_forwards.json", result, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
