"""The anytime rule under a deadline (`pipeline/sampling/anytime.py`): the first chunk is one
item, the shortest; chunks grow from the measured speed; nothing is started that the measured
speed says cannot finish; without a deadline nothing changes.

The stages run end to end (plan, real tokenizer, predictions file) with scripted engines whose
work moves an injected clock (`conftest.WorkClock`) by a fixed number of seconds per token, so
what fits before a deadline is arithmetic, never the speed of a loaded machine.  A call whose
work would run past the deadline raises `GenerationTimeout`, as the watchdog does when the
deadline falls mid-call: its items are lost, as they would be."""
from __future__ import annotations

import pytest

import pipeline.sampling.run_loop
import pipeline.sampling.sample
import pipeline.selection.rescore
from pipeline.core.augment import Augmentation
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.files import read_jsonl
from pipeline.core.prompts import grid_prefix
from pipeline.core.settings import RescoreSettings, SampleSettings
from pipeline.core.tasks import select_tasks, without_test_outputs
from pipeline.sampling.anytime import ChunkCost, chunk_size, coverage_first, item_tokens
from pipeline.sampling.generation import Completion, GenerationTimeout
from pipeline.sampling.plan import PlanItem, build_plan
from pipeline.sampling.run_loop import run_plan
from pipeline.sampling.sample import sample

from conftest import WorkClock

ENCODER = create_grid_encoder(DEFAULT_ENCODER)
VERSION = "output-from-examples-v1"
PER_TOKEN = 0.05  # the scripted engines' seconds per prompt or generated token


class SlowEngine:
    """A "model" that answers with the test input shown in its prompt (a valid grid), at
    `PER_TOKEN` seconds per prompt and generated token on `clock`; a call that would end past
    `deadline_at` ends there with GenerationTimeout (the watchdog at the deadline)."""
    name = "slow"

    def __init__(self, tokenizer, clock: WorkClock, deadline_at: float | None = None):
        self.tokenizer, self.clock, self.deadline_at = tokenizer, clock, deadline_at
        self.calls: list[list[int]] = []  # item_tokens (prompt + max_tokens) of each call's requests

    def answer(self, prompt_ids) -> list[int]:
        block = self.tokenizer.decode(list(prompt_ids)).rsplit("### Input\n\n", 1)[1]
        text = block[:block.index("\n```") + len("\n```")][len(grid_prefix(ENCODER)):]
        return text, self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def work(self, requests, generated: int) -> None:
        self.calls.append([len(r.prompt_ids) + r.max_tokens for r in requests])
        seconds = PER_TOKEN * (sum(len(r.prompt_ids) for r in requests) + generated)
        if self.deadline_at is not None and self.clock.now + seconds > self.deadline_at:
            self.clock.now = self.deadline_at
            raise GenerationTimeout("the deadline fell during this call")
        self.clock.advance(seconds)

    def generate(self, requests, temperature=0.0):
        answers = [self.answer(r.prompt_ids) for r in requests]
        self.work(requests, sum(len(ids) for _, ids in answers))
        return [Completion(ids, text, -0.5 * len(ids), "stop") for text, ids in answers]

    def close(self):
        pass


class SlowSearch(SlowEngine):
    """The same, as a DFS engine: each prompt has one answer above the threshold."""

    def search(self, requests, min_prob, max_candidates=None, deadline=None, *, on_done, **caps):
        answers = [self.answer(r.prompt_ids) for r in requests]
        self.work(requests, sum(len(ids) for _, ids in answers))
        found = [[Completion(ids, text, -0.1, "stop")] for text, ids in answers]
        for i, completions in enumerate(found):  # each item is reported as its search ends
            on_done(i, completions, None)
        return found


@pytest.fixture
def clock(monkeypatch):
    clock = WorkClock()
    monkeypatch.setattr(pipeline.sampling.sample, "time", clock)    # the stage's deadline
    monkeypatch.setattr(pipeline.sampling.run_loop, "time", clock)  # the loop's checks and measurements
    return clock


@pytest.fixture(scope="module")
def tasks(eval_tasks):
    return without_test_outputs(select_tasks(eval_tasks, sort_by_size=True, first_n=6))


