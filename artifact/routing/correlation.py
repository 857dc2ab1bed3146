"""Correlation of imbalance with predicted scores and performance, with honest uncertainty.

Pearson and Spearman coefficients with their p-values, a percentile bootstrap 95% interval
(pairs resampled with replacement; resamples where one side is constant are dropped), the
number of points, and the study's optional outlier rule: a point is removed when x or y lies
outside [Q1 - 1.5 IQR, Q3 + 1.5 IQR] of its variable (numpy's linear quantiles); the removed
points are reported, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from artifact.core.errors import ArtifactError

METHODS = ("pearson", "spearman")
IQR_FACTOR = 1.5


@dataclass(frozen=True)
class Correlation:
    method: str
    r: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    removed: tuple[dict, ...] = ()
    note: str | None = None

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "r": self.r,
            "p_value": self.p_value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "n_removed": len(self.removed),
            "removed": list(self.removed),
            "note": self.note,
        }


def iqr_outliers(values, factor: float = IQR_FACTOR) -> np.ndarray:
    """Mask of values outside [Q1 - factor*IQR, Q3 + factor*IQR]."""
    v = np.asarray(values, dtype=np.float64)
    q1, q3 = np.percentile(v, [25, 75])
    spread = factor * (q3 - q1)
    return (v < q1 - spread) | (v > q3 + spread)


def iqr_filter(
    x, y, labels: Sequence | None = None, factor: float = IQR_FACTOR
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(x, y) without the points that are IQR outliers in x or y, and what was removed."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    labels = list(labels) if labels is not None else list(range(len(x)))
    out_x, out_y = iqr_outliers(x, factor), iqr_outliers(y, factor)
    removed = [
        {
            "label": labels[i],
            "variable": ",".join(v for v, out in (("x", out_x[i]), ("y", out_y[i])) if out),
            "x": float(x[i]),
            "y": float(y[i]),
        }
        for i in np.flatnonzero(out_x | out_y)
    ]
    keep = ~(out_x | out_y)
    return x[keep], y[keep], removed


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=-1) / np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))


def correlation(
    x,
    y,
    *,
    method: str = "pearson",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    iqr: bool = False,
    labels: Sequence | None = None,
) -> Correlation:
    """Coefficient, p-value and bootstrap interval of paired samples x, y.

    Pairs where either value is missing (None or NaN) are dropped first; `n` counts the
    points used. Fewer than 3 points, or a constant variable, gives r = None with a note.
    """
    if method not in METHODS:
        raise ArtifactError(f"unknown correlation method {method!r}; use one of {METHODS}")
    x = np.asarray([np.nan if v is None else v for v in x], dtype=np.float64)
    y = np.asarray([np.nan if v is None else v for v in y], dtype=np.float64)
    if x.shape != y.shape:
        raise ArtifactError(f"correlation needs paired samples, got {x.size} x and {y.size} y")
    labels = list(labels) if labels is not None else list(range(x.size))
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y, labels = x[keep], y[keep], [lab for lab, k in zip(labels, keep, strict=True) if k]
    removed: list[dict] = []
    if iqr and x.size:
        x, y, removed = iqr_filter(x, y, labels)
    n = int(x.size)
    if n < 3:
        return Correlation(method, None, None, None, None, n, tuple(removed), "fewer than 3 points")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(method, None, None, None, None, n, tuple(removed), "constant input")
    test = stats.pearsonr if method == "pearson" else stats.spearmanr
    r, p = test(x, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    bx, by = x[idx], y[idx]
    if method == "spearman":
        bx, by = stats.rankdata(bx, axis=1), stats.rankdata(by, axis=1)
    boot = _rowwise_pearson(bx, by)
    boot = boot[~np.isnan(boot)]
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(boot, [tail, 100 - tail]) if boot.size else (np.nan, np.nan)
    note = None
    if boot.size < n_boot:
        note = f"{n_boot - boot.size} of {n_boot} resamples had a constant side and were dropped"
    return Correlation(method, float(r), float(p), float(low), float(high), n, tuple(removed), note)


def correlation_table(
    rows: Sequence[dict],
    x_keys: Sequence[str],
    y_keys: Sequence[str],
    *,
    group_key: str = "mode",
    label_key: str = "run",
    methods: Sequence[str] = METHODS,
    iqr: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """Every (x, y) pair in every group of tidy per-run rows, both methods: tidy rows
    (group, x, y, method, r, p_value, ci_low, ci_high, n, n_removed, removed, note).

    E.g. rows {"mode", "run", "predicted_score", "cv", "mean_ttft_ms", ...} with
    x_keys=("predicted_score",) and y_keys=("cv", ...) for predicted vs observed, and
    x_keys=imbalance measures, y_keys=performance metrics for the other question.
    """
    out = []
    groups = sorted({row[group_key] for row in rows}, key=str)
    for group in groups:
        members = [row for row in rows if row[group_key] == group]
        labels = [row.get(label_key) for row in members]
        for xk in x_keys:
            for yk in y_keys:
                if xk == yk:
                    continue
                for method in methods:
                    c = correlation(
                        [row.get(xk) for row in members],
                        [row.get(yk) for row in members],
                        method=method,
                        n_boot=n_boot,
                        seed=seed,
                        iqr=iqr,
                        labels=labels,
                    )
                    row = {"group": group, "x": xk, "y": yk, **c.to_json()}
                    row["removed"] = [f"{i['label']} ({i['variable']})" for i in c.removed]
                    out.append(row)
    return out


# The columns correlated in the correlations table (ours and the study import).
PERF_METRICS = (
    "mean_ttft_ms",
    "mean_tpot_ms",
    "mean_itl_ms",
    "mean_e2el_ms",
    "output_throughput",
    "request_throughput",
)
IMBALANCE_MEASURES = (
    "imb_cv",
    "imb_max_mean",
    "imb_entropy",
    "imb_gini",
    "imb_rank_max_mean",
    "imb_rank_max_mean_ratio_of_sums",
)


def correlations(rows: list[dict], measures: tuple[str, ...]) -> list[dict]:
    """Per mode: predicted score vs each measure and performance metric, and each measure
    vs each performance metric; Pearson and Spearman, without and with the 1.5 x IQR filter."""
    out = []
    for iqr in (False, True):
        for x_keys, y_keys in (
            (("predicted_score",), measures + PERF_METRICS),
            (measures, PERF_METRICS),
        ):
            for item in correlation_table(rows, x_keys, y_keys, iqr=iqr):
                out.append({**item, "iqr_filter": iqr})
    return out
