"""The batched DFS is exact: the same completions above P, with the same log-probs (1e-4), as the
batch-1 search and the brute-force enumeration of test_search.py, whatever the views' prompt
lengths (left padding) and wave sizes; its caps cut best first on an injected clock; `sample
--method dfs` writes each item's records as its search ends.

Real forward passes of the sharpened tiny random Llama of test_search.py (fp32)."""
from __future__ import annotations

import itertools
import json
import re

import pytest
import torch

from pipeline.core.settings import SampleSettings, load_config
from pipeline.sampling import batched_search
from pipeline.sampling.batched_search import View, grouped_attention, search_engine, search_views, search_wave
from pipeline.sampling.search import dfs_completions
from test_search import brute_force, ends, peaked_model  # noqa: F401  (the fixture, and the references)

MAX_TOKENS = 6


def prompts(seed: int, lengths) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 2000, (n,), generator=g).tolist() for n in lengths]


def assert_same(found, expected):
    """`found` (Found) and `expected` ((tokens, logprob)): the same completions in the same order,
    log-probs within 1e-4."""
    assert [f.token_ids for f in found] == [e[0] for e in expected]
    assert all(abs(f.logprob - e[1]) < 1e-4 for f, e in zip(found, expected))


@pytest.mark.parametrize("min_prob,batch_views", [(0.05, 4), (0.02, 2), (0.1, 3)])
def test_left_padded_batched_search_equals_brute_force_and_the_batch_1_search(peaked_model, tokenizer, min_prob,
                                                                              batch_views, monkeypatch):
    """Prompts of 5 to 40 tokens share waves: every row but the widest is left-padded, and rows
    branch and back up at different steps (masked columns in the middle of a row).  The log-probs
    summed along every answer match full unpadded forward passes (brute force) within 1e-4.  The
    cache starts one column wide, so it grows (is copied) during the search."""
    monkeypatch.setattr(batched_search, "SPARE_COLUMNS", 1)
    eos = tokenizer.eos_token_id
    views = [View(tuple(p), MAX_TOKENS) for p in prompts(4, (12, 5, 40, 23, 9))]
    results = search_views(peaked_model, views, min_prob, eos, ends, batch_views=batch_views)
    branching = 0
    for view, found in zip(views, results):
        expected = brute_force(peaked_model, view.prompt_ids, min_prob, MAX_TOKENS, eos, ends)
        assert_same(found, expected)
        reference, _ = dfs_completions(peaked_model, view.prompt_ids, min_prob, MAX_TOKENS, eos, ends)
        assert [f.token_ids for f in found] == [f.token_ids for f in reference]
        branching += len(expected) >= 2
    assert branching >= 1, "the test needs a view whose search branches"


def test_max_candidates_keeps_the_same_top_answers_and_prunes(peaked_model, tokenizer):
    eos = tokenizer.eos_token_id
    views = [View(tuple(p), MAX_TOKENS) for p in prompts(7, (12, 5, 40))]
    full = search_wave(peaked_model, views, 0.02, eos, ends)
    capped = search_wave(peaked_model, views, 0.02, eos, ends, max_candidates=1)
    pruned = 0
    for view, (all_found, all_stats), (top, stats) in zip(views, full, capped):
        reference, _ = dfs_completions(peaked_model, view.prompt_ids, 0.02, MAX_TOKENS, eos, ends, 1)
        assert_same(top, [(f.token_ids, f.logprob) for f in reference])
        assert [f.token_ids for f in top] == [f.token_ids for f in all_found[:1]]
        assert stats["expanded"] <= all_stats["expanded"]  # nodes below the best answer found are not expanded
        pruned += stats["expanded"] < all_stats["expanded"]
        if len(all_found) > 1:
            assert stats["stopped_early"] == "max_candidates"
    assert pruned >= 1, "the test needs a search the cap shortens"


