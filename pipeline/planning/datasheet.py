"""A projection without a profile: a cost model from the hardware's datasheet and the model's shape.

`datasheet_cost_model` builds the same `CostModel` a profile gives (`cost_model.py`), so
`projection.project` schedules it, budgets it and checks it against the deadline unchanged:

  TTFT, per step of T tokens (batch b):
    FLOPs = b x T x (4 N + 2 trainable + 4 adapter)  +  b x T^2 x 6 L d_attn
      4 N          forward (2 N) and activation backward (2 N) through the N matmul parameters
      2 trainable  weight gradients, only for what is trained (full fine-tuning: all N)
      4 adapter    a LoRA's own forward and activation backward (0 for full fine-tuning)
      6 L d_attn   causal attention (QK^T and AV: 2 L d_attn T^2 forward, twice that backward)
      (gradient checkpointing runs the forward twice: + 2 N per token)
    seconds = FLOPs / (peak FLOP/s x achieved.train) + achieved.step_s (optimizer, launches)
  sampling, per prompt token: 2 N / (peak x achieved.train); per generated token: one decode step
    (weights / (bandwidth x the decode fraction) + achieved.decode_step_s) shared by the rows
    decoded together, at least 2 N / (peak x achieved.train), times the tokens DFS explores per
    answer token
  fixed: process start + weights / LOAD_BYTES_PER_S per worker, plus vLLM's engine start.

The peaks are the datasheet's (`core/hardware.py`: ratios to the T4's 65 TFLOP/s and 320 GB/s);
the achieved fractions (`ACHIEVED`) are the uncertain part. They were set from published times
(kaggle/PLANNER.md, "Projection without a profile") and are checked against them by the tests,
so those tests guard the calibration, they do not validate it independently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from pipeline.core.settings import DEFAULT_LORA_R, DEFAULT_LORA_TARGET, VLLM, lora_targets_embeddings
from pipeline.core.hardware import HARDWARE, REFERENCE_BYTES_PER_S, REFERENCE_FLOPS, hardware_of
from pipeline.planning.cost_model import SAMPLE_STAGE, TTFT_STAGE, CostModel, StageCost
from pipeline.planning.planned_model import LORA_TARGETS, PlannedModel


@dataclass(frozen=True)
class Achieved:
    """What a kind of device achieves of its datasheet peak (fractions), and the per-step costs
    that no FLOP count explains."""
    train: float              # of peak FLOP/s in training and prefill matmuls
    step_s: float             # per optimizer step: optimizer update, kernel launches, host syncs
    decode_step_s: float      # per decode step beyond reading the weights: launches, sampling / DFS logic
    uncertainty: float        # the stated error factor (x or / this much)
    source: str


GPU_ACHIEVED = Achieved(
    0.45, 0.5, 0.05, 1.5,
    "NVARC Qwen3-4B on L4 (bf16, unsloth, FlashAttention-2): TTFT 70-115 s for small tasks, 350-410 s for "
    "large ones at 128 steps; the DFS decode step (HF eager + Python DFS) set so that 240 tasks take ~10 h")
ACHIEVED = {
    # arc24, Qwen2.5-0.5B on 2x T4 (fp16, no FlashAttention on a T4): 100 tasks x ~340 TTFT steps and 96
    # predictions in 11 h 40 min (arc24-spec 9.3): ~2.3 s per step all-in, of which ~0.6 s are its FLOPs
    # at 10 % of 65 TFLOP/s; the rest per step (HF Trainer, on-the-fly augmentation, fp16 loss scaling)
    "T4": Achieved(0.10, 1.5, 0.01, 2.0, "arc24 Qwen2.5-0.5B on 2x T4: 100 tasks in 11 h 40 min"),
    # the cpu row's ratios are this CPU's measured speed over arc24's T4 speed per token (core/hardware.py),
    # so T4's fraction applies to it; its per-step cost is bench_ttft's (docs/ttft.md: ~0.1 s of 1.7 s)
    "cpu": Achieved(0.10, 0.1, 0.01, 2.0, "the cpu row is measured relative to arc24's T4 (core/hardware.py)"),
}
DECODE_FRACTION = 0.7            # of the memory bandwidth a decode step achieves reading the weights (estimate)
DFS_EXPLORED_PER_ANSWER_TOKEN = 5.0   # DFS at P 0.2 decodes branches beside the answer (fitted: NVARC's ~10 h)
LOAD_BYTES_PER_S = 1e9           # reading weights from a Kaggle input folder (estimate: ~1 GB/s)
PROCESS_START_S = 20.0           # a stage process: interpreter, torch/transformers imports, CUDA context
VLLM_START_S = 60.0              # vLLM's engine start beyond loading the weights (profiling, KV cache)
TTFT_TASK_S, SAMPLE_TASK_S = 2.0, 1.0   # per task: building samples or prompts, fresh adapter, saving
PRE_FIXED = {"start": 5.0, "install": 120.0}   # the orchestrator's own stages (estimates: offline install)
POST_FIXED = {"vote": 20.0, "score": 5.0}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def achieved(hardware: str) -> Achieved:
    return ACHIEVED.get(hardware, GPU_ACHIEVED)


def peak_flops(hardware: str) -> float:
    return hardware_of(hardware).train * REFERENCE_FLOPS


def peak_bytes_per_s(hardware: str) -> float:
    return hardware_of(hardware).decode * REFERENCE_BYTES_PER_S


def default_dtype(hardware: str) -> str:
    """As the stages pick it (core/models.resolve_dtype, `auto`): fp16 on a T4, else bf16; fp32 on the
    planner's generic CPU, which is not assumed to compute bf16 natively."""
    return {"cpu": "float32", "T4": "float16"}.get(hardware, "bfloat16")


