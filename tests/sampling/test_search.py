"""DFS is exact and the KV-cached, batched scorer equals full forward passes; the selection rules rank as documented.

Real forward passes of a tiny random Llama whose output head is sharpened (x40), so a few
completions hold most of the probability, as a trained model's do."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.core.augment import Augmentation
from pipeline.core.settings import RescoreSettings, SampleSettings
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from devtools.random_models import build_tiny_model
from pipeline.core.prompts import build_inference_prompt
from pipeline.selection.rescore import answer_logprobs, score_candidates
from pipeline.sampling.search import dfs_completions, stop_at_strings

VERSION = "output-from-examples-v1"


@pytest.fixture(scope="module")
def peaked_model(tokenizer):
    torch.set_num_threads(1)
    model = build_tiny_model(tokenizer, seed=3, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


def ends(tokens) -> bool:
    """A stand-in for the closing fence: about one token in seven ends an answer."""
    return tokens[-1] % 7 == 0


def brute_force(model, prompt, min_prob, max_tokens, eos_id, stop):
    """Every sequence above `min_prob` by breadth-first enumeration with full forward passes (no cache)."""
    floor, found, frontier = math.log(min_prob), [], [((), 0.0)]
    while frontier:
        grown = []
        for tokens, lp in frontier:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([list(prompt) + list(tokens)])).logits[0, -1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for token in torch.nonzero(logprobs + lp >= floor).flatten().tolist():
                seq, total = tokens + (token,), lp + float(logprobs[token])
                if token == eos_id or stop(seq):
                    found.append((seq, total))
                elif len(seq) < max_tokens:
                    grown.append((seq, total))
        frontier = grown
    return sorted(found, key=lambda f: -f[1])


@pytest.mark.parametrize("prompt_seed,min_prob", [(0, 0.05), (1, 0.02), (4, 0.1)])
def test_dfs_finds_exactly_the_completions_above_p_best_first(peaked_model, tokenizer, prompt_seed, min_prob):
    prompt = torch.randint(10, 2000, (12,), generator=torch.Generator().manual_seed(prompt_seed)).tolist()
    found, stats = dfs_completions(peaked_model, prompt, min_prob, max_tokens=6, eos_id=tokenizer.eos_token_id,
                                   stop=ends)
    expected = brute_force(peaked_model, prompt, min_prob, 6, tokenizer.eos_token_id, ends)
    assert len(expected) >= (2 if min_prob < 0.1 else 1), "the test needs a branching search"
    assert [f.token_ids for f in found] == [e[0] for e in expected]
    assert all(abs(f.logprob - e[1]) < 1e-4 for f, e in zip(found, expected))
    assert all(f.logprob >= math.log(min_prob) for f in found)
    assert sum(math.exp(f.logprob) for f in found) <= 1 + 1e-6
    # one one-token forward per expanded non-final node, plus the prompt's
    assert stats["forwards"] <= stats["expanded"] + 1 and stats["stopped_early"] is None

    again, _ = dfs_completions(peaked_model, prompt, min_prob, 6, tokenizer.eos_token_id, stop=ends)
    assert again == found  # deterministic
    capped, capped_stats = dfs_completions(peaked_model, prompt, min_prob, 6, tokenizer.eos_token_id, stop=ends,
                                           max_candidates=1)
    assert capped == found[:1] and (capped_stats["stopped_early"] == "max_candidates") == (len(found) > 1)


def test_dfs_in_bf16_finds_the_fp32_best_answer_with_about_its_probability(peaked_model, tokenizer):
    """The same search on the model's bf16 copy (`--dtype bfloat16`): every answer's log-prob is
    finite and above P, and the best answer is fp32's, with nearly its log-prob."""
    import copy

    bf16 = copy.deepcopy(peaked_model).to(torch.bfloat16)
    for seed in range(3):
        prompt = torch.randint(10, 2000, (12,), generator=torch.Generator().manual_seed(seed)).tolist()
        exact, _ = dfs_completions(peaked_model, prompt, 0.05, 6, tokenizer.eos_token_id, stop=ends)
        found, _ = dfs_completions(bf16, prompt, 0.05, 6, tokenizer.eos_token_id, stop=ends)
        assert found and all(math.log(0.05) <= f.logprob <= 0 for f in found)
        assert found[0].token_ids == exact[0].token_ids
        assert found[0].logprob == pytest.approx(exact[0].logprob, abs=0.25)


