"""The planner's tests run against the GPU memory model (`pipeline/planning/memory.py`, written in
parallel with the planner). Until it is in the tree, a stand-in with the same interface (named
architectures as real config.json fields, `model_shape(...).total`, `ttft_memory`,
`sampling_memory`, each estimate's `total` and `fits`) is put in its place, and GPUs get their
usable memory; with the real module nothing is replaced. Test modules import the fixture
(`from memory_stand_in import memory_model`), which is autouse there."""
from __future__ import annotations

import dataclasses
import importlib
import sys
import types

import pytest

GIB = 2 ** 30
# real config.json fields (the Hugging Face configs of these checkpoints)
STAND_IN_ARCHITECTURES = {
    "smollm2-135m": dict(architectures=["LlamaForCausalLM"], hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         vocab_size=49152, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(architectures=["Qwen2ForCausalLM"], hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True),
    "qwen3-4b": dict(architectures=["Qwen3ForCausalLM"], hidden_size=2560, intermediate_size=9728,
                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     vocab_size=151936, tie_word_embeddings=True),
}
STAND_IN_GPU_GIB = {"T4": 14.56, "L4": 22.0, "A100": 79.0, "H100": 79.0, "H100 PCIe": 79.0, "H200": 139.0}


@dataclasses.dataclass(frozen=True)
class Shape:
    config: dict

    @property
    def total(self) -> int:
        c = self.config
        d, layers, i, v = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
        hd = c.get("head_dim") or d // c["num_attention_heads"]
        a, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
        per_layer = d * a + 2 * d * kv + a * d + 3 * d * i + 2 * d
        return v * d * (1 if c.get("tie_word_embeddings") else 2) + layers * per_layer + d


@dataclasses.dataclass(frozen=True)
class Estimate:
    weights: float
    trainable: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    kv_cache: float = 0.0
    overhead: float = GIB

    @property
    def total(self) -> float:
        return (self.weights + self.trainable + self.gradients + self.optimizer + self.activations
                + self.kv_cache + self.overhead)

    def fits(self, gpu_bytes) -> bool:
        return self.total <= gpu_bytes


def _bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _ttft_memory(shape, *, dtype, lora_r, lora_targets, train_embeddings, full_finetune, optimizer, seq_len, batch,
                 gradient_checkpointing):
    c = shape.config
    trainable = shape.total if full_finetune else (lora_r or 0) * c["num_hidden_layers"] * 8 * c["hidden_size"]
    if train_embeddings:
        trainable += c["vocab_size"] * c["hidden_size"]
    per_token_layer = (1 if gradient_checkpointing else 4) * c["hidden_size"] * _bytes(dtype)
    return Estimate(shape.total * _bytes(dtype), trainable * 4, trainable * 4, trainable * 8,
                    batch * seq_len * c["num_hidden_layers"] * per_token_layer)


def _sampling_memory(shape, *, engine, dtype, max_model_len, max_num_seqs, gpu_memory_utilization, gpu_bytes,
                     lora_r=None):
    c = shape.config
    hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    rows = min(max_num_seqs, 4)
    kv = max_model_len * rows * c["num_hidden_layers"] * c["num_key_value_heads"] * hd * 2
    return Estimate(shape.total * _bytes(dtype), kv_cache=kv * _bytes(dtype))


def stand_in_module() -> types.ModuleType:
    module = types.ModuleType("pipeline.planning.memory")
    module.ARCHITECTURES = STAND_IN_ARCHITECTURES
    module.model_shape = lambda spec: Shape(dict(STAND_IN_ARCHITECTURES.get(spec, spec) if isinstance(spec, str)
                                                 else spec))
    module.ttft_memory, module.sampling_memory = _ttft_memory, _sampling_memory
    return module


@pytest.fixture(autouse=True)
def memory_model(monkeypatch):
    """The GPU memory model: the real one when it exists, else the stand-in (and GPU sizes)."""
    try:
        return importlib.import_module("pipeline.planning.memory")
    except ImportError:
        pass
    import pipeline.planning
    from pipeline.planning import memory_plan
    module = stand_in_module()
    monkeypatch.setitem(sys.modules, "pipeline.planning.memory", module)
    monkeypatch.setattr(pipeline.planning, "memory", module, raising=False)
    monkeypatch.setattr(memory_plan, "gpu_bytes", lambda hw: int(STAND_IN_GPU_GIB[hw] * GIB)
                        if hw in STAND_IN_GPU_GIB else None)
    return module
