"""Named model architectures as their published `config.json` fields: what the memory model
(planning/memory.py) and the planner read for a model whose folder is not at hand, and what
devtools/random_models.py builds the GPU benchmarks' random models from (one table).

Standard library only (the Kaggle run's preflight reads it before the offline install).
"""
from __future__ import annotations

# Published config.json fields (Hugging Face model cards' config.json; checked 2026-12-06 against the
# parameter counts the model cards state: 494 M, 1.54 B, 4.02 B, 1.72 B, 135 M). `nvarc-qwen3-4b` is NVARC's
# Qwen3-4B with the embedding cut to 16 tokens (anchors.md, section 5); NVARC's "2B" (the language
# model of Qwen3-VL-2B) has qwen3-1.7b's text shape.
ARCHITECTURES: dict[str, dict] = {
    "qwen2.5-0.5b": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
                     "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
                     "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643},
    "qwen2.5-1.5b": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
                     "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
                     "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643},
    "qwen3-4b": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
                 "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                 "attention_bias": False, "tie_word_embeddings": True, "hidden_act": "silu",
                 "bos_token_id": 151643, "eos_token_id": 151645},
    "qwen3-1.7b": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
                   "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                   "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                   "attention_bias": False, "tie_word_embeddings": True, "hidden_act": "silu",
                   "bos_token_id": 151643, "eos_token_id": 151645},
    "smollm2-135m": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
                     "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                     "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
                     "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 0},
}
ARCHITECTURES["nvarc-qwen3-4b"] = {**ARCHITECTURES["qwen3-4b"], "vocab_size": 16}