def run(tasks, tokenizer, clock, out, deadline=None, engine_class=SlowEngine, **settings):
    engine = engine_class(tokenizer, clock, None if deadline is None else clock.now + deadline)
    settings = SampleSettings(**{"predictions_per_task": 4, "batch_size": 8, **settings})
    # a DFS stand-in searches itself (the stage's own search, batched_search.search_engine, needs a real model)
    search = (lambda engine, requests, *a, **k: engine.search(requests, *a, **k)) if hasattr(engine, "search") else None
    result = sample("embedded", tasks, out, settings, deadline=deadline, engine_instance=engine, progress=False,
                    log=lambda *a: None, search=search)
    return result, engine, list(read_jsonl(out))


def test_the_first_chunk_is_the_shortest_item_and_chunks_grow_from_measurements(tasks, tokenizer, clock, tmp_path):
    result, engine, records = run(tasks, tokenizer, clock, tmp_path / "pred.jsonl", deadline=10 ** 6)
    assert result.status == "complete" and len(records) == result.planned
    sizes = [len(call) for call in engine.calls]
    assert sizes[0] == 1 and engine.calls[0][0] == min(t for call in engine.calls for t in call)  # the probe
    assert sizes[:4] == [1, 2, 4, 8] and max(sizes) == 8  # doubling from the measured speed, up to batch_size
    assert records[0]["grid"] is not None and records[0]["error"] is None  # a real answer first

    # without a deadline: chunks of batch_size in plan order (task by task, smallest first), the same records
    plain, plain_engine, plain_records = run(tasks, tokenizer, clock, tmp_path / "plain.jsonl")
    assert [len(call) for call in plain_engine.calls] == [8, 8, 8] and plain.planned == 24
    assert [r["task_id"] for r in plain_records] == [t for t, task in select_tasks(tasks, sort_by_size=True).items()
                                                     for _ in range(4 * len(task["test"]))]
    key = lambda r: (r["task_id"], r["test_index"], r["sample_index"])
    assert sorted(map(key, plain_records)) == sorted(map(key, records))
    assert {key(r): r["grid"] for r in plain_records} == {key(r): r["grid"] for r in records}


def test_a_deadline_that_allows_one_item_yields_one_real_prediction(tasks, tokenizer, clock, tmp_path):
    """The issue's failure: before anything was measured a whole chunk (8 prompts) was started,
    could not finish, and the deadline lost it all: 0 predictions."""
    _, probe_run, probe_records = run(tasks, tokenizer, clock, tmp_path / "probe.jsonl", deadline=10 ** 6)
    probe_s = PER_TOKEN * (probe_records[0]["prompt_tokens"] + probe_records[0]["n_tokens"])  # the first item's work
    result, engine, records = run(tasks, tokenizer, clock, tmp_path / "pred.jsonl", deadline=1.2 * probe_s)
    assert result.status == "deadline" and result.written == 1 and not result.abandoned
    assert len(records) == 1 and records[0]["grid"] is not None and records[0]["error"] is None
    assert engine.calls == [[probe_run.calls[0][0]]]  # one call, the shortest item; nothing started that could not end


@pytest.mark.parametrize("k", [1, 2, 5, 12, 20])
def test_a_deadline_that_allows_k_items_yields_about_k(tasks, tokenizer, clock, tmp_path, k):
    full, full_engine, full_records = run(tasks, tokenizer, clock, tmp_path / "full.jsonl", deadline=10 ** 6)
    # the seconds of the first k items of the run order (the order does not depend on the deadline)
    costs = [PER_TOKEN * (r["prompt_tokens"] + r["n_tokens"]) for r in full_records]
    deadline = sum(costs[:k]) + 0.5 * costs[k]  # room for k items and half of the next one
    result, engine, records = run(tasks, tokenizer, clock, tmp_path / "pred.jsonl", deadline=deadline)
    assert result.status == "deadline" and 0 < max(1, k - 1) <= result.written <= k
    assert [r["sample_index"] for r in records] == [r["sample_index"] for r in full_records[:result.written]]
    assert all(r["grid"] is not None for r in records)


def test_dfs_under_a_deadline_searches_the_shortest_item_first(tasks, tokenizer, clock, tmp_path):
    settings = {"method": "dfs", "min_prob": 0.1, "max_candidates": 2}
    _, probe_run, probe_records = run(tasks, tokenizer, clock, tmp_path / "probe.jsonl", 10 ** 6, SlowSearch,
                                      **settings)
    assert [len(call) for call in probe_run.calls][:3] == [1, 2, 4]
    probe_s = PER_TOKEN * (probe_records[0]["prompt_tokens"] + probe_records[0]["n_tokens"])
    result, engine, records = run(tasks, tokenizer, clock, tmp_path / "pred.jsonl", 1.2 * probe_s, SlowSearch,
                                  **settings)
    assert (result.status, result.written, engine.calls) == ("deadline", 1, [[probe_run.calls[0][0]]])
    assert records[0]["grid"] is not None and records[0]["candidate_index"] == 0


