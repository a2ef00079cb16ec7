"""generate-inputs' plan and what it produced (`python -m pipeline generate-inputs`,
`pipeline/inputs/generate_inputs.py`).

* The plan: `n_per_task` augmented prompts per task (`GenerationItem`), each view drawn from
  (seed, task id) so a task gets the same plan whatever other tasks are selected, each prompt
  fitted into `max_model_len` by dropping trailing context grids, each with its `max_tokens`
  budget (`generation_budget`).
* The records: one line of `NEW.generations.jsonl` per generated sample (`generation_record`,
  keyed like a prediction record so the sampling loop resumes the file), read back in plan order
  (`read_generations`).
* The verdicts: every record judged by the named rules of `pipeline.inputs.grids` against the
  task's pool and the samples of the same task accepted before it (`validate_plan`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.augment import Augmentation, inference_augmentations
from pipeline.core.encoders import GridEncoder
from pipeline.core.predictions import read_predictions
from pipeline.core.tasks import MAX_SIDE
from pipeline.inputs.grids import MODES, NOT_GENERATED, Generation, Pool, Verdict, check_generation, generation_view, pool_of
from pipeline.sampling.plan import answer_tokens, fit_prompt, request_seed, task_rng

# what varies between the samples of a task: "full" = dihedral transform × colour map × context
# order (notebook 021, the sampling stage's views), "dihedral" = transform × order with the task's
# own colours, "none" = the prompt as it is (notebook 015; samples differ by their seed only)
AUGMENTATIONS = ("full", "dihedral", "none")


@dataclass(frozen=True)
class GenerationItem:
    task_id: str
    sample_index: int
    augmentation: Augmentation
    prompt_ids: tuple[int, ...]
    max_tokens: int
    adapter: str | None = None
    seed: int = 0
    n_context: int = 0            # known grids shown (fewer than the pool when the prompt had to be cut)
    error: str | None = None      # no prompt fits max_model_len

    @property
    def test_index(self) -> int:
        """One prompt per sample: to the sampling loop, every sample answers "test input 0"."""
        return 0

    @property
    def key(self) -> tuple[str, int, int]:
        """What a resume matches in the generations file (a prediction record's key)."""
        return self.task_id, 0, self.sample_index


def generation_budget(policy: str | int, tokenizer, encoder: GridEncoder, version: str, pool: Pool) -> int:
    """max_tokens of one generation: "pool" (default) = the answer tokens of a square grid of the
    pool's longest side + 2 (a bigger one fails size_range anyway; a dihedral view may swap the
    sides), "max" = of a 30×30 grid, or a number."""
    if isinstance(policy, int) or str(policy).isdigit():
        return int(policy)
    if policy == "max":
        return answer_tokens(tokenizer, encoder, version)
    if policy == "pool":
        side = min(MAX_SIDE, max(pool.heights[1], pool.widths[1]) + 2)
        return answer_tokens(tokenizer, encoder, version, side, side)
    raise ValueError(f"max_tokens must be 'pool', 'max' or a number, not {policy!r}")


def sample_augmentations(n: int, rng, n_context: int, augmentation: str = "full") -> list[Augmentation]:
    """The views of one task's samples (see AUGMENTATIONS); "full" is `inference_augmentations`."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; known: {', '.join(AUGMENTATIONS)}")
    if augmentation == "none":
        return [Augmentation() for _ in range(n)]
    views = inference_augmentations(n, rng, n_context)
    if augmentation == "dihedral":
        views = [Augmentation(hflip=a.hflip, n_rot90=a.n_rot90, train_order=a.train_order) for a in views]
    return views


def build_generation_plan(tasks: Mapping[str, dict], tokenizer, encoder: GridEncoder, mode: str, n_per_task: int,
                          seed: int = 0, max_tokens: str | int = "pool", max_model_len: int = 8192,
                          adapter: str | None = None, min_answer_tokens: int = 16,
                          augmentation: str = "full") -> list[GenerationItem]:
    """n_per_task augmented prompts per task (augmentations drawn from (seed, task id), so a task
    gets the same plan whatever other tasks are selected).  A prompt longer than max_model_len
    drops trailing context grids (the order is shuffled per sample) until it fits."""
    version = MODES[mode][0]
    plan = []
    for task_id, task in tasks.items():
        view = generation_view(task, mode)
        pool = pool_of(task, mode)
        budget = generation_budget(max_tokens, tokenizer, encoder, version, pool)
        views = sample_augmentations(n_per_task, task_rng(seed, task_id), len(view["train"]), augmentation)
        for i, aug in enumerate(views):
            ids, used, item_budget = fit_prompt(aug.apply_task(view), encoder, tokenizer, version, 0, budget,
                                                max_model_len, min_answer_tokens)
            n_context = len(view["train"]) if used is None else used
            error = None
            if ids is None:
                ids, n_context = (), 0
                error = f"prompt longer than max_model_len {max_model_len} even with one known grid"
            plan.append(GenerationItem(task_id, i, aug, ids, item_budget, adapter, request_seed(seed, task_id, 0, i),
                                       n_context, error))
    return plan


# ----------------------------------------------------------------------------- records and verdicts

def generation_record(item: GenerationItem, completion) -> dict:
    """One line of `NEW.generations.jsonl`: the raw sample, before any rule (`completion` None: the
    item had no prompt).  Its keys are a prediction record's (`test_index` 0), so the sampling
    loop resumes the file as it resumes predictions."""
    c = completion
    return {"task_id": item.task_id, "test_index": 0, "sample_index": item.sample_index,
            "augmentation": item.augmentation.to_dict(), "text": c.text if c else "",
            "cumulative_logprob": c.cumulative_logprob if c else None, "n_tokens": c.n_tokens if c else 0,
            "finish_reason": c.finish_reason if c else None, "prompt_tokens": len(item.prompt_ids),
            "n_context": item.n_context, "error": item.error}


def read_generations(path, plan: Sequence[GenerationItem]) -> list[dict | None]:
    """The record of every plan item in the generations file (None: not generated yet)."""
    path = Path(path)
    found = {(r["task_id"], r["test_index"], r.get("sample_index")): r for r in read_predictions(path)} \
        if path.exists() else {}
    return [found.get(item.key) for item in plan]


def validate_plan(tasks: Mapping[str, dict], plan: Sequence[GenerationItem], records: Sequence[dict | None],
                  encoder: GridEncoder, mode: str) -> dict[str, list[Generation]]:
    """`{task_id: [Generation in sample order]}` from the plan and its records (`generation_record`,
    in plan order; None: not generated).  A generation is judged against the task's pool and the
    generations of the same task accepted before it, whatever order they were generated in.  An
    item without a prompt is `not_generated`; one with a prompt but no record yet (the deadline or
    the watchdog stopped the run first) is left out: a rerun generates it."""
    out: dict[str, list[Generation]] = {task_id: [] for task_id in tasks}
    pools = {task_id: pool_of(task, mode) for task_id, task in tasks.items()}
    accepted: dict[str, list] = {task_id: [] for task_id in tasks}
    for item, record in zip(plan, records):
        error = item.error or (record or {}).get("error")
        if record is None and error is None:
            continue
        if error is not None:
            verdict = Verdict(None, [(NOT_GENERATED, error)])
            text, finish, n_tokens, logprob = "", None, 0, None
        else:
            text, finish = record["text"], record["finish_reason"]
            n_tokens, logprob = record["n_tokens"], record["cumulative_logprob"]
            verdict = check_generation(text, pools[item.task_id], accepted[item.task_id], encoder,
                                       item.augmentation, mode)
        if verdict.accepted:
            accepted[item.task_id].append(verdict.grid)
        out[item.task_id].append(Generation(item.task_id, item.sample_index, item.augmentation.to_dict(), text,
                                            finish, n_tokens, logprob, verdict, item.n_context))
    return out
