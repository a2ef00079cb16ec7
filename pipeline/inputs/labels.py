"""Labelling generated inputs (`generate-inputs --label_with OUTPUT_MODEL`): an output model
predicts an output for every accepted new input with the sampling stage, the predictions are voted
(v2), and only a clear vote (`min_votes`, `min_vote_margin` over the runner-up) becomes the label;
an unclear or unfinished one is the failure `label_vote` of `pipeline.inputs.grids`.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Callable, Mapping, Sequence

from pipeline.core.files import read_jsonl
from pipeline.core.model_cfg import config_prompt_version, find_run_config
from pipeline.core.models import resolve_model_path
from pipeline.core.settings import DEFAULT_SELECTION, SampleSettings
from pipeline.inputs.grids import LABEL_RULE
from pipeline.sampling.sample import sample
from pipeline.selection.rules import rank_candidates

DEFAULT_LABEL_PROMPT_VERSION = "output-from-examples-v1"


def vote_margin_decision(candidates: Sequence[Mapping], min_votes: int = 2, min_margin: int = 2):
    """(grid or None, detail) from ranked candidates (`rules.rank_candidates` entries, best
    first): the top grid is kept when it has at least `min_votes` votes and beats the runner-up
    (0 when there is none) by at least `min_margin`."""
    if not candidates:
        return None, {"votes": 0, "runner_up": 0, "reason": "no valid predicted grid"}
    top = candidates[0]["count"]
    second = candidates[1]["count"] if len(candidates) > 1 else 0
    detail = {"votes": top, "runner_up": second}
    if top < min_votes:
        return None, {**detail, "reason": f"top grid has {top} vote(s) < min_votes {min_votes}"}
    if top - second < min_margin:
        return None, {**detail, "reason": f"vote margin {top}-{second}={top - second} < min_vote_margin {min_margin}"}
    return candidates[0]["grid"], detail


def label_task_id(task_id: str, grid) -> str:
    """A label task id that names the grid it labels (so a rerun never reuses another grid's votes)."""
    digest = hashlib.blake2b(repr(grid).encode(), digest_size=5).hexdigest()
    return f"{task_id}.{digest}"


def label_prompt_version_for(cfg: Mapping) -> str:
    """The label model's output-from-examples version from its cfg.json, else the default."""
    candidates = [config_prompt_version(cfg)] + list((cfg.get("prompt_versions") or {}).get("train") or [])
    for version in candidates:
        if version and str(version).startswith("output-from-examples"):
            return version
    return DEFAULT_LABEL_PROMPT_VERSION


def label_generations(tasks: Mapping[str, dict], generations: Mapping[str, list], label_model: str,
                      labels_path, *, label_adapter=None, predictions: int = 8, min_votes: int = 2,
                      min_margin: int = 2, engine: str = "auto", temperature: float = 0.0, seed: int = 0,
                      prompt_version: str | None = None, grid_encoder: str | None = None,
                      max_tokens: str | int = "task", max_model_len: int | None = None,
                      batch_size: int | None = None, engine_instance=None, progress: bool = True,
                      log: Callable = print, deadline: float | None = None, started_at: float | None = None,
                      watchdog: float | None = None):
    """Predict an output for every accepted new input with the sampling stage (`predictions`
    augmented samples, greedy by default) on `{train: the task's train pairs, test: [{input:
    new}]}`, vote (v2) and set `generation.label` where the vote is clear; an accepted input whose
    vote is not clear gets the extra failure `label_vote` (so it is dropped and reported), and so
    does one whose predictions the deadline or the watchdog left unfinished (a rerun resumes
    them).  `deadline` (seconds from `started_at`) and `watchdog` are the sampling stage's.
    Returns the sampling stage's result (None: nothing to label)."""
    wanted = {}
    for task_id, gens in generations.items():
        for g in gens:
            if g.accepted:
                wanted[label_task_id(task_id, g.verdict.grid)] = (task_id, g)
    if not wanted:
        return None
    dataset = {lid: {"train": tasks[tid]["train"], "test": [{"input": g.verdict.grid}]}
               for lid, (tid, g) in wanted.items()}
    if prompt_version is None:
        cfg, _ = find_run_config(label_adapter, resolve_model_path(label_model))
        prompt_version = label_prompt_version_for(cfg)
    settings = SampleSettings(predictions_per_task=predictions, engine=engine, temperature=temperature, seed=seed,
                              grid_encoder=grid_encoder, prompt_version=prompt_version, max_model_len=max_model_len,
                              max_tokens=max_tokens, batch_size=batch_size, watchdog=watchdog)
    result = sample(label_model, dataset, labels_path, settings, adapter_path=label_adapter,
                    engine_instance=engine_instance, progress=progress, log=log, deadline=deadline,
                    started_at=started_at)
    records = [r for r in read_jsonl(labels_path) if r.get("task_id") in wanted]
    ranked = rank_candidates(records, DEFAULT_SELECTION)
    n_records = Counter(r["task_id"] for r in records)
    unfinished = set(result.skipped_tasks)
    why = {"deadline": "the deadline passed", "hung": "the watchdog caught a hung generate"}.get(result.status,
                                                                                                 "unfinished")
    for lid, (task_id, g) in wanted.items():
        if lid in unfinished:
            g.verdict.failures.append((LABEL_RULE, f"not labelled: {why} before its {predictions} predictions "
                                                   f"were made (a rerun resumes them)"))
            continue
        grid, detail = vote_margin_decision(ranked.get((lid, 0), []), min_votes, min_margin)
        detail["n"] = n_records[lid]
        if grid is None:
            g.verdict.failures.append((LABEL_RULE, detail.pop("reason")))
        else:
            g.label = {"grid": grid, **detail}
    return result
