"""The GPU benchmarks' CPU path: `--device cpu --smoke` runs the same code (model build, LoRA
training steps through the stage's trainer, generation through the transformers engine) on toy
sizes, so the scripts a GPU session runs once are known to work before the GPU is spent."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(name: str) -> str:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), "--device", "cpu", "--smoke"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_gpu_ttft_smoke_trains_and_reports_throughput():
    summary = json.loads(run_benchmark("gpu_ttft.py").strip().splitlines()[-1])
    assert summary["device"] == "cpu" and summary["results"]
    for row in summary["results"]:
        assert row["trainable_params"] > 0 and row["s_per_step"] > 0
        assert row["tokens_per_s"] > 0 and row["achieved_tflops"] > 0


def test_gpu_sampling_smoke_generates_and_reports_throughput():
    report = json.loads(run_benchmark("gpu_sampling.py"))
    assert report["device"] == "cpu" and report["engine"] == "transformers"
    batches = [row["batch"] for row in report["results"]]
    assert batches == sorted(batches) and len(batches) >= 2
    for row in report["results"]:
        assert 0 < row["generated_tokens"] <= row["batch"] * row["new_tokens"]
        assert row["generated_tokens_per_s"] > 0 and row["kv_bytes"] > 0
