"""TTFT stage: leave-one-out data, per-task adapters with exact resets, failures, deadline, resume.

    python -m pytest -q tests/test_ttft.py          # ~1-2 min on 2 CPU cores; -m "not slow" skips the CLI kill test

Real components throughout: the tiny random Llama of `tiny_model_dir`, the SmolLM2 tokenizer and
the three smallest ARC-AGI-1 evaluation tasks.  Steps are few and the learning rate high, so
every adapter visibly moves away from its start.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from pipeline.core import adapters
from pipeline.ttft import ttft
from pipeline.ttft import budget as ttft_budget
from pipeline.ttft import data as ttft_data
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.files import read_json, read_jsonl
from pipeline.core.tasks import task_size
from pipeline.training.lora import LoraSettings, build_lora_model, load_lora_model, trainable_state

REPO = Path(__file__).resolve().parents[2]
EVAL = REPO / "data" / "arc-agi-1" / "arc-agi_evaluation_challenges.json"
VERSION = "output-from-examples-v1"
LORA = LoraSettings(r=4, alpha=8, dropout=0.0).to_dict()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on 2 cores shared with other busy processes, two OpenMP threads spin at
    every barrier and a step runs ~10x slower; on idle cores the tiny model barely notices."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_ids(eval_tasks) -> list[str]:
    """The three smallest evaluation tasks with at least 2 train pairs (smallest first)."""
    ids = sorted((t for t in eval_tasks if len(eval_tasks[t]["train"]) >= 2),
                 key=lambda t: (task_size(eval_tasks[t]), t))[:3]
    return ids


def make_config(out: Path, model_dir: Path, **overrides) -> ttft.TTFTConfig:
    settings = dict(model=str(model_dir), output_dir=str(out), lora=LORA, steps=2, min_steps=1,
                    learning_rate=1e-2, warmup_ratio=0.0, max_seq_len=1024)
    settings.update(overrides)
    return ttft.TTFTConfig(**settings)


class OnTrainBegin(TrainerCallback):
    """Captures the trainable state when a unit's training begins: `states[key]`."""

    def __init__(self, states: dict, key):
        self.states, self.key = states, key

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.states[self.key] = trainable_state(model)


