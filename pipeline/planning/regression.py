"""The numerics of the planner's cost model (`pipeline/planning/cost_model.py`): means, exact
non-negative least squares over a few columns (`nnls`), the choice of the richest feature set the
records identify (`fit_compute`), and the calibration of estimated token counts against recorded
ones (`calibrate`, `Calibration`).  numpy is imported where a fit runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

MIN_SPREAD = 0.2                               # coefficient of variation a feature needs to be fitted
MAX_CONDITION = 30.0                           # of the column-normalised design matrix


def mean(xs: Sequence[float]) -> float:
    """The arithmetic mean; 0.0 for no values."""
    return sum(xs) / len(xs) if xs else 0.0


def spread(xs: Sequence[float]) -> float:
    """Coefficient of variation (population std / mean)."""
    m = mean(xs)
    if not xs or m == 0:
        return 0.0
    return math.sqrt(mean([(x - m) ** 2 for x in xs])) / abs(m)


def nnls(columns: Sequence[Sequence[float]], y: Sequence[float]) -> tuple[list[float], float]:
    """Non-negative least squares for a few columns, exact: the best non-negative unconstrained
    solution over every subset of columns (the NNLS optimum is one of them). (coefficients, SSE)."""
    import itertools
    import numpy as np
    X, y = np.asarray(columns, dtype=float).T, np.asarray(y, dtype=float)
    k = X.shape[1]
    best, best_sse = [0.0] * k, float(y @ y)
    for r in range(1, k + 1):
        for subset in itertools.combinations(range(k), r):
            coef, *_ = np.linalg.lstsq(X[:, subset], y, rcond=None)
            if np.any(coef < 0):
                continue
            sse = float(((X[:, subset] @ coef - y) ** 2).sum())
            if sse < best_sse - 1e-12 * max(1.0, best_sse):
                full = [0.0] * k
                for i, c in zip(subset, coef):
                    full[i] = float(c)
                best, best_sse = full, sse
    return best, best_sse


def condition(columns: Sequence[Sequence[float]]) -> float:
    import numpy as np
    X = np.asarray(columns, dtype=float).T
    norms = np.linalg.norm(X, axis=0)
    if np.any(norms == 0):
        return math.inf
    s = np.linalg.svd(X / norms, compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def fit_compute(units: Sequence[dict], candidates: Sequence[Sequence[str]]) -> tuple[dict[str, float], str]:
    """Fit `compute` seconds ~ sum(coef x feature) over units (dicts of features and "compute").

    Tries the candidate feature sets in order (richest first) and takes the first one the data
    identifies: at least len(set)+1 units, every feature varying across units (coefficient of
    variation >= MIN_SPREAD, or constant and then standing for the intercept, at most one such),
    a column-normalised condition number <= MAX_CONDITION, and every NNLS coefficient > 0.
    The last candidate must be a single feature: its fallback is the ratio sum(compute)/sum(feature)."""
    y = [u["compute"] for u in units]
    for features in candidates:
        cols = [[u[f] for u in units] for f in features]
        if len(features) > 1:
            if len(units) < len(features) + 1:
                continue
            constant = [f for f, c in zip(features, cols) if spread(c) < 1e-9]
            varying = [c for c, f in zip(cols, features) if f not in constant]
            if len(constant) > 1 or any(spread(c) < MIN_SPREAD for c in varying):
                continue
            if condition(cols) > MAX_CONDITION:
                continue
            coef, _ = nnls(cols, y)
            if all(c > 0 for c in coef):
                return dict(zip(features, coef)), f"least squares on {' + '.join(features)} ({len(units)} units)"
    f = candidates[-1][0]
    total = sum(u[f] for u in units)
    return {f: (sum(y) / total if total > 0 else 0.0)}, f"rate per {f} ({len(units)} units)"


@dataclass(frozen=True)
class Calibration:
    """recorded ~ alpha + beta x estimated, per unit (token count of one sample or prediction).
    `basis` names the estimate: "answer" (answer length) or "cap" (sampling's task max_tokens)."""
    alpha: float = 0.0
    beta: float = 1.0
    method: str = "none (uncalibrated)"
    sse: float = 0.0
    basis: str = "answer"

    def __call__(self, x: float) -> float:
        return self.alpha + self.beta * x


def calibrate(recorded: Sequence[float], estimated: Sequence[float], basis: str = "answer") -> Calibration:
    """Affine NNLS when there are >= 3 pairs whose estimates vary (CV >= MIN_SPREAD), else a ratio."""
    pairs = [(r, e) for r, e in zip(recorded, estimated) if r is not None and e]
    if not pairs:
        return Calibration(basis=basis)
    rec, est = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(pairs) >= 3 and spread(est) >= MIN_SPREAD:
        (a, b), sse = nnls([[1.0] * len(est), est], rec)
        return Calibration(a, b, f"affine fit on {len(pairs)} tasks", sse, basis)
    b = sum(rec) / sum(est)
    return Calibration(0.0, b, f"ratio over {len(pairs)} tasks", sum((r - b * e) ** 2 for r, e in pairs), basis)


def median(xs: Sequence[float]) -> float:
    """The median; 0.0 for no values."""
    xs = sorted(xs)
    if not xs:
        return 0.0
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
