"""The GPU benchmarks' CPU path: `--device cpu --smoke` runs the same code (model build, LoRA
training steps through the stage's trainer, generation through the transformers engine) on toy
sizes, so the scripts a GPU session runs once are known to work before the GPU is spent."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_runs_every_gpu_benchmark_and_writes_one_summary(tmp_path):
    """`make gpu-bench`'s CPU path: TTFT steps, generation, full vs reduced vocabulary, memory, in one command."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--device", "cpu", "--smoke",
                           "--output_dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu-bench.json").read_text())
    parts = summary["parts"]
    assert set(parts) == {"ttft", "sampling", "vocab", "ttft deterministic", "sampling deterministic", "rescoring", "memory",
                          "dfs"}
    assert all(p["error"] is None for p in parts.values())
    # `deterministic: true`'s cost: the same rows with torch's deterministic algorithms
    assert all(row["s_per_step"] > 0 for row in parts["ttft deterministic"]["result"]["results"])
    assert all(row["generated_tokens_per_s"] > 0 for row in parts["sampling deterministic"]["result"]["results"])
    for row in parts["ttft"]["result"]["results"]:
        assert row["trainable_params"] > 0 and row["s_per_step"] > 0
        assert row["tokens_per_s"] > 0 and row["achieved_tflops"] > 0
    sampling = parts["sampling"]["result"]
    assert sampling["device"] == "cpu" and sampling["engine"] == "transformers"
    batches = [row["batch"] for row in sampling["results"]]
    assert batches == sorted(batches) and len(batches) >= 2
    for row in sampling["results"]:
        assert 0 < row["generated_tokens"] <= row["batch"] * row["new_tokens"]
        assert row["generated_tokens_per_s"] > 0 and row["kv_bytes"] > 0
    vocab = parts["vocab"]["result"]
    assert [(r["variant"], r["vocab"]) for r in vocab["rows"]] == [("full", 2048), ("reduced", 300)]
    assert all(r["ttft_s_per_step"] > 0 and r["generated_tokens_per_s"] > 0 and r["peak_memory_gb"] > 0
               for r in vocab["rows"])
    assert vocab["ratios"][0]["ttft_step"] > 0
    rescoring = parts["rescoring"]["result"]["results"]  # issue 24: views together, the same scores (fp32 here)
    assert [r["view_batch"] for r in rescoring] == [0, 2, 4]
    assert all(r["seconds"] > 0 and r["max_difference"] < 1e-4 for r in rescoring)
    # the memory row: no allocator on CPU, so the tensors' own bytes against the projection's
    memory = parts["memory"]["result"]["rows"]
    assert [r["kind"] for r in memory] == ["ttft", "ttft", "sampling"]
    for row in memory:
        assert row["measured"] == "no device" and row["measured_gb"] is None and row["projected_gb"] > 0
    for row in memory[:2]:
        assert row["accounted_match"] == {"trainable": True, "optimizer": True}
    table = (tmp_path / "gpu-bench.md").read_text()
    assert "## ttft" in table and "## sampling" in table and "| 64 | reduced | 300 |" in table
    assert "## ttft deterministic" in table and "## sampling deterministic" in table
    assert "## memory" in table and "| toy qwen3 | ttft | 64 |" in table
    # batched DFS: the batch-1 answers, in fp32 within 1e-4, at every batch size
    dfs = parts["dfs"]["result"]["results"]
    assert [r["batch_views"] for r in dfs] == [1, 2, 4] and all(r["within_tolerance"] for r in dfs)
    assert "## dfs" in table


