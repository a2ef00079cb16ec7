"""Timing profile arithmetic on hand-made records.  Run: `python -m pytest -q tests/test_profiling.py`"""
from __future__ import annotations

import json

import pytest

from pipeline import __main__ as dispatcher
from pipeline.core.files import append_jsonl
from pipeline.planning.profile import (COMPUTE_PHASES, format_profile, load_records, max_concurrent, percentile,
                                profile, union_seconds)

from conftest import REPO, one_line_error


def ttft_records(device: str = "cpu") -> list[dict]:
    """One TTFT stage: orchestrator 80 s wall; load_model 5 s; tasks of 10, 20 and 40 s, each 90 %
    in its `train` phase and the rest in `save_adapter`; 100 tokens per second of task."""
    recs = [{"stage": "ttft", "event": "start", "seconds": 0.0, "t": 1.0, "workers": 1},
            {"stage": "ttft", "event": "phase", "task_id": None, "phase": "load_model", "seconds": 5.0,
             "time": 1005.0, "device": device, "peak_host_mb": 900.0, "peak_device_mb": None}]
    t = 1005.0
    for tid, sec in (("a", 10.0), ("b", 20.0), ("c", 40.0)):
        recs.append({"stage": "ttft", "event": "phase", "task_id": tid, "phase": "train", "seconds": 0.9 * sec,
                     "time": t + 0.9 * sec, "device": device})
        recs.append({"stage": "ttft", "event": "phase", "task_id": tid, "phase": "save_adapter",
                     "seconds": 0.1 * sec, "time": t + sec, "device": device})
        recs.append({"stage": "ttft", "event": "task", "task_id": tid, "seconds": sec, "time": t + sec,
                     "steps": 4, "tokens_trained": int(100 * sec), "device": device, "peak_host_mb": 1200.0})
        t += sec
    recs.append({"stage": "ttft", "event": "stage", "task_id": None, "seconds": 75.0, "time": t,
                 "tokens_trained": 7000, "device": device})
    recs.append({"stage": "ttft", "event": "end", "seconds": 80.0, "t": 81.0})
    return recs


def test_stage_totals_median_p90_max_rates_and_non_compute_share():
    s = profile(ttft_records())["stages"]["ttft"]
    assert s["status"] == "ok" and s["wall_source"] == "orchestrator"
    assert s["wall_s"] == 80.0 and s["workers"] == 1 and s["busy_s"] == 80.0
    assert s["tasks"] == 3
    assert s["task_median_s"] == 20.0
    assert s["task_p90_s"] == pytest.approx(36.0)   # rank 0.9 x 2 = 1.8: 20 + 0.8 x (40 - 20)
    assert s["task_max_s"] == 40.0
    assert s["compute_s"] == pytest.approx(63.0) and s["compute_source"] == "phases"
    assert s["non_compute_share"] == pytest.approx((80 - 63) / 80)
    assert s["non_compute_phases"] == {"save_adapter": 7.0, "load_model": 5.0}
    assert s["non_compute_other_s"] == pytest.approx(80 - 63 - 12)   # process start, outside any phase
    assert s["counters"] == {"tokens_trained": 7000, "steps": 12}     # from task records: stage total not added
    assert s["rates"]["trained_tok_s"] == pytest.approx(7000 / 80, rel=1e-4)
    assert s["rates"]["trained_tok_per_compute_s"] == pytest.approx(7000 / 63, rel=1e-4)
    assert s["peak_host_mb"] == 1200.0 and s["peak_device_mb"] is None and s["device"] == "cpu"


def test_percentile_interpolates_like_numpy():
    assert percentile([], 50) is None
    assert percentile([3.0], 90) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 90) == pytest.approx(46.0)


def test_interval_helpers():
    assert union_seconds([(0, 10), (5, 12), (20, 25)]) == 17
    assert max_concurrent([(0, 10), (5, 12), (20, 25)]) == 2
    assert max_concurrent([(0, 5), (5, 10)]) == 1   # touching intervals do not overlap


