"""Reduced vocabulary (`shrink-vocab`): exact tokenization, the same logits at the kept ids, the
same greedy answers, the loss renormalised over the kept tokens, and every format through TTFT,
sampling and voting on a tiny model with its reduced tokenizer."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.sampling import sample as sampling
from pipeline.ttft import ttft
from pipeline.selection import vote as voting
from pipeline.core.settings import RescoreSettings, SampleSettings
from pipeline.core.encoders import create_grid_encoder
from pipeline.core.files import read_json, read_jsonl
from pipeline.core.formats import FORMAT_NAMES, get_format
from pipeline.core.models import load_model_and_tokenizer, load_tokenizer
from pipeline.core.prompts import build_train_sample
from pipeline.core.model_cfg import resolve_prompting
from pipeline.sampling.plan import build_plan
from pipeline.core.tasks import load_tasks, select_tasks
from pipeline.training.trainer import encode_sample
from pipeline.training.shrink_vocab import VOCAB_FILE, keep_ids, reduced_tokenizer, shrink_tokenizer_json, shrink_vocab, write_tokenizer

from conftest import DATA

EVAL = DATA / "arc-agi-1" / "arc-agi_evaluation_challenges.json"


@pytest.fixture(scope="module")
def eval_with_outputs():
    return load_tasks(EVAL, DATA / "arc-agi-1" / "arc-agi_evaluation_solutions.json")


@pytest.fixture(scope="module")
def smallest(eval_with_outputs):
    """The dry run's tasks: the 3 smallest evaluation tasks."""
    return select_tasks(eval_with_outputs, sort_by_size=True, first_n=3)


def test_keep_ids_closes_over_merge_ancestry_and_drops_unused_merges():
    # a, b, c; "ab" then "abc"; "bc" is a merge no kept token needs
    tok = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5, "zz": 6},
                     "merges": [["a", "b"], ["b", "c"], ["ab", "c"], ["z", "z"]]},
           "added_tokens": [{"id": 7, "content": "<s>"}]}
    kept = keep_ids(tok, [5])
    assert kept == [0, 1, 2, 3, 5, 7]  # abc's ancestors a, b, ab, c; single characters; the added token
    small = shrink_tokenizer_json(tok, kept)
    assert small["model"]["vocab"] == {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4}
    assert small["model"]["merges"] == [["a", "b"], ["ab", "c"]]
    assert small["added_tokens"] == [{"id": 5, "content": "<s>"}]


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_reduced_tokenizer_encodes_every_evaluation_text_exactly(name, embedded_model_dir, tokenizer,
                                                                  eval_with_outputs, tmp_path):
    """Built from synthetic grids only, it encodes the 400 evaluation tasks' texts (never seen) to
    the full tokenizer's tokens, and decodes them back byte for byte."""
    from pipeline.training.shrink_vocab import format_texts

    full_json = read_json(embedded_model_dir / "tokenizer.json")
    small_json, kept, facts = reduced_tokenizer(full_json, tokenizer, name)
    write_tokenizer(tmp_path, embedded_model_dir, small_json)
    small = load_tokenizer(tmp_path)
    assert len(small) == len(kept) < 1000
    assert (small.eos_token, small.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
    texts = list(format_texts(eval_with_outputs, tokenizer, name))
    assert len(texts) >= 419
    full_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    small_ids = small(texts, add_special_tokens=False)["input_ids"]
    for text, f, s in zip(texts, full_ids, small_ids):
        assert [kept[i] for i in s] == f
        assert small.decode(s) == text
    if name == "nvarc":
        assert facts["tokens_used"] == 16  # NVARC's own count: 10 digits, newline, the turn markers


@pytest.fixture(scope="module")
def reduced_embedded(embedded_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reduced") / "smollm2-arc24"
    cfg = shrink_vocab(str(embedded_model_dir), "arc24", out, log=lambda *_: None)
    return out, cfg


def test_reduced_model_keeps_the_full_logits_at_the_kept_ids_and_the_loss_renormalised(
        reduced_embedded, embedded_model_dir, smallest):
    out, cfg = reduced_embedded
    kept = read_json(out / VOCAB_FILE)["kept_ids"]
    assert cfg["vocab_size"] == len(kept) < 1000 and cfg["format"] == "arc24"
    full, full_tok = load_model_and_tokenizer(embedded_model_dir)
    small, small_tok = load_model_and_tokenizer(out)
    assert small.get_input_embeddings().num_embeddings == len(kept)
    assert small.get_output_embeddings().weight.data_ptr() == small.get_input_embeddings().weight.data_ptr()  # tied
    encoder = create_grid_encoder(cfg["grid_encoder"])
    task = next(iter(smallest.values()))
    sample = build_train_sample(task, encoder, full_tok, cfg["prompt_version"])
    f, s = encode_sample(full_tok, sample), encode_sample(small_tok, sample)
    assert [kept[i] for i in s["input_ids"]] == f["input_ids"] and s["labels"].count(-100) == f["labels"].count(-100)
    with torch.no_grad():
        fo = full(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]))
        so = small(input_ids=torch.tensor([s["input_ids"]]), labels=torch.tensor([s["labels"]]))
    torch.testing.assert_close(so.logits[0], fo.logits[0][:, kept], rtol=1e-5, atol=1e-4)
    # the reduced loss is the full model's loss over the kept tokens only ...
    labels = torch.tensor(f["labels"][1:])
    mask = labels != -100
    renormalised = torch.nn.functional.cross_entropy(fo.logits[0, :-1][mask][:, kept],
                                                     torch.tensor([kept.index(i) for i in labels[mask].tolist()]))
    assert abs(so.loss.item() - renormalised.item()) < 1e-4
    # ... which is never above the full loss: the dropped tokens' probability mass is gone
    assert so.loss.item() <= fo.loss.item() + 1e-6


