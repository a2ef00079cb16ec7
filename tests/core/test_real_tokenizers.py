"""The public formats on their base models' real tokenizers (devtools/real_tokenizers.py: Qwen's
byte-level BPE vocabulary as Qwen3 publishes it, Llama 2's SentencePiece one), and the format of
weights that do not name theirs: recognised from the tokenizer and said, or a one-line error."""
from __future__ import annotations

import copy
import json

import pytest

from pipeline.core.encoders import create_grid_encoder
from pipeline.core.formats import FORMAT_NAMES, get_format, recognise_format
from pipeline.core.model_cfg import (TokenizerFacts, choose_format, read_tokenizer_facts, resolve_prompting,
                                     tokenizer_facts)
from pipeline.core.models import DUMMY_PREFIX_KEY, end_of_turn_token, fix_tokenizer, load_tokenizer, sequence_start
from pipeline.core.prompts import build_inference_prompt, build_train_sample, parse_response
from pipeline.core.tasks import load_tasks
from pipeline.training.trainer import encode_sample

from conftest import DATA, one_line_error

from devtools.real_tokenizers import (VOCAB_DIR, original_tokenizer, original_tokenizer_dir, qwen3_tokenizer,
                                      qwen3_tokenizer_dir, reference_cases)


@pytest.fixture(scope="module")
def eval_with_outputs():
    return load_tasks(DATA / "arc-agi-1" / "arc-agi_evaluation_challenges.json",
                      DATA / "arc-agi-1" / "arc-agi_evaluation_solutions.json")


@pytest.fixture(scope="module")
def spm():
    """(original, fixed): Llama 2's SentencePiece tokenizer as its owners encode, and as every stage loads it."""
    return original_tokenizer("llama-spm"), load_tokenizer(original_tokenizer_dir("llama-spm"))


@pytest.fixture(scope="module")
def qwen3():
    return qwen3_tokenizer(), load_tokenizer(qwen3_tokenizer_dir())


def test_the_vendored_vocabularies_are_small():
    sizes = {p.name: p.stat().st_size for p in VOCAB_DIR.iterdir()}
    assert {"LICENSE", "README.md", "ggml-vocab-qwen2.gguf.gz", "ggml-vocab-llama-spm.gguf.gz"} <= set(sizes)
    assert sum(sizes.values()) < 2_000_000, sizes


@pytest.mark.parametrize("name", ["qwen2", "llama-spm"])
def test_fixed_tokenizers_encode_llama_cpp_reference_texts_as_the_original_tokenizers(name):
    """llama.cpp's reference ids (the original Hugging Face tokenizers, no bos) after the sequence
    start: SentencePiece's dummy prefix, which fix_tokenizer moves into `sequence_start`, is where
    the original puts it, also before a text that starts with a space, where the tokenizer
    transformers makes of the file leaves it out (15 of these texts)."""
    fixed = load_tokenizer(original_tokenizer_dir(name))
    start = sequence_start(fixed)
    bos = fixed(start, add_special_tokens=False)["input_ids"][:1] if fixed.bos_token and start.startswith(fixed.bos_token) else []
    cases = [(text, ids) for text, ids in reference_cases(name) if text]
    assert len(cases) >= 40
    for text, ids in cases:
        assert fixed(start + text, add_special_tokens=False)["input_ids"] == bos + ids, text
    unfixed = original_tokenizer(name)
    misses = [text for text, ids in cases if unfixed(text, add_special_tokens=False)["input_ids"] != ids]
    assert len(misses) == (15 if name == "llama-spm" else 0) and all(t.startswith((" ", "\t", "\n")) for t in misses)


def test_fix_tokenizer_keeps_what_qwen3_defines(qwen3):
    original, _ = qwen3
    fixed = fix_tokenizer(copy.deepcopy(original))
    assert (fixed.bos_token, fixed.eos_token, fixed.pad_token, len(fixed)) == (None, "<|im_end|>", "<|endoftext|>", len(original))
    assert fixed.backend_tokenizer.to_str() == original.backend_tokenizer.to_str()
    assert sequence_start(fixed) == ""  # Qwen adds no bos