@dataclass(frozen=True)
class Recipe:
    """What the cost depends on beyond the model and the hardware (from the config, `recipe_of`)."""
    lora_r: int | None = DEFAULT_LORA_R     # None: full fine-tuning
    lora_target: str | tuple[str, ...] = DEFAULT_LORA_TARGET
    train_embeddings: bool = False          # embeddings and LM head trained too (NVARC)
    dtype: str | None = None                # None: the hardware's default
    engine: str = "vllm"                    # vllm | transformers
    method: str = "sample"                  # sample | dfs
    decode_rows: int = 96                   # sequences decoded together (vLLM: predictions per test input)
    gradient_checkpointing: bool = False    # the forward pass is run twice: + 2 N per trained token


def train_flops_per_token(model: PlannedModel, recipe: Recipe) -> float:
    """Linear-layer FLOPs of one trained token (see the module docstring)."""
    n = model.matmul_params
    recompute = 2.0 * n if recipe.gradient_checkpointing else 0.0
    if recipe.lora_r is None:
        return 6.0 * n + recompute
    adapter = model.lora_params(recipe.lora_r, recipe.lora_target)
    embeddings = model.vocab * model.hidden * (1 if model.tied else 2) if recipe.train_embeddings else 0
    return 4.0 * n + 2.0 * (adapter + embeddings) + 4.0 * adapter + recompute


def attention_flops_per_pair(model: PlannedModel) -> float:
    """Training FLOPs per (token x token) of one sequence: causal attention forward and backward."""
    return 6.0 * model.layers * model.attention_width


def datasheet_cost_model(model: PlannedModel, hardware: str, recipe: Recipe = Recipe()) -> CostModel:
    """The cost model of `model` on one `hardware` device under `recipe`, from datasheet peaks."""
    if hardware_of(hardware) is None:
        raise ValueError(f"unknown hardware {hardware!r}; known: {', '.join(HARDWARE)}")
    hw = hardware_of(hardware).name
    a = achieved(hw)
    flops = peak_flops(hw) * a.train
    weight_bytes = model.params * DTYPE_BYTES[recipe.dtype or default_dtype(hw)]
    load = PROCESS_START_S + weight_bytes / LOAD_BYTES_PER_S
    method = f"datasheet ({hw}: {a.train:.0%} of peak FLOP/s, x/{a.uncertainty:g})"
    ttft = StageCost(TTFT_STAGE, hw, fixed=load, task_fixed=TTFT_TASK_S, per_step=a.step_s,
                     per_train_token=train_flops_per_token(model, recipe) / flops,
                     per_attention_pair=attention_flops_per_pair(model) / flops, method=method)
    step = weight_bytes / (peak_bytes_per_s(hw) * DECODE_FRACTION) + a.decode_step_s
    per_token = max(step / max(1, recipe.decode_rows), 2.0 * model.matmul_params / flops)
    explored = DFS_EXPLORED_PER_ANSWER_TOKEN if recipe.method == "dfs" else 1.0
    sample = StageCost(SAMPLE_STAGE, hw, fixed=load + (VLLM_START_S if recipe.engine == "vllm" else 0.0),
                       task_fixed=SAMPLE_TASK_S, per_prompt_token=2.0 * model.matmul_params / flops,
                       per_generated_token=per_token * explored, method=method)
    return CostModel(ttft, sample, dict(PRE_FIXED), dict(POST_FIXED), hw)


def recipe_of(ttft_options: Mapping, sample_options: Mapping, engine: str, predictions_per_task: int,
              hardware: str) -> Recipe:
    """The recipe a config's `ttft_settings`, `sample_settings` and `engine` describe (the stages'
    defaults where they name nothing: a fresh LoRA of `DEFAULT_LORA_R` on `DEFAULT_LORA_TARGET`,
    `engine: auto` = vLLM on a GPU).
    The embedding and head are trained when the LoRA targets name them (`settings.lora_targets_embeddings`).
    TTFT always trains a LoRA: a config cannot ask it for full fine-tuning."""
    lora_r = DEFAULT_LORA_R if ttft_options.get("lora_r") is None else ttft_options["lora_r"]
    target = ttft_options.get("lora_target") or DEFAULT_LORA_TARGET
    if isinstance(target, (list, tuple)):   # the stage's flag takes a list: one group name, or layer names
        target = target[0] if len(target) == 1 and target[0] in LORA_TARGETS else tuple(target)
    method = sample_options.get("method", "sample")
    engine = engine if engine != "auto" else ("transformers" if hardware == "cpu" else "vllm")
    rows = (sample_options.get("dfs_batch_views") or 4) if method == "dfs" else min(
        predictions_per_task, sample_options.get("max_num_seqs") or VLLM.max_num_seqs)
    return Recipe(int(lora_r), target, lora_targets_embeddings(target),
                  ttft_options.get("torch_dtype") or sample_options.get("dtype"), engine, method, int(rows),
                  bool(ttft_options.get("gradient_checkpointing")))
