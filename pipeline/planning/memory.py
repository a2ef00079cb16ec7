"""GPU memory of the stages, from a model's `config.json`: what TTFT and sampling will hold on one
GPU, part by part, before anything is loaded (kaggle/PLANNER.md, "GPU memory").

* `ARCHITECTURES` (from planning/architectures.py): named architectures as their published
  `config.json` fields, for planning a model whose folder is not at hand (`model_shape("qwen3-4b")`).
* `ModelShape.from_config` / `model_shape`: the shape a memory model needs (layers, hidden size,
  heads and KV heads, head_dim, MLP size, vocabulary, tied embeddings) and the parameters by kind.
* `ttft_memory`: one TTFT training step (weights, trainable parameters, their gradients and AdamW
  states, saved activations at the step's sequence length with or without gradient checkpointing,
  the loss's logits, CUDA context and allocator slack).
* `sampling_memory`: vLLM (weights, LoRA slots and KV cache under `gpu_memory_utilization`) or the
  transformers engine (weights, KV cache and logits of one batch).

Exact where it can be: parameter, gradient and optimizer bytes are the tensors' sizes (checked
against real models in tests/planning/test_memory.py). Activations are counted tensor by tensor
from what the HF Llama/Qwen2/Qwen3 layers and peft's LoRA save for the backward pass (checked with
saved-tensor hooks on small models); the CUDA context and allocator slack are stated constants.

Standard library only: the Kaggle run's preflight uses it before the offline install. It is over
420 lines because the shape's terms, the parts and both stages' formulas are one model read
together (kaggle/PLANNER.md lists them in one table); the named architectures live apart.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.settings import (ATTENTION_MODULES, DEFAULT_LORA_R, DEFAULT_LORA_TARGET, EMBEDDING_MODULES,
                                    LINEAR_MODULES, LORA_TARGET_PRESETS, MLP_MODULES)
from pipeline.planning.architectures import ARCHITECTURES  # the named architectures (memory.ARCHITECTURES too)

GIB = 1024 ** 3
# "auto": the stages' precision rule, 16-bit on a GPU (bf16, or fp16 where bf16 is missing)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
# model_type by the `architectures` class, for a config that names only the class
MODEL_TYPES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}

# The block's linear layers and the embedding modules as peft names them (core/settings.py, the
# trainer's table); presets are "+"-joined groups: "all-linear" is every linear layer but the head.
TARGET_GROUPS = {"attention": ATTENTION_MODULES, "mlp": MLP_MODULES, "all-linear": LINEAR_MODULES,
                 "embeddings": EMBEDDING_MODULES}

# Stated constants (estimates, not measured here; kaggle/PLANNER.md "GPU memory"):
CUDA_CONTEXT_BYTES = 512 * 2 ** 20  # the CUDA context, cuBLAS and kernels loaded lazily: outside torch's
                                    # allocator, inside the card's capacity (~300-600 MiB on recent cards)
ALLOCATOR_SLACK = 0.10              # reserved beyond allocated (fragmentation of the caching allocator)
LORA_PARAM_BYTES = 4                # peft's get_peft_model upcasts 16-bit adapters to float32
                                    # (autocast_adapter_dtype=True, its default, which the stages keep)
VLLM_BATCHED_TOKENS = 8192          # vLLM V1's max_num_batched_tokens for the LLM class: its profiling
                                    # forward pass, whose activations it keeps room for
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0}  # states per trainable parameter, each of the parameter's dtype
# SDPA's kernels: "flash" (flash / memory-efficient / cuDNN: O(T) memory) or "math" (the heads x T x T
# attention matrix). transformers passes GQA models' keys and values unrepeated (enable_gqa) when
# there is no padding mask; only the flash kernel takes that, and it needs compute capability 8.0:
# on a T4 (7.5) such attention falls back to the math kernel (PyTorch's dispatch rules; not measured)
ATTENTION_KERNELS = ("flash", "math")


def attention_kernel(shape: "ModelShape", compute_capability: float | None) -> str:
    """The SDPA kernel a step without padding runs on a GPU of `compute_capability` (None: unknown,
    taken as 8.0+)."""
    grouped = shape.num_kv_heads < shape.num_heads
    return "math" if grouped and compute_capability is not None and compute_capability < 8.0 else "flash"


class ShapeError(ValueError):
    """A config.json (or architecture name) the memory model cannot read; the message names it."""


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of a Llama / Qwen2 / Qwen3 / SmolLM-style decoder."""
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool = False        # Qwen2: q/k/v have a bias; Llama/Qwen3 `attention_bias`: q/k/v/o
    o_bias: bool = False
    qk_norm: bool = False         # Qwen3: an RMSNorm of head_dim on every query and key head
    mlp_bias: bool = False
    max_position_embeddings: int | None = None
    source: str = ""

    @classmethod
    def from_config(cls, config: Mapping, source: str = "config.json") -> "ModelShape":
        """From a config.json's fields (a multimodal config's `text_config` when the top level has
        no `hidden_size`: the language model only). ShapeError naming the missing key."""
        if "hidden_size" not in config and isinstance(config.get("text_config"), Mapping):
            config = {**config["text_config"], "model_type": config["text_config"].get("model_type", "")}

        def need(key: str) -> int:
            value = config.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problem = "has no" if key not in config else f"has {key}={value!r}, not a positive integer, for"
                raise ShapeError(f"{source}: {problem} {key!r} (the memory model reads Llama/Qwen2/Qwen3-style "
                                 f"keys: vocab_size, hidden_size, intermediate_size, num_hidden_layers, "
                                 f"num_attention_heads)")
            return value

        hidden, heads = need("hidden_size"), need("num_attention_heads")
        model_type = str(config.get("model_type") or next(
            (MODEL_TYPES[a] for a in config.get("architectures") or () if a in MODEL_TYPES), ""))
        attention_bias = bool(config.get("attention_bias", False))
        return cls(model_type=model_type, vocab_size=need("vocab_size"), hidden_size=hidden,
                   intermediate_size=need("intermediate_size"), num_layers=need("num_hidden_layers"),
                   num_heads=heads, num_kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or hidden // heads),
                   # transformers' Llama/Qwen2/Qwen3 config classes default to untied
                   tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                   qkv_bias=model_type == "qwen2" or attention_bias, o_bias=attention_bias,
                   qk_norm=model_type.startswith("qwen3"), mlp_bias=bool(config.get("mlp_bias", False)),
                   max_position_embeddings=config.get("max_position_embeddings"), source=source)

    # --- sizes
    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """{module: (in_features, out_features)} of one block's linear layers."""
        d, f = self.hidden_size, self.intermediate_size
        return {"q_proj": (d, self.q_dim), "k_proj": (d, self.kv_dim), "v_proj": (d, self.kv_dim),
                "o_proj": (self.q_dim, d), "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}

    # --- parameters by kind
    @property
    def embeddings(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def attention(self) -> int:
        shapes = self.linear_shapes()
        weights = sum(i * o for m, (i, o) in shapes.items() if m in ATTENTION_MODULES)
        bias = (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + self.hidden_size * self.o_bias
        return self.num_layers * (weights + bias)

    @property
    def mlp(self) -> int:
        bias = (2 * self.intermediate_size + self.hidden_size) * self.mlp_bias
        return self.num_layers * (3 * self.hidden_size * self.intermediate_size + bias)

    @property
    def norms(self) -> int:
        per_layer = 2 * self.hidden_size + 2 * self.head_dim * self.qk_norm
        return self.num_layers * per_layer + self.hidden_size

    @property
    def total(self) -> int:
        return self.embeddings + self.lm_head + self.attention + self.mlp + self.norms

    def kv_bytes_per_token(self, dtype: str) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.num_layers * self.kv_dim * dtype_bytes(dtype)

    def describe(self) -> str:
        return (f"{self.source or self.model_type}: {self.total / 1e9:.2f} B parameters, {self.num_layers} layers, "
                f"hidden {self.hidden_size}, heads {self.num_heads}/{self.num_kv_heads} KV x {self.head_dim}, "
                f"MLP {self.intermediate_size}, vocabulary {self.vocab_size}"
                f"{', tied embeddings' if self.tie_word_embeddings else ''}")


def model_shape(spec: "str | os.PathLike | Mapping | ModelShape") -> ModelShape:
    """A ModelShape from an ARCHITECTURES name, a model folder or its config.json, or the dict."""
    if isinstance(spec, ModelShape):
        return spec
    if isinstance(spec, Mapping):
        return ModelShape.from_config(spec, "config")
    name = os.fspath(spec)
    if name.lower() in ARCHITECTURES:
        return ModelShape.from_config(ARCHITECTURES[name.lower()], name.lower())
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ShapeError(f"{name}: neither a named architecture ({', '.join(ARCHITECTURES)}) nor a model folder "
                         f"with a config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ShapeError(f"{path}: unreadable config.json ({e})") from None
    if not isinstance(config, Mapping):
        raise ShapeError(f"{path}: not a JSON object")
    return ModelShape.from_config(config, str(path))


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}: the memory model knows {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def resolve_lora_targets(values: "str | Sequence[str]") -> tuple[tuple[str, ...], bool]:
    """(the block's linear modules, whether embed_tokens and lm_head get LoRA too) of LoRA targets:
    module names, "all-linear", or presets joined by "+" ("attention+mlp", "all-linear+embeddings")."""
    names = [values] if isinstance(values, str) else list(values)
    parts = [p for n in names for p in n.replace(",", " ").replace("+", " ").split()]
    modules, embeddings = set(), False
    for part in parts:
        group = TARGET_GROUPS.get(part, (part,))
        unknown = [m for m in group if m not in LINEAR_MODULES + EMBEDDING_MODULES]
        if unknown:
            raise ValueError(f"LoRA target {part!r}: not a module the memory model knows ("
                             f"{', '.join(LINEAR_MODULES + EMBEDDING_MODULES)}) nor one of {', '.join(TARGET_GROUPS)}")
        modules |= {m for m in group if m in LINEAR_MODULES}
        embeddings |= any(m in EMBEDDING_MODULES for m in group)
    if not modules and not embeddings:
        raise ValueError("LoRA needs at least one target module")
    return tuple(m for m in LINEAR_MODULES if m in modules), embeddings


def lora_parameters(shape: ModelShape, r: int, modules: Sequence[str], embeddings: bool = False) -> int:
    """Parameters of a rank-r LoRA (A: r x in, B: out x r) on `modules` of every block, plus
    embed_tokens (A: r x vocabulary, B: hidden x r) and lm_head (A: r x hidden, B: vocabulary x r)."""
    shapes = shape.linear_shapes()
    per_layer = sum(r * (shapes[m][0] + shapes[m][1]) for m in modules)
    head = 2 * r * (shape.vocab_size + shape.hidden_size) if embeddings else 0
    return shape.num_layers * per_layer + head


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one process holds on its GPU, by part. `share`: the part of the card it may use
    (vLLM's gpu_memory_utilization; 1 otherwise). `details`: the parts' own parts."""
    weights: int
    trainable: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    kv_cache: int = 0
    overhead: int = 0
    share: float = 1.0
    details: dict = field(default_factory=dict, compare=False)

    @property
    def allocated(self) -> int:
        """What torch's allocator hands out at the peak (torch.cuda.max_memory_allocated)."""
        return self.weights + self.trainable + self.gradients + self.optimizer + self.activations + self.kv_cache

    @property
    def total(self) -> int:
        return self.allocated + self.overhead

    def fits(self, gpu_bytes: int | None) -> bool:
        """Whether it fits a card of `gpu_bytes` (as torch reports its capacity); None: no GPU."""
        return gpu_bytes is not None and self.total <= self.share * gpu_bytes

    def describe(self) -> str:
        parts = [f"{name} {getattr(self, name) / GIB:.2f}" for name in
                 ("weights", "trainable", "gradients", "optimizer", "activations", "kv_cache", "overhead")
                 if getattr(self, name)]
        return f"{self.total / GIB:.2f} GiB ({', '.join(parts)} GiB)"


def _overhead(allocated: int) -> int:
    return CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * allocated)


# ----------------------------------------------------------------------------- activations

# which of a block's tensors each LoRA target reads (targets reading one tensor share it when they
# save it uncast); o_proj reads the attention output, which SDPA saves already
LORA_INPUTS = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "attn_out",
               "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "product"}


def layer_saved_bytes_per_token(shape: ModelShape, *, b: int, modules: Sequence[str] = (), r: int = 0,
                                dropout: bool = False, full_finetune: bool = False) -> int:
    """Bytes one decoder layer saves for the backward pass per token: HF Llama/Qwen2/Qwen3 layers
    with SDPA's O(T) kernels, peft LoRA of rank r on `modules` (frozen base) or every weight
    trained; kaggle/PLANNER.md "GPU memory" lists the terms.

    b: activation bytes (2: a 16-bit model, trained in the trainer's autocast, with float32 LoRA;
    4: float32); dropout: LoRA dropout > 0 (a 1-byte mask per LoRA input)."""
    d, f, a, kv = shape.hidden_size, shape.intermediate_size, shape.q_dim, shape.kv_dim
    trained = b if full_finetune else 0  # a trained weight also keeps the tensor it multiplies
    saved = 2 * (4 * d + 4 + trained * d)                   # 2 RMSNorms: float32 input, 1/rms (, normed input)
    if shape.qk_norm:                                       # Qwen3: the same per query and key head
        saved += (4 + trained) * (a + kv) + 4 * (shape.num_heads + shape.num_kv_heads)
    saved += b * (2 * a + 2 * kv) + 4 * shape.num_heads    # SDPA: q, k, v, output, log-sum-exp
    saved += 3 * b * f                                      # gate output, SiLU output, up output
    if full_finetune:  # the trained linears' inputs: normed x (q/k/v and gate/up share it), MLP product
        return saved + 2 * b * d + b * f                    # (o_proj's input: SDPA's output, counted)
    shapes, shared = shape.linear_shapes(), set()
    for m in modules:
        i = shapes[m][0]
        saved += b * r                                      # lora_B's input (lora_A's output)
        if b < 4 or dropout:  # lora_A's input is its own copy: autocast's 16-bit cast and/or the dropout
            saved += b * i + (i if dropout else 0)          # output, and the dropout's 1-byte mask
        elif LORA_INPUTS[m] not in shared:                  # float32, no dropout: the block's own tensor
            shared.add(LORA_INPUTS[m])
            saved += 0 if LORA_INPUTS[m] == "attn_out" else b * i
    return saved


def ttft_memory(shape: ModelShape, *, dtype: str = "bfloat16", lora_r: int | None = DEFAULT_LORA_R,
                lora_targets: "str | Sequence[str]" = LORA_TARGET_PRESETS[DEFAULT_LORA_TARGET],
                train_embeddings: bool = False, full_finetune: bool = False, optimizer: str = "adamw", seq_len: int, batch: int = 1,
                gradient_checkpointing: bool = False, lora_dropout: float = 0.0,
                logits_tokens: int | None = None, attention: str = "flash") -> MemoryEstimate:
    """One TTFT (or finetune) step at its peak, the start of the backward pass: the model in
    `dtype`; a LoRA of rank `lora_r` on `lora_targets` (+ embed_tokens and lm_head when
    `train_embeddings`), or every weight trained (`full_finetune`); `optimizer`'s states from the
    step before; the activations of `batch` sequences of `seq_len` tokens, whose loss covers
    `logits_tokens` positions each (default: all; the trainer keeps only the completion's).
    `attention` "math": SDPA's math kernel also keeps every layer's attention matrix and the keys
    and values repeated to every head (`attention_kernel`)."""
    b = dtype_bytes(dtype)
    if attention not in ATTENTION_KERNELS:
        raise ValueError(f"attention {attention!r}: one of {', '.join(ATTENTION_KERNELS)}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer {optimizer!r}: the memory model knows {', '.join(OPTIMIZER_STATES)}")
    if not full_finetune and not lora_r:
        raise ValueError("ttft_memory: give lora_r (a LoRA's rank) or full_finetune=True")
    d, vocab = shape.hidden_size, shape.vocab_size
    if full_finetune:
        modules, embeddings, r = (), False, 0
        n_trainable, param_bytes = shape.total, b
    else:
        modules, embeddings = resolve_lora_targets(lora_targets)
        embeddings, r = embeddings or train_embeddings, int(lora_r)
        n_trainable, param_bytes = lora_parameters(shape, r, modules, embeddings), max(b, LORA_PARAM_BYTES)
    tokens = seq_len * batch
    rows = (seq_len if logits_tokens is None else min(logits_tokens, seq_len)) * batch
    layer = layer_saved_bytes_per_token(shape, b=b, modules=modules, r=r, dropout=lora_dropout > 0,
                                        full_finetune=full_finetune)
    matrix = 0
    if attention == "math":  # the attention probabilities; keys and values at every head
        layer += 2 * b * (shape.q_dim - shape.kv_dim)
        matrix = batch * shape.num_heads * seq_len ** 2 * b
    if gradient_checkpointing:  # each layer keeps its input; one layer at a time is recomputed
        layers = (shape.num_layers * b * d + layer) * tokens + matrix
    else:  # nothing trained before the first layer: its input norm saves nothing
        first = 0 if (full_finetune or embeddings) else 4 * d + 4
        layers = (shape.num_layers * layer - first) * tokens + shape.num_layers * matrix
    per_token = 2 * shape.head_dim * b + 4 * d + 4          # RoPE cos and sin (shared), the final norm
    if full_finetune:
        per_token += 2 * b * d                              # its normed input, lm_head's input
    per_row = 4 * vocab                                     # the loss's float32 log-softmax
    if embeddings:  # embed_tokens' LoRA keeps its r-wide lookup; lm_head's, its input copy (+ mask)
        per_token += b * r
        per_row += b * d + (d if lora_dropout > 0 else 0) + b * r
    saved = layers + per_token * tokens + per_row * rows
    transient = 8 * vocab * rows                            # logits and their float32 copy, or gradients
    casts = 2 * n_trainable if b < 4 and not full_finetune else 0  # autocast's 16-bit copies of the adapter
    trainable = n_trainable * param_bytes
    weights = shape.total * b
    estimate = dict(weights=weights, trainable=0 if full_finetune else trainable, gradients=trainable,
                    optimizer=OPTIMIZER_STATES[optimizer] * trainable, activations=saved + transient + casts)
    return MemoryEstimate(**estimate, overhead=_overhead(sum(estimate.values())),
                          details={"trainable_parameters": n_trainable, "saved": saved, "transient": transient,
                                   "autocast_copies": casts, "layer_bytes_per_token": layer,
                                   "lora_modules": list(modules), "embeddings": embeddings})


def sampling_memory(shape: ModelShape, *, engine: str = "vllm", dtype: str = "bfloat16", max_model_len: int,
                    max_num_seqs: int, gpu_memory_utilization: float = 0.9, gpu_bytes: int | None = None,
                    lora_r: int | None = None, lora_embeddings: bool = False, max_loras: int = 4,
                    attention: str = "flash") -> MemoryEstimate:
    """The sampling engine's memory. vLLM: the weights, `max_loras` LoRA slots of rank `lora_r`
    (on every linear layer, + the embeddings with `lora_embeddings`), its profiling pass's
    activations and the KV cache of `max_num_seqs` sequences of `max_model_len` tokens, under
    `gpu_memory_utilization` of the card. transformers: the weights, the KV cache of a batch of
    `max_num_seqs` rows of `max_model_len` tokens, the prefill's largest layer tensors, its
    attention mask (with `attention` "math": one layer's attention matrix), and one decoding
    step's logits."""
    b = dtype_bytes(dtype)
    d, f, a, kv_dim = shape.hidden_size, shape.intermediate_size, shape.q_dim, shape.kv_dim
    model = shape.total * b
    kv = max_model_len * max_num_seqs * shape.kv_bytes_per_token(dtype)
    if engine == "vllm":
        # vLLM preallocates every slot at max_lora_rank on every linear layer it can adapt
        slots = max_loras * lora_parameters(shape, lora_r, LINEAR_MODULES, lora_embeddings) * b if lora_r else 0
        # the profiling pass: one layer's tensors over the batched tokens (q/k/v, attention output,
        # merged gate/up and its activation, residual and normed input), the sampler's float32 logits
        activations = (VLLM_BATCHED_TOKENS * b * (2 * d + 2 * a + 2 * kv_dim + 3 * f)
                       + max_num_seqs * 4 * shape.vocab_size)
        weights, share = model + slots, gpu_memory_utilization
        details = {"model": model, "lora_slots": slots}
    elif engine == "transformers":
        tokens = max_num_seqs * max_model_len
        # prefill, under inference mode one layer at a time: attention (q, k and v repeated to every
        # head, output) or the MLP (gate, up, activation), beside the residual and normed input
        layer = tokens * b * (2 * d + max(a + 2 * kv_dim + 2 * a + a, 3 * f))
        mask = max_num_seqs * max_model_len ** 2          # the padded batch's boolean 4-D mask
        if attention == "math":
            mask += max_num_seqs * shape.num_heads * max_model_len ** 2 * b
        logits = max_num_seqs * shape.vocab_size * (b + 8)  # last position's logits, float32 copy, log-softmax
        activations = layer + mask + logits
        weights, share, details = model, 1.0, {"model": model}
    else:
        raise ValueError(f"engine {engine!r}: vllm or transformers")
    # vLLM allocates its KV cache as one block per layer: no fragmentation slack on it
    fragmented = weights + activations + (kv if engine == "transformers" else 0)
    details.update(kv_bytes_per_token=shape.kv_bytes_per_token(dtype),
                   budget=int(share * gpu_bytes) if gpu_bytes else None)
    return MemoryEstimate(weights=weights, activations=activations, kv_cache=kv, overhead=_overhead(fragmented),
                          share=share, details=details)


def vllm_kv_tokens(estimate: MemoryEstimate, gpu_bytes: int) -> int:
    """Tokens of KV cache vLLM finds room for beside the rest of its `estimate` (sampling_memory)
    under its share of a card of `gpu_bytes`. vLLM refuses to start below one max_model_len
    sequence; above, it runs max_num_seqs sequences and queues (preempts) what the cache cannot hold."""
    rest = estimate.total - estimate.kv_cache
    return max(0, math.floor((estimate.share * gpu_bytes - rest) / estimate.details["kv_bytes_per_token"]))


def sampling_fits(estimate: MemoryEstimate, gpu_bytes: int | None, engine: str, max_model_len: int) -> bool:
    """The one rule for whether a sampling engine fits a card (the planner's verdict, the run's
    preflight): vLLM starts when its KV cache holds one `max_model_len` sequence beside the rest
    and queues what it cannot run at once (`max_num_seqs` full-length sequences is its worst case,
    not its need: ARC prompts are mostly far shorter); the transformers engine holds its whole batch."""
    if gpu_bytes is None:
        return False
    if engine == "vllm":
        return vllm_kv_tokens(estimate, gpu_bytes) >= max_model_len
    return estimate.fits(gpu_bytes)


def vllm_max_num_seqs(estimate: MemoryEstimate, gpu_bytes: int, max_model_len: int) -> int:
    """The most sequences of `max_model_len` tokens whose KV cache fits at once (`vllm_kv_tokens`)."""
    return vllm_kv_tokens(estimate, gpu_bytes) // max_model_len