class OnTrainEnd(OnTrainBegin):
    """Captures the trainable state when a unit's training ends."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        pass

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.states[self.key] = trainable_state(model)


def statuses(out: Path, ids) -> dict:
    return {t: (adapters.read_record(out, t) or {}).get("status") for t in ids}


def has_adapter(out: Path, task_id: str) -> bool:
    return (adapters.adapter_dir(out, task_id) / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------- data

def test_samples_are_leave_one_out_of_train_pairs_and_never_show_a_test_input(tokenizer, eval_tasks, small_ids):
    task_id = next(t for t in small_ids if len(eval_tasks[t]["train"]) == 3)
    train = eval_tasks[task_id]["train"]
    # a test input of a shape no train grid has: it must never appear in any sample
    task = {"train": train, "test": [{"input": [[3] * 23]}]}
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    stream = ttft_data.TaskStream({task_id: task}, encoder, tokenizer, VERSION, 4096, seed=1)
    rng = np.random.default_rng(0)
    targets, views = set(), set()
    for _ in range(40):
        encoded, info = stream.draw(rng)
        text = tokenizer.decode(encoded["input_ids"])
        completion = tokenizer.decode([i for i, label in zip(encoded["input_ids"], encoded["labels"]) if label >= 0])
        aug = info["augmentation"]
        assert 0 <= info["target"] < len(train)
        expected = encoder.to_text(aug.apply_grid(train[info["target"]]["output"]))
        assert completion.startswith(expected.removeprefix("```grid")), "the target is the augmented train output"
        assert text.count("## Example") == len(train) - 1
        assert "1x23" not in text and "23x1" not in text
        targets.add(info["target"])
        views.add((aug.hflip, aug.n_rot90, aug.color_map))
    assert targets == set(range(len(train))), "every train pair becomes the target"
    assert len(views) > 30, "re-augmented on every draw"


def test_fitting_drops_the_last_examples_and_reports_tasks_that_never_fit(tokenizer, eval_tasks, small_ids):
    task_id = next(t for t in small_ids if len(eval_tasks[t]["train"]) == 3)
    task, encoder = eval_tasks[task_id], create_grid_encoder(DEFAULT_ENCODER)
    full = ttft_data.profile_task(task_id, task, encoder, tokenizer, VERSION, 4096)
    assert full.status is None and full.n_train == 3
    train = task["train"]

    def length(pairs, target):
        return len(ttft_data.fit_leave_one_out(pairs, target, encoder, tokenizer, VERSION, 10**6)["input_ids"])

    # room for one example (the first other pair) but not two: every sample keeps exactly one
    limit = max(length([p for i, p in enumerate(train) if i != t][:1] + [train[t]], 1) for t in range(3))
    assert limit < min(length(train, t) for t in range(3))
    tight = ttft_data.profile_task(task_id, task, encoder, tokenizer, VERSION, limit)
    assert tight.status is None and tight.max_sample_tokens <= limit < full.max_sample_tokens
    stream = ttft_data.TaskStream({task_id: task}, encoder, tokenizer, VERSION, limit, seed=0)
    for encoded in [next(iter(stream)) for _ in range(5)]:
        assert len(encoded["input_ids"]) <= limit
        assert tokenizer.decode(encoded["input_ids"]).count("## Example") == 1
    too_long = ttft_data.profile_task(task_id, task, encoder, tokenizer, VERSION, 100)
    assert too_long.status == "too_long" and "max_seq_len=100" in too_long.reason


def test_budget_scales_every_unit_to_its_fair_share_and_skips_below_min_steps():
    budget = ttft_budget.Budget(time.time() + 100 + ttft_budget.SAFETY_S, workers=1, prior_seconds_per_token=0.001)
    # 4 units of 100 steps × 1000 tokens = 100 s each (+2 s overhead): 100 s left -> ~1/4 of the steps
    steps, why = budget.plan(100, 10, 1000, remaining_tokens=4 * 100 * 1000, remaining_units=4)
    assert why is None and 20 <= steps <= 25
    # when everything left fits, full steps
    assert budget.plan(50, 10, 1000, remaining_tokens=50 * 1000, remaining_units=1) == (50, None)
    # a fair share under min_steps still runs min_steps when they fit the time left
    assert budget.plan(100, 30, 1000, remaining_tokens=40 * 100 * 1000, remaining_units=40) == (30, None)
    # not even min_steps fit: skipped, saying why
    steps, why = budget.plan(1000, 200, 1000, remaining_tokens=1000 * 1000, remaining_units=1)
    assert steps == 0 and why.startswith("deadline")
    # measured speed replaces the prior
    budget.update(train_seconds=10.0, tokens=1000.0, unit_seconds=11.0)
    assert budget.seconds_per_token == pytest.approx(0.01) and budget.overhead == pytest.approx(1.0)
    assert ttft_budget.Budget(None, 1, 1.0).plan(300, 30, 10**6, 10**9, 100) == (300, None)


# ----------------------------------------------------------------------------- the stage, in process

def test_reset_restores_the_initial_adapter_exactly_before_every_task(tmp_path, tiny_model_dir, eval_tasks, small_ids):
    before, after = {}, {}

    def callbacks(ids):
        return [OnTrainBegin(before, ids), OnTrainEnd(after, ids)]

    tasks = {t: eval_tasks[t] for t in small_ids}
    summary = ttft.run_ttft(tasks, make_config(tmp_path, tiny_model_dir), task_callbacks=callbacks, progress=False)

    assert summary["counts"]["done"] == 3
    order = sorted(before, key=lambda k: read_json(adapters.adapter_dir(tmp_path, k[0]) / "record.json")["time"])
    initial = before[order[0]]
    for key in order[1:]:
        assert before[key].keys() == initial.keys()
        assert all(torch.equal(before[key][name], initial[name]) for name in initial), f"{key} did not start fresh"
    for key in order:
        assert not all(torch.equal(after[key][name], initial[name]) for name in initial), f"{key} did not train"
    lora_b = [n for n in initial if "lora_B" in n]
    assert lora_b and all(not initial[n].any() for n in lora_b), "a fresh LoRA starts with B = 0"
    for task_id in small_ids:
        record = adapters.read_record(tmp_path, task_id)
        assert record["steps"] == 2 and record["tokens_trained"] > 0 and record["loss_curve"]
        assert (adapters.adapter_dir(tmp_path, task_id) / "adapter_config.json").is_file()
    assert read_json(tmp_path / "cfg.json")["prompt_version"] == VERSION


def test_two_identical_runs_give_identical_fresh_adapters(tmp_path, tiny_model_dir, eval_tasks, small_ids):
    """A fresh LoRA's initialisation is seeded: the same task and seed give the same adapter,
    whatever the global RNG did before; another seed gives another one."""
    from safetensors.torch import load_file

    tasks = {small_ids[0]: eval_tasks[small_ids[0]]}
    weights = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(1000 + len(weights))  # a different global RNG state before every run
        ttft.run_ttft(tasks, make_config(tmp_path / run, tiny_model_dir, seed=seed), progress=False)
        weights.append(load_file(adapters.adapter_dir(tmp_path / run, small_ids[0]) / "adapter_model.safetensors"))
    a, b, c = weights
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not all(torch.equal(a[name], c[name]) for name in a)


def test_a_task_that_raises_or_diverges_fails_alone_and_the_others_complete(tmp_path, tiny_model_dir, eval_tasks,
                                                                          small_ids):
    raising, diverging, healthy = small_ids
    begin = {}

    class Raise(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("injected failure")

    class Diverge(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(math.nan)

    def callbacks(ids):
        extra = {raising: [Raise()], diverging: [Diverge()]}.get(ids[0], [])
        return [OnTrainBegin(begin, ids), *extra]

    tasks = {t: eval_tasks[t] for t in small_ids}
    summary = ttft.run_ttft(tasks, make_config(tmp_path, tiny_model_dir), task_callbacks=callbacks, progress=False)

    assert summary["counts"] == {"done": 1, "failed": 2, "too_long": 0, "skipped": 0}
    assert statuses(tmp_path, small_ids) == {raising: "failed", diverging: "failed", healthy: "done"}
    assert "injected failure" in adapters.read_record(tmp_path, raising)["error"]
    assert "NonFiniteLoss" in adapters.read_record(tmp_path, diverging)["error"]
    assert not has_adapter(tmp_path, raising) and not has_adapter(tmp_path, diverging)
    assert has_adapter(tmp_path, healthy)
    # whatever failed before it, the healthy task started from the initial adapter
    states = list(begin.values())
    assert all(torch.equal(s[n], states[0][n]) for s in states for n in states[0])
    failed = [r for r in read_jsonl(tmp_path / "timing.jsonl") if r["event"] == "failed"]
    assert {r["task_id"] for r in failed} == {raising, diverging}


def test_an_out_of_memory_task_is_retried_once_with_shorter_samples(tmp_path, tiny_model_dir, eval_tasks):
    task_id = min((t for t in eval_tasks if len(eval_tasks[t]["train"]) >= 4),
                  key=lambda t: (task_size(eval_tasks[t]), t))
    attempts, begin = [], {}

    class OutOfMemory(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    def callbacks(ids):
        attempts.append(ids)
        return [OnTrainBegin(begin, len(attempts)), *([OutOfMemory()] if len(attempts) == 1 else [])]

    config = make_config(tmp_path, tiny_model_dir, max_seq_len=4096)
    ttft.run_ttft({task_id: eval_tasks[task_id]}, config, task_callbacks=callbacks, progress=False)

    record = adapters.read_record(tmp_path, task_id)
    assert len(attempts) == 2 and record["status"] == "done"
    assert "OutOfMemoryError" in record["oom_retry"]["after"]
    assert record["max_seq_len"] == record["oom_retry"]["max_seq_len"] < 4096
    assert record["max_sample_tokens"] <= record["max_seq_len"]
    assert all(torch.equal(begin[2][n], begin[1][n]) for n in begin[1]), "the retry starts from the initial adapter"


def test_continuing_an_adapter_starts_from_its_weights_and_reads_its_cfg(tmp_path, tiny_model_dir, eval_tasks,
                                                                         small_ids):
    from pipeline.core.models import load_model

    adapter = tmp_path / "pretrained"
    model = build_lora_model(load_model(tiny_model_dir), LoraSettings(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    model.save_pretrained(str(adapter))
    encoder = "GridCodeBlockEncoder(MinimalGridEncoder())"
    run_config = {"grid_encoder": encoder, "prompt_version": "output-from-examples-v0"}
    (adapter / "cfg.json").write_text(json.dumps(run_config))
    expected = trainable_state(load_lora_model(load_model(tiny_model_dir), adapter))

    out = tmp_path / "out"
    args = ttft.build_parser().parse_args(["--model", str(tiny_model_dir), "--adapter_path", str(adapter),
                                           "--dataset", str(EVAL), "--output_dir", str(out), "--steps", "1",
                                           "--max_seq_len", "1024", "--learning_rate", "1e-2"])
    config = ttft.config_from_args(args)
    assert (config.grid_encoder, config.prompt_version, config.lora["r"]) == (encoder, "output-from-examples-v0", 4)
    begin = {}
    task_id = small_ids[0]
    ttft.run_ttft({task_id: eval_tasks[task_id]}, config, task_callbacks=lambda ids: [OnTrainBegin(begin, ids)],
                  progress=False)

    [start] = begin.values()
    assert start.keys() == expected.keys()
    assert all(torch.equal(start[n], expected[n]) for n in expected)
    record = adapters.read_record(out, task_id)
    assert record["status"] == "done" and record["adapter_path"] == str(adapter)
    assert record["grid_encoder"] == encoder and record["lora"]["r"] == 4
    assert read_json(out / "cfg.json")["grid_encoder"] == encoder
    assert read_json(adapters.adapter_dir(out, task_id) / "adapter_config.json")["r"] == 4
    with pytest.raises(ttft.ConfigError, match="--lora_r"):
        ttft.config_from_args(ttft.build_parser().parse_args([*map(str, ["--model", tiny_model_dir, "--adapter_path",
                                                                          adapter, "--dataset", EVAL, "--output_dir",
                                                                          out, "--lora_r", 8])]))


def test_cli_records_a_too_long_task_without_adapter_and_goes_on(tmp_path, tiny_model_dir, eval_tasks, small_ids,
                                                                 capsys):
    largest = max(eval_tasks, key=lambda t: (task_size(eval_tasks[t]), t))
    out = tmp_path / "out"
    code = ttft.main(["--model", str(tiny_model_dir), "--dataset", str(EVAL), "--task_ids", largest, small_ids[0],
                      "--output_dir", str(out), "--steps", "1", "--max_seq_len", "1024", "--devices", "cpu",
                      "--lora_r", "4", "--no_progress"])

    assert code == 0
    assert statuses(out, [largest, small_ids[0]]) == {largest: "too_long", small_ids[0]: "done"}
    record = adapters.read_record(out, largest)
    assert "max_seq_len=1024" in record["reason"] and record["steps"] == 0
    assert sorted(p.name for p in adapters.adapter_dir(out, largest).iterdir()) == ["record.json"]
    assert read_json(out / "summary.json")["counts"] == {"done": 1, "failed": 0, "too_long": 1, "skipped": 0}
    skipped = [r for r in read_jsonl(out / "timing.jsonl") if r["event"] == "skipped"]
    assert [r["task_id"] for r in skipped] == [largest] and skipped[0]["reason"].startswith("too_long")
    assert "1 done, 0 failed, 1 too_long, 0 skipped" in capsys.readouterr().out


def test_grouped_mode_trains_one_adapter_shared_by_the_group(tmp_path, tiny_model_dir, eval_tasks, small_ids):
    pair = small_ids[:2]
    summary = ttft.run_ttft({t: eval_tasks[t] for t in pair}, make_config(tmp_path, tiny_model_dir, group_size=2,
                                                                          steps=1), progress=False)
    assert summary["counts"]["done"] == 2
    records = [adapters.read_record(tmp_path, t) for t in pair]
    assert all(r["steps"] == 2 and sorted(r["group"]) == sorted(pair) for r in records), "k tasks train k × steps"
    weights = [(adapters.adapter_dir(tmp_path, t) / "adapter_model.safetensors").read_bytes() for t in pair]
    assert weights[0] == weights[1]


class ShiftedClock:
    """Stands in for the TTFT modules' `time`: real time plus `offset`, which a test moves when
    something happens (the deadline comes at an event, not after seconds of a loaded machine)."""

    def __init__(self):
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name):
        return getattr(time, name)


def test_a_deadline_too_short_for_all_tasks_skips_the_rest_cleanly(tmp_path, tiny_model_dir, eval_tasks, small_ids,
                                                                  monkeypatch):
    from pipeline.ttft import worker as ttft_worker
    clock = ShiftedClock()
    for module in (ttft, ttft_budget, ttft_worker):
        monkeypatch.setattr(module, "time", clock)
    deadline_at = time.time() + 600.0  # however slow the start-up, the first task begins well before it

    class LongFirstTask(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            clock.offset = deadline_at - 1.0 - time.time()  # the first task ate the budget: 1 s is left

    first = []

    def callbacks(ids):
        first.append(ids[0])
        return [LongFirstTask()] if len(first) == 1 else []

    tasks = {t: eval_tasks[t] for t in small_ids}
    summary = ttft.run_ttft(tasks, make_config(tmp_path, tiny_model_dir, steps=2, min_steps=1),
                            deadline_at=deadline_at, task_callbacks=callbacks, progress=False)

    assert clock.offset > 0, "the first task trained"
    assert clock.time() < deadline_at + 60.0  # only the running task's save may overrun (slack for a loaded CI)
    assert len(first) == 1, "only the first task started"
    rest = set(small_ids) - set(first)
    assert statuses(tmp_path, small_ids) == {first[0]: "done", **{t: "skipped" for t in rest}}
    assert adapters.read_record(tmp_path, first[0])["steps"] >= 1
    assert summary["counts"] == {"done": 1, "failed": 0, "too_long": 0, "skipped": 2}
    for task_id in rest:
        assert adapters.read_record(tmp_path, task_id)["reason"].startswith("deadline")
        assert not has_adapter(tmp_path, task_id)
    skipped = {r["task_id"] for r in read_jsonl(tmp_path / "timing.jsonl") if r["event"] == "skipped"}
    assert skipped == rest


# ----------------------------------------------------------------------------- the CLI, killed and resumed

@pytest.mark.slow
def test_a_killed_run_resumes_with_only_the_missing_tasks_on_two_worker_processes(tmp_path, tiny_model_dir,
                                                                                  small_ids):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pipeline", "ttft", "--model", str(tiny_model_dir), "--dataset", str(EVAL),
            "--task_ids", *small_ids, "--output_dir", str(out), "--steps", "2", "--max_seq_len", "1024",
            "--lora_r", "4", "--learning_rate", "1e-2", "--no_progress"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "first.log"
    with open(log, "wb") as stderr:
        first = subprocess.Popen([*argv, "--devices", "cpu"], cwd=REPO, env=env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        give_up = time.time() + 240
        while not any(s == "done" for s in statuses(out, small_ids).values()):
            assert first.poll() is None, log.read_text()[-2000:]
            assert time.time() < give_up, "no task finished"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    done_before = {t for t, s in statuses(out, small_ids).items() if s == "done"}
    assert 1 <= len(done_before) < 3
    stamps = {t: (adapters.adapter_dir(out, t) / "record.json").stat().st_mtime_ns for t in done_before}

    restart = time.time()
    second = subprocess.run([*argv, "--devices", "cpu,cpu"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)

    assert second.returncode == 0, second.stderr[-3000:]
    assert "3 done, 0 failed, 0 too_long, 0 skipped" in second.stdout
    assert all(s == "done" for s in statuses(out, small_ids).values())
    assert {t: (adapters.adapter_dir(out, t) / "record.json").stat().st_mtime_ns for t in done_before} == stamps
    records = [r for r in read_jsonl(out / "timing.jsonl") if r["time"] >= restart]
    assert {r["task_id"] for r in records if r["event"] == "skipped"} == done_before
    assert {r["task_id"] for r in records if r["event"] == "task"} == set(small_ids) - done_before
    assert sorted(r["worker"] for r in records if r["event"] == "stage") == [0, 1], "two worker processes"
    assert read_json(out / "summary.json")["resumed"] == len(done_before)


def test_a_misspelt_lora_target_stops_before_any_worker(tiny_model_dir):
    ttft.check_lora_targets(tiny_model_dir, {"target_modules": ["q_proj", "v_proj"]})
    ttft.check_lora_targets(tiny_model_dir, {"target_modules": ["all-linear"]})
    with pytest.raises(ttft.ConfigError, match="--lora_target: .*qv_proj.*linear and embedding layers are:.*o_proj"):
        ttft.check_lora_targets(tiny_model_dir, {"target_modules": ["q_proj", "qv_proj"]})


def test_anytime_order_goes_smallest_first_when_the_plan_does_not_fit():
    units = [ttft_budget.Unit(i, (f"t{i}",), tokens) for i, tokens in enumerate((900.0, 500.0, 100.0))]  # largest first
    same, why = ttft_budget.anytime_order(units, 10, 2, None, 1e-3)
    assert same == units and "no deadline" in why
    fits, why = ttft_budget.anytime_order(units, 10, 2, 3600.0, 1e-3)  # (3x2 s + 15,000 tokens x 1 ms) / 2 = 10.5 s
    assert [u.task_ids for u in fits] == [("t0",), ("t1",), ("t2",)] and "largest first" in why
    binding, why = ttft_budget.anytime_order(units, 10, 2, 5.0, 1e-3)
    assert [u.task_ids for u in binding] == [("t2",), ("t1",), ("t0",)] and "smallest first" in why
    assert [u.index for u in binding] == [0, 1, 2]
    one_worker, why = ttft_budget.anytime_order(units, 10, 1, 3600.0, 1e-3)
    assert one_worker[0].task_ids == ("t2",) and "one worker" in why


def test_under_a_binding_deadline_the_small_tasks_are_trained_first(tmp_path, tiny_model_dir, eval_tasks, small_ids):
    """One worker with a deadline: the queue runs smallest first (the log says so)."""
    tasks = {t: eval_tasks[t] for t in small_ids}
    ttft.run_ttft(tasks, make_config(tmp_path, tiny_model_dir), deadline_at=time.time() + 600, progress=False)
    [order] = [r for r in read_jsonl(tmp_path / "timing.jsonl") if r.get("phase") == "order"]
    assert "smallest first" in order["order"]
    trained = sorted(small_ids, key=lambda t: read_json(adapters.adapter_dir(tmp_path, t) / "record.json")["time"])
    sizes = [task_size(eval_tasks[t]) for t in trained]
    assert sizes == sorted(sizes)


def test_a_resumed_output_dir_must_hold_the_same_settings(tmp_path):
    """TTFT refuses to mix runs in one output folder: any setting that changes a trained adapter
    (LoRA, prompt version, learning rate, steps, ...) is a ConfigError naming each differing key;
    where the timing goes, memory savings and the deadline's floor may change.  Before, another
    learning rate resumed a finished folder, kept the old adapters and rewrote cfg.json to claim
    the new rate."""
    from pipeline.core.files import write_json_atomic
    from pipeline.core.model_cfg import RUN_CONFIG

    first = make_config(tmp_path, Path("m"))
    write_json_atomic(tmp_path / RUN_CONFIG, first.run_config())
    ttft.check_run_config(tmp_path, make_config(tmp_path, Path("m"), timing_log="t.jsonl", min_steps=2,
                                                gradient_checkpointing=True).run_config())
    other_lora = make_config(tmp_path, Path("m"), lora={**LORA, "r": 8})
    with pytest.raises(ttft.ConfigError, match="holds a TTFT run with other settings \\(lora: "):
        ttft.check_run_config(tmp_path, other_lora.run_config())
    with pytest.raises(ttft.ConfigError, match="prompt_version: 'output-from-examples-v1' .* vs 'output-from-examples-v0'"):
        ttft.check_run_config(tmp_path, make_config(tmp_path, Path("m"), prompt_version="output-from-examples-v0")
                              .run_config())
    with pytest.raises(ttft.ConfigError, match=r"\(learning_rate: 0.01 \(in .*\) vs 0.001; steps: 2 \(in .*\) vs 7\)"):
        ttft.check_run_config(tmp_path, make_config(tmp_path, Path("m"), learning_rate=1e-3, steps=7).run_config())
    assert (tmp_path / RUN_CONFIG).read_text() == json.dumps(first.run_config()) + "\n"  # left as it was


def test_a_foreign_output_dir_and_a_nan_learning_rate_are_refused(tmp_path, capsys):
    """Before: `--learning_rate nan` exited 0 with every task failed."""
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ttft.ConfigError, match="did not make \\(it holds notes.txt; no cfg.json\\)"):
        ttft.check_run_config(tmp_path, make_config(tmp_path, Path("m")).run_config())
    for rate in ("nan", "0", "-1e-4", "inf"):
        args = ttft.build_parser().parse_args(["--model", "m", "--dataset", "d", "--output_dir", str(tmp_path / "o"),
                                               f"--learning_rate={rate}"])
        with pytest.raises(ttft.ConfigError, match=f"--learning_rate must be a finite number > 0, got {float(rate)}"):
            ttft.config_from_args(args)


def test_the_budget_imports_no_torch_itself():
    """budget, the scheduler's arithmetic, imports no torch of its own (that the modules import
    downwards only, data <- budget <- worker <- ttft, is tests/test_layout.py's no-circle check)."""
    import ast

    tree = ast.parse((REPO / "pipeline" / "ttft" / "budget.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "torch" not in imported


def ttft_args(tmp_path, *flags):
    return ttft.build_parser().parse_args(["--model", "embedded", "--dataset", str(EVAL), "--output_dir",
                                           str(tmp_path / "out"), *flags])


def test_a_fresh_lora_takes_the_one_set_of_lora_defaults_and_finetune_takes_the_same(tmp_path):
    from pipeline.training import finetune
    from pipeline.training.lora import LORA

    assert ttft.config_from_args(ttft_args(tmp_path)).lora == LORA.to_dict()
    assert finetune.lora_settings(finetune.FinetuneConfig()) == LORA
    # a flag changes its setting only; the others stay the defaults
    assert ttft.config_from_args(ttft_args(tmp_path, "--lora_r", "8")).lora == {**LORA.to_dict(), "r": 8}
    assert ttft.config_from_args(ttft_args(tmp_path, "--lora_dropout", "0")).lora == {**LORA.to_dict(), "dropout": 0.0}


def test_lora_rank_0_is_refused_as_finetune_refuses_it_not_silently_made_the_default(tmp_path, capsys):
    """`--lora_r 0` used to become 32 (`args.lora_r or 32`). finetune refuses rank 0 (full fine-tuning is
    its --no-use_lora; TTFT always trains an adapter): ttft refuses it too, in one line naming the flag."""
    from conftest import one_line_error
    from pipeline.training import finetune

    with pytest.raises(ttft.ConfigError, match=r"--lora_r\) must be >= 1, got 0"):
        ttft.config_from_args(ttft_args(tmp_path, "--lora_r", "0"))
    assert ttft.main(["--model", "embedded", "--dataset", str(EVAL), "--output_dir", str(tmp_path / "out"),
                      "--lora_r", "0"]) == 1
    one_line_error(capsys.readouterr().err, "ttft: error", "--lora_r", "got 0")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ttft.ConfigError, match=r"--lora_r\) must be >= 1, got 0"):
        finetune.check_config(finetune.FinetuneConfig(lora_r=0, output_dir=str(tmp_path / "ft"),
                                                      train_datasets=[[str(EVAL), "output-from-examples-v1"]]))


# ----------------------------------------------------------------------------- NVARC's recipe (issue 23)

def test_copies_are_drawn_once_and_every_epoch_trains_each_of_them_once(tokenizer, eval_tasks, small_ids):
    task_id = small_ids[0]
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    stream = ttft_data.TaskStream({task_id: eval_tasks[task_id]}, encoder, tokenizer, VERSION, 4096, seed=1, copies=5)
    samples = iter(stream)
    epochs = [[tuple(next(samples)["input_ids"]) for _ in range(5)] for _ in range(3)]
    assert len(set(epochs[0])) > 1, "each copy is its own augmentation"
    assert sorted(epochs[1]) == sorted(epochs[2]) == sorted(epochs[0]), "the same copies, each once per epoch"
    assert epochs[1] != epochs[0] or epochs[2] != epochs[0], "in a fresh order"
    endless = iter(ttft_data.TaskStream({task_id: eval_tasks[task_id]}, encoder, tokenizer, VERSION, 4096, seed=1))
    assert len({tuple(next(endless)["input_ids"]) for _ in range(10)}) > 5, "without copies: a new draw every step"


def test_a_fresh_lora_on_the_embeddings_trains_copies_saves_small_and_serves_the_same_logits(
        tmp_path, tiny_model_dir, eval_tasks, small_ids):
    """The NVARC TTFT recipe on the tiny model (tied embedding and head): 3 copies x 1 epoch is 3
    steps; the adapter holds only LoRA weights (no copy of the embedding), reloads to the trained
    weights' logits, and the transformers engine serves it with those logits (unmerged: merging
    either delta into the tied weight would change the other layer), leaving the base untouched."""
    from safetensors.torch import load_file

    from pipeline.core.models import load_model
    from pipeline.core.settings import TTFT, ttft_step_count
    from pipeline.sampling.engines import make_engine
    from pipeline.sampling.transformers_engine import TransformersEngine
    from pipeline.training.lora import lora_target_modules

    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=lora_target_modules(["all-linear+embeddings"]))
    task_id, trained = small_ids[0], {}
    config = make_config(tmp_path, tiny_model_dir, lora=lora.to_dict(), copies=3, epochs=1,
                         steps=ttft_step_count(TTFT.steps, 3, 1, 1))
    ttft.run_ttft({task_id: eval_tasks[task_id]}, config, progress=False,
                  task_callbacks=lambda ids: [OnTrainEnd(trained, ids)])
    record = adapters.read_record(tmp_path, task_id)
    assert (record["status"], record["steps"], record["copies"]) == ("done", 3, 3)
    folder = adapters.adapter_dir(tmp_path, task_id)
    saved = load_file(folder / "adapter_model.safetensors")
    assert any("lora_embedding_A" in k for k in saved) and any("lm_head.lora_B" in k for k in saved)
    assert all("lora_" in k for k in saved), "no copy of the base embedding or head in the adapter"

    # the trained weights, the reloaded adapter and the engine serving it: the same logits
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    base = load_model(tiny_model_dir)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        reference = build_lora_model(load_model(tiny_model_dir), lora)
        for name, p in reference.named_parameters():
            if p.requires_grad:
                p.copy_(trained[(task_id,)][name])
        expected = reference(input_ids=ids).logits
        reloaded = load_lora_model(load_model(tiny_model_dir), folder, trainable=False)(input_ids=ids).logits
    assert not torch.allclose(expected, base_logits), "the adapter changes the logits"
    torch.testing.assert_close(reloaded, expected)
    engine = TransformersEngine(tiny_model_dir, batch_size=2)
    with torch.no_grad():
        with engine.serving(str(folder)) as model:
            torch.testing.assert_close(model(input_ids=ids).logits, expected)
        with engine.serving(None) as model:
            assert torch.equal(model(input_ids=ids).logits, base_logits), "the base model is restored"
    engine.close()
    with pytest.raises(ValueError, match="LoRA on embed_tokens or lm_head is not served by vLLM.*--engine transformers"):
        make_engine("vllm", tiny_model_dir, adapters=[str(folder)])