def test_dfs_stops_at_the_deadline_with_what_it_found(peaked_model, tokenizer):
    found, stats = dfs_completions(peaked_model, [11, 12, 13], 0.01, 6, tokenizer.eos_token_id, stop=ends,
                                   deadline=0.0)
    assert found == [] and stats["stopped_early"] == "deadline"


def test_stop_strings_end_a_path_at_the_closing_fence(tokenizer):
    stop = stop_at_strings(tokenizer, ("```",))
    fence = tuple(tokenizer("1 23\n```", add_special_tokens=False)["input_ids"])
    assert stop(fence) and not stop(fence[:-1])
    assert stop_at_strings(tokenizer, ()) is None


def full_forward_logprob(model, prompt, answer) -> float:
    ids = torch.tensor([list(prompt) + list(answer)])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(prompt) - 1 + i, tok]) for i, tok in enumerate(answer))


def test_cached_batched_scores_equal_unbatched_full_forward_passes(peaked_model):
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(10, 2000, (40,), generator=g).tolist()
    answers = [torch.randint(10, 2000, (n,), generator=g).tolist() for n in (1, 7, 3, 12, 5)]
    scores = answer_logprobs(peaked_model, prompt, answers, batch_size=2)
    for answer, score in zip(answers, scores):
        assert abs(score - full_forward_logprob(peaked_model, prompt, answer)) < 1e-4


def test_candidates_are_scored_in_each_view_with_the_training_tokens(peaked_model, tokenizer, eval_tasks):
    task = eval_tasks["66e6c45b"]
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    right = task["test"][0]["output"]
    wrong = [row[::-1] for row in right]
    views = [Augmentation(), Augmentation(hflip=True, n_rot90=1, color_map=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9))]
    scores = score_candidates(peaked_model, tokenizer, encoder, VERSION, task, 0, [right, wrong], views)
    assert len(scores) == 2 and all(len(row) == 2 for row in scores)
    # the reference: the view's inference prompt, and the candidate transformed like the task
    view = views[1]
    seen = view.apply_task({"train": task["train"], "test": [{"input": task["test"][0]["input"]}]})
    prompt = tokenizer(build_inference_prompt(seen, encoder, tokenizer, VERSION), add_special_tokens=False)["input_ids"]
    text = encoder.to_text(view.apply_grid(wrong))[len("```grid"):] + "<|im_end|>"
    answer = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert abs(scores[1][1] - full_forward_logprob(peaked_model, prompt, answer)) < 1e-4


# ----------------------------------------------------------------------------- the stages