def test_accuracy_benchmark_runs_its_rows_and_scores_them_like_the_score_stage(tiny_model_dir, eval_tasks, tmp_path):
    """Two rows on the two smallest tasks with the tiny model: every stage runs, the table has a
    line per row, and each row's Kaggle score is what `pipeline score` says of its submission."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    out = tmp_path / "acc"
    assert accuracy.main(["--model", str(tiny_model_dir), "--task_ids", *accuracy.TASKS_20[:2], "--rows", "bare",
                          "bare+ttft", "--ttft_steps", "1", "--predictions", "2", "--engine", "transformers",
                          "--output_dir", str(out), "--jobs", "2", "--threads_per_job", "1"]) == 0
    result = json.loads((out / "accuracy.json").read_text())
    assert [r["row"] for r in result["rows"]] == ["bare", "bare+ttft"]
    table = (out / "accuracy.md").read_text()
    assert table.count("\n| bare") == 2 and "load average" in result["load_before"] + table
    solutions = tmp_path / "solutions.json"
    solutions.write_text(json.dumps({t: [p["output"] for p in eval_tasks[t]["test"]] for t in accuracy.TASKS_20[:2]}))
    for row in result["rows"]:
        folder = out / row["row"].replace("+", "_")
        assert row["tasks"] == 2 and row["outputs"] == 2
        scored = subprocess.run([sys.executable, "-m", "pipeline", "score", "--submission",
                                 str(folder / "submission.json"), "--solutions", str(solutions)],
                                cwd=REPO, capture_output=True, text=True)
        assert f"({row['outputs_correct']}/2 test outputs)" in scored.stdout, scored.stdout + scored.stderr
        predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        assert len(predictions) == 2 * row["outputs"]
    ttft_row = result["rows"][1]
    assert ttft_row["ttft_seconds"] > 0 and result["rows"][0]["ttft_seconds"] == 0
    # two parallel chains, one task each: each trained its task's adapter
    assert sorted(len(list(d.iterdir())) for d in (out / "bare_ttft").glob("shard*/ttft/adapters")) == [1, 1]


def test_accuracy_benchmarks_defaults_are_the_dry_runs_recipe():
    """The benchmark's defaults come from kaggle/configs/local.yaml (the winning recipe, written
    once): TTFT length, learning rate, batch, the model dataset's format and reduced vocabulary,
    and the rows its model runs; flags still override them."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy
    from pipeline.core.settings import load_config

    config = load_config(accuracy.DRY_RUN_CONFIG)
    opts = accuracy.parse_args([])
    assert (opts.ttft_steps, opts.ttft_copies, opts.ttft_epochs, opts.ttft_learning_rate, opts.ttft_batch_size) == (
        config.ttft_steps, config.ttft_copies, config.ttft_epochs, config.ttft_learning_rate, config.ttft_batch_size)
    assert accuracy.ttft_steps_of(opts) == config.ttft_steps  # the copies' steps, counted by the stage's rule
    # a length on the command line replaces the recipe's whole length, as a config layer's does
    opts = accuracy.parse_args(["--ttft_steps", "32"])
    assert (opts.ttft_steps, opts.ttft_copies, opts.ttft_epochs, accuracy.ttft_steps_of(opts)) == (32, None, None, 32)
    opts = accuracy.parse_args(["--ttft_copies", "8"])
    assert (opts.ttft_copies, opts.ttft_epochs, accuracy.ttft_steps_of(opts)) == (8, None, -(-8 // opts.ttft_batch_size))
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--ttft_steps", "32", "--ttft_copies", "8"])
    assert (opts.format, opts.shrink_vocab) == (config.local_model_shrink_vocab["format"], True)
    assert opts.rows == ["bare", "bare+ttft"] and config.adapter is None
    assert opts.dtype is None and config.ttft_settings["torch_dtype"] == "auto"  # the stages' own CPU default
    opts = accuracy.parse_args(["--format", "arc24", "--no-shrink_vocab", "--ttft_steps", "32"])
    assert (opts.format, opts.shrink_vocab, opts.ttft_steps) == ("arc24", False, 32)
    # the table's settings line: the adapter+ttft row continues the adapter's LoRA, not a fresh one
    lora = {"lora_r": 32, "lora_target": ["attention"]}
    assert accuracy.trained_weights_text(lora, ["bare+ttft"]) == "fresh LoRA r 32 on attention"
    assert "the adapter's own LoRA continued (adapter+ttft)" in accuracy.trained_weights_text(lora, ["adapter+ttft"])


def test_accuracy_benchmark_sweep_options_reach_the_stages_and_the_table(tiny_model_dir, tmp_path, capsys):
    """Issue 25's sweep options: copies x epochs reach TTFT (the adapter's record counts the
    stage's own steps), the precision is the stages' and the table says it, and the row's CPU
    seconds are its stage processes' (more than nothing, within wall time x chains x cores)."""
    import os
    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    out = tmp_path / "acc"
    assert accuracy.main(["--model", str(tiny_model_dir), "--task_ids", accuracy.TASKS_20[0], "--rows", "bare+ttft",
                          "--format", "arc24", "--no-shrink_vocab",
                          "--ttft_copies", "3", "--ttft_epochs", "2", "--ttft_batch_size", "2", "--dtype", "bfloat16",
                          "--ttft_max_task_tokens", "100000", "--ttft_long_tasks", "scale",
                          "--predictions", "2", "--engine", "transformers", "--output_dir", str(out)]) == 0
    result = json.loads((out / "accuracy.json").read_text())
    settings, [row] = result["settings"], result["rows"]
    assert settings["precision"] == "bfloat16" and settings["ttft_length"].startswith("3 copies x 2 epoch(s) = 3 steps (")
    [record] = (out / "bare_ttft" / "ttft" / "adapters").glob("*/record.json")
    record = json.loads(record.read_text())
    assert record["steps"] == record["requested_steps"] == 3 and record["torch_dtype"] == "bfloat16", record
    ttft_cfg = json.loads((out / "bare_ttft" / "ttft" / "cfg.json").read_text())  # the gate reached the stage
    assert (ttft_cfg["max_task_tokens"], ttft_cfg["long_tasks"]) == (100000, "scale")
    assert 0 < row["cpu_seconds"] <= row["wall_seconds"] * (os.cpu_count() or 1) + 1
    assert row["cpu_seconds_per_task"] == row["cpu_seconds"]  # one task
    table = (out / "accuracy.md").read_text()
    assert "| CPU s/task |" in table and "precision bfloat16 (--dtype bfloat16)" in table
    assert "TTFT 3 copies x 2 epoch(s) = 3 steps (tasks whose longest sample is over 100000 tokens: steps" in table
    # epochs without copies: the stage's rule refuses it, before any stage runs, naming the flag
    capsys.readouterr()
    assert accuracy.main(["--ttft_epochs", "2", "--output_dir", str(tmp_path / "never")]) == 1
    assert "--ttft_epochs 2" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_accuracy_benchmark_runs_rows_in_the_nvarc_format_on_the_reduced_vocabulary(tiny_model_dir, tmp_path):
    """`--format nvarc --shrink_vocab`: shrink-vocab makes the reduced model once, TTFT trains and
    sampling prompts in nvarc on it (the adapter's cfg.json and sampling's log say so), and the
    predictions are read and scored; a second run in the same folder reuses the reduced model."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    out = tmp_path / "acc"
    args = ["--model", str(tiny_model_dir), "--task_ids", accuracy.TASKS_20[0], "--rows", "bare", "bare+ttft",
            "--format", "nvarc", "--shrink_vocab", "--ttft_steps", "1", "--predictions", "2",
            "--engine", "transformers", "--output_dir", str(out)]
    assert accuracy.main(args) == 0
    result = json.loads((out / "accuracy.json").read_text())
    reduced = out / "model-nvarc-reduced"
    made = json.loads((reduced / "cfg.json").read_text())
    assert made["format"] == "nvarc" and made["vocab_size"] < made["source_vocab_size"]
    settings = result["settings"]
    assert settings["model"] == settings["reduced_model"] == str(reduced) and settings["format"] == "nvarc"
    assert settings["source_model"] == str(tiny_model_dir) and settings["shrink_vocab_seconds"] > 0
    [adapter_cfg] = (out / "bare_ttft" / "ttft" / "adapters").glob("*/cfg.json")
    assert json.loads(adapter_cfg.read_text())["format"] == "nvarc"
    for row in result["rows"]:
        folder = out / row["row"].replace("+", "_")
        assert "format nvarc" in (folder / "sample.log").read_text()
        assert len((folder / "predictions.jsonl").read_text().splitlines()) == 2 * row["outputs"] == 2
    assert "format nvarc, reduced vocabulary" in (out / "accuracy.md").read_text()
    before = (reduced / "cfg.json").stat().st_mtime_ns
    assert accuracy.main([*args[:5], "bare", *args[7:]]) == 0   # the bare row again: the same reduced model
    assert json.loads((out / "accuracy.json").read_text())["settings"]["shrink_vocab_seconds"] == 0
    assert (reduced / "cfg.json").stat().st_mtime_ns == before


def test_accuracy_benchmark_full_finetuning_row(tiny_model_dir, tmp_path, capsys):
    """`--ttft_full_finetune`: the bare+ttft row trains every weight (the task's folder holds the
    weights' difference, no LoRA), sampling serves it and the table says so; refused with the
    adapter+ttft row."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    out = tmp_path / "acc"
    assert accuracy.main(["--model", str(tiny_model_dir), "--task_ids", accuracy.TASKS_20[0], "--rows", "bare+ttft",
                          "--format", "arc24", "--no-shrink_vocab", "--ttft_full_finetune", "--ttft_steps", "2", "--predictions", "2",
                          "--engine", "transformers", "--output_dir", str(out)]) == 0
    [folder] = (out / "bare_ttft" / "ttft" / "adapters").iterdir()
    assert (folder / "full_delta.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    assert "adapters: 1 per-task" in (out / "bare_ttft" / "sample.log").read_text()
    [row] = json.loads((out / "accuracy.json").read_text())["rows"]
    assert row["outputs"] == 1 and len((out / "bare_ttft" / "predictions.jsonl").read_text().splitlines()) == 2
    assert "full fine-tuning (no LoRA)" in (out / "accuracy.md").read_text()
    capsys.readouterr()
    assert accuracy.main(["--rows", "adapter+ttft", "--ttft_full_finetune", "--output_dir", str(tmp_path / "n")]) == 1
    assert "not with the adapter+ttft row" in capsys.readouterr().err
    # the adapter rows on the reduced vocabulary (the recipe's default): refused, naming the fix
    assert accuracy.main(["--rows", "adapter", "--output_dir", str(tmp_path / "n")]) == 1
    assert "trained in arc24, not on the nvarc reduced vocabulary: add --no-shrink_vocab --format arc24" in \
        capsys.readouterr().err and not (tmp_path / "n").exists()


def test_chaos_kills_and_restarts_give_the_uninterrupted_submission(tmp_path, capsys):
    """The chain ttft -> sample -> sample --method dfs -> rescore -> vote --method poe, SIGKILLed
    once in each of its first four stages (after the stage's first write: a half-done output to
    resume) and restarted each time, ends with the reference run's submission byte for byte, its
    predictions, DFS answers and scores record for record (texts and grids equal, numbers within
    1e-4: a resumed DFS batches other views, and two threads round by batch shape), and no temp files.  The model is the
    grid model (trained in the benchmark), so the reference's DFS answers and rescored candidates
    are real grids, several per test input: the comparison is not one of error records.  Every
    stage in float32 (the benchmark's default; benchmarks/chaos.py's docstring says why)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import chaos

    code = chaos.main(["--model", "grid", "--tasks", "2", "--kills", "4", "--kill_in", "ttft", "sample", "dfs",
                       "rescore", "--after_output", "--ttft_steps", "2", "--predictions", "2", "--views", "2",
                       "--max_tokens", "40", "--output_dir", str(tmp_path / "chaos")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, json.dumps({k: summary[k] for k in ("episode_results", "kill_log")})  # in full: what differed
    assert summary["all_matching"] and summary["episodes"] >= 1
    assert summary["dtype"] == "float32"  # every stage pinned (benchmarks/chaos.py's docstring)
    for episode in summary["episode_results"]:
        assert episode["identical_submission"], episode  # byte for byte
        assert all(episode[f"matching_{stage}"] for stage in ("sample", "dfs", "rescore")), episode
        assert not episode["temp_files_left"]
    assert summary["kills"] == 4 == sum(summary["killed_in"].values())  # every kill hit a running stage
    assert all(summary["killed_in"][stage] == 1 for stage in ("ttft", "sample", "dfs", "rescore"))
    grids = summary["reference_real_grids"]
    outputs = 2  # the two smallest evaluation tasks have one test input each
    assert grids["sample"] == 2 * outputs  # greedy under every view: a grid each
    assert grids["dfs"] > 2 * outputs and grids["dfs_beyond_the_first"] > 0  # DFS found more than greedy
    assert grids["rescore"] >= outputs  # every test input has rescored candidates


def test_chaos_names_what_differs_between_two_record_files():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import chaos

    a = [{"task_id": "t", "test_index": 0, "sample_index": i, "text": "x", "mean_logprob": -0.5} for i in range(4)]
    b = [dict(r) for r in a]
    b[1]["mean_logprob"] = -0.25
    b[2]["text"] = "y"
    assert chaos.record_differences(a, b) == ["t/0/1: mean_logprob +2.50e-01", "t/0/2: text"]
    assert chaos.record_differences(a, b[:3]) == ["3 records, not 4"]
    assert chaos.record_differences(a, a) == []
    # numbers within the tolerance match (a resumed DFS on two threads: ~1e-6), texts never differ
    close = [{**r, "mean_logprob": r["mean_logprob"] + 1e-6, "views": [{"logprob": -50.0 + 1e-4}]} for r in a]
    assert chaos.matches([{**r, "views": [{"logprob": -50.0}]} for r in a], close)
    assert not chaos.matches(a, b) and not chaos.matches(a, b[:3]) and not chaos.matches(a, [{**a[0], "extra": 1}, *a[1:]])


def test_selection_benchmark_runs_on_an_accuracy_row(tiny_model_dir, eval_tasks, tmp_path):
    """The selection benchmark on a finished accuracy row (tiny model: plumbing, with an oracle
    that cannot exceed the outputs and rules that agree when nothing is rescored)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy
    import selection

    row = tmp_path / "acc"
    assert accuracy.main(["--model", str(tiny_model_dir), "--task_ids", accuracy.TASKS_20[0], "--rows", "bare+ttft",
                          "--format", "arc24", "--no-shrink_vocab", "--ttft_steps", "1", "--predictions", "2", "--engine", "transformers",
                          "--output_dir", str(row)]) == 0
    out = tmp_path / "sel"
    args = ["--run_dir", str(row / "bare_ttft"), "--model", str(tiny_model_dir), "--min_probs", "0.5",
            "--views", "2", "--no_match", "--output_dir", str(out)]
    assert selection.main(args) == 0
    result = json.loads((out / "selection.json").read_text())
    sources = ("greedy, 2 views", "DFS P=0.5, 2 views", "DFS P=0.5, 2 views, batched 4",
               "greedy, 2 views + DFS P=0.5, 2 views")
    assert {(r["candidates"], r["rule"]) for r in result["rows"]} == {
        (c, rule) for c in sources for rule in ("vote", "poe", "nvarc")}
    for r in result["rows"]:
        assert 0 <= r["right"] <= r["oracle"] <= r["outputs"] == 1
    assert (out / "adapters" / accuracy.TASKS_20[0] / "adapter_config.json").is_file()
    # one row per source, the rescoring comparison table, the batched and speculative DFS check lines
    assert (out / "selection.md").read_text().count("\n") == 2 + 12 + 1 + 2 + 4 + 3 * 2
    # the batched and the speculative DFS found the batch-1 search's candidates (issue 24)
    assert [c["candidates"] for c in result["batched_dfs"]] == [
        "DFS P=0.5, 2 views, batched 4", "DFS P=0.5, 2 views, speculative", "DFS P=0.5, 2 views, batched 4, speculative"]
    for check in result["batched_dfs"]:
        assert check["same_candidates"] and check["max_logprob_diff"] < 1e-4 and check["speedup"] > 0
        assert check["batch_1"] == "DFS P=0.5, 2 views" and check["s_per_task"] > 0
    # rescoring across views against view after view, source by source: the same scores
    assert [r["candidates"] for r in result["rescoring"]] == list(sources)
    assert all(r["max_score_difference"] is None or r["max_score_difference"] < 1e-4 for r in result["rescoring"])
    # the DFS rows alone, from the cached stages (speculative ones named by the search's version)
    assert f"dfs_0.5_b4_spec{selection.SPECULATION_VERSION}" in json.loads((out / "stages.json").read_text())
    assert selection.main(args + ["--search_only"]) == 0
    alone = json.loads((out / "search.json").read_text())
    assert alone["batched_dfs"] == result["batched_dfs"] and (out / "search.md").read_text().count("\n") == 3
    # resumed: every stage is found finished (not run again), and the rows are the same
    stages = json.loads((out / "stages.json").read_text())
    spec = selection.SPECULATION_VERSION
    assert stages.pop(selection.PRECISION_KEY) == "float32"  # every stage pinned to the default precision
    assert set(stages) == {"greedy_2", "dfs_0.5", "dfs_0.5_b4", f"dfs_0.5_spec{spec}", f"dfs_0.5_b4_spec{spec}",
                           *(f"scores_{i}{ref}" for i in range(4)
                                                                  for ref in ("", "_view_after_view"))}
    logs = {p.name: p.stat().st_mtime_ns for p in out.glob("*.log")}
    assert selection.main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.log")} == logs
    assert json.loads((out / "selection.json").read_text())["rows"] == result["rows"]


def test_selection_stages_run_in_one_precision(tmp_path):
    """A folder's stages are pinned to one precision: recorded when new, kept when the same, and a
    run in another precision (or a folder from before the pin) is refused in one line."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import selection

    out = tmp_path / "sel"
    out.mkdir()
    selection.stage_precision(out, "float32")
    assert json.loads((out / "stages.json").read_text()) == {selection.PRECISION_KEY: "float32"}
    selection.stage_precision(out, "float32")
    with pytest.raises(SystemExit, match="run in float32, not --dtype auto"):
        selection.stage_precision(out, "auto")
    old = tmp_path / "old"
    old.mkdir()
    (old / "stages.json").write_text(json.dumps({"dfs_0.1": 517.6}))
    with pytest.raises(SystemExit, match="stages' default"):
        selection.stage_precision(old, "float32")


def test_matched_views_scale_with_the_search_time():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import selection

    assert selection.matched_views(8, greedy_s=100, search_s=300) == 24
    assert selection.matched_views(8, greedy_s=100, search_s=50) == 8  # never fewer than the base views


def test_formats_benchmark_counts_tokens_per_cell(tokenizer, eval_tasks):
    """Every cell costs at least one token in every format; the project's format (shape header and
    row numbers) costs more per cell than the bare rows of digits of the public checkpoints'."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import formats

    tasks = {t: eval_tasks[t] for t in list(eval_tasks)[:3]}
    result = formats.measure(tasks, tokenizer)
    rows = result["formats"]
    assert set(rows) == {"arc24", "architects", "nvarc"}
    assert all(r["grid_tokens_per_cell"] >= 1.0 for r in rows.values())
    assert rows["arc24"]["grid_tokens_per_cell"] > rows["architects"]["grid_tokens_per_cell"]
    assert rows["arc24"]["prompt_tokens_per_cell"] > rows["arc24"]["grid_tokens_per_cell"]  # fixed text on top
    assert result["physical_limit_per_cell"] > 1.0


def test_hidden_set_counts_inputs_with_a_real_prediction(tmp_path):
    """An input counts once it has a parsed, valid grid in any predictions file of the run (the
    timing log and invalid or unparseable records do not count); the table shows the counts."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import hidden_set

    tasks = {"a": {"train": [], "test": [{"input": [[1]]}, {"input": [[2]]}]}, "b": {"train": [], "test": [{"input": [[3]]}]}}
    run = tmp_path / "run"
    run.mkdir()
    lines = lambda recs: "".join(json.dumps(r) + "\n" for r in recs)
    (run / "first_shot.jsonl").write_text(lines([{"task_id": "a", "test_index": 0, "grid": [[1]]}]))
    (run / "predictions.jsonl").write_text(lines([{"task_id": "a", "test_index": 1, "grid": None},
                                                  {"task_id": "b", "test_index": 0, "grid": [[1, 2], [3]]},
                                                  {"task_id": "z", "test_index": 0, "grid": [[1]]}]))
    (run / "timing.jsonl").write_text(lines([{"task_id": "b", "test_index": 0, "grid": [[1]]}]))
    assert hidden_set.inputs_with_predictions(run, tasks) == {("a", 0)}
    row = {"label": "x", "commit": "c", "result": {"tasks": 2, "test_inputs": 3, "inputs_with_predictions": 1,
                                                  "fallback_inputs": 2, "tasks_with_a_prediction": 1,
                                                  "ttft_adapters": 0, "submission_valid": True, "score": 0.5,
                                                  "notebook_elapsed_s": 10.0, "deadline_s": 60.0}}
    # a row from before the engine and load columns reads as the transformers engine, load unknown
    assert hidden_set.table([row]).splitlines()[-1] == \
        "| x | c | transformers | - | 2 | 3 | 1 | 2 | 1 | 0 | yes | 50.0 % | 10.0 s / 60 s |"
    row.update(engine="auto", load_average_1min={"mean": 1.04, "max": 1.26})
    assert hidden_set.table([row]).splitlines()[-1] == \
        "| x | c | auto | 1.04, 1.26 | 2 | 3 | 1 | 2 | 1 | 0 | yes | 50.0 % | 10.0 s / 60 s |"


def test_hidden_set_config_is_the_shipped_2025_config_on_this_machine(tmp_path):
    """The experiment's notebook config is kaggle/configs/arc-prize-2025.yaml (flat: an older
    checkout's loader reads it) with only the local keys, the time and the tasks changed."""
    import yaml

    from pipeline.core.settings import config_dict, load_config
    sys.path.insert(0, str(REPO / "benchmarks"))
    import hidden_set

    values = hidden_set.experiment_config("x", 0.5, 3.0, 2, ["00576224", "007bbfb7"], "../../data/arc-agi-2")
    assert "extends" not in values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    got = config_dict(load_config(path))
    shipped = config_dict(load_config(hidden_set.SHIPPED_CONFIG))
    changed = {k for k in got if got[k] != shipped[k]}
    assert changed == set(hidden_set.LOCAL_KEYS) | set(hidden_set.KAGGLE_ONLY_KEYS) | {
        "title", "deadline_hours", "safety_margin_minutes", "stage_env", "local_source_dir", "local_tasks", "engine"}
    assert got["engine"] == "auto" and hidden_set.experiment_config(
        "x", 0.5, 3.0, 2, ["00576224"], "d", engine="transformers")["engine"] == "transformers"
    assert got["local_tasks"] == ["00576224", "007bbfb7"] and got["deadline_hours"] == 0.5
    assert got["stage_env"] == {**shipped["stage_env"], "OMP_NUM_THREADS": "2"}
    assert got["hardware"] is None and got["kaggle_datasets"] == []


def test_heldout_set_is_the_seeded_draw_disjoint_from_the_benchmarks_20(eval_tasks, tmp_path):
    """Issue 25's held-out 20: drawn again from the evaluation tasks they are the committed list,
    all among the 100 smallest after the benchmark's 20 (same size measure), none of those 20;
    `--task_set heldout` selects exactly them."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy
    from pipeline.core.tasks import smallest_tasks

    assert accuracy.heldout_task_ids(eval_tasks) == list(accuracy.TASKS_HELDOUT)
    assert len(set(accuracy.TASKS_HELDOUT)) == 20 and not set(accuracy.TASKS_HELDOUT) & set(accuracy.TASKS_20)
    order = list(smallest_tasks(eval_tasks, len(eval_tasks)))
    assert order[:20] == list(accuracy.TASKS_20)  # the benchmark's 20 are the 20 smallest by the same measure
    assert set(accuracy.TASKS_HELDOUT) <= set(order[20:120])
    assert accuracy.heldout_task_ids(eval_tasks, seed=accuracy.HELDOUT_SEED + 1) != list(accuracy.TASKS_HELDOUT)
    written = tmp_path / "heldout.json"
    assert accuracy.main(["--task-set", "heldout", "--write_tasks", str(written)]) == 0
    assert list(json.loads(written.read_text())) == list(accuracy.TASKS_HELDOUT)


def test_bf16_benchmark_smoke_measures_every_precision_on_the_dry_runs_settings(tiny_model_dir, tmp_path):
    """`benchmarks/bf16.py --smoke`: TTFT in fp32 and both bf16 modes, sampling with their adapters,
    one JSON and one Markdown table with the load average beside every row."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bf16.py"), "--smoke", "--model",
                           str(tiny_model_dir), "--threads", "1", "--output_dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "bf16.json").read_text())
    assert [r["precision"] for r in result["ttft"]] == ["float32", "autocast-bfloat16", "bfloat16"]
    for row in result["ttft"]:
        assert row["recorded_dtype"] == [row["precision"]] and row["s_per_step"] > 0 and row["load_before"]
        [curve] = [t["loss_curve"] for t in row["tasks"].values()]
        assert len(curve) == row["steps"] == 2
    rows = [(r["ttft_precision"], r["precision"]) for r in result["sampling"]]
    assert rows == [("float32", "float32"), ("float32", "bfloat16"), ("autocast-bfloat16", "bfloat16"),
                    ("bfloat16", "bfloat16")]
    assert all(r["generated_tokens_per_s"] > 0 and r["predictions"] == 2 and r["load_after"]
               for r in result["sampling"])
    assert result["sampling"][0]["differing_texts"] == []  # the reference against itself
    table = (tmp_path / "bf16.md").read_text()
    assert table.count("| autocast-bfloat16 |") >= 2 and "load average" in table and "Loss curve, task" in table
