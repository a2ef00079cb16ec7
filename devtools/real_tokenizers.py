"""Real tokenizers of the public checkpoints' base-model families, for the tests (never for a run).

The vocabularies come from llama.cpp's vocab-only GGUF files, vendored gzipped in `devtools/vocab/`
(where from, the version and the licence: devtools/vocab/README.md):

* `qwen2`: the byte-level BPE vocabulary Qwen2, Qwen2.5 and Qwen3 share (151,643 tokens + the
  ChatML markers, 151,936 rows);
* `llama-spm`: Llama 2's SentencePiece vocabulary (32,000 tokens, byte fallback), Mistral 7B's
  kind of tokenizer.

Each file comes with llama.cpp's reference tokenizations (`.inp` texts, `.out` ids, made with the
original Hugging Face tokenizers; no bos), which `reference_cases` reads.

`original_tokenizer(name)` is the file's tokenizer as transformers loads it, with the bos its
original adds (`models.load_gguf_tokenizer`), before `fix_tokenizer`: what the checkpoints'
owners encoded with.  `qwen3_tokenizer()` is the Qwen vocabulary as Qwen3 (NVARC's base)
publishes it: the added tokens Qwen3 has at ids 151,646-151,668 (in the GGUF those ids are
padding placeholders), no bos, eos `<|im_end|>`, pad `<|endoftext|>`.  Conversions are cached
under the pipeline's cache root (`vocab/`), so a test session pays the ~10 s GGUF parse once.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from pipeline.core.files import atomic_dir
from pipeline.core.models import quiet, cache_root, load_gguf_tokenizer

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
# sha256 of the decompressed files, as in llama-cpp-python 0.3.36's sdist (devtools/vocab/README.md)
VOCABS = {
    "qwen2": "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
    "llama-spm": "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
}
REFERENCE_SEPARATOR = "\n__ggml_vocab_test__\n"

# Qwen3's added tokens after the ChatML markers (ids 151,646-151,668: facts of its tokenizer.json);
# the `<|...|>` ones are special, the tool and think tags are not.
QWEN3_ADDED = (
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
    "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
QWEN3_FIRST_ADDED = 151646


def vocab_gguf(name: str) -> Path:
    """The decompressed vocab GGUF (cached; its sha256 checked against the vendored version)."""
    if name not in VOCABS:
        raise ValueError(f"unknown vocabulary {name!r}: one of {', '.join(VOCABS)}")
    path = cache_root() / "vocab" / f"ggml-vocab-{name}.gguf"
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == VOCABS[name]:
        return path
    data = gzip.decompress((VOCAB_DIR / f"ggml-vocab-{name}.gguf.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != VOCABS[name]:
        raise RuntimeError(f"devtools/vocab/ggml-vocab-{name}.gguf.gz is not the vendored file (sha256 differs)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{hashlib.sha256(data).hexdigest()[:8]}")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def reference_cases(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's reference tokenizations of the vocabulary: (text, ids without bos)."""
    texts = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(REFERENCE_SEPARATOR)
    if texts[-1] == "":  # every text ends with the separator
        texts.pop()
    ids = [[int(i) for i in line.split()] for line in
           (VOCAB_DIR / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")[:len(texts)]]
    if len(ids) != len(texts):
        raise RuntimeError(f"{name}: {len(texts)} reference texts but {len(ids)} tokenizations")
    return list(zip(texts, ids))


def _cached_tokenizer_dir(key: str, build) -> Path:
    directory = cache_root() / "vocab" / key
    if (directory / "tokenizer.json").is_file():
        return directory
    tokenizer = build()
    with atomic_dir(directory, overwrite=False) as tmp:
        with quiet():
            tokenizer.save_pretrained(str(tmp))
    return directory


def _load(directory: Path):
    from transformers import AutoTokenizer

    with quiet():
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def original_tokenizer_dir(name: str) -> Path:
    return _cached_tokenizer_dir(f"{name}-{VOCABS[name][:12]}", lambda: load_gguf_tokenizer(vocab_gguf(name)))


def original_tokenizer(name: str):
    """The vocabulary's tokenizer as its original encodes (bos where it adds one), not fixed."""
    return _load(original_tokenizer_dir(name))


def _dress_as_qwen3():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    qwen = original_tokenizer("qwen2")
    spec = json.loads(qwen.backend_tokenizer.to_str())
    names = {QWEN3_FIRST_ADDED + i: token for i, token in enumerate(QWEN3_ADDED)}
    vocab = spec["model"]["vocab"]
    for token, index in list(vocab.items()):
        if index in names:
            del vocab[token]
            vocab[names[index]] = index
    for added in spec["added_tokens"]:
        if added["id"] in names:
            added["content"] = names[added["id"]]
            added["special"] = names[added["id"]].startswith("<|")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=None,
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=qwen.chat_template)


def qwen3_tokenizer_dir() -> Path:
    return _cached_tokenizer_dir(f"qwen3-{VOCABS['qwen2'][:12]}", _dress_as_qwen3)


def qwen3_tokenizer():
    """The Qwen vocabulary with Qwen3's added tokens and special-token settings, not fixed."""
    return _load(qwen3_tokenizer_dir())