# ----------------------------------------------------------------------------- bf16 on CPU

class PrecisionSeen(TrainerCallback):
    """Records the dtypes the Trainer trains with: the LoRA's, the base projections' and its bf16 flag."""

    def __init__(self, seen: dict):
        self.seen = seen

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        params = list(model.named_parameters())
        self.seen.update(lora={p.dtype for _, p in params if p.requires_grad},
                         base={p.dtype for n, p in params if not p.requires_grad and n.endswith("proj.base_layer.weight")},
                         bf16=args.bf16)


@pytest.mark.parametrize("precision", ["bfloat16", "autocast-bfloat16"])
def test_bf16_ttft_trains_an_fp32_lora_whose_loss_falls_and_fp32_sampling_serves_it(
        precision, tmp_path, tiny_model_dir, tokenizer, eval_tasks, small_ids):
    """Both bf16 modes on CPU: bf16 base weights (or fp32 ones under autocast), the LoRA and its
    optimizer in fp32, the loss falls over the steps; the saved adapter serves an fp32 engine."""
    from pipeline.sampling.generation import Request
    from pipeline.sampling.plan import build_plan
    from pipeline.sampling.transformers_engine import TransformersEngine

    task_id, seen = small_ids[0], {}
    out = tmp_path / precision
    config = make_config(out, tiny_model_dir, steps=8, torch_dtype=precision)
    summary = ttft.run_ttft({task_id: eval_tasks[task_id]}, config, progress=False,
                            task_callbacks=lambda ids: [PrecisionSeen(seen)])
    assert summary["counts"]["done"] == 1
    record = adapters.read_record(out, task_id)
    assert record["torch_dtype"] == precision and record["steps"] == 8
    assert seen["lora"] == {torch.float32} and seen["bf16"] is True
    assert seen["base"] == {torch.bfloat16 if precision == "bfloat16" else torch.float32}
    losses = [loss for _, loss in record["loss_curve"]]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses

    plan = build_plan({task_id: eval_tasks[task_id]}, tokenizer, create_grid_encoder(DEFAULT_ENCODER), VERSION, 1,
                      max_tokens=6, max_model_len=1024)
    engine = TransformersEngine(tiny_model_dir, dtype="float32")
    try:
        adapter = str(adapters.adapter_dir(out, task_id))
        tuned, base = engine.generate([Request(plan[0].prompt_ids, 6, adapter), Request(plan[0].prompt_ids, 6)])
        assert next(engine.model.parameters()).dtype == torch.float32
        assert tuned.n_tokens > 0 and math.isfinite(tuned.cumulative_logprob)
        assert tuned.cumulative_logprob != base.cumulative_logprob  # the adapter is served, not ignored
    finally:
        engine.close()