def test_grouped_attention_equals_repeated_kv_heads():
    """Query heads folded onto their KV head: the same output as repeating each KV head (what
    transformers' masked SDPA does), with a padding mask and several queries."""
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, h, q, 8, generator=g) for h, q in ((6, 3), (2, 10), (2, 10)))
    mask = torch.zeros(2, 1, 3, 10)
    mask[0, :, :, :4] = torch.finfo(torch.float32).min
    out, _ = grouped_attention(None, query, key, value, mask, scaling=0.3)
    reference = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1), attn_mask=mask, scale=0.3)
    assert torch.allclose(out, reference.transpose(1, 2), atol=1e-5)


class Clock:
    """A clock that advances `step` seconds at every reading (no wall time)."""

    def __init__(self, step: float = 1.0):
        self.ticks = itertools.count(0.0, step)

    def __call__(self) -> float:
        return next(self.ticks)


def test_caps_cut_each_view_with_the_answers_it_found_and_say_which(peaked_model, tokenizer):
    eos = tokenizer.eos_token_id
    views = [View(tuple(p), MAX_TOKENS) for p in prompts(7, (12, 5, 40, 23))]
    full = search_views(peaked_model, views, 0.02, eos, ends, batch_views=2)
    reported = []
    cut = search_views(peaked_model, views, 0.02, eos, ends, batch_views=2, batch_seconds=4, clock=Clock(),
                       on_done=lambda i, found, why, *stats: reported.append((i, why)))
    assert sorted(i for i, _ in reported) == [0, 1, 2, 3]
    assert {why for _, why in reported} <= {"batch_seconds", None} and any(w == "batch_seconds" for _, w in reported)
    for found, everything in zip(cut, full):  # a cut search keeps answers of the full one, same log-probs
        assert {f.token_ids for f in found} <= {f.token_ids for f in everything}

    # the task cap spans calls: a task's waves add up in `spent`; a task with nothing left is not searched
    spent, reported = {}, []
    search_views(peaked_model, views[:2], 0.02, eos, ends, batch_views=2, task_seconds=3, groups=["a", "b"],
                 spent=spent, clock=Clock())
    assert spent["a"] == spent["b"] > 0
    again = search_views(peaked_model, views[2:], 0.02, eos, ends, batch_views=2, task_seconds=3, groups=["a", "c"],
                         spent=spent, clock=Clock(), on_done=lambda i, found, why, *stats: reported.append((i, why)))
    assert again[0] == [] and (0, "task_seconds") in reported and spent["c"] > 0


def test_the_deadline_leaves_unfinished_views_unreported(peaked_model, tokenizer):
    views = [View(tuple(p), MAX_TOKENS) for p in prompts(7, (12, 5, 40))]
    reported = []
    results = search_views(peaked_model, views, 0.02, tokenizer.eos_token_id, ends, batch_views=2, deadline=0.0,
                           clock=Clock(), on_done=lambda *a: reported.append(a))
    assert results == [None, None, None] and reported == []  # nothing found, nothing started after it


def test_engine_search_batched_and_batch_1_agree(peaked_model, tokenizer):
    """Through the engine, with a stop string (an answer ends at a token holding an "e"): the
    batched search gives the batch-1 search's texts, tokens and log-probs (1e-4)."""
    from pipeline.sampling.generation import Request
    from pipeline.sampling.search import stop_at_strings
    from pipeline.sampling.transformers_engine import TransformersEngine

    engine = TransformersEngine(None, tokenizer, model=peaked_model)
    requests = [Request(tuple(p), MAX_TOKENS, stop=("e",)) for p in prompts(0, (12, 30, 7))]
    one = search_engine(engine, requests, 0.05, batch_views=1)
    batched = search_engine(engine, requests, 0.05, batch_views=3)
    for r, a, b in zip(requests, one, batched):
        expected, _ = dfs_completions(peaked_model, r.prompt_ids, 0.05, MAX_TOKENS, tokenizer.eos_token_id,
                                      stop_at_strings(tokenizer, ("e",)))
        assert [c.cumulative_logprob for c in a] == [f.logprob for f in expected]  # batch 1 is the reference itself
        assert [c.token_ids for c in b] == [c.token_ids for c in a] and [c.text for c in b] == [c.text for c in a]
        assert all(abs(x.cumulative_logprob - y.cumulative_logprob) < 1e-4 for x, y in zip(a, b))
    assert sum(len(found) for found in one) >= 2, "the test needs answers"