def test_reduced_model_answers_the_dry_run_tasks_exactly_like_the_full_model(reduced_embedded, embedded_model_dir,
                                                                             smallest, tmp_path):
    out, _ = reduced_embedded
    texts = {}
    for name, model in (("full", embedded_model_dir), ("reduced", out)):
        sampling.sample(str(model), smallest, tmp_path / f"{name}.jsonl",
                        SampleSettings(predictions_per_task=1, engine="transformers", max_tokens="task"),
                        progress=False, log=lambda *_: None)
        texts[name] = {(r["task_id"], r["test_index"], r["sample_index"]): r["text"]
                       for r in read_jsonl(tmp_path / f"{name}.jsonl")}
    assert len(texts["full"]) == sum(len(t["test"]) for t in smallest.values())
    assert texts["reduced"] == texts["full"]


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_format_runs_ttft_sampling_and_voting_on_a_tiny_model_with_its_reduced_tokenizer(
        name, tiny_model_dir, smallest, tmp_path):
    model = tmp_path / f"tiny-{name}"
    shrink_vocab(str(tiny_model_dir), name, model, log=lambda *_: None)
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps({t: {"train": v["train"], "test": [{"input": p["input"]} for p in v["test"]]}
                                      for t, v in list(smallest.items())[:2]}))
    # the model's cfg.json names the format: no flag is needed anywhere
    assert ttft.main(["--model", str(model), "--dataset", str(tasks_file), "--output_dir", str(tmp_path / "ttft"),
                      "--steps", "2", "--learning_rate", "1e-2", "--max_seq_len", "2048", "--lora_r", "4",
                      "--devices", "cpu", "--no_progress"]) == 0
    run_cfg = read_json(tmp_path / "ttft" / "cfg.json")
    expected = resolve_prompting({"format": name})
    assert (run_cfg["format"], run_cfg["grid_encoder"], run_cfg["prompt_version"]) == (
        expected.format, expected.grid_encoder, expected.prompt_version)
    records = [read_json(p) for p in (tmp_path / "ttft" / "adapters").glob("*/record.json")]
    assert len(records) == 2 and all(r["status"] == "done" and r["format"] == name for r in records)
    assert sampling.main(["--model", str(model), "--dataset", str(tasks_file), "--adapters_dir", str(tmp_path / "ttft"),
                          "--output", str(tmp_path / "pred.jsonl"), "--predictions_per_task", "2", "--engine",
                          "transformers", "--max_tokens", "task", "--quiet"]) == 0
    assert read_json(tmp_path / "pred.jsonl.meta.json")["format"] == name
    predictions = list(read_jsonl(tmp_path / "pred.jsonl"))
    assert len(predictions) == 2 * sum(len(t["test"]) for t in list(smallest.values())[:2])
    assert voting.main(["--predictions", str(tmp_path / "pred.jsonl"), "--dataset", str(tasks_file),
                        "--output", str(tmp_path / "submission.json")]) == 0
    submission = read_json(tmp_path / "submission.json")
    assert set(submission) == set(list(smallest)[:2])
    # the prompts sampling asked were the format's own texts
    small_tok = load_tokenizer(model)
    enc = create_grid_encoder(expected.grid_encoder)
    plan = build_plan(json.loads(tasks_file.read_text()), small_tok, enc, expected.prompt_version, 1)
    text = small_tok.decode(plan[0].prompt_ids)
    task = json.loads(tasks_file.read_text())[plan[0].task_id]
    if name == "arc24":
        assert text.startswith("<|im_start|>system") and text.endswith("```grid")
    else:
        view = plan[0].augmentation.apply_task(task)
        assert text == get_format(name).prompt(view, plan[0].test_index, small_tok.eos_token)


