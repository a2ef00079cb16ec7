"""The selection rules, in one place: how predictions are grouped, ranked and selected.

`vote` (the CLI that writes the submission) and `rescore` (the stage that scores candidates under
augmented views) both take their rules from here, so neither imports the other.

* Grouping: prediction records (the sampling stage's JSONL: `task_id`, `test_index`, `grid`,
  `cumulative_logprob`, `n_tokens`, ...) per test input, in file order (`group_predictions`).
* Ranking by voting (`rank_predictions`): distinct valid grids by count; v2 breaks ties by the
  group's mean per-token log-prob (`cumulative_logprob / max(n_tokens, 1)`, -inf when missing),
  then first occurrence; v1 by first occurrence only.  Grids are compared exactly through a
  compact hashable key; invalid grids (the rules of `pipeline.core.tasks.grid_problems`) are
  dropped, except that a grid of JSON `true`/`false` counts as a vote for an equal 1/0 grid seen
  earlier (the exact type check runs once per distinct grid).
* Selecting among rescored candidates (`select`, rules `RULES`), all on the same candidates:
  `vote` = voting v2 again (count, then mean per-token log-prob); `poe` = product of experts,
  the ARChitects' rule: the sum over the views of the candidate's log-probability (the product
  of the views' probabilities), highest first; `nvarc` = NVARC's (ARC Prize 2025) "times found
  minus mean negative log-likelihood": the candidate's count among the predictions minus the
  mean over the views of its NLL.
The rescore file's record as these rules read it (`scores_record`, `read_scores`) is
`pipeline/selection/scored.py`: the vote imports it only with `--scores`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from pipeline.core.settings import DEFAULT_SELECTION, VOTE_METHODS
from pipeline.core.tasks import int_cells, loose_grid_key

RULES = ("vote", "poe", "nvarc")  # `select`'s rules over rescored candidates
_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- voting

def token_logprob(record: Mapping) -> float:
    """cumulative_logprob / max(n_tokens, 1); -inf when missing or not a finite number."""
    lp = record.get("cumulative_logprob")
    if isinstance(lp, bool) or not isinstance(lp, (int, float)) or math.isnan(lp):
        return _NEG_INF
    n = record.get("n_tokens")
    n = n if isinstance(n, int) and not isinstance(n, bool) else 0
    return float(lp) / max(n, 1)


def rank_grids(items: Iterable[tuple], method: str) -> list[dict]:
    """items: (grid, per-token log-prob) in prompt order -> ranked `{"grid", "count", "mean_logprob"}`."""
    if method not in VOTE_METHODS:
        raise ValueError(f"unknown voting method {method!r} (expected one of {', '.join(VOTE_METHODS)})")
    groups = {}  # key -> [grid, count, logprob sum]; the dict keeps first-occurrence order
    for grid, logprob in items:
        key = loose_grid_key(grid)
        if key is None:
            continue
        group = groups.get(key)
        if group is None:
            if not int_cells(grid):  # the exact type check runs once per distinct grid
                continue
            groups[key] = group = [grid, 0, 0.0]
        group[1] += 1
        group[2] += logprob
    ranked = [{"grid": g[0], "count": g[1], "mean_logprob": g[2] / g[1]} for g in groups.values()]
    if method == "v2":
        # stable sort: groups are in first-occurrence order, so ties keep it
        ranked.sort(key=lambda c: (-c["count"], -c["mean_logprob"]))
    else:
        ranked.sort(key=lambda c: -c["count"])
    return ranked


def group_predictions(records: Iterable[Mapping]) -> dict:
    """`{(task_id, test_index): [records in file order]}`, keys in first-occurrence order."""
    groups = {}
    for record in records:
        groups.setdefault((record["task_id"], record["test_index"]), []).append(record)
    return groups


def rank_predictions(predictions: Iterable[Mapping], method: str = DEFAULT_SELECTION) -> list[dict]:
    """`[{"grid", "count", "mean_logprob"}, ...]` best first, for the records of one test input."""
    return rank_grids(((r.get("grid"), token_logprob(r)) for r in predictions), method)


def rank_candidates(records: Iterable[Mapping], method: str = DEFAULT_SELECTION) -> dict:
    """`{(task_id, test_index): [{"grid", "count", "mean_logprob"}, ...]}` best first.

    `mean_logprob` is the group's mean per-token log-prob (-inf if any member lacks one); v1
    reports it but ranks by count only.  A test input whose predictions are all invalid maps to [].
    """
    return {key: rank_predictions(group, method) for key, group in group_predictions(records).items()}


# ----------------------------------------------------------------------------- rescored candidates

@dataclass
class Candidate:
    grid: list
    count: int = 0                  # times found among the predictions
    mean_logprob: float = float("-inf")  # voting v2's tiebreak: mean per-token log-prob of its predictions
    view_logprobs: tuple[float, ...] = ()

    @property
    def poe(self) -> float:
        return sum(self.view_logprobs) if self.view_logprobs else float("-inf")

    @property
    def nvarc(self) -> float:
        if not self.view_logprobs:
            return float("-inf")
        return self.count - (-sum(self.view_logprobs) / len(self.view_logprobs))


def select(candidates: Sequence[Candidate], rule: str) -> list[Candidate]:
    """The candidates ranked by `rule` (see the module docstring), best first; ties keep the
    input order (the vote order)."""
    if rule == "vote":
        key = lambda c: (-c.count, -c.mean_logprob)  # noqa: E731
    elif rule == "poe":
        key = lambda c: -c.poe  # noqa: E731
    elif rule == "nvarc":
        key = lambda c: -c.nvarc  # noqa: E731
    else:
        raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(RULES)}")
    return sorted(candidates, key=key)
