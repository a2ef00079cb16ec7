"""The rescore file as the selection rules see it: one JSON line per test input, its views and
every ranked candidate with its log-probability in each view (the record's fields and its checked
reader: `pipeline.core.scores`).

`rescore` writes it (`scores_record`); `vote --scores` reads it into the `rules.Candidate`s that
`rules.select` ranks (`read_scores`).  Apart from `rules.py` because only a run that rescores needs
it: the vote imports it under `--scores` alone, so a notebook whose run never rescores leaves it and
the checked reader out (notebook_builder/imports.py).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.core.scores import read_scores as read_checked_scores, scored_candidate
from pipeline.selection.rules import Candidate


def scores_record(task_id: str, test_index: int, views: Sequence, ranked: Sequence[Mapping],
                  scores: Sequence[Sequence[float]]) -> dict:
    """One line of a rescore file: the views (augmentation dicts) and every ranked candidate
    (`rank_predictions` rows) with its log-probability in each view (`core.scores.scored_candidate`)."""
    return {"task_id": task_id, "test_index": test_index, "views": list(views),
            "candidates": [scored_candidate(c["grid"], c["count"], c["mean_logprob"], s)
                           for c, s in zip(ranked, scores)]}


def read_scores(path, counts: dict | None = None) -> dict:
    """`{(task_id, test_index): [Candidate, ...]}` from a rescore file, in vote order, read by the
    checked reader (`pipeline.core.scores.read_scores`: bad candidates dropped and counted)."""
    return {key: [Candidate(c["grid"], c["count"], c["mean_logprob"], c["view_logprobs"]) for c in cands]
            for key, cands in read_checked_scores(path, counts).items()}
