"""Speculative DFS is exact: whatever it is proposed (the right answer, a wrong one, one right up
to a point, one longer or shorter than the answer, several at once), it finds the completions of
the batch-1 search and the brute-force enumeration, in order, with log-probs within 1e-4, alone
or with other views in a wave; right proposals save one-token forwards.  Proposals are the other
views' answers mapped through the augmentations; `sample --method dfs --dfs_speculative` finds
what the plain search finds and its timing records count the nodes `fit_dfs` prices.

Real forward passes of the sharpened tiny random Llama of test_search.py (fp32), and one stage run
on the real SmolLM2-135M with the shipped adapter."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.core.augment import Augmentation
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.settings import SampleSettings
from pipeline.sampling import batched_search, speculation
from pipeline.sampling.batched_search import View, search_views, search_wave, waves
from pipeline.sampling.plan import PlanItem, answer_completion
from pipeline.sampling.search import dfs_completions
from pipeline.sampling.speculation import Continuations, Proposals, proposal_trie
from test_batched_search import MAX_TOKENS, assert_same, prompts
from test_search import brute_force, ends, peaked_model  # noqa: F401  (the fixture, and the references)

VERSION = "output-from-examples-v1"


def kinds_of_proposals(answers, seed: int) -> dict[str, list[list[int]]]:
    """Proposals of every kind for a view whose brute-force answers are `answers` (best first)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(10, 2000, (MAX_TOKENS + 3,), generator=g).tolist()
    best = list(answers[0][0])
    return {
        "none": [],
        "right": [best],
        "wrong": [noise],
        "partly right": [best[:max(1, len(best) // 2)] + noise[:4]],
        "longer": [best + noise[:3]],  # past the answer's end: cut there
        "shorter": [best[:-1]],
        "several": [list(a) for a, _ in answers[:3]] + [noise[:2]],
    }


@pytest.mark.parametrize("min_prob", [0.05, 0.02])
def test_speculative_search_equals_brute_force_and_the_batch_1_search_whatever_it_is_proposed(
        peaked_model, tokenizer, min_prob, monkeypatch):
    monkeypatch.setattr(speculation, "VERIFY_DEPTH", 2)  # several verification rounds per trie
    eos = tokenizer.eos_token_id
    views = [View(tuple(p), MAX_TOKENS) for p in prompts(4, (12, 5, 40, 23))]
    expected = [brute_force(peaked_model, v.prompt_ids, min_prob, MAX_TOKENS, eos, ends) for v in views]
    assert all(expected), "the test needs answers in every view"
    plain = search_wave(peaked_model, views, min_prob, eos, ends)
    saved = 0
    for kind in ("none", "right", "wrong", "partly right", "longer", "shorter", "several"):
        offered = [kinds_of_proposals(e, seed)[kind] for seed, e in enumerate(expected)]
        for wave in ([0, 1, 2, 3], [2], [1, 3]):  # a wave of four, one view alone, two
            results = search_wave(peaked_model, [views[i] for i in wave], min_prob, eos, ends,
                                  proposals=[offered[i] for i in wave])
            for i, (found, stats) in zip(wave, results):
                assert_same(found, expected[i])
                reference, _ = dfs_completions(peaked_model, views[i].prompt_ids, min_prob, MAX_TOKENS, eos, ends)
                assert [f.token_ids for f in found] == [f.token_ids for f in reference]
                assert stats["expanded"] == plain[i][1]["expanded"]  # the same nodes, wherever their distribution came from
                assert stats["nodes"] + stats["speculated"] == stats["expanded"]
                if kind in ("right", "longer", "several") and len(expected[i][0][0]) >= 2:  # a node to verify
                    assert stats["speculated"] >= 1 and stats["nodes"] < plain[i][1]["nodes"]
                    saved += plain[i][1]["nodes"] - stats["nodes"]
                if kind in ("none", "wrong"):  # a wrong proposal costs at most a round's depth past P
                    assert stats["speculated"] == stats["continued"] and stats["verified_tokens"] <= 2
    assert saved > 0, "the test needs an answer longer than one token"


@pytest.mark.parametrize("step_tokens", [4, 32])
def test_a_steps_guessed_continuations_change_no_answer_and_right_ones_save_forwards(
        peaked_model, tokenizer, monkeypatch, step_tokens):
    """Each step feeds, after a node's own token, a guessed continuation (`Continuations`): right
    guesses (the brute-force answer through the node) and noise alike leave every view's
    completions, log-probs and expanded nodes as the plain search's; right ones take nodes off
    the forwards.  4 step tokens over a wave of four leave no room for a guess until rows end."""
    monkeypatch.setattr(batched_search, "STEP_TOKENS", step_tokens)
    eos = tokenizer.eos_token_id
    views = [View(tuple(p), MAX_TOKENS) for p in prompts(4, (12, 5, 40, 23))]
    expected = [brute_force(peaked_model, v.prompt_ids, 0.02, MAX_TOKENS, eos, ends) for v in views]
    answers = {v.prompt_ids: [a for a, _ in e] for v, e in zip(views, expected)}
    plain = search_wave(peaked_model, views, 0.02, eos, ends)
    noise = torch.randint(10, 2000, (64,), generator=torch.Generator().manual_seed(5)).tolist()

    def right(self, path, limit):
        through = [a for a in answers[self.prompt] if len(a) > len(path) and a[:len(path)] == path]
        return tuple(through[0][len(path):len(path) + limit]) if through else ()

    def wrong(self, path, limit):
        return tuple(noise[len(path):len(path) + limit])

    saved = 0
    for guess in (right, wrong):
        monkeypatch.setattr(speculation.Continuations, "guess", guess)
        for wave in ([0, 1, 2, 3], [2], [1, 3]):
            results = search_wave(peaked_model, [views[i] for i in wave], 0.02, eos, ends, proposals=[None] * len(wave))
            for i, (found, stats) in zip(wave, results):
                assert_same(found, expected[i])
                assert stats["expanded"] == plain[i][1]["expanded"]
                assert stats["nodes"] + stats["speculated"] == stats["expanded"] and stats["verified_tokens"] == 0
                assert stats["speculated"] == stats["continued"] and stats["nodes"] <= plain[i][1]["nodes"]
                if guess is right:
                    saved += plain[i][1]["nodes"] - stats["nodes"]
                else:
                    assert stats["continued"] == 0 and stats["nodes"] == plain[i][1]["nodes"]
    assert saved > 0, "the test needs answers of several tokens"


def test_continuations_guess_a_branch_by_position_then_by_its_last_tokens():
    prompt = (50, 51, 1, 2, 3, 60, 61)
    continuations = Continuations(prompt, [(10, 11, 12, 13, 14, 15)])
    assert continuations.guess((10, 11, 99), 2) == (13, 14)  # one token changed: the source read on, same positions
    assert continuations.guess((10, 11), 10) == (12, 13, 14, 15)  # on the source: its rest
    assert continuations.guess((70, 71, 1, 2), 3) == (3, 60, 61)  # no source agrees: the prompt, after (1, 2)
    assert continuations.guess((70, 1, 2, 8, 70, 1, 2), 2) == (8, 70)  # the path's own earlier (70, 1, 2) first
    continuations.add((80, 1, 2, 5))  # an answer found: it outranks the prompt
    assert continuations.guess((70, 71, 1, 2), 3) == (5,)
    assert continuations.guess((), 3) == () and continuations.guess((10,), 0) == ()


def test_max_candidates_and_caps_cut_the_speculative_search_like_the_plain_one(peaked_model, tokenizer):
    eos = tokenizer.eos_token_id
    views = [View(tuple(p), MAX_TOKENS) for p in prompts(7, (12, 5, 40))]
    full = [brute_force(peaked_model, v.prompt_ids, 0.02, MAX_TOKENS, eos, ends) for v in views]
    offered = [[list(a) for a, _ in answers[:2]] for answers in full]
    top = search_wave(peaked_model, views, 0.02, eos, ends, max_candidates=1, proposals=offered)
    for (found, _), answers in zip(top, full):
        assert_same(found, answers[:1])


def test_waves_ask_each_views_proposals_when_its_wave_starts():
    asked = []

    def propose(i):
        asked.append(i)
        return [[i]] if i >= 2 else None

    assert [w for w, _ in waves(7, 4)] == [[0, 1, 2, 3], [4, 5, 6]]  # without speculation
    stream = waves(5, 2, propose)
    assert next(stream) == ([0, 1], [None, None]) and asked == [0, 1]  # not before the wave starts
    assert list(stream) == [([2, 3], [[[2]], [[3]]]), ([4], [[[4]]])]


def test_search_views_with_proposals_from_earlier_views_finds_what_the_batch_1_search_finds(peaked_model, tokenizer):
    """Views of one 'test input' (the same prompt, as a dihedral identity view would be): the
    first wave searches plainly, the later ones verify its answers and take fewer forwards."""
    eos = tokenizer.eos_token_id
    [prompt] = prompts(9, (15,))
    views = [View(tuple(prompt), MAX_TOKENS)] * 4
    answers, reported = {}, {}

    def propose(i):
        return None if not answers else [list(t) for t in answers]

    def done(i, found, stopped, stats):
        answers.update({f.token_ids: f for f in found})
        reported[i] = stats

    for batch_views in (1, 3):
        answers.clear()
        results = search_views(peaked_model, views, 0.05, eos, ends, batch_views=batch_views, propose=propose,
                               on_done=done)
        reference, stats = dfs_completions(peaked_model, prompt, 0.05, MAX_TOKENS, eos, ends)
        assert reference, "the test needs answers"
        for found in results:
            assert_same(found, [(f.token_ids, f.logprob) for f in reference])
        first_wave = range(batch_views)
        # the first wave has no proposals: only its steps' guessed continuations save forwards
        assert all(reported[i]["nodes"] <= stats["nodes"] and reported[i]["verified_tokens"] == 0 for i in first_wave)
        assert all(reported[i]["nodes"] < stats["nodes"] for i in range(batch_views, 4))


def test_a_proposal_trie_shares_prefixes_and_stops_where_the_search_would(tokenizer):
    trie = proposal_trie([[1, 2, 3, 4], [1, 2, 7], [1, 14, 5], [9]], max_tokens=4, ends=ends)
    assert [path for path, _ in trie] == [(1,), (1, 2), (1, 2, 3), (9,)]  # 7 and 14 end a path; depth 4 is the budget
    assert [parent for _, parent in trie] == [-1, 0, 1, -1]


def item(sample_index: int, augmentation: Augmentation, test_index: int = 0) -> PlanItem:
    return PlanItem("t", test_index, sample_index, augmentation, (1, 2), 50)


def test_proposals_are_the_other_views_answers_mapped_into_the_view(tokenizer):
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    proposals = Proposals(tokenizer, encoder, VERSION)
    flipped = Augmentation(hflip=True, color_map=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9))
    first, second = item(0, Augmentation()), item(1, flipped)
    assert proposals.for_item(first) is None and proposals.for_item(second) is None  # nothing searched yet
    common, rare = [[1, 2], [3, 4]], [[5, 5]]
    proposals.add(first, [{"grid": rare, "cumulative_logprob": -0.1}, {"grid": common, "cumulative_logprob": -0.9},
                          {"grid": None, "cumulative_logprob": -0.5, "error": "unparseable"}])
    proposals.add(item(2, Augmentation()), [{"grid": common, "cumulative_logprob": -0.7}])
    expected = [tokenizer(answer_completion(flipped.apply_grid(g), encoder, tokenizer, VERSION),
                          add_special_tokens=False)["input_ids"] for g in (common, rare)]  # found twice, then once
    assert proposals.for_item(second) == [tuple(e) for e in expected]
    assert proposals.for_item(item(1, flipped, test_index=1)) is None  # another test input: its own answers
    proposals.add(item(0, Augmentation(), 1), [{"grid": None, "error": "dfs: no completion"}])
    assert proposals.for_item(item(1, flipped, test_index=1)) == []  # searched, nothing found: no first view


def test_sample_dfs_speculative_finds_what_the_plain_search_finds_and_counts_its_nodes(
        peaked_model, tokenizer, tiny_model_dir, eval_tasks, tmp_path):
    """The stage on the real engine (the peaked model), with and without speculation: the same
    records (texts, log-probs within 1e-4); the timing records count each chunk's and task's
    expanded nodes, and `fit_dfs` prices DFS from them."""
    from pipeline.planning.cost_model import fit_dfs
    from pipeline.planning.profile import load_records, profile
    from pipeline.sampling.sample import sample
    from pipeline.sampling.transformers_engine import TransformersEngine

    dataset = {t: {"train": eval_tasks[t]["train"][:2], "test": [{"input": p["input"]} for p in eval_tasks[t]["test"]]}
               for t in ("66e6c45b", "00576224")}
    engine = TransformersEngine(None, tokenizer, model=peaked_model)
    runs = {}
    for speculative in (False, True):
        output, timing = tmp_path / f"{speculative}.jsonl", tmp_path / f"{speculative}.timing.jsonl"
        settings = SampleSettings(predictions_per_task=3, method="dfs", min_prob=0.05, max_tokens=5,
                                  dfs_batch_views=2, dfs_speculative=speculative, batch_size=3)
        result = sample(str(tiny_model_dir), dataset, output, settings, engine_instance=engine, progress=False,
                        timing_log=timing)
        assert result.status == "complete"
        runs[speculative] = ([json.loads(line) for line in output.read_text().splitlines()], load_records(timing))
    (plain, plain_timing), (spec, spec_timing) = runs[False], runs[True]
    key = lambda r: (r["task_id"], r["test_index"], r["sample_index"], r.get("candidate_index"))  # noqa: E731
    assert sorted(map(key, plain)) == sorted(map(key, spec)) and len(plain) >= 6
    by_key = {key(r): r for r in plain}
    for r in spec:
        twin = by_key[key(r)]
        assert r["text"] == twin["text"]
        if r["cumulative_logprob"] is not None:
            assert abs(r["cumulative_logprob"] - twin["cumulative_logprob"]) < 1e-4

    for records in (plain_timing, spec_timing):
        chunks = [r for r in records if r.get("event") == "phase" and r.get("phase") == "generate"]
        tasks = [r for r in records if r.get("event") == "task"]
        assert chunks and all(r["nodes"] > 0 for r in chunks) and {r["task_id"] for r in tasks} == set(dataset)
        assert sum(r["nodes"] for r in chunks) == sum(r["nodes"] for r in tasks)
        cost = fit_dfs(records, profile(records))
        assert cost is not None and cost.n_tasks == 2 and cost.per_generated_token >= 0


def test_sample_dfs_speculative_on_the_real_model_finds_the_batch_1_searchs_records(embedded_model_dir, tmp_path):
    """The real SmolLM2-135M with the shipped ARC adapter in float32 (the precision exactness is
    defined in: bf16 rounds a path's log-prob by up to ~0.5 on this CPU, so two searches of
    different batch shapes differ there whatever they compute), two small tasks (copy, mirror;
    the mirror with two test inputs), three views each, P 0.02 (the adapter without TTFT is
    unsure, so the search finds and branches): the batch-1 search and the speculative one at
    batch 1 and 2 write the same records (texts, log-probs within 1e-4) -- later views verify
    earlier views' answers and every step feeds guessed continuations, the multi-task,
    multi-input run the 2026-12-07 benchmark doubted (it had compared a bf16 speculative run with
    a float32 batch-1 one)."""
    from pipeline.core.model_cfg import shipped_adapter
    from pipeline.planning.profile import load_records
    from pipeline.sampling.sample import sample

    a, b, c = [[1, 0, 2], [0, 3, 0], [2, 2, 0]], [[0, 1, 1], [3, 0, 0], [0, 2, 1]], [[2, 0, 0], [1, 1, 3], [0, 0, 2]]
    mirror = lambda grid: [row[::-1] for row in grid]  # noqa: E731
    dataset = {"copy": {"train": [{"input": a, "output": a}, {"input": b, "output": b}], "test": [{"input": c}]},
               "mirror": {"train": [{"input": a, "output": mirror(a)}, {"input": c, "output": mirror(c)}],
                          "test": [{"input": b}, {"input": a}]}}
    records, nodes = {}, {}
    for name, batch_views, speculative in (("batch 1", 1, False), ("speculative", 1, True),
                                           ("speculative, batched 2", 2, True)):
        output, timing = tmp_path / f"{batch_views}-{speculative}.jsonl", tmp_path / f"{name}.timing.jsonl"
        settings = SampleSettings(predictions_per_task=3, method="dfs", min_prob=0.02, max_candidates=8,
                                  max_tokens="task", engine="transformers", dtype="float32",
                                  dfs_batch_views=batch_views, dfs_speculative=speculative)
        assert sample(str(embedded_model_dir), dataset, output, settings, progress=False,
                      adapter_path=str(shipped_adapter()), timing_log=timing).status == "complete"
        records[name] = {(r["task_id"], r["test_index"], r["sample_index"], r.get("candidate_index")): r
                         for r in map(json.loads, output.read_text().splitlines())}
        nodes[name] = sum(r["nodes"] for r in load_records(timing) if r.get("event") == "task")
    reference = records.pop("batch 1")
    assert {k[:2] for k in reference} == {("copy", 0), ("mirror", 0), ("mirror", 1)}
    # the speculation worked: most nodes' distributions came from verifications and guesses
    assert nodes["speculative"] < nodes["batch 1"] / 2 and nodes["speculative, batched 2"] < nodes["batch 1"] / 2
    assert sum(r["grid"] is not None for r in reference.values()) >= 6  # answers found: proposals to verify
    for name, found in records.items():
        assert found.keys() == reference.keys(), name
        for k, r in found.items():
            assert r["text"] == reference[k]["text"], (name, k)
            if r["cumulative_logprob"] is not None:
                assert abs(r["cumulative_logprob"] - reference[k]["cumulative_logprob"]) < 1e-4, (name, k)