class StreamingSearch:
    """An engine and DFS stand-in (`search(engine, ...)`, the unbound method) that checks the file after each item: the records of an ended item are
    in it before the next one ends; with `stop_after` it ends only that many items (a deadline)."""
    name = "transformers"

    def __init__(self, tokenizer, output, stop_after=None):
        self.tokenizer, self.output, self.stop_after, self.seen = tokenizer, output, stop_after, []

    def search(self, requests, min_prob, max_candidates=None, deadline=None, *, on_done=None, groups=None,
               spent=None, propose=None, **caps):
        from pipeline.sampling.generation import Completion

        self.seen.append(caps)
        self.proposed = propose is not None  # speculative DFS (the default): each request's proposals
        text = "\n```"
        for i, _ in enumerate(requests[:self.stop_after]):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            on_done(i, [Completion(ids, text, -0.5, "stop")] if i % 2 == 0 else [], "batch_seconds")
            lines = self.output.read_text().splitlines()
            assert len(lines) == i + 1 and json.loads(lines[-1])["sample_index"] == i  # written as it ended
        return [None] * len(requests)

    def close(self):
        pass


def test_sample_dfs_writes_each_item_as_its_search_ends(tokenizer, tiny_model_dir, eval_tasks, tmp_path):
    from pipeline.sampling.sample import sample

    dataset = {"66e6c45b": {"train": eval_tasks["66e6c45b"]["train"], "test": [{"input": [[1, 2], [3, 4]]}]}}
    output = tmp_path / "dfs.jsonl"
    settings = SampleSettings(predictions_per_task=4, method="dfs", dfs_batch_views=2, dfs_task_seconds=30.0)
    engine = StreamingSearch(tokenizer, output)
    result = sample(str(tiny_model_dir), dataset, output, settings, engine_instance=engine, progress=False,
                    search=StreamingSearch.search)  # the stand-in's search, called with the engine
    assert result.status == "complete" and result.written == 4
    assert engine.seen[0] == {"batch_views": 2, "batch_seconds": None, "task_seconds": 30.0} and engine.proposed
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["error"] for r in records[1::2]] == ["dfs: no completion with probability >= 0.1 before the "
                                                    "batch_seconds cap"] * 2

    cut = tmp_path / "cut.jsonl"  # an item the search did not end (the deadline) is not written: still to do
    result = sample(str(tiny_model_dir), dataset, cut, settings, engine_instance=StreamingSearch(tokenizer, cut, 1),
                    progress=False, search=StreamingSearch.search)
    assert len(cut.read_text().splitlines()) == 1 and result.skipped_tasks == ["66e6c45b"]


@pytest.mark.parametrize("key,value,needle", [
    ("dfs_batch_views", 0, "dfs_batch_views: 0 is not >= 1"),
    ("dfs_batch_seconds", 0, "dfs_batch_seconds: 0 is not > 0"),
    ("dfs_task_seconds", -5.0, "dfs_task_seconds: -5.0 is not > 0"),
    ("min_prob", 1.5, "min_prob: 1.5 is not in (0, 1]"),
])
def test_search_caps_are_range_checked_at_load_and_by_the_stage(key, value, needle, tiny_model_dir, tmp_path):
    from pipeline.sampling.sample import sample

    with pytest.raises(ValueError) as refused:
        load_config({"sample_settings": {"method": "dfs", key: value}})
    assert str(refused.value) == f"config key 'sample_settings': {needle}"
    assert load_config({"sample_settings": {"dfs_batch_views": 8, "dfs_batch_seconds": 540,
                                            "dfs_task_seconds": None}}).sample_settings["dfs_batch_views"] == 8
    with pytest.raises(ValueError, match=f"^--{re.escape(needle)}$"):
        sample(str(tiny_model_dir), {}, tmp_path / "x.jsonl", SampleSettings(method="dfs", **{key: value}),
               progress=False)