def test_shrink_vocab_cli_refuses_an_unknown_format_and_leaves_nothing(tmp_path, capsys):
    from pipeline.training.shrink_vocab import main

    with pytest.raises(SystemExit):
        main(["--model", "embedded", "--format", "mit", "--output", str(tmp_path / "out")])
    assert "invalid choice: 'mit'" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "missing"), "--format", "nvarc", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("shrink-vocab: error:") and "missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_the_committed_benchmark_tokenizer_is_what_shrink_vocab_makes(embedded_model_dir, tokenizer):
    """devtools' small tokenizer (the GPU benchmarks' stand-in for the embedded model) must not go stale."""
    from devtools.random_models import BENCH_TOKENIZER

    small_json, kept, _ = reduced_tokenizer(read_json(embedded_model_dir / "tokenizer.json"), tokenizer, "arc24")
    assert read_json(BENCH_TOKENIZER / "tokenizer.json") == small_json
    bench = load_tokenizer(BENCH_TOKENIZER)
    assert len(bench) == len(kept) and bench.eos_token == tokenizer.eos_token


def test_a_reduced_model_fine_tunes_samples_on_both_engines_and_rescores_in_its_format(tiny_model_dir, tmp_path):
    """nvarc, the 16-token format: fine-tune the reduced tiny model to answer one task, then the
    sample stage answers it with the transformers engine and with vLLM (a plain model to it), and
    rescoring scores the candidates, all in the format its cfg.json names."""
    import subprocess
    import sys

    from pipeline.training.finetune import FinetuneConfig, run_finetune
    from pipeline.selection.rescore import rescore

    from conftest import REPO

    model = tmp_path / "tiny-nvarc"
    shrink_vocab(str(tiny_model_dir), "nvarc", model, log=lambda *_: None)
    task = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]},
                      {"input": [[5, 0], [0, 6]], "output": [[6, 0], [0, 5]]}],
            "test": [{"input": [[7, 8], [9, 1]], "output": [[1, 9], [8, 7]]}]}
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"t": task}))
    cfg = FinetuneConfig(model_path=str(model), format="nvarc", train_datasets=[[str(train), "nvarc"]],
                         output_dir=str(tmp_path / "ft"), max_steps=60, batch_size=1, learning_rate=3e-3,
                         lr_scheduler_type="constant", warmup_ratio=0.0, augment=False, use_lora=False,
                         eval_steps=0, logging_steps=20, verbose=False)
    assert run_finetune(cfg)["train_loss"] < 0.25
    run_cfg = read_json(tmp_path / "ft" / "cfg.json")
    assert (run_cfg["format"], run_cfg["prompt_version"]) == ("nvarc", "nvarc")
    challenge = tmp_path / "challenge.json"
    challenge.write_text(json.dumps({"t": {"train": task["train"], "test": [{"input": task["test"][0]["input"]}]}}))
    # greedy on the prompt it was trained on: its answer, written in the format
    from pipeline.sampling.generation import Request
    from pipeline.sampling.transformers_engine import TransformersEngine
    from pipeline.core.prompts import build_inference_prompt, parse_response

    engine = TransformersEngine(tmp_path / "ft")
    prompt = build_inference_prompt(task, create_grid_encoder(run_cfg["grid_encoder"]), engine.tokenizer, "nvarc")
    assert prompt == get_format("nvarc").prompt(task, 0, engine.tokenizer.eos_token)
    [answer] = engine.generate([Request(tuple(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]), 16)])
    engine.close()
    assert parse_response(answer.text, create_grid_encoder(run_cfg["grid_encoder"])) == task["test"][0]["output"]
    assert answer.finish_reason == "stop"  # it ends its reply with <|im_end|>, the format's end marker
    # the sample stage, both engines, one augmented view: the same answer from the same prompt
    grids = {}
    for name in ("transformers", "vllm"):
        done = subprocess.run([sys.executable, "-m", "pipeline", "sample", "--model", str(tmp_path / "ft"),
                               "--dataset", str(challenge), "--output", str(tmp_path / f"{name}.jsonl"),
                               "--predictions_per_task", "1", "--engine", name, "--max_tokens", "task",
                               "--max_model_len", "512", "--quiet"],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-1500:]
        assert "format nvarc" in done.stdout
        [record] = read_jsonl(tmp_path / f"{name}.jsonl")
        grids[name] = (record["text"], record["grid"], record["error"])
    assert grids["transformers"] == grids["vllm"]
    assert grids["vllm"][1] is not None and grids["vllm"][2] is None  # a grid of the format, mapped back
    counts = rescore(str(tmp_path / "ft"), str(challenge), [str(tmp_path / "transformers.jsonl")],
                     tmp_path / "scores.jsonl", RescoreSettings(views=2), progress=False, log=lambda *_: None)
    assert counts["scored"] == 1 and counts["candidates"] == 1
    [scores] = read_jsonl(tmp_path / "scores.jsonl")
    assert scores["task_id"] == "t"