# ----------------------------------------------------------------------------- the rule's parts

def planted_task():
    return {"train": [{"input": [[1, 2, 3], [4, 5, 6]], "output": [[6, 5, 4], [3, 2, 1]]},
                      {"input": [[7, 8], [9, 0], [1, 1]], "output": [[0, 9], [8, 7], [1, 1]]}],
            "test": [{"input": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [9, 9, 0, 0, 1]]}, {"input": [[3], [7]]}]}


def test_every_test_input_gets_its_cheapest_item_first(tokenizer):
    big = planted_task()
    big["train"] = big["train"] * 3  # a longer prompt: its inputs come last among the first ones
    tasks = {"big": big, "a": planted_task(), "b": planted_task()}
    plan = build_plan(tasks, tokenizer, ENCODER, VERSION, 4, max_tokens=8)
    ordered = coverage_first(plan)
    assert sorted(i.key for i in ordered) == sorted(i.key for i in plan)
    inputs = {(i.task_id, i.test_index) for i in plan}
    first = ordered[:len(inputs)]
    assert {(i.task_id, i.test_index) for i in first} == inputs  # one each, first
    assert [item_tokens(i) for i in first] == sorted(item_tokens(i) for i in first)
    assert {i.task_id for i in first[-2:]} == {"big"}
    for item in first:  # each input's cheapest view
        assert item_tokens(item) == min(item_tokens(i) for i in plan if (i.task_id, i.test_index) == (item.task_id, item.test_index))
    assert ordered[len(inputs):] == [i for i in plan if i not in first]  # then plan order
    # a resumed run: inputs that already have a prediction are not put first again ...
    done = {plan[0].key}
    resumed = coverage_first(plan[1:], done)
    assert (plan[0].task_id, plan[0].test_index) not in {(i.task_id, i.test_index) for i in resumed[:len(inputs) - 1]}
    # ... and when every input has one, the cheapest item still comes first (the probe)
    done = {i.key for i in first}
    rest = [i for i in plan if i.key not in done]
    assert item_tokens(coverage_first(rest, done)[0]) == min(item_tokens(i) for i in rest)


def items(n, prompt_tokens):
    return [PlanItem("t", 0, k, Augmentation(), tuple(range(prompt_tokens)), 8) for k in range(n)]


def test_chunk_sizes_under_a_deadline():
    """1 before a measurement; then at most twice the last chunk, cut to what fits half the time
    left by the seconds per token measured (prompt + generated); 0 when one item cannot finish."""
    cost = ChunkCost()
    assert cost.estimate(items(4, 100)) is None and chunk_size(items(8, 100), 0, 8, cost, 1.0) == 1  # the probe
    cost.add(items(1, 100), generated=10, seconds=11.0)  # 110 tokens in 11 s: 0.1 s per token, 10 generated each
    assert cost.estimate(items(2, 100)) == pytest.approx(2 * (100 + 10) * 0.1)
    assert chunk_size(items(64, 100), 1, 64, cost, 10 ** 6) == 2    # doubles ...
    assert chunk_size(items(64, 100), 16, 64, cost, 10 ** 6) == 32
    assert chunk_size(items(64, 100), 64, 16, cost, 10 ** 6) == 16  # ... up to batch_size
    # 100 s left: short prompts (11 s each) fit 4 in half of it; long ones (101 s each) not even one
    assert chunk_size(items(16, 100), 8, 16, cost, 100.0) == 4
    assert chunk_size(items(16, 100), 8, 16, cost, 15.0) == 1        # one that fits the time left still starts
    assert chunk_size(items(16, 1000), 8, 16, cost, 100.0) == 0
    # a machine that slows down: the last chunk's rate counts when it is the larger
    cost.add(items(1, 100), generated=10, seconds=33.0)
    assert cost.estimate(items(1, 100)) == pytest.approx(33.0)