def test_engine_search_is_the_dfs_of_the_served_model(peaked_model, tokenizer):
    from pipeline.sampling.batched_search import search_engine
    from pipeline.sampling.generation import Request
    from pipeline.sampling.transformers_engine import TransformersEngine

    engine = TransformersEngine(None, tokenizer, model=peaked_model)
    prompt = torch.randint(10, 2000, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    [found] = search_engine(engine, [Request(tuple(prompt), 6)], 0.05, batch_views=1)  # batched: test_batched_search.py
    expected, _ = dfs_completions(peaked_model, prompt, 0.05, 6, tokenizer.eos_token_id)
    assert [c.token_ids for c in found] == [list(f.token_ids) for f in expected]
    assert [c.cumulative_logprob for c in found] == [f.logprob for f in expected]


class TwoAnswerSearch:
    """An engine and DFS stand-in (`search(engine, ...)`, the unbound method): each prompt has two answers above P, the test input it shows
    (likelier) and that grid with its rows reversed."""
    name = "transformers"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def search(self, requests, min_prob, max_candidates=None, deadline=None, *, on_done, **caps):
        from pipeline.sampling.generation import Completion

        out = []
        for r in requests:
            prompt = self.tokenizer.decode(list(r.prompt_ids))
            grid = ENCODER_.to_grid(prompt.rsplit("### Input\n\n", 1)[1].split("\n```", 1)[0] + "\n```")
            answers = [(grid, -0.2), (grid[::-1], -1.0)]
            found = []
            for g, lp in answers[:max_candidates]:
                text = ENCODER_.to_text(g)[len("```grid"):]
                found.append(Completion(self.tokenizer(text, add_special_tokens=False)["input_ids"], text, lp, "stop"))
            on_done(len(out), found, None)
            out.append(found)
        return out

    def close(self):
        pass


ENCODER_ = create_grid_encoder(DEFAULT_ENCODER)


def test_dfs_sampling_then_rescore_then_poe_vote_end_to_end(tokenizer, tiny_model_dir, eval_tasks, tmp_path, capsys):
    """sample --method dfs writes a record per candidate (mapped back to the task's frame), rescore
    scores the distinct candidates under views with the real tiny model, and vote --method poe
    ranks them by the sum of their view log-probs."""
    import json

    from pipeline.__main__ import main as pipeline_main
    from pipeline.core.files import read_jsonl
    from pipeline.sampling.sample import sample
    from pipeline.selection.rescore import rescore
    from pipeline.selection.scored import read_scores

    ids = ["66e6c45b", "00576224"]
    dataset = tmp_path / "tasks.json"
    dataset.write_text(json.dumps({t: {"train": eval_tasks[t]["train"],
                                       "test": [{"input": p["input"]} for p in eval_tasks[t]["test"]]} for t in ids}))
    predictions = tmp_path / "dfs.jsonl"
    result = sample(str(tiny_model_dir), str(dataset), predictions,
                    SampleSettings(predictions_per_task=3, method="dfs", min_prob=0.1, max_candidates=2),
                    engine_instance=TwoAnswerSearch(tokenizer), progress=False, search=TwoAnswerSearch.search)
    assert result.status == "complete"
    records = list(read_jsonl(predictions))
    assert len(records) == 2 * 3 * 2 and {r["candidate_index"] for r in records} == {0, 1}
    for r in records:
        shown = eval_tasks[r["task_id"]]["test"][r["test_index"]]["input"]
        if r["candidate_index"] == 0:  # mapped back through the view's inverse: the test input itself
            assert r["grid"] == shown
        else:  # the view's rows reversed, mapped back: the same cells in another arrangement
            assert sorted(sum(r["grid"], [])) == sorted(sum(shown, [])) and r["grid"] != shown
    assert json.loads((tmp_path / "dfs.jsonl.meta.json").read_text())["method"] == "dfs"

    scores_path = tmp_path / "scores.jsonl"
    two_views = RescoreSettings(views=2)
    counts = rescore(str(tiny_model_dir), str(dataset), [predictions], scores_path, two_views, progress=False)
    assert counts["scored"] == 2 and rescore(str(tiny_model_dir), str(dataset), [predictions], scores_path,
                                             two_views, progress=False)["already"] == 2
    whole = scores_path.read_bytes()
    scores_path.write_bytes(whole[:len(whole) - 30])  # killed while writing the second test input
    again = rescore(str(tiny_model_dir), str(dataset), [predictions], scores_path, two_views, progress=False)
    assert (again["scored"], again["already"]) == (1, 1)  # the torn line cut, not appended to
    assert scores_path.read_bytes() == whole
    scores = read_scores(scores_path)
    for (task_id, index), candidates in scores.items():
        shown = eval_tasks[task_id]["test"][index]["input"]
        assert candidates[0].grid == shown and candidates[0].count == 3  # found in every view
        assert all(len(c.view_logprobs) == 2 and c.poe < 0 for c in candidates)

    out = tmp_path / "poe.json"
    assert pipeline_main(["vote", "--predictions", str(predictions), "--dataset", str(dataset), "--output", str(out),
                          "--method", "poe", "--scores", str(scores_path)]) == 0
    assert "2 test inputs rescored" in capsys.readouterr().out
    submission = json.loads(out.read_text())
    for (task_id, index), candidates in scores.items():
        best = max(candidates, key=lambda c: c.poe)
        assert submission[task_id][index]["attempt_1"] == best.grid
    with pytest.raises(SystemExit) as stop:  # poe without scores is a usage error
        pipeline_main(["vote", "--predictions", str(predictions), "--dataset", str(dataset), "--output",
                       str(out), "--method", "poe"])
    assert stop.value.code == 2 and "--scores goes with --method poe or nvarc" in capsys.readouterr().err