def test_a_model_with_padded_embeddings_shrinks_to_the_same_logits(tokenizer, tmp_path):
    """Qwen checkpoints carry more embedding rows than tokens (151,936 for 151,665): the padding
    rows go with the rest, and the kept rows still give the same logits."""
    from devtools.random_models import save_tiny_model

    full_dir = save_tiny_model(tmp_path / "padded", tokenizer, arch="qwen2", vocab_size=len(tokenizer) + 64)
    cfg = shrink_vocab(str(full_dir), "nvarc", tmp_path / "small", log=lambda *_: None)
    kept = read_json(tmp_path / "small" / VOCAB_FILE)["kept_ids"]
    assert cfg["vocab_size"] == len(kept) and max(kept) < len(tokenizer)
    full, _ = load_model_and_tokenizer(full_dir)
    small, small_tok = load_model_and_tokenizer(tmp_path / "small")
    text = get_format("nvarc").prompt({"train": [{"input": [[1, 2]], "output": [[3]]}], "test": [{"input": [[4]]}]},
                                      0, small_tok.eos_token)
    ids = small_tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        a = full(input_ids=torch.tensor([[kept[i] for i in ids]])).logits[0][:, kept]
        b = small(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- real vocabularies

REAL = {"nvarc": ("qwen3", "qwen2"), "architects": ("llama-spm", "llama")}  # format: (base tokenizer, tiny arch)


@pytest.fixture(scope="module")
def real_models(tmp_path_factory):
    """Per format, a tiny random model with its base models' real tokenizer (devtools/real_tokenizers.py:
    Qwen3's byte-level BPE, 151,936 rows; Llama 2's SentencePiece) and its shrink-vocab copy."""
    from devtools.random_models import save_tiny_model
    from devtools.real_tokenizers import original_tokenizer_dir, qwen3_tokenizer_dir

    root = tmp_path_factory.mktemp("real")
    models = {}
    for name, (vocab, arch) in REAL.items():
        tokenizer = load_tokenizer(qwen3_tokenizer_dir() if vocab == "qwen3" else original_tokenizer_dir(vocab))
        full = save_tiny_model(root / vocab, tokenizer, arch=arch, num_hidden_layers=1)
        cfg = shrink_vocab(str(full), name, root / f"{vocab}-{name}", log=lambda *_: None)
        models[name] = full, root / f"{vocab}-{name}", cfg
    return models


@pytest.mark.parametrize("name", sorted(REAL))
def test_shrink_vocab_on_a_real_vocabulary_encodes_every_evaluation_text_as_the_full_one(name, real_models,
                                                                                         eval_with_outputs):
    """nvarc on Qwen's real vocabulary, architects on Llama 2's SentencePiece one (bos and dummy
    prefix included): the reduced tokenizer encodes the 400 evaluation tasks' texts to the full
    tokenizer's ids and decodes them back; the reduced model's logits are the full one's there."""
    from pipeline.training.shrink_vocab import format_texts

    full_dir, small_dir, cfg = real_models[name]
    full, small = load_tokenizer(full_dir), load_tokenizer(small_dir)
    kept = read_json(small_dir / VOCAB_FILE)["kept_ids"]
    assert len(small) == len(kept) == cfg["vocab_size"] < len(full) // 10
    assert (small.bos_token, small.eos_token, small.pad_token) == (full.bos_token, full.eos_token, full.pad_token)
    texts = list(format_texts(eval_with_outputs, full, name))
    assert len(texts) >= 419
    for text, f, s in zip(texts, full(texts, add_special_tokens=False)["input_ids"],
                          small(texts, add_special_tokens=False)["input_ids"]):
        assert [kept[i] for i in s] == f
        assert small.decode(s) == text
    if name == "nvarc":  # 10 digits, the newline, "user", "assistant" and the two turn markers
        assert cfg["tokens_used"] == 15
    else:
        assert texts[0].startswith("<s> ABC")
    full_model, _ = load_model_and_tokenizer(full_dir)
    small_model, _ = load_model_and_tokenizer(small_dir)
    ids = small(texts[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        a = full_model(input_ids=torch.tensor([[kept[i] for i in ids]])).logits[0][:, kept]
        b = small_model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_a_qwen3_model_without_cfg_json_samples_in_nvarc_and_says_so(real_models, smallest, tmp_path, capsys):
    """No cfg.json, no flag: the sample stage recognises NVARC's format from Qwen3's tokens and
    prints what it picked and why."""
    import shutil

    _, small_dir, _ = real_models["nvarc"]
    model = tmp_path / "published"
    shutil.copytree(small_dir, model)
    (model / "cfg.json").unlink()
    tasks_file = tmp_path / "tasks.json"
    task_id = next(iter(smallest))
    tasks_file.write_text(json.dumps({task_id: smallest[task_id]}))
    assert sampling.main(["--model", str(model), "--dataset", str(tasks_file), "--output", str(tmp_path / "p.jsonl"),
                          "--predictions_per_task", "1", "--engine", "transformers", "--max_tokens", "task"]) == 0
    said = capsys.readouterr().out
    assert "format nvarc (recognised from the tokenizer: Qwen3 tokens (<think>, </think>)" in said
    assert read_json(tmp_path / "p.jsonl.meta.json")["format"] == "nvarc"