def test_parallel_workers_without_orchestrator_use_stage_record_intervals():
    recs = []
    for w, (start, end) in enumerate([(100.0, 160.0), (100.0, 150.0)]):
        recs.append({"stage": "sampling", "event": "stage", "task_id": None, "seconds": end - start, "time": end,
                     "device": f"gpu{w}"})
        recs.append({"stage": "sampling", "event": "task", "task_id": f"t{w}", "seconds": 40.0, "time": end - 1,
                     "predictions": 8, "prompt_tokens": 8000, "generated_tokens": 800, "device": f"gpu{w}"})
    prof = profile(recs)
    assert list(prof["stages"]) == ["sample"]                   # "sampling" is an alias of "sample"
    s = prof["stages"]["sample"]
    assert s["wall_s"] == 60.0 and s["workers"] == 2 and s["busy_s"] == 110.0
    assert s["compute_source"] == "tasks" and s["compute_s"] == 80.0   # no compute phase: task time
    assert s["rates"]["tok_s"] == pytest.approx(17600 / 110, rel=1e-4)
    assert s["rates"]["generated_tok_s"] == pytest.approx(1600 / 110, rel=1e-4)
    assert "no compute phase recorded" in format_profile(prof)


def test_skipped_failed_and_orchestrator_only_stages():
    recs = [{"stage": "install", "event": "skipped", "seconds": 0.0, "t": 2.0, "reason": "already importable"},
            {"stage": "vote", "event": "start", "seconds": 0.0, "t": 3.0, "workers": 1},
            {"stage": "vote", "event": "end", "seconds": 4.0, "t": 7.0},
            {"stage": "ttft", "event": "skipped", "task_id": "x", "seconds": 0.0, "time": 5.0, "reason": "too long"},
            {"stage": "ttft", "event": "failed", "task_id": "y", "seconds": 1.5, "time": 6.0}]
    prof = profile(recs)
    assert prof["stages"]["install"]["status"] == "skipped"
    assert prof["stages"]["vote"]["wall_s"] == 4.0 and prof["stages"]["vote"]["compute_s"] == 0.0
    assert prof["stages"]["vote"]["non_compute_share"] == 1.0
    assert (prof["stages"]["ttft"]["skipped"], prof["stages"]["ttft"]["failed"]) == (1, 1)
    assert prof["run"]["wall_s"] == 7.0   # the last orchestrator `t`


def test_run_share_over_all_stages():
    recs = ttft_records() + [{"stage": "vote", "event": "end", "seconds": 20.0, "t": 101.0}]
    run = profile(recs)["run"]
    assert run["busy_s"] == 100.0 and run["compute_s"] == pytest.approx(63.0)
    assert run["non_compute_share"] == pytest.approx(0.37)


def test_compute_phase_names_are_explicit():
    assert {"train", "generate"} <= COMPUTE_PHASES
    assert not {"load_model", "augment", "encode", "parse", "vote", "io"} & COMPUTE_PHASES


