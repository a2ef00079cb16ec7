"""TTFT's length gate (`ttft --max_task_tokens N --long_tasks skip|scale`, issue 25): a task whose
longest leave-one-out sample is over N tokens gets no TTFT, or its steps scaled by N / longest.

The rule on plain numbers, then the stage end to end on the tiny random Llama and the three
smallest evaluation tasks, the gate set between their longest samples (measured by the stage's
own profile, so the test holds whatever the tokenizer)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.core import adapters
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.files import read_json
from pipeline.core.tasks import task_size
from pipeline.ttft import ttft
from pipeline.ttft.budget import length_share, plan_units
from pipeline.ttft.data import TaskProfile, profile_task

REPO = Path(__file__).resolve().parents[2]
EVAL = REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
VERSION = "output-from-examples-v1"


def test_the_gate_keeps_short_tasks_and_skips_or_scales_long_ones():
    assert length_share(900, None) == length_share(500, 500) == length_share(500, 500, "scale") == 1.0
    assert length_share(1000, 500) == 0.0 and length_share(1000, 500, "scale") == 0.5
    profiles = [TaskProfile("a", 10, 3, 800.0, 1000), TaskProfile("b", 9, 3, 700.0, 900),
                TaskProfile("c", 5, 3, 100.0, 200)]
    shares = {p.task_id: length_share(p.max_sample_tokens, 500, "scale") for p in profiles}
    units = plan_units(profiles, 1, 1, shares)
    assert [(u.task_ids, u.step_share, u.steps(10)) for u in units] == [
        (("a",), 0.5, 5), (("b",), 500 / 900, 5), (("c",), 1.0, 10)]
    [pair, alone] = plan_units(profiles, 2, 1, shares)  # a group trains its smallest member's share
    assert pair.step_share == 0.5 and pair.steps(10) == 10 and alone.steps(10) == 10
    assert min(u.steps(1) for u in plan_units(profiles, 1, 1, {"a": 0.01})) == 1  # never below one step


@pytest.fixture(scope="module")
def gated(tokenizer, eval_tasks):
    """The three smallest evaluation tasks (2+ train pairs) and a gate between their longest samples."""
    ids = sorted((t for t in eval_tasks if len(eval_tasks[t]["train"]) >= 2),
                 key=lambda t: (task_size(eval_tasks[t]), t))[:3]
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    longest = {t: profile_task(t, eval_tasks[t], encoder, tokenizer, VERSION, 1024).max_sample_tokens for t in ids}
    gate = sorted(longest.values())[1]  # the middle one stays in, the longest is over it
    assert max(longest.values()) > gate
    return ids, longest, gate


@pytest.mark.parametrize("rule", ["skip", "scale"])
def test_the_stage_skips_or_scales_the_tasks_over_the_gate(tmp_path, tiny_model_dir, gated, rule):
    ids, longest, gate = gated
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = ttft.main(["--model", str(tiny_model_dir), "--dataset", str(EVAL), "--task_ids", *ids,
                          "--output_dir", str(tmp_path), "--steps", "4", "--min_steps", "4", "--max_seq_len", "1024",
                          "--learning_rate", "1e-2", "--lora_r", "4", "--devices", "cpu", "--no_progress",
                          "--prompt_version", VERSION, "--max_task_tokens", str(gate), "--long_tasks", rule])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert read_json(tmp_path / "cfg.json")["max_task_tokens"] == gate  # a resume with another gate is refused
    for task_id in ids:
        record = adapters.read_record(tmp_path, task_id)
        if longest[task_id] <= gate:
            assert record["status"] == "done" and record["steps"] == 4 and record["length_gated_from"] is None
        elif rule == "skip":
            assert record["status"] == "skipped" and record["steps"] == 0
            assert record["reason"] == (f"length gate: longest sample {longest[task_id]} tokens > "
                                        f"--max_task_tokens {gate}")
            assert not adapters.is_complete(tmp_path, task_id)  # sampling serves it the base model
        else:
            assert record["status"] == "done" and record["length_gated_from"] == 4
            assert record["steps"] == max(1, math.floor(4 * gate / longest[task_id])) < 4


def test_a_gate_below_one_token_is_refused(tmp_path, capsys):
    code = ttft.main(["--model", "embedded", "--dataset", str(EVAL), "--output_dir", str(tmp_path / "o"),
                      "--max_task_tokens", "0", "--devices", "cpu"])
    assert code == 1 and "--max_task_tokens must be >= 1, got 0" in capsys.readouterr().err