def test_fix_tokenizer_keeps_llama_bos_and_eos_and_moves_the_dummy_prefix(spm, tmp_path):
    original, fixed = spm
    assert original.chat_template is None and original("0")["input_ids"][0] == original.bos_token_id  # its bos, restored
    assert (fixed.bos_token, fixed.eos_token, fixed.unk_token) == (original.bos_token, original.eos_token, original.unk_token)
    assert end_of_turn_token(fixed) == "</s>"  # no chat template: its own eos ends a reply
    assert fixed.pad_token not in (None, fixed.eos_token)
    assert fixed("12\n3", add_special_tokens=False)["input_ids"] == original("12\n3", add_special_tokens=False)["input_ids"][1:]
    assert sequence_start(fixed) == "<s> "
    fixed.save_pretrained(str(tmp_path))  # the move survives saving: the space still belongs at the start
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())[DUMMY_PREFIX_KEY] is True
    again = load_tokenizer(tmp_path)
    assert sequence_start(again) == "<s> " and again.backend_tokenizer.to_str() == fixed.backend_tokenizer.to_str()


def test_architects_on_sentencepiece_has_the_ids_the_architects_fed(spm, eval_with_outputs):
    """bos, the dummy prefix and every piece of `tokenizer(prompt + reply)` as their pipeline calls
    it; the prompt and the reply encoded apart (as TTFT does) give the same ids; the reply ends
    with eos and the text decodes back byte for byte."""
    original, fixed = spm
    encoder = create_grid_encoder(resolve_prompting({}, "architects").grid_encoder)
    fmt = get_format("architects")
    for task in list(eval_with_outputs.values())[:100]:
        sample = build_train_sample(task, encoder, fixed, "architects")
        assert sample.prompt == "<s> " + fmt.prompt(task, 0, "</s>")
        assert build_inference_prompt(task, encoder, fixed, "architects") == sample.prompt
        encoded = encode_sample(fixed, sample)
        theirs = original(sample.prompt.removeprefix("<s> ") + sample.completion)["input_ids"]
        assert encoded["input_ids"] == theirs
        assert theirs[0] == fixed.bos_token_id and theirs[-1] == fixed.eos_token_id
        assert fixed.convert_ids_to_tokens(theirs[1:2]) == ["\u2581ABC"]  # the dummy prefix, merged as theirs
        assert fixed.decode(encoded["input_ids"]) == sample.prompt + sample.completion
        reply = [i for i, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100]
        assert parse_response(fixed.decode(reply[:-1]), encoder) == task["test"][0]["output"]


def test_nvarc_on_qwen3_one_token_per_cell_no_bos_and_im_end(qwen3, eval_with_outputs):
    original, fixed = qwen3
    encoder = create_grid_encoder(resolve_prompting({}, "nvarc").grid_encoder)
    fmt = get_format("nvarc")
    grids = [g for t in eval_with_outputs.values() for split in ("train", "test") for p in t[split] for g in p.values()]
    ids = fixed([fmt.grid_text(g) for g in grids], add_special_tokens=False)["input_ids"]
    digits = {fixed.convert_tokens_to_ids(str(d)) for d in range(10)}
    for grid, grid_ids in zip(grids, ids):
        assert [i for i in grid_ids if i in digits] == [fixed.convert_tokens_to_ids(str(c)) for row in grid for c in row]
        assert len(grid_ids) == sum(map(len, grid)) + len(grid) - 1  # one token per cell, one per row break
    im_start, im_end = fixed.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert fixed.eos_token_id == im_end and end_of_turn_token(fixed) == "<|im_end|>"  # as Qwen3's chat turns end
    for task in list(eval_with_outputs.values())[:100]:
        sample = build_train_sample(task, encoder, fixed, "nvarc")
        assert sample.prompt == fmt.prompt(task, 0, "<|im_end|>")  # no bos: Qwen3 adds none
        encoded = encode_sample(fixed, sample)
        assert encoded["input_ids"] == original(sample.prompt + sample.completion)["input_ids"]
        assert encoded["input_ids"][0] == im_start and encoded["input_ids"][-1] == im_end
        assert encoded["input_ids"].count(im_end) == encoded["input_ids"].count(im_start) == 2 * len(task["train"]) + 2
        assert fixed.decode(encoded["input_ids"]) == sample.prompt + sample.completion


# ----------------------------------------------------------------------------- recognising the format