def test_a_training_task_prints_its_step_for_the_watchdog_at_the_heartbeat(capsys):
    """A long task on a slow CPU trains for longer than the run's watchdog allows a silent stage:
    the guard prints the task's step every heartbeat (of an injected clock), not every step."""
    from types import SimpleNamespace

    from pipeline.ttft.worker import _make_guard

    now = [0.0]
    guard = _make_guard(None, None, label="66e6c45b", heartbeat_s=60.0, clock=lambda: now[0])
    control = SimpleNamespace(should_training_stop=False)
    printed = []
    for step, t in [(1, 10.0), (2, 59.0), (3, 61.0), (4, 100.0), (5, 121.5)]:
        now[0] = t
        guard.on_step_end(None, SimpleNamespace(global_step=step, max_steps=128), control)
        printed += capsys.readouterr().out.splitlines()
    assert printed == ["ttft: 66e6c45b step 3/128", "ttft: 66e6c45b step 5/128"]
    assert not control.should_training_stop


class AutocastOnForward(TrainerCallback):
    """Records, for each training step of a unit, whether the model's forward ran under CPU
    autocast (a forward hook on the base model, installed while the unit trains)."""

    def __init__(self, seen: dict, key):
        self.seen, self.key, self.handle = seen, key, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        base = model.get_base_model()
        self.handle = base.register_forward_hook(
            lambda module, inputs, output: self.seen.setdefault(self.key, []).append(torch.is_autocast_enabled("cpu")))

    def on_train_end(self, args, state, control, **kwargs):
        self.handle.remove()