def test_load_records_reads_nested_files_and_ignores_a_torn_last_line(tmp_path):
    append_jsonl(tmp_path / "timing.jsonl", ttft_records()[:2])
    nested = tmp_path / "logs" / "worker1" / "timing.jsonl"
    append_jsonl(nested, ttft_records()[2:4])
    with open(nested, "a", encoding="utf-8") as f:
        f.write('{"stage": "ttft", "event": "task", "task_id": "torn", "sec')   # a killed writer
    recs = load_records(tmp_path)
    assert len(recs) == 4 and all(r.get("task_id") != "torn" for r in recs)
    assert load_records(nested) == ttft_records()[2:4]


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    run = tmp_path / "run"
    append_jsonl(run / "timing.jsonl", ttft_records())
    out = tmp_path / "profile.json"
    assert dispatcher.main(["profile", str(run), "--json", str(out), "--save"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[:3] == ["stage", "status", "tasks"]
    assert "ttft" in text and "21.2 %" in text and "target < 2 %: NOT met" in text and "projects the share" in text
    data = json.loads(out.read_text())
    assert data["stages"]["ttft"]["busy_s"] == 80.0
    assert (run / "profile.txt").read_text().strip() == text.strip()
    assert json.loads((run / "profile.json").read_text()) == data


def test_cli_errors(tmp_path, capsys):
    assert dispatcher.main(["profile", str(tmp_path / "missing")]) == 2
    one_line_error(capsys.readouterr().err, str(tmp_path / "missing"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert dispatcher.main(["profile", str(tmp_path / "empty"), "--save"]) == 1
    one_line_error(capsys.readouterr().err, str(tmp_path / "empty"), "no timing.jsonl records")
    assert list((tmp_path / "empty").iterdir()) == []  # --save wrote no empty profile


def test_records_of_a_killed_and_restarted_process_are_left_out(tmp_path, capsys):
    """A stage killed mid-task and its restart both write to the run's timing file; the profile
    counts the restart only and says how many records it left out."""
    import signal
    import subprocess
    import sys
    import textwrap

    from pipeline.planning.profile import main as profile_main, split_killed

    log = tmp_path / "timing.jsonl"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from pipeline.core.timing import TimingLog
        t = TimingLog({str(log)!r}, "ttft")
        t.record("phase", 2.0, None, phase="load_model")
        t.record("task", 50.0, "a", steps=10)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        t.record("stage", 60.0, None)
    """)
    assert subprocess.run([sys.executable, "-c", script, "kill"]).returncode == -signal.SIGKILL
    assert subprocess.run([sys.executable, "-c", script, "finish"]).returncode == 0
    from pipeline.core.files import read_jsonl
    records = list(read_jsonl(log))
    kept, killed = split_killed(records)
    assert len(killed) == 2 and {r["event"] for r in killed} == {"phase", "task"}
    assert [r["event"] for r in kept] == ["phase", "task", "stage"]
    assert profile_main([str(log)]) == 0
    out = capsys.readouterr().out
    assert "left out: 2 record(s) of 1 stage process(es) that were killed" in out


def test_the_two_record_writers_make_the_two_documented_shapes(tmp_path):
    """timing.py writes both shapes: a stage's (task_id, pid, unix time) and the notebook run's own
    (no task_id, `t` from the run's start); profile tells them apart by the missing task_id."""
    import time as clock

    from pipeline.core.files import read_jsonl
    from pipeline.planning.profile import is_orchestrator
    from pipeline.core.timing import TimingLog, TimingRecord, orchestrator_record

    path = tmp_path / "timing.jsonl"
    TimingLog(path, "sample").record("task", 1.5, "t1", predictions=2)
    orchestrator_record(path, "sample", "end", 2.25, since=clock.time() - 10, reason="", returncode=0)
    stage, run = list(read_jsonl(path))
    assert set(stage) <= set(TimingRecord.__annotations__)  # a stage's counters are all declared
    assert {"stage", "event", "seconds", "t"} <= set(run)    # the run's own, plus its stage's facts
    assert stage["task_id"] == "t1" and stage["pid"] > 0 and not is_orchestrator(stage)
    assert is_orchestrator(run) and 10 <= run["t"] < 70 and run["seconds"] == 2.25
    assert "reason" not in run and run["returncode"] == 0


def test_a_garbage_timing_file_is_named_with_its_line(tmp_path, capsys):
    """Before: `Expecting value: line 1 column 1 (char 0)` with no file (profile: a traceback)."""
    run = tmp_path / "run"
    append_jsonl(run / "timing.jsonl", ttft_records()[:2])
    with open(run / "timing.jsonl", "a", encoding="utf-8") as f:
        f.write("garbage\n")
    assert dispatcher.main(["profile", str(run)]) == 1
    one_line_error(capsys.readouterr().err, f"{run / 'timing.jsonl'}:3: not a JSON line")
    assert dispatcher.main(["plan", "--profile", str(run)]) == 2
    one_line_error(capsys.readouterr().err, f"{run / 'timing.jsonl'}:3: not a JSON line")