def test_each_format_is_recognised_from_its_base_models_tokenizer(qwen3, spm, tokenizer, tmp_path):
    """Loaded or read from the saved files alone (the preflight's way), the same answer."""
    expected = {"nvarc": qwen3[1], "arc24": tokenizer, "architects": spm[1]}
    for name, tok in expected.items():
        directory = tmp_path / name
        tok.save_pretrained(str(directory))
        for facts in (tokenizer_facts(tok), read_tokenizer_facts(directory)):
            choice = choose_format({}, facts)
            assert choice.format == name and choice.source.startswith("recognised from the tokenizer"), (name, choice)
    assert set(expected) == set(FORMAT_NAMES)
    assert choose_format({}, tokenizer_facts(original_tokenizer("qwen2"))).format == "arc24"  # Qwen2.5: arc24's base


def test_reduced_vocabularies_are_recognised():
    assert recognise_format("", {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}, 16)[0] == "nvarc"  # NVARC's 16 tokens
    llama3 = "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + m['content'] + '<|eot_id|>' }}{% endfor %}"
    assert recognise_format(llama3, {"<|begin_of_text|>", "<|eot_id|>"}, 80)[0] == "architects"
    assert recognise_format(llama3, {"<|begin_of_text|>", "<|eot_id|>"}, 128256) is None  # Llama 3 itself: no telling


def test_the_weights_own_word_wins_and_no_word_at_all_is_an_error():
    llama3 = TokenizerFacts("llama3", "{{ m + '<|eot_id|>' }}", frozenset({"<|eot_id|>"}), 128256)
    qwen3 = TokenizerFacts("qwen3", "", frozenset({"<think>", "<|im_start|>", "<|im_end|>"}), 151669)
    assert choose_format({}, qwen3, "architects").format == "architects"
    assert choose_format({"format": "arc24"}, qwen3).source == "cfg.json"
    assert choose_format({"prompt_version": "output-from-examples-v1"}, qwen3).format == "arc24"  # arc24 training's cfg.json
    for facts in (llama3, None):
        with pytest.raises(ValueError) as error:
            choose_format({}, facts)
        message = str(error.value)
        assert "`format`" in message and "--format (arc24|architects|nvarc)" in message and "\n" not in message
    with pytest.raises(ValueError, match="unknown format 'mit'"):
        choose_format({"format": "mit"}, None)


@pytest.fixture(scope="module")
def unrecognised_model(tmp_path_factory, tokenizer):
    """A tiny model whose tokenizer has a Llama 3 chat template (any format could use it), no cfg.json."""
    from devtools.random_models import save_tiny_model

    llama3 = copy.deepcopy(tokenizer)
    llama3.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    llama3.chat_template = "{% for m in messages %}{{ m['content'] + '<|eot_id|>' }}{% endfor %}"
    return save_tiny_model(tmp_path_factory.mktemp("llama3") / "model", llama3, num_hidden_layers=1)


def test_every_stage_stops_on_weights_that_do_not_tell_their_format(unrecognised_model, eval_tasks, tmp_path, capsys):
    from pipeline.sampling import sample
    from pipeline.selection import rescore
    from pipeline.ttft import ttft

    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({t: eval_tasks[t] for t in sorted(eval_tasks)[:1]}))
    (tmp_path / "pred.jsonl").write_text("")
    model = str(unrecognised_model)
    runs = {"ttft": lambda *flags: ttft.main(["--model", model, "--dataset", str(tasks), "--output_dir",
                                              str(tmp_path / "ttft"), "--steps", "1", "--devices", "cpu", *flags]),
            "sample": lambda *flags: sample.main(["--model", model, "--dataset", str(tasks), "--output",
                                                  str(tmp_path / "s.jsonl"), "--engine", "transformers", "--quiet", *flags]),
            "rescore": lambda *flags: rescore.main(["--model", model, "--dataset", str(tasks), "--predictions",
                                                    str(tmp_path / "pred.jsonl"), "--output", str(tmp_path / "r.jsonl"),
                                                    "--quiet", *flags])}
    for stage, run in runs.items():
        assert run() == 1, stage
        one_line_error(capsys.readouterr().err, stage, "`format`", "--format")
    assert not (tmp_path / "ttft").exists() and not (tmp_path / "s.jsonl").exists()
    # told, the same weights pass the format (rescore: nothing to score)
    assert runs["rescore"]("--format", "arc24") == 0
    said = capsys.readouterr()
    assert "format arc24 (--format)" in said.out + said.err