def test_without_a_deadline_the_loop_runs_chunks_of_batch_size_in_plan_order(tokenizer, tmp_path):
    clock = WorkClock()
    plan = build_plan({"a": planted_task(), "b": planted_task()}, tokenizer, ENCODER, VERSION, 5, max_tokens=8)
    engine = SlowEngine(tokenizer, clock)
    result = run_plan(plan, engine, tmp_path / "pred.jsonl", ENCODER, batch_size=4, progress=False)
    assert result.status == "complete" and [len(c) for c in engine.calls] == [4, 4, 4, 4, 4]
    assert [r["sample_index"] for r in read_jsonl(tmp_path / "pred.jsonl")] == [i.sample_index for i in plan]


# ----------------------------------------------------------------------------- engine choice

def test_a_deadline_too_short_for_vllms_start_picks_transformers(tokenizer, tiny_model_dir, tasks, clock, tmp_path,
                                                                  monkeypatch):
    """engine auto on CPU without adapters is vLLM, unless the time left is less than its start
    and one item: then the stage starts the transformers engine and answers."""
    from pipeline.sampling import engines

    monkeypatch.setattr(engines, "vllm_importable", lambda: True)
    monkeypatch.setattr(engines, "cuda_available", lambda: False)
    notes = []
    result = sample(str(tiny_model_dir), select_tasks(tasks, first_n=1), tmp_path / "pred.jsonl",
                    SampleSettings(predictions_per_task=1, max_tokens="8"), deadline=engines.CPU_START_S["vllm"] - 5,
                    progress=False, log=notes.append)
    assert result.engine == "transformers" and result.written == 1
    assert any("engine auto: transformers, not vllm" in n for n in notes), notes


# ----------------------------------------------------------------------------- rescore

def test_rescore_under_a_deadline_scores_the_cheapest_inputs_first_and_starts_none_it_cannot_finish(
        eval_tasks, tokenizer, tiny_model_dir, tmp_path, monkeypatch):
    """rescore's loop (one test input at a time, the real tiny model scoring) under a deadline:
    cheapest first by prompt + answer tokens, and a test input the measured speed says cannot
    finish is not started (before, the loop started whatever came next while time was left and
    ran past the deadline)."""
    from pipeline.selection.rescore import rescore, rescore_tokens

    ids = ["66e6c45b", "00576224", "6ea4a07e", "3b4c2228"]  # 6ea4a07e and 3b4c2228: two test inputs each
    tasks = without_test_outputs({t: eval_tasks[t] for t in ids})
    predictions = tmp_path / "pred.jsonl"
    sample("embedded", tasks, predictions, SampleSettings(predictions_per_task=2),
           engine_instance=SlowEngine(tokenizer, WorkClock()), progress=False, log=lambda *a: None)

    clock = WorkClock()
    monkeypatch.setattr(pipeline.selection.rescore, "time", clock)
    real = pipeline.selection.rescore.views_answer_logprobs

    def timed(model, views, batch_size=8, view_batch=4):  # the prefills' work, on the clock
        clock.advance(PER_TOKEN * sum(len(prompt) + sum(len(a) for a in answers) for prompt, answers in views))
        return real(model, views, batch_size, view_batch)

    monkeypatch.setattr(pipeline.selection.rescore, "views_answer_logprobs", timed)

    def run(name, deadline):
        out, timing = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.timing.jsonl"
        started = clock.now
        counts = rescore(str(tiny_model_dir), tasks, [predictions], out, RescoreSettings(views=2), deadline=deadline,
                         timing_log=timing, progress=False, log=lambda *a: None)
        order = [(r["task_id"], r["test_index"]) for r in read_jsonl(out)]
        seconds = [r["seconds"] for r in read_jsonl(timing) if r["event"] == "task"]
        return counts, order, seconds, clock.now - started

    counts, order, seconds, _ = run("all", 10 ** 6)
    assert counts["scored"] == 6 and counts["skipped"] == 0
    size = {(t, i): rescore_tokens(tasks[t], i, [tasks[t]["test"][i]["input"]], ENCODER, tokenizer, VERSION)
            for t, i in order}
    assert [size[key] for key in order] == sorted(size.values())  # cheapest first

    counts, one, _, spent = run("one", 1.2 * seconds[0])
    assert (counts["scored"], counts["skipped"]) == (1, 5) and one == order[:1]
    assert spent <= 1.2 * seconds[0]  # nothing ran past the deadline

    counts, plain, _, _ = run("plain", None)  # no deadline: the smallest-task order, as before
    assert counts["scored"] == 6 and plain == [(t, i) for t in select_tasks(tasks, sort_by_size=True)
                                              for i in range(len(tasks[t]["test"]))]