@pytest.mark.parametrize("dtype", ["bfloat16", "autocast-bfloat16"])
def test_every_unit_of_a_worker_trains_under_mixed_precision_and_as_if_it_were_the_first(
        tmp_path, tiny_model_dir, eval_tasks, small_ids, dtype):
    """accelerate wraps the model's forward in autocast once per Trainer and marks the model
    prepared; the worker undoes both after each unit, so that every unit trains as its worker's
    first did.  With the mark left, every unit after the first trained without autocast (in fp32
    under autocast-bfloat16), and a task's adapter depended on its place in the worker: a resume
    that retrained it first gave other weights (docs/robustness.md)."""
    from safetensors.torch import load_file

    seen = {}
    tasks = {t: eval_tasks[t] for t in small_ids}
    ttft.run_ttft(tasks, make_config(tmp_path / "all", tiny_model_dir, torch_dtype=dtype),
                  task_callbacks=lambda ids: [AutocastOnForward(seen, ids)], progress=False)
    assert len(seen) == len(small_ids) and all(steps and all(steps) for steps in seen.values()), seen
    last = max(small_ids, key=lambda t: adapters.read_record(tmp_path / "all", t)["time"])  # its worker's last unit
    ttft.run_ttft({last: eval_tasks[last]}, make_config(tmp_path / "alone", tiny_model_dir, torch_dtype=dtype),
                  progress=False)
    after_others, alone = (load_file(adapters.adapter_dir(tmp_path / run, last) / "adapter_model.safetensors")
                           for run in ("all", "alone"))
    assert after_others.keys() == alone.keys() and len(alone) > 0
    assert all(torch.equal(after_others[name], alone[name]) for name in alone)
